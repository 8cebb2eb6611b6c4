"""What only the SQLite store does: claims read waiting tasks in dispatch order from their
index, with or without planner statistics (a claim must not sort the whole queue: 1M
pending would take ~0.5 s a claim; see benchmarks/depth.py), submits and completions that
land in one group commit cost a few statements however many there are, and another
process's commits reach a listener through the file's data version."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from vpsweb_tasks import TaskDefinition, TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import QueueFullError
from vpsweb_tasks.storage import sqlite as sqlite_store
from vpsweb_tasks.storage._dbthread import Mode
from vpsweb_tasks.storage.queries import CORE, Queries
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore
from vpsweb_tasks.storage.types import Completed, Notice

from .conftest import new_task
from .test_storage_conformance import LEASE, T0, by_id, together

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("analyzed", [False, True])
async def test_the_claim_reads_the_dispatch_index_and_never_sorts_the_queue(
    tmp_path: Path, typed: bool, analyzed: bool
) -> None:
    """Priority, aging and plain FIFO are all one order (dispatch_at), read off the
    dispatch index of the worker's queue: one range, no sort, whatever the planner knows."""
    path = tmp_path / "plans.db"
    store = SQLiteTaskStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        # Many finished rows and a few waiting: the shape that misled the planner.
        conn.executemany(
            "INSERT INTO background_tasks (id, name, task_type, priority, status, max_retries,"
            " run_at, created_at, updated_at, dispatch_at)"
            " VALUES (?, 'n', 'noop', 1, ?, 3, 0, 0, 0, 0)",
            [(f"t{i}", "completed" if i % 10 else "pending") for i in range(2000)],
        )
        if analyzed:
            conn.execute("ANALYZE")
        queries = Queries("sqlite", split=True)
        queries.load([CORE])
        sql = queries["claim"][0]  # the UPDATE that picks
        types = '["noop"]' if typed else None
        params = {
            "worker": "w",
            "expires": 0.0,
            "now": 0.0,
            "limit": 1,
            "types": types,
            "queue": "default",
        }
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()
    reads = [
        step for step in plan if "background_tasks USING" in step and "PRIMARY KEY" not in step
    ]
    assert reads, plan
    assert all("ix_background_tasks_dispatch (queue=? AND dispatch_at<?)" in s for s in reads), plan
    assert "SCAN background_tasks" not in plan, plan  # a table scan: no index at all
    assert not [step for step in plan if "TEMP B-TREE" in step], plan


async def test_calls_that_land_together_cost_a_few_statements_however_many(
    tmp_path: Path,
) -> None:
    """Submits that land in one group commit are stored by as many statements whether they
    are 4 or 16, and so are completions: what makes a burst cheap."""
    traced: list[str] = []

    def statements() -> int:
        # A trigger's steps are traced as its statement again: count each run once.
        runs = [sql for i, sql in enumerate(traced) if i == 0 or traced[i - 1] != sql]
        traced.clear()
        return len([sql for sql in runs if sql not in ("BEGIN", "BEGIN IMMEDIATE", "COMMIT")])

    cost: dict[int, tuple[int, int]] = {}
    for n in (4, 16):
        async with SQLiteTaskStore(tmp_path / f"t{n}.db") as store:
            await store._db().run(lambda conn: conn.set_trace_callback(traced.append), Mode.ALONE)
            traced.clear()
            tasks = [new_task(T0) for _ in range(n)]
            added = await together(
                store,
                [lambda task=task: store.add_task(task, max_queue_size=100) for task in tasks],
            )
            submits = statements()
            assert [record.id for record in added] == [task.id for task in tasks]
            claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=n)
            traced.clear()
            done = await together(
                store,
                [
                    lambda claim=claim: store.finish(claim, Completed(None), now=T0 + 1)
                    for claim in claims
                ],
            )
            completions = statements()
            assert by_id(done) == by_id(await store.get_tasks([record.id for record in done]))
            cost[n] = (submits, completions)
    assert cost[4] == cost[16], cost
    assert cost[16][0] == 1, cost  # one INSERT, its size check inside
    assert cost[16][1] <= 4, cost


