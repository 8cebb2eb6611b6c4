"""Idempotency keys and run_at: a repeated submit gets the first task back (library and
HTTP, across processes), and a task waits for its time, across restarts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from pydantic import ValidationError

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import IdempotencyKeyError
from vpsweb_tasks_http import create_app

from .conftest import FakeClock
from .http_server import serve

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
TASKS = "/api/v1/background-tasks"


def register(manager: TaskManager) -> list[str]:
    """A task type whose runs are recorded (their payloads' ``n``)."""
    ran: list[str] = []

    @manager.task("work")
    async def work(context: TaskContext) -> int:
        ran.append(context.task_id)
        return int(context.payload.get("n", 0))

    return ran


# --- the library -------------------------------------------------------------------------


async def test_a_repeated_key_gets_the_first_task(
    settings_factory: Callable[..., Settings],
) -> None:
    async with TaskManager(settings_factory()) as manager:
        ran = register(manager)
        definition = TaskDefinition(name="charge", task_type="work", idempotency_key="order-7")
        first = await manager.submit(definition, n=7)
        again = await manager.submit(definition, n=7)
        assert (first.replayed, again.replayed) == (False, True)
        assert again.task_id == first.task_id
        assert (await again.wait(timeout=10)).result == 7
        # Once finished, still the same task: a retried client does not pay twice.
        late = await manager.submit(definition, n=7)
        assert (late.task_id, late.replayed, late.status) == (
            first.task_id,
            True,
            TaskStatus.COMPLETED,
        )
        assert ran == [first.task_id]
        record = await manager.get_task(first.task_id)
        assert record.idempotency_key == "order-7"
        # The key with another request: refused, nothing stored.
        with pytest.raises(IdempotencyKeyError, match="'order-7'") as refused:
            await manager.submit(definition, n=8)
        assert refused.value.task_id == first.task_id
        counts = await manager.store.count_tasks()
        assert sum(counts.values()) == 1


async def test_a_batch_has_one_key(settings_factory: Callable[..., Settings]) -> None:
    async with TaskManager(settings_factory()) as manager:
        register(manager)
        definitions = [TaskDefinition(name=f"t{i}", task_type="work") for i in range(3)]
        payloads = [{"n": i} for i in range(3)]
        first = await manager.submit_batch(definitions, payloads=payloads, idempotency_key="b1")
        again = await manager.submit_batch(definitions, payloads=payloads, idempotency_key="b1")
        assert [c.task_id for c in again] == [c.task_id for c in first]
        assert all(c.replayed for c in again)
        with pytest.raises(IdempotencyKeyError):
            await manager.submit_batch(definitions[:2], payloads=payloads[:2], idempotency_key="b1")
        keyed = [d.model_copy(update={"idempotency_key": "own"}) for d in definitions]
        with pytest.raises(ValueError, match="one idempotency_key"):
            await manager.submit_batch(keyed)
        with pytest.raises(ValueError, match="use await submit"):
            manager.create_task(keyed[0])
        counts = await manager.store.count_tasks()
        assert sum(counts.values()) == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "x" * 256}, "idempotency_key"),
        ({"idempotency_key": "has space"}, "idempotency_key"),
        ({"idempotency_key": "é"}, "idempotency_key"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at"),  # naive
        ({"run_at": datetime(2030, 1, 1, tzinfo=UTC), "delay": 5}, "run_at"),
    ],
)
def test_bad_keys_and_start_times_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TaskDefinition(name="n", task_type="t", **fields)
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


