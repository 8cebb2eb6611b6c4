"""The values the storage contract takes and returns (see :mod:`.base`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ErrorCategory, StorageUnavailableError
from ..models import (
    BLOCKED_RUN_AT,
    DEFAULT_QUEUE,
    DependencyFailure,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    to_datetime,
)
from ..retry import RetryConfig
from ..validation import encode_json

__all__ = [
    "DEFAULT_AGING_SECONDS",
    "STRICT_PRIORITY_SECONDS",
    "AttemptGroup",
    "Cancelled",
    "Claim",
    "ClaimLimits",
    "Completed",
    "Deferred",
    "Failed",
    "HeartbeatResult",
    "LeaseToken",
    "MetricsWindow",
    "NewTask",
    "Notice",
    "Outcome",
    "ProgressRow",
    "ProgressSnapshot",
    "RateLimitState",
    "RateSpec",
    "ReapResult",
    "Released",
    "RetryDecider",
    "ScheduleFiring",
    "ScheduleTick",
    "SharedBreakerState",
    "WorkerInfo",
    "WriteStatus",
    "dispatch_key",
]

#: ``background_tasks.priority_aging_seconds`` unless configured: a waiting task gains a
#: priority level every 300 s.
DEFAULT_AGING_SECONDS = 300.0

#: The weight of a priority level when aging is off: longer than any task waits, so
#: priority always comes first.
STRICT_PRIORITY_SECONDS = 1e10


def dispatch_key(
    run_at: float, priority: int, *, aging_seconds: float | None, by_priority: bool = True
) -> float:
    """A waiting task's place in the dispatch order (lower first): its run time less
    ``aging_seconds`` per priority level. So a task of a lower priority runs before one
    of a higher priority that became eligible more than ``aging_seconds`` per level of
    difference after it: no task starves. ``aging_seconds`` None: strict priority;
    ``by_priority`` false: plain FIFO (``enable_priority_queue: false``). Whenever a
    task's run time moves (a retry, a requeue, its dependencies finishing), its key moves
    by as much."""
    if not by_priority:
        return run_at
    weight = STRICT_PRIORITY_SECONDS if aging_seconds is None else aging_seconds
    return run_at - priority * weight


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated task to insert. ``priority`` is :attr:`TaskPriority.rank`."""

    id: str
    name: str
    task_type: str
    priority: int
    max_retries: int
    run_at: float
    created_at: float
    timeout_seconds: float | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    """Worker id whose process holds the callable (closures); None for registered types."""
    retry: dict[str, Any] | None = None
    """The task's own RetryConfig, as a dict."""
    max_lost_attempts: int | None = None
    """The task's own bound on attempts lost with their worker (None: the reaper's)."""
    idempotency_key: str | None = None
    """Unique among stored tasks: a submit with a key taken gets the task holding it."""
    request_fingerprint: str | None = None
    """What was asked for with the key (a hash): a repeat of the same request, or another
    request reusing the key (an error)."""
    trace_context: dict[str, str] | None = None
    """The submit's trace context (OpenTelemetry's propagation fields), for its attempts."""
    queue: str = DEFAULT_QUEUE
    dispatch_at: float | None = None
    """Its place in the dispatch order (:func:`dispatch_key`); None: with the default
    aging."""
    depends_on: tuple[str, ...] = ()
    """Tasks it waits for: stored ones, or ones before it in the same batch."""
    on_dependency_failure: DependencyFailure = "cancel"
    rate_keys: tuple[tuple[str, str], ...] = ()
    """The rate limits a claim of it takes a slot of: (limit name, key) pairs."""
    concurrency_key: str | None = None
    """Its concurrency key: running tasks per key are bounded, keys share dispatch fairly."""

    @property
    def stored_run_at(self) -> float:
        """The run time it is stored with: :data:`BLOCKED_RUN_AT` while it has
        dependencies (the insert releases it at once if they are all done)."""
        return BLOCKED_RUN_AT if self.depends_on else self.run_at

    @property
    def stored_dispatch_at(self) -> float:
        key = self.dispatch_at
        if key is None:
            key = dispatch_key(self.run_at, self.priority, aging_seconds=DEFAULT_AGING_SECONDS)
        return key + (self.stored_run_at - self.run_at)

    def record(self) -> TaskRecord:
        """The record of this task as it is stored (``pending``), built rather than read
        back."""
        created = to_datetime(self.created_at)
        return TaskRecord(
            id=self.id,
            name=self.name,
            task_type=self.task_type,
            priority=TaskPriority.from_rank(self.priority),
            status=TaskStatus.PENDING,
            run_at=created
            if self.stored_run_at == self.created_at
            else to_datetime(self.stored_run_at),
            created_at=created,
            updated_at=created,
            payload=self.payload,
            metadata=self.metadata,
            max_retries=self.max_retries,
            timeout_seconds=self.timeout_seconds,
            retry=None if self.retry is None else RetryConfig.model_validate(self.retry),
            owner=self.owner,
            max_lost_attempts=self.max_lost_attempts,
            idempotency_key=self.idempotency_key,
            trace_context=self.trace_context,
            queue=self.queue,
            depends_on=self.depends_on,
            on_dependency_failure=self.on_dependency_failure,
            rate_keys=self.rate_keys,
            concurrency_key=self.concurrency_key,
        )


