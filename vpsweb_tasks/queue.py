"""Dispatch: claiming tasks, running them, and keeping their leases.

One :class:`TaskQueue` per manager runs these loops in the manager's task group (it
knows the manager only through what it is given: storage, the registry of task types,
the live contexts, the event hub and a way to start tasks):

* **dispatch**: claim up to the free capacity (``max_concurrent_jobs`` minus running) in
  one SQL statement, highest priority first, and hand each claimed task to a runner. It
  sleeps until woken (a submit or a finished task in this process) or
  ``queue_check_interval`` passes (work submitted by other processes).
* **runners**: a pool of coroutines, one per slot ever in use (at most
  ``max_concurrent_jobs``), each running claimed tasks one after another; kept rather
  than spawned per task, which costs more than the hand-over (benchmarks/README.md).
* **heartbeat**: every ``lease_seconds / 3``, renew the worker's row and the leases of all
  its running tasks (one statement, whatever their number) and stop tasks whose lease was
  lost; in between, every heartbeat interval, look for cancel requests made by other
  processes (one read). A lease is a row write: renewing thousands every second would
  write them as often as the cancel checks read.
* **notices**: other processes' submits wake the dispatcher and their cancel requests stop
  the task at once (``store.listen``). Every worker hears every submit, and one claim
  takes the batch: so each notice is one worker's to claim at once (the first of the
  live workers ranked by a hash of the notice's task and the worker), the next in rank
  claims ``NOTICE_STAGGER`` later (if that one is full, busy or gone), and so on; any
  claim of a worker's covers the notices it heard before, and a notice for a task its
  claim already took wakes nothing. A finish claims again only if work may be waiting
  for its slot (the last claim filled the room it had). Where the store can only say that
  something changed (SQLite), a worker running tasks then asks it which of them have a
  cancel requested, at most once per ``storage.sqlite_watch_interval``: a cancel is
  heard as fast as a submit, not at the next heartbeat.
* **reap**: recover tasks of dead workers (see :meth:`TaskStore.reap`).
* **flush**: write coalesced progress to storage.

A task runs in its runner's cancel scope (one for many tasks, until a stop cancels it),
with a timeout (the task's own, else ``task_timeouts[type]``, else ``job_timeout``) kept
by one sleeper for all running tasks. Its outcome, the retry decision, the execution row
and the metrics row are written in one transaction, shielded from cancellation, and only
then published as events. A completion goes with those of the tasks that ended with it,
in one write (**group finish**): a claimed group of short tasks runs back to back in one
runner, which never waits for a write.

Where its function runs (:class:`~vpsweb_tasks.registry.Handler`): an ``async def`` on
this event loop; a plain ``def`` in a worker thread (at most ``thread_pool_size`` at
once), which cannot be interrupted: a stop (cancel, timeout, shutdown) is seen by its
``context.check_cancelled()``, and the attempt ends when the function returns or checks,
its result dropped; a ``process=True`` type in a child process of the
:class:`~vpsweb_tasks.processes.ProcessPool`, killed on a stop.
"""

from __future__ import annotations

import dataclasses
import heapq
import inspect
import itertools
import logging
import math
import os
import socket
import traceback
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import psutil

from . import tracing
from .breakers import BreakerRegistry
from .classify import find_error
from .config import RateLimitSettings, Settings
from .context import Contexts, TaskContext, _current, _Flag
from .errors import (
    CircuitOpenError,
    HandlerUnavailableError,
    LeaseLostError,
    ResultNotSerializableError,
    TaskTimeoutError,
    WorkerLostError,
)
from .events import (
    EventHub,
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskDeferred,
    TaskFailed,
    TaskRequeued,
    TaskRetryScheduled,
    TaskStarted,
)
from .limits import claim_limits
from .log import TaskLogger, task_logger
from .models import ResourceSample, TaskRecord, TaskStatus, to_datetime
from .overload import OverloadControl
from .processes import ProcessPool
from .registry import Handler, Registry
from .retry import RetryPolicy
from .storage import logic
from .storage.base import TaskStore
from .storage.rows import dumps
from .storage.types import (
    Cancelled,
    Claim,
    ClaimLimits,
    Completed,
    Deferred,
    Failed,
    LeaseToken,
    Notice,
    Outcome,
    ProgressRow,
    Released,
    WorkerInfo,
)

__all__ = ["RunningTask", "TaskQueue"]

logger = logging.getLogger("vpsweb_tasks.queue")


#: Run times of waiting tasks a dispatcher keeps in memory to wake at; the earliest beyond
#: these is read from storage when the dispatcher idles.
MAX_DUE_TIMES = 1024

#: How much later than the worker ranked before it a worker claims for a ``task_added``
#: notice (unless a claim of its own covered it meanwhile): short, since it delays a task
#: only when the workers ranked first have no free slot, serve another queue, or are gone.
NOTICE_STAGGER = 0.02
#: How often at most a worker reads the live workers again: only when a notice's claim
#: says they may have changed (see ``TaskQueue._peers_may_have_changed``).
PEERS_REFRESH = 1.0


@dataclass(eq=False, slots=True)
class RunningTask:
    """A task this process is running (one for each: slotted, tens of thousands run at
    once)."""

    claim: Claim
    context: TaskContext
    scope: anyio.CancelScope | None = None
    """The scope its function runs in, while it runs (its runner's): stop() cancels it."""
    stop_reason: str | None = None
    """Why we cancelled it: ``cancel`` (requested), ``shutdown`` or ``lost`` (lease)."""
    record: TaskRecord | None = None
    """The task as its outcome left it, once written."""
    done: _Flag = field(default_factory=_Flag)
    """Set once the attempt is over (its outcome written, or not: a lost lease). Its
    event is made only when someone waits (a local cancel): not one per running task."""
    writing: bool = False
    """Its outcome is on its way to storage: a heartbeat that finds the lease gone meanwhile
    saw that write, not a lost lease."""

    @property
    def token(self) -> LeaseToken:
        return self.claim.token

    @property
    def log(self) -> TaskLogger:
        task = self.claim.task
        return task_logger(task.id, task_type=task.task_type, attempt=task.attempts)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            if self.scope is not None:
                self.scope.cancel()


def _process_started_at() -> float | None:
    try:
        return psutil.Process().create_time()
    except psutil.Error:
        return None


