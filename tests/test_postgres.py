"""What only the PostgreSQL backend does: notices across connections, reconnecting the
listener, concurrent migrations, a backup the SQLite backend can open, and how several
workers on one schema react to notices.

The rest of the contract is checked on both backends by test_storage_conformance.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager
from vpsweb_tasks.models import TaskStatus
from vpsweb_tasks.storage import postgres as postgres_backend
from vpsweb_tasks.storage.base import Completed, Notice, TaskStore
from vpsweb_tasks.storage.ops import Mode as OpMode
from vpsweb_tasks.storage.ops import Op, Operation, operation, script
from vpsweb_tasks.storage.postgres import LISTENER_NAME, PostgresTaskStore
from vpsweb_tasks.storage.queries import CORE
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore

from .conftest import POSTGRES_DSN, make_settings, new_task, postgres_schema

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend", ["postgres"])]

T0 = 1_800_000_000.0


class Notices:
    """Collects notices; ``wait_for`` returns once one matches (bounded)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Notice, str]] = []
        self._changed = anyio.Event()

    def __call__(self, kind: Notice, task_id: str) -> None:
        self.seen.append((kind, task_id))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: Notice, task_id: str, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while (kind, task_id) not in self.seen:
                await self._changed.wait()


async def test_notices_from_another_connection_reach_the_listener(
    store: TaskStore, store_factory: Callable[..., TaskStore]
) -> None:
    notices = Notices()
    async with anyio.create_task_group() as tg, store_factory() as other:
        await tg.start(store.listen, notices)
        added = await other.add_task(new_task(T0))
        await notices.wait_for("task_added", added.id)
        [claim] = await store.claim(worker_id="w1", now=T0, lease_seconds=30, limit=1)
        await other.request_cancel(claim.task.id, now=T0 + 1)
        await notices.wait_for("cancel_requested", claim.task.id)
        await store.finish(claim, Completed(), now=T0 + 2)
        tg.cancel_scope.cancel()
    # A waiting task's cancel needs no worker: no notice for it.
    assert [kind for kind, _ in notices.seen] == ["task_added", "cancel_requested"]


async def test_stores_on_other_schemas_do_not_wake_each_other(store: TaskStore) -> None:
    notices = Notices()
    with postgres_schema() as elsewhere:
        async with (
            anyio.create_task_group() as tg,
            PostgresTaskStore(POSTGRES_DSN, schema=elsewhere) as other,
        ):
            await tg.start(store.listen, notices)
            unseen = await other.add_task(new_task(T0))
            seen = await store.add_task(new_task(T0))
            await notices.wait_for("task_added", seen.id)
            tg.cancel_scope.cancel()
    assert ("task_added", unseen.id) not in notices.seen


async def test_the_listener_reconnects_after_losing_its_connection(store: TaskStore) -> None:
    assert isinstance(store, PostgresTaskStore)
    notices = Notices()
    async with anyio.create_task_group() as tg:
        await tg.start(store.listen, notices)
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND query LIKE %s",
                (LISTENER_NAME, f"LISTEN%{store.channel}%"),
            ).fetchall()
        assert killed == [(True,)]
        # Notices sent while it reconnects are lost (polling covers them): keep adding
        # tasks until one is heard on the new connection.
        with anyio.fail_after(10):
            while True:
                task = await store.add_task(new_task(T0))
                with anyio.move_on_after(0.1):
                    await notices.wait_for("task_added", task.id)
                    break
        tg.cancel_scope.cancel()


