"""The worker pool (``vpsweb-tasks worker --processes 2``) against two separate workers:
how soon a killed worker's tasks run again, and what the supervisor costs.

    .venv/bin/python benchmarks/pool.py [--rounds 3] [--backends sqlite postgres]
        [--dsn postgresql://postgres@127.0.0.1:5432/test]

Each round, on a fresh database and the default ``lease_seconds`` (30 s): two workers of
``max_concurrent_jobs=2`` each hold two tasks that run until a file exists; one worker is
SIGKILLed, and the clock runs until its two tasks run again elsewhere. ``pool``: the two
are one ``worker --processes 2``, which replaces the dead child and has the survivor reap
it at once. ``separate``: two ``vpsweb-tasks worker`` commands (what one ran before the
pool), where the survivor finds the dead process at its next periodic reap. Also: the
pool's start-up until its READY line, the wall time until the replacement is ready, and
the supervisor's own CPU (start-up, and a 5 s idle stretch). Rounds interleave the two
ways. Prints one table of medians. Run by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
from workers import fresh_schema, never, spawn, stop, write_config  # this folder's workers.py

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus, load_config

TASKS = "benchmarks.pool_tasks"
#: Databases go under the directory the script is run from (absolute: workers run in the
#: project's root).
HERE = os.path.abspath(".")


async def line_of(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    with anyio.fail_after(60):
        return (await anyio.to_thread.run_sync(process.stdout.readline)).split()


async def until(check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until ``await check()`` is true (other processes change the state)."""
    start = time.perf_counter()
    with anyio.fail_after(120):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.005)
    return time.perf_counter() - start


async def one_round(storage: dict[str, Any], folder: Path, pool: bool) -> dict[str, float]:
    config = write_config(folder, storage, max_concurrent_jobs=2, pause_on_overload=False)
    release = folder / f"release-{uuid.uuid4().hex[:6]}"
    figures: dict[str, float] = {}
    async with TaskManager(load_config(config)) as api:
        api.register("hold", never)
        started = time.perf_counter()
        if pool:
            processes = [spawn(config, "--processes", "2", tasks=TASKS)]
            words = await line_of(processes[0])
            assert words[0] == "READY", words
            ids = words[1:]
            supervisor = psutil.Process(processes[0].pid)
            figures["ready s"] = time.perf_counter() - started
            figures["supervisor start CPU s"] = sum(supervisor.cpu_times()[:2])
        else:
            processes = [spawn(config, tasks=TASKS), spawn(config, tasks=TASKS)]
            ids = [(await line_of(p))[1] for p in processes]
        try:
            definition = TaskDefinition(name="hold", task_type="hold")
            tasks = [(await api.submit(definition, release=str(release))).task_id for _ in range(4)]

            async def owners() -> Counter[str | None]:
                running = await api.store.list_tasks(statuses=[TaskStatus.RUNNING], limit=10)
                return Counter(task.lease_owner for task in running)

            async def each_holds_two() -> bool:
                return await owners() == Counter(dict.fromkeys(ids, 2))

            await until(each_holds_two)
            victim = ids[0]
            pid = {w.worker_id: w.pid for w in await api.store.list_workers()}[victim]
            os.kill(pid, signal.SIGKILL)
            killed = time.perf_counter()
            if not pool:  # its parent waits for it at once, as a service manager would
                next(p for p in processes if p.pid == pid).wait()

            async def reaped() -> bool:  # the victim's tasks are back in the queue
                records = await api.store.get_tasks(tasks)
                return all(t.lease_owner != victim for t in records)

            figures["reaped s"] = await until(reaped)
            if pool:
                word, _, _new = await line_of(processes[0])
                assert word == "REPLACED"
                figures["replaced s"] = time.perf_counter() - killed

                async def running_again() -> bool:
                    return sum((await owners()).values()) == 4

                await until(running_again)
                figures["running again s"] = time.perf_counter() - killed
                before = sum(supervisor.cpu_times()[:2])
                await anyio.sleep(5)
                figures["supervisor idle CPU %"] = (
                    (sum(supervisor.cpu_times()[:2]) - before) / 5 * 100
                )
            release.touch()
        finally:
            stop(processes)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print("load average at start:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        folder = Path(tmp)
        for _ in range(args.rounds):
            for backend in args.backends:
                for way in ("pool", "separate"):
                    if backend == "sqlite":
                        storage = {"backend": "sqlite", "sqlite_path": str(folder / "t.db")}
                        (folder / "t.db").unlink(missing_ok=True)
                        figures = await one_round(storage, folder, way == "pool")
                    else:
                        with fresh_schema(args.dsn) as dsn:
                            storage = {"backend": "postgres", "postgres_dsn": dsn}
                            figures = await one_round(storage, folder, way == "pool")
                    results.setdefault((backend, way), []).append(figures)
    print("load average at end:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"\nmedians of {args.rounds} interleaved rounds (range in brackets)")
    for (backend, way), rounds in results.items():
        cells = []
        for name in rounds[0]:
            values = [r[name] for r in rounds]
            cells.append(
                f"{name} {statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
            )
        print(f"{backend:>8} {way:>8}: " + "; ".join(cells))


if __name__ == "__main__":
    anyio.run(main)