async def test_two_processes_racing_on_one_key_store_one_task(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    """50 submits at once under one key, 25 from each of two processes: one task, and
    every caller gets its id."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": storage,
                "background_tasks": {"enabled": False},
                "logging": {"file": None},
                "system_resources": {"enable_resource_monitoring": False},
            }
        )
    )
    command = [sys.executable, "-m", "tests.keyed_submitter", str(config), "race-1", "25"]
    outputs: list[str] = []
    async with (
        await anyio.open_process(command, cwd=ROOT) as one,
        await anyio.open_process(command, cwd=ROOT) as two,
    ):
        processes = [one, two]
        for process in processes:
            assert process.stdout is not None
            assert (await process.stdout.receive()).strip() == b"READY"
        for process in processes:  # go, both at once
            assert process.stdin is not None
            await process.stdin.send(b"go\n")
        with anyio.fail_after(60):
            for process in processes:
                assert process.stdout is not None
                chunks = [chunk async for chunk in process.stdout]
                outputs.append(b"".join(chunks).decode())
                assert await process.wait() == 0
    answers = [line.split() for output in outputs for line in output.split("\n") if line.strip()]
    assert len(answers) == 50
    assert len({task_id for task_id, _ in answers}) == 1
    assert [replayed for _, replayed in answers].count("False") == 1
    settings = Settings.model_validate({"storage": storage, "logging": {"file": None}})
    async with TaskManager(settings) as manager:
        counts = await manager.store.count_tasks()
    assert sum(counts.values()) == 1


# --- run_at ------------------------------------------------------------------------------


async def test_a_task_waits_for_its_run_at_across_a_restart(
    settings_factory: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    at = datetime.fromtimestamp(clock.now + 3600, UTC)
    settings = settings_factory()
    async with TaskManager(settings, clock=clock) as manager:
        ran = register(manager)
        later = await manager.submit(TaskDefinition(name="later", task_type="work", run_at=at))
        now = await manager.submit(TaskDefinition(name="now", task_type="work"))
        await now.wait(timeout=10)  # a dispatch round passed it by
        assert ran == [now.task_id]
        record = await manager.get_task(later.task_id)
        assert (record.status, record.run_at) == (TaskStatus.PENDING, at)
    clock.advance(3600)
    async with TaskManager(settings, clock=clock) as manager:  # another process, later
        ran = register(manager)
        done = await manager.wait(later.task_id, timeout=10)
    assert done.status is TaskStatus.COMPLETED
    assert ran == [later.task_id]


async def test_a_run_at_in_the_past_runs_now(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock()
    async with TaskManager(settings_factory(), clock=clock) as manager:
        register(manager)
        past = datetime.fromtimestamp(clock.now - 86400, UTC)
        context = await manager.submit(TaskDefinition(name="p", task_type="work", run_at=past))
        record = await context.wait(timeout=10)
    assert record.status is TaskStatus.COMPLETED
    assert record.run_at == record.created_at  # its turn among the others, not ahead of them


# --- HTTP --------------------------------------------------------------------------------


def setup(manager: TaskManager) -> None:
    register(manager)


async def test_http_idempotency_key_and_run_at(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(), setup=setup)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        body = {"task_name": "charge", "task_type": "work", "payload": {"n": 1}}
        key = {"Idempotency-Key": "3f0e9c1a-order-1"}
        first = await client.post(f"{TASKS}/submit", json=body, headers=key)
        again = await client.post(f"{TASKS}/submit", json=body, headers=key)
        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        other = await client.post(
            f"{TASKS}/submit", json={**body, "payload": {"n": 2}}, headers=key
        )
        assert other.status_code == 422
        [error] = other.json()["detail"]
        assert error["loc"] == ["header", "Idempotency-Key"]
        assert first.json()["task_id"] in error["msg"]
        too_long = await client.post(
            f"{TASKS}/submit", json=body, headers={"Idempotency-Key": "k" * 256}
        )
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]

        soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        later = await client.post(f"{TASKS}/submit", json={**body, "run_at": soon})
        assert later.status_code == 202
        status = (await client.get(f"{TASKS}/status/{later.json()['task_id']}")).json()
        assert (status["status"], status["scheduled"]) == ("pending", True)
        assert datetime.fromisoformat(status["run_at"]) == datetime.fromisoformat(soon)
        done = (await client.get(f"{TASKS}/status/{first.json()['task_id']}")).json()
        assert done["scheduled"] is False
        assert done["idempotency_key"] == "3f0e9c1a-order-1"
        for bad in (
            {"run_at": "2030-01-01T00:00:00"},  # no offset
            {"run_at": soon, "delay_seconds": 5},
            {"run_at": "not a time"},
        ):
            refused = await client.post(f"{TASKS}/submit", json={**body, **bad})
            assert refused.status_code == 422, bad
            assert refused.json()["detail"][0]["loc"][-1] == "run_at", refused.json()
        listed = (await client.get(f"{TASKS}/active")).json()["tasks"]
        assert [t["scheduled"] for t in listed] == [True]
