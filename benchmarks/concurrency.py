"""Tens of thousands of long-running tasks in one worker process (issue 23, target 2).

    .venv/bin/python benchmarks/concurrency.py [--backend sqlite|postgres|both]
        [--tasks 200 2000 20000] [--window 20] [--dir DIR]
        [--dsn postgresql://postgres@127.0.0.1:5432/test] [--by-query] [--no-floor]
        [--profile N] [--gc SPEC...] [--sqlite-cache-mb MB]

Each (backend, N) runs in a fresh child process (``--child``, internal) holding one
``TaskManager`` with ``max_concurrent_jobs = N``. N tasks are submitted (``submit_batch``,
1,000 a batch); each stands for an LLM job: it awaits a long call (``anyio.sleep(1)``
after another, until the benchmark ends it) and calls ``context.update_progress`` after
every second of it. Once all N run, a window of ``--window`` seconds measures:

* event-loop lag: a probe coroutine sleeps 10 ms and records how late it wakes
  (p50/p99/max);
* CPU: of the whole process, and of the event-loop thread alone, as % of one core;
* the garbage collector: its pauses, in ms a second, the longest, and the number of full
  (oldest generation) collections in the window;
* the event loop's CPU a progress report (us), the loop's CPU over the reports made;
* memory: RSS after imports (before the manager starts), the peak RSS of the process's
  life (``ru_maxrss``), and (peak - after imports) / N;
* database statements and transactions a second, counted by a hook on our side of the
  driver: SQLite, ``set_trace_callback`` on the store's connection (a ``BEGIN`` is a
  transaction); PostgreSQL, a wrapper of the store's statement execution (a write or
  snapshot operation is one transaction, any other statement its own);
* the time to start all N (first submit to the Nth task running) and to drain them (the
  end to the last outcome written, at most 120 s; ``done``: the share completed).

Each N also gets a ``floor`` row (``--no-floor`` leaves it out): the same N coroutines,
each sleeping a second and then awaiting a no-op where the others report progress, in a
plain task group with no manager. It is the benchmark's own cost on this machine, so the
rows above it show how much of the lag, CPU and memory is ours.

``--gc`` measures each row under each collector setting given (applied once the manager
has started, or before the floor's coroutines start): ``default``, ``freeze``
(``gc.freeze()``: what is alive then is never scanned again), ``gen0=N`` (the youngest
generation's threshold), or both, comma-separated. ``--sqlite-cache-mb`` sets
``storage.sqlite_cache_mb``.

Prints one table. ``--by-query`` adds the window's statements by query; ``--profile N``
prints the N functions that took most of the event loop's time in each window
(cProfile of the event-loop thread alone). Run by hand.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

_LIBRARY = os.environ.get("BENCH_LIBRARY")
if _LIBRARY:  # a checkout to measure instead of the installed one (--library)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    sys.path.insert(0, _LIBRARY)

import anyio  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config  # noqa: E402

BENCH = Path(__file__).resolve().parent
DSN = "postgresql://postgres@127.0.0.1:5432/test"
LAG_TARGET_MS = 20.0
_DIGITS = re.compile(r"[0-9.]+")
RSS_TARGET_MB = 300.0


def apply_gc(spec: str) -> None:
    """``--gc``: ``default`` leaves the collector alone; ``freeze`` moves every object alive
    now out of the collector's reach (``gc.freeze``); ``gen0=N`` sets the youngest
    generation's threshold; ``freeze,gen0=N`` both."""
    for part in filter(None, spec.split(",")):
        if part == "freeze":
            gc.collect()
            gc.freeze()
        elif part.startswith("gen0="):
            gc.set_threshold(int(part[5:]), *gc.get_threshold()[1:])
        elif part != "default":
            raise SystemExit(f"--gc: unknown {part!r}")


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Counter:
    """Statements and transactions seen by the hook, by query, since ``reset``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statements = 0
        self.transactions = 0
        self.by_query: collections.Counter[str] = collections.Counter()

    def statement(self, name: str) -> None:
        with self.lock:
            self.statements += 1
            self.by_query[name] += 1

    def transaction(self) -> None:
        with self.lock:
            self.transactions += 1

    def reset(self) -> tuple[int, int, dict[str, int]]:
        with self.lock:
            taken = (self.statements, self.transactions, dict(self.by_query))
            self.statements = self.transactions = 0
            self.by_query.clear()
        return taken


async def hook_sqlite(manager: TaskManager, counter: Counter) -> None:
    from vpsweb_tasks.storage._dbthread import Mode

    def trace(sql: str) -> None:
        text = " ".join(sql[:100].split())
        if text.startswith("--"):  # a trigger's body, part of the statement before it
            return
        if text.startswith("BEGIN"):
            counter.transaction()
        counter.statement(_DIGITS.sub("?", text[:60]))

    def install(conn: Any) -> None:
        conn.set_trace_callback(trace)

    await manager.store._db().run(install, Mode.ALONE)  # type: ignore[attr-defined]


def hook_postgres(manager: TaskManager, counter: Counter) -> None:
    from vpsweb_tasks.storage.ops import Mode

    store: Any = manager.store
    execute, run = store._execute, store.run
    autocommit: list[bool] = [True]

    async def counted_execute(conn: Any, step: Any) -> Any:
        counter.statement(step.query)
        if autocommit[0]:
            counter.transaction()
        return await execute(conn, step)

    async def counted_run(operation: Any) -> Any:
        in_transaction = operation.mode in (Mode.WRITE, Mode.SNAPSHOT)
        if in_transaction:
            counter.transaction()
        # Operations interleave on the loop; the flag is read right after it is set.
        autocommit[0] = not in_transaction
        return await run(operation)

    store._execute, store.run = counted_execute, counted_run


# --- the child process -------------------------------------------------------------------


class Window:
    """The measurement every row shares: a probe of the event loop's lag, the CPU and the
    wall time of the window, the garbage collector's pauses (and, with ``profile``, a
    cProfile of the loop's thread)."""

    def __init__(self, profile: int) -> None:
        self.lags: list[float] = []
        self.measuring = False
        self.stopped = False
        self.profile = profile
        self.profiler: cProfile.Profile | None = None
        self.gc_pauses: list[float] = []
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self.measuring:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def probe(self) -> None:
        while not self.stopped:
            before = time.perf_counter()
            await anyio.sleep(0.01)
            if self.measuring:
                self.lags.append(time.perf_counter() - before - 0.01)

    async def measure(self, window: float) -> dict[str, Any]:
        process = psutil.Process()
        if self.profile:
            self.profiler = cProfile.Profile()
        cpu0, loop0, wall0 = process.cpu_times(), time.thread_time(), time.perf_counter()
        self.measuring = True
        gc.callbacks.append(self._on_gc)
        full0 = gc.get_stats()[2]["collections"]
        if self.profiler is not None:
            self.profiler.enable()
        print(f"window of {window} s from now", file=sys.stderr, flush=True)
        await anyio.sleep(window)
        if self.profiler is not None:
            self.profiler.disable()
        self.measuring = False
        gc.callbacks.remove(self._on_gc)
        full = gc.get_stats()[2]["collections"] - full0
        cpu1, loop1, wall1 = process.cpu_times(), time.thread_time(), time.perf_counter()
        wall = wall1 - wall0
        lags_ms = sorted(lag * 1000 for lag in self.lags)
        return {
            "wall": wall,
            "lag_p50": statistics.median(lags_ms),
            "lag_p99": lags_ms[min(len(lags_ms) - 1, int(len(lags_ms) * 0.99))],
            "lag_max": lags_ms[-1],
            "cpu": 100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall,
            "loop_cpu": 100 * (loop1 - loop0) / wall,
            "rss_window_mb": rss_mb(),
            "gc_ms": 1000 * sum(self.gc_pauses) / wall,
            "gc_max": 1000 * max(self.gc_pauses, default=0.0),
            "gc_full": full,
        }

    def print_profile(self, label: str) -> None:
        if self.profiler is None:
            return
        out = io.StringIO()
        stats = pstats.Stats(self.profiler, stream=out)
        stats.sort_stats("tottime").print_stats(self.profile)
        print(f"--- {label}: the event loop's time by function ---", file=sys.stderr)
        print(out.getvalue(), file=sys.stderr, flush=True)


