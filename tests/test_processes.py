"""Process tasks (``process=True``): child processes, memory limits, kills on cancel and
timeout. Real children: each test starts a few (~50 ms each)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from vpsweb_tasks import (
    ErrorCategory,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskStatus,
)
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks.events import TaskProgressed
from vpsweb_tasks.processes import MIN_MEMORY_LIMIT_MB

from . import process_ballast, process_tasks
from .conftest import make_settings
from .support import EventRecorder

pytestmark = pytest.mark.anyio


def definition(task_type: str, **fields: Any) -> TaskDefinition:
    return TaskDefinition(name=task_type, task_type=task_type, **fields)


def gone(pid: int) -> bool:
    """The process is gone (reaped), not merely a zombie."""
    return not psutil.pid_exists(pid)


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def child_pid(recorder: EventRecorder, task_id: str) -> int:
    """The pid a task's child reported in its progress metadata."""
    (event,) = await recorder.wait_for(TaskProgressed, task=task_id)
    pid = event.update.metadata["pid"]
    assert isinstance(pid, int)
    return pid


async def test_a_process_task_runs_in_a_reused_child_and_reports_progress(
    manager: TaskManager,
) -> None:
    recorder = EventRecorder()
    manager.events.add_listener(recorder, kinds={"task_progressed"})
    manager.register("echo", process_tasks.echo, process=True)
    manager.register("async_echo", process_tasks.async_echo, process=True)

    first = await (await manager.submit(definition("echo"), rows=3)).wait(timeout=20)
    second = await (await manager.submit(definition("echo"), rows=4)).wait(timeout=20)
    third = await (await manager.submit(definition("async_echo"), n=1)).wait(timeout=20)

    assert first.status is second.status is third.status is TaskStatus.COMPLETED
    assert first.result["payload"] == {"rows": 3}
    assert first.result["attempt"] == 1
    assert first.result["pid"] != os.getpid()
    assert second.result["pid"] == first.result["pid"]  # the child was kept for its type
    assert third.result == {"pid": third.result["pid"], "payload": {"n": 1}}
    assert third.result["pid"] != first.result["pid"]  # another type: another child
    updates = [e.update for e in recorder.of(TaskProgressed, task=first.id)]
    assert [(u.progress, u.message) for u in updates] == [(0.5, "halfway")]
    assert [e.update.message for e in recorder.of(TaskProgressed, task=third.id)] == [
        "halfway (async)"
    ]
    assert manager._queue.processes.started == 2


async def test_a_task_past_its_memory_limit_fails_as_resource_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, background_tasks={"max_concurrent_jobs": 1})
    async with TaskManager(settings) as manager:
        manager.register("hog", process_tasks.allocate, process=True, memory_limit_mb=64)
        manager.register("small", process_tasks.allocate, process=True, memory_limit_mb=64)
        hog = await manager.submit(definition("hog", max_retries=0), mb=512)
        small = await manager.submit(definition("small"), mb=16)  # queued behind the hog
        failed = await hog.wait(timeout=20)
        done = await small.wait(timeout=20)
        pids = manager._queue.processes.pids

    assert failed.status is TaskStatus.FAILED
    assert failed.error_category is ErrorCategory.RESOURCE
    assert failed.error_type == "MemoryLimitError"
    assert "memory limit of 64 MB" in (failed.error_message or "")
    assert (done.status, done.result) == (TaskStatus.COMPLETED, 2)
    assert len(pids) == 1  # the hog's child was not kept


async def test_a_cancelled_process_task_kills_its_child(manager: TaskManager) -> None:
    recorder = EventRecorder()
    manager.events.add_listener(recorder, kinds={"task_progressed"})
    manager.register("sleeper", process_tasks.sleep_forever, process=True)

    context = await manager.submit(definition("sleeper"))
    pid = await child_pid(recorder, context.task_id)
    assert psutil.Process(pid).is_running()
    record = await manager.cancel(context.task_id)
    assert record.status is TaskStatus.CANCELLED
    assert gone(pid)
    assert pid not in manager._queue.processes.pids


async def test_a_timeout_kills_the_child(manager: TaskManager) -> None:
    recorder = EventRecorder()
    manager.events.add_listener(recorder, kinds={"task_progressed"})
    manager.register("sleeper", process_tasks.sleep_forever, process=True)

    # The timeout counts the child's start too (~50 ms; a few times that on a busy machine).
    context = await manager.submit(definition("sleeper", timeout_seconds=1.0, max_retries=0))
    pid = await child_pid(recorder, context.task_id)
    record = await context.wait(timeout=20)
    assert record.status is TaskStatus.FAILED
    assert record.error_category is ErrorCategory.TIMEOUT
    assert gone(pid)


