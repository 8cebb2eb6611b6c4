"""Submit latency under load, idle dispatch latency, and the CPU of an idle worker.

    .venv/bin/python benchmarks/latency.py [--submits 4000] [--submitters 16]
        [--samples 200] [--pause 0.02] [--idle-seconds 5] [--dir DIR] [--no-huey]

One table, from one run, every database a fresh SQLite file (WAL, synchronous=NORMAL, the
default) in a temporary folder under ``--dir`` (default: the current directory):

* submit, library: ``--submitters`` coroutines each ``await manager.submit()`` no-op tasks
  while the same manager's workers run them (max_concurrent_jobs=32); the latency of each
  call, until ``--submits`` calls in all.
* submit, HTTP: the same through ``POST /api/v1/background-tasks/submit`` of a real uvicorn
  server (``vpsweb_tasks_http.create_app``, its workers running the tasks) in its own
  process, from as many httpx clients in this process, over keep-alive connections.
* HTTP client ceiling: the same clients against a bare ASGI app under uvicorn that answers
  202 at once: the rate and latency the clients themselves allow, and uvicorn's own CPU
  per request. The httpx clients cost ~2.5 ms of CPU a request, about as much as our
  server, on the same two cores: the HTTP row's rate and latency measure both.
* idle dispatch: one task submitted at a time to an idle in-process manager; the time from
  calling ``submit`` to the handler's first line, ``--samples`` times with ``--pause``
  seconds between, so that the worker is idle each time.
* idle worker CPU: a ``vpsweb-tasks worker`` process (default settings) with nothing to do,
  its CPU time over ``--idle-seconds`` as a percentage of one core (psutil).
* huey (unless ``--no-huey``): the idle dispatch and idle CPU of a SqliteHuey consumer
  (4 threads, 1 ms poll; ``huey_app.py``), task enqueued from this process.

Run by hand; nothing here is a unit test. ``--serve`` is internal (the HTTP server process).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import uvicorn
import yaml
from huey_app import CONSUMER_OPTIONS, make_huey, stamp_task

from vpsweb_tasks import Settings, TaskContext, TaskDefinition, TaskManager, load_config
from vpsweb_tasks_http import create_app

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SUBMIT_URL = "/api/v1/background-tasks/submit"
#: The issue's targets.
DISPATCH_P50, DISPATCH_P99, IDLE_CPU = 0.002, 0.010, 1.0


@dataclass(frozen=True)
class Row:
    measure: str
    p50: float | None = None  # seconds
    p99: float | None = None
    extra: str = ""
    target: str = ""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def noop(context: TaskContext) -> None:
    return None


def settings_for(path: Path, n: int) -> Settings:
    return load_config(
        storage={"sqlite_path": str(path)},
        background_tasks={"max_concurrent_jobs": 32, "max_queue_size": n + 100},
        logging={"file": None, "level": "WARNING"},
    )


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# --- submit latency ----------------------------------------------------------------------


async def submit_library(path: Path, n: int, submitters: int) -> Row:
    definition = TaskDefinition(name="noop", task_type="noop")
    latencies: list[float] = []
    async with TaskManager(settings_for(path, n)) as manager:
        manager.register("noop", noop)
        await (await manager.submit(definition)).wait()

        async def submitter(count: int) -> None:
            for _ in range(count):
                start = time.perf_counter()
                await manager.submit(definition)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for count in split(n, submitters):
                tg.start_soon(submitter, count)
        elapsed = time.perf_counter() - start
    return Row(
        f"submit, library, {submitters} concurrent",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        f"{n / elapsed:,.0f} submits/s",
    )


def serve(config: str, port: int) -> None:
    """The HTTP server process: create_app on the config, a no-op task type, uvicorn."""
    settings = load_config(config)
    app = create_app(settings, setup=lambda manager: manager.register("noop", noop))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request 202 at once: the HTTP row without our application."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def submit_http(folder: Path, n: int, submitters: int, *, bare: bool = False) -> Row:
    config = folder / "http.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"sqlite_path": str(folder / "http.db")},
                "background_tasks": {"max_concurrent_jobs": 32, "max_queue_size": n + 100},
                "logging": {"file": None, "level": "WARNING"},
            }
        )
    )
    port = free_port()
    command = [sys.executable, str(BENCH / "latency.py"), "--serve", str(config), str(port)]
    if bare:
        command[-2] = "bare"
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        watched = psutil.Process(server.pid)
        row = anyio.run(http_clients, f"http://127.0.0.1:{port}", n, submitters, watched)
        if bare:
            measure = f"HTTP client ceiling (bare app), {submitters} concurrent"
            return Row(measure, row.p50, row.p99, row.extra.replace("submits", "requests"))
        return row
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def http_clients(base: str, n: int, submitters: int, server: psutil.Process) -> Row:
    latencies: list[float] = []
    body = {"task_name": "noop", "task_type": "noop"}
    limits = httpx.Limits(max_connections=submitters, max_keepalive_connections=submitters)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        with anyio.fail_after(30):
            while True:
                try:
                    if (await client.get("/api/v1/background-tasks/health")).is_success:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)

        async def submitter(count: int) -> None:
            for _ in range(count):
                start = time.perf_counter()
                response = await client.post(SUBMIT_URL, json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 202:
                    raise AssertionError(response.text)

        async with anyio.create_task_group() as tg:  # open the connections
            for _ in range(submitters):
                tg.start_soon(submitter, 1)
        latencies.clear()
        start, cpu = time.perf_counter(), cpu_seconds(server)
        async with anyio.create_task_group() as tg:
            for count in split(n, submitters):
                tg.start_soon(submitter, count)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(server) - cpu
    return Row(
        f"submit, HTTP, {submitters} concurrent",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        f"{n / elapsed:,.0f} submits/s, server {cpu / n * 1000:.1f} ms CPU each",
    )


# --- idle dispatch -----------------------------------------------------------------------


async def dispatch(path: Path, samples: int, pause: float) -> Row:
    definition = TaskDefinition(name="stamp", task_type="stamp")
    started: list[float] = []

    async def stamp(context: TaskContext) -> None:
        started.append(time.perf_counter())

    latencies: list[float] = []
    async with TaskManager(settings_for(path, samples)) as manager:
        manager.register("stamp", stamp)
        await (await manager.submit(definition)).wait()
        started.clear()
        for _ in range(samples):
            await anyio.sleep(pause)
            start = time.perf_counter()
            context = await manager.submit(definition)
            await context.wait()
            latencies.append(started[-1] - start)
    return Row(
        "idle dispatch, library (submit -> start)",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        f"{samples} samples, {pause * 1000:.0f} ms apart",
        f"p50 < {DISPATCH_P50 * 1000:.0f} ms, p99 < {DISPATCH_P99 * 1000:.0f} ms",
    )


def huey_dispatch(folder: Path, samples: int, pause: float, seconds: float) -> list[Row]:
    filename = str(folder / "huey.db")
    app = make_huey(filename, "NORMAL")
    task = stamp_task(app)
    env = {**os.environ, "HUEY_BENCH_DB": filename, "HUEY_BENCH_SYNC": "NORMAL"}
    command = [sys.executable, "-m", "huey.bin.huey_consumer", "huey_app.huey", *CONSUMER_OPTIONS]
    consumer = subprocess.Popen(command, cwd=BENCH, env=env, stderr=subprocess.DEVNULL)
    try:
        task().get(blocking=True, timeout=30)
        cpu = idle_cpu(consumer.pid, seconds)
        latencies = []
        for _ in range(samples):
            time.sleep(pause)
            start = time.time()
            result = task()
            began = result.get(blocking=True, timeout=30, backoff=1.0, max_delay=0.0005)
            latencies.append(began - start)
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(30)
        app.storage.close()
    return [
        Row(
            "idle dispatch, huey (enqueue -> start)",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            f"{samples} samples, {pause * 1000:.0f} ms apart",
        ),
        Row("idle CPU, huey consumer (4 threads, 1 ms poll)", extra=f"{cpu:.1f}% of a core"),
    ]


# --- idle CPU ----------------------------------------------------------------------------


def idle_cpu(pid: int, seconds: float) -> float:
    """Percent of one core that process ``pid`` used over ``seconds``, after 1 s to settle."""
    process = psutil.Process(pid)
    time.sleep(1.0)
    before, start = process.cpu_times(), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = process.cpu_times(), time.perf_counter() - start
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / elapsed


def worker_idle(folder: Path, seconds: float) -> Row:
    config = folder / "worker.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"sqlite_path": str(folder / "worker.db")},
                "logging": {"file": None, "level": "WARNING"},
            }
        )
    )
    command = [sys.executable, "-m", "vpsweb_tasks.cli", "worker", "--config", str(config)]
    worker = subprocess.Popen(
        [*command, "--import", "benchmarks.noop_tasks"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line.startswith("READY"):
            raise AssertionError(f"the worker did not start: {line!r}")
        cpu = idle_cpu(worker.pid, seconds)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        if worker.stdout is not None:
            worker.stdout.close()
    return Row(
        "idle CPU, vpsweb-tasks worker (defaults)",
        extra=f"{cpu:.1f}% of a core over {seconds:.0f} s",
        target=f"< {IDLE_CPU:.0f}%",
    )


# --- the table ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=4000)
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--dir", default=".", help="where the temporary databases go")
    parser.add_argument("--no-huey", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.serve[0] == "bare":
            port = int(args.serve[1])
            uvicorn.run(
                bare_app, host="127.0.0.1", port=port, log_level="warning", access_log=False
            )
            return
        serve(args.serve[0], int(args.serve[1]))
        return

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        folder = Path(tmp).resolve()
        rows.append(anyio.run(submit_library, folder / "lib.db", args.submits, args.submitters))
        rows.append(submit_http(folder, args.submits, args.submitters))
        rows.append(submit_http(folder, args.submits, args.submitters, bare=True))
        rows.append(anyio.run(dispatch, folder / "dispatch.db", args.samples, args.pause))
        rows.append(worker_idle(folder, args.idle_seconds))
        if not args.no_huey:
            rows.extend(huey_dispatch(folder, args.samples, args.pause, args.idle_seconds))
        where = str(folder.parent)

    load = os.getloadavg()[0]
    print(f"\nSQLite WAL, synchronous=NORMAL, in {where}; {os.cpu_count()} CPUs, load {load:.1f}")
    header = f"{'measure':<48} {'p50 ms':>8} {'p99 ms':>8}  {'':<42} target"
    print(header)
    print("-" * len(header))
    for row in rows:
        p50 = f"{row.p50 * 1000:>8.2f}" if row.p50 is not None else f"{'':>8}"
        p99 = f"{row.p99 * 1000:>8.2f}" if row.p99 is not None else f"{'':>8}"
        print(f"{row.measure:<48} {p50} {p99}  {row.extra:<42} {row.target}")


if __name__ == "__main__":
    main()
