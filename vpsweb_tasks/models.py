"""The data model: priorities, statuses and their legal transitions, task definitions,
the records storage returns, and progress updates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from .config import DEFAULT_QUEUE, QueueName
from .errors import ErrorCategory, WorkerLostError
from .retry import RetryConfig
from .validation import MAX_JSON_BYTES, JsonObject, storable

__all__ = [
    "BLOCKED_RUN_AT",
    "DEFAULT_QUEUE",
    "LEGAL_TRANSITIONS",
    "MAX_DELAY",
    "MAX_METADATA_BYTES",
    "DeadLetter",
    "DeadLetterCause",
    "ExecutionOutcome",
    "ExecutionRecord",
    "JsonObject",
    "MaxLostAttempts",
    "ProgressUpdate",
    "QueueStatus",
    "ResourceSample",
    "TaskDefinition",
    "TaskName",
    "TaskPriority",
    "TaskRecord",
    "TaskStatus",
    "TaskTypeName",
    "from_timestamp",
    "to_datetime",
]

#: Largest JSON encoding accepted for a task's metadata or payload.
MAX_METADATA_BYTES = MAX_JSON_BYTES
#: Longest ``TaskDefinition.delay``: its run time must stay a date storage can read back.
MAX_DELAY = timedelta(days=36_525)


class TaskPriority(StrEnum):
    """Dispatch priority; strings on the wire. ``critical > high > normal > low``."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Integer stored in the database; a higher rank runs first."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> TaskPriority:
        return _RANK_PRIORITY[rank]


_PRIORITY_RANK = {
    TaskPriority.LOW: 0,
    TaskPriority.NORMAL: 1,
    TaskPriority.HIGH: 2,
    TaskPriority.CRITICAL: 3,
}
_RANK_PRIORITY = {rank: priority for priority, rank in _PRIORITY_RANK.items()}


class TaskStatus(StrEnum):
    PENDING = "pending"
    """Waiting to run (also while a delayed submit's run time is in the future)."""
    RUNNING = "running"
    """Claimed by a worker, which holds a lease on it."""
    RETRYING = "retrying"
    """An attempt failed; waiting for the next run time."""
    COMPLETED = "completed"
    FAILED = "failed"
    """Retries exhausted or not retryable: the task is in the dead letter queue."""
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_waiting(self) -> bool:
        return self in (TaskStatus.PENDING, TaskStatus.RETRYING)


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

#: Every status change storage may make. ``running -> pending`` is a release on graceful
#: shutdown (the attempt is not counted); ``failed -> pending`` is a requeue from the dead
#: letter queue. Completed and cancelled tasks never change again.
LEGAL_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.RETRYING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.RETRYING,
            TaskStatus.CANCELLED,
            TaskStatus.PENDING,
        }
    ),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# Constraints rather than Field(), so that FastAPI parameters can use these types too.

#: A task's name: text storage can hold, 1-200 characters, not blank.
TaskName = Annotated[
    str, StringConstraints(min_length=1, max_length=200), storable, AfterValidator(_not_blank)
]
#: A task type's name: letters, digits and ``_.:-``, 1-100 characters.
TaskTypeName = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]

#: The run time of a task waiting on its dependencies: one that never comes (the last day
#: a datetime can hold). When the last dependency finishes, the task's run time becomes
#: that moment.
BLOCKED_RUN_AT = 253402214400.0  # 9999-12-31T00:00:00Z

#: Most dependencies one task may have.
MAX_DEPENDENCIES = 1000

#: What a dependent does when a task it depends on fails for good or is cancelled.
DependencyFailure = Literal["cancel", "run"]

#: An idempotency key: 1 to 255 visible ASCII characters (a UUID, say), as HTTP's
#: ``Idempotency-Key`` header carries it.
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[!-~]+$")]


#: How many attempts of a task may be lost with their worker before it is dead-lettered.
MaxLostAttempts = Annotated[int, Field(ge=1, le=100)]


