"""The translation extension's table on every backend: jobs stored with their tasks
(all or none), read with them, checkpoints and results, and deleted with them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from vpsweb_tasks.errors import QueueFullError, TaskNotFoundError
from vpsweb_tasks.models import TaskStatus
from vpsweb_tasks.storage.base import TaskStore
from vpsweb_tasks.storage.types import NewTask
from vpsweb_tasks.translation.store import (
    COMPONENT,
    NewTranslationJob,
    TranslationJobRow,
    get_job,
    insert_jobs,
    list_jobs,
    report_step,
    save_result,
    save_step,
    usage_by_key,
    usage_by_model,
)

from .conftest import new_task
from .test_storage_conformance import LEASE, T0, claim_one, cleanup

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(store_factory: Callable[..., TaskStore]) -> AsyncIterator[TaskStore]:
    """A store with the translation extension's component installed."""
    store = store_factory()
    store.install(COMPONENT)
    async with store:
        yield store


async def add_jobs(
    store: TaskStore,
    items: Sequence[tuple[NewTask, NewTranslationJob]],
    max_queue_size: int | None = None,
) -> list[TranslationJobRow]:
    """Tasks and their jobs, as the translation extension submits them."""
    if not items:
        return []
    await store.add_tasks(
        [task for task, _ in items], max_queue_size=max_queue_size, linked=[insert_jobs(items)]
    )
    return [job.row(task) for task, job in items]


async def add_job(
    store: TaskStore, task: NewTask, job: NewTranslationJob, max_queue_size: int | None = None
) -> TranslationJobRow:
    (row,) = await add_jobs(store, [(task, job)], max_queue_size)
    return row


def new_job(job_id: str, **fields: Any) -> NewTranslationJob:
    values: dict[str, Any] = {
        "id": job_id,
        "source_language": "English",
        "target_language": "Chinese",
        "workflow_mode": "hybrid",
        "original_text": "Hello world",
        "metadata": {"author": "A", "title": "T"},
    }
    values.update(fields)
    return NewTranslationJob(**values)


async def test_a_translation_job_is_stored_with_its_task(store: TaskStore) -> None:
    task = new_task(T0, task_type="translation")
    added = await add_job(store, task, new_job(task.id))
    assert added.task.id == task.id
    assert added.task.status is TaskStatus.PENDING
    got = await store.run(get_job(task.id))
    assert got is not None
    assert got.task == await store.get_task(task.id)
    assert (got.source_language, got.target_language, got.workflow_mode) == (
        "English",
        "Chinese",
        "hybrid",
    )
    assert got.original_text == "Hello world"
    assert got.metadata == {"author": "A", "title": "T"}
    assert got.steps == {}
    assert got.result is None
    assert got.created_at == T0
    assert await store.run(get_job("nope")) is None


async def test_a_translation_job_and_its_task_are_stored_together_or_not_at_all(
    store: TaskStore,
) -> None:
    first = new_task(T0, task_type="translation")
    await add_job(store, first, new_job("job-1"))
    # The job id exists: the new task must not be left behind without its job.
    orphan = new_task(T0, task_type="translation")
    with pytest.raises(ValueError, match="already exists"):
        await add_job(store, orphan, new_job("job-1"))
    assert await store.get_task(orphan.id) is None
    # A full queue stores neither.
    full = new_task(T0, task_type="translation")
    with pytest.raises(QueueFullError):
        await add_job(store, full, new_job(full.id), max_queue_size=1)
    assert await store.get_task(full.id) is None
    assert await store.run(get_job(full.id)) is None
    assert len(await store.run(list_jobs())) == 1


async def everything_stored(store: TaskStore) -> tuple[int, int]:
    """How many tasks (any status) and translation jobs the store holds."""
    tasks = sum((await store.count_tasks()).values())
    return tasks, len(await store.run(list_jobs(limit=1000)))


