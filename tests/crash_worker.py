"""Worker processes for the crash tests: they run tasks and get SIGKILLed.

    python -m tests.crash_worker <database> <count>
    python -m tests.crash_worker serve <storage JSON> <background_tasks JSON>

The first submits ``count`` tasks to a SQLite file and runs them. It prints
``SUBMITTED <id>`` once each task is durably stored, ``ALL_SUBMITTED`` after the last,
and ``STARTED <id>`` when a task begins; the parent reads these lines instead of
sleeping, then kills this process mid-run.

The second runs a worker on any storage (the config's ``storage`` section, e.g. a
PostgreSQL DSN) with the task types of :func:`register`, and prints ``READY <worker id>``
once it has started (and recovered the tasks of dead workers) and ``STARTED <id>`` when a
task begins.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import anyio

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskPriority, load_config
from vpsweb_tasks.config import Settings


def settings(database: str) -> object:
    return load_config(
        storage={"sqlite_path": database},
        background_tasks={
            "max_concurrent_jobs": 4,
            "queue_check_interval": 0.05,
            "lease_seconds": 60.0,
            "retry_delay": 0.01,
            "max_queue_size": 10_000,
        },
        logging={"file": None},
    )


def worker_settings(storage: dict[str, Any], **background: Any) -> Settings:
    """A quick worker on ``storage`` (a config's ``storage`` section)."""
    return load_config(
        storage=storage,
        background_tasks={
            "max_concurrent_jobs": 2,
            "queue_check_interval": 0.05,
            "retry_delay": 0.05,
            # The shared machine's load must not pause these workers.
            "pause_on_overload": False,
            **background,
        },
        logging={"file": None},
    )


async def step(context: TaskContext) -> dict[str, int]:
    print(f"STARTED {context.task_id}", flush=True)
    await context.update_progress(0.5, "working")
    await anyio.sleep(float(context.payload["seconds"]))
    return {"n": int(context.payload["n"])}


async def fragile(context: TaskContext) -> str:
    """Runs until its worker is killed, unless the file ``payload["release"]`` exists."""
    print(f"STARTED {context.task_id}", flush=True)
    if await anyio.Path(context.payload["release"]).exists():
        return "done"
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def poison(context: TaskContext) -> None:
    """Kills the worker that runs it, every time (a task that runs it out of memory)."""
    print(f"STARTED {context.task_id}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def register(manager: TaskManager) -> None:
    manager.register("fragile", fragile)
    manager.register("poison", poison)


async def main(database: str, count: int) -> None:
    async with TaskManager(settings(database)) as manager:  # type: ignore[arg-type]
        manager.register("step", step)
        priorities = list(TaskPriority)
        for n in range(count):
            context = await manager.submit(
                TaskDefinition(name=f"step {n}", task_type="step", priority=priorities[n % 4]),
                n=n,
                seconds=0.05 + (n % 5) * 0.02,
            )
            print(f"SUBMITTED {context.task_id}", flush=True)
        print("ALL_SUBMITTED", flush=True)
        await anyio.sleep_forever()


async def serve(storage: str, background: str) -> None:
    manager = TaskManager(worker_settings(json.loads(storage), **json.loads(background)))
    register(manager)
    async with manager:
        print(f"READY {manager.worker_id}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        anyio.run(serve, sys.argv[2], sys.argv[3])
    else:
        anyio.run(main, sys.argv[1], int(sys.argv[2]))