@dataclass(frozen=True, slots=True)
class RateSpec:
    """One named rate limit as a claim applies it to each of its keys (GCRA)."""

    requests: int
    per: float
    tokens: int | None = None

    @property
    def interval(self) -> float:
        """The emission interval: a key takes one request every this many seconds."""
        return self.per / self.requests


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    """What a claim enforces beyond the plain one: the rate limits by name (a task's
    key under a name not here is not limited by this worker) and the running bound per
    concurrency key (None: none)."""

    rates: Mapping[str, RateSpec]
    max_running_per_key: int | None = None


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """A rate-limit key's stored state (``/api/v1/monitoring/limits``)."""

    key: str
    name: str
    next_free_at: float
    """When the key takes its next request (the GCRA's theoretical arrival time)."""
    tokens_paid_at: float
    """When the tokens reported so far are paid back."""
    requests: int
    """Requests taken under this key so far."""
    tokens: int
    """Tokens reported under this key so far."""


@dataclass(frozen=True, slots=True)
class LeaseToken:
    """Proof that a worker holds the current attempt of a task."""

    task_id: str
    worker_id: str
    fence: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A task handed to a worker: the record as it is after the claim, and its token."""

    task: TaskRecord
    token: LeaseToken

    @property
    def attempt(self) -> int:
        return self.task.attempts


@dataclass(frozen=True, slots=True)
class Completed:
    """The attempt succeeded with ``result``, which must be JSON storage can hold
    (:func:`~vpsweb_tasks.validation.encode_json`, no size bound): constructing a
    Completed with anything else raises ``ValueError``. ``json`` is its encoding."""

    result: Any = None
    json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoded = "null" if self.result is None else encode_json(self.result, max_bytes=None)
        object.__setattr__(self, "json", encoded)


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt raised. ``retry_at`` (epoch seconds) schedules the next attempt (status
    ``retrying``); None makes the task ``failed`` (the dead letter queue)."""

    error_type: str
    error_message: str
    category: ErrorCategory
    retry_at: float | None = None
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The attempt was stopped because cancellation was requested."""

    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Released:
    """The attempt was interrupted by a graceful shutdown: back to ``pending``, the attempt
    given back."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """The task could not start because a dependency (a circuit breaker) is unavailable:
    ``retrying`` until ``retry_at``, the attempt given back."""

    retry_at: float
    reason: str


Outcome = Completed | Failed | Cancelled | Released | Deferred


#: A progress report as the history stores it: task id, progress, message, metadata (as
#: JSON text) and time, in the columns' order. A plain tuple of strings and numbers: a
#: worker keeps one for each running task, replaced at each report, which the garbage
#: collector stops tracking, and encodes thousands of them at once as JSON arrays.
ProgressRow = tuple[str, float, str | None, str | None, float]


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """The latest progress of a running task, written coalesced."""

    task_id: str
    progress: float
    message: str | None
    metadata: dict[str, Any] | None
    at: float


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process as recorded in the ``workers`` table."""

    worker_id: str
    hostname: str
    pid: int
    process_started_at: float | None = None
    concurrency: int = 1
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    expires_at: float = 0.0


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What a heartbeat learned about the worker's running tasks."""

    lost: frozenset[str]
    """Task ids the worker thought it held but no longer does (fenced out)."""
    cancel_requested: frozenset[str]
    """Task ids held by the worker whose cancellation another process requested."""


