"""Ours on PostgreSQL side by side with pgqueuer and Procrastinate, in the same run.

    .venv/bin/python benchmarks/pg_compare.py [--tasks 5000] [--rounds 3]
        [--systems ours pgqueuer pgqueuer-batch procrastinate ours-1p pgqueuer-1p
         procrastinate-1p] [--ours main=/work/main --ours pgbatch=/work/wt-pgbatch]
        [--concurrency 16] [--batch 100] [--dsn postgresql://postgres@127.0.0.1:5432/test]
        [--profile]

Every system runs N no-op tasks in the same topology: a producer process enqueues them as
its users would, from 16 concurrent coroutines, and one consumer process runs them (the
``-1p`` rows: one process does both). Each run gets a database of its own, created and
dropped here, so that ``pg_stat_database`` counts that system's commits alone. The
processes start, connect and report ready; the clock runs from the producer's first
enqueue to the N-th completion seen in the database (polled every 20 ms). Per run:

* tasks/s;
* client CPU a task: the producer's and the consumer's user+system time over the clock;
* server CPU a task: the postgres backends serving that database (``pg_stat_activity``
  by ``datname``), their user+system time over the clock (sampled every 0.1 s, so a
  backend that exits keeps its last sample); the server's shared processes (WAL writer,
  checkpointer) are not counted;
* commits a task: the ``pg_stat_database.xact_commit`` delta (this script's own polls
  taken off), read once every backend of the run has exited and so flushed its counts;
* WAL syncs a task: the ``pg_stat_wal.wal_sync`` delta. That view is the whole server's:
  other databases' work on a shared machine adds to it.

Rounds interleave the systems (the order turns each round); the table shows medians, and
each ``ours`` row's ratio to the others of its topology. The load average is printed at
the start and the end. ``--ours LABEL=PATH`` (repeatable) runs our rows from another
checkout (its ``vpsweb_tasks`` and ``benchmarks/noop_tasks.py``), e.g. main against a
branch in one run. ``--profile`` runs each consumer under cProfile (CPU time) and prints
its costliest functions. Run by hand; ``pip install -e '.[bench]'`` brings the other
systems.

Each system is a ``System``: its setup, its producer, consumer and one-process roles, and
the query that counts its completed tasks. A new row is a new ``System`` in ``SYSTEMS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.02  # the completion poll's interval, seconds
SAMPLE = 0.1  # the backends' CPU sampling interval, seconds
SETTLE = 1.2  # idle backends flush their statistics within a second (PostgreSQL 15)

# --- the roles, run in child processes ----------------------------------------------------
# Each role prints READY once connected; a producer then waits for GO on stdin before its
# first enqueue, prints SUBMITTED after its last, and exits when stdin closes. A consumer
# runs until SIGTERM.


def _ready() -> None:
    print("READY", flush=True)


async def _line() -> str:
    import anyio

    return await anyio.to_thread.run_sync(sys.stdin.readline)


async def _spread(n: int, coroutines: int, submit: Callable[[int], Awaitable[None]]) -> None:
    """Run ``submit(count)`` in ``coroutines`` concurrent coroutines that share n tasks."""
    import anyio

    async with anyio.create_task_group() as tg:
        for i in range(coroutines):
            tg.start_soon(submit, n // coroutines + (1 if i < n % coroutines else 0))


async def _produce(n: int, coroutines: int, submit: Callable[[int], Awaitable[None]]) -> None:
    _ready()
    await _line()
    await _spread(n, coroutines, submit)
    print("SUBMITTED", flush=True)
    await _line()


async def _until_sigterm() -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


# ours: vpsweb-tasks


def _ours_config(args: argparse.Namespace, *, worker: bool) -> Path:
    import yaml

    path = Path(args.folder) / f"ours-{uuid.uuid4().hex[:8]}.yaml"
    background: dict[str, Any] = {
        "enabled": worker,
        "max_concurrent_jobs": args.concurrency,
        "max_queue_size": args.tasks + 1,
    }
    if not worker:
        background["declared_task_types"] = ["noop"]
    config = {
        "storage": {"backend": "postgres", "postgres_dsn": args.dsn},
        "background_tasks": background,
        "logging": {"file": None, "level": "WARNING"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def ours_produce(args: argparse.Namespace) -> None:
    """TaskManager.submit in an API-only process (background_tasks.enabled: false)."""
    from vpsweb_tasks import TaskDefinition, TaskManager, load_config

    async with TaskManager(load_config(_ours_config(args, worker=False))) as manager:
        definition = TaskDefinition(name="noop", task_type="noop")

        async def submit(count: int) -> None:
            for _ in range(count):
                await manager.submit(definition)

        async def batches(count: int) -> None:
            for start in range(0, count, args.batch):
                await manager.submit_batch([definition] * min(args.batch, count - start))

        await _produce(args.tasks, 16, batches if args.batch > 1 else submit)


def ours_consume(args: argparse.Namespace) -> None:
    """``vpsweb-tasks worker``, its own command line (it prints READY itself)."""
    from vpsweb_tasks.cli.app import main

    config = _ours_config(args, worker=True)
    sys.exit(main(["worker", "--config", str(config), "--import", "benchmarks.noop_tasks"]))


async def ours_both(args: argparse.Namespace) -> None:
    from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config

    async def noop(context: TaskContext) -> None:
        return None

    async with TaskManager(load_config(_ours_config(args, worker=True))) as manager:
        manager.register("noop", noop)
        definition = TaskDefinition(name="noop", task_type="noop")

        async def submit(count: int) -> None:
            for _ in range(count):
                await manager.submit(definition)

        await _produce(args.tasks, 16, submit)


async def ours_setup(dsn: str, folder: Path) -> None:
    """Migrations, before the clock (a manager's start applies them)."""
    from vpsweb_tasks import TaskManager, load_config

    storage = {"backend": "postgres", "postgres_dsn": dsn}
    config = load_config(storage=storage, background_tasks={"enabled": False})
    async with TaskManager(config):
        pass


# pgqueuer: asyncpg, the driver of its quick start and of its own benchmark


async def _pgqueuer_queries(dsn: str) -> Any:
    """Queries over an asyncpg pool: one connection runs one statement at a time, and 16
    coroutines enqueue at once."""
    import asyncpg
    from pgqueuer import AsyncpgPoolDriver, Queries

    pool = await asyncpg.create_pool(dsn)
    return Queries(AsyncpgPoolDriver(pool))


async def _pgqueuer_consumer(dsn: str) -> Any:
    """A PgQueuer on one asyncpg connection with its defaults (batch_size 10, no limit on
    concurrent tasks), as its quick start and `pgq run` have it."""
    import asyncpg
    from pgqueuer import Job, PgQueuer

    pgq = PgQueuer.from_asyncpg_connection(await asyncpg.connect(dsn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    return pgq


def _pgqueuer_enqueue(queries: Any, batch: int) -> Callable[[int], Awaitable[None]]:
    async def one_per_call(count: int) -> None:
        for _ in range(count):
            await queries.enqueue("noop", None)

    async def batches(count: int) -> None:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)

    return batches if batch > 1 else one_per_call


async def pgqueuer_produce(args: argparse.Namespace) -> None:
    queries = await _pgqueuer_queries(args.dsn)
    await _produce(args.tasks, 16, _pgqueuer_enqueue(queries, args.batch))


async def pgqueuer_consume(args: argparse.Namespace) -> None:
    import anyio

    pgq = await _pgqueuer_consumer(args.dsn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pgq.run)
        _ready()
        await _until_sigterm()
        pgq.shutdown.set()


async def pgqueuer_both(args: argparse.Namespace) -> None:
    import anyio

    pgq = await _pgqueuer_consumer(args.dsn)
    queries = await _pgqueuer_queries(args.dsn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pgq.run)
        await _produce(args.tasks, 16, _pgqueuer_enqueue(queries, args.batch))
        pgq.shutdown.set()


async def pgqueuer_setup(dsn: str, folder: Path) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


# Procrastinate: psycopg 3, its default connector


def _procrastinate_app(dsn: str) -> Any:
    import procrastinate

    # It warns of an App made in a __main__ module: this script's roles never import it.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


async def procrastinate_produce(args: argparse.Namespace) -> None:
    app = _procrastinate_app(args.dsn)
    noop = app.tasks["noop"]

    async def submit(count: int) -> None:
        for _ in range(count):
            await noop.defer_async()

    async def batches(count: int) -> None:
        for start in range(0, count, args.batch):
            await noop.batch_defer_async(*[{}] * min(args.batch, count - start))

    async with app.open_async():
        await _produce(args.tasks, 16, batches if args.batch > 1 else submit)


async def procrastinate_consume(args: argparse.Namespace) -> None:
    """Its worker with --concurrency jobs at once (its default is 1); it stops on SIGTERM."""
    app = _procrastinate_app(args.dsn)
    async with app.open_async():
        _ready()
        await app.run_worker_async(concurrency=args.concurrency)


async def procrastinate_both(args: argparse.Namespace) -> None:
    import anyio

    app = _procrastinate_app(args.dsn)
    noop = app.tasks["noop"]

    async def submit(count: int) -> None:
        for _ in range(count):
            await noop.defer_async()

    async with app.open_async(), anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(app.run_worker_async, concurrency=args.concurrency))
        await _produce(args.tasks, 16, submit)
        tg.cancel_scope.cancel()


async def procrastinate_setup(dsn: str, folder: Path) -> None:
    app = _procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


ROLES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "ours-produce": ours_produce,
    "ours-consume": ours_consume,
    "ours-both": ours_both,
    "pgqueuer-produce": pgqueuer_produce,
    "pgqueuer-consume": pgqueuer_consume,
    "pgqueuer-both": pgqueuer_both,
    "procrastinate-produce": procrastinate_produce,
    "procrastinate-consume": procrastinate_consume,
    "procrastinate-both": procrastinate_both,
}
SETUPS: dict[str, Callable[[str, Path], Awaitable[None]]] = {
    "ours": ours_setup,
    "pgqueuer": pgqueuer_setup,
    "procrastinate": procrastinate_setup,
}


