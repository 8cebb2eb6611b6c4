"""Configuration: pydantic models of the YAML sections, and :func:`load_config`.

The file has the sections of the original design document (``background_tasks``,
``task_monitoring``, ``system_resources``) plus ``storage``, ``logging`` and ``http``, and
the sections of installed extensions (the translation extension reads ``providers`` and
``translation``: :meth:`Settings.section`). Every key has a default, so an empty file (or
none) is a valid config.
Environment variables override the file: ``VPSWEB_TASKS_<SECTION>__<KEY>``, for example
``VPSWEB_TASKS_BACKGROUND_TASKS__MAX_CONCURRENT_JOBS=8``. Values are validated; an invalid
one raises :class:`~vpsweb_tasks.errors.ConfigError` naming the key.

Durations are float seconds; a ``timedelta`` is accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from .errors import ConfigError
from .schedules import Missed, ScheduleDefinition, ScheduleName

__all__ = [
    "DEFAULT_QUEUE",
    "BackgroundTaskSettings",
    "HttpSettings",
    "LoggingSettings",
    "MonitoringSettings",
    "PositiveSeconds",
    "QueueName",
    "QueueSettings",
    "Seconds",
    "Settings",
    "StorageSettings",
    "SystemResourceSettings",
    "load_config",
]


def _to_seconds(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


M = TypeVar("M", bound=BaseModel)

#: A duration in seconds; accepts numbers or ``timedelta``.
Seconds = Annotated[float, BeforeValidator(_to_seconds)]
PositiveSeconds = Annotated[Seconds, Field(gt=0)]

#: The queue a task goes to unless its definition names another.
DEFAULT_QUEUE = "default"

#: A queue's name: 1 to 100 letters, digits and ``_ . : -``.
QueueName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


DEFAULT_TIMEOUTS: dict[str, float] = {
    "translation": 600.0,
    "maintenance": 300.0,
    "cleanup": 120.0,
    "backup": 1800.0,
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class QueueSettings(_Section):
    """One named queue (an entry of ``background_tasks.queues``)."""

    max_concurrent: int | None = Field(default=None, ge=1)
    """Tasks of this queue one worker process runs at once (within max_concurrent_jobs);
    null: no limit of its own. Per process, not across processes."""


#: A rate limit's or retry budget's name: letters, digits, ``_ . -``.
LimitName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class RateLimitSettings(_Section):
    """One named rate limit (an entry of ``rate_limits``), shared by every process on the
    task database: each of its keys allows ``requests`` claims (or context acquires) per
    ``per`` seconds, evenly spaced (GCRA), and optionally ``tokens`` per ``per`` seconds
    (reported after each call)."""

    requests: int = Field(ge=1)
    """Requests per window; the limit spaces them per / requests apart."""
    per: PositiveSeconds = 1.0
    """The window, in seconds."""
    tokens: int | None = Field(default=None, ge=1)
    """Tokens per window (null: none): a key whose reported tokens of the last window
    reach this takes no request until they are paid back."""


class RetryBudgetSettings(_Section):
    """A retry budget (an entry of ``retry_budgets``): retries to a dependency may be at
    most ``ratio`` of its recent calls, plus ``min_retries_per_second``."""

    ratio: float = Field(default=0.2, gt=0, le=1)
    """Retries allowed per first attempt in the window."""
    min_retries_per_second: float = Field(default=1.0, ge=0)
    """Retries allowed anyway, so a dependency with little traffic can still be retried."""
    window_seconds: PositiveSeconds = 10.0
    """How much recent time the counts cover."""


class BackgroundTaskSettings(_Section):
    """The ``background_tasks`` section: the queue and its workers."""

    enabled: bool = True
    """Run workers in this process. False makes an API-only process: tasks are accepted
    and stored, and other worker processes run them."""
    max_concurrent_jobs: int = Field(default=3, ge=1)
    """Tasks one worker process runs at once."""
    job_timeout: PositiveSeconds = 300.0
    """Timeout of a task that sets none and whose type has no entry in task_timeouts."""
    cleanup_interval: PositiveSeconds = 3600.0
    """How often finished tasks older than task_retention_hours are deleted: the built-in
    schedule ``cleanup`` fires a ``cleanup`` task this often, once across every process on
    the database (a schedule named ``cleanup`` in ``schedules`` replaces it)."""
    max_retry_attempts: int = Field(default=3, ge=0)
    """Upper bound on any task's retries, whatever its own max_retries says."""
    retry_delay: Annotated[Seconds, Field(ge=0)] = 60.0
    """Base delay of the retry strategies."""
    max_queue_size: int = Field(default=100, ge=1)
    """Waiting tasks (pending + retrying) beyond which submit raises QueueFullError."""
    queue_check_interval: PositiveSeconds = 1.0
    """Upper bound on how long a worker takes to notice work or a cancel request made by
    another process. A submit or cancel in the same process acts at once; one in another
    process usually does too (PostgreSQL's notifications, SQLite's
    storage.sqlite_watch_interval)."""
    task_retention_hours: float = Field(default=24.0, gt=0)
    """Finished tasks older than this are deleted (with their executions, metrics and
    progress) by the periodic cleanup."""
    task_timeouts: dict[str, PositiveSeconds] = Field(
        default_factory=lambda: dict(DEFAULT_TIMEOUTS)
    )
    """Per task type; entries given in a config file are added to these defaults."""
    max_memory_mb: float = Field(default=512.0, gt=0)
    """Memory (RSS) budget of a worker process, for overload control."""
    max_cpu_percent: float = Field(default=80.0, gt=0, le=100)
    """CPU budget of a worker process, as a share of the whole machine, for overload
    control (a machine busy with other work does not pause the queue)."""
    enable_priority_queue: bool = True
    """Dispatch by priority, then FIFO (with aging: priority_aging_seconds); false: plain
    FIFO. Read where a task is stored: it fixes the task's place in the dispatch order."""
    priority_aging_seconds: Annotated[Seconds, Field(gt=0)] | None = 300.0
    """Aging: a waiting task gains one priority level for every this many seconds it has
    waited, so none starves behind a stream of higher-priority tasks: a low task runs at
    the latest once it has waited 3 x this longer than the critical tasks submitted after
    it (2 x behind high, 1 x behind normal). Its wait counts from when it became eligible
    (its submit, run time, retry time or its dependencies' end). null: strict priority
    (a low task waits while any higher one does). Read where a task is stored."""
    queues: dict[QueueName, QueueSettings] = Field(
        default_factory=lambda: {DEFAULT_QUEUE: QueueSettings()}
    )
    """The named queues tasks may be submitted to (TaskDefinition.queue), as
    ``{NAME: {max_concurrent: N}}``: max_concurrent (default null: none) bounds the
    tasks of that queue one worker process runs at once. ``default`` is always one of
    them. A submit to a queue not listed here is an error naming the queue."""
    worker_queues: list[QueueName] = Field(default_factory=lambda: [DEFAULT_QUEUE], min_length=1)
    """The queues this process's workers take tasks from, in turn (``vpsweb-tasks worker
    --queues a,b`` overrides it). Each must be one of queues."""
    declared_task_types: list[str] = Field(default_factory=list)
    """Task types this process accepts submits of without a handler of its own: an
    API-only process (enabled: false) lists the types its worker processes run. A type
    neither registered nor declared (manager.declare) is an UnknownTaskTypeError."""
    max_running_per_key: int | None = Field(default=None, ge=1)
    """Running tasks per concurrency key (``TaskDefinition.concurrency_key``) across every
    worker on the task database; null: no bound. A task whose key is at the bound waits
    (spending no attempt) while other keys' tasks run."""
    fair_share_seconds: Annotated[Seconds, Field(gt=0)] | None = None
    """Fair dispatch between concurrency keys: a keyed task is placed in the dispatch order
    at least this long after its key's previous task, so a batch from one key interleaves
    with other keys' tasks of the same priority (they are still claimed as soon as a
    worker is free). null (default): keyed tasks keep their submit order (with
    max_running_per_key, other keys' tasks still pass a key at its bound)."""
    pause_on_overload: bool = True
    """Pause dispatch while memory or CPU is above overload_threshold of its budget."""
    overload_threshold: float = Field(default=0.9, gt=0, le=1)
    """Fraction of max_memory_mb / max_cpu_percent at which dispatch pauses."""

    # Beyond the document.
    lease_seconds: PositiveSeconds = 30.0
    """A running task's claim lasts this long unless its worker renews it (every
    lease_seconds / 3, all its tasks at once). A worker that dies stops renewing; its
    tasks are re-queued once the lease expires."""
    max_lost_attempts: int = Field(default=5, ge=1, le=100)
    """Attempts of one task that may be lost with their worker (killed, out of memory,
    machine gone) before the task is dead-lettered with WorkerLostError (category
    resource). Lost attempts do not count against max_retries; the first is re-run at
    once, later ones after retry_delay, doubling. A task's own
    TaskDefinition.max_lost_attempts overrides this; 1 never re-runs a lost task."""
    worker_processes: int = Field(default=1, ge=1)
    """Worker processes ``vpsweb-tasks worker`` runs (``--processes N`` overrides it): 1
    runs the workers in its own process; more makes it a supervisor of that many child
    processes, each a worker of its own, restarted when it dies. Read by that command
    only."""
    shutdown_grace_period: Annotated[Seconds, Field(ge=0)] = 10.0
    """On shutdown, running tasks get this long to finish before they are cancelled and
    put back in the queue (they run again later, without losing an attempt)."""
    gc_tuning: bool | None = None
    """Tune Python's garbage collector once the manager has started
    (``vpsweb_tasks.tune_garbage_collector``: the objects alive then frozen out of later
    collections, a larger youngest generation), which shortens the event loop's pauses
    with many tasks running. Process-wide, so null (default) turns it on only in
    ``vpsweb-tasks worker`` and ``serve``, whose process is the library's; an application
    that embeds the manager opts in with true."""
    progress_flush_interval: PositiveSeconds = 0.5
    """Progress reaches listeners at once; storage gets the latest value this often."""
    thread_pool_size: int | None = Field(default=None, ge=1)
    """Plain ``def`` tasks (which run in worker threads) running at once in one worker
    process; default (null): max_concurrent_jobs."""
    process_pool_size: int | None = Field(default=None, ge=1)
    """Child processes of process tasks (registered with ``process=True``) one worker
    process keeps, busy or idle; default (null): max_concurrent_jobs."""
    task_memory_limit_mb: float = Field(default=512.0, ge=32)
    """Memory limit of a process task whose type sets no memory_limit_mb: the address
    space (virtual size, RLIMIT_AS) of its child process, Python itself included (~15
    MB, more with the modules the task imports). A task that goes past it fails with
    category resource."""
    schedule_missed: Missed = "latest"
    """Ticks of a schedule found later than schedule_grace (every process that could fire
    them was down): ``latest`` runs the latest of them once, ``skip`` runs none; either way
    the schedule goes on from its next tick. A schedule's own ``missed`` overrides this."""
    schedule_grace: PositiveSeconds = 10.0
    """A tick fired at most this late is on time; an older one was missed (see
    schedule_missed)."""
    schedule_check_interval: PositiveSeconds = 1.0
    """A worker's scheduler sleeps until the next tick it knows of, at most this long, so a
    schedule added or resumed by another process fires within this time of its tick."""
    data_dir: Path = Path("data")
    """Folder the built-in ``data_processing`` task reads from and writes to (it refuses
    paths outside it)."""

    @field_validator("queues", mode="after")
    @classmethod
    def _default_queue_too(cls, value: dict[str, QueueSettings]) -> dict[str, QueueSettings]:
        return {DEFAULT_QUEUE: QueueSettings(), **value}

    @model_validator(mode="after")
    def _worker_queues_known(self) -> Self:
        unknown = [name for name in self.worker_queues if name not in self.queues]
        if unknown:
            raise ValueError(
                f"worker_queues: unknown queue {unknown[0]!r}; the queues are"
                f" {', '.join(sorted(self.queues))} (background_tasks.queues)"
            )
        if len(set(self.worker_queues)) != len(self.worker_queues):
            raise ValueError("worker_queues: lists a queue more than once")
        return self

    def queue_limit(self, queue: str) -> int:
        """Tasks of ``queue`` one worker process runs at once."""
        settings = self.queues.get(queue)
        limit = None if settings is None else settings.max_concurrent
        return self.max_concurrent_jobs if limit is None else min(limit, self.max_concurrent_jobs)

    @field_validator("task_timeouts", mode="after")
    @classmethod
    def _keep_default_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_TIMEOUTS, **value}

    def timeout_for(self, task_type: str, task_timeout: float | None) -> float:
        """Timeout precedence: the task's own > ``task_timeouts[type]`` > ``job_timeout``."""
        if task_timeout is not None:
            return task_timeout
        return self.task_timeouts.get(task_type, self.job_timeout)


