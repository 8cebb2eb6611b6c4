"""A claimed group of tasks run as one unit: the completions of tasks that end within
their first step leave in one write, and a task of the group that awaits something does
not hold the others back (a spare runner takes them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.errors import LeaseLostError
from vpsweb_tasks.storage.logic import Written
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore
from vpsweb_tasks.storage.types import Claim, Completed

from .conftest import make_settings

pytestmark = pytest.mark.anyio

GROUP = 8


async def store_batch(tmp_path: Path, names: Sequence[str]) -> list[str]:
    """Tasks stored in one batch before any worker runs, so one claim takes them all."""
    settings = make_settings(tmp_path, background_tasks={"enabled": False})
    async with TaskManager(settings) as manager:
        for name in set(names):
            manager.register(name, never_run_here)
        contexts = await manager.submit_batch(
            [TaskDefinition(name=name, task_type=name) for name in names]
        )
    return [context.task_id for context in contexts]


async def never_run_here(context: TaskContext) -> None:
    raise AssertionError("an API-only manager runs nothing")


def worker_settings(tmp_path: Path) -> Any:
    return make_settings(tmp_path, background_tasks={"max_concurrent_jobs": GROUP})


async def test_a_group_that_ends_in_its_first_step_is_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await store_batch(tmp_path, ["noop"] * GROUP)
    writes: list[int] = []
    write_completions = SQLiteTaskStore.write_completions

    async def counted(
        self: SQLiteTaskStore, items: Sequence[tuple[Claim, Completed, float]]
    ) -> list[Written | LeaseLostError]:
        writes.append(len(items))
        return await write_completions(self, items)

    monkeypatch.setattr(SQLiteTaskStore, "write_completions", counted)
    completed: list[str] = []

    async def noop(context: TaskContext) -> str:
        return context.task_id

    manager = TaskManager(worker_settings(tmp_path))
    manager.register("noop", noop)
    manager.events.add_listener(
        lambda event: completed.append(event.task_id), kinds={"task_completed"}
    )
    async with manager:
        with anyio.fail_after(10):
            records = [await manager.wait(task_id) for task_id in ids]
    assert writes == [GROUP]
    assert [(r.status, r.result) for r in records] == [(TaskStatus.COMPLETED, i) for i in ids]
    assert sorted(completed) == sorted(ids)


async def test_a_task_that_awaits_does_not_hold_back_the_rest_of_its_group(
    tmp_path: Path,
) -> None:
    """The first task of a claim waits for the last one: unless another runner takes the
    rest while it waits, neither ends. A first group leaves the runners idle, waiting to
    be woken (the first claim's runners are new and find their tasks waiting)."""
    set_by_last = anyio.Event()

    async def waits(context: TaskContext) -> str:
        await set_by_last.wait()
        return "waited"

    async def sets(context: TaskContext) -> str:
        set_by_last.set()
        return "set"

    async def noop(context: TaskContext) -> None:
        return None

    manager = TaskManager(worker_settings(tmp_path))
    manager.register("waits", waits)
    manager.register("sets", sets)
    manager.register("noop", noop)
    names = ["waits", *["noop"] * (GROUP - 2), "sets"]
    async with manager:
        with anyio.fail_after(10):
            for context in await manager.submit_batch(
                [TaskDefinition(name="noop", task_type="noop")] * GROUP
            ):
                await context.wait()
            contexts = await manager.submit_batch(
                [TaskDefinition(name=name, task_type=name) for name in names]
            )
            records = [await context.wait() for context in contexts]
    assert [r.status for r in records] == [TaskStatus.COMPLETED] * GROUP
    assert (records[0].result, records[-1].result) == ("waited", "set")


async def test_tasks_after_a_stop_or_a_timeout_in_the_same_runner_run_in_full(
    tmp_path: Path,
) -> None:
    """One runner (one slot): a cancelled task, then one that times out, then one that
    completes. The runner's scope, cancelled for each of the first two, is not the one
    the next task runs in."""
    started = anyio.Event()

    async def forever(context: TaskContext) -> None:
        started.set()
        await anyio.sleep_forever()

    async def noop(context: TaskContext) -> str:
        await anyio.lowlevel.checkpoint()  # a cancelled scope would stop it here
        return "done"

    settings = make_settings(tmp_path, background_tasks={"max_concurrent_jobs": 1})
    manager = TaskManager(settings)
    manager.register("forever", forever)
    manager.register("noop", noop)
    async with manager:
        with anyio.fail_after(10):
            cancelled = await manager.submit(TaskDefinition(name="c", task_type="forever"))
            await started.wait()
            timed_out, done = await manager.submit_batch(
                [
                    TaskDefinition(
                        name="t", task_type="forever", timeout_seconds=0.2, max_retries=0
                    ),
                    TaskDefinition(name="d", task_type="noop", max_retries=0),
                ]
            )
            await manager.cancel(cancelled.task_id)
            records = [await c.wait() for c in (cancelled, timed_out, done)]
    assert [r.status for r in records] == [
        TaskStatus.CANCELLED,
        TaskStatus.FAILED,
        TaskStatus.COMPLETED,
    ]
    assert records[1].error_type == "TaskTimeoutError"
    assert records[1].finished_at is not None
    assert records[1].started_at is not None
    assert (records[1].finished_at - records[1].started_at).total_seconds() >= 0.15
    assert records[2].result == "done"


async def test_a_short_timeout_is_kept_beside_longer_ones(tmp_path: Path) -> None:
    """Timeouts are kept by one sleeper for all running tasks: a task with a short
    timeout, started while one with a long timeout runs, times out on its own time."""
    release = anyio.Event()

    async def waits(context: TaskContext) -> str:
        await release.wait()
        return "released"

    manager = TaskManager(make_settings(tmp_path, background_tasks={"max_concurrent_jobs": 2}))
    manager.register("waits", waits)
    async with manager:
        with anyio.fail_after(10):
            long = await manager.submit(
                TaskDefinition(name="long", task_type="waits", timeout_seconds=60)
            )
            short = await manager.submit(
                TaskDefinition(name="short", task_type="waits", timeout_seconds=0.2, max_retries=0)
            )
            failed = await short.wait()
            assert failed.status is TaskStatus.FAILED
            assert failed.error_type == "TaskTimeoutError"
            assert (await manager.get_task(long.task_id)).status is TaskStatus.RUNNING
            release.set()
            completed = await long.wait()
    assert (completed.status, completed.result) == (TaskStatus.COMPLETED, "released")


async def test_a_completion_on_its_way_to_storage_frees_its_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next group is claimed (and runs) while the first group's write is held: its
    tasks' functions had returned, so their slots were free."""
    ids = await store_batch(tmp_path, ["noop"] * (2 * GROUP))
    held = anyio.Event()
    release = anyio.Event()
    write_completions = SQLiteTaskStore.write_completions

    async def first_held(
        self: SQLiteTaskStore, items: Sequence[tuple[Claim, Completed, float]]
    ) -> list[Written | LeaseLostError]:
        if not held.is_set():
            held.set()
            with anyio.move_on_after(15):  # bounded: a failing test ends (fail_after below)
                await release.wait()
        return await write_completions(self, items)

    monkeypatch.setattr(SQLiteTaskStore, "write_completions", first_held)
    started: list[str] = []
    all_started = anyio.Event()

    async def noop(context: TaskContext) -> None:
        started.append(context.task_id)
        if len(started) == 2 * GROUP:
            all_started.set()

    manager = TaskManager(worker_settings(tmp_path))
    manager.register("noop", noop)
    async with manager:
        with anyio.fail_after(10):
            await held.wait()
            await all_started.wait()
            release.set()
            records = [await manager.wait(task_id) for task_id in ids]
    assert sorted(started) == sorted(ids)
    assert [r.status for r in records] == [TaskStatus.COMPLETED] * (2 * GROUP)


async def test_a_group_completion_s_context_reads_the_stored_record(tmp_path: Path) -> None:
    """A completion written with its group builds its record only when its context's is
    read: then it is the row as stored, and the context followed it before (status,
    attempt, progress, done)."""

    async def noop(context: TaskContext) -> int:
        return 7

    manager = TaskManager(worker_settings(tmp_path))
    manager.register("noop", noop)
    async with manager:
        with anyio.fail_after(10):
            contexts = await manager.submit_batch(
                [TaskDefinition(name="noop", task_type="noop")] * GROUP
            )
            records = [await context.wait() for context in contexts]
            stored = await manager.store.get_tasks([c.task_id for c in contexts])
    assert [(c.status, c.attempt, c.progress, c.done) for c in contexts] == [
        (TaskStatus.COMPLETED, 1, 1.0, True)
    ] * GROUP
    assert {r.id: r for r in records} == {r.id: r for r in stored}
    assert [r.result for r in records] == [7] * GROUP
