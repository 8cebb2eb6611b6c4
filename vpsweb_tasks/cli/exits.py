"""The exit statuses of the inspection commands, and the one error they end with.

Every failure of ``tasks``, ``dead-letters``, ``submit``, ``queue`` and ``watch`` ends as
one line on stderr (``vpsweb-tasks COMMAND: what went wrong``) and one of these statuses,
never a traceback. ``serve``, ``worker`` and ``status`` keep theirs (0, 1 a database that
cannot be used, 2 a usage or config error).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from pydantic import ValidationError

from ..errors import (
    ConfigError,
    DependencyNotFoundError,
    HandlerUnavailableError,
    IdempotencyKeyError,
    InvalidInputError,
    QueueFullError,
    StorageError,
    TaskNotFoundError,
    TaskStateError,
    UnknownQueueError,
    UnknownTaskTypeError,
)

__all__ = ["EPILOG", "LEGACY_EXITS", "OPTIONS", "CliError", "Exit", "exit_of", "option_of"]


class Exit(IntEnum):
    OK = 0
    """Done (``watch``: the task completed)."""
    TASK_FAILED = 1
    """``watch``: the task ended ``failed`` (it is in the dead letter queue)."""
    USAGE = 2
    """Bad arguments (argparse's own status), an invalid payload or option value (the
    server's 422), a bad config file."""
    NOT_FOUND = 3
    """No task with that id (404)."""
    UNAVAILABLE = 4
    """The server does not answer (or is not a vpsweb-tasks API), the database cannot be
    opened or used, or either failed (5xx)."""
    AUTH = 5
    """The server refused the API key (401/403): missing or wrong."""
    CONFLICT = 6
    """The task's status does not allow it (409: cancel a finished task, retry one that is
    not failed), or the queue is full (429)."""
    TASK_CANCELLED = 7
    """``watch``: the task ended ``cancelled``."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT, as shells report it)."""


EPILOG = """\
exit status:
  0  done (watch: the task completed)
  1  watch: the task failed (it is in the dead letter queue)
  2  usage: bad arguments, an invalid payload or option value, a bad config file
  3  not found: no task with that id
  4  unavailable: the server does not answer, the database cannot be used, 5xx
  5  the server refused the API key (401/403)
  6  conflict: the task's status does not allow it (409), the queue is full (429)
  7  watch: the task was cancelled
  130 interrupted (Ctrl-C)
"""

#: The statuses of the first commands, which they keep.
LEGACY_EXITS = """\
serve, worker and status: 0 done, 1 the database cannot be used (status: none there),
  2 usage or config error
"""


class CliError(Exception):
    """Ends a command: ``message`` on stderr, ``code`` as the exit status."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())  # one line, whatever it quotes


#: CLI options for the fields of a submit (the HTTP body's names and TaskDefinition's).
OPTIONS = {
    "task_name": "--name",
    "name": "--name",
    "task_type": "TYPE",
    "priority": "--priority",
    "max_retries": "--max-retries",
    "timeout_seconds": "--timeout",
    "metadata": "--metadata",
    "payload": "--payload",
    "delay": "--delay",
    "delay_seconds": "--delay",
    "run_at": "--run-at",
    "queue": "--queue",
    "depends_on": "--depends-on",
    "concurrency_key": "--concurrency-key",
    "idempotency_key": "--idempotency-key",
    "Idempotency-Key": "--idempotency-key",
    "reason": "--reason",
    "category": "--category",
}


def option_of(loc: Sequence[object]) -> str:
    """The CLI option a validation error's location names (``("body", "payload", "a")``:
    ``--payload``)."""
    parts = [str(part) for part in loc if part not in ("body", "header", "query", "path")]
    if not parts:
        return "input"
    first = OPTIONS.get(parts[0], parts[0])
    return ".".join([first, *parts[1:]])


def exit_of(exc: Exception) -> CliError:
    """A library exception (of the direct mode) as the error the command ends with."""
    match exc:
        case CliError():
            return exc
        case TaskNotFoundError():
            return CliError(Exit.NOT_FOUND, str(exc))
        case TaskStateError() | HandlerUnavailableError() | QueueFullError():
            return CliError(Exit.CONFLICT, str(exc))
        case ValidationError():
            error = exc.errors(include_url=False)[0]
            return CliError(Exit.USAGE, f"{option_of(error['loc'])}: {error['msg']}")
        case InvalidInputError():
            return CliError(Exit.USAGE, f"{option_of(exc.field.split('.'))}: {exc.problem}")
        case UnknownQueueError() | DependencyNotFoundError():
            field, _, problem = str(exc).partition(": ")  # the message names its field
            return CliError(Exit.USAGE, f"{option_of([field])}: {problem}")
        case IdempotencyKeyError():
            return CliError(Exit.USAGE, f"--idempotency-key: {exc}")
        case UnknownTaskTypeError():
            return CliError(Exit.USAGE, f"TYPE: {exc}")
        case ConfigError():
            return CliError(Exit.USAGE, str(exc))
        case StorageError():
            return CliError(Exit.UNAVAILABLE, str(exc))
    raise exc
