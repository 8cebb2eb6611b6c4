"""The ``vpsweb-tasks`` command (``app``: the parser, serve, worker, status)."""

from .app import main

__all__ = ["main"]