async def test_a_child_killed_from_outside_fails_its_task_as_resource(
    manager: TaskManager,
) -> None:
    recorder = EventRecorder()
    manager.events.add_listener(recorder, kinds={"task_progressed"})
    manager.register("sleeper", process_tasks.sleep_forever, process=True)
    manager.register("pid", process_tasks.pid, process=True)

    context = await manager.submit(definition("sleeper", max_retries=0))
    pid = await child_pid(recorder, context.task_id)
    os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    record = await context.wait(timeout=20)
    assert record.status is TaskStatus.FAILED
    assert record.error_category is ErrorCategory.RESOURCE
    assert record.error_type == "TaskProcessError"
    assert "killed by SIGKILL" in (record.error_message or "")
    after = await (await manager.submit(definition("pid"))).wait(timeout=20)
    assert after.status is TaskStatus.COMPLETED
    assert after.result != pid


async def test_shutdown_kills_a_running_child_and_releases_its_task(tmp_path: Path) -> None:
    recorder = EventRecorder()
    settings = make_settings(tmp_path, background_tasks={"shutdown_grace_period": 0.1})
    async with TaskManager(settings) as manager:
        manager.events.add_listener(recorder, kinds={"task_progressed"})
        manager.register("sleeper", process_tasks.sleep_forever, process=True)
        manager.register("pid", process_tasks.pid, process=True)
        idle = (await (await manager.submit(definition("pid"))).wait(timeout=20)).result
        context = await manager.submit(definition("sleeper"))
        busy = await child_pid(recorder, context.task_id)
    assert gone(busy)
    assert gone(idle)  # idle children are stopped too
    async with TaskManager(settings) as manager:
        assert (await manager.get_task(context.task_id)).status is TaskStatus.PENDING


async def test_errors_of_the_child_come_back_classified(
    manager: TaskManager, tmp_path: Path
) -> None:
    manager.register("fail", process_tasks.fail, process=True)
    manager.register("odd", process_tasks.fail_unpicklably, process=True)
    manager.register("not_json", process_tasks.not_json, process=True)

    failed = await (await manager.submit(definition("fail"), why="no rows")).wait(timeout=20)
    assert failed.status is TaskStatus.FAILED  # validation: not retried
    assert failed.error_category is ErrorCategory.VALIDATION
    assert (failed.error_type, failed.error_message) == (
        "ValueError",
        "bad input in the child: no rows",
    )
    with sqlite3.connect(tmp_path / "tasks.db") as db:
        (traceback,) = db.execute(
            "SELECT traceback FROM task_executions WHERE task_id = ?", (failed.id,)
        ).fetchone()
    assert "in the task's process" in traceback
    assert "process_tasks.py" in traceback  # the child's frames

    odd = await (await manager.submit(definition("odd", max_retries=0))).wait(timeout=20)
    assert odd.error_type == "TaskProcessError"
    assert "Unpicklable: 1 and 2" in (odd.error_message or "")

    bad = await (await manager.submit(definition("not_json"))).wait(timeout=20)
    assert bad.error_type == "ResultNotSerializableError"
    assert bad.error_category is ErrorCategory.VALIDATION


async def test_a_limit_below_what_the_tasks_module_takes_is_a_clear_error(
    manager: TaskManager,
) -> None:
    manager.register("ballast", process_ballast.small, process=True, memory_limit_mb=32)
    record = await (await manager.submit(definition("ballast"))).wait(timeout=20)
    assert record.status is TaskStatus.FAILED
    assert record.error_category is ErrorCategory.VALIDATION
    assert record.error_type == "ConfigError"
    assert "memory_limit_mb of task type 'ballast' is 32 MB" in (record.error_message or "")


async def test_a_function_the_child_cannot_import_fails_as_handler_unavailable(
    manager: TaskManager,
) -> None:
    def moved(context: TaskContext) -> None: ...

    moved.__module__ = "tests.no_such_module"
    moved.__qualname__ = "moved"
    manager.register("moved", moved, process=True)
    record = await (await manager.submit(definition("moved", max_retries=0))).wait(timeout=20)
    assert record.status is TaskStatus.FAILED
    assert record.error_type == "HandlerUnavailableError"
    assert "could not import tests.no_such_module:moved" in (record.error_message or "")


