"""Every storage decision, once, as operations on named queries (see :mod:`.ops`).

What an outcome writes, who fits in a full queue, what a lost lease becomes, which
heartbeat tokens were fenced out, how a list is filtered and ordered: each is decided
here, for every backend. A backend only runs the steps (:mod:`.sqlite`, :mod:`.postgres`)
with the SQL its dialect file gives each name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import (
    DependencyFailedError,
    DependencyNotFoundError,
    DuplicateScheduleError,
    ErrorCategory,
    HandlerUnavailableError,
    IdempotencyKeyError,
    LeaseLostError,
    QueueFullError,
    ScheduleNotFoundError,
    TaskNotFoundError,
    TaskStateError,
    WorkerLostError,
)
from ..models import (
    BLOCKED_RUN_AT,
    ExecutionOutcome,
    ExecutionRecord,
    ResourceSample,
    TaskRecord,
    TaskStatus,
    task_record,
    to_datetime,
)
from ..schedules import Missed, ScheduleDefinition, ScheduleRecord, first_run, plan
from ..validation import storable_text, text_problem
from .ops import Mode, Op, Step, count, operation, row, rows, script, value
from .queries import Migration
from .rows import (
    breaker_from_row,
    dumps,
    execution_from_row,
    loads,
    loads_result,
    new_task_params,
    new_task_row,
    progress_from_row,
    progress_row,
    rate_keys_of,
    sample_from_row,
    schedule_from_row,
    schedule_params,
    stored_queue,
    task_from_row,
    worker_from_row,
)
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
    Outcome,
    ProgressRow,
    ProgressSnapshot,
    RateLimitState,
    RateSpec,
    ReapResult,
    Released,
    RetryDecider,
    ScheduleFiring,
    ScheduleTick,
    SharedBreakerState,
    WorkerInfo,
    dispatch_key,
)

__all__ = [
    "BLOCKED_RUN_AT",
    "LIST_ORDERS",
    "TaskMaker",
    "Written",
    "acquire_rate",
    "add_keyed_tasks",
    "add_resource_sample",
    "add_schedule",
    "add_tasks",
    "add_together",
    "cancel_requests",
    "cancel_waiting",
    "cancelled_dependents",
    "changed_definitions",
    "check_writes",
    "claim",
    "claim_limited",
    "complete_many",
    "complete_together",
    "count_retry_budget",
    "count_tasks",
    "count_tasks_by_type",
    "define_schedules",
    "delete_finished",
    "delete_retry_budget",
    "delete_samples",
    "delete_schedule",
    "delete_ticks",
    "dependencies_of",
    "dispatch_key",
    "finish",
    "finished_record",
    "fire_schedules",
    "get_paused",
    "get_schedule",
    "get_task",
    "get_tasks",
    "heartbeat",
    "lease_lost",
    "list_executions",
    "list_schedules",
    "list_tasks",
    "list_workers",
    "load_breaker_states",
    "matchable",
    "metrics_window",
    "migrate",
    "next_run_at",
    "next_schedule_at",
    "outcome_params",
    "ping",
    "place_keyed",
    "progress_history",
    "progress_rows",
    "rate_limit_states",
    "reap",
    "remove_worker",
    "report_tokens",
    "request_cancel",
    "requeue_failed",
    "resource_samples",
    "retry_budget_window",
    "running_per_key",
    "save_breaker_state",
    "save_progress",
    "schedule_fingerprints",
    "schedule_ticks",
    "set_paused",
    "set_schedule_enabled",
    "tasks_of_key",
    "write_completions",
]

#: ``list_tasks`` orders and the query of each.
LIST_ORDERS = {
    "created_desc": "list_tasks_created",
    "finished_desc": "list_tasks_finished",
    "dispatch": "list_tasks_dispatch",
}


# --- schema --------------------------------------------------------------------------------


@operation(Mode.WRITE)
def migrate(migrations: Sequence[Migration], prelude: Sequence[Step] = ()) -> Op[int]:
    """Apply the migrations not applied yet, in order; the newest core version.
    ``prelude``: a backend's own first steps (PostgreSQL locks out other migrators).
    A database that is up to date is only read: a read-only PostgreSQL session (a
    standby) still opens, serving reads while writes fail."""
    for step in prelude:  # noqa: UP028 (a list cannot take the results sent back)
        yield step
    if not (yield value("migration_tables_exist")):
        yield count("create_migration_tables")
    applied = {
        (found["component"], found["version"]) for found in (yield rows("applied_migrations"))
    }
    for migration in migrations:
        if (migration.component, migration.version) in applied:
            continue
        yield script(migration.sql)
        yield count(
            "record_core_migration"
            if migration.component == "core"
            else "record_component_migration",
            component=migration.component,
            version=migration.version,
            name=migration.name,
            at=time.time(),
        )
        applied.add((migration.component, migration.version))
    return max((version for component, version in applied if component == "core"), default=0)


# --- submit and read -------------------------------------------------------------------------


@operation(Mode.STATEMENTS)
def add_tasks(
    tasks: Sequence[NewTask],
    *,
    limit: int | None,
    together: bool = False,
    linked: Sequence[Step] = (),
    fair_share: float | None = None,
) -> Op[list[QueueFullError | None]]:
    """Store ``tasks``, with ``limit`` on the waiting tasks: ``together``, all of them or
    (QueueFullError) none; otherwise the first ones that fit, the others answered with a
    QueueFullError each (None: stored). ``linked`` steps (an extension's rows) follow once
    every task is in: run this in a transaction (Mode.WRITE) when there are any, or when a
    task has dependencies.

    A task's dependencies must be stored tasks or tasks before it in ``tasks`` (so there is
    no cycle): else DependencyNotFoundError (ValueError for one later in ``tasks``) and
    nothing is stored. A task with dependencies is stored waiting on them
    (:data:`BLOCKED_RUN_AT`), then settled at once against their states (see
    :func:`settle_dependents`): released if they all completed already, cancelled if one
    failed or was cancelled.

    ``fair_share``: tasks with a concurrency key are placed fairly among other keys' (see
    :func:`place_keyed`); run this in a transaction then."""
    if fair_share is not None and any(task.concurrency_key for task in tasks):
        tasks = yield from place_keyed(tasks, quantum=fair_share)
    dependents = [task for task in tasks if task.depends_on]
    if dependents:
        yield from _check_dependencies(tasks)
    if len(tasks) == 1:
        stored = yield count("insert_task", **new_task_params(tasks[0]), limit=limit)
    else:
        stored = yield count(
            "insert_tasks",
            rows=dumps([new_task_row(task) for task in tasks]),
            limit=limit,
            together=together,
            count=len(tasks),
        )
    if stored == len(tasks):
        if dependents:
            edges = [[dep, task.id] for task in dependents for dep in task.depends_on]
            yield count("insert_dependencies", rows=dumps(edges))
            now = max(task.created_at for task in dependents)
            yield from settle_dependents(ids=[task.id for task in dependents], now=now)
        for step in linked:  # noqa: UP028 (a list cannot take the results sent back)
            yield step
        return [None] * len(tasks)
    assert limit is not None
    waiting = yield value("count_waiting", limit=limit)
    if together:
        raise QueueFullError(limit, int(waiting), len(tasks))
    full = QueueFullError(limit, int(waiting))
    return [None if i < stored else full for i in range(len(tasks))]  # the first ones fit


@operation(Mode.STATEMENTS)
def add_together(items: Sequence[tuple[NewTask, int | None]]) -> Op[list[QueueFullError | None]]:
    """Plain submits gathered in one batch (a backend that combines concurrent submits runs
    it), each with its queue's limit: let in, in order, while there is room; each answered
    as :func:`add_tasks` answers it (None: stored)."""
    limits = {limit for _, limit in items}
    if len(limits) == 1:
        (limit,) = limits
        return (yield from add_tasks([task for task, _ in items], limit=limit).steps())
    results: list[QueueFullError | None] = []
    for task, limit in items:  # different limits (managers of several configs): in turn
        results += yield from add_tasks([task], limit=limit).steps()
    return results


def matchable(key: str | None) -> bool:
    """Whether any row can have ``key`` (an id, a task type) as a column's value: text
    storage cannot hold (a NUL character, a lone surrogate: see
    :mod:`vpsweb_tasks.validation`) is in no row, so a lookup or filter by it finds
    nothing, on every backend, without asking the database (PostgreSQL would reject it)."""
    return key is None or text_problem(key) is None


def _check_dependencies(tasks: Sequence[NewTask]) -> Op[None]:
    """Every dependency is a stored task or one earlier in ``tasks``."""
    earlier: set[str] = set()
    outside: set[str] = set()
    later = {task.id for task in tasks}
    for task in tasks:
        for dep in task.depends_on:
            if dep in earlier:
                continue
            if dep in later:
                raise ValueError(
                    f"depends_on: task {task.id} depends on {dep}, which comes after it in"
                    " the batch (a task may only depend on tasks stored before it)"
                )
            outside.add(dep)
        earlier.add(task.id)
        later.discard(task.id)
    if outside:
        found = {r["id"] for r in (yield rows("existing_ids", ids=sorted(outside)))}
        missing = sorted(outside - found)
        if missing:
            raise DependencyNotFoundError(missing)


#: How a dependent's cancel names what broke its dependency.
_BROKEN = {
    "failed": "failed",
    "cancelled": "was cancelled",
    "gone": "no longer exists",
}


def settle_dependents(
    *, of: Sequence[str] = (), ids: Sequence[str] = (), now: float
) -> Op[tuple[list[str], list[str]]]:
    """Settle tasks waiting on dependencies: the dependents of ``of`` (tasks that just
    finished) and the tasks ``ids``. One whose dependency failed for good, was cancelled
    or is gone is cancelled with :class:`DependencyFailedError` naming it (unless it asked
    to run anyway: ``on_dependency_failure='run'``), and so, in turn, are its own
    dependents; one whose dependencies all finished becomes runnable now. Idempotent: a
    settle that was lost (a process died between a finish and this, where they are not
    one transaction) is made up by the next (:func:`reap` settles every waiting
    dependent). The ids released and cancelled."""
    released: list[str] = []
    cancelled: list[str] = []
    while of or ids:
        found = yield rows("blocked_dependents", of=list(of), ids=list(ids), blocked=BLOCKED_RUN_AT)
        release: list[str] = []
        cancel: list[list[str]] = []
        for each in found:
            broken = each["broken"]
            if broken is not None and each["policy"] == "cancel":
                state, _, dep = broken.partition(":")
                cancel.append(
                    [each["id"], f"cancelled: its dependency task_id:{dep} {_BROKEN[state]}"]
                )
            elif not each["unfinished"]:
                release.append(each["id"])
        if release:
            done = yield rows("release_dependents", ids=release, now=now, blocked=BLOCKED_RUN_AT)
            released += [r["id"] for r in done]
        of, ids = [], []
        if cancel:
            done = yield rows(
                "cancel_dependents",
                rows=dumps(cancel),
                now=now,
                blocked=BLOCKED_RUN_AT,
                error_type=DependencyFailedError.__name__,
                category=None,
            )
            of = [r["id"] for r in done]
            cancelled += of
    return released, cancelled


@operation(Mode.READ)
def cancelled_dependents(task_ids: Sequence[str], *, now: float) -> Op[list[TaskRecord]]:
    """The tasks cancelled at ``now`` because one of ``task_ids`` failed for good or was
    cancelled at ``now``, and in turn those cancelled for them (what
    :func:`settle_dependents` did in that change), for a worker to announce them."""
    found: list[TaskRecord] = []
    seen: set[str] = set()
    frontier = list(task_ids)
    while frontier:
        got = yield rows(
            "cancelled_dependents", ids=frontier, now=now, error_type=DependencyFailedError.__name__
        )
        frontier = []
        for each in got:
            if each["id"] not in seen:
                seen.add(each["id"])
                frontier.append(each["id"])
                found.append(task_from_row(each))
    return found


@operation(Mode.READ)
def dependencies_of(task_id: str) -> Op[dict[str, tuple[TaskStatus | None, Any]]]:
    """The dependencies of a task: each one's status (None: deleted) and result."""
    found = yield rows("dependencies_of", id=task_id)
    return {
        r["id"]: (
            None if r["status"] is None else TaskStatus(r["status"]),
            None if r["result"] is None else loads_result(r["result"]),
        )
        for r in found
    }