@dataclass(frozen=True, slots=True)
class ReapResult:
    """Tasks changed by :meth:`TaskStore.reap`."""

    requeued: list[TaskRecord]
    failed: list[TaskRecord]
    expired_workers: list[str]
    released: list[str] = field(default_factory=list)
    """Dependents whose dependencies had all finished without their release (a process
    that died between a finish and its dependents' release): released now."""


@dataclass(frozen=True, slots=True)
class AttemptGroup:
    """Finished attempts in a window sharing type, outcome, category and first-or-retry."""

    task_type: str
    outcome: str
    category: str | None
    retry: bool
    """True for attempts after the first."""
    count: int
    duration_total: float
    wait_total: float


@dataclass(frozen=True, slots=True)
class MetricsWindow:
    """Aggregates of ``task_metrics`` since a time, for statistics."""

    since: float
    groups: list[AttemptGroup]
    durations: list[float]
    """Durations of the most recent completed attempts (bounded sample), unsorted."""
    dead_lettered: int
    """Tasks that became ``failed`` in the window."""


#: Kinds of cross-process notices relayed by :meth:`TaskStore.listen`. For
#: ``breaker_changed`` the second argument is the breaker's name. ``changed`` (second
#: argument empty) says only that another process committed something: look again.
Notice = Literal["task_added", "cancel_requested", "breaker_changed", "changed"]


@dataclass(frozen=True, slots=True)
class SharedBreakerState:
    """A circuit breaker's state as one worker last recorded it for all the others."""

    name: str
    state: str
    """``closed``, ``open`` or ``half-open``."""
    opened_at: float | None
    retry_at: float | None
    updated_at: float
    worker_id: str


#: Given a task whose attempt was lost (its worker died), as it is after the loss
#: (``lost_attempts`` counts this one, ``attempts`` has it given back), returns the epoch
#: time of its next attempt, or None to fail it. Not asked once the task reached its bound
#: on lost attempts. Called inside the reaping transaction: keep it pure.
RetryDecider = Callable[[TaskRecord], float | None]


@dataclass(frozen=True, slots=True)
class WriteStatus:
    """Whether a store takes writes (:attr:`TaskStore.write_status`)."""

    writable: bool
    """False from a write that failed with
    :class:`~vpsweb_tasks.errors.StorageUnavailableError` (a write check's or any other
    operation's) until a write check succeeds."""
    checked_at: float | None
    """When the latest write check ran (epoch seconds); None before the first."""
    error: StorageUnavailableError | None
    """The latest write failure, kept after the store recovers (with ``error_at``)."""
    error_at: float | None


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """A tick a scheduler fired: its schedule and time (epoch seconds), the task it
    submitted (None: the queue was full), and who fired it when."""

    schedule: str
    tick_at: float
    task_id: str | None
    fired_at: float
    worker_id: str


@dataclass(frozen=True, slots=True)
class ScheduleFiring:
    """What one scheduler did with one due schedule, in one transaction."""

    schedule: str
    tasks: tuple[NewTask, ...]
    """The tasks submitted, one per tick fired, oldest tick first."""
    ticks: tuple[ScheduleTick, ...]
    """Every tick fired, with or without its task."""
    missed_since: float | None
    """Ticks from this one on were found late (a downtime) and handled by the missed-tick
    policy."""
    next_run_at: float
