"""Real ``vpsweb-tasks worker`` processes running tests/mp_tasks.py's tasks, for the tests
that drive them from an API-only manager in the test process (tests/test_multiprocess.py,
tests/test_worker_pool.py and the tests that borrow their workers).

Import the fixtures (``start_worker``, ``api``) into a test module to use them there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psutil
import pytest
import yaml

from vpsweb_tasks import TaskContext, TaskManager, load_config

ROOT = Path(__file__).resolve().parent.parent

#: The task types of tests/mp_tasks.py an API-only manager submits.
MP_TASK_TYPES = ("mp_work", "mp_block", "mp_loop", "mp_flow", "mp_gc")


def write_config(
    path: Path,
    storage: dict[str, Any],
    *,
    level: str = "WARNING",
    schedules: dict[str, Any] | None = None,
    **background: Any,
) -> Path:
    """A config file on ``storage``: ``background`` over a big queue and fast retries,
    log lines of ``level`` and up on stderr."""
    config = {
        "storage": storage,
        "background_tasks": {"max_queue_size": 100_000, "retry_delay": 0.05, **background},
        "logging": {"file": None, "level": level},
        "schedules": schedules or {},
    }
    path.write_text(yaml.safe_dump(config))
    return path


class WorkerProcess:
    """One ``vpsweb-tasks worker`` process (with ``--processes N``, a pool of them): what
    it prints is read line by line, its stderr goes to a file."""

    def __init__(
        self, config: Path, run_log: Path, stderr: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vpsweb_tasks.cli",
                "worker",
                "--config",
                str(config),
                "--import",
                "tests.mp_tasks",
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "MP_TASKS_LOG": str(run_log), "PYTHONUNBUFFERED": "1"},
        )

    async def line(self, timeout: float = 60.0) -> list[str]:
        """The next line it prints, as words ([] at its end)."""
        assert self.process.stdout is not None
        with anyio.fail_after(timeout):
            text = await anyio.to_thread.run_sync(
                self.process.stdout.readline, abandon_on_cancel=True
            )
        return text.split()

    async def ready_ids(self, timeout: float) -> list[str]:
        """The worker ids of its ``READY`` line."""
        words = await self.line(timeout)
        assert words[:1] == ["READY"], f"the worker did not start: {words}\n{self.stderr()}"
        return words[1:]

    async def wait(self, timeout: float = 60.0) -> int:
        return await anyio.to_thread.run_sync(self.process.wait, timeout)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the graceful exit."""
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def close(self) -> None:
        """After a failed test: no process of it is left behind."""
        if self.process.poll() is None:
            children = psutil.Process(self.process.pid).children()
            self.process.kill()
            self.process.wait()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            psutil.wait_procs(children, timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


class Worker(WorkerProcess):
    """One worker process, one worker id."""

    worker_id = ""

    async def ready(self, timeout: float = 30.0) -> str:
        [self.worker_id] = await self.ready_ids(timeout)
        return self.worker_id


P = TypeVar("P", bound=WorkerProcess)


@contextlib.contextmanager
def processes(tmp_path: Path, kind: type[P]) -> Iterator[Callable[..., P]]:
    """``start(config, *args)`` for processes of ``kind`` sharing the run log
    ``tmp_path/runs.log``; each is closed when the block ends."""
    started: list[P] = []

    def start(config: Path, *args: str) -> P:
        stderr = tmp_path / f"worker{len(started)}.stderr"
        process = kind(config, tmp_path / "runs.log", stderr, args)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    with processes(tmp_path, Worker) as start:
        yield start


async def unused_handler(context: TaskContext) -> None:
    raise AssertionError("an API-only process never runs tasks")


@pytest.fixture
async def api(tmp_path: Path, storage: dict[str, Any]) -> AsyncIterator[TaskManager]:
    """An API-only manager in this process: it submits and cancels, workers run."""
    config = write_config(tmp_path / "api.yaml", storage, enabled=False)
    async with TaskManager(load_config(config)) as manager:
        for task_type in MP_TASK_TYPES:
            manager.register(task_type, unused_handler)
        yield manager


def runs(run_log: Path) -> list[tuple[str, str, int]]:
    """(word, task id, pid) of each line of tests/mp_tasks.py's run log."""
    if not run_log.exists():
        return []
    lines = run_log.read_text().splitlines()
    return [(word, task_id, int(pid)) for word, task_id, pid in (line.split() for line in lines)]


async def poll(check: Callable[[], Any], *, timeout: float = 60.0, every: float = 0.02) -> None:
    """Wait until ``await check()`` is true, at most ``timeout`` seconds."""
    # Other processes change this state: there is no event to wait on, so poll it.
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - no event crosses the processes
            await anyio.sleep(every)
