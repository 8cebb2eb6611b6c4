"""``python -m vpsweb_tasks.cli``: the ``vpsweb-tasks`` command."""

import sys

from .app import main

sys.exit(main())