async def floor(n: int, window: float, profile: int) -> dict[str, Any]:
    """The benchmark's own cost: N coroutines that sleep a second and await a no-op, in a
    plain task group (no manager, no database)."""
    imported_mb = rss_mb()
    release = anyio.Event()
    all_running = anyio.Event()
    running = updates = 0
    meter = Window(profile)
    apply_gc(os.environ.get("BENCH_GC", "default"))

    async def no_op(progress: float, message: str) -> None:
        pass

    async def llm() -> None:
        nonlocal running, updates
        running += 1
        if running == n:
            all_running.set()
        step = 0
        while not release.is_set():
            await anyio.sleep(1.0)
            step += 1
            await no_op(min(step / 3600, 1.0), "waiting for the model")
            updates += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(meter.probe)
        started = time.perf_counter()
        for _ in range(n):
            tg.start_soon(llm)
        await all_running.wait()
        start_seconds = time.perf_counter() - started
        await anyio.sleep(2.0)
        updates = 0
        found = await meter.measure(window)
        window_updates = updates
        released = time.perf_counter()
        release.set()
        meter.stopped = True
    meter.print_profile(f"floor N={n}")
    return {
        "backend": "floor",
        "n": n,
        "imported_mb": imported_mb,
        "peak_mb": peak_rss_mb(),
        **found,
        "statements": 0.0,
        "transactions": 0.0,
        "updates": window_updates / found["wall"],
        "by_query": {},
        "start": start_seconds,
        "drain": time.perf_counter() - released,
        "completed": n,
    }


