"""Idle dispatch across processes: a web process submits, a worker process starts the task.

    .venv/bin/python benchmarks/crossprocess.py [--samples 100] [--pause 0.1]
        [--dsn postgresql://postgres@127.0.0.1:5432/test]

One worker process (``vpsweb-tasks worker``) waits idle; this process (workers off, as
VPSWeb's web process runs) submits one no-op at a time, ``--pause`` seconds apart, and
reads back when the worker claimed it (pauses jittered by ±50%): ``started_at -
created_at``, both written from the same machine clock. Three ways the worker can learn
of the submit:

* SQLite, watching the file's data version every ``storage.sqlite_watch_interval`` (50 ms);
* SQLite with the watch off: only the poll, every ``queue_check_interval`` (1 s);
* PostgreSQL: LISTEN/NOTIFY.

Prints one table, p50 and p99 in ms, and the worker's CPU while idle. Run by hand.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import psutil
import yaml
from workers import fresh_schema, never, spawn  # this folder's workers.py

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus, load_config

#: Databases go under the directory the script is run from (absolute: workers run in the
#: project's root).
HERE = os.path.abspath(".")


def write_config(path: Path, storage: dict[str, Any], enabled: bool) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "storage": storage,
                "background_tasks": {"enabled": enabled, "queue_check_interval": 1.0},
                "logging": {"file": None, "level": "WARNING"},
            }
        )
    )
    return path


async def measure(
    storage: dict[str, Any], folder: Path, samples: int, pause: float
) -> tuple[list[float], float]:
    """Dispatch delays in seconds, and the idle worker's CPU as a share of a core."""
    name = uuid.uuid4().hex[:6]
    worker_config = write_config(folder / f"worker-{name}.yaml", storage, enabled=True)
    api_config = write_config(folder / f"api-{name}.yaml", storage, enabled=False)
    worker = spawn(worker_config)
    try:
        assert worker.stdout is not None
        line = await anyio.to_thread.run_sync(worker.stdout.readline)
        assert line.startswith("READY"), line
        process = psutil.Process(worker.pid)
        async with TaskManager(load_config(api_config)) as api:
            api.register("noop", never)
            await anyio.sleep(1.0)  # let the worker settle before measuring its idle CPU
            before, start = process.cpu_times(), time.perf_counter()
            await anyio.sleep(3.0)
            after, idle_wall = process.cpu_times(), time.perf_counter() - start
            idle = (after.user + after.system - before.user - before.system) / idle_wall
            delays = []
            rng = random.Random(1)
            definition = TaskDefinition(name="noop", task_type="noop")
            for _ in range(samples):
                context = await api.submit(definition)
                while True:
                    record = await api.store.get_task(context.task_id)
                    assert record is not None
                    if record.status is TaskStatus.COMPLETED:
                        break
                    await anyio.sleep(0.002)
                assert record.started_at is not None
                delays.append((record.started_at - record.created_at).total_seconds())
                # Jittered: a fixed pause would lock each submit to the same phase of
                # the worker's watch (its last claim followed a tick), always ~1 tick.
                await anyio.sleep(pause * rng.uniform(0.5, 1.5))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    return delays, idle


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between submits")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    rows: list[tuple[str, list[float], float]] = []
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        folder = Path(tmp)
        for title, watch in (("SQLite, watch 50 ms", 0.05), ("SQLite, watch off (poll 1 s)", 0)):
            storage = {
                "backend": "sqlite",
                "sqlite_path": str(folder / f"x-{watch}.db"),
                "sqlite_watch_interval": watch,
            }
            delays, idle = await measure(storage, folder, args.samples, args.pause)
            rows.append((title, delays, idle))
        with fresh_schema(args.dsn) as dsn:
            postgres = {"backend": "postgres", "postgres_dsn": dsn}
            delays, idle = await measure(postgres, folder, args.samples, args.pause)
            rows.append(("PostgreSQL, LISTEN/NOTIFY", delays, idle))

    print(
        f"\nsubmit in one process -> start in another, {args.samples} samples"
        f" {args.pause:g} s apart; {psutil.cpu_count()} CPUs, load {psutil.getloadavg()[0]:.1f}"
    )
    header = f"{'worker learns of the submit by':<32} {'p50 ms':>8} {'p99 ms':>8}  idle worker CPU"
    print(header)
    print("-" * len(header))
    for title, delays, idle in rows:
        print(
            f"{title:<32} {percentile(delays, 50) * 1000:>8.1f}"
            f" {percentile(delays, 99) * 1000:>8.1f}  {max(idle, 0.0) * 100:.1f}% of a core"
        )


if __name__ == "__main__":
    anyio.run(main)
