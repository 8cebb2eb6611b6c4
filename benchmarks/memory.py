"""Process memory (RSS) with 1M pending tasks, and under 10k progress updates a second.

    .venv/bin/python benchmarks/memory.py [--pending 1000000] [--seconds 10]
        [--rate 10000] [--progress-seconds 5] [--dir DIR]

Each measurement runs in a fresh child process (``--child``, internal) holding a
``TaskManager`` and its ``TaskMonitor``, as ``vpsweb-tasks serve`` does; this process samples
the child's RSS with psutil every 50 ms:

* pending: a SQLite file (the library's schema) gets ``--pending`` pending no-op tasks,
  written directly as in depth.py; the child starts a manager (max_concurrent_jobs=32) on it
  and lets it work through the queue for ``--seconds``.
* progress: one task calls ``context.update_progress()`` ``--rate`` times a second (paced in
  batches of 10) for ``--progress-seconds``, with one event listener counting the updates.

Prints one table: RSS after imports (before the manager starts), the peak while it runs,
and what the run did. Target: under 200 MB with 1M pending. ``--analyze`` runs ANALYZE after
filling (without it the claim query scans, see depth.py, and the manager does little).
Run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
from depth import create, fill

from vpsweb_tasks import (
    Settings,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskMonitor,
    load_config,
)

BENCH = Path(__file__).resolve().parent
TARGET_MB = 200.0


def settings_for(path: Path) -> Settings:
    return load_config(
        storage={"sqlite_path": str(path)},
        background_tasks={"max_concurrent_jobs": 32, "max_queue_size": 10_000_000},
        logging={"file": None, "level": "WARNING"},
    )


async def noop(context: TaskContext) -> None:
    return None


# --- the child process -------------------------------------------------------------------


async def child_pending(path: Path, seconds: float) -> dict[str, Any]:
    manager = TaskManager(settings_for(path))
    manager.register("noop", noop)
    completed = 0

    def on_completed(event: Any) -> None:
        nonlocal completed
        completed += 1

    manager.events.add_listener(on_completed, kinds={"task_completed"})
    async with manager, TaskMonitor(manager):
        print("READY", flush=True)
        await anyio.sleep(seconds)
        status = await manager.queue_status()
    return {"completed": completed, "waiting": status.model_dump(mode="json")}


async def child_progress(path: Path, seconds: float, rate: int) -> dict[str, Any]:
    manager = TaskManager(settings_for(path))
    total = int(seconds * rate)
    sent = 0
    elapsed = 0.0

    async def chatty(context: TaskContext) -> None:
        nonlocal sent, elapsed
        start = time.perf_counter()
        for i in range(total):
            await context.update_progress(i / total, "working")
            sent += 1
            if i % 10 == 9:
                ahead = start + (i + 1) / rate - time.perf_counter()
                await anyio.sleep(max(0.0, ahead))
        elapsed = time.perf_counter() - start

    manager.register("chatty", chatty)
    heard = 0

    def on_progress(event: Any) -> None:
        nonlocal heard
        heard += 1

    manager.events.add_listener(on_progress, kinds={"task_progressed"})
    async with manager, TaskMonitor(manager):
        print("READY", flush=True)
        context = await manager.submit(TaskDefinition(name="chatty", task_type="chatty"))
        record = await context.wait()
        stored = len(await manager.store.progress_history(context.task_id, limit=10_000_000))
    return {
        "status": record.status.value,
        "sent": sent,
        "rate": sent / elapsed if elapsed else 0.0,
        "heard": heard,
        "stored": stored,
    }


def child(mode: str, path: str, arguments: list[str]) -> None:
    print("IMPORTED", flush=True)
    if mode == "pending":
        result = anyio.run(child_pending, Path(path), float(arguments[0]))
    else:
        result = anyio.run(child_progress, Path(path), float(arguments[0]), int(arguments[1]))
    print(json.dumps(result), flush=True)


# --- the parent --------------------------------------------------------------------------


def measure(mode: str, path: Path, *arguments: str) -> tuple[float, float, dict[str, Any]]:
    """Runs a child; returns (RSS MB after imports, peak RSS MB, the child's report)."""
    command = [sys.executable, str(BENCH / "memory.py"), "--child", mode, str(path), *arguments]
    process = subprocess.Popen(command, cwd=BENCH, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    watched = psutil.Process(process.pid)
    if process.stdout.readline().strip() != "IMPORTED":
        raise AssertionError("the child did not start")
    imported = watched.memory_info().rss
    if process.stdout.readline().strip() != "READY":
        raise AssertionError("the manager did not start")
    peak = imported
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        lines.extend(process.stdout)

    reader = threading.Thread(target=read)
    reader.start()
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    reader.join()
    if process.wait() != 0 or not lines:
        raise AssertionError(f"the child failed: {lines}")
    return imported / 2**20, peak / 2**20, json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=10_000, help="progress updates a second")
    parser.add_argument("--progress-seconds", type=float, default=5.0)
    parser.add_argument(
        "--analyze", action="store_true", help="run ANALYZE after filling (see depth.py)"
    )
    parser.add_argument("--dir", default=".", help="where the temporary databases go")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2:])
        return

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        folder = Path(tmp).resolve()
        pending = folder / "pending.db"
        anyio.run(create, pending)
        fill(pending, args.pending, analyze=args.analyze)
        size = pending.stat().st_size / 1e6
        rows = [
            (
                f"{args.pending:,} pending, manager runs {args.seconds:.0f} s",
                *measure("pending", pending, str(args.seconds)),
            )
        ]
        progress = folder / "progress.db"
        anyio.run(create, progress)
        rows.append(
            (
                f"1 task, {args.rate:,} progress updates/s for {args.progress_seconds:.0f} s",
                *measure("progress", progress, str(args.progress_seconds), str(args.rate)),
            )
        )
        where = str(folder.parent)

    print(
        f"\nRSS of a process with a TaskManager and TaskMonitor (SQLite in {where};"
        f" the {args.pending:,}-task file is {size:,.0f} MB); {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}" + ("; ANALYZE run after filling" if args.analyze else "")
    )
    header = f"{'measure':<48} {'after imports':>13} {'peak RSS':>9}  what it did"
    print(header)
    print("-" * len(header))
    for measure_name, imported, peak, report in rows:
        if "completed" in report:
            did = f"completed {report['completed']:,} tasks"
            did += f"; target < {TARGET_MB:.0f} MB: {'yes' if peak < TARGET_MB else 'NO'}"
        else:
            did = (
                f"sent {report['sent']:,} at {report['rate']:,.0f}/s, listener heard"
                f" {report['heard']:,}, stored {report['stored']:,}, task {report['status']}"
            )
        print(f"{measure_name:<48} {imported:>10,.0f} MB {peak:>6,.0f} MB  {did}")


if __name__ == "__main__":
    main()
