"""A process that submits one request many times at once under one idempotency key, for
tests/test_idempotency.py: ``python -m tests.keyed_submitter CONFIG KEY N``. It waits for
a line on stdin (so two processes start together), then prints each submit's task id and
whether it was a replay, one per line."""

from __future__ import annotations

import sys

import anyio

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config


async def main(config: str, key: str, n: int) -> None:
    async with TaskManager(load_config(config)) as manager:

        @manager.task("keyed_work")
        async def keyed_work(context: TaskContext) -> None:  # run by no one here
            raise AssertionError("an API-only process runs no tasks")

        definition = TaskDefinition(name="pay once", task_type="keyed_work", idempotency_key=key)
        print("READY", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        answers: list[str] = []

        async def submit() -> None:
            context = await manager.submit(definition, amount=42)
            answers.append(f"{context.task_id} {context.replayed}")

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(submit)
        print("\n".join(answers), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
