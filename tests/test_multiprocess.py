"""Several real worker processes on one database, on each backend.

Workers are ``python -m vpsweb_tasks.cli worker --import tests.mp_tasks`` processes; this
process is an API-only manager (``background_tasks.enabled: false``) that submits and
cancels. Synchronisation is by the workers' ``READY`` lines, the run log that
tests/mp_tasks.py appends to, and database state, each polled with a deadline.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.collector import YOUNG_THRESHOLD
from vpsweb_tasks.models import ExecutionOutcome, TaskRecord
from vpsweb_tasks.storage import logic

from .mp_support import Worker, api, poll, runs, start_worker, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

__all__ = ["api", "start_worker"]  # the fixtures, imported to be used here

#: Python's own threshold of the youngest generation, as a fresh process has it.
DEFAULT_YOUNG = 700


async def run_one(api: TaskManager, task_type: str) -> TaskRecord:
    """Submit one task of ``task_type`` and wait (polling storage) until a worker ends it."""
    context = await api.submit(TaskDefinition(name=task_type, task_type=task_type))

    async def finished() -> bool:
        task = await api.store.get_task(context.task_id)
        return task is not None and task.status.is_terminal

    await poll(finished, timeout=30)
    task = await api.store.get_task(context.task_id)
    assert task is not None
    return task


async def test_three_workers_run_2000_tasks_and_survive_a_sigkill(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[[Path], Worker],
    tmp_path: Path,
) -> None:
    count = 2000
    config = write_config(
        tmp_path / "worker.yaml",
        storage,
        max_concurrent_jobs=8,
        queue_check_interval=0.2,
        lease_seconds=3.0,
    )
    workers = [start_worker(config) for _ in range(3)]
    for worker in workers:
        await worker.ready()
    victim, survivors = workers[0], workers[1:]

    rng = random.Random(7)
    definition = TaskDefinition(name="work", task_type="mp_work", max_retries=3)
    submitted: dict[str, int] = {}

    async def submit(numbers: range) -> None:
        for n in numbers:
            # Every 20th task is long: one held by the victim is certainly still running
            # when the kill lands (short ones may finish between the check and the signal),
            # and there are long ones to the end, however slowly a loaded machine goes.
            seconds = 1.0 if n % 20 == 0 else rng.uniform(0.0, 0.02)
            context = await api.submit(definition, n=n, seconds=seconds)
            submitted[context.task_id] = n

    async with anyio.create_task_group() as tg:
        for start in range(0, count, 250):
            tg.start_soon(submit, range(start, start + 250))

    # Kill the victim mid-run: once a quarter of the work is done and it holds tasks.
    async def victim_is_busy() -> bool:
        counts = await api.store.count_tasks()
        if counts[TaskStatus.COMPLETED] < count // 4:
            return False
        running = await api.store.list_tasks(statuses=[TaskStatus.RUNNING], limit=1000)
        return any(
            task.lease_owner == victim.worker_id and task.payload["seconds"] >= 1.0
            for task in running
        )

    await poll(victim_is_busy, timeout=60)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    assert victim.process.returncode == -signal.SIGKILL

    async def all_finished() -> bool:
        counts = await api.store.count_tasks()
        return sum(counts[s] for s in TaskStatus if s.is_terminal) == count

    await poll(all_finished, timeout=120, every=0.1)

    # Every task completed, once, with its own result; none lost.
    finals = await api.store.get_tasks(list(submitted))
    assert len(finals) == count
    assert {t.status for t in finals} == {TaskStatus.COMPLETED}
    assert {t.id: t.result["n"] for t in finals} == submitted
    executions = {task_id: await api.store.list_executions(task_id) for task_id in submitted}
    re_run: list[str] = []
    for task_id, attempts in executions.items():
        outcomes = [e.outcome for e in attempts]
        assert outcomes.count(ExecutionOutcome.COMPLETED) == 1, (task_id, outcomes)
        assert outcomes[-1] is ExecutionOutcome.COMPLETED
        lost = [e for e in attempts if e.outcome is ExecutionOutcome.LOST]
        assert all(e.worker_id == victim.worker_id for e in lost), task_id
        assert len(lost) == len(attempts) - 1, (task_id, outcomes)  # nothing else failed
        if lost:
            assert attempts[-1].worker_id != victim.worker_id
            re_run.append(task_id)
    assert re_run, "the victim held tasks when it was killed: they ran again elsewhere"

    # The handlers' own log: each task returned at least once; a second return only ever
    # came from the killed process (killed after its handler returned, before it wrote).
    log = runs(tmp_path / "runs.log")
    done = Counter(task_id for word, task_id, _ in log if word == "DONE")
    assert set(done) == set(submitted)
    survivor_pids = {w.process.pid for w in survivors}
    for task_id, times in done.items():
        if times > 1:
            by = [pid for word, t, pid in log if word == "DONE" and t == task_id]
            assert by.count(victim.process.pid) == times - 1, (task_id, by)
    for task_id in re_run:
        assert any(w == "START" and t == task_id and p in survivor_pids for w, t, p in log)

    for worker in survivors:
        assert worker.process.poll() is None, worker.stderr()
        assert "database is locked" not in worker.stderr()
        assert await worker.stop() == 0, worker.stderr()
    # The dead worker's row was reaped; the others removed theirs on the way out.
    assert [w.worker_id for w in await api.store.list_workers()] == [api.worker_id]


#: The exactly-once schedule: a tick every quarter second (the issue's "every second for
#: 20 s", four times as fast so the suite stays quick), ten ticks before the SIGKILL and
#: ten after.
BEAT = 0.25
TICKS_EACH_SIDE = 10


async def test_three_workers_fire_each_tick_of_a_shared_schedule_once_through_a_sigkill(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[[Path], Worker],
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "worker.yaml",
        storage,
        lease_seconds=3.0,
        schedules={
            "beat": {"task_type": "mp_work", "every": BEAT, "payload": {"seconds": 0, "n": 0}}
        },
    )
    workers = [start_worker(config) for _ in range(3)]
    for worker in workers:
        await worker.ready()
    victim = workers[0]

    async def ticks() -> list[Any]:
        return await api.store.run(logic.schedule_ticks("beat"))

    async def fired(at_least: int) -> bool:
        return len(await ticks()) >= at_least

    await poll(lambda: fired(TICKS_EACH_SIDE), timeout=30, every=0.05)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    killed_at = time.time()
    await poll(lambda: fired(2 * TICKS_EACH_SIDE), timeout=30, every=0.05)
    await api.pause_schedule("beat")
    schedule = await api.get_schedule("beat")

    # Consecutive ticks from the first after the schedule was made: none missed, none
    # doubled (the table's key would refuse a double; the count below checks the tasks).
    fired_ticks = await ticks()
    steps = [round((t.tick_at - schedule.anchor_at) / BEAT) for t in fired_ticks]
    assert steps == list(range(1, len(steps) + 1)), steps
    assert [t.tick_at for t in fired_ticks] == [schedule.anchor_at + k * BEAT for k in steps]
    assert len(steps) >= 2 * TICKS_EACH_SIDE
    # Each tick submitted exactly one task, and only ticks did.
    tasks = await api.store.list_tasks(task_type="mp_work", limit=1000)
    assert sorted(t.id for t in tasks) == sorted(str(t.task_id) for t in fired_ticks)
    assert len({t.metadata["tick"] for t in tasks}) == len(tasks)
    # The workers took turns; the dead one fired nothing after the kill.
    ids = {w.worker_id for w in workers}
    assert {t.worker_id for t in fired_ticks} <= ids
    assert all(t.worker_id != victim.worker_id for t in fired_ticks if t.fired_at > killed_at)

    async def all_ran() -> bool:
        done = await api.store.get_tasks([t.id for t in tasks])
        return all(t.status is TaskStatus.COMPLETED for t in done)

    await poll(all_ran, timeout=30, every=0.1)


async def test_a_cancel_from_an_api_process_stops_a_task_in_a_worker_process(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[[Path], Worker],
    tmp_path: Path,
) -> None:
    # Polling and heartbeats would take a minute: only notices can wake the worker in
    # time, both for the submit and for the cancel (PostgreSQL's NOTIFY; on SQLite the
    # watch of the file's data version, on which the worker looks for cancel requests).
    interval, lease, bound = 60.0, 180.0, 2.0
    config = write_config(
        tmp_path / "worker.yaml", storage, queue_check_interval=interval, lease_seconds=lease
    )
    worker = start_worker(config)
    await worker.ready()
    run_log = tmp_path / "runs.log"

    context = await api.submit(TaskDefinition(name="block", task_type="mp_block"))

    async def started() -> bool:
        return ("START", context.task_id, worker.process.pid) in runs(run_log)

    await poll(started, timeout=10.0)  # well under a minute: woken by the submit

    async def cancelled() -> bool:
        record = await api.store.get_task(context.task_id)
        assert record is not None
        return record.status is TaskStatus.CANCELLED

    requested = time.monotonic()
    record = await api.cancel(context.task_id)
    assert (record.status, record.cancel_requested) == (TaskStatus.RUNNING, True)
    await poll(cancelled, timeout=30)
    elapsed = time.monotonic() - requested
    assert elapsed < bound, f"cancel took {elapsed:.2f}s"
    # The work itself was stopped, in the worker process.
    assert ("STOPPED", context.task_id, worker.process.pid) in runs(run_log)
    [execution] = await api.store.list_executions(context.task_id)
    assert (execution.outcome, execution.worker_id) == (
        ExecutionOutcome.CANCELLED,
        worker.worker_id,
    )
    assert await worker.stop() == 0, worker.stderr()


async def test_workers_honour_a_pause_made_by_an_api_process(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[[Path], Worker],
    tmp_path: Path,
) -> None:
    interval = 0.3
    config = write_config(
        tmp_path / "worker.yaml", storage, queue_check_interval=interval, lease_seconds=3.0
    )
    worker = start_worker(config)
    await worker.ready()
    definition = TaskDefinition(name="work", task_type="mp_work")

    def finished(task_ids: list[str]) -> Callable[[], Any]:
        async def check() -> bool:
            tasks = await api.store.get_tasks(task_ids)
            return all(t.status is TaskStatus.COMPLETED for t in tasks)

        return check

    warm_up = await api.submit(definition, n=0, seconds=0)
    await poll(finished([warm_up.task_id]), timeout=10)

    await api.pause("maintenance window")
    paused_at = time.time()
    # Keep submitting: on PostgreSQL every submit wakes the worker through a notice, and
    # the pause must hold all the same, from one queue_check_interval after it was made.
    settled = paused_at + 2 * interval  # one interval, plus as much for a claim in flight
    late: list[str] = []
    while time.time() < paused_at + 6 * interval:
        context = await api.submit(definition, n=1, seconds=0)
        if time.time() > settled:
            late.append(context.task_id)
        await anyio.sleep(0.02)  # pacing the submits, not synchronisation
    assert late
    assert {t.status for t in await api.store.get_tasks(late)} == {TaskStatus.PENDING}

    await api.resume()
    resumed_at = time.time()
    await poll(finished(late), timeout=30)
    for task_id in late:
        [execution] = await api.store.list_executions(task_id)
        assert execution.started_at.timestamp() >= resumed_at
    assert await worker.stop() == 0, worker.stderr()


@pytest.mark.parametrize(
    ("args", "expected"),
    [((), "uvloop.Loop"), (("--loop", "asyncio"), "asyncio.unix_events._UnixSelectorEventLoop")],
)
async def test_a_worker_runs_on_uvloop_when_installed_unless_told_otherwise(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    args: tuple[str, ...],
    expected: str,
) -> None:
    pytest.importorskip("uvloop")  # the http extra brings it
    worker = start_worker(write_config(tmp_path / "worker.yaml", storage), *args)
    await worker.ready()
    task = await run_one(api, "mp_loop")
    assert (task.status, task.result) == (TaskStatus.COMPLETED, expected)
    assert await worker.stop() == 0


@pytest.mark.parametrize(("background", "tuned"), [({}, True), ({"gc_tuning": False}, False)])
async def test_a_worker_tunes_the_garbage_collector_unless_its_config_says_not_to(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    background: dict[str, Any],
    tuned: bool,
) -> None:
    worker = start_worker(write_config(tmp_path / "worker.yaml", storage, **background))
    await worker.ready()
    task = await run_one(api, "mp_gc")
    assert task.status is TaskStatus.COMPLETED, worker.stderr()
    if tuned:
        assert task.result["young"] == YOUNG_THRESHOLD
        assert task.result["frozen"] > 0
    else:
        assert task.result == {"young": DEFAULT_YOUNG, "frozen": 0}
    assert await worker.stop() == 0
