"""Many tasks running at once in one worker: their lease renewals and progress flushes
are batched, so the statements a heartbeat and a flush send do not grow with the number
of running tasks (issue 23; ``benchmarks/concurrency.py`` measures it at 20,000).

Statements are counted by a hook on our side of the driver: SQLite's trace callback on
the store's connection, a wrapper of the PostgreSQL store's statement execution. The
loops' own timers are set far off and the test drives one heartbeat and one flush itself,
so nothing else runs while it counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks.storage import sqlite as sqlite_store
from vpsweb_tasks.storage._dbthread import Mode as ThreadMode
from vpsweb_tasks.storage.base import TaskStore

from .conftest import FakeClock

pytestmark = pytest.mark.anyio

FAR = 3600.0  # the loops' intervals: they never come round during a test


async def _trace_sqlite(store: Any, sink: Callable[[str], None] | None) -> None:
    def install(conn: Any) -> None:
        conn.set_trace_callback(sink)

    await store._db().run(install, ThreadMode.ALONE)


@dataclass
class Seen:
    """What a store sent to its database and read back, inside a ``counting`` block."""

    statements: list[str] = field(default_factory=list)
    """Each statement's SQL (SQLite) or query name (PostgreSQL)."""
    rows: int = 0
    """The rows the operations' statements returned."""


@contextlib.asynccontextmanager
async def counting(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The statements ``store`` sends to its database inside the block, and the rows it
    reads back (counted on our side of the driver)."""
    seen = Seen()

    def returned(result: Any) -> Any:
        if isinstance(result, list):
            seen.rows += len(result)
        elif isinstance(result, dict):
            seen.rows += 1
        return result

    if store.dialect == "sqlite":

        def trace(sql: str) -> None:
            if not sql.lstrip().startswith("--"):  # a trigger's body: not a statement sent
                seen.statements.append(sql)

        execute = sqlite_store.execute
        monkeypatch.setattr(sqlite_store, "execute", lambda *args: returned(execute(*args)))
        await _trace_sqlite(store, trace)
        try:
            yield seen
        finally:
            await _trace_sqlite(store, None)
            monkeypatch.undo()
        return
    execute_pg = store._execute  # type: ignore[attr-defined]

    async def counted(conn: Any, step: Any) -> Any:
        seen.statements.append(step.query)
        return returned(await execute_pg(conn, step))

    store._execute = counted  # type: ignore[attr-defined]
    try:
        yield seen
    finally:
        del store._execute  # type: ignore[attr-defined]


@contextlib.contextmanager
def quiet(
    settings_factory: Callable[..., Settings], storage: dict[str, Any], n: int
) -> Iterator[Settings]:
    yield settings_factory(
        storage={**storage, "sqlite_watch_interval": 0},
        background_tasks={
            "max_concurrent_jobs": n,
            "queue_check_interval": FAR,
            "lease_seconds": 3 * FAR,
            "progress_flush_interval": FAR,
        },
    )


def progress_appends(statements: list[str]) -> int:
    return sum(
        each == "append_progress" or each.startswith("INSERT INTO task_progress")
        for each in statements
    )


async def one_round(
    settings: Settings, n: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Seen, int]:
    """Run ``n`` tasks that each report progress and then wait; once all have reported,
    count the statements of one progress flush, one heartbeat (the leases renewed) and
    one look for cancel requests (what a heartbeat between renewals does), and the rows
    they read back. Then release them all at once, each reporting once more as it ends:
    the progress writes made before their outcomes."""
    clock = FakeClock()
    reported = 0
    all_reported = anyio.Event()
    release = anyio.Event()

    async def llm(context: TaskContext) -> None:
        nonlocal reported
        await context.update_progress(0.25, "asked the model")
        await context.update_progress(0.5, "waiting for the model")
        reported += 1
        if reported == n:
            all_reported.set()
        await release.wait()
        await context.update_progress(0.9, "answered")

    async with TaskManager(settings, clock=clock) as manager:
        manager.register("llm", llm)
        contexts = await manager.submit_batch([TaskDefinition(name="llm", task_type="llm")] * n)
        with anyio.fail_after(30):
            await all_reported.wait()
        before = await manager.store.get_tasks([c.task_id for c in contexts])
        clock.advance(60.0)
        async with counting(manager.store, monkeypatch) as statements:
            await manager._queue.flush_progress()
            await manager._queue.heartbeat()
            await manager._queue.look_for_cancel_requests()
        after = await manager.store.get_tasks([c.task_id for c in contexts])
        async with counting(manager.store, monkeypatch) as drain:
            release.set()
            with anyio.fail_after(30):
                finished = [await c.wait() for c in contexts]
    # The round did its work for every task: progress stored, lease renewed.
    assert len(before) == len(after) == n
    before.sort(key=lambda record: record.id)
    after.sort(key=lambda record: record.id)
    for old, new in zip(before, after, strict=True):
        assert old.progress == 0.0  # nothing flushed it before the round
        assert (new.progress, new.message) == (0.5, "waiting for the model")
        assert old.lease_expires_at is not None
        assert new.lease_expires_at is not None
        assert (new.lease_expires_at - old.lease_expires_at).total_seconds() == 60.0
    assert {record.status for record in finished} == {TaskStatus.COMPLETED}
    assert drain.rows >= n, "the hook counts rows read back: each outcome's record is"
    return statements, progress_appends(drain.statements)


async def test_renewals_and_flushes_do_not_grow_with_running_tasks(
    settings_factory: Callable[..., Settings],
    storage: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with quiet(settings_factory, storage, 5) as settings:
        few, few_ending = await one_round(settings, 5, monkeypatch)
    with quiet(settings_factory, storage, 50) as settings:
        many, many_ending = await one_round(settings, 50, monkeypatch)
    assert few.statements, "the hook saw no statement"
    assert len(many.statements) == len(few.statements), (
        f"5 tasks: {few.statements}\n50 tasks: {many.statements}"
    )
    # Nothing comes back a task while all is well: no lease lost, no cancel requested.
    assert (few.rows, many.rows) == (0, 0)
    # Tasks ending together write their last progress together.
    assert many_ending == few_ending, (few_ending, many_ending)
