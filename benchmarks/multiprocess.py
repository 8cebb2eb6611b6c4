"""Throughput of 1, 2 and 4 worker processes on one database, PostgreSQL next to SQLite.

    .venv/bin/python benchmarks/multiprocess.py [--tasks 5000] [--concurrency 16]
        [--dsn postgresql://postgres@127.0.0.1:5432/test] [--processes 1 2 4] [--pool]

For each backend and process count (PostgreSQL twice: with the server's default
``synchronous_commit=on``, and ``off``, the durability of SQLite's ``synchronous=NORMAL``):
a fresh database (a SQLite file; a PostgreSQL schema, dropped after) is filled with N
no-op tasks while the queue is paused, the worker processes (``vpsweb-tasks worker``) are
started and report ready, then the queue is resumed and the clock runs until every task
is completed. Start-up and submission are outside the measured time. Prints one table,
tasks per second. Run by hand. ``--pool``: the N worker processes are one
``vpsweb-tasks worker --processes N`` (a supervisor and its N children), not N commands.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from workers import fresh_schema, never, spawn, stop, write_config  # this folder's workers.py

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus, load_config

#: The durability class of SQLite's synchronous=NORMAL: a commit survives the crash of any
#: process, not the loss of the machine, and waits for no fsync.
NO_FSYNC = " -csynchronous_commit=off"


async def measure(
    storage: dict[str, Any], folder: Path, n: int, processes: int, jobs: int, pool: bool
) -> float:
    config = write_config(
        folder, storage, max_concurrent_jobs=jobs, max_queue_size=n + 1, queue_check_interval=0.05
    )
    async with TaskManager(load_config(config)) as api:
        api.register("noop", never)
        await api.pause("filling")
        definition = TaskDefinition(name="noop", task_type="noop")

        async def submit(count: int) -> None:
            for _ in range(count):
                await api.submit(definition)

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(submit, n // 16 + (1 if i < n % 16 else 0))

        if pool:  # one line, READY and the children's ids, once all are ready
            workers = [spawn(config, "--processes", str(processes))]
        else:
            workers = [spawn(config) for _ in range(processes)]
        try:
            for worker in workers:
                assert worker.stdout is not None
                line = await anyio.to_thread.run_sync(worker.stdout.readline)
                assert line.startswith("READY"), line
            start = time.perf_counter()
            await api.resume()
            while True:  # other processes do the work: poll the database
                if (await api.store.count_tasks())[TaskStatus.COMPLETED] >= n:
                    break
                await anyio.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            stop(workers)
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16, help="max_concurrent_jobs")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--pool", action="store_true", help="one `worker --processes N` instead of N workers"
    )
    args = parser.parse_args()

    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        for processes in args.processes:
            sqlite = {"backend": "sqlite", "sqlite_path": str(folder / f"p{processes}.db")}
            results["sqlite", processes] = await measure(
                sqlite, folder, args.tasks, processes, args.concurrency, args.pool
            )
            for column, options in (("postgres", ""), ("postgres-async", NO_FSYNC)):
                with fresh_schema(args.dsn, options) as dsn:
                    postgres = {"backend": "postgres", "postgres_dsn": dsn}
                    results[column, processes] = await measure(
                        postgres, folder, args.tasks, processes, args.concurrency, args.pool
                    )

    print(
        f"\n{args.tasks} no-op tasks, max_concurrent_jobs={args.concurrency} per process,"
        f" {os.cpu_count()} CPUs. SQLite: WAL, synchronous=NORMAL (no fsync per commit)."
        + (" Workers: one pool (worker --processes N)." if args.pool else "")
    )
    columns = [
        ("postgres", "PostgreSQL"),
        ("postgres-async", "PostgreSQL, synchronous_commit=off"),
        ("sqlite", "SQLite"),
    ]
    print(
        f"{'processes':>9}" + "".join(f"  {title:>{max(len(title), 10)}}" for _, title in columns)
    )
    for processes in args.processes:
        cells = "".join(
            f"  {results[key, processes]:>{max(len(title), 10)},.0f}" for key, title in columns
        )
        print(f"{processes:>9}{cells}")


if __name__ == "__main__":
    anyio.run(main)