async def test_a_batch_of_translation_jobs_is_stored_in_order(store: TaskStore) -> None:
    before = new_task(T0, task_type="translation")
    await add_job(store, before, new_job(before.id))
    tasks = [new_task(T0, task_type="translation", payload={"i": i}) for i in range(3)]
    items = [
        (task, new_job(f"job-{i}", workflow_mode=mode))
        for i, (task, mode) in enumerate(
            zip(tasks, ["hybrid", "reasoning", "non_reasoning"], strict=True)
        )
    ]
    # Exactly the room left: 1 waiting + 3 new = the limit.
    rows = await add_jobs(store, items, max_queue_size=4)
    assert [row.id for row in rows] == ["job-0", "job-1", "job-2"]
    assert [row.task_id for row in rows] == [task.id for task in tasks]
    for row, (task, job) in zip(rows, items, strict=True):
        stored = await store.run(get_job(job.id))
        assert stored == row
        assert stored.task == await store.get_task(task.id)
        assert stored.task.status is TaskStatus.PENDING
        assert stored.workflow_mode == job.workflow_mode
    assert await everything_stored(store) == (4, 4)
    # Equal priority and run time: the batch is dispatched in the order given.
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=4)
    assert [c.task.id for c in claims] == [before.id, *(task.id for task in tasks)]
    assert await add_jobs(store, [], max_queue_size=1) == []
    unlimited = [(task, new_job(task.id)) for task in (new_task(T0) for _ in range(2))]
    assert len(await add_jobs(store, unlimited)) == 2
    assert await everything_stored(store) == (6, 6)


async def test_a_batch_the_queue_has_no_room_for_stores_nothing(store: TaskStore) -> None:
    waiting = new_task(T0)
    await store.add_task(waiting)
    items = [(task, new_job(task.id)) for task in (new_task(T0) for _ in range(3))]
    with pytest.raises(QueueFullError) as caught:
        await add_jobs(store, items, max_queue_size=3)  # room for 2
    assert (caught.value.limit, caught.value.size, caught.value.requested) == (3, 1, 3)
    assert await everything_stored(store) == (1, 0)
    for task, job in items:
        assert await store.get_task(task.id) is None
        assert await store.run(get_job(job.id)) is None
    # Running tasks do not count: once the waiting one runs, the batch fits.
    await claim_one(store)
    assert len(await add_jobs(store, items, max_queue_size=3)) == 3
    assert await everything_stored(store) == (4, 3)


async def test_a_batch_with_a_taken_id_stores_nothing(store: TaskStore) -> None:
    first = new_task(T0)
    await add_job(store, first, new_job("job-taken"))
    fresh = [new_task(T0) for _ in range(3)]
    # The last job's id is taken: the tasks and jobs before it must not stay behind.
    taken_job = [(task, new_job(f"new-{i}")) for i, task in enumerate(fresh[:2])]
    taken_job.append((fresh[2], new_job("job-taken")))
    # A task id given twice within the batch.
    twice = [(fresh[0], new_job("a")), (fresh[1], new_job("b")), (fresh[0], new_job("c"))]
    # A task id that exists.
    existing = [(fresh[0], new_job("d")), (first, new_job("e"))]
    for items in (taken_job, twice, existing):
        with pytest.raises(ValueError, match="already exists"):
            await add_jobs(store, items, max_queue_size=100)
        assert await everything_stored(store) == (1, 1)
        assert await store.get_tasks([task.id for task in fresh]) == []


async def test_translation_jobs_are_listed_newest_first_and_by_status(store: TaskStore) -> None:
    ids = []
    for i in range(3):
        task = new_task(T0 + i, task_type="translation")
        await add_job(store, task, new_job(task.id))
        ids.append(task.id)
    await store.request_cancel(ids[1], now=T0 + 5)
    assert [job.id for job in await store.run(list_jobs())] == ids[::-1]
    assert [job.id for job in await store.run(list_jobs(limit=1, offset=1))] == [ids[1]]
    cancelled = await store.run(list_jobs(statuses=[TaskStatus.CANCELLED]))
    assert [(job.id, job.task.status) for job in cancelled] == [(ids[1], TaskStatus.CANCELLED)]
    pending = await store.run(list_jobs(statuses=[TaskStatus.PENDING]))
    assert [job.id for job in pending] == [ids[2], ids[0]]


async def test_step_checkpoints_accumulate_and_the_result_is_kept(store: TaskStore) -> None:
    task = new_task(T0, task_type="translation")
    await add_job(store, task, new_job(task.id))
    first = {"output": "你好", "tokens": {"total": 12}, "notes": None}
    await store.run(save_step(task.id, "initial_translation", first, now=T0 + 1))
    await store.run(save_step(task.id, "editor's review", {"output": "x"}, now=T0 + 2))
    await store.run(save_step(task.id, "editor's review", {"output": "y"}, now=T0 + 3))
    await store.run(save_result(task.id, {"translation": "你好"}, now=T0 + 4))
    job = await store.run(get_job(task.id))
    assert job is not None
    assert job.steps == {"initial_translation": first, "editor's review": {"output": "y"}}
    assert job.result == {"translation": "你好"}
    assert job.updated_at == T0 + 4
    with pytest.raises(TaskNotFoundError):
        await store.run(save_step("nope", "initial_translation", {}, now=T0))
    with pytest.raises(TaskNotFoundError):
        await store.run(save_result("nope", {}, now=T0))