class MonitoringSettings(_Section):
    """The ``task_monitoring`` section."""

    enable_health_checks: bool = True
    """Evaluate health and alerts periodically."""
    health_check_interval: PositiveSeconds = 60.0
    """Seconds between health evaluations."""
    storage_check_interval: PositiveSeconds = 1.0
    """A health check also writes to the task database (one row, the cheapest honest
    write), at most this often; a refused write makes health unhealthy
    (``storage_writable: false``) until a check succeeds. The disk figure is read as
    often."""
    enable_task_metrics: bool = True
    """Record each finished attempt in task_metrics (queue wait, duration, outcome, error
    category): the source of the statistics' rates, durations and error rates, and of the
    error-rate alert. Off: nothing is recorded and statistics report only the counts of
    tasks by status (with task_metrics false)."""
    metrics_history_size: int = Field(default=1000, ge=1)
    """System resource samples kept in memory."""
    failed_task_threshold: int = Field(default=5, ge=1)
    """Failed tasks (in the last hour) that degrade health."""
    queue_size_warning: int = Field(default=50, ge=1)
    """Waiting tasks that raise a queue size warning."""
    memory_usage_warning: float = Field(default=0.8, gt=0, le=1)
    """Fraction of max_memory_mb at which process memory raises a warning."""
    track_task_lifecycle: bool = True
    """Log an INFO line for every lifecycle event of every task (submitted, started,
    completed, cancelled, cancel requested, requeued). Off: those lines are not logged;
    failures, retries and lost attempts are warnings and errors, logged either way."""
    enable_task_tracing: bool = False
    """Log every progress update too, as an INFO line ``task_id:<id> progress 50.0%
    <message>`` of the vpsweb_tasks.progress logger (verbose)."""
    progress_history_limit: int = Field(default=200, ge=1)
    """Progress history rows kept per task (beyond the document)."""
    statistics_window: PositiveSeconds = 3600.0
    """Task statistics (rates, durations, error rates) cover this much recent time."""
    min_attempts_for_error_rate: int = Field(default=5, ge=1)
    """The error-rate alert needs at least this many finished attempts in the window."""
    error_rate_warning: float = Field(default=0.10, gt=0, le=1)
    """Share of the window's finished attempts that failed above which the error-rate
    alert is a warning."""
    error_rate_critical: float = Field(default=0.20, gt=0, le=1)
    """Share of the window's finished attempts that failed above which the error-rate
    alert is critical (at least error_rate_warning)."""

    @model_validator(mode="after")
    def _error_rate_levels_in_order(self) -> Self:
        if self.error_rate_warning > self.error_rate_critical:
            raise ValueError(
                "error_rate_warning must not be above error_rate_critical"
                f" ({self.error_rate_warning:g} > {self.error_rate_critical:g})"
            )
        return self


