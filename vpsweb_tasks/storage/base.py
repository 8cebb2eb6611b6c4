"""The storage contract.

Storage is the single source of truth: everything a manager keeps in memory can be rebuilt
from it after a crash. :class:`TaskStore` is the contract, in four parts: **tasks**
(add, read, list, count, cancel, requeue, pause), **attempts and leases** (claim,
heartbeat, finish, reap, workers), **progress**, **circuit breakers**; plus the
**extension hook** (:meth:`~TaskStore.install` a component's tables and queries,
:meth:`~TaskStore.run` an operation on them). Every operation is implemented once, in
:mod:`.logic`, on named queries; a backend (:mod:`.sqlite`, :mod:`.postgres`) implements
only what is physical: :meth:`~TaskStore.open`, :meth:`~TaskStore.close`,
:meth:`~TaskStore.run`, :meth:`~TaskStore.listen` and the two housekeeping capabilities
:meth:`~TaskStore.maintenance` and :meth:`~TaskStore.backup`. Both backends pass one
conformance suite (``tests/test_storage_conformance.py``).

Conventions that hold for every operation:

* **Time is passed in.** Operations that depend on the clock take ``now`` (epoch seconds,
  float) from the caller, so tests drive time with a fake clock and several machines agree
  on what "expired" means as long as their clocks roughly agree.
* **Atomicity.** Each operation happens completely or not at all. A caller is answered
  only after its change is durable (committed). Backends may commit several callers'
  operations in one transaction (group commit); each is still atomic.
* **Legal transitions only.** Status changes follow
  :data:`vpsweb_tasks.models.LEGAL_TRANSITIONS`. Every write is guarded by the status it
  expects, so a terminal task (completed, failed, cancelled) is never overwritten, except
  that ``failed`` may be requeued explicitly.
* **Fencing.** :meth:`TaskStore.claim` hands out a :class:`LeaseToken` with a number
  (``fence``) that grows with every claim of the task. Writes on behalf of a running
  attempt (:meth:`~TaskStore.finish`, :meth:`~TaskStore.heartbeat`) only apply while the
  task is still ``running`` under that exact token. A worker whose lease expired and whose
  task was re-queued or re-claimed gets :class:`~vpsweb_tasks.errors.LeaseLostError` and
  changes nothing: it can never overwrite the outcome of a newer attempt.
* **Attempts.** ``attempts`` counts the attempts that count against a task's retries. A
  claim adds one; a release (graceful shutdown), a deferral (open circuit breaker) or a
  loss (the worker died: :meth:`~TaskStore.reap`) gives it back; a loss is counted in
  ``lost_attempts`` instead. Each attempt has a ``task_executions`` row, written whole
  when the attempt ends (its outcome, or ``lost`` at the reap); while it runs, its row
  (outcome ``running``, id 0) is read off the task row, so a claim writes only the task
  row.
* **Faults.** A backend raises :class:`~vpsweb_tasks.errors.StorageUnavailableError` (with
  its ``cause``: ``disk_full``, ``read_only``, ``locked``, ``corrupt``, ``unavailable``) for
  a driver error that means "the database cannot do this now", never the driver's own
  exception; the operation changed nothing. A write that fails so marks the store not
  writable (:attr:`TaskStore.write_status`) until :meth:`TaskStore.check_writes` succeeds.
  :meth:`TaskStore.open` raises :class:`~vpsweb_tasks.errors.StorageCorruptError` for a
  damaged SQLite file or one that is not a database, and ``StorageUnavailableError``
  naming the database (never a password) when it cannot be opened or used.
* **Text that can be read back.** What is stored can always be read and answered as UTF-8
  JSON (:mod:`vpsweb_tasks.validation`). Input is checked before it reaches storage (task
  definitions, payloads, a pause reason: a NUL or a lone surrogate is refused); an id or a
  task type no row can hold matches nothing (:func:`.logic.matchable`: no task, an empty
  list, ``TaskNotFoundError``) on every backend; the text of an outcome (an error's
  message and type, a cancel or deferral reason), which holds whatever the failing code
  put in it, is stored with what storage cannot hold written out (``\\x00``,
  ``\\udfff``); a result must be JSON storage can hold (:class:`.types.Completed`).
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import anyio
import anyio.abc

from ..errors import ErrorCategory, LeaseLostError, StorageUnavailableError
from ..models import ExecutionRecord, TaskRecord, TaskStatus
from . import logic
from ._dbthread import Refused
from .ops import Mode, Operation, Step
from .queries import CORE, Component
from .rows import dumps
from .types import (
    AttemptGroup,
    Cancelled,
    Claim,
    ClaimLimits,
    Completed,
    Deferred,
    Failed,
    HeartbeatResult,
    LeaseToken,
    MetricsWindow,
    NewTask,
    Notice,
    Outcome,
    ProgressSnapshot,
    ReapResult,
    Released,
    RetryDecider,
    SharedBreakerState,
    WorkerInfo,
    WriteStatus,
)

__all__ = [
    "AttemptGroup",
    "Cancelled",
    "Claim",
    "Completed",
    "Component",
    "Deferred",
    "DuplicateKeyError",
    "Failed",
    "HeartbeatResult",
    "LeaseToken",
    "MetricsWindow",
    "Mode",
    "NewTask",
    "Notice",
    "Operation",
    "Outcome",
    "ProgressSnapshot",
    "ReapResult",
    "Released",
    "RetryDecider",
    "SharedBreakerState",
    "Step",
    "TaskStore",
    "WorkerInfo",
    "WriteStatus",
]

T = TypeVar("T")
R = TypeVar("R")

#: Called once a submit is ordered before any later call on the store (see add_tasks).
Announce = Callable[[], None]


class DuplicateKeyError(ValueError):
    """A row with the same key exists already; nothing of the operation was stored."""


def refusals(results: Sequence[R | Exception]) -> list[R | Refused]:
    """A combined write's answers: an item's own error (a full queue, a lost lease) goes
    to its caller alone."""
    return [Refused(result) if isinstance(result, Exception) else result for result in results]


@contextlib.contextmanager
def naming_duplicates(items: Sequence[tuple[NewTask, int | None]]) -> Iterator[None]:
    """A submit run alone that meets a duplicate id says which task it was; a batch's is
    left as it is (the batch is then run again one submit at a time)."""
    try:
        yield
    except DuplicateKeyError as exc:
        if len(items) != 1:
            raise
        raise DuplicateKeyError(f"task {items[0][0].id} already exists") from exc


class TaskStore(abc.ABC):
    """A durable home for tasks. Use as ``async with store:`` or call open/close."""

    #: The name of the dialect's queries and migrations (``sqlite``, ``postgres``).
    dialect: ClassVar[str]

    def __init__(self, *, history_limit: int = 200, task_metrics: bool = True) -> None:
        self.history_limit = history_limit
        """Progress history rows kept per task."""
        self.task_metrics = task_metrics
        """Whether a finish records its attempt in ``task_metrics`` (the statistics'
        source; ``task_monitoring.enable_task_metrics``)."""
        self._components: list[Component] = [CORE]
        self._schema_version = 0
        self._write_status = WriteStatus(writable=True, checked_at=None, error=None, error_at=None)

    # --- lifecycle (backend) -------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema of every installed component to its newest
        migration. Idempotent; safe when several processes open the same database."""

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

    # --- faults ------------------------------------------------------------------------------

    @property
    def write_status(self) -> WriteStatus:
        """Whether this store takes writes, as its latest write (a write check or any
        other write) found, and its latest write failure."""
        return self._write_status

    def _fault(self, error: StorageUnavailableError, mode: Mode) -> StorageUnavailableError:
        """Backends pass each fault they raise through here: one of a write marks the
        store not writable."""
        if mode is not Mode.READ and mode is not Mode.SNAPSHOT:
            self._write_status = replace(
                self._write_status, writable=False, error=error, error_at=time.time()
            )
        return error

    async def check_writes(self, *, now: float) -> WriteStatus:
        """The write check: one small real write (:func:`.logic.check_writes`). A fault
        leaves the store not writable, with the error; success makes it writable again.
        Other errors (a bug, a cancellation) propagate."""
        try:
            await self.run(logic.check_writes(now=now))
        except StorageUnavailableError as exc:
            if self._write_status.error is not exc:  # backends record their faults already
                self._fault(exc, Mode.WRITE)
            writable = False
        else:
            writable = True
        self._write_status = replace(self._write_status, writable=writable, checked_at=time.time())
        return self._write_status

    @property
    def schema_version(self) -> int:
        """The newest core migration applied (valid after :meth:`open`)."""
        return self._schema_version

    async def listen(
        self,
        on_notice: Callable[[Notice, str], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled, calling ``on_notice(kind, task_id)`` for every
        ``task_added`` (:meth:`add_tasks`, :meth:`requeue_failed`) and ``cancel_requested``
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

    # --- the extension hook --------------------------------------------------------------

    def install(self, component: Component) -> None:
        """Add a component's tables (its migrations, applied by :meth:`open`) and named
        queries (``<component>.<query>``) to this store; before :meth:`open`."""
        if any(each.name == component.name for each in self._components):
            return
        if self.schema_version:
            raise RuntimeError(f"install {component.name!r} before the store is opened")
        self._components.append(component)

    @property
    def components(self) -> tuple[Component, ...]:
        return tuple(self._components)

    @abc.abstractmethod
    async def run(self, operation: Operation[T]) -> T:
        """Run an operation (:mod:`.ops`): its steps, each the named query of this store's
        dialect, in the transaction its mode asks for; its result. A
        :class:`DuplicateKeyError` (a unique key taken) or any error of the operation
        rolls its transaction back.

        This is how extensions read and write their own tables: they write operations on
        their named queries, and may pass steps to :meth:`add_tasks` and :meth:`finish`
        to write their rows in the same transaction as a task's insert or outcome."""

    # --- tasks ---------------------------------------------------------------------------

    async def add_tasks(
        self,
        tasks: Sequence[NewTask],
        *,
        max_queue_size: int | None = None,
        linked: Sequence[Step] = (),
        announce: Announce | None = None,
        fair_share: float | None = None,
    ) -> None:
        """Insert ``pending`` tasks, all of them or none (dispatched in the order given
        when priority and run time are equal); their records are ``task.record()``.

        * With ``max_queue_size``, the waiting tasks (``pending`` + ``retrying``) plus
          these must not exceed it, else nothing is stored and
          :class:`~vpsweb_tasks.errors.QueueFullError` names the limit, the waiting count
          and how many were asked for. The check and the insert are one statement: exact
          on SQLite, whose writers take turns; on PostgreSQL, submits racing on other
          connections may overshoot the limit by the tasks they add (a lock that would
          make it exact halved PostgreSQL's submit rate).
        * ``linked`` steps (an extension's rows, e.g. a translation job) are written in
          the same transaction, after the tasks.
        * ``fair_share`` (seconds): a task with a ``concurrency_key`` is placed in the
          dispatch order at least this long after its key's previous task (fair queueing
          between keys; see :func:`~vpsweb_tasks.storage.logic.place_keyed`).
        * An id taken already (or given twice) raises :class:`DuplicateKeyError` (a
          ``ValueError``) and stores nothing.
        * ``announce()`` is called once any call made on this store after it would see
          the tasks: at once on a store whose calls run in order (SQLite's database
          thread), else after the commit. The manager wakes its dispatcher there, so an
          idle worker's claim can share the insert's commit.
        * A task's ``depends_on`` must name stored tasks or tasks before it in ``tasks``,
          else :class:`~vpsweb_tasks.errors.DependencyNotFoundError` (``ValueError`` for
          one later in ``tasks``) and nothing is stored. Such a task waits, ``pending``
          with ``run_at`` :data:`~vpsweb_tasks.models.BLOCKED_RUN_AT` (never claimed),
          until every dependency has finished: then its ``run_at`` becomes that moment
          (``dispatch_at`` moving by as much). If one fails for good, is cancelled or is
          gone first, it is ``cancelled`` with
          :class:`~vpsweb_tasks.errors.DependencyFailedError` naming it, and so are its
          own dependents, unless its ``on_dependency_failure`` is ``run``: then it runs
          once the others finish. Dependencies finished before the submit count as they
          finished. This is settled in the transaction of the change that finishes the
          dependency (:meth:`finish`, :meth:`reap`, :meth:`request_cancel`), except
          where a backend runs a finish's statements each on its own (PostgreSQL): a
          settle lost with its process is made up by the next :meth:`reap`.
        """
        if not tasks:
            return
        plain = not linked and len(tasks) == 1 and not tasks[0].depends_on
        plain = plain and (fair_share is None or tasks[0].concurrency_key is None)
        if plain and await self._add_plain(
            tasks[0], max_queue_size=max_queue_size, announce=announce
        ):
            return
        operation = logic.add_tasks(
            tasks, limit=max_queue_size, together=True, linked=linked, fair_share=fair_share
        )
        whole = (
            linked
            or any(task.depends_on for task in tasks)
            or (fair_share is not None and any(task.concurrency_key for task in tasks))
        )
        try:
            await self.run(operation.in_mode(Mode.WRITE) if whole else operation)
        except DuplicateKeyError as exc:
            if len(tasks) == 1 and not linked:
                raise DuplicateKeyError(f"task {tasks[0].id} already exists") from exc
            raise DuplicateKeyError(f"a task or a linked row already exists ({exc})") from exc
        if announce is not None:
            announce()

    async def _add_plain(
        self, task: NewTask, *, max_queue_size: int | None, announce: Announce | None
    ) -> bool:
        """A backend's own path for one plain submit (no linked rows, dependencies or fair
        placement), such as writing it together with concurrent ones: True once stored
        (and announced), False to leave it to :meth:`add_tasks`."""
        return False

    async def add_keyed_tasks(
        self,
        key: str,
        tasks: Sequence[NewTask],
        *,
        max_queue_size: int | None = None,
        linked: Sequence[Step] = (),
        announce: Announce | None = None,
        fair_share: float | None = None,
    ) -> list[TaskRecord] | None:
        """:meth:`add_tasks` of the tasks of one submit under idempotency ``key`` (each
        task's ``idempotency_key`` is ``key``, or for a batch ``KEY#0``, ``KEY#1``, ...; all
        share one ``request_fingerprint``). If the key is held already, by the same
        request: nothing is written and the tasks holding it are returned (the first
        submit's, even if the queue is full now); by another request:
        :class:`~vpsweb_tasks.errors.IdempotencyKeyError`. None: stored. Two processes
        racing on one key store one set of tasks (a unique index); the loser gets the
        winner's."""
        if not tasks:
            return None
        operation = logic.add_keyed_tasks(
            key, tasks, limit=max_queue_size, linked=linked, fair_share=fair_share
        )
        try:
            existing = await self.run(operation)
        except DuplicateKeyError:
            # The key was stored by another process between our look and our insert.
            existing = await self.run(logic.tasks_of_key(key, tasks))
            if existing is None:  # not the key: an id or a linked row
                raise
        if existing is None and announce is not None:
            announce()
        return existing

    async def add_task(self, task: NewTask, *, max_queue_size: int | None = None) -> TaskRecord:
        """:meth:`add_tasks` of one task; its record."""
        await self.add_tasks([task], max_queue_size=max_queue_size)
        return task.record()

    async def get_tasks(self, task_ids: Collection[str]) -> list[TaskRecord]:
        """The tasks that exist among ``task_ids``, in no particular order."""
        return await self.run(logic.get_tasks(task_ids))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The task, or None (:meth:`get_tasks` of one id)."""
        return await self.run(logic.get_task(task_id))

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
        return await self.run(
            logic.list_tasks(
                statuses=statuses, task_type=task_type, limit=limit, offset=offset, order=order
            )
        )

    async def count_tasks(self) -> dict[TaskStatus, int]:
        """Number of tasks per status (every status is a key)."""
        return await self.run(logic.count_tasks())

    async def list_executions(self, task_id: str) -> list[ExecutionRecord]:
        """Every attempt of the task, oldest first: the ended ones' rows, and the running
        one (outcome ``running``, id 0) as its task row has it."""
        return await self.run(logic.list_executions(task_id))

    async def request_cancel(self, task_id: str, *, now: float) -> TaskRecord:
        """Cancel a task. ``pending``/``retrying``: becomes ``cancelled`` at once.
        ``running``: ``cancel_requested`` is set, and the worker holding it cancels the
        attempt and records ``Cancelled``. Raises ``TaskNotFoundError``, or
        ``TaskStateError`` for a terminal task (which is left untouched)."""
        return await self.run(logic.request_cancel(task_id, now=now))

    async def cancel_waiting(self, *, now: float) -> list[str]:
        """Cancel every ``pending`` and ``retrying`` task; return their ids."""
        return await self.run(logic.cancel_waiting(now=now))

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
        return await self.run(
            logic.requeue_failed(now=now, task_ids=task_ids, category=category, task_type=task_type)
        )

    async def set_paused(self, paused: bool, *, reason: str | None = None) -> None:
        """Pause or resume dispatch for every worker on this store."""
        await self.run(logic.set_paused(paused, reason=reason))

    async def get_paused(self) -> tuple[bool, str | None]:
        """Whether dispatch is paused, and why."""
        return await self.run(logic.get_paused())

    # --- attempts and leases -------------------------------------------------------------

    async def claim(
        self,
        *,
        worker_id: str,
        now: float,
        lease_seconds: float,
        limit: int,
        task_types: Collection[str] | None = None,
        queue: str = "default",
        limits: ClaimLimits | None = None,
        horizon: float = 0.0,
    ) -> list[Claim]:
        """Atomically take up to ``limit`` eligible tasks of ``queue`` for ``worker_id``.

        Eligible: status ``pending`` or ``retrying``, ``run_at <= now``, and runnable by
        this worker: owned by it (its closures), or unowned with ``task_type`` in
        ``task_types`` (None: any type). Order: lowest ``dispatch_at`` first, then
        insertion order. ``dispatch_at`` is fixed when the task is stored
        (``NewTask.dispatch_at``, see :func:`~vpsweb_tasks.storage.types.dispatch_key`:
        ``run_at`` less an aging credit per priority level, or ``run_at`` alone for plain
        FIFO) and moves with ``run_at`` (a retry, a deferral, a lost attempt, a requeue,
        a dependent's release). Each claimed task becomes ``running`` with ``attempts + 1``, a
        new fence, ``lease_owner = worker_id``, ``lease_expires_at = now + lease_seconds``,
        ``started_at = now``; :meth:`list_executions` lists its attempt (outcome
        ``running``), whose row is written when it ends.
        No task is ever handed to two workers. Returned in dispatch order.

        ``limits`` (rate limits, a running bound per concurrency key): the claim is one
        transaction that also takes each claimed task's rate-limit slots and passes over
        tasks of a key at its bound; a task whose rate limit has no slot now moves to its
        slot (``run_at``) without spending an attempt (see
        :func:`~vpsweb_tasks.storage.logic.claim_limited`). ``horizon``: how far past
        ``now`` a dispatch place may be and still be claimed (fair queueing).
        """
        if limit <= 0:
            return []
        if limits is not None:
            return await self.run(
                logic.claim_limited(
                    worker_id=worker_id,
                    now=now,
                    lease_seconds=lease_seconds,
                    limit=limit,
                    task_types=task_types,
                    queue=queue,
                    limits=limits,
                    horizon=horizon,
                )
            )
        return await self.run(
            logic.claim(
                worker_id=worker_id,
                now=now,
                lease_seconds=lease_seconds,
                limit=limit,
                task_types=task_types,
                queue=queue,
            )
        )

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
        return await self.run(
            logic.heartbeat(worker=worker, now=now, lease_seconds=lease_seconds, running=running)
        )

    async def finish(
        self, claimed: Claim, outcome: Outcome, *, now: float, linked: Sequence[Step] = ()
    ) -> TaskRecord:
        """Record the outcome of the attempt ``claimed`` holds and return the task's new
        record.

        In one transaction: the task row (status per outcome, lease cleared, result or
        error, ``finished_at`` for terminal outcomes), the attempt's execution row with
        its metrics (queue wait, duration, outcome: a ``task_metrics`` row) unless the
        store's ``task_metrics`` is off, and the ``linked`` steps (an
        extension's rows). ``Completed`` sets progress to 1. A cancel request that raced
        with the end of the attempt turns a failure, release or deferral into
        ``Cancelled``. Raises :class:`~vpsweb_tasks.errors.LeaseLostError` (changing
        nothing) when the token is no longer current.
        """
        operation = logic.finish(
            claimed, outcome, now=now, linked=linked, metrics=self.task_metrics
        )
        return await self.run(operation.in_mode(Mode.WRITE) if linked else operation)

    async def complete_many(
        self, items: Sequence[tuple[Claim, Completed, float]]
    ) -> list[TaskRecord | LeaseLostError]:
        """Record the completions of several attempts (claim, outcome, finish time) in one
        write: each answered as :meth:`finish` would answer it alone (no ``linked`` steps),
        a lease no longer held with a :class:`~vpsweb_tasks.errors.LeaseLostError` in its
        place, changing nothing of it. A worker's group of tasks that ended together."""
        return await self.run(logic.complete_many(items, metrics=self.task_metrics))

    async def write_completions(
        self, items: Sequence[tuple[Claim, Completed, float]]
    ) -> list[logic.Written | LeaseLostError]:
        """:meth:`complete_many` without building the finished records: each completion
        written answered with what its record needs beyond the claim (``logic.Written``),
        for a caller that builds a record only when something reads it."""
        return await self.run(logic.write_completions(items, metrics=self.task_metrics))

    async def reap(
        self,
        *,
        now: float,
        decide: RetryDecider,
        max_lost_attempts: int,
        expired: Collection[str] = (),
    ) -> ReapResult:
        """Recover from dead workers, in one transaction. ``expired``: workers known to be
        dead (their process is gone), reaped now rather than when their rows expire.

        * A ``running`` task whose lease expired, or whose worker expired, loses its
          attempt: the execution row is closed as ``lost`` (category ``resource``), the
          attempt is given back (``attempts`` is unchanged by a loss) and ``lost_attempts``
          grows by one. The task is then ``cancelled`` when a cancel was requested;
          ``failed`` with ``HandlerUnavailableError`` when its callable lived only in the
          dead worker (owner expired); ``failed`` with ``WorkerLostError`` naming the count
          when ``lost_attempts`` reached its bound (the task's own ``max_lost_attempts``,
          else ``max_lost_attempts``); otherwise re-queued as ``retrying`` at
          ``decide(task)`` (the task as it is after the loss), or ``failed`` when that is
          None.
        * A waiting task whose owner (the process holding its closure) is dead or unknown
          becomes ``failed`` with ``HandlerUnavailableError``: never silently lost.
        * Expired workers' rows are deleted.
        """
        return await self.run(
            logic.reap(now=now, decide=decide, max_lost_attempts=max_lost_attempts, expired=expired)
        )

    async def list_workers(self) -> list[WorkerInfo]:
        """Registered workers (live or not yet reaped)."""
        return await self.run(logic.list_workers())

    async def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's row on clean shutdown (after its tasks were released)."""
        await self.run(logic.remove_worker(worker_id))

    # --- progress ------------------------------------------------------------------------

    async def save_progress(self, snapshots: Sequence[ProgressSnapshot]) -> None:
        """Write the latest progress of running tasks (ignored for tasks no longer
        running), and append each snapshot to the task's progress history, keeping at
        most ``history_limit`` rows per task."""
        if snapshots:
            latest, earlier = logic.progress_rows(snapshots)
            await self.run(
                logic.save_progress(
                    dumps(latest), dumps([*earlier, *latest]), history_limit=self.history_limit
                )
            )

    async def progress_history(self, task_id: str, *, limit: int = 1000) -> list[ProgressSnapshot]:
        """Stored progress snapshots of a task, oldest first."""
        return await self.run(logic.progress_history(task_id, limit=limit))

    # --- shared circuit breakers ---------------------------------------------------------

    async def save_breaker_state(self, state: SharedBreakerState) -> None:
        """Record a breaker's new state for every worker (insert or replace; a state older
        than the one stored is ignored, so the latest change wins). Backends with
        notifications also send ``breaker_changed``."""
        await self.run(logic.save_breaker_state(state))

    async def load_breaker_states(self) -> list[SharedBreakerState]:
        """Every recorded breaker state."""
        return await self.run(logic.load_breaker_states())

    # --- housekeeping capabilities (backend) ---------------------------------------------

    @abc.abstractmethod
    async def maintenance(self, *, vacuum: bool = False) -> dict[str, Any]:
        """Keep the database healthy (checkpoint, statistics, optionally reclaim space);
        return what was done, an integrity verdict and the sizes before and after."""

    @abc.abstractmethod
    async def backup(self, path: str) -> dict[str, Any]:
        """Write a consistent copy of the whole database to ``path`` while it is in use;
        return the path, its size and how many tasks it holds."""
