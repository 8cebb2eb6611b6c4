"""Every exception vpsweb-tasks raises, and the failure categories.

Exception hierarchy::

    VpswebTasksError
    ├── ConfigError (ValueError)          invalid configuration; names the key
    │   └── NotConfiguredError            a feature's configuration is incomplete (problems)
    ├── InvalidInputError (ValueError)    an argument storage or JSON cannot hold; names it
    ├── QueueFullError                    max_queue_size reached; nothing was stored
    ├── IdempotencyKeyError (ValueError)  a key reused with another request; nothing stored
    ├── TaskNotFoundError (LookupError)   no task with that id
    ├── UnknownTaskTypeError (LookupError) no handler registered under that name
    ├── UnknownQueueError (ValueError)    a queue name that is not configured
    ├── DependencyNotFoundError (LookupError) a dependency id that no stored task has
    ├── DependencyFailedError             why a dependent was cancelled: a dependency failed
    ├── TaskStateError                    the task's status does not allow the operation
    ├── InvalidScheduleError (ValueError) a schedule's definition is invalid; names the field
    │   └── DuplicateScheduleError        a schedule of that name exists already
    ├── ScheduleNotFoundError (LookupError) no schedule of that name
    ├── ManagerNotRunningError            the manager has not been started (or has stopped)
    ├── LeaseLostError                    a worker lost its claim on a task (fenced out)
    ├── ResultNotSerializableError (TypeError) a handler returned something JSON cannot hold
    ├── TaskTimeoutError (TimeoutError)   a task ran past its timeout
    ├── WorkerLostError                   the worker running a task died (lease expired)
    ├── HandlerUnavailableError           the task's callable is gone (its process died)
    ├── MemoryLimitError (MemoryError)    a process task went past its memory_limit_mb
    ├── TaskProcessError                  a process task's child died, or failed with an
    │                                     exception that could not be brought back
    ├── CircuitOpenError (pybreaker.CircuitBreakerError)  a circuit breaker rejected the call
    ├── StorageError                      the task database failed (not the caller's input)
    │   ├── StorageUnavailableError       it cannot do this now (``cause``: disk_full, ...)
    │   └── StorageCorruptError           the startup check found a damaged or foreign file
    └── Retry                             raised by a task to ask for a retry after `delay`

Each class's ``category`` is the :class:`ErrorCategory` it gets when it is the failure of
a task; failures of task code are not wrapped but classified (see
:mod:`vpsweb_tasks.classify`). Extensions derive their own errors from these (the
translation extension's are in :mod:`vpsweb_tasks.translation.errors`).
"""

from __future__ import annotations

from enum import StrEnum

import pybreaker

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DependencyFailedError",
    "DependencyNotFoundError",
    "DuplicateScheduleError",
    "ErrorCategory",
    "HandlerUnavailableError",
    "IdempotencyKeyError",
    "InvalidInputError",
    "InvalidScheduleError",
    "LeaseLostError",
    "ManagerNotRunningError",
    "MemoryLimitError",
    "NotConfiguredError",
    "QueueFullError",
    "ResultNotSerializableError",
    "Retry",
    "ScheduleNotFoundError",
    "StorageCorruptError",
    "StorageError",
    "StorageFault",
    "StorageUnavailableError",
    "TaskNotFoundError",
    "TaskProcessError",
    "TaskStateError",
    "TaskTimeoutError",
    "UnknownQueueError",
    "UnknownTaskTypeError",
    "VpswebTasksError",
    "WorkerLostError",
]


class ErrorCategory(StrEnum):
    """The failure categories; each has a default retry strategy (see retry.py). The
    eight of the design document, and ``budget``: a spending limit (a translation job's
    cost cap) would be exceeded; retrying cannot help."""

    NETWORK = "network"
    DATABASE = "database"
    EXTERNAL_SERVICE = "external_service"
    TIMEOUT = "timeout"
    VALIDATION = "validation"
    PERMISSION = "permission"
    RESOURCE = "resource"
    UNKNOWN = "unknown"
    BUDGET = "budget"


class VpswebTasksError(Exception):
    """Root of every exception raised by vpsweb-tasks."""

    #: Category used when this error is the failure of a task.
    category: ErrorCategory = ErrorCategory.UNKNOWN


class ConfigError(VpswebTasksError, ValueError):
    """Invalid configuration. The message names each offending key."""

    category = ErrorCategory.VALIDATION


