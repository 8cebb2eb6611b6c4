"""Request and response models of the HTTP API (all visible in OpenAPI)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from vpsweb_tasks.breakers import BreakerStatistics
from vpsweb_tasks.config import DEFAULT_QUEUE, QueueName
from vpsweb_tasks.errors import ErrorCategory
from vpsweb_tasks.models import (
    MAX_DEPENDENCIES,
    DeadLetter,
    DeadLetterCause,
    DependencyFailure,
    ExecutionRecord,
    JsonObject,
    MaxLostAttempts,
    ProgressUpdate,
    QueueStatus,
    ResourceSample,
    TaskName,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    TaskTypeName,
    from_timestamp,
    to_datetime,
)
from vpsweb_tasks.monitor import Alert, HealthReport, TaskStatistics
from vpsweb_tasks.monitor.health import StorageWriteError
from vpsweb_tasks.schedules import Missed, ScheduleDefinition, ScheduleName, ScheduleRecord
from vpsweb_tasks.storage.base import ProgressSnapshot
from vpsweb_tasks.translation import TranslationJob, WorkflowMode
from vpsweb_tasks.validation import storable


class _Request(BaseModel):
    # Values are checked by the library's own types (vpsweb_tasks.validation): what a
    # request model accepts, storage can hold and every answer can encode.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- requests -------------------------------------------------------------------------------


class SubmitTaskRequest(_Request):
    """The document's submit body, plus an optional payload and delay."""

    task_name: TaskName
    task_type: TaskTypeName
    priority: TaskPriority = TaskPriority.NORMAL
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    timeout_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | None = None
    metadata: JsonObject = Field(default_factory=dict)
    payload: JsonObject = Field(default_factory=dict)
    """Input of the task's handler (``context.payload``)."""
    delay_seconds: Annotated[float, Field(ge=0, le=365 * 24 * 3600)] | None = None
    """Run no earlier than this many seconds from now."""
    run_at: AwareDatetime | None = None
    """Run no earlier than this time (RFC 3339 with an offset, e.g.
    ``2026-12-24T18:00:00+01:00``; not with ``delay_seconds``). A time past runs now."""
    queue: QueueName = DEFAULT_QUEUE
    """The named queue it waits in (one of ``background_tasks.queues``): workers serving
    that queue run it."""
    depends_on: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=100), storable]],
        Field(max_length=MAX_DEPENDENCIES),
    ] = Field(default_factory=list)
    """Ids of stored tasks this one waits for: it starts once they all completed (their
    results are in its ``context.dependency_results``). Not with ``run_at`` or
    ``delay_seconds``. An id no stored task has: 422 naming ``depends_on``."""
    on_dependency_failure: DependencyFailure = "cancel"
    """If a dependency fails for good or is cancelled: ``cancel`` this task too (its error
    names the dependency), or ``run`` it anyway once the others finish."""
    concurrency_key: Annotated[str, Field(min_length=1, max_length=255), storable] | None = None
    """A key (a user, a tenant: ``user:42``) whose running tasks are bounded across every
    worker (``background_tasks.max_running_per_key``) and whose tasks share dispatch fairly
    with other keys' (``background_tasks.fair_share_seconds``)."""
    max_lost_attempts: MaxLostAttempts | None = None
    """Attempts that may be lost with their worker (killed, out of memory) before the task
    is dead-lettered; null: the workers' ``background_tasks.max_lost_attempts``."""


class PauseRequest(_Request):
    reason: Annotated[str, Field(max_length=500), storable] | None = None


class RequeueRequest(_Request):
    """Which failed tasks to requeue: all of them, or those of one category / type."""

    category: ErrorCategory | None = None
    task_type: TaskTypeName | None = None


class ScheduleRequest(ScheduleDefinition):
    """A schedule to add: its name, and when to submit which task type (exactly one of
    ``cron`` and ``every``)."""

    name: ScheduleName
    """Unique; its path segment in ``/schedules/{name}``."""


# --- responses ------------------------------------------------------------------------------


class ErrorResponse(_Response):
    """The body of every error but validation errors (422, FastAPI's own shape)."""

    detail: str
    cause: str | None = Field(
        default=None,
        description="A 503's storage fault: disk_full, read_only, locked, corrupt, unavailable",
    )


