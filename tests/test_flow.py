"""Dependencies and named queues with real worker processes, on each backend: a diamond
and a 100-task fan-in survive a SIGKILL of their worker mid-run (the last step runs once,
after the others, with their results), and workers run only the queues they serve.

Workers are ``vpsweb-tasks worker --import tests.mp_tasks`` processes (see
tests/test_multiprocess.py); this process is an API-only manager that declares the task
types the workers run instead of registering stubs.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from vpsweb_tasks import TaskDefinition, TaskManager, TaskRecord, TaskStatus, load_config
from vpsweb_tasks.models import ExecutionOutcome

from .mp_support import Worker, poll, runs, start_worker, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

__all__ = ["start_worker"]  # the fixture, used by name

QUEUES = {"a": {}, "b": {}}


@pytest.fixture
async def api(tmp_path: Path, storage: dict[str, Any]) -> AsyncIterator[TaskManager]:
    """An API-only manager: it runs no workers and has no handlers, only declarations."""
    config = write_config(tmp_path / "api.yaml", storage, enabled=False, queues=QUEUES)
    async with TaskManager(load_config(config)) as manager:
        manager.declare("mp_flow")
        manager.declare("mp_work")
        yield manager


def flow(name: str, **fields: Any) -> TaskDefinition:
    return TaskDefinition(name=name, task_type="mp_flow", **fields)


def started(run_log: Path, pid: int | None = None) -> Counter[str]:
    return Counter(
        task_id
        for word, task_id, by in runs(run_log)
        if word == "START" and (pid is None or by == pid)
    )


async def kill(worker: Worker) -> None:
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait()
    assert worker.process.returncode == -signal.SIGKILL


async def check_fan_in(
    api: TaskManager, last: TaskRecord, before: list[str], run_log: Path
) -> None:
    """``last`` completed after every task of ``before`` completed, ran once, and saw
    each one's result."""
    assert last.status is TaskStatus.COMPLETED, last.error_message
    executions = await api.list_executions(last.id)
    assert [e.outcome for e in executions] == [ExecutionOutcome.COMPLETED]
    assert started(run_log)[last.id] == 1
    records = await api.store.get_tasks(before)
    assert {r.status for r in records} == {TaskStatus.COMPLETED}
    assert last.started_at is not None
    assert all(r.finished_at is not None and r.finished_at <= last.started_at for r in records)
    assert last.result["saw"] == {r.id: r.result["name"] for r in records}


async def test_a_diamond_survives_a_sigkill_and_its_last_step_runs_once_with_both_results(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    config = write_config(tmp_path / "worker.yaml", storage, max_concurrent_jobs=2)
    first = start_worker(config)
    await first.ready()
    a = await api.submit(flow("A"), name="A")
    b, c, d = await api.group(
        [flow("B", depends_on=(a.task_id,)), flow("C", depends_on=(a.task_id,))],
        then=flow("D"),
        payloads=[{"name": "B", "release": str(release)}, {"name": "C", "release": str(release)}],
        then_payload={"name": "D"},
    )
    run_log = tmp_path / "runs.log"

    async def both_running() -> bool:
        return {b.task_id, c.task_id} <= set(started(run_log, first.process.pid))

    await poll(both_running, timeout=60)
    status = await api.get_task(d.task_id)
    assert status.waiting_on_dependencies
    await kill(first)
    release.touch()
    second = start_worker(config)
    await second.ready()
    last = await api.wait(d.task_id, timeout=60)
    await check_fan_in(api, last, [b.task_id, c.task_id], run_log)
    assert last.result == {"name": "D", "saw": {b.task_id: "B", c.task_id: "C"}}
    for step in (b, c):
        outcomes = [e.outcome for e in await api.list_executions(step.task_id)]
        assert outcomes == [ExecutionOutcome.LOST, ExecutionOutcome.COMPLETED]


async def test_a_100_task_fan_in_survives_a_sigkill_and_its_last_step_sees_all_results(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    config = write_config(tmp_path / "worker.yaml", storage, max_concurrent_jobs=4)
    first = start_worker(config)
    await first.ready()
    # The first 60 run through; the others wait for the release, so the kill lands
    # while the worker holds some of them.
    payloads = [
        {"name": f"part{n}", **({"release": str(release)} if n >= 60 else {})} for n in range(100)
    ]
    *parts, last = await api.group(
        [flow(f"part{n}") for n in range(100)],
        then=flow("sum"),
        payloads=payloads,
        then_payload={"name": "sum"},
    )
    run_log = tmp_path / "runs.log"
    blocked = {p.task_id for p in parts[60:]}

    async def holds_blocked_ones() -> bool:
        return len(blocked & set(started(run_log, first.process.pid))) >= 2

    await poll(holds_blocked_ones, timeout=60)
    await kill(first)
    release.touch()
    second = start_worker(config)
    await second.ready()
    record = await api.wait(last.task_id, timeout=120)
    await check_fan_in(api, record, [p.task_id for p in parts], run_log)
    lost_by: dict[str, list[str]] = {}  # task id: the workers of its lost attempts
    for p in parts:
        for e in await api.list_executions(p.task_id):
            if e.outcome is ExecutionOutcome.LOST:
                lost_by.setdefault(p.task_id, []).append(e.worker_id)
    # The blocked tasks the killed worker held could not end: each lost its attempt. Any
    # other task it held may have lost one too: one it had run whose outcome was still on
    # its way, or one it had claimed and not started yet. Every lost attempt was its own.
    ran_in_first = set(started(run_log, first.process.pid))
    held = blocked & ran_in_first
    assert len(held) >= 2
    assert held <= set(lost_by)
    assert {by for workers in lost_by.values() for by in workers} == {first.worker_id}


async def test_workers_run_only_the_queues_they_serve(
    api: TaskManager,
    storage: dict[str, Any],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "worker.yaml", storage, max_concurrent_jobs=4, queues=QUEUES)
    on_a = start_worker(config, "--queues", "a")
    on_b = start_worker(config, "--queues", "b")
    ids = {queue: [] for queue in ("a", "b")}  # type: dict[str, list[str]]
    for n in range(40):
        queue = "ab"[n % 2]
        definition = TaskDefinition(name=f"w{n}", task_type="mp_work", queue=queue)
        ids[queue].append((await api.submit(definition, n=n, seconds=0.0)).task_id)
    workers = {"a": await on_a.ready(), "b": await on_b.ready()}
    for queue, task_ids in ids.items():
        for task_id in task_ids:
            record = await api.wait(task_id, timeout=60)
            assert record.status is TaskStatus.COMPLETED
            assert record.queue == queue
            (execution,) = await api.list_executions(task_id)
            assert execution.worker_id == workers[queue]
