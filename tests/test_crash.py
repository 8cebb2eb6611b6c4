"""Crash safety with real processes: SIGKILL mid-run, restart, nothing lost; an attempt
lost with its worker is counted apart from failures, against its own bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore

from .crash_worker import register, settings, worker_settings

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def start_worker(database: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", str(database), str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_sigkill_mid_run_then_restart_loses_nothing(tmp_path: Path) -> None:
    database = tmp_path / "crash.db"
    count = 40
    child = start_worker(database, count)
    assert child.stdout is not None
    submitted: list[str] = []
    started: list[str] = []
    try:
        # Read the child's own reports until it has accepted every task and has started
        # more than one batch of them: then some are done, some running, some waiting.
        for line in child.stdout:
            word, _, task_id = line.strip().partition(" ")
            if word == "SUBMITTED":
                submitted.append(task_id)
            elif word == "STARTED":
                started.append(task_id)
            if len(submitted) == count and len(started) >= 9:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(submitted) == count

    runs_here: list[str] = []

    async def step(context: TaskContext) -> dict[str, int]:
        runs_here.append(context.task_id)
        return {"n": int(context.payload["n"])}

    # What the dead process left behind, read before anything recovers it.
    async with SQLiteTaskStore(database) as store:
        before = {t.id: t for t in await store.list_tasks(limit=1000)}
    assert set(before) == set(submitted), "every accepted task is stored"
    finished_by_the_child = {i for i, t in before.items() if t.status is TaskStatus.COMPLETED}
    interrupted = {i for i, t in before.items() if t.status is TaskStatus.RUNNING}
    assert interrupted, "the kill landed while tasks were running"
    assert len(finished_by_the_child) < count

    async with TaskManager(settings(str(database))) as manager:  # type: ignore[arg-type]
        manager.register("step", step)
        # The restarted manager saw that the dead worker's process is gone and recovered
        # its tasks at once (no need to wait for the 60 s lease).
        with anyio.fail_after(30):
            finals = [await manager.wait(task_id) for task_id in submitted]
        executions = {task_id: await manager.list_executions(task_id) for task_id in interrupted}

    assert all(record.status is TaskStatus.COMPLETED for record in finals)
    assert sorted(record.result["n"] for record in finals) == list(range(count))
    # Finished work is not redone; everything else ran exactly once more here.
    assert not finished_by_the_child & set(runs_here)
    assert sorted(runs_here) == sorted(set(submitted) - finished_by_the_child)
    for task_id, attempts in executions.items():
        outcomes = [e.outcome for e in attempts]
        assert outcomes == [ExecutionOutcome.LOST, ExecutionOutcome.COMPLETED], task_id
        assert attempts[0].error_category == "resource"


# --- lost attempts are counted apart, on both backends -------------------------------------


class Worker:
    """A ``crash_worker serve`` process, read line by line."""

    def __init__(self, tmp_path: Path, storage: dict[str, Any], **background: Any) -> None:
        self.stderr = tmp_path / f"worker-{os.urandom(4).hex()}.stderr"
        with self.stderr.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.crash_worker",
                    "serve",
                    json.dumps(storage),
                    json.dumps(background),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def line(self, word: str, *, timeout: float = 30.0) -> str:
        """Read up to the next line that starts with ``word``; the rest of it."""
        assert self.process.stdout is not None
        with anyio.fail_after(timeout):
            while True:
                line = await anyio.to_thread.run_sync(
                    self.process.stdout.readline, abandon_on_cancel=True
                )
                assert line, f"the worker exited:\n{self.stderr.read_text()}"
                found, _, rest = line.strip().partition(" ")
                if found == word:
                    return rest

    async def exited(self, *, timeout: float = 30.0) -> int:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(self.process.wait, abandon_on_cancel=True)

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert await self.exited() == -signal.SIGKILL

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


async def submit(storage: dict[str, Any], definition: TaskDefinition, **payload: Any) -> str:
    """Submit from an API-only manager, which runs nothing."""
    async with TaskManager(worker_settings(storage, enabled=False)) as api:
        register(api)
        return (await api.submit(definition, **payload)).task_id


async def test_a_task_killed_with_its_worker_three_times_completes_on_the_fourth_run(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    # max_retries=0: a single lost attempt used to dead-letter it.
    task_id = await submit(
        storage,
        TaskDefinition(name="fragile", task_type="fragile", max_retries=0),
        release=str(release),
    )
    killed: list[str] = []
    for _ in range(3):
        # Each worker recovers the task its predecessor died with as it starts, runs it,
        # and is killed running it.
        worker = Worker(tmp_path, storage)
        try:
            killed.append(await worker.line("READY"))
            assert await worker.line("STARTED") == task_id
            await worker.kill()
        finally:
            worker.close()
    release.touch()

    # The fourth run, in a worker in this process, which recovers the task as it starts
    # (its third loss: after retry_delay doubled) and runs it to the end.
    manager = TaskManager(worker_settings(storage))
    register(manager)
    async with manager:
        record = await manager.wait(task_id, timeout=30)
        executions = await manager.list_executions(task_id)
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "done")
    assert (record.attempts, record.lost_attempts) == (1, 3)
    assert [(e.outcome, e.worker_id) for e in executions] == [
        *[(ExecutionOutcome.LOST, worker_id) for worker_id in killed],
        (ExecutionOutcome.COMPLETED, manager.worker_id),
    ]
    for lost in executions[:3]:
        assert (lost.error_category, lost.error_type) == ("resource", "WorkerLostError")
        assert lost.finished_at is not None


async def test_a_task_that_kills_its_worker_every_time_is_dead_lettered_at_the_bound(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    bound = {"max_lost_attempts": 2}
    task_id = await submit(storage, TaskDefinition(name="poison", task_type="poison"))
    died: list[str] = []
    for _ in range(bound["max_lost_attempts"]):
        worker = Worker(tmp_path, storage, **bound)
        try:
            died.append(await worker.line("READY"))
            assert await worker.line("STARTED") == task_id
            assert await worker.exited() == -signal.SIGKILL  # it killed itself
        finally:
            worker.close()

    # The next worker to start finds the second loss, which reaches the bound.
    manager = TaskManager(worker_settings(storage, **bound))
    register(manager)
    async with manager:
        letter = await manager.dead_letter(task_id)
    task = letter.task
    assert (task.status, task.attempts, task.lost_attempts) == (TaskStatus.FAILED, 0, 2)
    assert (task.error_type, task.error_category) == ("WorkerLostError", "resource")
    assert task.error_message is not None
    assert "was lost with its worker 2 times (max_lost_attempts 2)" in task.error_message
    assert letter.cause == "lost"
    assert [(e.outcome, e.worker_id) for e in letter.executions] == [
        (ExecutionOutcome.LOST, worker_id) for worker_id in died
    ]
