"""The no-op task type of benchmarks/multiprocess.py, loaded by its worker processes
(``vpsweb-tasks worker --import benchmarks.noop_tasks``).

With ``VPSWEB_BENCH_CLAIMS`` set to a file name, the worker also counts its claims (how
many, how many came back empty, how many tasks they took) and writes them there at exit,
one line ``claims empty tasks``: benchmarks/postgres.py sums them across workers."""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from vpsweb_tasks import TaskContext, get_task_manager
from vpsweb_tasks.queue import TaskQueue


@get_task_manager().task("noop")
async def noop(context: TaskContext) -> None:
    return None


def _count_claims(path: Path) -> None:
    counts = [0, 0, 0]
    claim = TaskQueue._claim_queue

    async def counted(self: TaskQueue, queue: str, limit: int) -> int:
        n = await claim(self, queue, limit)
        counts[0] += 1
        counts[1] += n == 0
        counts[2] += n
        return n

    TaskQueue._claim_queue = counted  # type: ignore[method-assign]
    atexit.register(lambda: path.write_text(" ".join(map(str, counts)) + "\n"))


_claims_file: Any = os.environ.get("VPSWEB_BENCH_CLAIMS")
if _claims_file:
    _count_claims(Path(_claims_file))