class SystemResourceSettings(_Section):
    """The ``system_resources`` section."""

    enable_resource_monitoring: bool = True
    """Sample CPU, memory and disk with psutil."""
    resource_check_interval: PositiveSeconds = 30.0
    """Seconds between samples."""
    max_cpu_usage: float = Field(default=80.0, gt=0, le=100)
    """System CPU percent that makes health critical."""
    cpu_warning_threshold: float = Field(default=70.0, gt=0, le=100)
    """System CPU percent that raises a warning."""
    max_memory_usage_percent: float = Field(default=85.0, gt=0, le=100)
    """System memory percent that makes health critical."""
    memory_warning_threshold: float = Field(default=75.0, gt=0, le=100)
    """System memory percent that raises a warning."""
    max_disk_usage_percent: float = Field(default=90.0, gt=0, le=100)
    """Disk percent (of the database's volume) that makes health critical."""
    disk_warning_threshold: float = Field(default=80.0, gt=0, le=100)
    """Disk percent that raises a warning."""
    cpu_smoothing_samples: int = Field(default=3, ge=1, le=100)
    """CPU alerts and overload use the mean of this many latest samples, so one busy
    moment neither pauses dispatch nor raises an alert."""


class StorageSettings(_Section):
    """Where tasks live: one SQLite file (the default) or a PostgreSQL database."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    """Where tasks are stored."""
    sqlite_path: Path = Path("vpsweb_tasks.db")
    """The SQLite file (created with its folder if missing)."""
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    """SQLite's synchronous pragma: NORMAL in WAL mode survives process crashes; FULL also
    survives power loss, at a cost in write speed."""
    busy_timeout: PositiveSeconds = 30.0
    """How long a write waits for another process's lock."""
    sqlite_watch_interval: float = Field(default=0.05, ge=0)
    """SQLite with several processes: how often a worker checks whether another process
    committed (``PRAGMA data_version``, no table read), so that a task submitted elsewhere
    starts, and a cancel requested elsewhere stops a task this worker runs (it then reads
    its own tasks' cancel flags, at most once per interval), within this time rather than
    within ``queue_check_interval``. 0: off."""
    sqlite_cache_mb: int = Field(default=32, ge=1)
    """SQLite's page cache per connection, in MiB (filled only as pages are read). With a
    million waiting tasks the claim's index pages stop fitting SQLite's 2 MiB default,
    and each claim then re-reads them from the OS (benchmarks/depth.py)."""
    postgres_dsn: str | None = None
    """libpq connection string, for backend postgres."""
    startup_check: Literal["quick", "full", "off"] = "quick"
    """SQLite: how the file is checked when it is opened, before anything is written.
    ``quick``: PRAGMA quick_check, every page read once (about 0.1 s for a 100 MB file in
    the page cache, 1.5 s from disk); ``full``: PRAGMA integrity_check, also every index
    against its table (several times slower); ``off``. A damaged file, or one that is not a
    database, stops the start with an error naming it."""


