"""End-to-end no-op throughput: vpsweb-tasks next to Huey's SqliteHuey and raw sqlite3.

    .venv/bin/python benchmarks/throughput.py [--tasks 5000] [--repeat 3] [--concurrency 32]
        [--dir DIR] [--uvloop] [--worker-process] [--profile]

Three systems, each on a fresh SQLite file (WAL) in one temporary folder (under ``--dir``,
default the current directory: the same disk for all), each at ``synchronous=NORMAL`` and
at ``FULL`` (equal durability: the same pragma for all three):

* vpsweb-tasks: one process runs a ``TaskManager`` (``max_concurrent_jobs=--concurrency``);
  16 coroutines ``await manager.submit()`` N no-op tasks; the clock stops at the N-th
  ``task_completed`` event (written durably before it is published). ``--uvloop`` runs
  that process's event loop on uvloop (as ``vpsweb-tasks serve`` and ``worker`` do when it
  is installed) instead of asyncio's own. ``--worker-process`` splits it as Huey is
  split: this process submits, through an API-only manager, and one ``vpsweb-tasks
  worker`` process runs the tasks; the clock stops, as Huey's does, when the database
  holds N completed tasks (polled every 2 ms), and CPU counts both processes.
* huey: ``SqliteHuey`` (the subclass in ``huey_app.py`` sets the pragma) with its consumer in
  its own process, 4 worker threads, a constant 1 ms poll. The producer enqueues N no-op
  tasks, and the clock stops when N results are in the result store. Also "same, in one
  process": the same consumer started in the producer's process (one process and one GIL,
  as vpsweb-tasks runs here); the issue's targets are shown against both.
* raw sqlite3: one connection; per task an INSERT, a claim (``UPDATE ... RETURNING``) and a
  finishing UPDATE, each in its own transaction: what a hand-written queue pays.

The managers and the consumer are started (and warmed up with one task) before the clock
starts. CPU is the process CPU time (all threads; for huey producer + consumer) over the
measured span, per task. Each configuration runs ``--repeat`` times, interleaved; the table
shows medians. ``--profile`` instead runs vpsweb-tasks once under cProfile and prints where
its time goes: the event loop's functions, the CPU of each thread, and SQL statements per
task. Run by hand; nothing here is a unit test.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
import yaml
from huey_app import CONSUMER_OPTIONS, make_huey, noop_task

from vpsweb_tasks import (
    Settings,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskStatus,
    load_config,
)
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore

BENCH = Path(__file__).resolve().parent
PRAGMAS = ("NORMAL", "FULL")
#: The issue's targets: ours / other, per pragma.
TARGETS: dict[tuple[str, str], float] = {
    ("FULL", "huey"): 5.0,
    ("NORMAL", "huey"): 2.0,
    ("FULL", "huey1"): 5.0,
    ("NORMAL", "huey1"): 2.0,
    ("NORMAL", "raw"): 1 / 3,
}
SUBMITTERS = 16


@dataclass(frozen=True)
class Run:
    rate: float  # tasks per second
    cpu: float  # CPU seconds per task


async def noop(context: TaskContext) -> None:
    return None


#: ``BENCH_RATE_LIMIT=1``: every noop task takes a slot of one shared rate limit (set high
#: enough never to hold a task back), to measure what a limit costs a claim.
RATE_LIMITED = os.environ.get("BENCH_RATE_LIMIT") == "1"


def settings_for(
    path: Path, concurrency: int, synchronous: str, n: int, *, enabled: bool = True
) -> Settings:
    limits = {"rate_limits": {"bench": {"requests": 10_000_000}}} if RATE_LIMITED else {}
    return load_config(
        storage={"sqlite_path": str(path), "sqlite_synchronous": synchronous},
        background_tasks={
            "enabled": enabled,
            "max_concurrent_jobs": concurrency,
            "max_queue_size": n + 10,
        },
        logging={"file": None, "level": "WARNING"},
        **limits,
    )


def register_noop(manager: TaskManager) -> None:
    if RATE_LIMITED:
        manager.register("noop", noop, rate_limits=["bench"])
    else:
        manager.register("noop", noop)


async def submit_all(manager: TaskManager, definition: TaskDefinition, n: int) -> None:
    """``n`` submits from ``SUBMITTERS`` coroutines, each awaiting its own in turn."""

    async def submitter(count: int) -> None:
        for _ in range(count):
            await manager.submit(definition)

    async with anyio.create_task_group() as tg:
        for i in range(SUBMITTERS):
            tg.start_soon(submitter, n // SUBMITTERS + (1 if i < n % SUBMITTERS else 0))


async def ours(
    path: Path,
    n: int,
    concurrency: int,
    synchronous: str,
    probe: Callable[[], None] | None = None,
) -> Run:
    """``probe()`` is called when the clock starts and when it stops (the manager and its
    threads still alive)."""
    definition = TaskDefinition(name="noop", task_type="noop")
    async with TaskManager(settings_for(path, concurrency, synchronous, n)) as manager:
        register_noop(manager)
        await (await manager.submit(definition)).wait()  # warm up
        done = anyio.Event()
        finished = 0

        def on_completed(event: Any) -> None:
            nonlocal finished
            finished += 1
            if finished == n:
                done.set()

        manager.events.add_listener(on_completed, kinds={"task_completed"})
        if probe is not None:
            probe()
        cpu, start = time.process_time(), time.perf_counter()
        await submit_all(manager, definition, n)
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if probe is not None:
            probe()
    return Run(n / elapsed, cpu / n)


def _spawn_worker(config: Path, loop: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "vpsweb_tasks.cli", "worker", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--import", "benchmarks.noop_tasks", "--loop", loop],
        cwd=BENCH.parent,
        stdout=subprocess.PIPE,
        text=True,
    )


async def ours_split(
    path: Path, n: int, concurrency: int, synchronous: str, loop: str = "auto"
) -> Run:
    """Huey's topology: this process submits (an API-only manager, ``enabled: false``) and
    one ``vpsweb-tasks worker`` process (``--loop``) runs the tasks, notified through the
    file (``storage.sqlite_watch_interval``). Like Huey's, the clock stops when the
    database holds N completed tasks, polled every 2 ms; CPU counts both processes."""
    settings = settings_for(path, concurrency, synchronous, n, enabled=False)
    config = path.with_suffix(".yaml")  # the worker's too: it runs workers whatever it says
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    definition = TaskDefinition(name="noop", task_type="noop")
    async with TaskManager(settings) as manager:
        manager.register("noop", noop)  # never run here: enabled is false
        worker = _spawn_worker(config, loop)
        try:
            assert worker.stdout is not None
            line = await anyio.to_thread.run_sync(worker.stdout.readline)
            if not line.startswith("READY"):
                raise AssertionError(f"the worker did not start: {line!r}")
            await (await manager.submit(definition)).wait()  # warm up
            child = psutil.Process(worker.pid)
            cpu, start = time.process_time() + _cpu(child), time.perf_counter()
            await submit_all(manager, definition, n)
            # Another process does the work: there is no event here to wait on.
            while True:
                if (await manager.store.count_tasks())[TaskStatus.COMPLETED] > n:
                    break
                await anyio.sleep(0.002)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() + _cpu(child) - cpu
        finally:
            worker.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(worker.wait)
            if worker.stdout is not None:
                worker.stdout.close()
    return Run(n / elapsed, cpu / n)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def huey(folder: Path, n: int, synchronous: str) -> Run:
    filename = str(folder / f"huey-{synchronous}-{time.monotonic_ns()}.db")
    app = make_huey(filename, synchronous)
    task = noop_task(app)
    env = {**os.environ, "HUEY_BENCH_DB": filename, "HUEY_BENCH_SYNC": synchronous}
    command = [sys.executable, "-m", "huey.bin.huey_consumer", "huey_app.huey", *CONSUMER_OPTIONS]
    consumer = subprocess.Popen(command, cwd=BENCH, env=env, stderr=subprocess.DEVNULL)
    try:
        if task().get(blocking=True, timeout=30) is not None:  # warm up
            raise AssertionError("the no-op returned something")
        app.storage.flush_results()
        child = psutil.Process(consumer.pid)
        cpu, start = time.process_time() + _cpu(child), time.perf_counter()
        for _ in range(n):
            task()
        while app.storage.result_store_size() < n:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() + _cpu(child) - cpu
    finally:
        consumer.send_signal(signal.SIGINT)  # graceful
        consumer.wait(30)
        app.storage.close()
    return Run(n / elapsed, cpu / n)


def huey_one_process(folder: Path, n: int, synchronous: str) -> Run:
    """Huey's consumer (4 threads, 1 ms poll) started inside this process, next to the
    producer: one process and one GIL, as ours runs here."""
    filename = str(folder / f"huey1-{synchronous}-{time.monotonic_ns()}.db")
    app = make_huey(filename, synchronous)
    task = noop_task(app)
    consumer = app.create_consumer(
        workers=4,
        worker_type="thread",
        initial_delay=0.001,
        max_delay=0.001,
        backoff=1,
        periodic=False,
        check_worker_health=False,
    )
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    consumer.start()
    try:
        if task().get(blocking=True, timeout=30) is not None:  # warm up
            raise AssertionError("the no-op returned something")
        app.storage.flush_results()
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(n):
            task()
        while app.storage.result_store_size() < n:
            time.sleep(0.002)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        consumer.stop(graceful=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        app.storage.close()
    return Run(n / elapsed, cpu / n)


def raw(path: Path, n: int, synchronous: str) -> Run:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT NOT NULL, payload TEXT NOT NULL,"
        " result TEXT)"
    )
    conn.execute("CREATE INDEX jobs_pending ON jobs (id) WHERE status = 'pending'")
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO jobs (status, payload) VALUES ('pending', '{}')")
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        ((job_id, _payload),) = conn.execute(
            "UPDATE jobs SET status = 'running' WHERE id = (SELECT id FROM jobs"
            " WHERE status = 'pending' ORDER BY id LIMIT 1) RETURNING id, payload"
        ).fetchall()
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE jobs SET status = 'completed', result = 'null' WHERE id = ?", (job_id,)
        )
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return Run(n / elapsed, cpu / n)


# --- the profile -------------------------------------------------------------------------


def _normalise(sql: str) -> str:
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", "?", sql)
    return " ".join(sql.split())[:100]


class ThreadClock:
    """CPU seconds of each thread of this process between two calls (psutil)."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.marks: list[dict[int, float]] = []

    def __call__(self) -> None:
        self.names.update({t.native_id or 0: t.name for t in threading.enumerate()})
        self.marks.append({t.id: t.user_time + t.system_time for t in psutil.Process().threads()})

    def spent(self) -> dict[str, float]:
        first, last = self.marks[0], self.marks[-1]
        spent: dict[str, float] = {}
        for tid, seconds in last.items():
            name = re.sub(r"[-_:]?\d+$", "", self.names.get(tid, "other"))
            spent[name] = spent.get(name, 0.0) + seconds - first.get(tid, 0.0)
        return spent