async def test_submits_together_without_a_limit_still_count_for_those_with_one(
    tmp_path: Path,
) -> None:
    """Combined submits count every task let in, limit or not (PostgreSQL's racing
    submits may overshoot instead: storage-contract.md)."""
    tasks = [new_task(T0) for _ in range(3)]
    async with SQLiteTaskStore(tmp_path / "t.db") as store:
        results = await together(
            store,
            [
                lambda: store.add_task(tasks[0]),  # no limit: stored, and takes room
                lambda: store.add_task(tasks[1], max_queue_size=2),
                lambda: store.add_task(tasks[2], max_queue_size=2),
            ],
        )
        assert isinstance(results[2], QueueFullError)
        assert [r.id for r in results[:2]] == [task.id for task in tasks[:2]]


async def test_another_connections_commit_reaches_a_listener(tmp_path: Path) -> None:
    """Two stores on one file stand for two processes (each has its own connection)."""
    path = tmp_path / "shared.db"
    notices: list[tuple[Notice, str]] = []
    heard = anyio.Event()

    def on_notice(kind: Notice, task_id: str) -> None:
        notices.append((kind, task_id))
        heard.set()

    async with (
        SQLiteTaskStore(path, watch_interval=0.01) as worker,
        SQLiteTaskStore(path, watch_interval=0) as web,
        anyio.create_task_group() as tg,
    ):
        await tg.start(worker.listen, on_notice)
        await web.add_task(new_task(T0))
        with anyio.fail_after(5):
            await heard.wait()
        assert notices == [("changed", "")]
        tg.cancel_scope.cancel()


async def test_the_watch_is_off_at_zero_and_in_memory(tmp_path: Path) -> None:
    for store in (
        SQLiteTaskStore(tmp_path / "off.db", watch_interval=0),
        SQLiteTaskStore(":memory:"),
    ):
        async with store, anyio.create_task_group() as tg:
            await tg.start(store.listen, lambda kind, task_id: None)  # starts, then waits
            tg.cancel_scope.cancel()


async def test_the_page_cache_is_sized_from_the_settings(
    settings_factory: Callable[..., Settings],
) -> None:
    """A million waiting tasks outgrow SQLite's 2 MiB default cache and claims slow to
    ~0.7x (benchmarks/depth.py); the store's connection takes ``storage.sqlite_cache_mb``."""
    settings = settings_factory(storage={"sqlite_cache_mb": 7})
    async with TaskManager(settings) as manager:
        store = manager.store
        assert isinstance(store, SQLiteTaskStore)
        cache_size = await store._db().run(
            lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0], Mode.READ
        )
    assert cache_size == -7 * 1024


async def test_an_idle_workers_claim_rides_in_the_submits_own_commit(
    settings_factory: Callable[..., Settings],
) -> None:
    """On SQLite the dispatcher is woken as soon as a submit is queued: its claim waits
    behind the INSERT on the database thread, and both commit in one transaction, so an
    idle worker starts the task one round trip sooner."""
    traced: list[str] = []
    started = anyio.Event()

    async def work(context: object) -> None:
        started.set()

    # A long check interval: woken, the dispatcher goes straight to its claim, with no
    # periodic read of the shared pause queued ahead of it.
    settings = settings_factory(background_tasks={"queue_check_interval": 60.0})
    async with TaskManager(settings) as manager:
        manager.register("work", work)
        store = manager.store
        assert isinstance(store, SQLiteTaskStore)
        await manager.queue.next_round()  # the dispatcher is idle, waiting for a wake-up
        release = threading.Event()
        holding = threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(traced.append)
            holding.set()
            release.wait(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(store._db().run, hold, Mode.ALONE)
            await anyio.to_thread.run_sync(holding.wait, 10)
            tg.start_soon(manager.submit, TaskDefinition(name="w", task_type="work"))
            await anyio.wait_all_tasks_blocked()  # the submitter and the dispatcher queued
            release.set()
        with anyio.fail_after(10):
            await started.wait()
    # A trigger's steps are traced as its statement again: count each run once.
    runs = [sql for i, sql in enumerate(traced) if i == 0 or traced[i - 1] != sql]
    kinds = [" ".join(sql.split()[:3]) for sql in runs]
    # Other loops' writes (a heartbeat's workers row, under load) may share the commit too:
    # only the tasks table matters here.
    kinds = [k for k in kinds if k in ("BEGIN IMMEDIATE", "COMMIT") or "background_tasks" in k]
    first = kinds.index("BEGIN IMMEDIATE")
    # The submit's INSERT and the claim's UPDATE (whose trigger writes the execution row)
    # commit together.
    assert kinds[first : kinds.index("COMMIT", first) + 1] == [
        "BEGIN IMMEDIATE",
        "INSERT INTO background_tasks",  # the submit
        "UPDATE background_tasks SET",  # the claim
        "COMMIT",
    ]


# --- the side lock's hand-off between processes (storage/handoff.py) ---------------------

#: Another process that takes the side lock of argv[1], says HELD, and lets it go when a
#: line arrives on its stdin (or never, if none does: a stuck holder).
_HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('HELD', flush=True)\n"
    "sys.stdin.readline()\n"
)