class LoggingSettings(_Section):
    """Log file and level. Every line about a task carries ``task_id:<id>``."""

    file: Path | None = Path("logs/repository.log")
    """Log file of the library (rotated at 20 MB); null: no file."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Level of the library's logger."""
    format: Literal["text", "json"] = "text"
    """text: lines of time, level, logger and message (task_id:<id> first in a line about a
    task); json: one JSON object a line, with task_id, task_type, attempt and, in a traced
    span, trace_id and span_id as fields. For the log file and the stderr of vpsweb-tasks
    serve and worker."""


class HttpSettings(_Section):
    """The HTTP API (package ``vpsweb_tasks_http``) and ``vpsweb-tasks serve``."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default."""
    port: int = Field(default=8000, ge=0, le=65535)
    api_key_env: str | None = None
    """Name of an environment variable holding the API key. When a key is configured,
    every route but the health checks, the dashboard page and the API description requires
    header X-API-Key; if the variable is unset or empty, the server refuses to start."""
    api_key: SecretStr | None = None
    """The API key itself (prefer api_key_env, which keeps it out of files)."""
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted (413 beyond)."""
    queue_full_retry_after: int = Field(default=5, ge=1)
    """Retry-After seconds sent with 429 when the queue is full."""
    storage_retry_after: int = Field(default=5, ge=1)
    """Retry-After seconds sent with 503 when the task database cannot take a write now
    (a full disk, a read-only file, a held lock...); the body names the cause."""

    def resolved_api_key(self) -> str | None:
        """The API key; None when none is configured. A key that is configured but cannot
        be used (``api_key_env`` naming an unset or empty variable, a blank ``api_key``, or
        one no client could send) raises :class:`ConfigError`: the API never runs open by
        mistake."""
        if self.api_key is not None:
            key, where = self.api_key.get_secret_value(), "http.api_key"
        elif self.api_key_env:
            where = f"http.api_key_env: environment variable {self.api_key_env}"
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"{where} is unset or empty; refusing to serve the API without its key "
                    f"(set {self.api_key_env}, or remove http.api_key_env to serve without one)"
                )
        else:
            return None
        try:
            return check_api_key(key)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def check_api_key(key: str) -> str:
    """``key`` if a client can send it as ``X-API-Key`` (HTTP strips a header's
    surrounding whitespace and forbids control characters); ValueError otherwise."""
    if not key.strip():
        raise ValueError("the API key is blank")
    if key != key.strip():
        raise ValueError("the API key has leading or trailing whitespace, which HTTP strips")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise ValueError("the API key has control characters, which a header cannot carry")
    return key


class Settings(BaseSettings):
    """The whole configuration: the core's sections, and extensions' sections kept as given
    until the extension reads them (:meth:`section`)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="allow",
        env_prefix="VPSWEB_TASKS_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    background_tasks: BackgroundTaskSettings = Field(default_factory=BackgroundTaskSettings)
    task_monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    system_resources: SystemResourceSettings = Field(default_factory=SystemResourceSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    schedules: dict[ScheduleName, ScheduleDefinition] = Field(default_factory=dict)
    """Schedules by name (see :mod:`vpsweb_tasks.schedules`), written to storage when a
    manager starts."""
    rate_limits: dict[LimitName, RateLimitSettings] = Field(default_factory=dict)
    """Named rate limits shared by every process on the task database, as
    ``{NAME: {requests, per, tokens}}``. A task type consumes them when registered with
    ``rate_limits=["NAME"]`` or a key template (``NAME:{field}``): see docs/limits.md."""
    retry_budgets: dict[LimitName, RetryBudgetSettings] = Field(default_factory=dict)
    """Retry budgets per dependency (a circuit breaker's name or a rate limit's name),
    as ``{NAME: {ratio, min_retries_per_second, window_seconds}}``; ``default`` applies to
    every dependency not listed. None configured: retries are not budgeted."""

    _sections: dict[tuple[str, Any], Any] = PrivateAttr(default_factory=dict)

    def section(self, name: str, kind: type[M]) -> M:
        """An extension's section ``name``, validated as ``kind`` (a pydantic model): the
        file's values (or ``load_config``'s overrides), under environment variables
        ``VPSWEB_TASKS_<NAME>__<KEY>``. Raises :class:`ConfigError` naming each invalid
        key. Validated once; later calls return the same object."""
        key = (name, kind)
        if key not in self._sections:
            given = (self.model_extra or {}).get(name, {})
            if not isinstance(given, dict):
                raise ConfigError(f"invalid configuration:\n  {name}: must be a mapping")
            try:
                self._sections[key] = kind.model_validate(_merged(given, _env_section(name)))
            except ValidationError as exc:
                raise ConfigError(_describe(exc, prefix=name)) from None
        found: M = self._sections[key]
        return found

    @property
    def extra_sections(self) -> list[str]:
        """Names of the sections that are not the core's (extensions read them)."""
        return sorted(self.model_extra or {})


def _env_section(name: str) -> dict[str, Any]:
    """The environment's ``VPSWEB_TASKS_<NAME>__...`` variables as a nested mapping."""
    reader = create_model(
        "SectionFromEnvironment",
        __base__=_EnvironmentOnly,
        **{name: (dict[str, Any], {})},  # type: ignore[call-overload]
    )
    found: dict[str, Any] = reader().model_dump()[name]
    return found


class _EnvironmentOnly(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VPSWEB_TASKS_", env_nested_delimiter="__", extra="ignore"
    )


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, *, prefix: str | None = None) -> str:
    lines = []
    for item in error.errors():
        parts = [prefix, *item["loc"]] if prefix else list(item["loc"])
        key = ".".join(str(part) for part in parts) or "(root)"
        lines.append(f"{key}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from a YAML file (optional), then environment variables, then
    keyword overrides (``load_config(background_tasks={"max_concurrent_jobs": 1})``).

    With no path, ``$VPSWEB_TASKS_CONFIG`` names the file if it is set.
    """
    if path is None:
        path = os.environ.get("VPSWEB_TASKS_CONFIG") or None
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(path)))
            return tuple(sources)

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return Settings.model_validate(loaded.model_dump())


def config_reference(extra: Sequence[tuple[str, type[BaseModel]]] = ()) -> str:
    """Markdown reference of every section and key, the core's and the ``extra`` sections
    of extensions (docs/configuration.md is this, with the translation extension's)."""
    out = [
        "# Configuration",
        "",
        "`load_config(path=None, **overrides)` reads a YAML file (or `$VPSWEB_TASKS_CONFIG`),",
        "then environment variables, then keyword overrides, and validates everything: an",
        "invalid value raises `ConfigError` naming the key, e.g.",
        "`background_tasks.max_concurrent_jobs: Input should be greater than or equal to 1`.",
        "Environment variables are `VPSWEB_TASKS_<SECTION>__<KEY>`, for example",
        "`VPSWEB_TASKS_STORAGE__SQLITE_PATH=/var/lib/tasks.db`. Durations are seconds (a",
        "`timedelta` is accepted from Python). This page is generated from the models by",
        "`vpsweb_tasks.config.config_reference()`; a test keeps it current.",
        "",
    ]
    sections: list[tuple[str, type[BaseModel]]] = [
        ("background_tasks", BackgroundTaskSettings),
        ("task_monitoring", MonitoringSettings),
        ("system_resources", SystemResourceSettings),
        ("storage", StorageSettings),
        ("logging", LoggingSettings),
        ("http", HttpSettings),
        ("schedules.<name>", ScheduleDefinition),
        ("rate_limits.<name>", RateLimitSettings),
        ("retry_budgets.<name>", RetryBudgetSettings),
        *extra,
    ]
    for name, model in sections:
        doc = " ".join((model.__doc__ or "").split())
        out += [f"## `{name}`", "", doc, "", "| key | default | meaning |", "|---|---|---|"]
        for key, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, Path):
                default = str(default)
            shown = "required" if info.is_required() else f"`{default!r}`"
            meaning = " ".join((info.description or "").split())
            out.append(f"| `{key}` | {shown} | {meaning} |")
        out.append("")
    return "\n".join(out)
