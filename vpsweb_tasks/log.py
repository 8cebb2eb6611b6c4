"""Logging: every line about a task carries ``task_id:<id>``.

The library logs under the ``vpsweb_tasks`` logger. :func:`configure_logging` (called by
the manager on start) adds a file handler for ``logging.file``
(``logs/repository.log`` by default), so ``grep task_id:<id> logs/repository.log`` shows
one task's whole story.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from .config import LoggingSettings

__all__ = ["TaskLogger", "configure_logging", "remove_handler", "task_logger"]

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

logger = logging.getLogger("vpsweb_tasks")


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with ``task_id:<id>``."""

    def __init__(self, base: logging.Logger, task_id: str) -> None:
        super().__init__(base, {"task_id": task_id})
        self.task_id = task_id

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"task_id:{self.task_id} {msg}", kwargs


@functools.cache
def _named(name: str) -> logging.Logger:
    return logging.getLogger(name)


def task_logger(task_id: str, name: str = "vpsweb_tasks.queue") -> TaskLogger:
    """A logger for lines about one task (cheap: several are made per task)."""
    return TaskLogger(_named(name), task_id)


def configure_logging(settings: LoggingSettings) -> logging.Handler | None:
    """Send the library's logs to ``settings.file``. Returns the handler if this call added
    one (the caller removes it with :func:`remove_handler`), None if there was one already
    for that file or logging to a file is off."""
    level = getattr(logging, settings.level)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    if settings.file is None:
        return None
    path = Path(settings.file).resolve()
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a task's error may hold text UTF-8 cannot encode (a lone surrogate,
    # from a file name or a client); its line is written with it escaped, not dropped.
    handler = logging.handlers.RotatingFileHandler(
        path,
        maxBytes=20 * 1024 * 1024,
        backupCount=5,
        encoding="utf-8",
        errors="backslashreplace",
        delay=True,
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(level)
    logger.addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    logger.removeHandler(handler)
    handler.close()