class ErrorInfo(_Response):
    type: str | None
    message: str | None
    category: str | None


class TaskResponse(_Response):
    task_id: str
    name: str
    task_type: str
    priority: TaskPriority
    status: TaskStatus
    progress: float
    message: str | None
    attempts: int
    max_retries: int
    timeout_seconds: float | None
    metadata: dict[str, Any]
    result: Any = None
    error: ErrorInfo | None = None
    cancel_requested: Annotated[
        bool,
        Field(
            description="A cancel was requested of the running task: the worker running it"
            " is stopping it (status becomes cancelled, or completed if its work had"
            " already returned)"
        ),
    ]
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    lost_attempts: int
    """Attempts lost with their worker (killed, out of memory): not counted in
    ``attempts``, bounded by ``max_lost_attempts``."""
    max_lost_attempts: int | None
    """The task's own bound on lost attempts; null: the workers'
    ``background_tasks.max_lost_attempts``."""
    scheduled: Annotated[
        bool,
        Field(
            description="Waiting (pending or retrying) for a run time still to come: a"
            " run_at or delay_seconds, or a retry's backoff. A field rather than a status,"
            " so the status keeps saying where the task is in its life"
        ),
    ]
    idempotency_key: str | None
    """The key it was submitted with (a batch's tasks: ``KEY#0``, ``KEY#1``, ...)."""
    queue: str
    depends_on: list[str]
    """The tasks it waits for (or waited for)."""
    concurrency_key: str | None = None
    rate_limit_keys: list[str] = Field(default_factory=list)
    """The rate-limit keys its claims take a slot of."""

    @classmethod
    def of(cls, record: TaskRecord, **more: Any) -> Self:
        """The record's fields, and ``more`` (those of a subclass)."""
        error = None
        if record.error_message is not None or record.error_type is not None:
            error = ErrorInfo(
                type=record.error_type,
                message=record.error_message,
                category=None if record.error_category is None else record.error_category.value,
            )
        return cls(
            task_id=record.id,
            name=record.name,
            task_type=record.task_type,
            priority=record.priority,
            status=record.status,
            progress=record.progress,
            message=record.message,
            attempts=record.attempts,
            max_retries=record.max_retries,
            timeout_seconds=record.timeout_seconds,
            metadata=record.metadata,
            result=record.result,
            error=error,
            cancel_requested=record.cancel_requested,
            created_at=record.created_at,
            run_at=record.run_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            duration_seconds=record.duration_seconds,
            lost_attempts=record.lost_attempts,
            max_lost_attempts=record.max_lost_attempts,
            scheduled=record.status.is_waiting
            and not record.waiting_on_dependencies
            and record.run_at > datetime.now(UTC),
            idempotency_key=record.idempotency_key,
            queue=record.queue,
            depends_on=list(record.depends_on),
            concurrency_key=record.concurrency_key,
            rate_limit_keys=[key for _, key in record.rate_keys],
            **more,
        )


class SubmitTaskResponse(_Response):
    task_id: str
    status: TaskStatus
    task_type: str
    priority: TaskPriority
    created_at: datetime
    status_url: str


class TaskListResponse(_Response):
    tasks: list[TaskResponse]
    count: int
    limit: int
    offset: int

    @classmethod
    def of(cls, records: Sequence[TaskRecord], *, limit: int, offset: int) -> Self:
        return cls(
            tasks=[TaskResponse.of(r) for r in records],
            count=len(records),
            limit=limit,
            offset=offset,
        )


class ExecutionResponse(_Response):
    attempt: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    error_category: str | None
    error_type: str | None
    error_message: str | None

    @classmethod
    def of(cls, record: ExecutionRecord) -> ExecutionResponse:
        return cls(
            attempt=record.attempt,
            worker_id=record.worker_id,
            started_at=record.started_at,
            finished_at=record.finished_at,
            outcome=record.outcome.value,
            error_category=None if record.error_category is None else record.error_category.value,
            error_type=record.error_type,
            error_message=record.error_message,
        )


class DependencyResponse(_Response):
    task_id: str
    status: TaskStatus | None
    """Null: deleted by retention cleanup after this task finished."""