def checkpoint(model: str, prompt: int, completion: int, cost: float | None, at: float) -> Any:
    tokens = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"model": model, "tokens": tokens, "cost": cost, "finished_at": at, "output": "x"}


async def test_usage_by_model_sums_the_steps_finished_in_the_window(store: TaskStore) -> None:
    one, two = new_task(T0, task_type="translation"), new_task(T0, task_type="translation")
    await add_jobs(store, [(one, new_job(one.id)), (two, new_job(two.id))])
    steps = [
        (one.id, "initial_translation", checkpoint("a", 100, 10, 0.5, T0 + 1)),
        (one.id, "editor_review", checkpoint("b", 200, 20, None, T0 + 2)),
        (two.id, "initial_translation", checkpoint("a", 300, 30, 0.25, T0 + 3)),
        (two.id, "editor_review", checkpoint("b", 5, 5, None, T0 - 100)),  # before the window
    ]
    for job_id, step, saved in steps:
        await store.run(save_step(job_id, step, saved, now=T0 + 3))
    usage = await store.run(usage_by_model(since=T0))
    assert [(u.model, u.steps, u.prompt_tokens, u.completion_tokens, u.cost) for u in usage] == [
        ("a", 2, 400, 40, 0.75),
        ("b", 1, 200, 20, None),
    ]
    assert await store.run(usage_by_model(since=T0 + 10)) == []


async def test_usage_by_key_sums_each_concurrency_keys_jobs(store: TaskStore) -> None:
    tasks = [
        new_task(T0, task_type="translation", concurrency_key=key)
        for key in ("user:a", "user:a", "user:b", None)
    ]
    await add_jobs(store, [(task, new_job(task.id)) for task in tasks])
    spent = [(100, 0.5), (200, 0.25), (7, None), (9, 1.0)]
    for task, (prompt, cost) in zip(tasks, spent, strict=True):
        saved = checkpoint("m", prompt, 1, cost, T0 + 1)
        await store.run(save_step(task.id, "initial_translation", saved, now=T0 + 1))
    usage = await store.run(usage_by_key(since=T0))
    assert [(u.key, u.steps, u.prompt_tokens, u.cost) for u in usage] == [
        ("user:a", 2, 300, 0.75),
        ("user:b", 1, 7, None),
    ]


async def test_step_reports_are_kept_per_step_the_latest_winning(store: TaskStore) -> None:
    task = new_task(T0, task_type="translation")
    await add_job(store, task, new_job(task.id))
    assert (await store.run(get_job(task.id))).step_states == {}  # type: ignore[union-attr]
    await store.run(report_step(task.id, "initial_translation", "running", attempt=1, now=T0 + 1))
    await store.run(report_step(task.id, "initial_translation", "completed", attempt=1, now=T0 + 2))
    await store.run(report_step(task.id, "editor's review", "running", attempt=1, now=T0 + 3))
    await store.run(report_step(task.id, "editor's review", "failed", attempt=2, now=T0 + 4))
    job = await store.run(get_job(task.id))
    assert job is not None
    assert job.step_states == {
        "initial_translation": {"state": "completed", "attempt": 1, "at": T0 + 2},
        "editor's review": {"state": "failed", "attempt": 2, "at": T0 + 4},
    }
    assert job.steps == {}  # reports are not checkpoints
    assert job.updated_at == T0 + 4
    with pytest.raises(TaskNotFoundError):
        await store.run(report_step("nope", "initial_translation", "running", attempt=1, now=T0))


async def test_cleanup_deletes_a_translation_job_with_its_task(store: TaskStore) -> None:
    task = new_task(T0, task_type="translation")
    await add_job(store, task, new_job(task.id))
    await store.request_cancel(task.id, now=T0 + 1)
    assert await cleanup(store, before=T0 + 10) == 1
    assert await store.run(get_job(task.id)) is None
    assert await store.run(list_jobs()) == []