class InvalidInputError(VpswebTasksError, ValueError):
    """An argument that storage or JSON cannot hold (see :mod:`vpsweb_tasks.validation`):
    text with a NUL character or a lone surrogate, JSON with a non-finite number or nested
    too deep, a payload too large. ``field`` names the argument (``payload``, ``reason``);
    nothing was stored. Models (``TaskDefinition``, translation requests) raise pydantic's
    ``ValidationError`` for the same problems, naming the field the same way."""

    category = ErrorCategory.VALIDATION

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class QueueFullError(VpswebTasksError):
    """The queue holds ``max_queue_size`` waiting tasks (``size``), or too many to take
    all ``requested`` tasks of a batch; nothing was stored."""

    category = ErrorCategory.RESOURCE

    def __init__(self, limit: int, size: int, requested: int = 1) -> None:
        if requested == 1:
            message = f"queue is full: {size} waiting tasks, max_queue_size={limit}"
        else:
            message = (
                f"queue has no room for {requested} tasks: {size} waiting tasks,"
                f" max_queue_size={limit}"
            )
        super().__init__(message)
        self.limit = limit
        self.size = size
        self.requested = requested


class IdempotencyKeyError(VpswebTasksError, ValueError):
    """An idempotency key already belongs to a task submitted with another request (other
    type, name, payload, ...): nothing was stored. A repeat of the same request with the
    same key is not an error: it gets the first task back."""

    category = ErrorCategory.VALIDATION

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was used for another request (task {task_id}):"
            " a key may be reused only to repeat the same request"
        )
        self.key = key
        self.task_id = task_id


class TaskNotFoundError(VpswebTasksError, LookupError):
    """No task with the given id exists (it may have been removed by retention cleanup)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task not found: {task_id}")
        self.task_id = task_id


class UnknownTaskTypeError(VpswebTasksError, LookupError):
    """No handler is registered under the given task type."""

    category = ErrorCategory.VALIDATION

    def __init__(self, task_type: str, registered: list[str]) -> None:
        known = ", ".join(sorted(registered)) or "(none)"
        super().__init__(f"unknown task type {task_type!r}; registered types: {known}")
        self.task_type = task_type
        self.registered = sorted(registered)


class UnknownQueueError(VpswebTasksError, ValueError):
    """A queue name that ``background_tasks.queues`` does not list. ``field`` names where
    it came from (``queue`` of a submit, ``background_tasks.worker_queues``, ``--queues``)."""

    category = ErrorCategory.VALIDATION

    def __init__(self, queue: str, known: list[str], *, field: str = "queue") -> None:
        names = ", ".join(sorted(known))
        super().__init__(
            f"{field}: unknown queue {queue!r}; the queues are {names}"
            " (background_tasks.queues lists them)"
        )
        self.queue = queue
        self.known = sorted(known)
        self.field = field


class RateLimitKeyError(VpswebTasksError, ValueError):
    """A rate limit a task type or a task names that cannot be used: a name that
    ``rate_limits`` does not configure, or a key template naming a field the task's
    payload does not have. ``key``: the name or template. Nothing was stored."""

    category = ErrorCategory.VALIDATION

    def __init__(self, key: str, message: str, *, field: str = "rate_limits") -> None:
        super().__init__(f"{field}: {key!r}: {message}")
        self.key = key
        self.field = field


class DependencyNotFoundError(VpswebTasksError, LookupError):
    """Ids in ``depends_on`` that no stored task has: never submitted, or finished and
    deleted by retention cleanup. Nothing of the submit was stored."""

    category = ErrorCategory.VALIDATION

    def __init__(self, missing: list[str]) -> None:
        ids = ", ".join(missing)
        super().__init__(
            f"depends_on: no task {ids} (never submitted, or finished and deleted by"
            " retention cleanup)"
        )
        self.missing = list(missing)


class DependencyFailedError(VpswebTasksError):
    """The error a dependent task is cancelled with when a task it depends on failed for
    good or was cancelled (and it did not ask to run anyway): its message names it."""


class TaskStateError(VpswebTasksError):
    """The task's current status does not allow the requested operation."""

    def __init__(self, task_id: str, status: str, operation: str) -> None:
        super().__init__(f"cannot {operation} task {task_id}: it is {status}")
        self.task_id = task_id
        self.status = status
        self.operation = operation


class InvalidScheduleError(VpswebTasksError, ValueError):
    """A schedule's definition is invalid: ``field`` names what (``cron``, ``every``,
    ``timezone``, ``task_type``...), ``reason`` says why. Nothing was stored."""

    category = ErrorCategory.VALIDATION

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"schedule {field}: {reason}")
        self.field = field
        self.reason = reason


class DuplicateScheduleError(InvalidScheduleError):
    """A schedule of that name exists already (field ``name``); nothing was stored."""

    def __init__(self, name: str) -> None:
        super().__init__("name", f"a schedule named {name!r} exists already")
        self.name = name