@operation(Mode.READ)
def tasks_of_key(key: str, tasks: Sequence[NewTask]) -> Op[list[TaskRecord] | None]:
    """The tasks stored already under the idempotency keys of ``tasks`` (the tasks of one
    submit under ``key``), in their order, if the same request stored them; None if none
    is stored. IdempotencyKeyError if another request holds the key (or only some of a
    batch's tasks are left: retention deleted the others)."""
    keys = [task.idempotency_key for task in tasks]
    found = {r["idempotency_key"]: r for r in (yield rows("tasks_by_keys", keys=keys))}
    if not found:
        return None
    fingerprint = tasks[0].request_fingerprint
    if len(found) < len(keys) or any(
        r["request_fingerprint"] != fingerprint for r in found.values()
    ):
        holder = found.get(keys[0]) or next(iter(found.values()))
        raise IdempotencyKeyError(key, holder["id"])
    return [task_from_row(found[k]) for k in keys]


@operation(Mode.WRITE)
def add_keyed_tasks(
    key: str,
    tasks: Sequence[NewTask],
    *,
    limit: int | None,
    linked: Sequence[Step] = (),
    fair_share: float | None = None,
) -> Op[list[TaskRecord] | None]:
    """:func:`add_tasks` (all or none) of the tasks of one submit under idempotency ``key``,
    unless they are stored already: then those (see :func:`tasks_of_key`) and nothing is
    written. A key already held comes first, so a repeat is answered even when the queue
    is full. The unique index on the key settles a race with another process (the loser's
    insert fails with DuplicateKeyError: look again)."""
    existing = yield from tasks_of_key(key, tasks).steps()
    if existing is not None:
        return existing
    yield from add_tasks(
        tasks, limit=limit, together=True, linked=linked, fair_share=fair_share
    ).steps()
    return None


