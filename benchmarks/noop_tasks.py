"""The no-op task type of benchmarks/multiprocess.py, loaded by its worker processes
(``vpsweb-tasks worker --import benchmarks.noop_tasks``)."""

from __future__ import annotations

from vpsweb_tasks import TaskContext, get_task_manager


@get_task_manager().task("noop")
async def noop(context: TaskContext) -> None:
    return None