class ScheduleNotFoundError(VpswebTasksError, LookupError):
    """No schedule of the given name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule not found: {name}")
        self.name = name


class ManagerNotRunningError(VpswebTasksError):
    """The task manager is not running; use ``async with manager:`` or ``await start()``."""


class LeaseLostError(VpswebTasksError):
    """A worker tried to record an outcome for a task it no longer holds."""


class ResultNotSerializableError(VpswebTasksError, TypeError):
    """A task returned a value that cannot be stored as JSON."""

    category = ErrorCategory.VALIDATION


class TaskTimeoutError(VpswebTasksError, TimeoutError):
    """A task ran longer than its timeout."""

    category = ErrorCategory.TIMEOUT


class WorkerLostError(VpswebTasksError):
    """The worker running the task stopped renewing its lease (it crashed or was killed)."""

    category = ErrorCategory.RESOURCE


class HandlerUnavailableError(VpswebTasksError):
    """The task's callable is not available in any live process."""

    category = ErrorCategory.RESOURCE


class MemoryLimitError(VpswebTasksError, MemoryError):
    """A process task allocated beyond its memory limit (``memory_limit_mb``, enforced as
    the address-space limit of its child process). The worker is unharmed; the child is
    replaced."""

    category = ErrorCategory.RESOURCE


class TaskProcessError(VpswebTasksError):
    """A process task's child process died without an answer (killed, crashed), or the
    task failed with an exception that could not be rebuilt in the worker: then the
    message holds its type and text, ``category`` the child's classification of it, and
    ``child_traceback`` its traceback."""

    category = ErrorCategory.RESOURCE

    def __init__(
        self,
        message: str,
        *,
        category: ErrorCategory = ErrorCategory.RESOURCE,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.category = category
        self.child_traceback = traceback
        if traceback:
            self.add_note(f"in the task's process:\n{traceback}")


class CircuitOpenError(VpswebTasksError, pybreaker.CircuitBreakerError):
    """A circuit breaker rejected a call because it is open (or half-open with all its
    trial calls taken). Also a ``pybreaker.CircuitBreakerError``.

    A task failing with this error (anywhere in its chain) is deferred to ``retry_at``
    without spending an attempt.
    """

    category = ErrorCategory.EXTERNAL_SERVICE

    def __init__(self, name: str, retry_at: float | None = None, *, state: str = "open") -> None:
        detail = "is open" if state == "open" else f"is {state} and its trial calls are taken"
        super().__init__(f"circuit breaker {name!r} {detail}")
        self.breaker = name
        self.state = state
        #: Epoch seconds at which the breaker lets a trial call through again.
        self.retry_at = retry_at


class Retry(VpswebTasksError):
    """Raised by a task to be run again after ``delay`` seconds.

    The attempt still counts against the task's ``max_retries``.
    """

    def __init__(self, delay: float = 0.0, message: str = "retry requested") -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        super().__init__(message)
        self.delay = float(delay)


class NotConfiguredError(ConfigError):
    """A feature cannot work until its configuration is complete (an extension's, e.g.
    translation jobs without an LLM provider). ``problems`` lists what to configure, one
    key per entry; the HTTP API answers 503 with them."""

    def __init__(self, feature: str, problems: list[str]) -> None:
        super().__init__(f"{feature} are not configured: " + "; ".join(problems))
        self.problems = list(problems)


class StorageFault(StrEnum):
    """Why the task database cannot do what was asked (:class:`StorageUnavailableError`)."""

    DISK_FULL = "disk_full"
    """No room for the database to grow (the volume is full, or a file size limit)."""
    READ_ONLY = "read_only"
    """The database takes no writes: a read-only file or volume, an immutable file, a
    read-only PostgreSQL session or server."""
    LOCKED = "locked"
    """Another process held the database's write lock past ``storage.busy_timeout``."""
    CORRUPT = "corrupt"
    """The database file is damaged."""
    UNAVAILABLE = "unavailable"
    """Anything else that is not the caller's fault: an I/O error, a lost connection."""


class StorageError(VpswebTasksError):
    """The task database failed; not a problem of the caller's input."""

    category = ErrorCategory.DATABASE


class StorageUnavailableError(StorageError):
    """The task database cannot do this now, for ``cause`` (a :class:`StorageFault`); the
    operation changed nothing (its transaction was rolled back), so calling again once the
    fault clears is safe. Reads often keep working while writes fail. The HTTP API
    answers 503 with ``Retry-After``."""

    def __init__(self, cause: StorageFault, detail: str, *, where: str | None = None) -> None:
        self.cause = StorageFault(cause)
        self.detail = detail
        self.where = where
        located = f" ({where})" if where else ""
        super().__init__(f"storage unavailable ({self.cause.value}): {detail}{located}")


class StorageCorruptError(StorageError):
    """The database at ``path`` failed the startup check (``storage.startup_check``):
    damaged pages, or a file that is not a database at all. ``problems`` are what the
    check reported. Nothing was written to the file."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        shown = "; ".join(self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"database {path} is not usable: {shown}{more}")
