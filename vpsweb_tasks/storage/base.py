"""The storage contract.

Storage is the single source of truth: everything a manager keeps in memory can be rebuilt
from it after a crash. A backend (SQLite, PostgreSQL) implements :class:`TaskStore`; both
pass one conformance suite (``tests/test_storage_conformance.py``).

Conventions that hold for every operation:

* **Time is passed in.** Operations that depend on the clock take ``now`` (epoch seconds,
  float) from the caller, so tests drive time with a fake clock and several machines agree
  on what "expired" means as long as their clocks roughly agree.
* **Atomicity.** Each operation is one transaction: it happens completely or not at all.
  A caller is answered only after its change is durable (committed). Backends may commit
  several callers' operations in one transaction (group commit); each is still atomic.
* **Legal transitions only.** Status changes follow
  :data:`vpsweb_tasks.models.LEGAL_TRANSITIONS`. Every write is guarded by the status it
  expects, so a terminal task (completed, failed, cancelled) is never overwritten, except
  that ``failed`` may be requeued explicitly.
* **Fencing.** :meth:`TaskStore.claim` hands out a :class:`LeaseToken` with a number
  (``fence``) that grows with every claim of the task. Writes on behalf of a running
  attempt (:meth:`finish`, :meth:`heartbeat`) only apply while the task is still
  ``running`` under that exact token. A worker whose lease expired and whose task was
  re-queued or re-claimed gets :class:`~vpsweb_tasks.errors.LeaseLostError` and changes
  nothing: it can never overwrite the outcome of a newer attempt.
* **Attempts.** ``attempts`` counts the attempts that count against a task's retries. A
  claim adds one; a release (graceful shutdown) or a deferral (open circuit breaker)
  gives it back. Each claim writes a ``task_executions`` row, closed by the outcome.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

import anyio
import anyio.abc

from ..errors import ErrorCategory
from ..models import (
    ExecutionRecord,
    ResourceSample,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    to_datetime,
)
from ..retry import RetryConfig

__all__ = [
    "AttemptGroup",
    "Cancelled",
    "Claim",
    "Completed",
    "Deferred",
    "Failed",
    "HeartbeatResult",
    "LeaseToken",
    "MetricsWindow",
    "NewTask",
    "NewTranslationJob",
    "Notice",
    "Outcome",
    "ProgressSnapshot",
    "ReapResult",
    "Released",
    "RetryDecider",
    "SharedBreakerState",
    "TaskStore",
    "TranslationJobRow",
    "WorkerInfo",
]


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

    def record(self) -> TaskRecord:
        """The record of this task as :meth:`TaskStore.add_task` stores it (``pending``):
        built here rather than read back, which spares a row conversion per submit."""
        created = to_datetime(self.created_at)
        return TaskRecord(
            id=self.id,
            name=self.name,
            task_type=self.task_type,
            priority=TaskPriority.from_rank(self.priority),
            status=TaskStatus.PENDING,
            run_at=created if self.run_at == self.created_at else to_datetime(self.run_at),
            created_at=created,
            updated_at=created,
            payload=self.payload,
            metadata=self.metadata,
            max_retries=self.max_retries,
            timeout_seconds=self.timeout_seconds,
            retry=None if self.retry is None else RetryConfig.model_validate(self.retry),
            owner=self.owner,
        )


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
    """The attempt succeeded. ``result`` must be JSON-serialisable."""

    result: Any = None
    result_json: str | None = None
    """``result`` already encoded, by a caller that had to encode it anyway to check it;
    stores encode ``result`` themselves when this is None."""


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


@dataclass(frozen=True, slots=True)
class NewTranslationJob:
    """A translation job to insert with its task (:meth:`TaskStore.add_translation_job`).
    Languages are already normalised; ``metadata`` is JSON (author, title, poem_id...)."""

    id: str
    source_language: str
    target_language: str
    workflow_mode: str
    original_text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def row(self, task: NewTask) -> TranslationJobRow:
        """The row of this job with ``task`` as :meth:`TaskStore.add_translation_job`
        stores them (no steps, no result yet), built rather than read back."""
        return TranslationJobRow(
            id=self.id,
            task=task.record(),
            source_language=self.source_language,
            target_language=self.target_language,
            workflow_mode=self.workflow_mode,
            original_text=self.original_text,
            metadata=self.metadata,
            steps={},
            result=None,
            created_at=task.created_at,
            updated_at=task.created_at,
        )


@dataclass(frozen=True, slots=True)
class TranslationJobRow:
    """A ``translation_jobs`` row with the task it belongs to (read together)."""

    id: str
    task: TaskRecord
    source_language: str
    target_language: str
    workflow_mode: str
    original_text: str
    metadata: dict[str, Any]
    steps: dict[str, dict[str, Any]]
    """Checkpoints of finished workflow steps, by step name."""
    result: dict[str, Any] | None
    created_at: float
    updated_at: float

    @property
    def task_id(self) -> str:
        return self.task.id


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


#: Given a task whose attempt was lost (its worker died), returns the epoch time of its
#: next attempt, or None to fail it. Called inside the reaping transaction: keep it pure.
RetryDecider = Callable[[TaskRecord], float | None]


class TaskStore(abc.ABC):
    """A durable home for tasks. Use as ``async with store:`` or call open/close."""

    serial_writes: ClassVar[bool] = False
    """True if calls run in the order they were made, each seeing the changes of the calls
    made before it, even those not yet committed (one connection and one queue, as
    SQLite's database thread). The manager then wakes its dispatcher as soon as a submit is
    queued, so that an idle worker's claim rides in the same group commit as the insert
    instead of a round trip after it."""

    # --- lifecycle -------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema to the newest migration. Idempotent; safe when
        several processes open the same database at once."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    @abc.abstractmethod
    def schema_version(self) -> int:
        """The newest migration applied (valid after :meth:`open`)."""

    # --- notifications -----------------------------------------------------------------

    async def listen(
        self,
        on_notice: Callable[[Notice, str], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled, calling ``on_notice(kind, task_id)`` for every
        ``task_added`` (:meth:`add_task`, :meth:`requeue_failed`) and ``cancel_requested``
        (:meth:`request_cancel` of a running task) committed by any process on this
        database, this one included, and ``on_notice("breaker_changed", name)`` for every
        :meth:`save_breaker_state`. Start it with ``await task_group.start(store.listen,
        on_notice)``: it reports started once notices are being received.

        Notices are a shortcut, never the only path: one may be lost (e.g. while a
        connection is re-established), so workers still poll every
        ``queue_check_interval`` and learn of cancel requests from :meth:`heartbeat`.
        ``on_notice`` runs in the listening task: keep it quick and non-blocking.

        A backend that cannot tell what changed may send ``changed`` instead (SQLite
        watches ``PRAGMA data_version``). The default does nothing and waits forever:
        a backend without notifications relies on that polling alone.
        """
        task_status.started()
        await anyio.sleep_forever()

    # --- submit and read -------------------------------------------------------------

    @abc.abstractmethod
    async def add_task(self, task: NewTask, *, max_queue_size: int | None = None) -> TaskRecord:
        """Insert a ``pending`` task and return its record.

        With ``max_queue_size``, the count of waiting tasks (``pending`` + ``retrying``)
        is checked in the same transaction: if it is already at the limit nothing is
        stored and :class:`~vpsweb_tasks.errors.QueueFullError` is raised. Inserting an
        id that exists raises ``ValueError``.
        """

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The task, or None."""

    @abc.abstractmethod
    async def get_tasks(self, task_ids: Collection[str]) -> list[TaskRecord]:
        """The tasks that exist among ``task_ids``, in no particular order."""

    @abc.abstractmethod
    async def list_tasks(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "created_desc",
    ) -> list[TaskRecord]:
        """Tasks filtered by status and type. ``order`` is ``created_desc`` (newest
        first), ``finished_desc`` (most recently finished first) or ``dispatch`` (the order
        waiting tasks will be claimed in)."""

    @abc.abstractmethod
    async def count_tasks(self) -> dict[TaskStatus, int]:
        """Number of tasks per status (every status is a key)."""

    @abc.abstractmethod
    async def list_executions(self, task_id: str) -> list[ExecutionRecord]:
        """Every attempt of the task, oldest first."""

    # --- dispatch --------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self,
        *,
        worker_id: str,
        now: float,
        lease_seconds: float,
        limit: int,
        task_types: Collection[str] | None = None,
        by_priority: bool = True,
    ) -> list[Claim]:
        """Atomically take up to ``limit`` eligible tasks for ``worker_id``.

        Eligible: status ``pending`` or ``retrying``, ``run_at <= now``, and runnable by
        this worker: owned by it (its closures), or unowned with ``task_type`` in
        ``task_types`` (None: any type). Order: highest priority first, then earliest
        ``run_at``, then insertion order (with ``by_priority=False``: ``run_at``, then
        insertion order). Each claimed task becomes ``running`` with ``attempts + 1``, a
        new fence, ``lease_owner = worker_id``, ``lease_expires_at = now + lease_seconds``,
        ``started_at = now``, and gets a ``task_executions`` row (outcome ``running``).
        No task is ever handed to two workers. Returned in dispatch order.
        """

    @abc.abstractmethod
    async def heartbeat(
        self,
        *,
        worker: WorkerInfo,
        now: float,
        lease_seconds: float,
        running: Collection[LeaseToken] = (),
    ) -> HeartbeatResult:
        """Record that the worker is alive (upserting its ``workers`` row, expiring at
        ``now + lease_seconds``) and extend the lease of each running token it still
        holds. Reports tokens it no longer holds and tasks with a pending cancel request.
        """

    @abc.abstractmethod
    async def finish(
        self,
        token: LeaseToken,
        outcome: Outcome,
        *,
        now: float,
        claimed: TaskRecord | None = None,
    ) -> TaskRecord:
        """Record the outcome of the attempt held by ``token`` and return the new record.

        ``claimed`` is the record :meth:`claim` returned for this attempt, if the caller
        has it: a backend may build the new record from it (and the columns that change
        under a running task: progress and message) instead of reading the whole row
        back. The record returned is the same either way.

        In one transaction: the task row (status per outcome, lease cleared, result or
        error, ``finished_at`` for terminal outcomes), the attempt's execution row, and a
        ``task_metrics`` row (queue wait, duration, outcome). ``Completed`` sets progress
        to 1. Raises :class:`~vpsweb_tasks.errors.LeaseLostError` (changing nothing) when
        the token is no longer current.
        """

    @abc.abstractmethod
    async def save_progress(self, snapshots: Sequence[ProgressSnapshot]) -> None:
        """Write the latest progress of running tasks (ignored for tasks no longer
        running), and append each snapshot to the task's progress history, keeping at
        most ``history_limit`` rows per task (set on the store)."""

    @abc.abstractmethod
    async def progress_history(self, task_id: str, *, limit: int = 1000) -> list[ProgressSnapshot]:
        """Stored progress snapshots of a task, oldest first."""

    # --- cancel, pause, clear ----------------------------------------------------------

    @abc.abstractmethod
    async def request_cancel(self, task_id: str, *, now: float) -> TaskRecord:
        """Cancel a task. ``pending``/``retrying``: becomes ``cancelled`` at once.
        ``running``: ``cancel_requested`` is set, and the worker holding it cancels the
        attempt and records ``Cancelled``. Raises ``TaskNotFoundError``, or
        ``TaskStateError`` for a terminal task (which is left untouched)."""

    @abc.abstractmethod
    async def cancel_waiting(self, *, now: float) -> list[str]:
        """Cancel every ``pending`` and ``retrying`` task; return their ids."""

    @abc.abstractmethod
    async def set_paused(self, paused: bool, *, reason: str | None = None) -> None:
        """Pause or resume dispatch for every worker on this store."""

    @abc.abstractmethod
    async def get_paused(self) -> tuple[bool, str | None]:
        """Whether dispatch is paused, and why."""

    @abc.abstractmethod
    async def requeue_failed(
        self,
        *,
        now: float,
        task_ids: Collection[str] | None = None,
        category: ErrorCategory | None = None,
        task_type: str | None = None,
    ) -> list[TaskRecord]:
        """Move ``failed`` tasks (the dead letter queue) back to ``pending`` with their
        attempts reset, optionally only those ids / error category / type; return them.
        Their execution history is kept."""

    # --- workers and crash recovery ----------------------------------------------------

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """Registered workers (live or not yet reaped)."""

    @abc.abstractmethod
    async def expire_workers(self, worker_ids: Collection[str]) -> None:
        """Mark workers as dead now (e.g. their process is known to be gone), so the next
        :meth:`reap` recovers their tasks without waiting for their leases."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's row on clean shutdown (after its tasks were released)."""

    @abc.abstractmethod
    async def reap(self, *, now: float, decide: RetryDecider) -> ReapResult:
        """Recover from dead workers, in one transaction.

        * A ``running`` task whose lease expired, or whose worker expired, loses its
          attempt: the execution row is closed as ``lost`` (category ``resource``) and the
          task is re-queued as ``retrying`` at ``decide(task)``, or ``failed`` when that is
          None, or when its callable lived only in the dead worker (owner expired).
        * A waiting task whose owner (the process holding its closure) is dead or unknown
          becomes ``failed`` with ``HandlerUnavailableError``: never silently lost.
        * Expired workers' rows are deleted.
        """

    # --- shared circuit breakers --------------------------------------------------------

    @abc.abstractmethod
    async def save_breaker_state(self, state: SharedBreakerState) -> None:
        """Record a breaker's new state for every worker (insert or replace; a state older
        than the one stored is ignored, so the latest change wins). Backends with
        notifications also send ``breaker_changed``."""

    @abc.abstractmethod
    async def load_breaker_states(self) -> list[SharedBreakerState]:
        """Every recorded breaker state."""

    # --- statistics and system metrics ---------------------------------------------------

    @abc.abstractmethod
    async def count_tasks_by_type(self) -> dict[str, dict[TaskStatus, int]]:
        """Number of tasks per type and status (types with no tasks left are omitted).
        Cheap: backends keep these counts as tasks change."""

    @abc.abstractmethod
    async def metrics_window(self, *, since: float, sample_limit: int = 10_000) -> MetricsWindow:
        """Finished attempts recorded since ``since``, grouped; plus a sample of at most
        ``sample_limit`` completed durations and the count of dead-lettered tasks."""

    @abc.abstractmethod
    async def add_resource_sample(self, sample: ResourceSample) -> None:
        """Persist one reading of system resources to ``system_metrics``."""

    @abc.abstractmethod
    async def resource_samples(
        self, *, since: float | None = None, limit: int = 1000
    ) -> list[ResourceSample]:
        """Stored readings, oldest first: the most recent ``limit`` since ``since``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """A trivial round trip; raises if the database cannot be reached."""

    # --- translation jobs ----------------------------------------------------------------

    @abc.abstractmethod
    async def add_translation_job(
        self, task: NewTask, job: NewTranslationJob, *, max_queue_size: int | None = None
    ) -> TranslationJobRow:
        """Insert a ``pending`` task (as :meth:`add_task`, queue-size check included) and its
        ``translation_jobs`` row, linked one-to-one, in ONE transaction: either both exist
        or neither. ``created_at`` of the job is the task's. Raises ``ValueError`` when the
        task id or the job id exists, ``QueueFullError`` when the queue is full."""

    @abc.abstractmethod
    async def add_translation_jobs(
        self,
        items: Sequence[tuple[NewTask, NewTranslationJob]],
        *,
        max_queue_size: int | None = None,
    ) -> list[TranslationJobRow]:
        """Insert several ``pending`` tasks, each with its ``translation_jobs`` row (as
        :meth:`add_translation_job`), in ONE transaction: either every task and job of
        ``items`` exists afterwards or none does. Returns the rows in the order given.

        With ``max_queue_size``, the queue must have room for all of them: if the waiting
        tasks (``pending`` + ``retrying``) plus ``len(items)`` exceed the limit, nothing
        is stored and :class:`~vpsweb_tasks.errors.QueueFullError` names the limit and
        the waiting count. The check and the inserts are one transaction, so no other
        submit can take the room in between: exactly so on SQLite, whose writers take
        turns; on PostgreSQL, submits racing on other connections can overshoot the
        limit by the tasks they add, as with :meth:`add_task`. A task id or job id that
        exists, or that appears twice in ``items``, raises ``ValueError`` and stores
        nothing. An empty ``items`` stores nothing and returns ``[]``."""

    @abc.abstractmethod
    async def get_translation_job(self, job_id: str) -> TranslationJobRow | None:
        """The job with its task, read from one snapshot; None if unknown."""

    @abc.abstractmethod
    async def list_translation_jobs(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TranslationJobRow]:
        """Jobs whose task has one of ``statuses`` (None: any), newest first."""

    @abc.abstractmethod
    async def save_translation_step(
        self, job_id: str, step: str, checkpoint: dict[str, Any], *, now: float
    ) -> None:
        """Record (insert or replace) the checkpoint of one finished step: the other
        steps' checkpoints are kept. Written as the step finishes, whatever the task's
        status, so that work paid for is never lost. Raises ``TaskNotFoundError`` for an
        unknown job."""

    @abc.abstractmethod
    async def save_translation_result(
        self, job_id: str, result: dict[str, Any], *, now: float
    ) -> None:
        """Record the job's final result (JSON). Raises ``TaskNotFoundError`` for an
        unknown job."""

    # --- housekeeping ------------------------------------------------------------------

    @abc.abstractmethod
    async def cleanup(self, *, finished_before: float) -> int:
        """Delete terminal tasks that finished before the cutoff, with their executions,
        metrics, progress history and translation job, and system metrics recorded before
        it; return how many tasks."""

    @abc.abstractmethod
    async def maintenance(self, *, vacuum: bool = False) -> dict[str, Any]:
        """Keep the database healthy (checkpoint, statistics, optionally reclaim space);
        return what was done and the sizes before and after."""

    @abc.abstractmethod
    async def backup(self, path: str) -> dict[str, Any]:
        """Write a consistent copy of the whole database to ``path`` while it is in use;
        return the path, its size and how many tasks it holds."""