@operation(Mode.READ)
def next_run_at(*, now: float) -> Op[float | None]:
    """The earliest run time after ``now`` of a waiting task (a delayed submit, a retry),
    or None: when a dispatcher should look again."""
    found = yield value("next_run_at", now=now, blocked=BLOCKED_RUN_AT)
    return None if found is None else float(found)


@operation(Mode.READ)
def get_task(task_id: str) -> Op[TaskRecord | None]:
    if not matchable(task_id):
        return None
    found = yield row("get_task", id=task_id)
    return None if found is None else task_from_row(found)


@operation(Mode.READ)
def get_tasks(task_ids: Collection[str]) -> Op[list[TaskRecord]]:
    ids = [task_id for task_id in task_ids if matchable(task_id)]
    return [task_from_row(found) for found in (yield rows("get_tasks", ids=ids))]


@operation(Mode.READ)
def list_tasks(
    *,
    statuses: Collection[TaskStatus] | None,
    task_type: str | None,
    limit: int,
    offset: int,
    order: str,
) -> Op[list[TaskRecord]]:
    if order not in LIST_ORDERS:
        raise ValueError(f"order must be one of {sorted(LIST_ORDERS)}")
    if not matchable(task_type):
        return []
    wanted = [TaskStatus(s).value for s in (TaskStatus if statuses is None else statuses)]
    found = yield rows(
        LIST_ORDERS[order],
        statuses=wanted,
        task_type=task_type,
        limit=limit,
        offset=offset,
    )
    return [task_from_row(each) for each in found]


@operation(Mode.READ)
def count_tasks() -> Op[dict[TaskStatus, int]]:
    counts = dict.fromkeys(TaskStatus, 0)
    for found in (yield rows("count_by_status")):
        counts[TaskStatus(found["status"])] = int(found["n"])
    return counts


@operation(Mode.READ)
def list_executions(task_id: str) -> Op[list[ExecutionRecord]]:
    if not matchable(task_id):
        return []
    return [execution_from_row(r) for r in (yield rows("list_executions", task_id=task_id))]


# --- dispatch ------------------------------------------------------------------------------


@operation(Mode.STATEMENTS)
def claim(
    *,
    worker_id: str,
    now: float,
    lease_seconds: float,
    limit: int,
    task_types: Collection[str] | None,
    queue: str,
) -> Op[list[Claim]]:
    claimed = yield rows(
        "claim",
        worker=worker_id,
        expires=now + lease_seconds,
        now=now,
        limit=limit,
        types=None if task_types is None else sorted(task_types),
        queue=stored_queue(queue),
    )
    claimed.sort(key=lambda r: (r["dispatch_at"], r["seq"]))
    return [Claim(task_from_row(r), LeaseToken(r["id"], worker_id, r["fence"])) for r in claimed]


#: How many waiting tasks past ``limit`` a claim with limits reads, to find ones whose
#: keys are free.
CLAIM_SCAN_EXTRA = 32

#: A rate-limit key is free when its theoretical arrival time is at most this late
#: (floating-point slack).
_EPSILON = 1e-6


def _slot(spec: RateSpec, tat: float, token_tat: float) -> float:
    """When a key with this state takes its next request (its tokens paid back to less
    than a window's worth)."""
    return max(tat, token_tat - spec.per if spec.tokens is not None else tat)


@operation(Mode.WRITE)
def claim_limited(
    *,
    worker_id: str,
    now: float,
    lease_seconds: float,
    limit: int,
    task_types: Collection[str] | None,
    queue: str,
    limits: ClaimLimits,
    horizon: float = 0.0,
) -> Op[list[Claim]]:
    """:func:`claim` for a worker with rate limits or a running bound per concurrency
    key, in one write transaction: the candidates in dispatch order (those whose key is at
    its bound passed over by the query), then, with the keys' rows locked (concurrency
    keys, then rate limits, each sorted: claims never deadlock), each candidate in turn:
    claimed if its key has room and every rate key of it has a slot now (GCRA: the key's
    theoretical arrival time ``tat <= now``; taking it moves ``tat`` one interval, per /
    requests, past ``max(tat, now)``), else, for a rate limit, moved to its slot
    (``run_at``; no attempt spent), each further task of a full key one interval later
    than the one before; a task of a full concurrency key stays where it is.
    ``horizon``: how far past ``now`` a dispatch place may be (fair queueing)."""
    types = None if task_types is None else sorted(task_types)
    candidates = yield rows(
        "claim_candidates",
        worker=worker_id,
        now=now,
        horizon=now + horizon,
        queue=stored_queue(queue),
        types=types,
        max_running=limits.max_running_per_key,
        scan=limit + CLAIM_SCAN_EXTRA,
    )
    if not candidates:
        return []
    running: dict[str, int] = {}
    bound = limits.max_running_per_key
    keyed = sorted({c["concurrency_key"] for c in candidates if c["concurrency_key"]})
    if keyed and bound is not None:
        yield count("ensure_concurrency_keys", keys=keyed)
        yield rows("lock_concurrency_keys", keys=keyed)
        running = {r["key"]: int(r["n"]) for r in (yield rows("running_per_key", keys=keyed))}
    wanted: dict[str, str] = {}
    for candidate in candidates:
        for name, key in rate_keys_of(candidate["rate_keys"]):
            if name in limits.rates:
                wanted.setdefault(key, name)
    state: dict[str, list[float]] = {}
    if wanted:
        state = yield from _lock_rate_keys(wanted)
    projected = {key: _slot(limits.rates[wanted[key]], *state[key]) for key in state}
    taken: dict[str, int] = {}
    chosen: list[str] = []
    deferred: list[list[Any]] = []
    for candidate in candidates:
        if len(chosen) >= limit:
            break
        ckey = candidate["concurrency_key"]
        if ckey and bound is not None and running.get(ckey, 0) >= bound:
            continue
        keys = [
            (key, limits.rates[name])
            for name, key in rate_keys_of(candidate["rate_keys"])
            if name in limits.rates and key in state
        ]
        slot = max((projected[key] for key, _ in keys), default=now)
        if slot > now + _EPSILON:
            deferred.append([candidate["id"], slot])
            for key, spec in keys:
                projected[key] = max(projected[key], slot) + spec.interval
            continue
        for key, spec in keys:
            tat = max(state[key][0], now) + spec.interval
            state[key][0] = tat
            projected[key] = _slot(spec, *state[key])
            taken[key] = taken.get(key, 0) + 1
        if ckey:
            running[ckey] = running.get(ckey, 0) + 1
        chosen.append(candidate["id"])
    if taken:
        yield count(
            "save_rate_limits",
            rows=dumps([[key, *state[key], n, 0] for key, n in sorted(taken.items())]),
            now=now,
        )
    if deferred:
        yield count("defer_to_slots", rows=dumps(deferred), now=now)
    if not chosen:
        return []
    claimed = yield rows(
        "claim_ids", worker=worker_id, expires=now + lease_seconds, now=now, ids=chosen
    )
    claimed.sort(key=lambda r: (r["dispatch_at"], r["seq"]))
    return [Claim(task_from_row(r), LeaseToken(r["id"], worker_id, r["fence"])) for r in claimed]


