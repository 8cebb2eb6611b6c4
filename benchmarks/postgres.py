"""PostgreSQL throughput: one process of ours on PostgreSQL next to one on SQLite, and split
into a submitting process and 1, 2, 4 worker processes.

    .venv/bin/python benchmarks/postgres.py [--tasks 5000] [--rounds 3] [--concurrency 32]
        [--dsn postgresql://postgres@127.0.0.1:5432/test] [--processes 1 2 4]
        [--synchronous-commit on off] [--systems ...] [--dir DIR]

Every system runs once a round, in the same order, for ``--rounds`` interleaved rounds; the
table shows medians [and ranges]. Each run gets a fresh database: a SQLite file, or a
PostgreSQL schema (dropped after) reached through a DSN whose ``options`` set the
``search_path`` and ``synchronous_commit`` (``on``, the server's default, or ``off``: the
durability of SQLite's ``synchronous=NORMAL``, a commit surviving any process's crash but
not the machine's), and whose ``application_name`` marks the server backends the run uses.

* ``sqlite``: one process runs a ``TaskManager`` (``max_concurrent_jobs=--concurrency``); 16
  coroutines submit N no-op tasks while it runs them; the clock stops at the N-th
  ``task_completed`` event (as ``throughput.py``).
* ``pg-<sc>``: the same on PostgreSQL.
* ``pg-<sc>-split<k>``: this process submits through an API-only manager
  (``background_tasks.enabled: false``) while ``k`` ``vpsweb-tasks worker`` processes run the
  tasks; the clock stops when the database holds N completed tasks (polled every 5 ms).

Columns: tasks/s; client CPU us a task (this process, plus the worker processes); server
CPU us a task (the PostgreSQL backends whose ``application_name`` is the run's, read from
``/proc``); commits a task (``pg_stat_database.xact_commit`` of the database) and WAL
syncs a task (``pg_stat_wal.wal_sync``). The last two are the whole server's: other work
on it during a run counts too. Split runs also count the worker processes' claims
(``noop_tasks.py``): the share that came back empty, and the tasks a claim took. Every
system is a function of ``(Context, synchronous_commit, processes) -> Run`` in
``SYSTEMS``: add others there. Run by hand; nothing here is a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
import psycopg
import yaml
from throughput import SUBMITTERS, noop, submit_all

from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus, load_config

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    rate: float  # tasks a second
    client_us: float  # CPU us a task, our processes
    server_us: float | None = None  # CPU us a task, the PostgreSQL backends of the run
    commits: float | None = None  # commits a task (the whole database)
    syncs: float | None = None  # WAL syncs a task (the whole server)
    empty: float | None = None  # share of the worker processes' claims that took nothing
    per_claim: float | None = None  # tasks a claim, in the worker processes


@dataclass(frozen=True)
class Context:
    dsn: str
    folder: Path
    n: int
    concurrency: int


# --- measuring the server ------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Server:
    """The CPU of one run's backends (by ``application_name``) and the server's commit
    and WAL sync counters, between :meth:`start` and :meth:`stop`."""

    def __init__(self, dsn: str, app: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="vpsbench-probe")
        self.app = app
        self.cpu: dict[int, float] = {}
        self.counters = (0, 0)

    def _pids(self) -> list[int]:
        found = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name IN (%s, %s)",
            (self.app, "vpsweb-tasks-listen"),
        ).fetchall()
        return [pid for (pid,) in found]

    def _counters(self) -> tuple[int, int]:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        ((commits,),) = self.conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchall()
        ((syncs,),) = self.conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchall()
        return int(commits), int(syncs)

    def start(self) -> None:
        time.sleep(1.1)  # backends report their counters at most once a second
        self.counters = self._counters()
        self.cpu = {pid: _proc_cpu(pid) for pid in self._pids()}

    def stop(self) -> float:
        """CPU seconds of the run's backends since :meth:`start` (call before they exit)."""
        return sum(_proc_cpu(pid) - self.cpu.get(pid, 0.0) for pid in self._pids())

    def counted(self) -> tuple[int, int]:
        time.sleep(1.1)
        commits, syncs = self._counters()
        return commits - self.counters[0], syncs - self.counters[1]

    def close(self) -> None:
        self.conn.close()