async def child(
    backend: str, n: int, window: float, where: str, profile: int = 0, drain_limit: float = 120.0
) -> dict[str, Any]:
    if backend == "floor":
        return await floor(n, window, profile)
    imported_mb = rss_mb()
    if backend == "sqlite":
        storage: dict[str, Any] = {"sqlite_path": where}
        if cache_mb := os.environ.get("BENCH_SQLITE_CACHE_MB"):  # --sqlite-cache-mb
            storage["sqlite_cache_mb"] = int(cache_mb)
    else:
        storage = {
            "backend": "postgres",
            "postgres_dsn": psycopg.conninfo.make_conninfo(DSN, options=f"-csearch_path={where}"),
        }
    settings = load_config(
        storage=storage,
        background_tasks={
            "max_concurrent_jobs": n,
            "max_queue_size": 10 * n,
            "job_timeout": 3600.0,
        },
        logging={"file": None, "level": "WARNING"},
    )
    manager = TaskManager(settings)
    release = anyio.Event()
    all_running = anyio.Event()
    running = updates = 0

    async def llm(context: TaskContext) -> None:
        nonlocal running, updates
        running += 1
        if running == n:
            all_running.set()
        step = 0
        while not release.is_set():  # the long call, reporting after each second of it
            await anyio.sleep(1.0)
            step += 1
            await context.update_progress(min(step / 3600, 1.0), "waiting for the model")
            updates += 1

    manager.register("llm", llm)
    completed = 0
    all_completed = anyio.Event()

    def on_completed(event: Any) -> None:
        nonlocal completed
        completed += 1
        if completed == n:
            all_completed.set()

    manager.events.add_listener(on_completed, kinds={"task_completed"})
    counter = Counter()
    meter = Window(profile)

    async with manager, anyio.create_task_group() as tg:
        if backend == "sqlite":
            await hook_sqlite(manager, counter)
        else:
            hook_postgres(manager, counter)
        apply_gc(os.environ.get("BENCH_GC", "default"))  # after the manager's start-up
        tg.start_soon(meter.probe)
        started = time.perf_counter()
        for first in range(0, n, 1000):
            await manager.submit_batch(
                [TaskDefinition(name="llm", task_type="llm")] * min(1000, n - first)
            )
        await all_running.wait()
        start_seconds = time.perf_counter() - started
        await anyio.sleep(2.0)  # past the start's own flushes
        counter.reset()
        updates = 0
        found = await meter.measure(window)
        statements, transactions, by_query = counter.reset()
        window_updates = updates
        released = time.perf_counter()
        release.set()
        with anyio.move_on_after(drain_limit):  # each outcome written, or give up
            await all_completed.wait()
        drain_seconds = time.perf_counter() - released
        drained = completed
        meter.stopped = True
    meter.print_profile(f"{backend} N={n}")
    wall = found["wall"]
    return {
        "backend": backend,
        "n": n,
        "imported_mb": imported_mb,
        "peak_mb": peak_rss_mb(),
        **found,
        "statements": statements / wall,
        "transactions": transactions / wall,
        "updates": window_updates / wall,
        "by_query": {name: count / wall for name, count in by_query.items()},
        "start": start_seconds,
        "drain": drain_seconds,
        "completed": drained,
    }


