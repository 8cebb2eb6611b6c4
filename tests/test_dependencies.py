"""Dependencies, named queues and aging through the manager, on a real SQLite file, and
their HTTP fields through a real uvicorn server."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from pydantic import ValidationError

import vpsweb_tasks.manager
from vpsweb_tasks import (
    HandlerUnavailableError,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskPriority,
    TaskStatus,
    UnknownTaskTypeError,
)
from vpsweb_tasks.cli import main
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import ConfigError, DependencyNotFoundError, UnknownQueueError
from vpsweb_tasks.events import TaskCancelled
from vpsweb_tasks_http import create_app

from . import process_tasks
from .http_server import serve
from .support import EventRecorder

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"


def step(name: str, **fields: Any) -> TaskDefinition:
    return TaskDefinition(name=name, task_type="step", **fields)


def register_steps(manager: TaskManager) -> list[str]:
    """A ``step`` type that returns its name and what its dependencies returned, and
    fails when its payload says so; the order steps ran in."""
    ran: list[str] = []

    @manager.task("step")
    async def run_step(context: TaskContext) -> dict[str, Any]:
        ran.append(context.definition.name)
        if context.payload.get("fail"):
            raise ValueError(f"{context.definition.name} is broken")
        return {"name": context.definition.name, "saw": dict(context.dependency_results)}

    return ran


async def test_a_chain_runs_in_order_each_step_seeing_the_one_before(manager: TaskManager) -> None:
    ran = register_steps(manager)
    first, second, third = await manager.chain([step("1"), step("2"), step("3")])
    last = await third.wait(timeout=10)
    assert ran == ["1", "2", "3"]
    assert last.result == {
        "name": "3",
        "saw": {second.task_id: {"name": "2", "saw": {first.task_id: {"name": "1", "saw": {}}}}},
    }
    assert last.depends_on == (second.task_id,)


async def test_a_failed_step_cancels_the_rest_of_its_chain_naming_it(manager: TaskManager) -> None:
    ran = register_steps(manager)
    recorder = EventRecorder()
    manager.events.add_listener(recorder, kinds={"task_cancelled"})
    contexts = await manager.chain(
        [step("1"), step("2", max_retries=0), step("3"), step("4")],
        payloads=[{}, {"fail": True}, {}, {}],
    )
    records = [await c.wait(timeout=10) for c in contexts]
    assert [r.status for r in records] == [
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.CANCELLED,
    ]
    assert ran == ["1", "2"]
    assert records[2].error_type == "DependencyFailedError"
    assert f"task_id:{contexts[1].task_id} failed" in (records[2].error_message or "")
    assert f"task_id:{contexts[2].task_id} was cancelled" in (records[3].error_message or "")
    # Each is announced, as any cancel is, to listeners (the dashboard, SSE clients).
    for context in contexts[2:]:
        await recorder.wait_for(TaskCancelled, task=context.task_id)
    assert len(recorder.of(TaskCancelled)) == 2


async def test_cancelling_a_waiting_task_announces_its_dependents_cancelled(
    manager: TaskManager,
) -> None:
    register_steps(manager)
    recorder = EventRecorder()
    manager.events.add_listener(recorder, kinds={"task_cancelled"})
    gate = anyio.Event()

    @manager.task("held")
    async def held(context: TaskContext) -> None:
        await gate.wait()

    blocker = await manager.submit(TaskDefinition(name="blocker", task_type="held"))
    first, second = await manager.chain([step("1", depends_on=(blocker.task_id,)), step("2")])
    await manager.cancel(first.task_id)
    await recorder.wait_for(TaskCancelled, task=second.task_id)
    assert (await second.wait(timeout=10)).status is TaskStatus.CANCELLED
    gate.set()


async def test_a_group_fans_in_and_a_step_may_run_anyway(manager: TaskManager) -> None:
    register_steps(manager)
    *parts, total = await manager.group(
        [step(f"p{n}", max_retries=0) for n in range(5)],
        then=step("total", on_dependency_failure="run"),
        payloads=[{"fail": n == 3} for n in range(5)],
    )
    record = await total.wait(timeout=10)
    assert record.status is TaskStatus.COMPLETED
    completed = {p.task_id: {"name": f"p{n}", "saw": {}} for n, p in enumerate(parts) if n != 3}
    assert record.result == {"name": "total", "saw": completed}
    assert await manager.dependencies(total.task_id) == {
        p.task_id: TaskStatus.FAILED if n == 3 else TaskStatus.COMPLETED
        for n, p in enumerate(parts)
    }


async def test_bad_dependencies_are_refused_and_nothing_is_stored(manager: TaskManager) -> None:
    register_steps(manager)
    gate = anyio.Event()

    @manager.task("held")
    async def held(context: TaskContext) -> None:
        await gate.wait()

    a = await manager.submit(TaskDefinition(name="a", task_type="held"))
    with pytest.raises(DependencyNotFoundError, match="depends_on: no task nope") as raised:
        await manager.submit(step("b", depends_on=(a.task_id, "nope")))
    assert raised.value.missing == ["nope"]
    with pytest.raises(ValidationError, match="depends_on"):
        step("c", depends_on=(a.task_id,), delay=timedelta(seconds=5))
    with pytest.raises(ValidationError, match="more than once"):
        step("c", depends_on=(a.task_id, a.task_id))
    with pytest.raises(ValueError, match="not with run_at or delay"):
        await manager.chain([step("x"), step("y", run_at=datetime.now(UTC))])
    counts = await manager.store.count_tasks()
    assert sum(counts.values()) == 1
    gate.set()


async def test_queues_must_be_configured_and_closures_served_here(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(background_tasks={"queues": {"mail": {}, "reports": {}}})
    async with TaskManager(settings) as manager:
        register_steps(manager)
        with pytest.raises(UnknownQueueError, match="queue: unknown queue 'nope'") as raised:
            await manager.submit(step("x", queue="nope"))
        assert raised.value.known == ["default", "mail", "reports"]

        async def closure(context: TaskContext) -> None:
            return None

        with pytest.raises(HandlerUnavailableError, match="do not serve queue 'mail'"):
            await manager.submit(TaskDefinition(name="c", task_type="adhoc", queue="mail"), closure)
        stored = await manager.submit(step("m", queue="mail"))  # another process serves it
        assert (await manager.get_task(stored.task_id)).queue == "mail"
    with pytest.raises(ConfigError, match="worker_queues: unknown queue 'mial'"):
        settings_factory(background_tasks={"queues": {"mail": {}}, "worker_queues": ["mial"]})


async def test_an_api_only_process_accepts_declared_types_only(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        background_tasks={"enabled": False, "declared_task_types": ["resize"]}
    )
    async with TaskManager(settings) as api:
        api.declare("render")
        for task_type in ("resize", "render"):
            context = await api.submit(TaskDefinition(name=task_type, task_type=task_type))
            assert (await api.get_task(context.task_id)).status is TaskStatus.PENDING
        with pytest.raises(UnknownTaskTypeError, match="'resise'") as raised:
            await api.submit(TaskDefinition(name="typo", task_type="resise"))
        assert {"render", "resize"} <= set(raised.value.registered)


async def test_a_queue_limit_bounds_its_tasks_while_others_run(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        background_tasks={
            "max_concurrent_jobs": 4,
            "queues": {"slow": {"max_concurrent": 1}},
            "worker_queues": ["slow", "default"],
        }
    )
    running: dict[str, int] = {"slow": 0, "default": 0}
    most: dict[str, int] = {"slow": 0, "default": 0}
    gate = anyio.Event()
    async with TaskManager(settings) as manager:

        @manager.task("tracked")
        async def tracked(context: TaskContext) -> None:
            queue = context.definition.queue
            running[queue] += 1
            most[queue] = max(most[queue], running[queue])
            if most["default"] >= 3:
                gate.set()
            await gate.wait()
            await anyio.sleep(0.01)
            running[queue] -= 1

        contexts = [
            await manager.submit(TaskDefinition(name=f"t{n}", task_type="tracked", queue=queue))
            for n in range(6)
            for queue in ("slow", "default")
        ]
        for context in contexts:
            assert (await context.wait(timeout=20)).status is TaskStatus.COMPLETED
    assert most == {"slow": 1, "default": 3}


async def starved_for(settings: Settings, *, watch: float) -> tuple[float | None, int]:
    """A LOW task among a stream of HIGH ones (each HIGH submits the next, a few always
    waiting) on one slot: how long the LOW one waited to start (None: not within
    ``watch`` seconds), and how many HIGH ones ran first."""
    stream = True
    highs_before = 0
    low_started: float | None = None
    async with TaskManager(settings) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> None:
            nonlocal highs_before, low_started
            if context.definition.priority is TaskPriority.LOW:
                low_started = time.monotonic()
                return
            if low_started is None:
                highs_before += 1
            if stream:
                await manager.submit(TaskDefinition(name="high", task_type="work", priority="high"))
            await anyio.sleep(0.01)

        for _ in range(3):
            await manager.submit(TaskDefinition(name="high", task_type="work", priority="high"))
        submitted = time.monotonic()
        low = await manager.submit(TaskDefinition(name="low", task_type="work", priority="low"))
        with anyio.move_on_after(watch):
            await low.wait()
        within = low_started
        stream = False
        await low.wait(timeout=30)
    return (None if within is None else within - submitted), highs_before


async def test_aging_starts_a_low_task_within_its_bound_amid_a_stream_of_high_ones(
    settings_factory: Callable[..., Settings],
) -> None:
    background = {"max_concurrent_jobs": 1}
    aging = 0.25  # a priority level per 0.25 s: LOW waits at most 2 x 0.25 s behind HIGH
    waited, highs = await starved_for(
        settings_factory(background_tasks={**background, "priority_aging_seconds": aging}),
        watch=5.0,
    )
    assert waited is not None
    assert 2 * aging * 0.8 <= waited <= 2 * aging + 1.0  # the bound, and a loaded machine
    assert highs >= 5  # priority still came first meanwhile
    # Strict priority (no aging): the stream starves it for as long as it flows.
    strict = settings_factory(background_tasks={**background, "priority_aging_seconds": None})
    waited, highs = await starved_for(strict, watch=1.5)
    assert waited is None
    assert highs >= 20


def write_config(tmp_path: Path, **background: Any) -> str:
    path = tmp_path / "config.yaml"
    config = {
        "storage": {"sqlite_path": str(tmp_path / "tasks.db")},
        "logging": {"file": None},
        "background_tasks": background,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_an_unknown_queue_in_the_workers_options_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vpsweb_tasks.manager, "_default", None)
    config = write_config(tmp_path, queues={"mail": {}})
    assert main(["worker", "--config", config, "--queues", "mail,mial"]) == 2
    err = capsys.readouterr().err
    assert "--queues: unknown queue 'mial'; the queues are default, mail" in err


async def test_http_submit_takes_depends_on_and_queue_and_status_shows_the_wait(
    settings_factory: Callable[..., Settings],
) -> None:
    gate = anyio.Event()

    def setup(manager: TaskManager) -> None:
        @manager.task("held")
        async def held(context: TaskContext) -> str:
            await gate.wait()
            return "held"

        @manager.task("after")
        async def after(context: TaskContext) -> dict[str, Any]:
            return context.dependency_results

    settings = settings_factory(background_tasks={"queues": {"mail": {}}})
    app = create_app(settings, setup=setup)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:

        async def submit(**body: Any) -> httpx.Response:
            return await client.post(f"{TASKS}/submit", json={"task_name": "t", **body})

        first = (await submit(task_type="held")).json()["task_id"]
        response = await submit(task_type="after", depends_on=[first])
        assert response.status_code == 202, response.text
        dependent = response.json()["task_id"]
        status = (await client.get(f"{TASKS}/status/{dependent}")).json()
        assert status["status"] == "pending"
        assert status["scheduled"] is False
        assert status["depends_on"] == [first]
        assert status["waiting_on"] == [first]
        assert status["dependencies"] == [{"task_id": first, "status": "running"}] or status[
            "dependencies"
        ] == [{"task_id": first, "status": "pending"}]
        assert status["queue"] == "default"

        errors = {
            "depends_on": await submit(task_type="after", depends_on=[first, "no-such-task"]),
            "queue": await submit(task_type="after", queue="nope"),
            "name": await submit(task_type="after", queue="bad name!"),
            "with delay": await submit(task_type="after", depends_on=[first], delay_seconds=3),
        }
        for case, answer in errors.items():
            assert answer.status_code == 422, (case, answer.text)
        assert errors["depends_on"].json()["detail"][0]["loc"] == ["body", "depends_on"]
        assert errors["depends_on"].json()["detail"][0]["input"] == ["no-such-task"]
        assert errors["queue"].json()["detail"][0]["loc"] == ["body", "queue"]
        assert errors["name"].json()["detail"][0]["loc"] == ["body", "queue"]
        assert errors["with delay"].json()["detail"][0]["loc"] == ["body", "depends_on"]
        mail = await submit(task_type="after", queue="mail")
        assert mail.status_code == 202

        gate.set()
        await app.state.manager.wait(dependent, timeout=10)
        status = (await client.get(f"{TASKS}/status/{dependent}")).json()
        assert status["status"] == "completed"
        assert status["result"] == {first: "held"}
        assert status["waiting_on"] == []
        assert status["dependencies"] == [{"task_id": first, "status": "completed"}]


async def test_a_process_task_receives_its_dependencies_results(manager: TaskManager) -> None:
    @manager.task("number")
    async def number(context: TaskContext) -> int:
        return int(context.payload["n"])

    manager.register("total", process_tasks.sum_dependencies, process=True)
    *_, total = await manager.group(
        [TaskDefinition(name=f"n{n}", task_type="number") for n in range(4)],
        then=TaskDefinition(name="total", task_type="total"),
        payloads=[{"n": n} for n in range(4)],
    )
    record = await total.wait(timeout=30)
    assert record.status is TaskStatus.COMPLETED, record.error_message
    assert record.result == 0 + 1 + 2 + 3
