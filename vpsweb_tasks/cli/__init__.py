"""The ``vpsweb-tasks`` command.

::

    vpsweb-tasks serve | worker | status                 # app.py: run, scale out, counts
    vpsweb-tasks tasks list|show|cancel|retry            # commands.py: inspect and act,
    vpsweb-tasks dead-letters list|requeue               #   on the database of --config
    vpsweb-tasks submit TYPE --payload JSON              #   or on a server (--url,
    vpsweb-tasks queue pause|resume|clear                #   --api-key); --json for scripts
    vpsweb-tasks watch TASK_ID                           # a progress bar until it ends

``app`` holds the parser and the server and worker commands; ``commands`` the inspection
commands, ``backends`` their two ways to the queue (the database directly, or HTTP),
``views`` what they print, ``exits`` their exit statuses (docs/cli.md).
"""

from .app import main

__all__ = ["main"]