def run_role(args: argparse.Namespace) -> None:
    role = ROLES[args.role]
    if args.checkout and args.role.startswith("ours"):
        import vpsweb_tasks

        assert vpsweb_tasks.__file__.startswith(args.checkout), vpsweb_tasks.__file__
    if args.profile and args.role.endswith("consume"):
        profile(role, args)
    elif role is ours_consume:
        role(args)
    else:
        import anyio

        anyio.run(role, args, backend="asyncio", backend_options={"use_uvloop": True})


def profile(role: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """--profile: the consumer's run under cProfile, its 25 costliest functions by own
    CPU time printed to the consumer's log when it stops (cProfile adds its own)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.process_time)  # CPU, not the waits of a loaded machine
    args.profile = False
    try:
        profiler.runcall(run_role, args)
    except SystemExit:
        pass
    finally:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


# --- the systems ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class System:
    """One row: which library, which roles in which processes, how it is set up, and the
    query that counts its completed tasks."""

    name: str
    library: str  # "ours", "pgqueuer", "procrastinate": the role and setup prefix
    group: str  # "split", "batch" or "1p": rows of a group share a topology
    topology: str
    completed: str
    checkout: Path | None = None  # ours from another checkout

    @property
    def roles(self) -> tuple[str, ...]:
        return ("both",) if self.group == "1p" else ("produce", "consume")


OURS_DONE = "SELECT count(*) FROM background_tasks WHERE status = 'completed'"
PGQUEUER_DONE = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
PROCRASTINATE_DONE = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
#: The rows run when --systems names none, in this order.
DEFAULT = (
    "ours pgqueuer procrastinate ours-batch pgqueuer-batch ours-1p pgqueuer-1p procrastinate-1p"
)


def systems(args: argparse.Namespace) -> dict[str, System]:
    c, b = args.concurrency, args.batch
    found = [
        System(
            "pgqueuer",
            "pgqueuer",
            "split",
            "producer: Queries.enqueue, one job a call; consumer: PgQueuer.run (batch_size 10)",
            PGQUEUER_DONE,
        ),
        System(
            "pgqueuer-batch",
            "pgqueuer",
            "batch",
            f"producer: Queries.enqueue, {b} jobs a call; consumer: as above",
            PGQUEUER_DONE,
        ),
        System(
            "pgqueuer-1p",
            "pgqueuer",
            "1p",
            "one process: Queries.enqueue one job a call, PgQueuer.run beside it",
            PGQUEUER_DONE,
        ),
        System(
            "procrastinate",
            "procrastinate",
            "split",
            f"producer: defer_async; consumer: run_worker_async(concurrency={c})",
            PROCRASTINATE_DONE,
        ),
        System(
            "procrastinate-batch",
            "procrastinate",
            "batch",
            f"producer: batch_defer_async, {b} jobs a call; consumer: as above",
            PROCRASTINATE_DONE,
        ),
        System(
            "procrastinate-1p",
            "procrastinate",
            "1p",
            "one process: defer_async, run_worker_async beside it",
            PROCRASTINATE_DONE,
        ),
    ]
    checkouts = [spec.split("=", 1) for spec in args.ours] or [["", str(ROOT)]]
    for label, path in checkouts:
        at = f"@{label}" if label else ""
        found += [
            System(
                f"ours{at}",
                "ours",
                "split",
                "producer: TaskManager.submit, API-only (background_tasks.enabled: false);"
                f" consumer: vpsweb-tasks worker (max_concurrent_jobs {c})",
                OURS_DONE,
                Path(path).resolve(),
            ),
            System(
                f"ours-batch{at}",
                "ours",
                "batch",
                f"producer: TaskManager.submit_batch, {b} tasks a call; consumer: as above",
                OURS_DONE,
                Path(path).resolve(),
            ),
            System(
                f"ours-1p{at}",
                "ours",
                "1p",
                "one process: TaskManager.submit, its workers beside it",
                OURS_DONE,
                Path(path).resolve(),
            ),
        ]
    return {system.name: system for system in found}


# --- the harness ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    system: str
    rate: float  # tasks/s
    producer_us: float  # CPU a task (the one process of a -1p row)
    consumer_us: float
    server_us: float
    commits: float
    wal_syncs: float
    rows: float  # rows inserted, updated and deleted
    backends: int

    @property
    def client_us(self) -> float:
        return self.producer_us + self.consumer_us

    @property
    def total_us(self) -> float:
        return self.client_us + self.server_us


def cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return None
    return times.user + times.system


class Backends:
    """The CPU time of the postgres backends serving one database, sampled on a thread
    from the moment the clock starts."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn, self.database = dsn, database
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)

    def pids(self) -> list[int]:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        return [pid for (pid,) in self.conn.execute(query, (self.database,)).fetchall()]

    def begin(self, exclude: int) -> None:
        self.exclude = exclude
        for pid in self.pids():
            if pid != exclude and (seconds := cpu_seconds(pid)) is not None:
                self.start[pid] = self.last[pid] = seconds
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopped.wait(SAMPLE):
            self.sample()

    def sample(self) -> None:
        for pid in self.pids():
            if pid != self.exclude and (seconds := cpu_seconds(pid)) is not None:
                self.start.setdefault(pid, 0.0)  # connected after the clock started
                self.last[pid] = seconds

    def end(self) -> float:
        self.stopped.set()
        self.thread.join()
        self.sample()
        self.conn.close()
        return sum(self.last[pid] - self.start[pid] for pid in self.last)


