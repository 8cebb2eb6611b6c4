"""The dead letter queue: failed tasks, their attempts, and requeueing them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from vpsweb_tasks import (
    DeadLetter,
    ErrorCategory,
    HandlerUnavailableError,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskMonitor,
    TaskNotFoundError,
    TaskStateError,
    TaskStatus,
)
from vpsweb_tasks import manager as manager_module
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks.events import TaskDeadLettered, TaskRequeued
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks_http import create_router

from .conftest import FakeClock
from .support import EventRecorder

pytestmark = pytest.mark.anyio


def definition(task_type: str, **fields: Any) -> TaskDefinition:
    return TaskDefinition(name=fields.pop("name", task_type), task_type=task_type, **fields)


def register_failures(manager: TaskManager) -> dict[str, bool]:
    """Task types that fail by category; ``healthy[type]`` makes one succeed."""
    healthy = {"strict": False, "denied": False, "network": False}

    async def strict(context: TaskContext) -> str:
        if not healthy["strict"]:
            raise ValueError(f"bad input {context.payload.get('n')}")
        return "valid now"

    async def denied(context: TaskContext) -> str:
        if not healthy["denied"]:
            raise PermissionError("not allowed")
        return "allowed now"

    async def network(context: TaskContext) -> str:
        if not healthy["network"]:
            raise ConnectionResetError(f"reset on attempt {context.attempt}")
        return "connected"

    manager.register("strict", strict)
    manager.register("denied", denied)
    manager.register("network", network)
    return healthy


async def fail_all(manager: TaskManager, *plan: tuple[str, dict[str, Any]]) -> list[str]:
    """Submit tasks one after another and wait for each to fail; ids, oldest first."""
    ids = []
    for task_type, fields in plan:
        context = await manager.submit(definition(task_type, **fields), n=len(ids))
        record = await context.wait(timeout=10)
        assert record.status is TaskStatus.FAILED
        ids.append(context.task_id)
    return ids


async def test_list_dead_letters_by_category_and_type(manager: TaskManager) -> None:
    register_failures(manager)

    @manager.task("fine")
    async def fine(context: TaskContext) -> None:
        return None

    await (await manager.submit(definition("fine"))).wait(timeout=10)
    strict1, denied, net, strict2 = await fail_all(
        manager,
        ("strict", {}),
        ("denied", {}),
        ("network", {"max_retries": 0}),
        ("strict", {}),
    )
    listed = await manager.list_dead_letters()
    assert [r.id for r in listed] == [strict2, net, denied, strict1]  # latest failure first
    assert [r.error_category for r in listed] == [
        ErrorCategory.VALIDATION,
        ErrorCategory.NETWORK,
        ErrorCategory.PERMISSION,
        ErrorCategory.VALIDATION,
    ]
    validation = await manager.list_dead_letters(category=ErrorCategory.VALIDATION)
    assert [r.id for r in validation] == [strict2, strict1]
    assert [r.id for r in await manager.list_dead_letters(category="network")] == [net]
    assert [r.id for r in await manager.list_dead_letters(task_type="denied")] == [denied]
    assert await manager.list_dead_letters(category="timeout") == []
    assert [r.id for r in await manager.list_dead_letters(limit=2, offset=1)] == [net, denied]
    with pytest.raises(ValueError, match="timeouts"):
        await manager.list_dead_letters(category="timeouts")


async def test_filtering_by_category_pages_through_the_store(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "_DEAD_LETTER_PAGE", 2)
    register_failures(manager)
    plan = [("strict", {}), ("denied", {})] * 3 + [("strict", {})]
    ids = await fail_all(manager, *plan)
    newest_first = ids[::-1]
    strict = [i for i in newest_first if i in ids[0::2]]
    assert [r.id for r in await manager.list_dead_letters(category="validation")] == strict
    page = await manager.list_dead_letters(category="validation", limit=2, offset=1)
    assert [r.id for r in page] == strict[1:3]
    denied = await manager.list_dead_letters(category="permission", offset=2)
    assert [r.id for r in denied] == [i for i in newest_first if i in ids[1::2]][2:]


async def test_a_dead_letter_shows_every_attempts_error(manager: TaskManager) -> None:
    register_failures(manager)
    [task_id] = await fail_all(manager, ("network", {"max_retries": 5}))
    letter = await manager.dead_letter(task_id)
    failed = ExecutionOutcome.FAILED
    assert isinstance(letter, DeadLetter)
    assert (letter.task.id, letter.task.status, letter.task.attempts) == (
        task_id,
        TaskStatus.FAILED,
        3,  # a network error gets 3 attempts
    )
    assert [
        (e.attempt, e.outcome, e.error_category, e.error_type, e.error_message)
        for e in letter.errors
    ] == [
        (n, failed, ErrorCategory.NETWORK, "ConnectionResetError", f"reset on attempt {n}")
        for n in (1, 2, 3)
    ]
    assert letter.executions == tuple(letter.errors)
    assert (letter.cause, letter.task.lost_attempts) == ("failed", 0)

    @manager.task("fine")
    async def fine(context: TaskContext) -> None:
        return None

    done = await manager.submit(definition("fine"))
    await done.wait(timeout=10)
    with pytest.raises(TaskStateError, match="it is completed"):
        await manager.dead_letter(done.task_id)
    with pytest.raises(TaskNotFoundError):
        await manager.dead_letter("no-such-task")


async def test_requeue_runs_a_dead_letter_again(manager: TaskManager) -> None:
    healthy = register_failures(manager)
    recorder = EventRecorder()
    manager.events.add_listener(recorder)
    context = await manager.submit(definition("network", max_retries=5))
    assert (await context.wait(timeout=10)).status is TaskStatus.FAILED

    healthy["network"] = True  # the service is back
    requeued = await manager.requeue(context.task_id)
    assert (requeued.status, requeued.attempts) == (TaskStatus.PENDING, 0)
    [event] = recorder.of(TaskRequeued, task=context.task_id)
    assert event.reason == "dead_letter"
    # The submitter's context waits for the new run, which the requeue woke at once.
    record = await context.wait(timeout=10)
    assert (record.status, record.result, record.attempts) == (
        TaskStatus.COMPLETED,
        "connected",
        1,
    )
    executions = await manager.list_executions(context.task_id)
    assert [e.outcome for e in executions] == [ExecutionOutcome.FAILED] * 3 + [
        ExecutionOutcome.COMPLETED
    ]
    assert await manager.list_dead_letters() == []
    with pytest.raises(TaskStateError, match=r"cannot requeue task .*: it is completed"):
        await manager.requeue(context.task_id)
    with pytest.raises(TaskNotFoundError):
        await manager.requeue("no-such-task")


async def test_requeue_all_by_category_and_type(manager: TaskManager) -> None:
    healthy = register_failures(manager)
    strict1, denied, strict2, net = await fail_all(
        manager,
        ("strict", {}),
        ("denied", {}),
        ("strict", {}),
        ("network", {"max_retries": 0}),
    )
    recorder = EventRecorder()
    manager.events.add_listener(recorder)
    healthy["strict"] = True
    assert await manager.requeue_all(category="validation") == 2
    for task_id in (strict1, strict2):
        assert (await manager.wait(task_id, timeout=10)).result == "valid now"
    assert {e.task for e in recorder.of(TaskRequeued)} == {strict1, strict2}
    assert {r.id for r in await manager.list_dead_letters()} == {denied, net}

    healthy["network"] = True
    assert await manager.requeue_all(task_type="network") == 1
    assert (await manager.wait(net, timeout=10)).status is TaskStatus.COMPLETED
    assert await manager.requeue_all(category="validation") == 0
    assert [r.id for r in await manager.list_dead_letters()] == [denied]


async def test_a_closures_dead_letter_cannot_be_requeued(manager: TaskManager) -> None:
    async def closure(context: TaskContext) -> None:
        raise ValueError("bad")

    context = await manager.submit(definition("adhoc"), closure)
    assert (await context.wait(timeout=10)).status is TaskStatus.FAILED
    with pytest.raises(HandlerUnavailableError, match="submit it again"):
        await manager.requeue(context.task_id)
    assert await manager.requeue_all() == 0
    assert (await manager.get_task(context.task_id)).status is TaskStatus.FAILED


async def test_a_task_whose_attempts_keep_being_lost_is_dead_lettered_saying_so(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    # This process runs no workers: "ghost", a worker that never heartbeats, claims the
    # tasks and dies with them; this process's reaper finds their leases expired.
    settings = settings_factory(
        background_tasks={
            "enabled": False,
            "max_lost_attempts": 3,
            "retry_delay": 7.0,
            "lease_seconds": 30.0,
        }
    )
    manager = TaskManager(settings, clock=clock)

    async def work(context: TaskContext) -> None:
        raise AssertionError("this process runs no workers")

    manager.register("work", work)
    recorder = EventRecorder()
    manager.events.add_listener(recorder)
    app = FastAPI()
    app.include_router(create_router(manager, TaskMonitor(manager)))
    transport = httpx.ASGITransport(app=app)
    async with manager, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        stubborn = (await manager.submit(definition("work", max_retries=0))).task_id
        touchy = (await manager.submit(definition("work", max_lost_attempts=1))).task_id

        async def lose_an_attempt(expected: int) -> None:
            claims = await manager.store.claim(
                worker_id="ghost", now=clock(), lease_seconds=30.0, limit=2
            )
            assert len(claims) == expected
            clock.advance(31)
            await manager.queue.reap()

        await lose_an_attempt(2)
        # Its own bound: dead at the first loss. The other runs again at once...
        record = await manager.get_task(stubborn)
        assert (record.status, record.attempts, record.lost_attempts) == (
            TaskStatus.RETRYING,
            0,  # max_retries=0, and still retried: a loss is not a failure
            1,
        )
        assert record.run_at.timestamp() == clock()
        await lose_an_attempt(1)
        # ... then after retry_delay, doubling from the second loss on.
        record = await manager.get_task(stubborn)
        assert (record.status, record.lost_attempts) == (TaskStatus.RETRYING, 2)
        assert record.run_at.timestamp() == clock() + 7.0
        assert (
            await manager.store.claim(worker_id="ghost", now=clock(), lease_seconds=30.0, limit=2)
            == []
        )
        clock.advance(7.0)
        await lose_an_attempt(1)

        for task_id, lost in ((touchy, 1), (stubborn, 3)):
            letter = await manager.dead_letter(task_id)
            assert letter.cause == "lost"
            task = letter.task
            assert (task.status, task.attempts, task.lost_attempts) == (
                TaskStatus.FAILED,
                0,
                lost,
            )
            assert (task.error_type, task.error_category) == (
                "WorkerLostError",
                ErrorCategory.RESOURCE,
            )
            assert f"lost with its worker {lost} times" in (task.error_message or "")
            assert [e.outcome for e in letter.executions] == [ExecutionOutcome.LOST] * lost
            [event] = recorder.of(TaskDeadLettered, task=task_id)
            assert (event.category, event.error_message) == (
                ErrorCategory.RESOURCE,
                task.error_message,
            )
            tasks = "/api/v1/background-tasks"
            body = (await client.get(f"{tasks}/dead-letters/{task_id}")).json()
            assert (body["cause"], body["lost_attempts"], body["attempts"]) == ("lost", lost, 0)
            assert body["error"]["type"] == "WorkerLostError"
            assert [e["outcome"] for e in body["executions"]] == ["lost"] * lost
            status = (await client.get(f"{tasks}/status/{task_id}")).json()
            assert (status["lost_attempts"], status["max_lost_attempts"]) == (
                lost,
                1 if task_id == touchy else None,
            )
        # A requeue gives it a new budget.
        requeued = await manager.requeue(stubborn)
        assert (requeued.status, requeued.attempts, requeued.lost_attempts) == (
            TaskStatus.PENDING,
            0,
            0,
        )


def test_the_bounds_on_lost_attempts_are_validated(
    settings_factory: Callable[..., Settings],
) -> None:
    assert definition("work", max_lost_attempts=1).max_lost_attempts == 1
    with pytest.raises(ValidationError, match="max_lost_attempts"):
        definition("work", max_lost_attempts=0)
    assert settings_factory().background_tasks.max_lost_attempts == 5
    with pytest.raises(ConfigError, match="max_lost_attempts"):
        settings_factory(background_tasks={"max_lost_attempts": 0})
