"""The task type of benchmarks/pool.py, loaded by its worker processes
(``vpsweb-tasks worker --import benchmarks.pool_tasks``)."""

from __future__ import annotations

import anyio

from vpsweb_tasks import TaskContext, get_task_manager


@get_task_manager().task("hold")
async def hold(context: TaskContext) -> None:
    """Runs until the file ``payload["release"]`` exists."""
    while not await anyio.Path(context.payload["release"]).exists():  # noqa: ASYNC110
        await anyio.sleep(0.02)  # a file made by another process: polled
