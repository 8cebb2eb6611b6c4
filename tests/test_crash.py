"""Crash safety with real processes: SIGKILL mid-run, restart, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from vpsweb_tasks import TaskContext, TaskManager, TaskStatus
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore

from .crash_worker import settings

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