async def test_registration_refuses_what_a_child_cannot_run(manager: TaskManager) -> None:
    def closure(context: TaskContext) -> None: ...

    with pytest.raises(ValueError, match=r"^fn: .*closure"):
        manager.register("closure", closure, process=True)
    with pytest.raises(ValueError, match=r"^fn: .*lambda"):
        manager.register("lambda", lambda context: None, process=True)
    with pytest.raises(ValueError, match="memory_limit_mb must be at least 32"):
        manager.register("tiny", process_tasks.echo, process=True, memory_limit_mb=16)
    with pytest.raises(TypeError, match="memory_limit_mb must be a number"):
        manager.register("odd", process_tasks.echo, process=True, memory_limit_mb=True)
    with pytest.raises(ValueError, match="memory_limit_mb applies to process tasks only"):
        manager.register("thread", process_tasks.echo, memory_limit_mb=64)
    with pytest.raises(ValueError, match="names another object"):
        manager.register("renamed", _shadow, process=True)
    assert MIN_MEMORY_LIMIT_MB == 32
    assert manager.task_types == sorted(manager.task_types)
    assert not {"closure", "lambda", "tiny", "odd", "thread"} & set(manager.task_types)


def _shadow(context: TaskContext) -> None: ...


_shadow.__qualname__ = "echo"
_shadow.__module__ = process_tasks.__name__


async def test_the_decorator_takes_the_same_keywords(manager: TaskManager) -> None:
    decorated = manager.task("decorated", process=True, memory_limit_mb=128)(process_tasks.pid)
    assert decorated is process_tasks.pid
    spec = manager._registry.get("decorated")
    assert spec is not None
    assert spec.handler.runs_in == "process"
    assert spec.handler.process is not None
    assert (spec.handler.process.target, spec.handler.process.memory_limit_mb) == (
        "tests.process_tasks:pid",
        128.0,
    )


async def test_a_non_json_argument_is_refused_at_submit_and_nothing_is_stored(
    manager: TaskManager,
) -> None:
    manager.register("echo", process_tasks.echo, process=True)
    with pytest.raises(ValueError, match="payload"):
        await manager.submit(definition("echo"), handle=object())
    assert (await manager.queue_status()).pending == 0


def test_the_default_memory_limit_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task_memory_limit_mb"):
        make_settings(tmp_path, background_tasks={"task_memory_limit_mb": 8})
    settings = make_settings(tmp_path, background_tasks={"task_memory_limit_mb": 96})
    assert settings.background_tasks.task_memory_limit_mb == 96


async def test_the_default_memory_limit_applies_to_types_without_their_own(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, background_tasks={"task_memory_limit_mb": 64})
    async with TaskManager(settings) as manager:
        manager.register("hog", process_tasks.allocate, process=True)
        record = await (await manager.submit(definition("hog", max_retries=0), mb=256)).wait(
            timeout=20
        )
    assert record.error_type == "MemoryLimitError"
    assert "memory limit of 64 MB" in (record.error_message or "")


async def test_the_pool_keeps_at_most_process_pool_size_children(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, background_tasks={"max_concurrent_jobs": 2, "process_pool_size": 1}
    )
    async with TaskManager(settings) as manager:
        manager.register("a", process_tasks.pid, process=True)
        manager.register("b", process_tasks.pid, process=True)
        a = await (await manager.submit(definition("a"))).wait(timeout=20)
        b = await (await manager.submit(definition("b"))).wait(timeout=20)
        again = await (await manager.submit(definition("b"))).wait(timeout=20)
        assert manager._queue.processes.pids == [b.result]
    assert a.result != b.result == again.result
    assert gone(a.result)  # retired to make room for b's child


SCRIPT = """
import os
import sys

import anyio

from vpsweb_tasks import TaskDefinition, TaskManager, load_config


def double(context):
    return {"n": context.payload["n"] * 2, "pid": os.getpid()}


async def main(folder):
    settings = load_config(
        storage={"sqlite_path": os.path.join(folder, "tasks.db")},
        logging={"file": os.path.join(folder, "repository.log")},
    )
    async with TaskManager(settings) as manager:
        manager.register("double", double, process=True)
        context = await manager.submit(TaskDefinition(name="d", task_type="double"), n=21)
        record = await context.wait(timeout=60)
        print(record.status, record.result["n"], record.result["pid"] != os.getpid())


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
"""


def test_a_function_of_the_script_being_run_runs_in_a_child(tmp_path: Path) -> None:
    """As with multiprocessing's spawn: the child imports the script (as __mp_main__),
    whose guarded main does not run again."""
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "42", "True"]


async def test_an_idle_child_that_died_is_replaced(manager: TaskManager) -> None:
    manager.register("pid", process_tasks.pid, process=True)
    first = (await (await manager.submit(definition("pid"))).wait(timeout=20)).result
    os.kill(first, signal.SIGKILL)
    with anyio.fail_after(10):
        while not dead(first):  # noqa: ASYNC110 (a poll of another process's state)
            await anyio.sleep(0.01)
    second = await (await manager.submit(definition("pid"))).wait(timeout=20)
    assert second.status is TaskStatus.COMPLETED
    assert second.result != first
    assert gone(first)