def _lock_rate_keys(wanted: Mapping[str, str]) -> Op[dict[str, list[float]]]:
    """The rows of rate-limit keys ``wanted`` (key -> limit name), locked, as key ->
    [tat, token_tat]; the rows missing are made first (once per key, ever)."""
    keys = sorted(wanted)
    found = yield rows("lock_rate_limits", keys=keys)
    if len(found) < len(keys):
        yield count("ensure_rate_limits", rows=dumps([[k, wanted[k]] for k in keys]))
        found = yield rows("lock_rate_limits", keys=keys)
    return {r["key"]: [float(r["tat"]), float(r["token_tat"])] for r in found}


@operation(Mode.WRITE)
def acquire_rate(*, name: str, key: str, spec: RateSpec, now: float) -> Op[float]:
    """Take one request of rate-limit ``key`` (of limit ``name``) now, if it has a slot:
    0.0; else the seconds until its slot (nothing taken). For steps inside a running task
    (``context.acquire``)."""
    tat, token_tat = (yield from _lock_rate_keys({key: name}))[key]
    slot = _slot(spec, tat, token_tat)
    if slot > now + _EPSILON:
        return slot - now
    yield count(
        "save_rate_limits",
        rows=dumps([[key, max(tat, now) + spec.interval, token_tat, 1, 0]]),
        now=now,
    )
    return 0.0


@operation(Mode.WRITE)
def report_tokens(*, name: str, key: str, spec: RateSpec, tokens: int, now: float) -> Op[None]:
    """Reconcile rate-limit ``key`` with the ``tokens`` a call used (the provider's
    reported usage): they are paid back at ``spec.tokens`` per ``spec.per``, and the key
    takes no request while more than a window's worth is unpaid."""
    if spec.tokens is None or tokens <= 0:
        return
    tat, token_tat = (yield from _lock_rate_keys({key: name}))[key]
    paid = max(token_tat, now) + tokens * spec.per / spec.tokens
    yield count("save_rate_limits", rows=dumps([[key, tat, paid, 0, tokens]]), now=now)


@operation(Mode.READ)
def rate_limit_states(*, limit: int = 1000) -> Op[list[RateLimitState]]:
    return [
        RateLimitState(
            key=found["key"],
            name=found["name"],
            next_free_at=float(found["tat"]),
            tokens_paid_at=float(found["token_tat"]),
            requests=int(found["requests"]),
            tokens=int(found["tokens"]),
        )
        for found in (yield rows("rate_limit_states", limit=limit))
    ]


@operation(Mode.READ)
def running_per_key(*, limit: int = 1000) -> Op[dict[str, int]]:
    """Running tasks per concurrency key (keys with none left out), busiest first."""
    return {found["key"]: int(found["n"]) for found in (yield rows("running_keys", limit=limit))}


def place_keyed(tasks: Sequence[NewTask], *, quantum: float) -> Op[list[NewTask]]:
    """Fair queueing (start-time fair queueing on the dispatch key): each task with a
    concurrency key is placed at least ``quantum`` after its key's previous task, so one
    key's batch spreads out and another key's task lands among it. Steps for the submit's
    own transaction; the tasks as they are to be stored."""
    placed: list[NewTask] = []
    for task in tasks:
        if task.concurrency_key is None or task.depends_on:
            placed.append(task)
            continue
        at = yield value(
            "place_keyed",
            key=task.concurrency_key,
            dispatch_at=task.stored_dispatch_at,
            quantum=quantum,
        )
        placed.append(replace(task, dispatch_at=float(at)))
    return placed


@operation(Mode.WRITE)
def count_retry_budget(*, dependency: str, retry: bool, now: float) -> Op[None]:
    """Count one call to ``dependency`` (a first attempt, or a retry) in its second."""
    yield count("count_retry_budget", dependency=dependency, second=int(now), retry=retry)


@operation(Mode.READ)
def retry_budget_window(*, dependency: str, since: float) -> Op[tuple[int, int]]:
    """Calls and retries to ``dependency`` since ``since``."""
    found = yield row("retry_budget_window", dependency=dependency, since=int(since))
    return int(found["calls"]), int(found["retries"])


def _worker_params(worker: WorkerInfo, now: float, lease_seconds: float) -> dict[str, Any]:
    return {
        "worker": worker.worker_id,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "process_started_at": worker.process_started_at,
        "concurrency": worker.concurrency,
        "started_at": worker.started_at or now,
        "now": now,
        "expires": now + lease_seconds,
    }


@operation(Mode.STATEMENTS)
def heartbeat(
    *, worker: WorkerInfo, now: float, lease_seconds: float, running: Collection[LeaseToken]
) -> Op[HeartbeatResult]:
    params = _worker_params(worker, now, lease_seconds)
    tokens = {token.task_id: token.fence for token in running}
    if not tokens:
        yield count("register_worker", **params)
        return HeartbeatResult(lost=frozenset(), cancel_requested=frozenset())
    # Only the attempts sent that are not held as sent, or have a cancel requested, come
    # back: nothing a task while all is well, whatever their number.
    changed = {
        found["id"]: (found["fence"], bool(found["cancel_requested"]))
        for found in (yield rows("renew_leases", **params, held=dumps(tokens)))
    }
    return HeartbeatResult(
        lost=frozenset(
            task_id for task_id, (fence, _) in changed.items() if fence != tokens[task_id]
        ),
        cancel_requested=frozenset(
            task_id
            for task_id, (fence, cancel) in changed.items()
            if cancel and fence == tokens[task_id]
        ),
    )


_EXECUTION_OUTCOMES: dict[type, ExecutionOutcome] = {
    Completed: ExecutionOutcome.COMPLETED,
    Failed: ExecutionOutcome.FAILED,
    Cancelled: ExecutionOutcome.CANCELLED,
    Released: ExecutionOutcome.INTERRUPTED,
    Deferred: ExecutionOutcome.DEFERRED,
}


