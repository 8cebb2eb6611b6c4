"""Where a task's function runs, and what it costs: the event loop (``async def``), a
worker thread (plain ``def``), a child process (``process=True``, the child kept for the
next task of its type) and a fresh child per task (what reuse saves: this module, which
the child imports, imports vpsweb_tasks as an application's task module would; the
``-stdlib`` row runs a function of a module that imports only the standard library).

Each no-op task is submitted and waited for one after another (latency), then N are
submitted at once (throughput, ``max_concurrent_jobs`` 4).

    .venv/bin/python benchmarks/execution.py   # --tasks 500 --dir DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.process_tasks import pid as stdlib_noop
from vpsweb_tasks import TaskDefinition, TaskManager, load_config


async def async_noop(context: Any) -> int:
    return 1


def def_noop(context: Any) -> int:
    return 1


def process_noop(context: Any) -> int:
    return os.getpid()


async def measure(kind: str, tasks: int, folder: Path) -> tuple[float, float]:
    """Milliseconds a task one at a time, and tasks/s with 4 at once."""
    settings = load_config(
        background_tasks={
            "max_concurrent_jobs": 4,
            "pause_on_overload": False,
            "max_queue_size": 100_000,
        },
        storage={"sqlite_path": str(folder / f"{kind}.db")},
        logging={"file": str(folder / "logs" / "repository.log")},
        task_monitoring={"track_task_lifecycle": False},
    )
    async with TaskManager(settings) as manager:
        fn = {"async": async_noop, "def": def_noop, "process-fresh-stdlib": stdlib_noop}.get(
            kind, process_noop
        )
        manager.register("noop", fn, process=kind.startswith("process"))
        pool = manager._queue.processes
        definition = TaskDefinition(name="noop", task_type="noop")
        # Warm up: as many children as tasks run at once.
        for context in [await manager.submit(definition) for _ in range(4)]:
            await context.wait()
        one_by_one = max(20, tasks // 10)
        began = time.perf_counter()
        for _ in range(one_by_one):
            if kind.startswith("process-fresh"):
                await pool.aclose()  # no idle child left: the next task starts one
                pool._closed = False
            await (await manager.submit(definition)).wait()
        latency = (time.perf_counter() - began) / one_by_one * 1000
        if kind.startswith("process-fresh"):
            return latency, float("nan")
        began = time.perf_counter()
        contexts = [await manager.submit(definition) for _ in range(tasks)]
        for context in contexts:
            await context.wait()
        rate = tasks / (time.perf_counter() - began)
    return latency, rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        print("| runs in | ms a task, one at a time | tasks/s, 4 at once |")
        print("| --- | --- | --- |")
        for kind in ("async", "def", "process", "process-fresh", "process-fresh-stdlib"):
            latency, rate = await measure(kind, args.tasks, Path(folder))
            shown = "-" if rate != rate else f"{rate:,.0f}"
            print(f"| {kind} | {latency:.2f} | {shown} |")


if __name__ == "__main__":
    anyio.run(main)
