"""The two halves of Huey's topology (``ab.py --split``) on their own: how fast each
process could go if the other cost nothing.

    .venv/bin/python benchmarks/split_bounds.py [--tasks 10000] [--repeat 3]
        [--synchronous NORMAL] [--dir /tmp]

* submit only: 16 coroutines ``await manager.submit()`` through an API-only manager
  (``enabled: false``), no worker: the submitting process's ceiling.
* drain only: a ``vpsweb-tasks worker`` process is started on an empty file, N tasks are
  stored in one batch, and the clock runs from that commit until the file holds N
  completed tasks (polled every 2 ms): the worker process's ceiling (its first look is
  up to ``storage.sqlite_watch_interval`` late).

Prints tasks/s and CPU per task of the process that does the work, medians of
``--repeat`` interleaved runs, and the load average. Run by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import psutil
import yaml
from throughput import _cpu, _spawn_worker, noop, settings_for, submit_all

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus

DEFINITION = TaskDefinition(name="noop", task_type="noop")


async def submit_only(
    path: Path, n: int, synchronous: str, concurrency: int
) -> tuple[float, float]:
    settings = settings_for(path, concurrency, synchronous, n, enabled=False)
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)
        await manager.submit(DEFINITION)  # warm up
        cpu, start = time.process_time(), time.perf_counter()
        await submit_all(manager, DEFINITION, n)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n / elapsed, cpu / n


async def drain_only(path: Path, n: int, synchronous: str, concurrency: int) -> tuple[float, float]:
    settings = settings_for(path, concurrency, synchronous, n, enabled=False)
    config = path.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)
        worker = _spawn_worker(config, "asyncio")
        try:
            assert worker.stdout is not None
            line = await anyio.to_thread.run_sync(worker.stdout.readline)
            assert line.startswith("READY"), line
            await (await manager.submit(DEFINITION)).wait()  # warm up
            child = psutil.Process(worker.pid)
            await manager.submit_batch([DEFINITION] * n)
            cpu, start = _cpu(child), time.perf_counter()
            while (await manager.store.count_tasks())[TaskStatus.COMPLETED] <= n:  # noqa: ASYNC110
                await anyio.sleep(0.002)
            elapsed, cpu = time.perf_counter() - start, _cpu(child) - cpu
        finally:
            worker.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(worker.wait)
            if worker.stdout is not None:
                worker.stdout.close()
    return n / elapsed, cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--concurrency", type=int, default=32, help="the worker's jobs")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"submit only": [], "drain only": []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bounds-") as tmp:
        for r in range(args.repeat):
            for name, fn in (("submit only", submit_only), ("drain only", drain_only)):
                path = Path(tmp) / f"{name[0]}{r}.db"
                run = anyio.run(fn, path, args.tasks, args.synchronous, args.concurrency)
                runs[name].append(run)
                print(f"  run {r + 1} {name:<12} {run[0]:>8,.0f} tasks/s {run[1] * 1e6:5.0f} us")
    print(
        f"\n{args.tasks:,} no-op tasks a run, {args.repeat} runs, interleaved;"
        f" synchronous={args.synchronous}, max_concurrent_jobs={args.concurrency};"
        f" {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}"
    )
    for name, found in runs.items():
        rates = [rate for rate, _ in found]
        print(
            f"{name:<12} {statistics.median(rates):>8,.0f} tasks/s"
            f" [{min(rates):,.0f}-{max(rates):,.0f}]"
            f" {statistics.median(cpu for _, cpu in found) * 1e6:5.0f} us CPU a task"
        )


if __name__ == "__main__":
    main()