def _sqlite_split(path: Path, n: int, concurrency: int) -> dict[str, float]:
    """Thread CPU seconds of the database thread in its transactions (``batch``) and
    inside sqlite3's execute and fetch calls (``sql``), over one run."""
    from vpsweb_tasks.storage._dbthread import DatabaseThread

    spent = {"sql": 0.0, "batch": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(*args)
            finally:
                spent[key] += time.thread_time() - started

        return call

    class Cursor(sqlite3.Cursor):
        fetchone = timed(sqlite3.Cursor.fetchone, "sql")
        fetchall = timed(sqlite3.Cursor.fetchall, "sql")

    class Connection(sqlite3.Connection):
        def _cursor(self) -> Cursor:
            return self.cursor(Cursor)

        execute = timed(lambda self, *args: self._cursor().execute(*args), "sql")
        executemany = timed(lambda self, *args: self._cursor().executemany(*args), "sql")

    connect = sqlite3.connect
    run_batch = DatabaseThread._run_batch
    timed_batch = timed(run_batch, "batch")

    sqlite3.connect = functools.partial(connect, factory=Connection)  # type: ignore[assignment]
    DatabaseThread._run_batch = timed_batch  # type: ignore[method-assign]
    try:
        anyio.run(ours, path, n, concurrency, "NORMAL")
    finally:
        sqlite3.connect = connect
        DatabaseThread._run_batch = run_batch  # type: ignore[method-assign]
    return spent


def profile(folder: Path, n: int, concurrency: int) -> None:
    """Where the time of one end-to-end no-op task goes (see the module docstring)."""
    from vpsweb_tasks.storage._dbthread import DatabaseThread

    # 1. No profiler: the honest rate and the CPU of each thread.
    clock = ThreadClock()
    plain = anyio.run(ours, folder / "plain.db", n, concurrency, "NORMAL", clock)
    print(f"\nvpsweb-tasks, {n} no-op tasks, synchronous=NORMAL, max_concurrent_jobs={concurrency}")
    print(f"without a profiler: {plain.rate:,.0f} tasks/s, {plain.cpu * 1e6:,.0f} us CPU/task")
    print("CPU per task by thread (psutil):")
    for name, seconds in sorted(clock.spent().items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"  {name:<40} {seconds * 1e6 / n:>8,.1f} us")

    # 1b. The database thread's CPU inside sqlite3's calls (binding, SQLite's own work)
    # and the Python around them, by a thin timing wrapper on its connection.
    split = _sqlite_split(folder / "split.db", n, concurrency)
    print(
        f"database thread, in transactions: {split['batch'] * 1e6 / n:,.1f} us a task, of"
        f" which {split['sql'] * 1e6 / n:,.1f} us inside sqlite3 calls (execute, fetch) and"
        f" {(split['batch'] - split['sql']) * 1e6 / n:,.1f} us of Python around them"
    )

    # 2. cProfile on the event loop and on the store's database thread; SQL counted.
    traced_sql: list[str] = []
    trace = traced_sql.append  # cheap in the thread; counted after the run

    connect: Callable[[SQLiteTaskStore], sqlite3.Connection] = SQLiteTaskStore._connect

    def traced(store: SQLiteTaskStore) -> sqlite3.Connection:
        conn = connect(store)
        conn.set_trace_callback(trace)
        return conn

    db_profiler = cProfile.Profile()
    thread_main: Callable[[DatabaseThread], None] = DatabaseThread._main

    def profiled_main(thread: DatabaseThread) -> None:
        db_profiler.runcall(thread_main, thread)

    SQLiteTaskStore._connect = traced
    DatabaseThread._main = profiled_main
    loop_profiler = cProfile.Profile()
    loop_profiler.enable()
    profiled = anyio.run(ours, folder / "profile.db", n, concurrency, "NORMAL")
    loop_profiler.disable()
    print(f"\nunder cProfile: {profiled.rate:,.0f} tasks/s (the profiler slows it down)")
    for title, profiler in (("event-loop thread", loop_profiler), ("database thread", db_profiler)):
        stats = pstats.Stats(profiler).strip_dirs()
        for key in ("tottime", "cumulative"):
            print(f"\n{title}, top 25 by {key}:")
            stats.sort_stats(key).print_stats(25)
    statements: Counter[str] = Counter()
    trigger_steps: Counter[str] = Counter()
    last = ""
    for sql in traced_sql:
        # sqlite reports each step of a trigger as the outer statement again: count apart.
        (trigger_steps if sql == last else statements)[_normalise(sql)] += 1
        last = sql
    print(f"SQL per task (n={n}, plus setup and one warm-up task), by statement:")
    print(f"  {'runs':>6} {'+trigger traces':>15}  statement (a trigger: 1 + 1 per statement)")
    for sql, count in statements.most_common(14):
        print(f"  {count / n:>6.2f} {trigger_steps[sql] / n:>15.2f}  {sql}")
    total, steps = sum(statements.values()), sum(trigger_steps.values())
    print(f"  {total / n:>6.2f} {steps / n:>15.2f}  all")


# --- the table ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="max_concurrent_jobs")
    parser.add_argument("--dir", default=".", help="where the temporary databases go")
    parser.add_argument("--uvloop", action="store_true", help="run vpsweb-tasks on uvloop")
    parser.add_argument(
        "--worker-process",
        action="store_true",
        help="vpsweb-tasks as Huey runs: submits here, tasks in a `vpsweb-tasks worker` process",
    )
    parser.add_argument("--profile", action="store_true", help="profile vpsweb-tasks instead")
    args = parser.parse_args()
    n = args.tasks
    loop_options = {"use_uvloop": True} if args.uvloop else {}

    results: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        folder = Path(tmp).resolve()
        if args.profile:
            profile(folder, n, args.concurrency)
            return
        for r in range(args.repeat):
            for sync in PRAGMAS:
                runs = {
                    "raw": raw(folder / f"raw-{sync}-{r}.db", n, sync),
                    "huey": huey(folder, n, sync),
                    "huey1": huey_one_process(folder, n, sync),
                    "ours": anyio.run(
                        functools.partial(ours_split, loop="uvloop" if args.uvloop else "asyncio")
                        if args.worker_process
                        else ours,
                        folder / f"ours-{sync}-{r}.db",
                        n,
                        args.concurrency,
                        sync,
                        backend_options=loop_options,
                    ),
                }
                for system, run in runs.items():
                    results.setdefault((sync, system), []).append(run)
                    print(f"  run {r + 1} {sync:<6} {system:<6} {run.rate:>9,.0f} tasks/s")
        where = str(folder.parent)

    disk = next(
        (p for p in psutil.disk_partitions() if where.startswith(p.mountpoint) and p.mountpoint),
        None,
    )
    titles = {
        "ours": "vpsweb-tasks ("
        + ", ".join(
            [f"{args.concurrency} jobs"]
            + (["uvloop"] if args.uvloop else [])
            + (["worker proc"] if args.worker_process else [])
        )
        + ")",
        "huey": "huey SqliteHuey (4 thr)",
        "huey1": "  same, in one process",
        "raw": "raw sqlite3 (3 txn/task)",
    }
    print(
        f"\n{n} no-op tasks per run, {args.repeat} runs (medians; ours/this is the median of"
        f" the ratios within each run, [min-max]); SQLite WAL in {where}"
        + (f" ({disk.device}, {disk.fstype})" if disk else "")
        + f"; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    width = max(26, *(len(title) for title in titles.values()))
    header = (
        f"{'synchronous':<11}  {'system':<{width}} {'tasks/s':>9} {'CPU us/task':>11}"
        f"  {'ours/this':<18} {'target':>7}  met"
    )
    print(header)
    print("-" * len(header))
    for sync in PRAGMAS:
        for system in ("ours", "huey", "huey1", "raw"):
            rate = statistics.median(run.rate for run in results[sync, system])
            cpu = statistics.median(run.cpu for run in results[sync, system])
            ratios = [
                mine.rate / other.rate
                for mine, other in zip(results[sync, "ours"], results[sync, system], strict=True)
            ]
            ratio = statistics.median(ratios)
            shown = f"{ratio:.2f} [{min(ratios):.2f}-{max(ratios):.2f}]" if system != "ours" else ""
            target = TARGETS.get((sync, system))
            goal = f">= {target:.2f}" if target else ""
            met = ("yes" if ratio >= target else "NO") if target else ""
            print(
                f"{sync:<11}  {titles[system]:<{width}} {rate:>9,.0f} {cpu * 1e6:>11,.0f}"
                f"  {shown:<18} {goal:>7}  {met}"
            )


if __name__ == "__main__":
    main()