def counters(conn: psycopg.Connection[Any], database: str) -> tuple[int, int]:
    """(xact_commit of the database, wal_sync of the server)."""
    (commits,) = conn.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
    ).fetchone() or (0,)
    (syncs,) = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone() or (0,)
    return int(commits), int(syncs)


ROWS = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"


def row_writes(conn: psycopg.Connection[Any]) -> int:
    (rows,) = conn.execute(ROWS).fetchone() or (0,)
    return int(rows)


def dsn_for(base: str, database: str) -> str:
    """The URL of another database on the same server (asyncpg takes URLs only)."""
    return urllib.parse.urlsplit(base)._replace(path=f"/{database}").geturl()


def spawn(system: System, role: str, dsn: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--role", f"{system.library}-{role}"]
    command += ["--dsn", dsn, "--tasks", str(args.tasks), "--folder", args.folder]
    batch = args.batch if system.group == "batch" else 1
    command += ["--concurrency", str(args.concurrency), "--batch", str(batch)]
    if args.profile:
        command.append("--profile")
    cwd = ROOT
    if system.checkout is not None:
        command += ["--checkout", str(system.checkout)]
        cwd = system.checkout
    with open(Path(args.folder) / f"{system.name}-{role}.log", "a") as log:
        return subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )


def expect(
    process: subprocess.Popen[str], word: str, system: System, args: argparse.Namespace
) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(word):
        logs = "".join(p.read_text() for p in Path(args.folder).glob(f"{system.name}-*.log"))
        raise RuntimeError(f"{system.name}: expected {word}, got {line!r}\n{logs[-3000:]}")


