"""A worker draining a stored batch, in this process: where its CPU goes.

    .venv/bin/python benchmarks/drain.py [--tasks 5000] [--repeat 3] [--profile]
        [--concurrency 32] [--dir /tmp]

N no-op tasks are stored in one batch by an API-only manager, which then closes; a
worker manager opens on the file and runs them. The clock runs from its open until
the last task's completion (the worker's own count of finishes). Prints CPU per task of
the event-loop thread and of the database thread (psutil), tasks per claim and per
combined finish, and SQL statements a task. ``--profile`` adds cProfile of both threads
(one more run). The same work as ``split_bounds.py``'s drain, without the second process.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from throughput import ThreadClock, _normalise, noop, settings_for

from vpsweb_tasks import TaskDefinition, TaskManager
from vpsweb_tasks.storage._dbthread import DatabaseThread
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore

DEFINITION = TaskDefinition(name="noop", task_type="noop")


async def store_batch(path: Path, n: int, concurrency: int) -> None:
    async with TaskManager(settings_for(path, concurrency, "NORMAL", n, enabled=False)) as manager:
        manager.register("noop", noop)
        await manager.submit_batch([DEFINITION] * n)


class Sizes:
    """Tasks per claim and per combined completion write (wrapped store methods)."""

    def __init__(self) -> None:
        self.claims: list[int] = []
        self.completes: list[int] = []
        self.transactions = 0  # the database thread's groups (one transaction each)

    def install(self) -> Callable[[], None]:
        claim = SQLiteTaskStore.claim
        together = SQLiteTaskStore._complete_together
        run_batch = DatabaseThread._run_batch
        sizes = self

        def counted_batch(self: DatabaseThread, conn: Any, batch: list[Any]) -> None:
            sizes.transactions += 1
            run_batch(self, conn, batch)

        async def counted_claim(self: SQLiteTaskStore, **kwargs: Any) -> Any:
            found = await claim(self, **kwargs)
            sizes.claims.append(len(found))
            return found

        def counted_together(self: SQLiteTaskStore, conn: Any, items: list[Any]) -> Any:
            sizes.completes.append(len(items))
            return together(self, conn, items)

        SQLiteTaskStore.claim = counted_claim  # type: ignore[method-assign]
        SQLiteTaskStore._complete_together = counted_together  # type: ignore[method-assign]
        DatabaseThread._run_batch = counted_batch  # type: ignore[method-assign]

        def undo() -> None:
            SQLiteTaskStore.claim = claim  # type: ignore[method-assign]
            SQLiteTaskStore._complete_together = together  # type: ignore[method-assign]
            DatabaseThread._run_batch = run_batch  # type: ignore[method-assign]

        return undo


async def drain(path: Path, n: int, concurrency: int, clock: Callable[[], None]) -> float:
    settings = settings_for(path, concurrency, "NORMAL", n)
    done = anyio.Event()
    finished = 0
    clock()
    start = time.perf_counter()
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)
        queue = manager.queue
        # Let go once a task, on every path (a group's completion builds no record).
        original = queue.registry.drop_closure

        def counted(task_id: str) -> None:
            nonlocal finished
            original(task_id)
            finished += 1
            if finished == n:
                done.set()

        queue.registry.drop_closure = counted  # type: ignore[method-assign]
        await done.wait()
        elapsed = time.perf_counter() - start
        clock()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    n = args.tasks
    runs: list[tuple[float, float, float]] = []
    sizes = Sizes()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="drain-") as tmp:
        for r in range(args.repeat):
            path = Path(tmp) / f"d{r}.db"
            anyio.run(store_batch, path, n, args.concurrency)
            clock = ThreadClock()
            undo = sizes.install()
            try:
                elapsed = anyio.run(drain, path, n, args.concurrency, clock)
            finally:
                undo()
            spent = clock.spent()
            loop = spent.get("MainThread", 0.0) / n
            db = sum(s for k, s in spent.items() if k.startswith("vpsweb-tasks-sqlite")) / n
            runs.append((n / elapsed, loop, db))
            print(
                f"  run {r + 1} {n / elapsed:>8,.0f} tasks/s  loop {loop * 1e6:5.1f} us"
                f"  db {db * 1e6:5.1f} us  other "
                + ", ".join(
                    f"{k} {s * 1e6 / n:.1f}"
                    for k, s in spent.items()
                    if s > 0 and k != "MainThread" and not k.startswith("vpsweb-tasks-sqlite")
                ),
                flush=True,
            )
        print(
            f"\n{n:,} stored no-op tasks drained in this process, {args.repeat} runs;"
            f" max_concurrent_jobs={args.concurrency}; {os.cpu_count()} CPUs,"
            f" load {os.getloadavg()[0]:.1f}"
        )
        print(
            f"median {statistics.median(r[0] for r in runs):,.0f} tasks/s,"
            f" loop {statistics.median(r[1] for r in runs) * 1e6:.1f} us,"
            f" db {statistics.median(r[2] for r in runs) * 1e6:.1f} us a task"
        )
        print(
            f"tasks a claim: {statistics.mean(sizes.claims):.1f} ({len(sizes.claims)} claims);"
            f" a combined finish: {statistics.mean(sizes.completes or [0]):.1f}"
            f" ({len(sizes.completes)} writes); database thread transactions a task:"
            f" {sizes.transactions / (n * args.repeat):.3f}"
        )
        if args.profile:
            profile(Path(tmp) / "p.db", n, args.concurrency)


def profile(path: Path, n: int, concurrency: int) -> None:
    anyio.run(store_batch, path, n, concurrency)
    traced: list[str] = []
    connect = SQLiteTaskStore._connect

    def traced_connect(store: SQLiteTaskStore) -> sqlite3.Connection:
        conn = connect(store)
        conn.set_trace_callback(traced.append)
        return conn

    db_profiler = cProfile.Profile()
    thread_main = DatabaseThread._main

    def profiled_main(thread: DatabaseThread) -> None:
        db_profiler.runcall(thread_main, thread)

    SQLiteTaskStore._connect = traced_connect  # type: ignore[method-assign]
    DatabaseThread._main = profiled_main  # type: ignore[method-assign]
    loop_profiler = cProfile.Profile()
    loop_profiler.enable()
    anyio.run(drain, path, n, concurrency, lambda: None)
    loop_profiler.disable()
    for title, profiler in (("event-loop thread", loop_profiler), ("database thread", db_profiler)):
        stats = pstats.Stats(profiler).strip_dirs()
        for key in ("tottime", "cumulative"):
            print(f"\n{title}, top 30 by {key}:")
            stats.sort_stats(key).print_stats(30)
    statements: Counter[str] = Counter()
    last = ""
    for sql in traced:
        if sql != last:
            statements[_normalise(sql)] += 1
        last = sql
    print(f"SQL statements a task (n={n}):")
    for sql, count in statements.most_common(15):
        print(f"  {count / n:>6.3f}  {sql}")
    print(f"  {sum(statements.values()) / n:>6.3f}  all")


if __name__ == "__main__":
    main()