class TaskDefinition(BaseModel):
    """What to run and how: validated on construction, errors name the field."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    name: TaskName
    task_type: TaskTypeName
    priority: TaskPriority = TaskPriority.NORMAL
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    metadata: JsonObject = Field(default_factory=dict)
    delay: timedelta | None = None
    """Run no earlier than this long after submission (float seconds or timedelta)."""
    run_at: AwareDatetime | None = None
    """Run no earlier than this time (an aware datetime; not with ``delay``). A time in the
    past runs as soon as a worker is free."""
    idempotency_key: IdempotencyKey | None = None
    """A submit with a key that a stored task holds gets that task back instead of a new
    one (``context.replayed``), as long as the task is retained; with another request
    (type, name, payload, ...) it is an IdempotencyKeyError. Unique across processes."""
    retry: RetryConfig | None = None
    """This task's own retry policy, instead of its type's or its error category's."""
    max_lost_attempts: MaxLostAttempts | None = None
    """Attempts of this task that may be lost with their worker (killed, out of memory)
    before it is dead-lettered, instead of ``background_tasks.max_lost_attempts``. Lost
    attempts do not count against ``max_retries``."""
    queue: QueueName = DEFAULT_QUEUE
    """The named queue the task waits in: workers serving it run it
    (``background_tasks.worker_queues``, ``vpsweb-tasks worker --queues``). It must be one
    of ``background_tasks.queues``."""
    depends_on: Annotated[
        tuple[Annotated[str, Field(min_length=1, max_length=100), storable], ...],
        Field(max_length=MAX_DEPENDENCIES),
    ] = ()
    """Ids of stored tasks this one waits for: it is not claimed (and spends no attempt)
    until all of them completed; their results are in ``context.dependency_results``.
    Each must exist when this task is submitted. Not with ``run_at`` or ``delay``."""
    on_dependency_failure: DependencyFailure = "cancel"
    """When a task this one depends on fails for good or is cancelled: ``cancel`` this one
    too (its error names that dependency), or ``run`` it anyway once the others finish."""
    concurrency_key: Annotated[str, Field(min_length=1, max_length=255), storable] | None = None
    """A key (a user, a tenant: ``user:42``) whose running tasks are bounded across every
    worker (``background_tasks.max_running_per_key``) and whose tasks share dispatch
    fairly with other keys' (``background_tasks.fair_share_seconds``)."""
    rate_limits: Annotated[
        tuple[Annotated[str, Field(min_length=1, max_length=255), storable], ...],
        Field(max_length=20),
    ] = ()
    """Rate limits this task takes a slot of when claimed, besides its type's: names of
    ``rate_limits`` entries or key templates (``llm:{provider}:{model}``, fields from the
    payload); see docs/limits.md."""

    @field_validator("delay")
    @classmethod
    def _delay_not_negative(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must be >= 0")
        if value is not None and value > MAX_DELAY:
            raise ValueError(f"must be at most {MAX_DELAY.days} days")
        return value

    @field_validator("run_at")
    @classmethod
    def _not_with_delay(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and info.data.get("delay") is not None:
            raise ValueError("give run_at or delay, not both")
        if value is not None:
            # Stored as epoch seconds and read back as a UTC datetime: a time that has no
            # UTC date in years 1-9999 (0001-01-01T00:00+14:00) could be stored, never read.
            try:
                to_datetime(value.timestamp())
            except (OverflowError, ValueError, OSError):
                raise ValueError("must be a time in years 1 to 9999 in UTC") from None
        return value

    @field_validator("depends_on")
    @classmethod
    def _dependencies(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if value and (info.data.get("run_at") is not None or info.data.get("delay")):
            raise ValueError(
                "a task with dependencies runs when they finish: not with run_at or delay"
            )
        if len(set(value)) != len(value):
            raise ValueError("lists a task more than once")
        return value

    @field_validator("run_at")
    @classmethod
    def _before_blocked(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.timestamp() >= BLOCKED_RUN_AT:
            raise ValueError("must be before 9999-12-31")
        return value

    def first_run_at(self, now: float) -> float:
        """When the task may first run, in epoch seconds, if submitted at ``now``."""
        if self.run_at is not None:
            return self.run_at.timestamp()
        return now + self.delay.total_seconds() if self.delay else now


def to_datetime(value: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC)  # ints too: SQLite returns 3.0 as 3


def from_timestamp(value: float | None) -> datetime | None:
    return None if value is None else to_datetime(value)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """A task as storage holds it. Times are UTC.

    A plain frozen dataclass, not a pydantic model: storage builds one for every task it
    touches, on the hot path, and the data is already valid.
    """

    id: str
    name: str
    task_type: str
    priority: TaskPriority
    status: TaskStatus
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    max_retries: int = 3
    timeout_seconds: float | None = None
    retry: RetryConfig | None = None
    attempts: int = 0
    """Attempts that count against max_retries: a claim adds one; a release on shutdown, a
    deferral and an attempt lost with its worker give it back."""
    lost_attempts: int = 0
    """Attempts lost with their worker (its lease expired: killed, out of memory, machine
    gone). They do not count against max_retries; at ``max_lost_attempts`` the task is
    dead-lettered with ``WorkerLostError``."""
    max_lost_attempts: int | None = None
    """This task's own bound on lost attempts; None: the reaping worker's
    ``background_tasks.max_lost_attempts``."""
    idempotency_key: str | None = None
    """The key the task was submitted with (a batch's tasks: ``KEY#0``, ``KEY#1``, ...)."""
    queue: str = DEFAULT_QUEUE
    depends_on: tuple[str, ...] = ()
    """The tasks this one waits for (see :attr:`TaskDefinition.depends_on`)."""
    on_dependency_failure: DependencyFailure = "cancel"
    rate_keys: tuple[tuple[str, str], ...] = ()
    """The rate limits a claim of this task takes a slot of: (limit name, key) pairs."""
    concurrency_key: str | None = None
    progress: float = 0.0
    message: str | None = None
    result: Any = None
    error_message: str | None = None
    error_type: str | None = None
    error_category: ErrorCategory | None = None
    owner: str | None = None
    """Worker whose process holds this task's callable (an unregistered closure); None for
    registered task types, which any worker can run."""
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trace_context: dict[str, str] | None = None
    """The trace context of the submit that stored the task (OpenTelemetry's propagation
    fields, e.g. ``traceparent``); its attempts run in that trace. None: not traced."""

    def definition(self) -> TaskDefinition:
        """The definition the task was submitted with (delay aside)."""
        return TaskDefinition.model_construct(
            name=self.name,
            task_type=self.task_type,
            priority=self.priority,
            max_retries=self.max_retries,
            timeout_seconds=self.timeout_seconds,
            metadata=self.metadata,
            delay=None,
            retry=self.retry,
            max_lost_attempts=self.max_lost_attempts,
            queue=self.queue,
            depends_on=self.depends_on,
            on_dependency_failure=self.on_dependency_failure,
            concurrency_key=self.concurrency_key,
            rate_limits=(),
        )

    @property
    def waiting_on_dependencies(self) -> bool:
        """Pending until the tasks it depends on finish (not claimable yet)."""
        return self.status is TaskStatus.PENDING and self.run_at.timestamp() >= BLOCKED_RUN_AT

    @property
    def task_id(self) -> str:
        """The task's id, by the name ``TaskContext`` and the HTTP API give it."""
        return self.id

    @property
    def error(self) -> str | None:
        """The last error's message, by the name the HTTP API and ``TaskContext`` give it."""
        return self.error_message

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def _record_builder() -> Callable[..., TaskRecord]:
    """A TaskRecord from every field's value, each already of its type, set straight into
    its slot: the frozen dataclass's ``__init__`` goes through ``object.__setattr__`` a
    field, about twice the cost, and storage builds two records a task on its hot path."""
    names = [each.name for each in fields(TaskRecord)]
    scope: dict[str, Any] = {f"set_{name}": getattr(TaskRecord, name).__set__ for name in names}
    scope |= {"new": object.__new__, "TaskRecord": TaskRecord}
    lines = [f"def task_record(*, {', '.join(names)}):", "    record = new(TaskRecord)"]
    lines += [f"    set_{name}(record, {name})" for name in names]
    exec("\n".join([*lines, "    return record"]), scope)
    built: Callable[..., TaskRecord] = scope["task_record"]
    return built


task_record = _record_builder()
"""Build a TaskRecord on the hot path: every field by keyword, none defaulted, none checked."""


class ExecutionOutcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    """The worker died or lost its lease; the attempt's outcome is unknown."""
    INTERRUPTED = "interrupted"
    """Stopped by a graceful shutdown; the attempt is given back."""
    DEFERRED = "deferred"
    """Not run: a circuit breaker it depends on was open."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionRecord:
    """One attempt at running a task (a row of ``task_executions``)."""

    id: int
    """The row's id; 0 for the attempt running now, whose row is written when it ends."""
    task_id: str
    attempt: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: ExecutionOutcome
    error_category: ErrorCategory | None = None
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSample:
    """One reading of system resources (a row of ``system_metrics``)."""

    recorded_at: float
    cpu_percent: float
    """System-wide CPU use, percent."""
    memory_percent: float
    """System-wide memory use, percent."""
    disk_percent: float
    """Use of the volume holding the database, percent."""
    process_rss_mb: float
    """Resident memory of this process."""
    process_cpu_percent: float = 0.0
    """This process's CPU use, percent of one core."""
    active_tasks: int = 0
    queued_tasks: int = 0


class ProgressUpdate(_Record):
    """One progress report of a running task, as listeners receive it."""

    task_id: str
    progress: float
    message: str | None = None
    status: TaskStatus = TaskStatus.RUNNING
    timestamp: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)


class QueueStatus(_Record):
    """A snapshot of the queue as seen by one manager."""

    paused: bool
    pause_reason: str | None = None
    pending: int
    retrying: int
    running: int
    running_here: int
    max_queue_size: int
    max_concurrent_jobs: int
    worker_id: str
    workers_enabled: bool


#: Why a task is in the dead letter queue (:attr:`DeadLetter.cause`).
DeadLetterCause = Literal["failed", "lost"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A task in the dead letter queue (status ``failed``) and every attempt it made."""

    task: TaskRecord
    executions: tuple[ExecutionRecord, ...]
    """Every attempt, oldest first, each with its outcome and error (a requeued task keeps
    the attempts of its earlier runs)."""

    @property
    def errors(self) -> list[ExecutionRecord]:
        """The attempts that failed (or were lost with their worker)."""
        failed = (ExecutionOutcome.FAILED, ExecutionOutcome.LOST)
        return [execution for execution in self.executions if execution.outcome in failed]

    @property
    def cause(self) -> DeadLetterCause:
        """Why the task is here: ``lost`` when its attempts kept being lost with their
        workers until ``max_lost_attempts`` (its error is ``WorkerLostError``, saying how
        many times), ``failed`` when its own errors used up its retries or were not
        retryable."""
        last = self.executions[-1] if self.executions else None
        lost = (
            last is not None
            and last.outcome is ExecutionOutcome.LOST
            and self.task.error_type == WorkerLostError.__name__
        )
        return "lost" if lost else "failed"