@contextmanager
def schema(dsn: str, synchronous_commit: str) -> Iterator[tuple[str, str]]:
    """A fresh schema; the DSN that uses it, and the runs's application_name."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        options = f"-csearch_path={name} -csynchronous_commit={synchronous_commit}"
        app = f"vpsbench-{name}"
        yield psycopg.conninfo.make_conninfo(dsn, options=options, application_name=app), app
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _settings(storage: dict[str, Any], ctx: Context, *, enabled: bool = True) -> Any:
    return load_config(
        storage=storage,
        background_tasks={
            "enabled": enabled,
            "max_concurrent_jobs": ctx.concurrency,
            "max_queue_size": ctx.n + 10,
        },
        logging={"file": None, "level": "WARNING"},
    )


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# --- the systems ----------------------------------------------------------------------------


async def _in_process(storage: dict[str, Any], ctx: Context, server: Server | None) -> Run:
    """One process submits (16 coroutines) and runs the tasks."""
    definition = TaskDefinition(name="noop", task_type="noop")
    async with TaskManager(_settings(storage, ctx)) as manager:
        manager.register("noop", noop)
        await (await manager.submit(definition)).wait()  # warm up
        done = anyio.Event()
        finished = 0

        def on_completed(event: Any) -> None:
            nonlocal finished
            finished += 1
            if finished == ctx.n:
                done.set()

        manager.events.add_listener(on_completed, kinds={"task_completed"})
        if server is not None:
            await anyio.to_thread.run_sync(server.start)
        cpu, start = time.process_time(), time.perf_counter()
        await submit_all(manager, definition, ctx.n)
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        backend = None if server is None else await anyio.to_thread.run_sync(server.stop)
    return _run(ctx, elapsed, cpu, backend, server)


def _run(
    ctx: Context, elapsed: float, cpu: float, backend: float | None, server: Server | None
) -> Run:
    if server is None or backend is None:
        return Run(ctx.n / elapsed, cpu / ctx.n * 1e6)
    commits, syncs = server.counted()
    return Run(
        ctx.n / elapsed, cpu / ctx.n * 1e6, backend / ctx.n * 1e6, commits / ctx.n, syncs / ctx.n
    )


async def ours_sqlite(ctx: Context, synchronous_commit: str, processes: int) -> Run:
    path = ctx.folder / f"ours-{uuid.uuid4().hex[:6]}.db"
    storage = {"backend": "sqlite", "sqlite_path": str(path), "sqlite_synchronous": "NORMAL"}
    return await _in_process(storage, ctx, None)


async def ours_postgres(ctx: Context, synchronous_commit: str, processes: int) -> Run:
    with schema(ctx.dsn, synchronous_commit) as (dsn, app):
        server = Server(ctx.dsn, app)
        try:
            return await _in_process({"backend": "postgres", "postgres_dsn": dsn}, ctx, server)
        finally:
            server.close()


def _spawn_worker(config: Path, claims: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "vpsweb_tasks.cli", "worker", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--import", "benchmarks.noop_tasks"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "VPSWEB_BENCH_CLAIMS": str(claims)},
    )


def _claims(files: list[Path]) -> tuple[float | None, float | None]:
    """(share of empty claims, tasks a claim) of the workers that wrote these files (see
    noop_tasks.py)."""
    counts = [0, 0, 0]
    for file in files:
        if file.exists():
            counts = [a + int(b) for a, b in zip(counts, file.read_text().split(), strict=True)]
    claims, empty, tasks = counts
    return (empty / claims, tasks / claims) if claims else (None, None)


async def ours_postgres_split(ctx: Context, synchronous_commit: str, processes: int) -> Run:
    """This process submits (API only); ``processes`` worker processes run the tasks."""
    with schema(ctx.dsn, synchronous_commit) as (dsn, app):
        settings = _settings({"backend": "postgres", "postgres_dsn": dsn}, ctx, enabled=False)
        config = ctx.folder / f"config-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
        definition = TaskDefinition(name="noop", task_type="noop")
        server = Server(ctx.dsn, app)
        async with TaskManager(settings) as manager:
            manager.register("noop", noop)  # never run here: enabled is false
            claim_files = [ctx.folder / f"claims-{uuid.uuid4().hex[:6]}" for _ in range(processes)]
            workers = [_spawn_worker(config, file) for file in claim_files]
            try:
                for worker in workers:
                    assert worker.stdout is not None
                    line = await anyio.to_thread.run_sync(worker.stdout.readline)
                    if not line.startswith("READY"):
                        raise AssertionError(f"a worker did not start: {line!r}")
                await (await manager.submit(definition)).wait()  # warm up
                children = [psutil.Process(worker.pid) for worker in workers]
                await anyio.to_thread.run_sync(server.start)
                cpu = time.process_time() + sum(map(_cpu, children))
                start = time.perf_counter()
                await submit_all(manager, definition, ctx.n)
                # Other processes do the work: there is no event here to wait on.
                while True:
                    if (await manager.store.count_tasks())[TaskStatus.COMPLETED] > ctx.n:
                        break
                    await anyio.sleep(0.005)
                elapsed = time.perf_counter() - start
                cpu = time.process_time() + sum(map(_cpu, children)) - cpu
                backend = await anyio.to_thread.run_sync(server.stop)
            finally:
                for worker in workers:
                    worker.send_signal(signal.SIGTERM)
                for worker in workers:
                    await anyio.to_thread.run_sync(worker.wait)
                    if worker.stdout is not None:
                        worker.stdout.close()
        try:
            run = _run(ctx, elapsed, cpu, backend, server)
        finally:
            server.close()
        # The warm-up task's claim counts too: one in thousands.
        empty, per_claim = _claims(claim_files)
        return dataclasses.replace(run, empty=empty, per_claim=per_claim)


System = Callable[[Context, str, int], Awaitable[Run]]

#: name -> (function, whether it runs on PostgreSQL, whether it takes worker processes).
SYSTEMS: dict[str, tuple[System, bool, bool]] = {
    "sqlite": (ours_sqlite, False, False),
    "pg": (ours_postgres, True, False),
    "pg-split": (ours_postgres_split, True, True),
}


def configurations(args: argparse.Namespace) -> list[tuple[str, System, str, int]]:
    """(label, system, synchronous_commit, processes) of every run of a round."""
    found: list[tuple[str, System, str, int]] = []
    for name in args.systems:
        fn, on_postgres, split = SYSTEMS[name]
        if not on_postgres:
            found.append((name, fn, "", 0))
            continue
        for sc in args.synchronous_commit:
            for k in args.processes if split else [0]:
                found.append((f"{name}{k if split else ''} sc={sc}", fn, sc, k))
    return found


def _fmt(values: list[float | None], spec: str) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{statistics.median(known):{spec}} [{min(known):{spec}}-{max(known):{spec}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="max_concurrent_jobs")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--synchronous-commit", nargs="+", default=["on", "off"])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--dir", default=".", help="where the SQLite files go")
    args = parser.parse_args()

    runs = configurations(args)
    results: dict[str, list[Run]] = {label: [] for label, *_ in runs}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ctx = Context(args.dsn, Path(tmp), args.tasks, args.concurrency)
        for round_ in range(args.rounds):
            for label, fn, sc, k in runs:
                run = anyio.run(fn, ctx, sc, k)
                results[label].append(run)
                print(
                    f"round {round_ + 1} {label:<18} {run.rate:8,.0f}/s {run.client_us:7.0f} us"
                    f" server {run.server_us or 0:5.0f} us  commits {run.commits or 0:5.2f}"
                    f"  syncs {run.syncs or 0:5.2f}  empty claims {run.empty or 0:4.0%}"
                    f" tasks/claim {run.per_claim or 0:5.1f}  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
            loads.append(os.getloadavg()[0])

    sqlite = statistics.median(r.rate for r in results["sqlite"]) if "sqlite" in results else None
    print(
        f"\n{args.tasks} no-op tasks, {SUBMITTERS} submitters, max_concurrent_jobs="
        f"{args.concurrency}, {args.rounds} interleaved rounds, {os.cpu_count()} CPUs,"
        f" load average {min(loads):.2f}-{max(loads):.2f}; medians [ranges]"
    )
    header = (
        f"{'system':<18} {'tasks/s':>20} {'x sqlite':>8} {'client us/task':>18}"
        f" {'server us/task':>18} {'commits/task':>18} {'WAL syncs/task':>18}"
        f" {'empty claims':>18} {'tasks/claim':>18}"
    )
    print(header)
    for label, found in results.items():
        rate = statistics.median(r.rate for r in found)
        ratio = f"{rate / sqlite:8.2f}" if sqlite else f"{'-':>8}"
        print(
            f"{label:<18} {_fmt([r.rate for r in found], ',.0f'):>20} {ratio}"
            f" {_fmt([r.client_us for r in found], '.0f'):>18}"
            f" {_fmt([r.server_us for r in found], '.0f'):>18}"
            f" {_fmt([r.commits for r in found], '.2f'):>18}"
            f" {_fmt([r.syncs for r in found], '.2f'):>18}"
            f" {_fmt([r.empty for r in found], '.2f'):>18}"
            f" {_fmt([r.per_claim for r in found], '.1f'):>18}"
        )


if __name__ == "__main__":
    main()