class TaskDetailResponse(TaskResponse):
    executions: list[ExecutionResponse]
    dependencies: list[DependencyResponse] = Field(default_factory=list)
    """Each task it depends on, with its status."""
    waiting_on: list[str] = Field(default_factory=list)
    """The dependencies it is still waiting for (not finished yet); empty once it may
    run (its ``run_at`` shows 9999-12-31 until then)."""


class DeadLetterResponse(TaskDetailResponse):
    """A dead-lettered task, every attempt, and why it is there."""

    cause: DeadLetterCause
    """``lost``: its attempts kept being lost with their workers until
    ``max_lost_attempts`` (error ``WorkerLostError``); ``failed``: its own errors used up
    its retries or were not retryable."""

    @classmethod
    def of_letter(cls, letter: DeadLetter) -> Self:
        return cls.of(
            letter.task,
            executions=[ExecutionResponse.of(e) for e in letter.executions],
            cause=letter.cause,
        )


class QueueStatusResponse(_Response):
    paused: bool
    pause_reason: str | None
    pending: int
    retrying: int
    running: int
    running_here: int
    queue_size: int
    max_queue_size: int
    max_concurrent_jobs: int
    worker_id: str
    workers_enabled: bool

    @classmethod
    def of(cls, status: QueueStatus) -> QueueStatusResponse:
        return cls(
            paused=status.paused,
            pause_reason=status.pause_reason,
            pending=status.pending,
            retrying=status.retrying,
            running=status.running,
            running_here=status.running_here,
            queue_size=status.pending + status.retrying,
            max_queue_size=status.max_queue_size,
            max_concurrent_jobs=status.max_concurrent_jobs,
            worker_id=status.worker_id,
            workers_enabled=status.workers_enabled,
        )


class ClearResponse(_Response):
    cancelled: int


class RequeueResponse(_Response):
    requeued: int


class ProgressResponse(_Response):
    task_id: str
    progress: Annotated[float, Field(ge=0, le=1)]
    message: str | None
    status: TaskStatus
    timestamp: datetime

    @classmethod
    def of(cls, update: ProgressUpdate) -> ProgressResponse:
        return cls(
            task_id=update.task_id,
            progress=update.progress,
            message=update.message,
            status=update.status,
            timestamp=update.timestamp,
        )


class ProgressPoint(_Response):
    progress: float
    message: str | None
    metadata: dict[str, Any] | None
    timestamp: datetime

    @classmethod
    def of(cls, snapshot: ProgressSnapshot) -> ProgressPoint:
        return cls(
            progress=snapshot.progress,
            message=snapshot.message,
            metadata=snapshot.metadata,
            timestamp=to_datetime(snapshot.at),
        )


class ProgressHistoryResponse(_Response):
    task_id: str
    history: list[ProgressPoint]


class AlertResponse(_Response):
    name: str
    level: Literal["warning", "critical"]
    message: str
    value: float | None
    threshold: float | None
    since: datetime

    @classmethod
    def of(cls, alert: Alert) -> AlertResponse:
        return cls(
            name=alert.name,
            level=alert.level,
            message=alert.message,
            value=alert.value,
            threshold=alert.threshold,
            since=to_datetime(alert.since),
        )


class AlertsResponse(_Response):
    alerts: list[AlertResponse]
    count: int
    critical: int
    warning: int


class StorageErrorResponse(_Response):
    """The latest write the task database refused (kept once it recovers: compare
    ``at`` with the health's ``timestamp``)."""

    cause: Literal["disk_full", "read_only", "locked", "corrupt", "unavailable"]
    message: str
    at: datetime

    @classmethod
    def of(cls, error: StorageWriteError | None) -> StorageErrorResponse | None:
        if error is None:
            return None
        return cls.model_validate(
            {"cause": error.cause, "message": error.message, "at": to_datetime(error.at)}
        )