def measure(system: System, args: argparse.Namespace) -> Run:
    """One run of one system in a database of its own, dropped after."""
    database = f"pgc_{system.library}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        try:
            return measure_in(system, args, admin, database)
        finally:
            drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database))
            admin.execute(drop)


def measure_in(
    system: System, args: argparse.Namespace, admin: psycopg.Connection[Any], database: str
) -> Run:
    import anyio

    dsn = dsn_for(args.dsn, database)
    processes: list[subprocess.Popen[str]] = []
    try:
        anyio.run(SETUPS[system.library], dsn, Path(args.folder))
        for role in reversed(system.roles):  # the consumer first, then the producer
            processes.append(spawn(system, role, dsn, args))
            expect(processes[-1], "READY", system, args)
        producer = processes[-1]
        assert producer.stdin is not None
        poll = psycopg.connect(dsn, autocommit=True)
        (poll_pid,) = poll.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        backends = Backends(args.dsn, database)
        time.sleep(SETTLE)
        commits0, syncs0 = counters(admin, database)
        rows0 = row_writes(poll)
        client0 = [cpu_seconds(p.pid) or 0.0 for p in processes]
        backends.begin(exclude=poll_pid)
        polls = 0
        start = time.perf_counter()
        producer.stdin.write("GO\n")
        producer.stdin.flush()
        while True:
            (done,) = poll.execute(system.completed).fetchone() or (0,)
            polls += 1
            if done >= args.tasks:
                break
            if time.perf_counter() - start > args.timeout:
                raise RuntimeError(f"{system.name}: {done} of {args.tasks} after {args.timeout} s")
            time.sleep(POLL)
        elapsed = time.perf_counter() - start
        client = [
            (cpu_seconds(p.pid) or before) - before
            for p, before in zip(processes, client0, strict=True)
        ]
        server = backends.end()
        backend_count = len(backends.last)
        expect(producer, "SUBMITTED", system, args)
        poll.close()
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
            if process is not processes[-1]:  # the consumer; a producer ends with stdin
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    # Every backend of the run gone: each has flushed its statistics on the way out.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (left,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone() or (0,)
        if not left:
            break
        time.sleep(0.05)
    commits1, syncs1 = counters(admin, database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows1 = row_writes(conn)
    n = args.tasks
    return Run(
        system=system.name,
        rate=n / elapsed,
        producer_us=client[-1] / n * 1e6,
        consumer_us=sum(client[:-1]) / n * 1e6,
        server_us=server / n * 1e6,
        commits=(commits1 - commits0 - polls - 1) / n,  # the polls and rows0
        rows=(rows1 - rows0) / n,
        wal_syncs=(syncs1 - syncs0) / n,
        backends=backend_count,
    )


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


RATIOS = ("rate", "client_us", "server_us")


def report(chosen: list[System], runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    def med(name: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs[name])

    print(
        f"\n{args.tasks} no-op tasks, medians of {args.rounds} interleaved rounds,"
        f" {os.cpu_count()} CPUs; the server's synchronous_commit as configured"
    )
    for system in chosen:
        print(f"  {system.name:<22} {system.topology}")
    header = (
        f"{'system':<22}{'tasks/s':>9}{'producer':>9}{'consumer':>9}{'server':>8}{'total':>7}"
        f"{'commits':>9}{'WAL syncs':>11}{'rows':>6}"
        "  ours / it: rate, client CPU, server CPU"
    )
    print("\n" + header + "\n" + "-" * len(header))
    ours = [s for s in chosen if s.library == "ours"]
    for system in chosen:
        name = system.name
        line = (
            f"{name:<22}{med(name, 'rate'):>9,.0f}{med(name, 'producer_us'):>9,.0f}"
            f"{med(name, 'consumer_us'):>9,.0f}{med(name, 'server_us'):>8,.0f}"
            f"{med(name, 'total_us'):>7,.0f}{med(name, 'commits'):>9.2f}"
            f"{med(name, 'wal_syncs'):>11.2f}{med(name, 'rows'):>6.2f}"
        )
        if system.library != "ours":
            ratios = [
                f"{o.name} " + ", ".join(f"{med(o.name, f) / med(name, f):.2f}x" for f in RATIOS)
                for o in ours
                if o.group == system.group
            ]
            line += "  " + "; ".join(ratios)
        print(line)
    print(
        "\nA task's CPU in us: the producer process (a -1p row's one process), the consumer,"
        " the server's backends, their total. A task's commits (pg_stat_database), WAL syncs"
        " (pg_stat_wal, the whole server's) and rows written (pg_stat_user_tables)."
    )
    print("\nevery run (tasks/s, client us, server us a task):")
    for system in chosen:
        cells = ", ".join(
            f"{r.rate:,.0f}/{r.client_us:,.0f}/{r.server_us:,.0f}" for r in runs[system.name]
        )
        print(f"  {system.name:<22} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", nargs="+", default=None, help="rows, in this order")
    parser.add_argument("--ours", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--concurrency", type=int, default=16, help="consumer's tasks at once")
    parser.add_argument("--batch", type=int, default=100, help="pgqueuer-batch: jobs a call")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a run")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the consumers, printed at the end"
    )
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--checkout", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        run_role(args)
        return

    known = systems(args)
    labels = [f"@{spec.split('=', 1)[0]}" for spec in args.ours] or [""]
    names = args.systems or [
        name + label
        for name in DEFAULT.split()
        for label in (labels if name.startswith("ours") else [""])
    ]
    chosen = [known[name] for name in names]
    runs: dict[str, list[Run]] = {name: [] for name in names}
    print(f"load average at start: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pg-compare-") as folder:
        args.folder = folder
        for round_ in range(args.rounds):
            turn = chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]
            for system in turn:
                run = measure(system, args)
                runs[system.name].append(run)
                print(
                    f"round {round_ + 1} {system.name:<22} {run.rate:>7,.0f} tasks/s"
                    f"  client {run.client_us:>6,.0f} us  server {run.server_us:>6,.0f} us"
                    f"  commits {run.commits:5.2f}  WAL syncs {run.wal_syncs:5.2f}"
                    f"  ({run.backends} backends; load {loadavg()})",
                    flush=True,
                )
        if args.profile:
            for log in sorted(Path(folder).glob("*-consume.log")):
                print(f"\n--- {log.stem}, every round ---\n{log.read_text()}")
    report(chosen, runs, args)
    print(f"\nload average at end: {loadavg()}")


def bootstrap_checkout() -> None:
    """Run ``ours`` from the checkout named by --checkout: its directory first on sys.path,
    the editable install's finder (which maps vpsweb_tasks to this tree) left out."""
    if "--checkout" not in sys.argv:
        return
    root = sys.argv[sys.argv.index("--checkout") + 1]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    sys.path.insert(0, root)
    os.chdir(root)


if __name__ == "__main__":
    bootstrap_checkout()
    main()
