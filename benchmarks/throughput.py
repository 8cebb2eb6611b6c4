"""Throughput of the SQLite queue next to a raw sqlite3 baseline, measured in one run.

    .venv/bin/python benchmarks/throughput.py [--tasks 5000] [--concurrency 32]

Prints one table:

* submit, sequential: ``await manager.submit()`` one after another (one commit each);
* submit, concurrent: the same from many coroutines (group commit shares transactions);
* end-to-end: submit N no-op tasks while the workers run, until every one is completed;
* raw sqlite3 baseline: per row, an INSERT and an UPDATE, each in its own transaction, on
  the same disk, WAL, same ``synchronous`` setting: what a hand-written queue pays.

Ratios compare each row with the baseline. Run by hand; nothing here is a unit test.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config


async def noop(context: TaskContext) -> None:
    return None


def settings_for(path: Path, concurrency: int, synchronous: str) -> Any:
    return load_config(
        storage={"sqlite_path": str(path), "sqlite_synchronous": synchronous},
        background_tasks={
            "max_concurrent_jobs": concurrency,
            "max_queue_size": 10_000_000,
            "queue_check_interval": 0.5,
        },
        logging={"file": None, "level": "WARNING"},
    )


async def submit_rate(
    path: Path, n: int, concurrency: int, synchronous: str, parallel: int
) -> float:
    settings = settings_for(path, concurrency, synchronous)
    definition = TaskDefinition(name="noop", task_type="noop")
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)
        await manager.pause()
        start = time.perf_counter()
        if parallel == 1:
            for _ in range(n):
                await manager.submit(definition)
        else:

            async def submitter(count: int) -> None:
                for _ in range(count):
                    await manager.submit(definition)

            async with anyio.create_task_group() as tg:
                for i in range(parallel):
                    tg.start_soon(submitter, n // parallel + (1 if i < n % parallel else 0))
        elapsed = time.perf_counter() - start
        await manager.clear()
        await manager.resume()
    return n / elapsed


async def end_to_end_rate(path: Path, n: int, concurrency: int, synchronous: str) -> float:
    settings = settings_for(path, concurrency, synchronous)
    definition = TaskDefinition(name="noop", task_type="noop")
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)
        done = anyio.Event()
        finished = 0

        def on_event(event: Any) -> None:
            nonlocal finished
            finished += 1
            if finished == n:
                done.set()

        manager.events.add_listener(on_event, kinds={"task_completed"})
        start = time.perf_counter()

        async def submitter(count: int) -> None:
            for _ in range(count):
                await manager.submit(definition)

        async with anyio.create_task_group() as tg:
            parallel = 16
            for i in range(parallel):
                tg.start_soon(submitter, n // parallel + (1 if i < n % parallel else 0))
        await done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


def raw_baseline(path: Path, n: int, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT, status TEXT, result TEXT)"
    )
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO jobs (id, payload, status) VALUES (?, '{}', 'pending')", (i,))
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("UPDATE jobs SET status = 'completed', result = 'null' WHERE id = ?", (i,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32, help="max_concurrent_jobs")
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    args = parser.parse_args()
    n, concurrency, sync = args.tasks, args.concurrency, args.synchronous

    with tempfile.TemporaryDirectory(dir=".") as folder:
        base = Path(folder)
        baseline = raw_baseline(base / "raw.db", n, sync)
        rows = [
            ("submit, sequential", await submit_rate(base / "s1.db", n, concurrency, sync, 1)),
            ("submit, 32 concurrent", await submit_rate(base / "s2.db", n, concurrency, sync, 32)),
            (
                f"end-to-end no-op (max_concurrent_jobs={concurrency})",
                await end_to_end_rate(base / "e2e.db", n, concurrency, sync),
            ),
            ("raw sqlite3: insert + update per row", baseline),
        ]
    print(f"\n{n} tasks, SQLite WAL, synchronous={sync}, on {os.getcwd()}")
    print(f"{'measure':<48} {'per second':>12} {'x baseline':>11}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>12,.0f} {rate / baseline:>11.2f}")


if __name__ == "__main__":
    anyio.run(main)