class HealthResponse(_Response):
    """The document's health fields (``status``, ``cpu_usage``, ``memory_usage``,
    ``active_tasks``) and more. Usages are percentages."""

    status: Literal["healthy", "degraded", "unhealthy"]
    cpu_usage: float
    memory_usage: float
    disk_usage: float
    process_memory_mb: float
    active_tasks: int
    queued_tasks: int
    error_rate: float
    storage_ok: bool
    storage_writable: bool
    storage_error: StorageErrorResponse | None
    paused: bool
    pause_reason: str | None
    alerts: list[AlertResponse]
    timestamp: datetime

    @classmethod
    def of(cls, report: HealthReport) -> HealthResponse:
        return cls(
            status=report.status,
            cpu_usage=report.cpu_usage or 0.0,
            memory_usage=report.memory_usage or 0.0,
            disk_usage=report.disk_usage or 0.0,
            process_memory_mb=report.process_memory_mb or 0.0,
            active_tasks=report.active_tasks,
            queued_tasks=report.queued_tasks,
            error_rate=report.error_rate,
            storage_ok=report.storage_ok,
            storage_writable=report.storage_writable,
            storage_error=StorageErrorResponse.of(report.storage_error),
            paused=report.paused,
            pause_reason=report.pause_reason,
            alerts=[AlertResponse.of(alert) for alert in report.alerts],
            timestamp=to_datetime(report.at),
        )


class ResourcesResponse(_Response):
    timestamp: datetime
    cpu_percent: float
    memory_percent: float
    disk_percent: float
    process_rss_mb: float
    process_cpu_percent: float
    active_tasks: int
    queued_tasks: int

    @classmethod
    def of(cls, sample: ResourceSample) -> ResourcesResponse:
        return cls(
            timestamp=to_datetime(sample.recorded_at),
            cpu_percent=sample.cpu_percent,
            memory_percent=sample.memory_percent,
            disk_percent=sample.disk_percent,
            process_rss_mb=sample.process_rss_mb,
            process_cpu_percent=sample.process_cpu_percent,
            active_tasks=sample.active_tasks,
            queued_tasks=sample.queued_tasks,
        )


class StatisticsResponse(_Response):
    timestamp: datetime
    window_seconds: float
    counts: dict[str, int]
    counts_by_type: dict[str, dict[str, int]]
    attempts: int
    completed: int
    failed_attempts: int
    dead_lettered: int
    completion_rate: float
    processing_rate: float
    average_duration: float | None
    duration_p50: float | None
    duration_p95: float | None
    duration_p99: float | None
    average_queue_wait: float | None
    error_rate: float
    errors_by_category: dict[str, int]
    error_rate_by_category: dict[str, float]
    retry_success_rate: float | None
    task_metrics: bool = Field(
        description="False when task_monitoring.enable_task_metrics is off: the window's"
        " figures are not recorded, only counts are real"
    )

    @classmethod
    def of(cls, stats: TaskStatistics) -> StatisticsResponse:
        values = {name: getattr(stats, name) for name in TaskStatistics.__dataclass_fields__}
        values["timestamp"] = to_datetime(values.pop("at"))
        return cls(**values)


class PerformanceResponse(_Response):
    samples: list[ResourcesResponse]
    count: int


class BreakerResponse(_Response):
    name: str
    state: Literal["closed", "open", "half-open"]
    consecutive_failures: int
    failures: int
    successes: int
    rejections: int
    half_open_calls: int
    opened_at: datetime | None
    retry_at: datetime | None
    failure_threshold: int
    recovery_timeout: float
    half_open_max_calls: int

    @classmethod
    def of(cls, stats: BreakerStatistics) -> BreakerResponse:
        return cls(
            name=stats.name,
            state=stats.state.value,
            consecutive_failures=stats.consecutive_failures,
            failures=stats.failures,
            successes=stats.successes,
            rejections=stats.rejections,
            half_open_calls=stats.half_open_calls,
            opened_at=from_timestamp(stats.opened_at),
            retry_at=from_timestamp(stats.retry_at),
            failure_threshold=stats.config.failure_threshold,
            recovery_timeout=stats.config.recovery_timeout,
            half_open_max_calls=stats.config.half_open_max_calls,
        )


class BreakersResponse(_Response):
    breakers: list[BreakerResponse]
    open: int


class RateLimitKeyResponse(_Response):
    """One key of a rate limit: its shared state and its usage so far."""

    key: str
    next_free_at: datetime
    """When the key takes its next request (now or later)."""
    free_now: bool
    tokens_left: int | None
    """Tokens the key may still use in the current window (null: no token limit)."""
    requests: int
    """Requests taken under this key so far (claims and ``context.acquire_rate``)."""
    tokens: int
    """Tokens reported under this key so far."""


