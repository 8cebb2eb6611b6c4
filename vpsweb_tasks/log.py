"""Logging: every line about a task carries ``task_id:<id>``.

The library logs under the ``vpsweb_tasks`` logger. :func:`configure_logging` (called by
the manager on start) adds a file handler for ``logging.file``
(``logs/repository.log`` by default), so ``grep task_id:<id> logs/repository.log`` shows
one task's whole story.

``logging.format: json`` writes JSON lines instead (:class:`JsonFormatter`): ``time``,
``level``, ``logger``, ``message``, ``process``, and for a line about a task ``task_id``,
``task_type`` and ``attempt`` as fields, and ``trace_id`` / ``span_id`` when the line was
logged in a traced span (:mod:`vpsweb_tasks.tracing`).
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from . import tracing
from .config import LoggingSettings
from .models import TaskDefinition

__all__ = [
    "JsonFormatter",
    "TaskLogger",
    "configure_logging",
    "formatter",
    "remove_handler",
    "task_logger",
]

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

logger = logging.getLogger("vpsweb_tasks")


class _Task(Protocol):
    """What a log line reads of the task running where it is logged (a TaskContext)."""

    @property
    def task_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def definition(self) -> TaskDefinition: ...


#: The task whose function runs in the current async task (or its worker thread), set by
#: the queue around the call (``vpsweb_tasks.context.current_task()`` reads it too).
running_task: ContextVar[_Task | None] = ContextVar("vpsweb_tasks_current", default=None)


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with ``task_id:<id>``; the record carries ``task_id`` (and
    ``task_type`` and ``attempt`` when given) as attributes, for :class:`JsonFormatter`."""

    def __init__(
        self,
        base: logging.Logger,
        task_id: str,
        *,
        task_type: str | None = None,
        attempt: int | None = None,
    ) -> None:
        extra: dict[str, Any] = {"task_id": task_id}
        if task_type is not None:
            extra["task_type"] = task_type
        if attempt is not None:
            extra["attempt"] = attempt
        super().__init__(base, extra)
        self.task_id = task_id

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        given = kwargs.get("extra")
        kwargs["extra"] = self.extra if given is None else {**(self.extra or {}), **given}
        return f"task_id:{self.task_id} {msg}", kwargs


@functools.cache
def _named(name: str) -> logging.Logger:
    return logging.getLogger(name)


def task_logger(
    task_id: str,
    name: str = "vpsweb_tasks.queue",
    *,
    task_type: str | None = None,
    attempt: int | None = None,
) -> TaskLogger:
    """A logger for lines about one task (cheap: several are made per task)."""
    return TaskLogger(_named(name), task_id, task_type=task_type, attempt=attempt)


class JsonFormatter(logging.Formatter):
    """One JSON object a line. A line about a task has ``task_id``, ``task_type`` and
    ``attempt`` fields (from its :class:`TaskLogger`, else from the task running where it
    was logged), its message without the ``task_id:<id>`` prefix; a line logged in a
    traced span has ``trace_id`` and ``span_id``. An exception is in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "process": record.process,
        }
        task_id = getattr(record, "task_id", None)
        running = running_task.get()
        if running is not None and task_id in (None, running.task_id):
            task_id = running.task_id
            data["task_type"] = running.definition.task_type
            data["attempt"] = running.attempt
        if task_id is not None:
            data["task_id"] = task_id
            data["message"] = message.removeprefix(f"task_id:{task_id} ")
            for key in ("task_type", "attempt"):
                value = getattr(record, key, None)
                if value is not None:
                    data[key] = value
        ids = tracing.current_ids()
        if ids is not None:
            data["trace_id"], data["span_id"] = ids
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def formatter(settings: LoggingSettings, text: str = FORMAT) -> logging.Formatter:
    """The formatter ``logging.format`` names (``text``: ``text`` as the format string)."""
    return JsonFormatter() if settings.format == "json" else logging.Formatter(text)


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
    handler.setFormatter(formatter(settings))
    handler.setLevel(level)
    logger.addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    logger.removeHandler(handler)
    handler.close()
