"""Claim throughput as the queue grows: 1k pending tasks against 1M.

    .venv/bin/python benchmarks/depth.py [--depths 1000 1000000] [--claims 5000] [--dir DIR]

For each depth D a fresh SQLite file (the library's schema, made by ``SQLiteTaskStore``;
WAL, synchronous=NORMAL) gets D + ``--claims`` pending no-op tasks, written straight into
``background_tasks`` with ``executemany`` (50k rows a transaction; the library's triggers
keep ``task_counts``), so that D tasks are still pending when the measurement ends. Then,
each on its own copy of the state:

* store claims: ``store.claim(limit=1)`` one after another, ``--claims`` times: the claim
  query alone, the part that could degrade with depth;
* manager end-to-end: a ``TaskManager`` (max_concurrent_jobs=32) starts paused; the clock
  runs from ``resume()`` until ``--claims`` tasks are completed (claim, run, finish).

Prints one table: claims per second at each depth and the ratio of the deepest to the
shallowest (target: >= 0.8). ``--analyze`` runs ANALYZE after filling, to show what the
query planner does with statistics. A measurement that has not done ``--claims`` after
``--max-seconds`` stops there and reports the rate so far. Run by hand; nothing here is a unit test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from vpsweb_tasks import TaskContext, TaskManager, TaskPriority, load_config
from vpsweb_tasks.manager import new_task_id
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore
from vpsweb_tasks.storage.types import DEFAULT_AGING_SECONDS, dispatch_key

TARGET = 0.8
CHUNK = 50_000


async def noop(context: TaskContext) -> None:
    return None


async def create(path: Path) -> None:
    async with SQLiteTaskStore(path):
        pass


def fill(path: Path, count: int, *, analyze: bool = False) -> float:
    """Write ``count`` pending no-op tasks; returns rows per second."""
    conn = sqlite3.connect(path, isolation_level=None)
    rank = TaskPriority.NORMAL.rank
    start = time.perf_counter()
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        now = time.time()
        key = dispatch_key(now, rank, aging_seconds=DEFAULT_AGING_SECONDS)
        rows = [(new_task_id(), "noop", "noop", rank, now, now, now, key) for _ in range(size)]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO background_tasks (id, name, task_type, priority, status, max_retries,"
            " run_at, created_at, updated_at, dispatch_at)"
            " VALUES (?, ?, ?, ?, 'pending', 3, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        done += size
    elapsed = time.perf_counter() - start
    if analyze:
        conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return count / elapsed


def claim_plan(path: Path) -> str:
    """The index the store's claim query uses on ``path`` (from EXPLAIN QUERY PLAN of the
    store's own SQL)."""
    try:
        from vpsweb_tasks.storage.queries import CORE, Queries

        queries = Queries("sqlite", split=True)
        queries.load([CORE])
        sql = queries["claim"][0]  # its first statement: the UPDATE that picks
    except (ImportError, AttributeError):
        return "?"
    params = {
        "worker": "w",
        "expires": 0.0,
        "now": 0.0,
        "limit": 1,
        "types": '["noop"]',
        "queue": "default",
    }
    conn = sqlite3.connect(path)
    try:
        details = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()
    plan = next(
        (d.split(" USING ", 1)[-1] for d in details if "INDEX ix_" in d),
        "scan" if any(d.startswith("SCAN background_tasks") for d in details) else "?",
    )
    plan = plan.removeprefix("INDEX ").split(" (", 1)[0]
    return plan + (" + sort" if any("TEMP B-TREE" in d for d in details) else "")


async def store_claims(path: Path, claims: int, limit: float) -> float:
    async with SQLiteTaskStore(path) as store:
        start, done = time.perf_counter(), 0
        while done < claims:
            got = await store.claim(
                worker_id="bench", now=time.time(), lease_seconds=600, limit=1, task_types={"noop"}
            )
            if len(got) != 1:
                raise AssertionError("ran out of tasks")
            done += 1
            if time.perf_counter() - start > limit:
                break
        return done / (time.perf_counter() - start)


async def manager_claims(path: Path, claims: int, total: int, limit: float) -> float:
    settings = load_config(
        storage={"sqlite_path": str(path)},
        background_tasks={"max_concurrent_jobs": 32, "max_queue_size": total + 10},
        logging={"file": None, "level": "WARNING"},
    )
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)
        await manager.pause("filling")
        done = anyio.Event()
        finished = 0

        def on_completed(event: Any) -> None:
            nonlocal finished
            finished += 1
            if finished == claims:
                done.set()

        manager.events.add_listener(on_completed, kinds={"task_completed"})
        start = time.perf_counter()
        await manager.resume()
        with anyio.move_on_after(limit):
            await done.wait()
        elapsed, finished = time.perf_counter() - start, min(finished, claims)
        await manager.pause("done")  # stop claiming; the manager stops with tasks pending
    return finished / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--claims", type=int, default=5000)
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="stop a measurement early after this"
    )
    parser.add_argument(
        "--analyze", action="store_true", help="run ANALYZE after filling (the planner's stats)"
    )
    parser.add_argument("--dir", default=".", help="where the temporary databases go")
    args = parser.parse_args()

    results: dict[int, tuple[float, float, float, float, str]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        folder = Path(tmp).resolve()
        for depth in args.depths:
            base = folder / f"depth-{depth}.db"
            anyio.run(create, base)
            total = depth + args.claims
            rate = fill(base, total, analyze=args.analyze)
            size = base.stat().st_size / 1e6
            plan = claim_plan(base)
            copy = folder / f"copy-{depth}.db"
            shutil.copyfile(base, copy)
            by_store = anyio.run(store_claims, copy, args.claims, args.max_seconds)
            by_manager = anyio.run(manager_claims, base, args.claims, total, args.max_seconds)
            results[depth] = (by_store, by_manager, rate, size, plan)
            print(f"  depth {depth:>9,}: store {by_store:,.0f}/s, manager {by_manager:,.0f}/s")
            copy.unlink()
            base.unlink()
        where = str(folder.parent)

    print(
        f"\n{args.claims} claims at each depth (D pending at the end), SQLite WAL,"
        f" synchronous=NORMAL, in {where}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        + ("; ANALYZE run after filling" if args.analyze else "")
    )
    header = (
        f"{'pending':>10} {'db MB':>7} {'fill rows/s':>12} {'store claims/s':>15}"
        f" {'manager tasks/s':>16}  claim plan"
    )
    print(header)
    print("-" * len(header))
    for depth, (by_store, by_manager, rate, size, plan) in results.items():
        print(
            f"{depth:>10,} {size:>7,.0f} {rate:>12,.0f} {by_store:>15,.0f} {by_manager:>16,.0f}"
            f"  {plan}"
        )
    low, high = min(results), max(results)
    if low != high:
        store_ratio = results[high][0] / results[low][0]
        manager_ratio = results[high][1] / results[low][1]
        print(
            f"{f'{high:,} / {low:,}':>31} {store_ratio:>15.2f} {manager_ratio:>16.2f}"
            f"   target >= {TARGET}: store {'yes' if store_ratio >= TARGET else 'NO'},"
            f" manager {'yes' if manager_ratio >= TARGET else 'NO'}"
        )


if __name__ == "__main__":
    main()
