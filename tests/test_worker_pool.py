"""The worker pool, ``vpsweb-tasks worker --processes N``, with real processes.

The pool is a ``python -m vpsweb_tasks.cli worker --processes 2 --import tests.mp_tasks``
process; this process is an API-only manager that submits. Tasks are ``mp_flow`` steps
that block until a file the test makes exists, so which child holds which task is
known before anything is killed or stopped. Synchronisation is by the pool's stdout
lines (``READY``, ``REPLACED``), its stderr (the children's log lines), the run log of
tests/mp_tasks.py and database state, each polled with a deadline.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.models import ExecutionOutcome, TaskRecord

from . import mp_support
from .mp_support import WorkerProcess, api, poll, processes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

__all__ = ["api"]  # the fixture, imported to be used here


def write_config(path: Path, storage: dict[str, Any], **background: Any) -> Path:
    # INFO: the children's drain lines are what the stop tests wait for.
    options = {"queue_check_interval": 0.2, "pause_on_overload": False, **background}
    return mp_support.write_config(path, storage, level="INFO", **options)


class Pool(WorkerProcess):
    """One ``vpsweb-tasks worker --processes N`` process."""

    async def ready(self) -> list[str]:
        """The children's worker ids, from the pool's ``READY`` line."""
        return await self.ready_ids(timeout=60.0)


@pytest.fixture
def start_pool(tmp_path: Path) -> Iterator[Callable[..., Pool]]:
    with processes(tmp_path, Pool) as start:
        yield start


async def submit_blocked(api: TaskManager, release: Path, count: int) -> list[str]:
    """``count`` tasks that run until the file ``release`` exists."""
    definition = TaskDefinition(name="blocked", task_type="mp_flow")
    ids = []
    for n in range(count):
        context = await api.submit(definition, name=f"step {n}", release=str(release))
        ids.append(context.task_id)
    return ids


async def running_by_owner(api: TaskManager) -> Counter[str | None]:
    running = await api.store.list_tasks(statuses=[TaskStatus.RUNNING], limit=100)
    return Counter(task.lease_owner for task in running)


async def until_each_holds(api: TaskManager, children: list[str], count: int) -> None:
    """Wait until each child runs ``count`` tasks (and no one else runs any)."""

    async def each_holds() -> bool:
        return await running_by_owner(api) == Counter(dict.fromkeys(children, count))

    await poll(each_holds)


def run_log(tmp_path: Path) -> Counter[tuple[str, str]]:
    """(word, task id) of each line of tests/mp_tasks.py's run log."""
    path = tmp_path / "runs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter((line.split()[0], line.split()[1]) for line in lines)


async def finals(api: TaskManager, ids: list[str]) -> list[TaskRecord]:
    async def done() -> bool:
        return all(t.status.is_terminal for t in await api.store.get_tasks(ids))

    await poll(done)
    return await api.store.get_tasks(ids)


# --- 1. a pool of two runs a batch -----------------------------------------------------------


async def test_a_pool_of_two_runs_a_batch_on_both_children(
    api: TaskManager, storage: dict[str, Any], start_pool: Callable[..., Pool], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "pool.yaml", storage, max_concurrent_jobs=2)
    pool = start_pool(config, "--processes", "2")
    children = await pool.ready()
    assert len(set(children)) == 2
    # `vpsweb-tasks status` lists the workers table: each child is a worker of its own.
    workers = {w.worker_id: w for w in await api.store.list_workers()}
    assert set(children) <= set(workers)
    assert len({workers[child].pid for child in children} | {pool.process.pid}) == 3

    release = tmp_path / "release"
    ids = await submit_blocked(api, release, 4)

    await until_each_holds(api, children, 2)  # two at once each: both children took some
    release.touch()
    records = await finals(api, ids)
    assert {t.status for t in records} == {TaskStatus.COMPLETED}
    ran_on: Counter[str] = Counter()
    for task_id in ids:
        ran_on.update(execution.worker_id for execution in await api.list_executions(task_id))
    assert ran_on == Counter(dict.fromkeys(children, 2))

    pool.process.send_signal(signal.SIGTERM)
    assert await pool.wait() == 0, pool.stderr()
    assert [w.worker_id for w in await api.store.list_workers()] == [api.worker_id]


# --- 2. a child killed is replaced, its tasks recovered ---------------------------------------