def outcome_params(outcome: Outcome) -> dict[str, Any]:
    """What an outcome writes, as the parameters of the ``finish`` query: the task row's
    new status and the columns it sets (``set_error``: replace the error columns;
    ``give_back``: attempts returned), and the execution row's outcome and error."""
    params: dict[str, Any] = {
        "outcome": _EXECUTION_OUTCOMES[type(outcome)].value,
        "result": None,
        "run_at": None,
        "give_back": 0,
        "message": None,
        "set_error": False,
        "error_message": None,
        "error_type": None,
        "error_category": None,
        "x_category": None,
        "x_type": None,
        "x_message": None,
        "traceback": None,
    }
    match outcome:
        case Completed():
            params |= {"status": "completed", "result": outcome.json, "set_error": True}
        case Failed() as failed:
            category = ErrorCategory(failed.category).value
            # An error's text holds whatever the failing code put in it: stored written out
            # where storage cannot hold it as it is, so that it can always be read back.
            message = storable_text(failed.error_message)
            error_type = storable_text(failed.error_type)
            params |= {
                "status": "failed" if failed.retry_at is None else "retrying",
                "run_at": failed.retry_at,
                "set_error": True,
                "error_message": message,
                "error_type": error_type,
                "error_category": category,
                "x_category": category,
                "x_type": error_type,
                "x_message": message,
                "traceback": None if failed.traceback is None else storable_text(failed.traceback),
            }
        case Cancelled(reason=reason):
            params |= {
                "status": "cancelled",
                "message": None if reason is None else storable_text(reason),
            }
        case Released():
            params |= {"status": "pending", "give_back": 1}
        case Deferred(retry_at=retry_at, reason=reason):
            reason = storable_text(reason)
            params |= {
                "status": "retrying",
                "run_at": retry_at,
                "give_back": 1,
                "message": reason,
                "x_message": reason,
            }
    params["terminal"] = TaskStatus(params["status"]).is_terminal
    return params


def finished_record(
    claimed: TaskRecord,
    params: Mapping[str, Any],
    *,
    progress: float,
    message: str | None,
    now: float,
) -> TaskRecord:
    """The record a finish leaves behind, built from the record its claim returned and the
    finish's parameters (:func:`outcome_params`) rather than read back: while a task
    runs only its lease, progress, message and cancel flag change under it, and the
    finish clears the lease and the flag."""
    stamp = to_datetime(now)
    set_error = params["set_error"]
    category = params["error_category"] if set_error else claimed.error_category
    run_at = params["run_at"]
    # Spelled out rather than dataclasses.replace(), which costs twice as much.
    return task_record(
        id=claimed.id,
        name=claimed.name,
        task_type=claimed.task_type,
        priority=claimed.priority,
        status=TaskStatus(params["status"]),
        payload=claimed.payload,
        metadata=claimed.metadata,
        max_retries=claimed.max_retries,
        timeout_seconds=claimed.timeout_seconds,
        retry=claimed.retry,
        attempts=claimed.attempts - params["give_back"],
        lost_attempts=claimed.lost_attempts,
        max_lost_attempts=claimed.max_lost_attempts,
        idempotency_key=claimed.idempotency_key,
        queue=claimed.queue,
        depends_on=claimed.depends_on,
        on_dependency_failure=claimed.on_dependency_failure,
        rate_keys=claimed.rate_keys,
        concurrency_key=claimed.concurrency_key,
        progress=float(progress),
        message=message,
        result=loads_result(params["result"])
        if params["status"] == "completed"
        else claimed.result,
        error_message=params["error_message"] if set_error else claimed.error_message,
        error_type=params["error_type"] if set_error else claimed.error_type,
        error_category=None if category is None else ErrorCategory(category),
        owner=claimed.owner,
        lease_owner=None,
        lease_expires_at=None,
        cancel_requested=False,
        run_at=claimed.run_at if run_at is None else to_datetime(run_at),
        created_at=claimed.created_at,
        updated_at=stamp,
        started_at=claimed.started_at,
        finished_at=stamp if params["terminal"] else claimed.finished_at,
        trace_context=None,
    )


def lease_lost(token: LeaseToken) -> LeaseLostError:
    return LeaseLostError(
        f"task_id:{token.task_id} is no longer held by {token.worker_id} (fence {token.fence})"
    )


@operation(Mode.STATEMENTS)
def finish(
    claimed: Claim,
    outcome: Outcome,
    *,
    now: float,
    linked: Sequence[Step] = (),
    metrics: bool = True,
) -> Op[TaskRecord]:
    """Record the outcome of the attempt ``claimed`` holds (see
    :meth:`~vpsweb_tasks.storage.base.TaskStore.finish`). ``linked`` steps follow the
    outcome: run this in a transaction (Mode.WRITE) when there are any."""
    token = claimed.token
    lease = {"id": token.task_id, "worker": token.worker_id, "fence": token.fence, "now": now}
    # A cancel request that raced with the attempt's end wins over a failure.
    tries: list[tuple[Outcome, bool | None]] = [(outcome, None)]
    if isinstance(outcome, Failed | Released | Deferred):
        tries = [(outcome, False), (Cancelled(), True)]
    for effective, cancel_guard in tries:
        params = outcome_params(effective)
        ended = yield row("finish", **params, **lease, cancel_guard=cancel_guard, metrics=metrics)
        if ended is not None:
            for step in linked:  # noqa: UP028 (a list cannot take the results sent back)
                yield step
            if params["terminal"] and ended["dependents"]:
                yield from settle_dependents(of=[token.task_id], now=now)
            return finished_record(
                claimed.task, params, progress=ended["progress"], message=ended["message"], now=now
            )
    raise lease_lost(token)