def _process_alive(pid: int, started_at: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        if started_at is None:
            return process.is_running()
        return abs(process.create_time() - started_at) < 1.0
    except psutil.Error:
        return False


class TaskQueue:
    """The dispatch side of a :class:`~vpsweb_tasks.manager.TaskManager`."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: TaskStore,
        worker_id: str,
        clock: Callable[[], float],
        retry_policy: RetryPolicy,
        events: EventHub,
        breakers: BreakerRegistry,
        registry: Registry,
        contexts: Contexts,
        spawn: Callable[..., None],
        rate_limits: Mapping[str, RateLimitSettings] | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.background_tasks
        #: task_monitoring.track_task_lifecycle: INFO lines of each task's lifecycle.
        self.log_lifecycle = settings.task_monitoring.track_task_lifecycle
        self.store = store
        self.worker_id = worker_id
        self.clock = clock
        self.retry_policy = retry_policy
        self.events = events
        self.breakers = breakers
        self.registry = registry
        self.contexts = contexts
        self._spawn = spawn
        self.running: dict[str, RunningTask] = {}
        self._wake = anyio.Event()
        # Notices: the live workers (ids) that rank them, when they were read, whether a
        # notice ranked us first since the last claim, and when (anyio time) a notice
        # ranked us later asks for a claim; the dispatcher's sleep, to shorten it for one.
        self._peers: tuple[str, ...] = (worker_id,)
        self._peers_read_at = float("-inf")
        self._noticed = False
        self._notice_due: float | None = None
        self._notice_turn = False  # this round claims because a notice's later turn came
        self._sleep_scope: anyio.CancelScope | None = None
        # Whether work may be waiting for a free slot here: the last claim filled the room
        # it had, or the dispatcher woke with no room. Only then does a finish claim again.
        self._room_wanted = False
        self._idle = anyio.Event()
        self._idle.set()
        self._busy = anyio.Event()  # set while tasks run: wakes an idle heartbeat
        # A "changed" notice (a backend that cannot say what changed) while tasks run:
        # look for cancel requests of ours, at most once per check interval.
        self._cancels_changed = anyio.Event()
        self._cancel_check_interval = max(settings.storage.sqlite_watch_interval, 0.01)
        # Cancel requests heard while a claim is in flight, for tasks not running here
        # (yet): the claim may be taking them.
        self._claiming = False
        self._early_cancels: set[str] = set()
        self._added_while_claiming: list[str] = []  # tasks of task_added notices heard then
        self._stopping = False
        self._grace: anyio.CancelScope | None = None
        self._hurried = False
        # Held around each heartbeat and the worker row's removal: a heartbeat still on
        # its way when the row is removed would write the row back.
        self._worker_row = anyio.Lock()
        self._worker_removed = False
        self._shared_pause: tuple[bool, str | None] = (False, None)
        self._pause_changes = 0  # bumped by local pause/resume; guards stale refreshes
        self._pause_read_at = 0.0  # anyio.current_time() of the last read of the shared pause
        self._breakers_seen: dict[str, float] = {}  # updated_at of each adopted breaker state
        self._overload = OverloadControl(self.config)
        self._overload_reason: str | None = None
        # Progress: the latest report of each running task that reported, kept until it
        # finishes (a report replaces the one before it: nothing piles up between
        # flushes for the garbage collector to count); the tasks whose latest report is
        # not written yet; the earlier steps kept for the history (see buffer_progress),
        # only of tasks whose message changed.
        self._progress: dict[str, ProgressRow] = {}
        self._unwritten: set[str] = set()
        self._steps: dict[str, list[ProgressRow]] = {}
        self._renewed_at = float("-inf")  # anyio.current_time() of the last lease renewal
        self._finishing: _FlushBatch | None = None  # finishing tasks' progress, one write
        # Completions waiting for their group's write (_write_groups).
        self._group: list[_Queued] = []
        self._group_writes = 0  # completions queued for or in their group write
        self._group_queued = anyio.Event()
        # Run times to come of waiting tasks we know of (a heap): our own submits and
        # retries, and the earliest in storage, read when the dispatcher is idle.
        self._due: list[float] = []
        self._round = anyio.Event()
        self._dispatcher_stopped = anyio.Event()
        self._dispatcher_stopped.set()
        self._rounds_started = 0
        self._rounds_done = 0
        # Claimed tasks go to a pool of runner coroutines, one per task being run, kept
        # for the manager's life: cheaper than spawning a task per claim.
        self._claimed = _Handoff()
        self._runners = 0
        self._timeouts = _Timeouts()
        self._threads: anyio.CapacityLimiter | None = None  # made on first use, in the loop
        self.processes = ProcessPool(
            size=self.config.process_pool_size or self.config.max_concurrent_jobs,
            default_memory_limit_mb=self.config.task_memory_limit_mb,
        )
        self._next_queue = 0  # the queue a round of claims starts at (several queues)
        # Rate limits, a running bound per concurrency key, fair queueing: None (nothing
        # configured) keeps the plain one-statement claim. Read at the first claim (after
        # extensions added their limits).
        self._rate_limits = rate_limits
        self._claim_limits: tuple[ClaimLimits | None, float] | None = None
        self.worker = WorkerInfo(
            worker_id=worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            process_started_at=_process_started_at(),
            # 0: an API-only process runs nothing (and takes no turn for notices).
            concurrency=self.config.max_concurrent_jobs if self.config.enabled else 0,
        )

    # --- state ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._shared_pause[0] or self._overload_reason is not None

    @property
    def pause_reason(self) -> str | None:
        if self._shared_pause[0]:
            return self._shared_pause[1] or "paused"
        return self._overload_reason

    def notify(self, run_at: float | None = None) -> None:
        """Wake the dispatcher: work was submitted or capacity freed, or (with ``run_at``)
        a task becomes eligible at that time."""
        if run_at is not None and run_at > self._now():
            if not self._due or run_at < self._due[0]:
                self._wake.set()  # let the dispatcher shorten its sleep
                heapq.heappush(self._due, run_at)
            elif len(self._due) < MAX_DUE_TIMES:  # beyond: storage's next_run_at finds them
                heapq.heappush(self._due, run_at)
            return
        self._wake.set()

    def _sleep_time(self) -> float:
        interval = self.config.queue_check_interval
        if self._notice_due is not None:
            interval = min(interval, max(0.0, self._notice_due - anyio.current_time()))
        if not self._due:
            return interval
        return max(0.0, min(interval, self._due[0] - self._now()))

    def _pop_due(self) -> bool:
        """Forget the run times that have come; whether any had."""
        now, came = self._now(), False
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
            came = True
        return came

    def set_shared_pause(self, paused: bool, reason: str | None) -> None:
        self._pause_changes += 1
        self._shared_pause = (paused, reason)
        self.notify()

    @property
    def overloaded(self) -> bool:
        return self._overload_reason is not None

    @property
    def overload_reason(self) -> str | None:
        return self._overload_reason

    def observe_load(self, sample: ResourceSample, process_cpu: float | None) -> None:
        """A resource sample of this process (the monitor takes them): pause dispatch while
        it is overloaded, resume when the load falls (:mod:`vpsweb_tasks.overload`)."""
        if not self._overload.enabled:
            return
        reason = self._overload.pause_reason(sample, process_cpu, overloaded=self.overloaded)
        if reason != self._overload_reason:
            if reason is not None:
                logger.warning("pausing dispatch: %s", reason)
            elif self.overloaded:
                logger.info("load fell: resuming dispatch")
            self.set_overloaded(reason)

    def set_overloaded(self, reason: str | None) -> None:
        """Pause (with a reason) or resume dispatch in this process because of load."""
        self._overload_reason = reason
        self.notify()

    @property
    def _heartbeat_interval(self) -> float:
        return min(self.config.queue_check_interval, self.config.lease_seconds / 3)

    def _now(self) -> float:
        return self.clock()

    def finished(self, record: TaskRecord) -> None:
        """A task reached a new state in this process: its context follows, and a
        finished closure is let go."""
        self.contexts.apply(record)
        if record.status.is_terminal:
            self.registry.drop_closure(record.id)

    # --- loops -----------------------------------------------------------------------------

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._shared_pause = await self.store.get_paused()
        self._pause_read_at = anyio.current_time()
        await self.store.heartbeat(
            worker=self.worker, now=self._now(), lease_seconds=self.config.lease_seconds
        )
        await self.reap()
        await self.sync_breakers()
        if self.config.enabled:
            await tg.start(self._listen)
            self._dispatcher_stopped = anyio.Event()
            tg.start_soon(self._run_dispatcher)
            tg.start_soon(self._loop, "heartbeat", self._heartbeat_loop, self._keeps_leases)
            tg.start_soon(self._loop, "cancel check", self._cancel_check_loop)
            tg.start_soon(self._loop, "reap", self._reap_loop)
            tg.start_soon(self._loop, "progress flush", self._flush_loop)
            tg.start_soon(self._loop, "group finish", self._write_groups, self._keeps_leases)
            tg.start_soon(self._loop, "timeouts", self._timeouts.watch, self._keeps_leases)

    async def _listen(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Relay other processes' submits and cancel requests (LISTEN/NOTIFY on PostgreSQL;
        on SQLite, a watch of the file's data version that wakes the dispatcher and, while
        tasks run here, has us look for cancel requests). A failure before the first
        notice fails the start; a later one is logged and the store is asked again."""
        status = _StartedOnce(task_status)
        while not self._stopping:
            try:
                await self.store.listen(self._on_notice, task_status=status)
            except Exception:
                if not status.done:
                    raise
                logger.exception("listening for notices failed; polling until it is back")
                await anyio.sleep(self.config.queue_check_interval)

    def _on_notice(self, kind: Notice, task_id: str) -> None:
        if kind == "task_added":
            self._task_added(task_id)
        elif kind == "changed":
            self.notify()
            if self.running or self._claiming:
                self._cancels_changed.set()
        elif kind == "breaker_changed":
            self._spawn(self._loop_once, "breaker sync", self.sync_breakers)
        elif kind == "cancel_requested":
            self.cancel_running(task_id)

    def _task_added(self, task_id: str) -> None:
        """Another process stored a task (and its batch): claim now if we rank first for
        it, else later by our rank, unless a claim of ours takes it first."""
        if self._claiming:  # the claim on its way may be taking it: look when it is back
            self._added_while_claiming.append(task_id)
            return
        if self._claimed_here(task_id):
            return
        rank = self._rank(task_id)
        if rank == 0:
            self._noticed = True
            self._wake.set()
            return
        due = anyio.current_time() + rank * NOTICE_STAGGER
        if self._notice_due is None or due < self._notice_due:
            self._notice_due = due
            if self._sleep_scope is not None:
                self._sleep_scope.deadline = min(self._sleep_scope.deadline, due)

    def _rank(self, task_id: str) -> int:
        """How many live workers come before us for a notice of this task: every worker
        ranks them alike (a hash of the task and each worker), so one claims at once."""
        mine = _notice_score(task_id, self.worker_id)
        return sum(
            1
            for peer in self._peers
            if peer != self.worker_id and _notice_score(task_id, peer) > mine
        )

    async def _refresh_peers(self) -> None:
        self._peers_read_at = anyio.current_time()
        now = self._now()
        live = [
            worker.worker_id
            for worker in await self.store.list_workers()
            if worker.concurrency > 0 and worker.expires_at > now
        ]
        self._peers = tuple({self.worker_id, *live})

    def _claimed_here(self, task_id: str) -> bool:
        """Whether a task named by a ``task_added`` notice is one a claim of ours took, so
        the notice asks for no claim: a notice names one task of its batch, all of which a
        claim that saw one of them saw too. Only with one queue served: with several, a
        claim of another queue in the same round may have run before the batch was in."""
        return len(self.config.worker_queues) == 1 and task_id in self.running

    def logs_lifecycle(self) -> bool:
        """Whether the INFO lines of tasks' lifecycles (started, completed, cancelled) are
        logged: ``task_monitoring.track_task_lifecycle`` and the logger's level. Failures,
        retries and lost attempts are warnings and errors, logged either way."""
        return self.log_lifecycle and logger.isEnabledFor(logging.INFO)

    def cancel_running(self, task_id: str) -> RunningTask | None:
        """A cancel was requested of a task (by any process): stop it if it runs here (or
        once the claim in flight hands it over). The running task, if it is ours."""
        running = self.running.get(task_id)
        if running is None:
            if self._claiming:
                self._early_cancels.add(task_id)
            return None
        if running.stop_reason is None:
            if self.logs_lifecycle():
                task_logger(task_id).info("cancel requested: stopping it")
            running.context._request_cancel()
            running.stop("cancel")
        return running

    async def _cancel_check_loop(self) -> None:
        await self._cancels_changed.wait()
        self._cancels_changed = anyio.Event()
        await self.look_for_cancel_requests()
        if self._claiming:  # the claim in flight may bring tasks already asked to stop
            self._cancels_changed.set()
        # However often the database changes, one look per interval.
        await anyio.sleep(self._cancel_check_interval)

    async def look_for_cancel_requests(self) -> None:
        """Stop the running tasks that have a cancel requested: one read of the worker's
        leases, whatever their number."""
        running = [each.token for each in self.running.values() if each.stop_reason is None]
        if running:
            requested = await self.store.run(
                logic.cancel_requests(worker_id=self.worker_id, running=running)
            )
            for task_id in requested:
                self.cancel_running(task_id)

    async def _loop_once(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        try:
            await body()
        except Exception:
            logger.exception("%s failed", name)

    async def _run_dispatcher(self) -> None:
        try:
            await self._loop("dispatch", self._dispatch_loop)
        finally:
            self._dispatcher_stopped.set()

    async def _loop(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        goes_on: Callable[[], bool] | None = None,
    ) -> None:
        """Run a loop body until the queue stops (or while ``goes_on()``); an error is
        logged and the loop goes on."""
        while not self._stopping if goes_on is None else goes_on():
            try:
                await body()
            except Exception:
                logger.exception("%s loop failed; retrying", name)
                await anyio.sleep(self.config.queue_check_interval)

    async def next_round(self) -> None:
        """Wait until the dispatcher has looked at the queue at least once after this call
        (for tests and tools that must know a claim was attempted, without sleeping)."""
        target = self._rounds_started + 1
        self.notify()
        while self._rounds_done < target:
            await self._round.wait()

    async def _dispatch_loop(self) -> None:
        await self._look_ahead()  # tasks due later, stored before this process started
        while not self._stopping:
            self._rounds_started += 1
            self._wake = anyio.Event()
            # This round's claim covers every notice heard so far.
            noticed, self._noticed, self._notice_due = self._noticed, False, None
            turn, self._notice_turn = self._notice_turn, False
            capacity = self.config.max_concurrent_jobs - self._executing()
            claimed = 0
            self._room_wanted = capacity <= 0
            if capacity > 0 and not self.paused:
                claimed = await self._claim_and_start(capacity)
                if (noticed and not claimed) or (turn and claimed):
                    await self._peers_may_have_changed()
            self._rounds_done = self._rounds_started
            self._round.set()
            self._round = anyio.Event()
            if claimed and claimed == capacity:
                continue  # more may be waiting; capacity is rechecked at the top
            if self._pop_due():
                if not self._due:  # the next time to come may be one we have not heard of
                    await self._look_ahead()
                continue
            with anyio.move_on_after(self._sleep_time()) as timer:
                self._sleep_scope = timer
                try:
                    await self._wake.wait()
                finally:
                    self._sleep_scope = None
            due = self._notice_due
            self._notice_turn = due is not None and due <= anyio.current_time()
            idle = (
                timer.cancelled_caught
                and not self._notice_turn
                and not (self._due and self._due[0] <= self._now())
            )
            stale = anyio.current_time() - self._pause_read_at >= self.config.queue_check_interval
            if idle or stale:
                # Another process may have paused or resumed the queue. `stale`: wake-ups
                # (our own finishes, other processes' notices) can keep the sleep from ever
                # running out, yet a pause must be seen within queue_check_interval.
                await self._refresh_pause()
                await self.sync_breakers()
                await self._look_ahead()

    async def _peers_may_have_changed(self) -> None:
        """A notice ranked us first and our claim found nothing (another worker took the
        task, perhaps one we do not know of yet), or a notice's later turn found work
        (those ranked before us did not take it: full, or gone). Read the live workers
        again, at most every PEERS_REFRESH."""
        if anyio.current_time() - self._peers_read_at >= PEERS_REFRESH:
            await self._refresh_peers()

    async def _look_ahead(self) -> None:
        """Wake on time for the earliest task to run later that storage holds: one another
        process submitted, or one beyond what the heap of run times keeps."""
        next_run_at = await self.store.run(logic.next_run_at(now=self._now()))
        if next_run_at is not None and (not self._due or next_run_at < self._due[0]):
            heapq.heappush(self._due, next_run_at)

    async def sync_breakers(self) -> None:
        """Adopt breaker states other workers recorded since we last looked."""
        for shared in await self.store.load_breaker_states():
            if shared.worker_id == self.worker_id:
                continue
            if shared.updated_at <= self._breakers_seen.get(shared.name, float("-inf")):
                continue
            self._breakers_seen[shared.name] = shared.updated_at
            breaker = self.breakers.get(shared.name)
            if breaker.adopt(shared.state, opened_at=shared.opened_at):
                logger.info(
                    "circuit breaker %r is %s: adopted from worker %s",
                    shared.name,
                    shared.state,
                    shared.worker_id,
                )

    async def _refresh_pause(self) -> None:
        self._pause_read_at = anyio.current_time()
        changes = self._pause_changes
        shared = await self.store.get_paused()
        if changes == self._pause_changes:  # a local pause/resume during the read wins
            self._shared_pause = shared

    async def _claim_and_start(self, limit: int) -> int:
        """Claim up to ``limit`` tasks from the queues this worker serves, in turn (each
        round starts at the next one), each within its own limit
        (``queues.NAME.max_concurrent``)."""
        queues = self.config.worker_queues
        if len(queues) == 1 and self.config.queues[queues[0]].max_concurrent is None:
            return await self._claim_queue(queues[0], limit)
        first = self._next_queue % len(queues)
        self._next_queue += 1
        claimed = 0
        for queue in [*queues[first:], *queues[:first]]:
            room = limit - claimed
            if room <= 0:
                break
            if self.config.queues[queue].max_concurrent is not None:
                busy = sum(1 for each in self.running.values() if each.claim.task.queue == queue)
                room = min(room, self.config.queue_limit(queue) - busy)
            if room > 0:
                claimed += await self._claim_queue(queue, room)
        return claimed

    async def _claim_queue(self, queue: str, limit: int) -> int:
        if self._claim_limits is None:
            self._claim_limits = claim_limits(self.settings, self._rate_limits)
        limits, horizon = self._claim_limits
        self._claiming = True
        try:
            with anyio.CancelScope(shield=True):  # a claim must not be lost half-way
                claims = await self.store.claim(
                    worker_id=self.worker_id,
                    now=self._now(),
                    lease_seconds=self.config.lease_seconds,
                    limit=limit,
                    task_types=self.registry.names,
                    queue=queue,
                    limits=limits,
                    horizon=horizon,
                )
        finally:
            self._claiming = False
        early, self._early_cancels = self._early_cancels, set()
        for claim in claims:
            context = self.contexts.of(claim.task)
            context.rate_keys = claim.task.rate_keys
            running = RunningTask(claim, context)
            self.running[claim.task.id] = running
            if self._idle.is_set():
                self._idle = anyio.Event()
                self._busy.set()
            self._claimed.put((claim, running))
            if claim.task.id in early:  # requested while the claim was on its way back
                self.cancel_running(claim.task.id)
        while self._runners < self._executing():  # a free runner for every claimed task
            self._runners += 1
            self._spawn(self._runner)
        if len(claims) >= limit or limits is not None:
            self._room_wanted = True  # more may wait; with limits, a finish may free a key
        heard, self._added_while_claiming = self._added_while_claiming, []
        for task_id in heard:  # notices of work this claim may not have seen
            self._task_added(task_id)
        return len(claims)

    def _executing(self) -> int:
        """Tasks claimed here whose function has not returned: those that hold a slot. A
        completion on its way to its group write frees its slot at once, so the next
        claim goes to storage with that write (one transaction, one answer) instead of
        after it."""
        return len(self.running) - self._group_writes

    def _slot_freed(self) -> None:
        """A task finished here: claim again only if work may be waiting for the slot.
        Otherwise the last claim took all there was, and new work comes with a notice
        (or a run time): with several workers, a claim on every finish mostly comes back
        empty."""
        if self._room_wanted:
            self.notify()

    async def _runner(self) -> None:
        """Run claimed tasks one at a time, until stop() closes the hand-off."""
        # One scope for many tasks (see _call), shielded while an outcome is written: a
        # cancelled task group never interrupts a finish. A new one only after a stop or
        # a timeout cancelled it: a scope entered per task cost more than the rest of
        # running a no-op task.
        while True:
            with anyio.CancelScope() as scope:
                while not scope.cancel_called:
                    claimed = await self._claimed.get()
                    if claimed is None:
                        return
                    await self._execute(*claimed, scope)

    async def _heartbeat_loop(self) -> None:
        if not self.running:
            # Idle, the worker row needs renewing only every lease / 3; once tasks start,
            # their cancel requests must be looked for every heartbeat interval.
            with anyio.move_on_after(self.config.lease_seconds / 3):
                await self._busy.wait()
        if self.running:
            await anyio.sleep(self._heartbeat_interval)
        if self.running and not self._renewal_due():
            await self.look_for_cancel_requests()
        else:
            await self.heartbeat()

    def _keeps_leases(self) -> bool:
        """Heartbeats go on through a shutdown's grace period, until the worker's row is
        removed: tasks draining longer than a lease must not be reaped as lost."""
        return not self._worker_removed

    def _renewal_due(self) -> bool:
        """Leases are renewed every lease_seconds / 3 (to the nearest heartbeat), not every
        heartbeat: each renewal rewrites the row of every running task."""
        since = anyio.current_time() - self._renewed_at
        return since >= self.config.lease_seconds / 3 - self._heartbeat_interval / 2

    async def heartbeat(self) -> None:
        """Renew the worker's row and the leases of every task it runs, all in one
        operation whatever their number; stop the attempts whose lease was lost and those
        with a cancel requested."""
        self._renewed_at = anyio.current_time()
        sent = {running.token.task_id: running for running in self.running.values()}
        async with self._worker_row:
            if self._worker_removed:
                return
            result = await self.store.heartbeat(
                worker=self.worker,
                now=self._now(),
                lease_seconds=self.config.lease_seconds,
                running=[running.token for running in sent.values()],
            )
        # The answer is about the attempts sent: while it was on its way, one of them may
        # have ended and the same task been claimed again (a retry due at once). That newer
        # attempt holds its lease: it must not be stopped for the old one's.
        for task_id in result.lost:
            running = self.running.get(task_id)
            if running is not None and running is sent.get(task_id) and not running.writing:
                task_logger(task_id).warning("lease lost; stopping this attempt without a write")
                running.stop("lost")
        for task_id in result.cancel_requested:
            if self.running.get(task_id) is sent.get(task_id):
                self.cancel_running(task_id)

    async def _reap_loop(self) -> None:
        await anyio.sleep(min(self.config.lease_seconds / 2, 10.0))
        await self.reap()

    async def reap(self) -> None:
        """Recover tasks of dead workers now."""
        dead = [
            worker.worker_id
            for worker in await self.store.list_workers()
            if worker.worker_id != self.worker_id
            and worker.hostname == self.worker.hostname
            and not _process_alive(worker.pid, worker.process_started_at)
        ]
        if dead:
            logger.warning("workers %s on this host are gone; recovering their tasks", dead)
        now = self._now()

        def decide(task: TaskRecord) -> float:
            return now + self.retry_policy.lost_attempt_delay(task.lost_attempts)

        result = await self.store.reap(
            now=now,
            decide=decide,
            max_lost_attempts=self.config.max_lost_attempts,
            expired=dead,
        )
        for task in result.requeued:
            task_logger(task.id).warning(
                "attempt lost with its worker (%d lost so far); running again at %s",
                task.lost_attempts,
                task.run_at,
            )
        for task in result.failed:
            task_logger(task.id).error("failed: %s", task.error_message)
            self.finished(task)
            await self.events.publish(
                TaskDeadLettered(
                    task=task.id,
                    task_type=task.task_type,
                    category=task.error_category or WorkerLostError.category,
                    error_message=task.error_message or "",
                )
            )
        for task in result.requeued:
            self.notify(run_at=task.run_at.timestamp())
        if result.requeued or result.released:
            self.notify()
        if result.failed:
            await self.announce_cancelled_dependents([task.id for task in result.failed], now=now)

    async def _flush_loop(self) -> None:
        await anyio.sleep(self.config.progress_flush_interval)
        await self.flush_progress()

    # --- progress ------------------------------------------------------------------------

    def buffer_progress(self, row: ProgressRow) -> None:
        """Keep a report for the next flush: the latest one per task, plus the last one
        before each change of message (so the stored history shows every step). A
        report of the same step replaces the one before it."""
        task_id = row[0]
        previous = self._progress.get(task_id)
        if task_id in self._unwritten:
            if previous is not None and previous[2] != row[2]:
                self._keep_step(previous)
        else:
            self._unwritten.add(task_id)
        self._progress[task_id] = row

    def _keep_step(self, row: ProgressRow) -> None:
        """The last report of a step that is over, for the history: at most
        ``progress_history_limit`` reports of a task (with its latest) are kept."""
        steps = self._steps.setdefault(row[0], [])
        steps.append(row)
        if len(steps) >= self.settings.task_monitoring.progress_history_limit:
            del steps[0]

    def _take_progress(self, task_id: str) -> tuple[ProgressRow | None, list[ProgressRow]]:
        """A finishing task's unwritten reports (its latest, the steps before it); it
        leaves the buffer."""
        row = self._progress.pop(task_id, None)
        if task_id not in self._unwritten:
            return None, []
        self._unwritten.discard(task_id)
        return row, self._steps.pop(task_id, [])

    async def flush_progress(self, task_id: str | None = None) -> None:
        """Write the buffered progress: of every task, or of ``task_id`` (a task about to
        finish), joined by the other tasks that ask in the same moment."""
        if task_id is not None:
            await self._flush_together(task_id)
            return
        unwritten, self._unwritten = self._unwritten, set()
        steps, self._steps = self._steps, {}
        progress = self._progress
        await self._save_progress(
            [progress[each] for each in unwritten],
            list(itertools.chain.from_iterable(steps.values())),
        )

    async def _save_progress(self, latest: list[ProgressRow], earlier: list[ProgressRow]) -> None:
        if not latest:
            return
        encoded = await _json_in_chunks(latest)
        history = await _json_in_chunks([*earlier, *latest]) if earlier else encoded
        await self.store.run(
            logic.save_progress(encoded, history, history_limit=self.store.history_limit)
        )

    async def _flush_together(self, task_id: str) -> None:
        """One write for the tasks that finish together (thousands, when a shared call
        returns), not one each: the first to ask waits one turn of the loop for the
        others, then writes all their progress; the others wait for that write."""
        if task_id not in self._unwritten:
            self._progress.pop(task_id, None)
            return
        batch = self._finishing
        if batch is not None:
            batch.task_ids.append(task_id)
            await batch.written.wait()
            if batch.error is not None:
                raise batch.error
            if task_id in self._unwritten:  # the first was cancelled before it wrote
                row, steps = self._take_progress(task_id)
                await self._save_progress([row] if row else [], steps)
            return
        batch = self._finishing = _FlushBatch([task_id])
        try:
            try:
                await anyio.lowlevel.checkpoint()
            finally:
                self._finishing = None
            latest: list[ProgressRow] = []
            earlier: list[ProgressRow] = []
            for each in batch.task_ids:
                row, steps = self._take_progress(each)
                if row is not None:
                    latest.append(row)
                    earlier += steps
            await self._save_progress(latest, earlier)
        except Exception as exc:
            batch.error = exc
            raise
        finally:
            batch.written.set()

    # --- running one task -----------------------------------------------------------------

    async def _execute(self, claim: Claim, running: RunningTask, runner: anyio.CancelScope) -> None:
        with tracing.attempt(claim.task, self.worker_id) as span:  # a no-op unless traced
            await self._attempt(claim, running, runner, span)

    async def _attempt(
        self,
        claim: Claim,
        running: RunningTask,
        runner: anyio.CancelScope,
        span: tracing.Attempt,
    ) -> None:
        task = claim.task
        context = running.context
        outcome: Outcome | None = None
        try:
            context._apply(task)
            if self.logs_lifecycle():
                running.log.info(
                    "started attempt %d of %s (%s)", task.attempts, task.task_type, task.name
                )
            await self.events.publish(
                TaskStarted(
                    task=task.id,
                    task_type=task.task_type,
                    attempt=task.attempts,
                    worker_id=self.worker_id,
                    queue_wait=_seconds_between(task.run_at, task.started_at),
                )
            )
            error = await self._load_dependencies(task, context)
            if error is None:
                result, error = await self._call(task, running, runner)
            else:
                result = None
            outcome = self._outcome(task, running, result, error)
        finally:
            runner.shield = True
            try:
                with _after_stop(runner):
                    if self.settings.retry_budgets and outcome is not None:
                        outcome = await self._within_retry_budget(task, running, outcome)
                    if outcome is None and running.stop_reason != "lost":
                        outcome = Released()  # torn down from outside: give it back
                    if isinstance(outcome, Completed) and self._joins_group(task, running, span):
                        self._finish_with_group(running, outcome)
                    else:
                        await self._finish(task, running, outcome)
                        span.ended(outcome, running.record)
            finally:
                runner.shield = False

    async def _load_dependencies(
        self, task: TaskRecord, context: TaskContext
    ) -> BaseException | None:
        """Give the context the results of the tasks this one depends on (those that
        completed); an error reading them fails the attempt (to be retried)."""
        if not task.depends_on:
            return None
        try:
            found = await self.store.run(logic.dependencies_of(task.id))
        except Exception as exc:
            return exc
        context.dependency_results = {
            dep: result for dep, (status, result) in found.items() if status is TaskStatus.COMPLETED
        }
        return None

    async def _call(
        self, task: TaskRecord, running: RunningTask, scope: anyio.CancelScope
    ) -> tuple[Any, BaseException | None]:
        """Run the task's function in ``scope`` (its runner's, already entered), cancelled
        at the task's timeout (:class:`_Timeouts`) or by a stop (``running.scope``). The
        cancellation of our own scope ends here (it is not propagated: the scope is not
        left until the runner has written the outcome, see :func:`_after_stop`)."""
        if running.stop_reason is not None:
            return None, None  # stopped before it began (a cancel during its claim)
        handler = self.registry.handler_for(task)
        if handler is None:
            return None, HandlerUnavailableError(
                f"no handler for task type {task.task_type!r} in this process"
            )
        timeout = self.config.timeout_for(task.task_type, task.timeout_seconds)
        reset = _current.set(running.context)
        result: Any = None
        error: BaseException | None = None
        running.scope = scope  # stop() cancels it, and so does its deadline
        self._timeouts.set(scope, anyio.current_time() + timeout)
        try:
            try:
                if handler.runs_in == "loop":
                    result = await handler.fn(running.context)
                else:
                    result = await self._run_elsewhere(handler, task, running.context)
            except Exception as exc:
                error = exc
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:
                    raise  # not a stop or a timeout of ours: the manager is going down
                result = None
            # cancel_called, not cancelled_caught: a def task in a thread, or a process
            # task, may come back with a result after its deadline; it is dropped.
            if scope.cancel_called and running.stop_reason is None:
                error = TaskTimeoutError(f"task ran longer than its timeout of {timeout:g}s")
        finally:
            running.scope = None
            self._timeouts.clear(scope)
            _current.reset(reset)
        return result, error

    async def _run_elsewhere(self, handler: Handler, task: TaskRecord, context: TaskContext) -> Any:
        """Run a def task in a worker thread, or a process task in a child process."""
        if handler.runs_in == "process":
            assert handler.process is not None
            return await self.processes.run(handler.process, task, context)
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(
                self.config.thread_pool_size or self.config.max_concurrent_jobs
            )
        # Not abandoned on cancel: the attempt lasts as long as its thread (which sees the
        # stop through context.check_cancelled()), so no thread outlives its attempt.
        result = await anyio.to_thread.run_sync(handler.fn, context, limiter=self._threads)
        if inspect.isawaitable(result):  # a def that returns a coroutine (a lambda, a wrapper)
            result = await result
        return result

    def _outcome(
        self,
        task: TaskRecord,
        running: RunningTask,
        result: Any,
        error: BaseException | None,
    ) -> Outcome | None:
        match running.stop_reason:
            case "lost":
                return None
            case "cancel":
                return Cancelled()
            case "shutdown":
                return Released()
        if error is None:
            try:
                return Completed(result)  # encodes it, as the store will write it
            except (TypeError, ValueError) as exc:
                error = ResultNotSerializableError(f"task returned a non-JSON result: {exc}")
        # A breaker's rejection (also from inside the handler's own task group) defers the
        # task without spending an attempt; the failure that trips a breaker does not.
        breaker = find_error(error, CircuitOpenError)
        if breaker is not None and breaker.retry_at is not None:
            return Deferred(retry_at=breaker.retry_at, reason=str(breaker))
        now = self._now()
        decision = self.retry_policy.decide(
            error,
            attempts=task.attempts,
            max_retries=task.max_retries,
            now=now,
            task_type=task.task_type,
            task_config=task.retry or self.registry.retry_for(task.task_type),
        )
        return Failed(
            error_type=type(error).__name__,
            error_message=str(error) or type(error).__name__,
            category=decision.category,
            retry_at=decision.retry_at,
            traceback="".join(traceback.format_exception(error)),
        )

    async def _within_retry_budget(
        self, task: TaskRecord, running: RunningTask, outcome: Outcome
    ) -> Outcome:
        """Retry budgets (``retry_budgets``): count a first attempt against each
        dependency it called (its rate limits, taken at the claim or through the context:
        a provider's limit shares its name with its breaker); a failure is retried only
        while the dependency's recent retries (counted when granted) are within ``ratio``
        of its first attempts (plus ``min_retries_per_second`` x ``window_seconds``). Beyond
        it the retry waits for the recovery of the dependency's circuit breaker (the
        breaker of that name: its trial time if open, else its recovery_timeout), or, with
        no such breaker, the task is dead-lettered rather than adding to a retry storm.
        The check and the count are not one transaction: workers deciding at once may
        each take the last retry of the budget."""
        budgets = self.settings.retry_budgets
        fallback = budgets.get("default")
        names = {name for name, _ in task.rate_keys} | running.context._limits_used
        running.context._limits_used = frozenset()
        dependencies = sorted(n for n in names if n in budgets or fallback is not None)
        if not dependencies or not isinstance(outcome, Completed | Failed):
            return outcome  # a deferral or a cancel made no call
        now = self._now()
        try:
            if task.attempts == 1:  # a first attempt; retries are counted when granted
                for name in dependencies:
                    await self.store.run(
                        logic.count_retry_budget(dependency=name, retry=False, now=now)
                    )
            if not isinstance(outcome, Failed) or outcome.retry_at is None:
                return outcome
            for name in dependencies:
                budget = budgets.get(name) or fallback
                assert budget is not None
                calls, retries = await self.store.run(
                    logic.retry_budget_window(dependency=name, since=now - budget.window_seconds)
                )
                allowed = (
                    budget.ratio * (calls - retries)
                    + budget.min_retries_per_second * budget.window_seconds
                )
                if retries + 1 <= allowed:
                    continue
                breaker = self.breakers.statistics().get(name)
                if breaker is not None:  # wait for its recovery (open: its trial time)
                    recovery = breaker.retry_at or now + breaker.config.recovery_timeout
                    return dataclasses.replace(outcome, retry_at=max(outcome.retry_at, recovery))
                spent = (
                    f"{outcome.error_message} (not retried: the retry budget of {name!r} is"
                    f" spent, {retries} retries to {calls - retries} first attempts in"
                    f" {budget.window_seconds:g}s)"
                )
                return dataclasses.replace(outcome, retry_at=None, error_message=spent)
            for name in dependencies:  # the retry is granted: it counts from now
                await self.store.run(logic.count_retry_budget(dependency=name, retry=True, now=now))
        except Exception:
            running.log.exception("could not read or count the retry budget; retrying as usual")
        return outcome

    async def _finish(
        self, task: TaskRecord, running: RunningTask, outcome: Outcome | None
    ) -> None:
        record: TaskRecord | None = None
        linked = running.context._take_completion_writes()
        now = self._now()
        try:
            await self.flush_progress(task.id)
            if outcome is not None:
                running.writing = True
                record = await self.store.finish(
                    running.claim,
                    outcome,
                    now=now,
                    linked=linked if isinstance(outcome, Completed) else (),
                )
        except LeaseLostError:
            _lease_lost_on_write(running)
        except Exception:
            _not_written(running)
        finally:
            self._let_go(running, record)
        if record is not None:
            await self._announce(record, outcome, running, now)

    def _let_go(self, running: RunningTask, record: TaskRecord | None) -> None:
        """An attempt is over, its outcome written (``record``) or not: its slot is free."""
        self.running.pop(running.claim.task.id, None)
        if not self.running:
            self._idle.set()
            self._busy = anyio.Event()
        self._slot_freed()
        running.record = record
        running.done.set()

    async def _announce(
        self, record: TaskRecord, outcome: Outcome | None, running: RunningTask, now: float
    ) -> None:
        """What follows a written outcome: its context, its events, its dependents."""
        if record.status.is_waiting:
            self.notify(run_at=record.run_at.timestamp())
        self.finished(record)
        await self._publish_outcome(record, outcome, running)
        if record.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            await self.announce_cancelled_dependents([record.id], now=now)

    # --- outcomes written as a group --------------------------------------------------------

    def _joins_group(self, task: TaskRecord, running: RunningTask, span: tracing.Attempt) -> bool:
        """Whether a completion goes to storage with the group of those that ended with
        it, its runner free at once for the next task: one with nothing else to write
        first or with it (progress, an extension's rows) and no span to end after the
        write. Other outcomes are written alone, their runner waiting."""
        return (
            not span.recording
            and task.id not in self._progress
            and not running.context._completion_writes
        )

    def _finish_with_group(self, running: RunningTask, outcome: Completed) -> None:
        """Queue a completion for the next group write (:meth:`_write_groups`)."""
        running.writing = True
        self._group.append((running, outcome, self._now()))
        self._group_queued.set()
        self._group_writes += 1
        self._slot_freed()

    async def _write_groups(self) -> None:
        """Write the completions queued since the last write, all in one (a claimed group
        of tasks that ended within one turn of the loop is one write, not one each); the
        next group gathers while this one is on its way. Outcomes already queued are
        written even when the manager is going down."""
        try:
            await self._group_queued.wait()
        finally:
            self._group_queued = anyio.Event()
            with anyio.CancelScope(shield=True):
                while self._group:
                    group, self._group = self._group, []
                    await self._finish_group(group)

    async def _finish_group(self, group: list[_Queued]) -> None:
        items = [(running.claim, outcome, now) for running, outcome, now in group]
        try:
            results: list[logic.Written | LeaseLostError | None] = [
                *await self.store.write_completions(items)
            ]
        except Exception:
            for running, _, _ in group:
                _not_written(running)
            results = [None] * len(group)
        self._group_writes -= len(group)
        for (running, _, _), result in zip(group, results, strict=True):
            if isinstance(result, LeaseLostError):
                _lease_lost_on_write(running)
            self._let_go(running, None)
        for (running, outcome, now), result in zip(group, results, strict=True):
            if isinstance(result, logic.Written):
                await self._announce_completed(running, outcome, now, result.message)

    async def _announce_completed(
        self, running: RunningTask, outcome: Completed, now: float, message: str | None
    ) -> None:
        """:meth:`_announce` of a completion written with its group, from its claim: the
        finished record is built only when its context's record is read."""
        claimed = running.claim.task
        context = self.contexts.get(claimed.id)
        if context is not None:

            def record() -> TaskRecord:
                params = logic.outcome_params(outcome)
                return logic.finished_record(
                    claimed, params, progress=1.0, message=message, now=now
                )

            context._completed(claimed.attempts, message, record)
        self.registry.drop_closure(claimed.id)
        duration = _duration(claimed.started_at, to_datetime(now))
        await self._publish_completed(running, claimed, claimed.attempts, duration)

    async def announce_cancelled_dependents(self, task_ids: list[str], *, now: float) -> None:
        """The tasks cancelled for the failure or cancel of ``task_ids`` at ``now`` (their
        dependents, in turn): their contexts follow, and each is published as cancelled."""
        try:
            cancelled = await self.store.run(logic.cancelled_dependents(task_ids, now=now))
        except Exception:
            logger.exception("could not read the dependents cancelled with %s", task_ids)
            return
        for record in cancelled:
            task_logger(record.id).warning("%s", record.error_message)
            self.finished(record)
            await self.events.publish(TaskCancelled(task=record.id, task_type=record.task_type))

    async def _publish_completed(
        self, running: RunningTask, task: TaskRecord, attempts: int, duration: float | None
    ) -> None:
        if self.logs_lifecycle():
            running.log.info("completed in %.3fs", duration or 0.0)
        completed = TaskCompleted(
            task=task.id, task_type=task.task_type, attempt=attempts, duration=duration
        )
        await self.events.publish(completed)

    async def _publish_outcome(
        self, record: TaskRecord, outcome: Outcome | None, running: RunningTask
    ) -> None:
        events = self.events
        task_id, task_type = record.id, record.task_type
        if record.status is TaskStatus.COMPLETED:
            await self._publish_completed(running, record, record.attempts, record.duration_seconds)
        elif record.status is TaskStatus.CANCELLED:
            if self.logs_lifecycle():
                running.log.info("cancelled")
            await events.publish(TaskCancelled(task=task_id, task_type=task_type))
        elif isinstance(outcome, Failed):
            will_retry = record.status is TaskStatus.RETRYING
            running.log.log(
                logging.WARNING if will_retry else logging.ERROR,
                "attempt %d failed (%s) %s: %s%s",
                record.attempts,
                outcome.category,
                outcome.error_type,
                outcome.error_message,
                f"; retrying at {record.run_at.isoformat()}" if will_retry else "; dead-lettered",
            )
            await events.publish(
                TaskFailed(
                    task=task_id,
                    task_type=task_type,
                    attempt=record.attempts,
                    error_type=outcome.error_type,
                    error_message=outcome.error_message,
                    category=outcome.category,
                    will_retry=will_retry,
                    duration=_seconds_between(running.claim.task.started_at, record.updated_at),
                )
            )
            if will_retry:
                await events.publish(
                    TaskRetryScheduled(
                        task=task_id,
                        task_type=task_type,
                        attempt=record.attempts,
                        retry_at=record.run_at.timestamp(),
                        category=outcome.category,
                    )
                )
            else:
                await events.publish(
                    TaskDeadLettered(
                        task=task_id,
                        task_type=task_type,
                        category=outcome.category,
                        error_message=outcome.error_message,
                    )
                )
        elif isinstance(outcome, Deferred):
            running.log.info("deferred until %s: %s", record.run_at.isoformat(), outcome.reason)
            await events.publish(
                TaskDeferred(
                    task=task_id,
                    task_type=task_type,
                    retry_at=outcome.retry_at,
                    reason=outcome.reason,
                )
            )
        elif isinstance(outcome, Released):
            running.log.info("released back to the queue on shutdown")
            await events.publish(TaskRequeued(task=task_id, task_type=task_type, reason="shutdown"))

    # --- shutdown ------------------------------------------------------------------------

    def end_grace(self) -> None:
        """Cut a shutdown's grace period short (the worker's second SIGTERM): tasks still
        running are cancelled and released back to the queue now."""
        self._hurried = True
        if self._grace is not None:
            self._grace.cancel()

    async def stop(self) -> None:
        """Stop claiming; give running tasks the grace period; then cancel and release them."""
        self._stopping = True
        self.notify()
        await self._dispatcher_stopped.wait()  # a claim in flight still starts its tasks
        if self.running:
            logger.info(
                "shutting down: waiting up to %gs for %d running tasks",
                self.config.shutdown_grace_period,
                len(self.running),
            )
            grace = 0.0 if self._hurried else self.config.shutdown_grace_period
            with anyio.move_on_after(grace) as self._grace:
                await self._idle.wait()
            for running in list(self.running.values()):
                running.stop("shutdown")
            await self._idle.wait()
        self._claimed.close()  # idle runners return
        await self.processes.aclose()
        await self.flush_progress()
        async with self._worker_row:
            await self.store.remove_worker(self.worker_id)
            self._worker_removed = True


_Claimed = tuple[Claim, RunningTask]
_Queued = tuple[RunningTask, Completed, float]  # a completion waiting for its group write


def _after_stop(runner: anyio.CancelScope) -> AbstractContextManager[Any]:
    """Where an attempt's outcome is decided and written once its function returned: in
    its runner's scope (shielded by then), unless a stop or a timeout cancelled that
    scope, which then cancels all that runs in it, shielded or not: then in a shielded
    scope of its own."""
    return anyio.CancelScope(shield=True) if runner.cancel_called else nullcontext()


def _lease_lost_on_write(running: RunningTask) -> None:
    running.log.warning("lease lost before the outcome was written; a newer attempt owns it")


def _not_written(running: RunningTask) -> None:
    # The lease stops being renewed, expires, and the task is retried (at least once).
    running.log.exception("could not record the outcome; the task will be recovered")


def _notice_score(task_id: str, worker_id: str) -> int:
    """A worker's place for a notice of a task, the same in every process."""
    return zlib.crc32(f"{task_id}/{worker_id}".encode())


#: Progress rows encoded between two turns of the event loop.
ENCODE_CHUNK = 1000


async def _json_in_chunks(rows: list[ProgressRow]) -> str:
    """``rows`` as one JSON array, encoded a chunk at a time with a turn of the loop
    between: the rows of tens of thousands of tasks in one go held the loop (a spike of
    lag at each flush)."""
    if len(rows) <= ENCODE_CHUNK:
        return dumps(rows)
    parts: list[str] = []
    for start in range(0, len(rows), ENCODE_CHUNK):
        parts.append(dumps(rows[start : start + ENCODE_CHUNK])[1:-1])  # the items alone
        await anyio.lowlevel.checkpoint()
    return f"[{','.join(parts)}]"


def _duration(started: datetime | None, finished: datetime) -> float | None:
    """A finished attempt's duration as its record's ``duration_seconds`` gives it."""
    return None if started is None else (finished - started).total_seconds()


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


@dataclass(eq=False)
class _FlushBatch:
    """The progress of tasks finishing together, written at once."""

    task_ids: list[str]
    written: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


class _Handoff:
    """Claimed tasks on their way to idle runners: a queue without a checkpoint per item
    (an anyio memory stream paid a checkpoint, an event and a task-info lookup for each),
    since a runner that finds work waiting takes it at once.

    A claimed group runs in as few runners as its tasks need: one idle runner is woken at
    a time (the spare), and a runner that takes a task while more wait wakes the next
    spare. A task that ends within its first step (its outcome queued for the group's
    write, not awaited) leaves its runner free to take the next one at once; one that
    awaits something lets the spare take the rest."""

    def __init__(self) -> None:
        self._items: deque[_Claimed] = deque()
        self._waiters: deque[anyio.Event] = deque()
        self._spare: anyio.Event | None = None  # woken, not yet back for its task
        self._closed = False

    def put(self, item: _Claimed) -> None:
        self._items.append(item)
        self._wake_spare()

    def _wake_spare(self) -> None:
        """Wake one idle runner, unless one woken already has yet to come back: a runner
        woken per task cost an event and a turn of the loop each, mostly for nothing."""
        if self._spare is None and self._waiters:
            self._spare = self._waiters.popleft()
            self._spare.set()

    async def get(self) -> _Claimed | None:
        """The next claimed task; None once closed."""
        while not self._items:
            if self._closed:
                return None
            waiter = anyio.Event()
            self._waiters.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                if self._spare is waiter:  # cancelled on its way back: its turn passes on
                    self._spare = None
                    self._wake_spare()
                raise
            if self._spare is waiter:
                self._spare = None
        item = self._items.popleft()
        if self._items:  # in case this task awaits something: the rest need a runner
            self._wake_spare()
        return item

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            self._waiters.popleft().set()


class _Timeouts:
    """The deadlines of the tasks running in runners, kept by one sleeper (:meth:`watch`)
    instead of a timer on each task's scope: a timer set and cancelled per task cost more
    than the rest of running a no-op task. Each runner's scope has the deadline of the
    task it runs; past it, the scope is cancelled (the task's ``TaskTimeoutError``). A heap
    of deadlines, those of tasks that ended left in it until they come up (or until they
    are most of it)."""

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []  # [deadline, seq, scope or None once ended]
        self._current: dict[anyio.CancelScope, list[Any]] = {}
        self._ended = 0  # entries of the heap whose task ended
        self._seq = 0
        self._wake_at = math.inf  # when watch() looks next
        self._changed: anyio.Event | None = None

    def set(self, scope: anyio.CancelScope, deadline: float) -> None:
        """The task now running in ``scope`` times out at ``deadline`` (anyio time)."""
        self._seq += 1
        entry = [deadline, self._seq, scope]
        self._current[scope] = entry
        heapq.heappush(self._heap, entry)
        if deadline < self._wake_at and self._changed is not None:
            self._changed.set()

    def clear(self, scope: anyio.CancelScope) -> None:
        """The task running in ``scope`` ended."""
        entry = self._current.pop(scope, None)
        if entry is None:
            return
        entry[2] = None
        self._ended += 1
        if self._ended > 64 and self._ended * 2 > len(self._heap):
            self._heap = [each for each in self._heap if each[2] is not None]
            heapq.heapify(self._heap)
            self._ended = 0

    async def watch(self) -> None:
        """Cancel the scopes past their deadline; sleep until the next deadline, or until
        an earlier one is set."""
        now = anyio.current_time()
        heap = self._heap
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            scope = heapq.heappop(heap)[2]
            if scope is None:
                self._ended -= 1
            else:
                del self._current[scope]
                scope.cancel()
        self._wake_at = heap[0][0] if heap else math.inf
        self._changed = anyio.Event()
        with anyio.move_on_at(self._wake_at):
            await self._changed.wait()


class _StartedOnce:
    """Passes the first ``started()`` on to the task group; ignores later ones."""

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started(value)
