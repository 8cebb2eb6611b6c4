"""TaskContext: what a task function receives, and what a submitter holds.

The same object is handed to ``create_task``/``submit`` callers and, in the process that
runs the task, to the task function: ``await context.update_progress(...)`` in the task is
seen at once by whoever holds the context and by every progress listener.

A plain ``def`` task runs in a worker thread and gets the same context: it reports progress
with ``context.report_progress(...)`` (a hop to the event loop) and checks for a stop
with ``context.check_cancelled()`` (a flag read, no hop). A process task
(``process=True``) gets a :class:`ProcessContext` in its child process.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import anyio
import anyio.from_thread

from .errors import ErrorCategory
from .log import TaskLogger, running_task
from .models import TaskDefinition, TaskRecord, TaskStatus
from .storage.ops import Step
from .storage.types import NewTask
from .validation import check_json_object, check_text

__all__ = [
    "AnyTaskFunction",
    "Contexts",
    "ProcessContext",
    "ProcessTaskFunction",
    "TaskContext",
    "TaskFunction",
    "TaskHost",
    "current_task",
]

#: ``async def fn(context) -> JSON-able result`` (on the event loop), or
#: ``def fn(context) -> JSON-able result`` (in a worker thread).
TaskFunction = Callable[["TaskContext"], Awaitable[Any]] | Callable[["TaskContext"], Any]


class ProcessContext(Protocol):
    """What a process task's function (``process=True``) receives in its child process;
    a :class:`TaskContext` offers the same, so a function typed with it runs either way.

    There is no manager in the child: progress goes to the worker over a pipe, and a
    cancel or timeout kills the child, so ``cancelled`` stays false and
    ``check_cancelled()`` never raises there."""

    @property
    def task_id(self) -> str: ...

    @property
    def payload(self) -> dict[str, Any]: ...

    @property
    def attempt(self) -> int: ...

    @property
    def dependency_results(self) -> dict[str, Any]: ...

    @property
    def cancelled(self) -> bool: ...

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def check_cancelled(self) -> None: ...

    def report_progress(
        self, progress: float, message: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None: ...

    async def update_progress(
        self, progress: float, message: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None: ...


#: A process task's function: ``def fn(context)`` or ``async def fn(context)``, defined at
#: a module's top level (the child imports it by name).
ProcessTaskFunction = Callable[[ProcessContext], Any]

#: Whatever a task type can be registered with.
AnyTaskFunction = TaskFunction | ProcessTaskFunction

#: The task whose function runs in the current async task (or its worker thread); set by
#: the queue. It lives in .log, whose JSON lines read the task's fields from it.
_current = running_task


class _Flag:
    """A one-way flag that makes its anyio Event only when someone waits: most contexts
    are never waited on, and an Event per context per state was measurable per task."""

    __slots__ = ("_event", "_set")

    def __init__(self, value: bool = False) -> None:
        self._set = value
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


#: The flag of a state a context starts in (a record already stored, already finished):
#: it never changes, so every such context shares it instead of holding one of its own.
_SET = _Flag(True)


class TaskHost(Protocol):
    """What a context asks of the manager it belongs to."""

    async def _report_progress(
        self,
        context: TaskContext,
        progress: float,
        message: str | None,
        metadata: dict[str, Any] | None,
    ) -> None: ...

    async def wait(
        self, task_id: str, *, timeout: float | None = None, _context: TaskContext | None = None
    ) -> TaskRecord: ...

    async def acquire_rate(self, limit: str, *, fields: Mapping[str, Any]) -> str: ...

    async def report_tokens(self, key: tuple[str, str], tokens: int) -> None: ...

    def resolve_rate_key(self, limit: str, fields: Mapping[str, Any]) -> tuple[str, str]: ...


def current_task() -> TaskContext | None:
    """The context of the task running in the current async task, if any."""
    return cast("TaskContext | None", _current.get())


class TaskContext:
    """A task as its submitter and its function see it."""

    def __init__(
        self,
        *,
        task_id: str,
        definition: TaskDefinition | None = None,
        manager: TaskHost,
        payload: dict[str, Any] | None = None,
        record: TaskRecord | None = None,
    ) -> None:
        self.task_id = task_id
        if definition is None and record is None:
            raise TypeError("a TaskContext needs its definition or its record")
        self._definition = definition
        self.payload: dict[str, Any] = payload or {}
        self._manager = manager
        self._record = record
        self._stored_as: NewTask | None = None  # the record of a task this process stored
        self._finished: Callable[[], TaskRecord] | None = None  # see _completed
        self._status = record.status if record else TaskStatus.PENDING
        self._progress = record.progress if record else 0.0
        self._message = record.message if record else None
        self._attempt = record.attempts if record else 0
        self._cancel_requested = False
        self._stored = _SET if record is not None else _Flag()
        self._store_error: BaseException | None = None
        self._done = _SET if record is not None and record.status.is_terminal else _Flag()
        self._logger: TaskLogger | None = None
        # Made at the first write: most tasks have none (a list a running task counted).
        self._completion_writes: list[Step] | None = None
        self.replayed = False
        """True for the context a submit returned because its idempotency key was held
        already: the task is the first submit's (nothing new was stored)."""
        self.rate_keys: tuple[tuple[str, str], ...] = record.rate_keys if record else ()
        """The rate-limit keys (limit name, key) the task's claim took a slot of."""
        # Limits acquired in the running attempt; a set made at the first (most tasks
        # acquire none, and an empty set a running task was measurable).
        self._limits_used: set[str] | frozenset[str] = frozenset()
        self.dependency_results: dict[str, Any] = {}
        """In a running task: the results of the tasks it depends on
        (``TaskDefinition.depends_on``), task id -> result, read when it starts. A
        dependency that failed or was cancelled (the task runs anyway:
        ``on_dependency_failure="run"``) is absent."""

    @property
    def definition(self) -> TaskDefinition:
        """What the task was submitted with (built from its record on first use, for tasks
        this process did not submit)."""
        if self._definition is None:
            assert self._record is not None
            self._definition = self._record.definition()
        return self._definition

    @property
    def task_type(self) -> str:
        """The task's type (read without building :attr:`definition`)."""
        if self._definition is not None:
            return self._definition.task_type
        assert self._record is not None
        return self._record.task_type

    @property
    def logger(self) -> TaskLogger:
        """A logger whose every line carries ``task_id:<id>``, for the task's own code."""
        if self._logger is None:
            self._logger = TaskLogger(logging.getLogger("vpsweb_tasks.task"), self.task_id)
        return self._logger

    def __repr__(self) -> str:
        return (
            f"<TaskContext {self.task_id} {self.task_type!r} {self._status} {self._progress:.0%}>"
        )

    # --- read ----------------------------------------------------------------------------

    @property
    def status(self) -> TaskStatus:
        return self._status

    @property
    def progress(self) -> float:
        return self._progress

    @property
    def message(self) -> str | None:
        return self._message

    @property
    def attempt(self) -> int:
        """The current attempt, from 1 (0 before the first attempt starts)."""
        return self._attempt

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested (the task is being stopped) or happened."""
        return self._cancel_requested or self._status is TaskStatus.CANCELLED

    @property
    def record(self) -> TaskRecord | None:
        """The latest record this context has seen from storage."""
        if self._finished is not None:
            self._record, self._finished = self._finished(), None  # built when first read
        elif self._record is None and self._stored_as is not None:
            self._record = self._stored_as.record()  # built when first read, if ever
        return self._record

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # --- write from the task -------------------------------------------------------------

    async def update_progress(
        self,
        progress: float,
        message: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Report progress (0..1) with an optional message and metadata.

        Listeners receive every update, in order; storage receives the latest value at
        most every ``progress_flush_interval`` (plus each change of message). A message or
        metadata storage cannot hold raises ``InvalidInputError`` naming it.
        """
        _check_progress(progress)
        if message is not None:
            check_text(message, "message")
        if metadata:
            metadata = check_json_object(metadata, "metadata")
        self._progress = float(progress)
        if message is not None:
            self._message = message
        await self._manager._report_progress(self, self._progress, self._message, metadata or None)

    def report_progress(
        self,
        progress: float,
        message: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """:meth:`update_progress` for a plain ``def`` task, from its worker thread: it
        waits until the update is published (a hop to the event loop, ~0.1 ms). It is a
        stop check too: raises like :meth:`check_cancelled` once the attempt is being
        stopped. On the event loop, use ``await update_progress(...)``."""
        _check_progress(progress)
        if not _check_in_worker_thread():
            raise RuntimeError(
                "report_progress is for plain def tasks, from their worker thread;"
                " on the event loop use await context.update_progress(...)"
            )
        try:
            anyio.from_thread.run(self.update_progress, progress, message, metadata)
        except concurrent.futures.CancelledError:
            _check_in_worker_thread()  # stopped while the update was on its way: raises
            raise

    def check_cancelled(self) -> None:
        """In a plain ``def`` task (a worker thread): raise if this attempt is being
        stopped (cancel requested, timeout passed, worker shutting down), so the function
        can end early. It reads a flag (no hop to the event loop): call it often. The
        exception is the event loop's cancellation (a ``BaseException``, which
        ``except Exception`` does not catch); the attempt then ends as cancelled, timed
        out or released, as an ``async`` task's would. A function that never checks runs
        to its end; its result is then dropped the same way.

        Anywhere else (on the event loop, where any ``await`` is a check) it does nothing."""
        _check_in_worker_thread()

    def write_on_completion(self, step: Step) -> None:
        """Write ``step`` (a named query of an installed extension, see
        :mod:`vpsweb_tasks.storage.ops`) in the same transaction as this attempt's
        completion: both are stored or neither. Dropped if the attempt does not complete."""
        if self._completion_writes is None:
            self._completion_writes = []
        self._completion_writes.append(step)

    def _take_completion_writes(self) -> list[Step]:
        writes, self._completion_writes = self._completion_writes, None
        return writes or []

    # --- wait ----------------------------------------------------------------------------

    async def acquire_rate(self, limit: str, **fields: Any) -> str:
        """Wait for a slot of the shared rate limit ``limit`` (a ``rate_limits`` name or a
        key template such as ``"llm:{provider}:{model}"``, its fields from ``fields``,
        else from the payload) and take it; the key taken. For steps inside a running
        task (each of several calls to a provider): the wait does not count as a failure
        and spends no attempt (it does count against the task's timeout)."""
        fields = {**self.payload, **fields}
        self._limits_used = {*self._limits_used, self._manager.resolve_rate_key(limit, fields)[0]}
        return await self._manager.acquire_rate(limit, fields=fields)

    async def report_tokens(self, tokens: int, limit: str | None = None, **fields: Any) -> None:
        """Reconcile token limits with the ``tokens`` a call used (the provider's reported
        usage): of ``limit`` (as :meth:`acquire_rate`'s), or of every key the task's claim
        took. Keys of limits without ``tokens`` ignore it."""
        if limit is not None:
            keys = [self._manager.resolve_rate_key(limit, {**self.payload, **fields})]
        else:
            keys = list(self.rate_keys)
        for key in keys:
            await self._manager.report_tokens(key, tokens)

    async def wait_stored(self) -> TaskRecord:
        """Wait until the task is durably stored (``create_task`` stores in the
        background). Raises the error that prevented it, e.g. ``QueueFullError``."""
        await self._stored.wait()
        if self._store_error is not None:
            raise self._store_error
        record = self.record
        assert record is not None
        return record

    async def wait(self, timeout: float | None = None) -> TaskRecord:
        """Wait for the task to finish (completed, failed or cancelled) and return its
        final record, with ``result`` or the error. Works whichever process runs it."""
        with anyio.fail_after(timeout):
            await self.wait_stored()
            return await self._manager.wait(self.task_id, _context=self)

    # --- updates from the manager --------------------------------------------------------

    def _mark_stored(self, task: NewTask | None, error: BaseException | None) -> None:
        """The task was stored as ``task`` (a context starts out pending), or not."""
        if task is not None and self._record is None:
            self._stored_as = task
        self._store_error = error
        self._stored.set()
        if error is not None:
            self._done.set()

    def _completed(
        self, attempt: int, message: str | None, record: Callable[[], TaskRecord]
    ) -> None:
        """The task completed: as :meth:`_apply` of its finished record, which ``record``
        builds when :attr:`record` is first read (most completions' never is)."""
        self._finished = record
        self._status = TaskStatus.COMPLETED
        self._attempt = attempt
        self._progress = 1.0
        if message is not None:
            self._message = message
        self._done.set()

    def _apply(self, record: TaskRecord) -> None:
        requeued = (
            self._status is TaskStatus.FAILED
            and record.status is TaskStatus.PENDING
            and (self.record is None or record.updated_at >= self.record.updated_at)
        )
        self._record, self._finished = record, None
        self._status = record.status
        self._attempt = record.attempts
        if record.status is TaskStatus.COMPLETED or record.progress > self._progress:
            self._progress = record.progress
        if record.message is not None:
            self._message = record.message
        if record.cancel_requested:
            self._cancel_requested = True
        if record.status.is_terminal:
            self._done.set()
        elif requeued and self._done.is_set():
            self._done = _Flag()  # back from the dead letter queue: waiting again

    def _request_cancel(self) -> None:
        self._cancel_requested = True

    @property
    def error_category(self) -> ErrorCategory | None:
        record = self.record
        return record.error_category if record else None


def _check_in_worker_thread() -> bool:
    """In a worker thread of anyio's: raise its cancellation if the task that started the
    thread is being cancelled, else True. Elsewhere: False."""
    try:
        anyio.from_thread.check_cancelled()
    except RuntimeError:  # anyio's NoEventLoopError: not in one of its worker threads
        return False
    return True


def _check_progress(progress: Any) -> None:
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise TypeError("progress must be a number between 0 and 1")
    if not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be between 0 and 1, got {progress!r}")


class Contexts:
    """The contexts of the tasks this process knows, held weakly (a context lives as long
    as its submitter or its running function holds it)."""

    def __init__(self, host: TaskHost) -> None:
        self._host = host
        self._live: weakref.WeakValueDictionary[str, TaskContext] = weakref.WeakValueDictionary()

    def get(self, task_id: str) -> TaskContext | None:
        return self._live.get(task_id)

    def new(self, task_id: str, definition: TaskDefinition, payload: dict[str, Any]) -> TaskContext:
        """The context of a task being submitted from this process."""
        context = TaskContext(
            task_id=task_id, definition=definition, manager=self._host, payload=payload
        )
        self._live[task_id] = context
        return context

    def of(self, record: TaskRecord) -> TaskContext:
        """The task's context, made from its record if this process holds none."""
        context = self._live.get(record.id)
        if context is None:
            context = TaskContext(
                task_id=record.id, manager=self._host, payload=record.payload, record=record
            )
            self._live[record.id] = context
        return context

    def replayed(self, record: TaskRecord) -> TaskContext:
        """A context of a task found by a repeated idempotency key (``replayed``). Its
        own object, so the first submitter's context is not marked; it follows the task
        like any other when this process holds no context of it."""
        context = TaskContext(
            task_id=record.id, manager=self._host, payload=record.payload, record=record
        )
        context.replayed = True
        self._live.setdefault(record.id, context)
        return context

    def apply(self, record: TaskRecord) -> None:
        """A task reached a new state: its context, if any, follows."""
        context = self._live.get(record.id)
        if context is not None:
            context._apply(record)
