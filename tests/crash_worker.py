"""A worker process for the crash tests: submits tasks, runs them, and gets SIGKILLed.

    python -m tests.crash_worker <database> <count>

Prints ``SUBMITTED <id>`` once each task is durably stored, ``ALL_SUBMITTED`` after the
last, and ``STARTED <id>`` when a task begins; the parent reads these lines instead of
sleeping, then kills this process mid-run.
"""

from __future__ import annotations

import sys

import anyio

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskPriority, load_config


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


async def step(context: TaskContext) -> dict[str, int]:
    print(f"STARTED {context.task_id}", flush=True)
    await context.update_progress(0.5, "working")
    await anyio.sleep(float(context.payload["seconds"]))
    return {"n": int(context.payload["n"])}


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


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