@operation(Mode.STATEMENTS)
def complete_many(
    items: Sequence[tuple[Claim, Completed, float]], *, metrics: bool = True
) -> Op[list[TaskRecord | LeaseLostError]]:
    """Completions that arrived together, in one step for the lot (a backend that combines
    concurrent calls uses it): each answered as :func:`finish` would answer it alone, a
    second finish of one attempt with LeaseLostError. The step writes the attempts still
    held and returns them; it is atomic on its own (one statement on PostgreSQL)."""
    written = yield from write_completions(items, metrics=metrics).steps()
    return [
        found
        if isinstance(found, LeaseLostError)
        else finished_record(
            claimed.task, outcome_params(done), progress=1.0, message=found.message, now=now
        )
        for (claimed, done, now), found in zip(items, written, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Written:
    """A completion :func:`write_completions` wrote: the message its row kept, all the
    finished record (:func:`finished_record`) needs beyond the claim and the outcome."""

    message: str | None


@operation(Mode.STATEMENTS)
def write_completions(
    items: Sequence[tuple[Claim, Completed, float]], *, metrics: bool = True
) -> Op[list[Written | LeaseLostError]]:
    """:func:`complete_many` without building the finished records, for a caller that
    builds one only when something reads it."""
    encoded: list[tuple[Any, ...]] = []
    places: dict[str, int] = {}
    for place, (claimed, done, now) in enumerate(items):
        token = claimed.token
        if token.task_id not in places:  # a second finish of one task in the lot is lost
            places[token.task_id] = place
            encoded.append((token.task_id, token.worker_id, token.fence, done.json, now))
    ended = yield rows("complete_many", rows=dumps(encoded), metrics=metrics)
    held = {found["id"]: found for found in ended}
    settle = [task_id for task_id, found in held.items() if found["dependents"]]
    results: list[Written | LeaseLostError] = []
    for place, (claimed, _, _) in enumerate(items):
        found = held.get(claimed.token.task_id)
        if found is None or places[claimed.token.task_id] != place:
            results.append(lease_lost(claimed.token))
        else:
            results.append(Written(found["message"]))
    if settle:
        yield from settle_dependents(of=settle, now=max(now for _, _, now in items))
    return results


@operation(Mode.STATEMENTS)
def complete_together(
    items: Sequence[tuple[Claim, Completed, float]], *, metrics: bool = True
) -> Op[list[TaskRecord | LeaseLostError]]:
    """Completions gathered in one batch (a backend that combines concurrent finishes runs
    it): one alone is a :func:`finish`, more are :func:`complete_many`; each answered with
    its record, or the LeaseLostError of an attempt no longer held."""
    if len(items) == 1:
        ((claimed, done, now),) = items
        try:
            return [(yield from finish(claimed, done, now=now, metrics=metrics).steps())]
        except LeaseLostError as exc:
            return [exc]
    return (yield from complete_many(items, metrics=metrics).steps())


# --- workers and crash recovery ------------------------------------------------------------


@operation(Mode.READ)
def list_workers() -> Op[list[WorkerInfo]]:
    return [worker_from_row(found) for found in (yield rows("list_workers"))]


@operation(Mode.STATEMENTS)
def remove_worker(worker_id: str) -> Op[None]:
    yield count("remove_worker", worker=worker_id)


_ORPHANED = (
    "the process holding this task's callable is gone; register the task type to make it resumable"
)


@operation(Mode.WRITE)
def reap(
    *,
    now: float,
    decide: RetryDecider,
    max_lost_attempts: int,
    expired: Collection[str] = (),
) -> Op[ReapResult]:
    """Recover from dead workers (see :meth:`~vpsweb_tasks.storage.base.TaskStore.reap`)."""
    if max_lost_attempts < 1:
        raise ValueError("max_lost_attempts must be >= 1")
    if expired:
        yield count("expire_workers", ids=list(expired))
    dead = [found["worker_id"] for found in (yield rows("dead_workers", now=now))]
    requeued: list[TaskRecord] = []
    failed: list[TaskRecord] = []
    for lost in (yield rows("lost_tasks", now=now, dead=dead)):
        error: Exception = WorkerLostError(
            f"worker {lost['lease_owner']} stopped renewing its lease on task_id:{lost['id']}"
        )
        yield count(
            "lost_execution",
            id=lost["id"],
            task_type=lost["task_type"],
            attempt=lost["attempts"],
            fence=lost["fence"],
            worker=lost["lease_owner"],
            started_at=lost["started_at"],
            now=now,
            message=str(error),
            error_type=type(error).__name__,
            category=ErrorCategory.RESOURCE.value,
        )
        # A lost attempt is not a failure of the task: it is given back and counted apart,
        # against its own bound.
        attempts = lost["attempts"] - 1
        lost_attempts = lost["lost_attempts"] + 1
        bound = lost["max_lost_attempts"]
        if bound is None:
            bound = max_lost_attempts
        # A closure whose process died cannot run again; a cancel request wins.
        orphan = lost["owner"] is not None and (
            lost["owner"] in dead or lost["owner"] == lost["lease_owner"]
        )
        retry_at = None
        if lost["cancel_requested"]:
            status = TaskStatus.CANCELLED
        elif orphan:
            status = TaskStatus.FAILED
            error = HandlerUnavailableError(
                f"the process holding the callable of task_id:{lost['id']} died"
            )
        elif lost_attempts >= bound:
            status = TaskStatus.FAILED
            error = WorkerLostError(
                f"task_id:{lost['id']} was lost with its worker {lost_attempts} times"
                f" (max_lost_attempts {bound}); the last, {lost['lease_owner']}, stopped"
                " renewing its lease"
            )
        else:
            after = replace(task_from_row(lost), attempts=attempts, lost_attempts=lost_attempts)
            retry_at = decide(after)
            status = TaskStatus.FAILED if retry_at is None else TaskStatus.RETRYING
        ended = yield row(
            "end_lost_attempt",
            id=lost["id"],
            status=status.value,
            now=now,
            retry_at=retry_at,
            attempts=attempts,
            lost_attempts=lost_attempts,
            message=str(error),
            error_type=type(error).__name__,
            category=ErrorCategory.RESOURCE.value,
        )
        (requeued if status is TaskStatus.RETRYING else failed).append(task_from_row(ended))
    orphans = yield rows(
        "fail_orphans",
        now=now,
        dead=dead,
        message=_ORPHANED,
        error_type=HandlerUnavailableError.__name__,
        category=ErrorCategory.RESOURCE.value,
    )
    failed.extend(task_from_row(found) for found in orphans)
    if dead:
        yield count("delete_workers", ids=dead)
    ended = [task.id for task in failed]  # failed or cancelled: their dependents settle
    # Every task waiting on dependencies too: a settle lost with its process is made up.
    blocked = [r["id"] for r in (yield rows("blocked_tasks", blocked=BLOCKED_RUN_AT))]
    released, _ = yield from settle_dependents(of=ended, ids=blocked, now=now)
    return ReapResult(requeued=requeued, failed=failed, expired_workers=dead, released=released)


# --- progress ------------------------------------------------------------------------------


@operation(Mode.WRITE)
def save_progress(latest: str, history: str, *, history_limit: int) -> Op[None]:
    """``latest``, the newest report of each task (one a task), onto the task's row; the
    reports of ``history`` (the earlier steps, then ``latest``) into the history, of which
    the newest ``history_limit`` rows a task are kept. Both are JSON arrays of
    :data:`ProgressRow` (see :func:`progress_rows`); reports of tasks no longer running
    are left out by the statements themselves: nothing is read back, whatever the
    number."""
    yield count("save_progress", rows=latest)
    yield count("append_progress", rows=history)
    yield count("trim_progress", rows=latest, keep=history_limit)


def progress_rows(
    snapshots: Sequence[ProgressSnapshot],
) -> tuple[list[ProgressRow], list[ProgressRow]]:
    """Snapshots (several a task allowed, oldest first) as the rows :func:`save_progress`
    takes, to be encoded: the latest of each task, and the others in their order."""
    latest: dict[str, ProgressRow] = {}
    earlier: list[ProgressRow] = []
    for snapshot in snapshots:
        row = progress_row(
            snapshot.task_id, snapshot.progress, snapshot.message, snapshot.metadata, snapshot.at
        )
        before = latest.pop(snapshot.task_id, None)
        if before is not None:
            earlier.append(before)
        latest[snapshot.task_id] = row
    return list(latest.values()), earlier


@operation(Mode.READ)
def progress_history(task_id: str, *, limit: int) -> Op[list[ProgressSnapshot]]:
    if not matchable(task_id):
        return []
    found = yield rows("progress_history", task_id=task_id, limit=limit)
    return [progress_from_row(each) for each in found]


# --- cancel, pause, requeue ----------------------------------------------------------------


@operation(Mode.WRITE)
def request_cancel(task_id: str, *, now: float) -> Op[TaskRecord]:
    status = (yield value("task_status", id=task_id)) if matchable(task_id) else None
    if status is None:
        raise TaskNotFoundError(task_id)
    current = TaskStatus(status)
    if current.is_terminal:
        raise TaskStateError(task_id, current.value, "cancel")
    if current is TaskStatus.RUNNING:
        return task_from_row((yield row("request_cancel_running", id=task_id, now=now)))
    cancelled = task_from_row((yield row("cancel_task", id=task_id, now=now)))
    yield from settle_dependents(of=[task_id], now=now)
    return cancelled


@operation(Mode.READ)
def cancel_requests(*, worker_id: str, running: Collection[LeaseToken]) -> Op[frozenset[str]]:
    """Which of ``running`` (attempts ``worker_id`` holds) have a cancel requested: what
    :func:`heartbeat` reports, as one read of the worker's own leases (an index of the
    running tasks by lease owner), for a worker that hears only that something changed."""
    fences = {token.task_id: token.fence for token in running}
    if not fences:
        return frozenset()
    found = yield rows("cancel_requests", worker=worker_id)
    return frozenset(each["id"] for each in found if fences.get(each["id"]) == each["fence"])


@operation(Mode.STATEMENTS)
def cancel_waiting(*, now: float) -> Op[list[str]]:
    # Tasks waiting on dependencies are among them; a running task's dependents were.
    return [found["id"] for found in (yield rows("cancel_waiting", now=now))]


@operation(Mode.STATEMENTS)
def requeue_failed(
    *,
    now: float,
    task_ids: Collection[str] | None,
    category: ErrorCategory | None,
    task_type: str | None,
) -> Op[list[TaskRecord]]:
    if not matchable(task_type):
        return []
    found = yield rows(
        "requeue_failed",
        now=now,
        ids=None if task_ids is None else [each for each in task_ids if matchable(each)],
        category=None if category is None else ErrorCategory(category).value,
        task_type=task_type,
    )
    return [task_from_row(each) for each in found]


@operation(Mode.STATEMENTS)
def set_paused(paused: bool, *, reason: str | None) -> Op[None]:
    if paused:
        yield count("set_paused", value=dumps({"reason": reason}))
    else:
        yield count("clear_paused")


@operation(Mode.READ)
def get_paused() -> Op[tuple[bool, str | None]]:
    stored = yield value("get_paused")
    if stored is None:
        return False, None
    return True, loads(stored).get("reason")


# --- shared circuit breakers -----------------------------------------------------------------


@operation(Mode.STATEMENTS)
def save_breaker_state(state: SharedBreakerState) -> Op[None]:
    yield count("save_breaker_state", **asdict(state))


@operation(Mode.READ)
def load_breaker_states() -> Op[list[SharedBreakerState]]:
    return [breaker_from_row(found) for found in (yield rows("load_breaker_states"))]


# --- schedules ------------------------------------------------------------------------------

#: Makes the task a schedule's tick submits: ``make_task(schedule, tick_at)``.
TaskMaker = Callable[[ScheduleRecord, float], NewTask]


@operation(Mode.READ)
def schedule_fingerprints() -> Op[dict[str, str | None]]:
    """Each stored schedule's fingerprint (None: added at runtime), by name."""
    return {found["name"]: found["fingerprint"] for found in (yield rows("schedule_fingerprints"))}


def changed_definitions(
    defined: Sequence[tuple[str, ScheduleDefinition, str]], stored: Mapping[str, str | None]
) -> list[tuple[str, ScheduleDefinition, str]]:
    """The definitions of code and config that :func:`define_schedules` would write: new
    ones, and those whose definition differs from the one stored (a manager reads first,
    so an unchanged start writes nothing: a read-only database still opens)."""
    return [each for each in defined if stored.get(each[0], "") != each[1].fingerprint()]


@operation(Mode.WRITE)
def define_schedules(
    defined: Sequence[tuple[str, ScheduleDefinition, str]], *, now: float
) -> Op[list[str]]:
    """Write the schedules code and config define (``(name, definition, origin)``), as a
    manager does at start: a new one is added, one whose definition changed is replaced
    (its ``enabled`` and next run with it), an unchanged one keeps its runtime state
    (paused or resumed, its next run). The names written."""
    written = []
    for name, definition, origin in defined:
        anchor_at, next_run_at = first_run(definition, now)
        params = schedule_params(
            name, definition, origin=origin, anchor_at=anchor_at, next_run_at=next_run_at, now=now
        )
        if (yield count("define_schedule", **params)):
            written.append(name)
    return written


@operation(Mode.WRITE)
def add_schedule(name: str, definition: ScheduleDefinition, *, now: float) -> Op[ScheduleRecord]:
    """Add a schedule at runtime; DuplicateScheduleError if the name is taken."""
    anchor_at, next_run_at = first_run(definition, now)
    params = schedule_params(
        name, definition, origin="api", anchor_at=anchor_at, next_run_at=next_run_at, now=now
    )
    if not (yield count("add_schedule", **params)):
        raise DuplicateScheduleError(name)
    return schedule_from_row((yield row("get_schedule", name=name)))


@operation(Mode.READ)
def list_schedules() -> Op[list[ScheduleRecord]]:
    return [schedule_from_row(found) for found in (yield rows("list_schedules"))]


@operation(Mode.READ)
def get_schedule(name: str) -> Op[ScheduleRecord | None]:
    found = yield row("get_schedule", name=name)
    return None if found is None else schedule_from_row(found)


@operation(Mode.WRITE)
def set_schedule_enabled(name: str, enabled: bool, *, now: float) -> Op[ScheduleRecord]:
    """Pause or resume a schedule (ScheduleNotFoundError if there is none). A resumed one
    goes on from its first tick after ``now``: the ticks it slept through while paused
    were not missed, they were not wanted."""
    found = yield row("lock_schedule", name=name)
    if found is None:
        raise ScheduleNotFoundError(name)
    current = schedule_from_row(found)
    next_run_at = current.next_run_at
    if enabled and not current.enabled:
        next_run_at = current.cadence().after(now)
    changed = yield row(
        "set_schedule_enabled", name=name, enabled=enabled, next_run_at=next_run_at, now=now
    )
    return schedule_from_row(changed)


@operation(Mode.STATEMENTS)
def delete_schedule(name: str) -> Op[None]:
    """Delete a schedule and its ticks (ScheduleNotFoundError if there is none)."""
    if not (yield count("delete_schedule", name=name)):
        raise ScheduleNotFoundError(name)


@operation(Mode.READ)
def next_schedule_at() -> Op[float | None]:
    """When the next enabled schedule is due (None: no schedule is enabled)."""
    found = yield value("next_schedule_at")
    return None if found is None else float(found)


@operation(Mode.WRITE)
def fire_schedules(
    *,
    now: float,
    grace: float,
    missed: Missed,
    worker_id: str,
    make_task: TaskMaker,
    limit: int | None,
) -> Op[list[ScheduleFiring]]:
    """Fire every enabled schedule that is due at ``now``, in one transaction that holds
    their rows (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite's writers take turns), so a
    tick fires once across every process on the database:

    * which of the due ticks fire is :func:`~vpsweb_tasks.schedules.plan`'s answer (ticks
      more than ``grace`` seconds late follow the schedule's missed-tick policy, else
      ``missed``);
    * each tick is a ``schedule_ticks`` row, whose key (schedule, tick) is unique: a tick
      fired already is not fired again;
    * its task (``make_task(schedule, tick)``) is stored as a submit stores one
      (:func:`add_tasks`, with ``limit`` on the waiting tasks); a full queue leaves the
      tick fired without a task;
    * ``next_run_at`` moves on to the first tick after ``now``."""
    firings = []
    for found in (yield rows("lock_due_schedules", now=now)):
        schedule = schedule_from_row(found)
        planned = plan(
            schedule.cadence(),
            schedule.next_run_at,
            now=now,
            grace=grace,
            missed=schedule.definition.missed or missed,
        )
        stored: list[NewTask] = []
        ticks: list[ScheduleTick] = []
        last_tick, last_task = schedule.last_tick_at, schedule.last_task_id
        for tick in planned.ticks:
            task = make_task(schedule, tick)
            taken = yield count(
                "insert_schedule_tick",
                schedule=schedule.name,
                tick_at=tick,
                task_id=task.id,
                now=now,
                worker=worker_id,
            )
            if not taken:
                continue
            (refused,) = yield from add_tasks([task], limit=limit).steps()
            if refused is None:
                stored.append(task)
            else:
                yield count("tick_without_task", schedule=schedule.name, tick_at=tick)
            last_tick, last_task = tick, (task.id if refused is None else None)
            ticks.append(ScheduleTick(schedule.name, tick, last_task, now, worker_id))
        yield count(
            "advance_schedule",
            name=schedule.name,
            next_run_at=planned.next_run_at,
            last_tick_at=last_tick,
            last_task_id=last_task,
            now=now,
        )
        firings.append(
            ScheduleFiring(
                schedule=schedule.name,
                tasks=tuple(stored),
                ticks=tuple(ticks),
                missed_since=planned.missed_since,
                next_run_at=planned.next_run_at,
            )
        )
    return firings


@operation(Mode.READ)
def schedule_ticks(name: str, *, since: float = 0.0, limit: int = 1000) -> Op[list[ScheduleTick]]:
    """The ticks of a schedule fired (and not yet cleaned up) since ``since``, oldest
    first."""
    found = yield rows("schedule_ticks", schedule=name, since=since, limit=limit)
    return [
        ScheduleTick(
            each["schedule"],
            float(each["tick_at"]),
            each["task_id"],
            float(each["fired_at"]),
            each["worker_id"],
        )
        for each in found
    ]


@operation(Mode.STATEMENTS)
def delete_ticks(*, before: float) -> Op[None]:
    """Forget the ticks fired before ``before`` (next_run_at keeps them from firing
    again)."""
    yield count("cleanup_schedule_ticks", before=before)


# --- statistics, system metrics, housekeeping (run through TaskStore.run) ---------------------


@operation(Mode.READ)
def count_tasks_by_type() -> Op[dict[str, dict[TaskStatus, int]]]:
    """Tasks per type and status (types with no tasks left are omitted)."""
    counts: dict[str, dict[TaskStatus, int]] = {}
    for found in (yield rows("count_by_type")):
        per_type = counts.setdefault(found["task_type"], dict.fromkeys(TaskStatus, 0))
        per_type[TaskStatus(found["status"])] = int(found["n"])
    return counts


@operation(Mode.SNAPSHOT)
def metrics_window(*, since: float, sample_limit: int = 10_000) -> Op[MetricsWindow]:
    """Finished attempts recorded since ``since``, grouped; a sample of at most
    ``sample_limit`` completed durations; and the tasks dead-lettered since then."""
    groups = [
        AttemptGroup(
            task_type=found["task_type"],
            outcome=found["outcome"],
            category=found["error_category"],
            retry=bool(found["retry"]),
            count=int(found["n"]),
            duration_total=float(found["duration"] or 0.0),
            wait_total=float(found["wait"] or 0.0),
        )
        for found in (yield rows("metrics_groups", since=since))
    ]
    durations = [
        float(found["duration_seconds"])
        for found in (yield rows("metrics_durations", since=since, limit=sample_limit))
    ]
    dead = yield value("dead_lettered_since", since=since)
    return MetricsWindow(since=since, groups=groups, durations=durations, dead_lettered=int(dead))


@operation(Mode.STATEMENTS)
def add_resource_sample(sample: ResourceSample) -> Op[None]:
    """Persist one :class:`~vpsweb_tasks.models.ResourceSample` to ``system_metrics``."""
    yield count("add_resource_sample", **asdict(sample))


@operation(Mode.READ)
def resource_samples(*, since: float | None = None, limit: int = 1000) -> Op[list[ResourceSample]]:
    """Stored readings, oldest first: the most recent ``limit`` since ``since``."""
    found = yield rows("resource_samples", since=0.0 if since is None else since, limit=limit)
    return [sample_from_row(each) for each in found]


@operation(Mode.READ)
def ping() -> Op[None]:
    """A trivial round trip: raises if the database cannot be reached."""
    yield value("ping")


@operation(Mode.STATEMENTS)
def check_writes(*, now: float) -> Op[None]:
    """The storage write check: the cheapest honest write, one key of ``queue_state``
    upserted with the time. It commits through the journal like any write, so it fails
    where a submit would (a full disk, a read-only file or session, a held lock), and
    keeps one row whatever how often it runs."""
    yield count("write_check", at=now)


@operation(Mode.STATEMENTS)
def delete_finished(*, before: float) -> Op[int]:
    """Delete up to one batch of terminal tasks that finished before ``before`` (their
    executions, metrics, progress and extension rows go with them); how many."""
    return int((yield count("cleanup_tasks", before=before)))


@operation(Mode.STATEMENTS)
def delete_retry_budget(*, before: float) -> Op[None]:
    """Forget the retry-budget counts of seconds before ``before``."""
    yield count("delete_retry_budget", before=int(before))


@operation(Mode.STATEMENTS)
def delete_samples(*, before: float) -> Op[None]:
    yield count("cleanup_samples", before=before)