async def test_several_processes_may_open_a_new_schema_at_once(
    store_factory: Callable[..., TaskStore],
) -> None:
    stores = [store_factory() for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(s.open)
    try:
        latest = max(migration.version for migration in CORE.migrations("postgres"))
        assert {s.schema_version for s in stores} == {latest}
        task = await stores[0].add_task(new_task(T0))
        assert await stores[4].get_task(task.id) == task
    finally:
        for s in stores:
            await s.close()


@operation(OpMode.WRITE)
def _run_script(sql: str) -> Op[None]:
    yield script(sql)


async def test_maintenance_finds_a_running_attempt_whose_row_is_written_already(
    store: TaskStore,
) -> None:
    """The invariant the finish relies on (it inserts the attempt's execution row): a
    running task's attempt has no row yet. Running and finished tasks pass the check."""
    for _ in range(2):
        await store.add_task(new_task(T0))
    running, finished = await store.claim(worker_id="w1", now=T0, lease_seconds=30, limit=2)
    await store.finish(finished, Completed(1), now=T0 + 1)
    assert (await store.maintenance())["integrity"] == "ok"
    await store.run(
        _run_script(
            "INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at,"
            f" outcome) VALUES ('{running.task.id}', 1, {running.token.fence}, 'w1', {T0},"
            " 'running')"
        )
    )
    assert (await store.maintenance())["integrity"] == (
        "1 running tasks whose attempt has its execution row already"
    )


async def test_the_backup_is_a_sqlite_database_the_sqlite_backend_reads(
    store: TaskStore, tmp_path: Path
) -> None:
    for i in range(30):
        await store.add_task(new_task(T0 + i, payload={"i": i}, priority=i % 4))
    claims = await store.claim(worker_id="w1", now=T0 + 50, lease_seconds=30, limit=10)
    for claim in claims[:5]:
        await store.finish(claim, Completed({"i": claim.task.payload["i"]}), now=T0 + 51)
    await store.set_paused(True, reason="backup test")
    report = await store.backup(str(tmp_path / "copy.db"))
    assert (report["tasks"], report["integrity"]) == (30, "ok")

    async with SQLiteTaskStore(tmp_path / "copy.db") as copy:
        originals = await store.list_tasks(limit=100)
        assert await copy.list_tasks(limit=100) == originals
        assert await copy.count_tasks() == await store.count_tasks()
        assert await copy.get_paused() == (True, "backup test")
        for claim in claims:
            assert await copy.list_executions(claim.task.id) == await store.list_executions(
                claim.task.id
            )
        # Dispatch order survives the copy (PostgreSQL's seq becomes SQLite's rowid).
        waiting = await store.list_tasks(statuses=[TaskStatus.PENDING], order="dispatch")
        assert [
            t.id for t in await copy.list_tasks(statuses=[TaskStatus.PENDING], order="dispatch")
        ] == [t.id for t in waiting]


async def test_concurrent_submits_and_completions_are_written_in_batches(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent calls started together go as one operation (the first waits one pass of
    the event loop for the others): one round trip for twenty calls, not twenty."""
    run = store.run
    operations: list[str] = []

    async def counted(operation: Operation[Any]) -> Any:
        operations.append(operation.fn.__name__)
        return await run(operation)

    monkeypatch.setattr(store, "run", counted)
    tasks = [new_task(T0) for _ in range(20)]
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(store.add_task, task)
    assert operations == ["add_together"]
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=30, limit=20)
    operations.clear()
    async with anyio.create_task_group() as tg:
        for claim in claims:
            tg.start_soon(partial(store.finish, claim, Completed(), now=T0 + 1))
    assert operations == ["complete_together"]
    assert (await store.count_tasks())[TaskStatus.COMPLETED] == 20


async def test_operations_beyond_the_pools_connections_wait_for_one(
    store_factory: Callable[..., TaskStore],
) -> None:
    """More operations at once than the pool has connections: a connection kept between
    operations goes to those waiting for the pool, not back to the keeper's list (where
    they would wait out the pool's timeout)."""
    async with store_factory(pool_size=2, connect_timeout=60) as store:
        task = new_task(T0)
        await store.add_task(task)
        found: list[Any] = []

        async def read() -> None:
            found.append(await store.get_task(task.id))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(read)
        assert [each.id for each in found] == [task.id] * 10


@pytest.mark.parametrize("keep", [60.0, 0.0])
async def test_connections_go_back_to_the_pool_every_keep_seconds(
    store_factory: Callable[..., TaskStore], monkeypatch: pytest.MonkeyPatch, keep: float
) -> None:
    """Operations reuse the connection the last one gave back, without the pool; once it
    has been kept KEEP_SECONDS it goes back to the pool (whose upkeep then applies)."""
    monkeypatch.setattr(postgres_backend, "KEEP_SECONDS", keep)
    async with store_factory() as store:
        assert isinstance(store, PostgresTaskStore)
        assert store._pool is not None
        before = store._pool.get_stats()["requests_num"]
        for _ in range(5):
            assert await store.get_task("nope") is None
        checkouts = store._pool.get_stats()["requests_num"] - before
    assert checkouts == (0 if keep else 5)


class ClaimCounter:
    """Counts a worker store's claims and those that came back empty."""

    def __init__(self, store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims = self.empty = 0
        claim = store.claim

        async def counted(**arguments: Any) -> Any:
            claims = await claim(**arguments)
            self.claims += 1
            self.empty += not claims
            return claims

        monkeypatch.setattr(store, "claim", counted)


class Cluster:
    """Worker managers and an API-only one in this process, on one schema: the workers
    hear of submits only through notices (no poll within a test: it would find any task
    a missed wake-up left behind). Task types: ``noop``, and ``block`` (runs until
    ``release`` is set; ``started`` once one runs)."""

    def __init__(self, api: TaskManager, workers: list[TaskManager]) -> None:
        self.api = api
        self.workers = workers
        self.counters: list[ClaimCounter] = []
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def run(self, task_type: str = "noop") -> Any:
        return await self.api.submit(TaskDefinition(name="one", task_type=task_type))


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    storage: dict[str, Any],
    count: int,
    monkeypatch: pytest.MonkeyPatch,
    *,
    jobs: int = 8,
) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        api_settings = make_settings(
            tmp_path / "api", storage=storage, background_tasks={"enabled": False}
        )
        api = await stack.enter_async_context(TaskManager(api_settings))
        found = Cluster(api, [])

        async def noop(context: TaskContext) -> None:
            return None

        async def block(context: TaskContext) -> None:
            found.started.set()
            await found.release.wait()

        api.register("noop", noop)
        api.register("block", block)
        for n in range(count):
            settings = make_settings(
                tmp_path / f"w{n}",
                storage=storage,
                background_tasks={"queue_check_interval": 60.0, "max_concurrent_jobs": jobs},
            )
            worker = await stack.enter_async_context(TaskManager(settings))
            worker.register("noop", noop)
            worker.register("block", block)
            found.workers.append(worker)
            found.counters.append(ClaimCounter(worker.store, monkeypatch))
        for worker in found.workers:  # past the first look at the queue, at start
            await worker.queue.next_round()
        try:
            yield found
        finally:
            found.release.set()


async def test_a_worker_that_took_all_there_was_does_not_claim_again_on_each_finish(
    tmp_path: Path, storage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last claim took every waiting task and left room: new work comes with a
    notice, so a finish asks for no claim (which would come back empty)."""
    async with cluster(tmp_path, storage, 1, monkeypatch) as found:
        [counter] = found.counters
        claims, empty = counter.claims, counter.empty
        for _ in range(10):
            context = await found.run()
            with anyio.fail_after(30):
                await context.wait()
        assert counter.claims - claims == 10
        assert counter.empty == empty


async def test_three_workers_take_a_burst_of_notices_without_a_claim_per_notice_each(
    tmp_path: Path, storage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker hears every submit's notice and one takes the task: the others'
    claims come back empty. A worker whose notice-driven claim came back empty lets the
    next notices gather into one claim; and no task waits for a poll."""
    n = 60
    async with cluster(tmp_path, storage, 3, monkeypatch) as found:
        api, counters = found.api, found.counters
        before = sum(each.empty for each in counters)
        contexts = [await found.run() for _ in range(n)]  # a notice each
        with anyio.fail_after(30):
            for context in contexts:
                await context.wait()
        assert (await api.store.count_tasks())[TaskStatus.COMPLETED] == n
        empty = sum(each.empty for each in counters) - before
        claims = sum(each.claims for each in counters)
        print(f"\n{n} notices: {claims} claims, {empty} empty")
        assert empty < n  # without coalescing and with a claim per finish: ~1.6 n


async def test_a_notice_first_for_a_full_worker_is_claimed_by_an_idle_one_without_a_poll(
    tmp_path: Path, storage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each notice is first one worker's to claim; when that one has no free slot, the
    next in rank claims a moment later: no task waits for the poll (a minute here)."""
    async with cluster(tmp_path, storage, 2, monkeypatch, jobs=1) as found:
        await found.run("block")
        with anyio.fail_after(30):
            await found.started.wait()
        for worker in found.workers:  # each knows of the other: notices are ranked
            await worker.queue._refresh_peers()
        for _ in range(10):  # about half of them ranked first for the full worker
            context = await found.run()
            with anyio.fail_after(30):
                await context.wait()