def _side_lock_taken(path: Path) -> bool:
    """Whether somebody holds the side lock (a fresh open file is another holder)."""
    fd = os.open(f"{path}-writer", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of it too
    return False


def _hold_side_lock(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"{path}-writer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "HELD\n"
    return holder


def _end(holder: subprocess.Popen[str]) -> None:
    holder.kill()  # SIGKILL: the kernel lets its lock go
    holder.wait()
    for pipe in (holder.stdin, holder.stdout):
        if pipe is not None:
            pipe.close()


def _task_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM background_tasks").fetchone()
    return int(count)


def _waiters_on(path: Path) -> int:
    """flock waiters on the side file, as the kernel lists them (``->`` lines)."""
    inode = os.stat(f"{path}-writer").st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and line.split()[-3].endswith(f":{inode}"))


async def test_a_write_transaction_holds_the_side_lock_and_a_read_does_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "side.db"
    async with SQLiteTaskStore(path) as store:
        assert await store._db().run(lambda conn: _side_lock_taken(path), Mode.WRITE)
        assert not await store._db().run(lambda conn: _side_lock_taken(path), Mode.READ)
        assert not _side_lock_taken(path)  # let go after the commit


async def test_a_writer_waits_for_the_side_lock_and_goes_the_moment_it_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the side lock: the store's write waits for it in the kernel
    (not in SQLite's busy handler) and commits once it is let go."""
    monkeypatch.setattr(sqlite_store, "HANDOFF_WAIT", 60.0)  # however slow this machine is
    path = tmp_path / "side.db"
    async with SQLiteTaskStore(path) as store:
        holder = _hold_side_lock(path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.add_task, new_task(T0))
                with anyio.fail_after(10):
                    while _waiters_on(path) == 0:  # noqa: ASYNC110 (the kernel's list)
                        await anyio.sleep(0.01)
                assert _task_rows(path) == 0  # not written yet
                assert holder.stdin is not None
                holder.stdin.write("go\n")
                holder.stdin.flush()
        finally:
            _end(holder)
        assert (await store.count_tasks())["pending"] == 1
        handoff = store._db()._handoff
        assert handoff is not None
        assert handoff.timeouts == 0


async def test_a_stuck_holder_of_the_side_lock_costs_one_bounded_wait(tmp_path: Path) -> None:
    """A process that holds the side lock and never lets go: the first write waits
    ``busy_timeout`` for it, then it and every later write go through SQLite's lock alone;
    once the holder is gone (killed: the kernel lets its lock go), writes take the side
    lock again."""
    path = tmp_path / "side.db"
    async with SQLiteTaskStore(path, busy_timeout=0.2) as store:
        holder = _hold_side_lock(path)
        try:
            for _ in range(5):
                await store.add_task(new_task(T0))
            assert (await store.count_tasks())["pending"] == 5
            handoff = store._db()._handoff
            assert handoff is not None
            assert handoff.timeouts == 1
        finally:
            _end(holder)
        with anyio.fail_after(10):
            # The abandoned wait ends (and lets the lock go) when the kernel frees it.
            while not await store._db().run(  # noqa: ASYNC110 (another process's end)
                lambda conn: _side_lock_taken(path), Mode.WRITE
            ):
                await anyio.sleep(0.01)
        assert handoff.timeouts == 1