class RateLimitResponse(_Response):
    requests: int
    per: float
    tokens: int | None
    keys: list[RateLimitKeyResponse]


class ConcurrencyResponse(_Response):
    max_running_per_key: int | None
    fair_share_seconds: float | None
    running: dict[str, int]
    """Running tasks per concurrency key (keys with none left out)."""


class RetryBudgetResponse(_Response):
    ratio: float
    min_retries_per_second: float
    window_seconds: float
    calls: int | None = None
    """First attempts and retries to the dependency in the window (null: not counted)."""
    retries: int | None = None


class LimitsResponse(_Response):
    """The configured limits and their state, shared by every process on the database."""

    rate_limits: dict[str, RateLimitResponse]
    concurrency: ConcurrencyResponse
    retry_budgets: dict[str, RetryBudgetResponse]


class StreamTokenResponse(_Response):
    """A token for ``?token=`` on the event-stream routes (which EventSource needs, as it
    cannot send X-API-Key)."""

    token: str
    expires_at: datetime
    expires_in: float


class MonitoringStateResponse(_Response):
    monitoring: bool


class SummaryResponse(_Response):
    health: HealthResponse
    statistics: StatisticsResponse
    queue: QueueStatusResponse
    resources: ResourcesResponse | None
    breakers: dict[str, str]
    monitoring: bool


# --- translation jobs -----------------------------------------------------------------------


class TranslationSubmitResponse(BaseModel):
    """A stored job: ``job_id`` (as in the document's example) and where to follow it."""

    job_id: str
    task_id: str
    status: TaskStatus
    workflow_mode: WorkflowMode
    source_language: str
    target_language: str
    created_at: datetime
    status_url: str
    result_url: str
    events_url: str

    @classmethod
    def of(cls, job: TranslationJob, base: str) -> TranslationSubmitResponse:
        """``base``: the URL of the routes' prefix (``.../api/v1/background-tasks``)."""
        job_url = f"{base}/translation/{quote(job.job_id, safe='')}"
        return cls(
            job_id=job.job_id,
            task_id=job.task_id,
            status=job.status,
            workflow_mode=job.workflow_mode,
            source_language=job.source_language,
            target_language=job.target_language,
            created_at=job.created_at,
            status_url=job_url,
            result_url=f"{job_url}/result",
            events_url=f"{job_url}/events",
        )


class TranslationBatchResponse(BaseModel):
    job_ids: list[str]
    """One per request, in the order given."""
    jobs: list[TranslationSubmitResponse]
    count: int


class TranslationListResponse(BaseModel):
    jobs: list[TranslationJob]
    count: int
    limit: int
    offset: int


class ScheduleResponse(_Response):
    """A stored schedule and when it fires next."""

    name: str
    task_type: str
    cron: str | None
    every: float | None
    """Seconds between ticks (when not cron)."""
    timezone: str
    payload: dict[str, Any]
    priority: TaskPriority
    enabled: bool
    missed: Missed | None
    """Its missed-tick policy; null: ``background_tasks.schedule_missed``."""
    origin: Literal["code", "config", "api", "builtin"]
    """Where it is defined: code and config definitions are written again at start."""
    next_run_at: datetime | None
    """When it fires next; null while paused."""
    last_tick_at: datetime | None
    last_task_id: str | None
    """The task its last tick submitted (null if the queue was full)."""
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ScheduleRecord) -> ScheduleResponse:
        definition = record.definition
        return cls(
            name=record.name,
            task_type=definition.task_type,
            cron=definition.cron,
            every=definition.every,
            timezone=definition.timezone,
            payload=definition.payload,
            priority=TaskPriority(definition.priority),
            enabled=definition.enabled,
            missed=definition.missed,
            origin=record.origin,
            next_run_at=to_datetime(record.next_run_at) if definition.enabled else None,
            last_tick_at=from_timestamp(record.last_tick_at),
            last_task_id=record.last_task_id,
            created_at=to_datetime(record.created_at),
            updated_at=to_datetime(record.updated_at),
        )


class ScheduleListResponse(_Response):
    schedules: list[ScheduleResponse]
    count: int