async def test_a_child_killed_is_replaced_and_its_tasks_recovered(
    api: TaskManager, storage: dict[str, Any], start_pool: Callable[..., Pool], tmp_path: Path
) -> None:
    # A long lease: the tasks come back because the pool says the child died, not
    # because its lease ran out.
    config = write_config(tmp_path / "pool.yaml", storage, max_concurrent_jobs=2, lease_seconds=600)
    pool = start_pool(config, "--processes", "2")
    victim, survivor = await pool.ready()
    release = tmp_path / "release"
    ids = await submit_blocked(api, release, 4)

    async def each_child_runs_two() -> bool:  # claimed, and their handlers started
        started = sum(run_log(tmp_path)["START", task_id] for task_id in ids)
        return started == 4 and await running_by_owner(api) == Counter({victim: 2, survivor: 2})

    await poll(each_child_runs_two)
    held = [t.id for t in await api.store.get_tasks(ids) if t.lease_owner == victim]
    pid = {w.worker_id: w.pid for w in await api.store.list_workers()}[victim]
    os.kill(pid, signal.SIGKILL)

    word, old, new = await pool.line()
    assert (word, old) == ("REPLACED", victim), pool.stderr()
    assert new not in (victim, survivor)

    async def recovered() -> bool:  # the victim's tasks run again, on the new child
        return await running_by_owner(api) == Counter({new: 2, survivor: 2})

    await poll(recovered)
    release.touch()
    records = await finals(api, ids)
    assert {t.status for t in records} == {TaskStatus.COMPLETED}
    for task_id in ids:
        attempts = await api.list_executions(task_id)
        outcomes = [(e.outcome, e.worker_id) for e in attempts]
        if task_id in held:  # the lost attempt, then the one that completed
            assert outcomes == [
                (ExecutionOutcome.LOST, victim),
                (ExecutionOutcome.COMPLETED, new),
            ]
        else:
            assert outcomes == [(ExecutionOutcome.COMPLETED, survivor)]
    # Each ran to its end exactly once; the victim's were started twice.
    log = run_log(tmp_path)
    assert all(log["DONE", task_id] == 1 for task_id in ids)
    assert sorted(log["START", task_id] for task_id in ids) == [1, 1, 2, 2]

    pool.process.send_signal(signal.SIGTERM)
    assert await pool.wait() == 0, pool.stderr()
    # The others removed their rows on the way out. The victim's may be back: a heartbeat
    # it sent just before the kill can reach PostgreSQL after the reap (the next reap on
    # this host removes it again, its process being gone).
    left = {w.worker_id for w in await api.store.list_workers()} - {victim}
    assert left == {api.worker_id}


# --- 3. SIGTERM drains every child -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("hurry", [False, True], ids=["drain", "second-sigterm"])
async def test_sigterm_drains_every_child(
    hurry: bool,
    api: TaskManager,
    storage: dict[str, Any],
    start_pool: Callable[..., Pool],
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "pool.yaml", storage, max_concurrent_jobs=2, shutdown_grace_period=600
    )
    pool = start_pool(config, "--processes", "2")
    children = await pool.ready()
    release = tmp_path / "release"
    ids = await submit_blocked(api, release, 6)

    await until_each_holds(api, children, 2)
    running = {t.id for t in await api.store.get_tasks(ids) if t.status is TaskStatus.RUNNING}

    pool.process.send_signal(signal.SIGTERM)

    async def both_draining() -> bool:
        return pool.stderr().count("shutting down: waiting up to 600s for 2 running") == 2

    await poll(both_draining)
    if hurry:  # the hard stop: running tasks go back to the queue now
        pool.process.send_signal(signal.SIGTERM)
    else:  # running tasks finish within the grace period
        release.touch()
    assert await pool.wait() == 0, pool.stderr()

    records = {t.id: t for t in await api.store.get_tasks(ids)}
    assert TaskStatus.RUNNING not in {t.status for t in records.values()}
    waiting = {i for i, t in records.items() if t.status is TaskStatus.PENDING}
    if hurry:
        assert waiting == set(ids)  # released, none lost
        for task_id in running:
            attempts = await api.list_executions(task_id)
            assert [e.outcome for e in attempts] == [ExecutionOutcome.INTERRUPTED]
            assert records[task_id].attempts == 0  # the attempt was given back
    else:
        completed = {i for i, t in records.items() if t.status is TaskStatus.COMPLETED}
        assert completed == running
        assert waiting == set(ids) - running  # draining children claimed no more
    assert [w.worker_id for w in await api.store.list_workers()] == [api.worker_id]


# --- 4. a child that cannot start stops the pool ---------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_child_that_cannot_start_stops_the_pool(
    storage: dict[str, Any], start_pool: Callable[..., Pool], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "pool.yaml", storage)
    pool = start_pool(config, "--processes", "2", "--import", "tests.no_such_module")
    assert await pool.line() == []  # no READY line
    assert await pool.wait() == 2
    stderr = pool.stderr()
    assert "cannot import tests.no_such_module" in stderr
    assert "exited with status 2 before it was ready; stopping the pool" in stderr
    # Not restarted: each child started once (one "cannot import" each, at most).
    assert stderr.count("cannot import tests.no_such_module") <= 2


# --- 5. the pool killed: its children do not run on unsupervised ------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_children_of_a_killed_pool_drain_and_exit(
    api: TaskManager, storage: dict[str, Any], start_pool: Callable[..., Pool], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "pool.yaml", storage, max_concurrent_jobs=1, shutdown_grace_period=600
    )
    pool = start_pool(config, "--processes", "2")
    children = await pool.ready()
    release = tmp_path / "release"
    ids = await submit_blocked(api, release, 2)

    await until_each_holds(api, children, 1)
    pids = [w.pid for w in await api.store.list_workers() if w.worker_id in children]
    processes = [psutil.Process(pid) for pid in pids]
    pool.process.send_signal(signal.SIGKILL)
    pool.process.wait()

    async def both_draining() -> bool:  # each was sent SIGTERM by the kernel
        return pool.stderr().count("shutting down: waiting up to 600s for 1 running") == 2

    await poll(both_draining)
    release.touch()  # the running tasks finish within the grace period
    _, alive = await anyio.to_thread.run_sync(lambda: psutil.wait_procs(processes, timeout=60))
    assert not alive
    records = await api.store.get_tasks(ids)
    assert {t.status for t in records} == {TaskStatus.COMPLETED}, pool.stderr()
    assert [w.worker_id for w in await api.store.list_workers()] == [api.worker_id]