# --- the parent --------------------------------------------------------------------------


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Any:
    if backend == "floor":
        yield "-"
        return
    if backend == "sqlite":
        yield str(folder / f"bench-{uuid.uuid4().hex[:8]}.db")
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def measure(
    backend: str,
    n: int,
    window: float,
    folder: Path,
    library: str | None,
    profile: int,
    gc_spec: str = "default",
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_LIBRARY": library or "", "BENCH_GC": gc_spec}
    with database(backend, folder) as where:
        command = [
            sys.executable,
            str(BENCH / "concurrency.py"),
            "--child",
            backend,
            str(n),
            str(window),
            where,
            str(profile),
        ]
        found = subprocess.run(
            command, cwd=BENCH, env=env, stdout=subprocess.PIPE, text=True, check=True
        )
    label = "-" if backend == "floor" else library or "."
    if gc_spec != "default":
        label = f"{label} {gc_spec}"
    return {**json.loads(found.stdout.strip().splitlines()[-1]), "library": label}


def main() -> None:
    global DSN
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--tasks", type=int, nargs="+", default=[200, 2000, 20000])
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--dir", default=".", help="where the SQLite databases go")
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--by-query", action="store_true", help="statements a second by query")
    parser.add_argument(
        "--library",
        nargs="+",
        default=[None],
        help="checkouts of vpsweb-tasks to measure in turn (default: the installed one)",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="leave out the floor row (no manager)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print the N functions taking most of the event loop's time in each window",
    )
    parser.add_argument(
        "--gc",
        nargs="+",
        default=["default"],
        metavar="SPEC",
        help="collector settings to measure in turn, applied after start-up:"
        " default, freeze, gen0=N, freeze,gen0=N",
    )
    parser.add_argument(
        "--sqlite-cache-mb", type=int, help="storage.sqlite_cache_mb (default: the config's)"
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    DSN = args.dsn
    if args.sqlite_cache_mb is not None:  # the children read it
        os.environ["BENCH_SQLITE_CACHE_MB"] = str(args.sqlite_cache_mb)
    if args.child:
        backend, n, window, where, profile = args.child
        result = anyio.run(child, backend, int(n), float(window), where, int(profile))
        print(json.dumps(result), flush=True)
        return
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        for n in args.tasks:
            for gc_spec in args.gc:
                if not args.no_floor:
                    results.append(
                        measure("floor", n, args.window, Path(tmp), None, args.profile, gc_spec)
                    )
                for backend in backends:
                    for library in args.library:
                        results.append(
                            measure(
                                backend, n, args.window, Path(tmp), library, args.profile, gc_spec
                            )
                        )
    print(
        f"N tasks running at once in one process, each awaiting a long call and reporting"
        f" progress every second; {args.window:.0f} s measured; {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'library':<20}{'backend':<9}{'N':>7}{'lag p50':>9}{'p99':>7}{'max':>7}"
        f"{'CPU %':>7}{'loop %':>7}{'us/upd':>7}{'gc ms/s':>8}{'gc max':>7}{'full':>5}"
        f"{'RSS MB':>8}{'peak':>6}{'KB/task':>8}{'stmt/s':>8}{'xact/s':>8}{'upd/s':>8}"
        f"{'start s':>8}{'drain s':>8}{'done':>7}  target (p99 < 20 ms, RSS < 300 MB)"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        per_task = (r["peak_mb"] - r["imported_mb"]) * 1024 / r["n"]
        met = r["lag_p99"] < LAG_TARGET_MS and r["peak_mb"] < RSS_TARGET_MB
        print(
            f"{r['library'][-19:]:<20}{r['backend']:<9}{r['n']:>7,}{r['lag_p50']:>9.1f}{r['lag_p99']:>7.1f}"
            f"{r['lag_max']:>7.0f}{r['cpu']:>7.0f}{r['loop_cpu']:>7.0f}"
            f"{r['loop_cpu'] * 1e4 / max(r['updates'], 1):>7.1f}"
            f"{r['gc_ms']:>8.1f}{r['gc_max']:>7.0f}{r['gc_full']:>5}{r['rss_window_mb']:>8.0f}"
            f"{r['peak_mb']:>6.0f}{per_task:>8.1f}{r['statements']:>8.1f}{r['transactions']:>8.1f}"
            f"{r['updates']:>8,.0f}{r['start']:>8.1f}{r['drain']:>8.1f}"
            f"{r['completed'] / r['n']:>7.0%}  {'yes' if met else 'no'}"
        )
    if args.by_query:
        for r in results:
            print(f"\n{r['library']} {r['backend']} N={r['n']:,}: statements a second by query")
            for name, rate in sorted(r["by_query"].items(), key=lambda item: -item[1]):
                print(f"  {rate:8.2f}  {name}")


if __name__ == "__main__":
    main()
