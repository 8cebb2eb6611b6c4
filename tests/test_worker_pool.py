"""The worker pool, ``vpsweb-tasks worker --processes N``, with real processes.

The pool is a ``python -m vpsweb_tasks.cli worker --processes 2 --import tests.mp_tasks``
process; this process is an API-only manager that submits. Tasks are ``mp_flow`` steps
that block until a file the test makes exists, so which child holds which task is
known before anything is killed or stopped. Synchronisation is by the pool's stdout
lines (``READY``, ``REPLACED``), its stderr (the children's log lines), the run log of
tests/mp_tasks.py and database state, each polled with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
import yaml

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus, load_config
from vpsweb_tasks.models import ExecutionOutcome, TaskRecord

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, storage: dict[str, Any], **background: Any) -> Path:
    config = {
        "storage": storage,
        "background_tasks": {
            "retry_delay": 0.05,
            "queue_check_interval": 0.2,
            "pause_on_overload": False,
            **background,
        },
        # INFO: the children's drain lines are what the stop tests wait for.
        "logging": {"file": None, "level": "INFO"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


class Pool:
    """One ``vpsweb-tasks worker --processes N`` process."""

    def __init__(self, config: Path, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / "pool.stderr"
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vpsweb_tasks.cli",
                "worker",
                "--config",
                str(config),
                "--import",
                "tests.mp_tasks",
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "MP_TASKS_LOG": str(tmp_path / "runs.log")},
        )

    async def line(self, timeout: float = 60.0) -> list[str]:
        """The next line the pool prints, as words ([] at its end)."""
        assert self.process.stdout is not None
        with anyio.fail_after(timeout):
            text = await anyio.to_thread.run_sync(
                self.process.stdout.readline, abandon_on_cancel=True
            )
        return text.split()

    async def ready(self) -> list[str]:
        """The children's worker ids, from the pool's ``READY`` line."""
        words = await self.line()
        assert words[:1] == ["READY"], f"the pool did not start: {words}\n{self.stderr()}"
        return words[1:]

    async def wait(self, timeout: float = 60.0) -> int:
        return await anyio.to_thread.run_sync(self.process.wait, timeout)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def close(self) -> None:
        """After a failed test: no process of the pool is left behind."""
        if self.process.poll() is None:
            children = psutil.Process(self.process.pid).children()
            self.process.kill()
            self.process.wait()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            psutil.wait_procs(children, timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@pytest.fixture
def start_pool(tmp_path: Path) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def start(config: Path, *args: str) -> Pool:
        pool = Pool(config, tmp_path, *args)
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.close()


async def unused_handler(context: TaskContext) -> None:
    raise AssertionError("an API-only process never runs tasks")


@pytest.fixture
async def api(tmp_path: Path, storage: dict[str, Any]) -> AsyncIterator[TaskManager]:
    """An API-only manager in this process: it submits, the pool runs."""
    config = write_config(tmp_path / "api.yaml", storage, enabled=False)
    async with TaskManager(load_config(config)) as manager:
        manager.register("mp_flow", unused_handler)
        yield manager


async def poll(check: Callable[[], Any], *, timeout: float = 60.0) -> None:
    """Wait until ``await check()`` is true: other processes change the state."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - no event crosses the processes
            await anyio.sleep(0.05)


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

    async def each_child_holds_two() -> bool:
        return await running_by_owner(api) == Counter(dict.fromkeys(children, 2))

    await poll(each_child_holds_two)  # two at once each: both children took some
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

    async def each_child_holds_two() -> bool:
        return await running_by_owner(api) == Counter(dict.fromkeys(children, 2))

    await poll(each_child_holds_two)
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

    async def each_child_holds_one() -> bool:
        return await running_by_owner(api) == Counter(dict.fromkeys(children, 1))

    await poll(each_child_holds_one)
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
