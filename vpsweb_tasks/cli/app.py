"""The ``vpsweb-tasks`` command.

::

    vpsweb-tasks serve [--host H] [--port P] [--config PATH]         # API, dashboard, workers
    vpsweb-tasks worker --config config.yaml --import myapp.tasks   # workers only, to scale out
    vpsweb-tasks status --config config.yaml [--json]              # queue, workers, pause

``worker`` makes the :class:`~vpsweb_tasks.manager.TaskManager` from the config, makes it
the process-wide manager, and only then imports the ``--import`` modules, so that their
``@get_task_manager().task("name")`` decorators register on it. It runs until SIGINT or
SIGTERM, then shuts down gracefully: running tasks get ``shutdown_grace_period`` to
finish, the rest go back to the queue without losing an attempt. ``--metrics-port PORT``
serves its Prometheus counters and histograms. Several ``worker``
processes may share one database (PostgreSQL, or SQLite on one host); a process started
with ``background_tasks.enabled: false`` (an API server) submits, they run.
``--queues a,b`` names the queues a worker takes tasks from (instead of
``background_tasks.worker_queues``); each must be one of ``background_tasks.queues``.
A second SIGINT or SIGTERM is the hard stop: the grace period ends at once; SIGUSR1 has
the worker reap dead workers of this host now. ``--processes N`` (instead of
``background_tasks.worker_processes``) runs N such workers as a supervised pool
(:mod:`.pool`).

``serve`` and ``worker`` run on uvloop when it is installed (the ``http`` extra brings it),
as uvicorn does by default; ``--loop asyncio`` opts out. The event loop is a host's choice,
so the library itself never picks one: an app that embeds a manager runs it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import anyio
from pydantic import ValidationError

from ..config import BackgroundTaskSettings, Settings, load_config
from ..errors import ConfigError, StorageError
from ..log import formatter
from ..manager import Extension, TaskManager, load_extension, make_store, set_task_manager
from ..models import TaskStatus
from .commands import add_commands
from .exits import EPILOG, LEGACY_EXITS
from .pool import PARENT_DIED, WorkerPool, die_with_parent

__all__ = ["main"]

logger = logging.getLogger("vpsweb_tasks.cli")


def _settings(args: argparse.Namespace) -> Settings:
    return load_config(args.config)


#: Installed by ``serve`` and ``worker`` (``--extension`` adds more): VPSWeb's
#: translation jobs, named rather than imported, as any extension would be.
DEFAULT_EXTENSIONS = ("vpsweb_tasks.translation:TranslationExtension",)


def _extensions(args: argparse.Namespace) -> list[Extension]:
    paths = [*DEFAULT_EXTENSIONS, *args.extensions]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return [load_extension(path) for path in dict.fromkeys(paths)]
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"--extension: {exc}") from None


LOOPS = ("auto", "asyncio", "uvloop")


def _use_uvloop(loop: str) -> bool:
    """``auto``: uvloop if it is installed (uvicorn's rule); ``uvloop``: it must be."""
    installed = importlib.util.find_spec("uvloop") is not None
    if loop == "uvloop" and not installed:
        raise ConfigError("--loop uvloop: uvloop is not installed (pip install uvloop)")
    return loop != "asyncio" and installed


def _ours(background: BackgroundTaskSettings) -> BackgroundTaskSettings:
    """The process is the library's: the garbage collector is tuned unless the config
    says ``gc_tuning: false`` (an embedding application keeps its own)."""
    if background.gc_tuning is not None:
        return background
    return background.model_copy(update={"gc_tuning": True})


# --- worker ------------------------------------------------------------------------------


def _run_worker(args: argparse.Namespace) -> int:
    if args.supervisor is not None:
        die_with_parent(args.supervisor)
    settings = _settings(args)
    options = {"use_uvloop": True} if _use_uvloop(args.loop) else {}
    # Workers run here even if the config file (often shared with an API-only process)
    # says background_tasks.enabled: false.
    background: dict[str, Any] = {
        **_ours(settings.background_tasks).model_dump(),
        "enabled": True,
    }
    if args.concurrency is not None:
        background["max_concurrent_jobs"] = args.concurrency
    if args.queues is not None:
        background["worker_queues"] = [name.strip() for name in args.queues.split(",")]
    try:
        checked = BackgroundTaskSettings.model_validate(background)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--queues" if "worker_queues" in str(error) else "--concurrency"
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("worker_queues: ")
        raise ConfigError(f"{option}: {message}") from None
    settings = settings.model_copy(update={"background_tasks": checked})
    _log_to_stderr(settings)
    processes = checked.worker_processes if args.processes is None else args.processes
    if processes < 1:
        raise ConfigError(f"--processes: must be at least 1, not {processes}")
    if processes > 1:
        pool = WorkerPool(lambda index: _child_command(args, index), processes)
        return anyio.run(pool.run, backend="asyncio")
    # Modules are named as from the working directory, as `python -m` would find them.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    manager = TaskManager(settings, extensions=_extensions(args))
    set_task_manager(manager)
    if args.metrics_port is not None:
        _serve_metrics(manager, settings.http.host, args.metrics_port)
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"vpsweb-tasks worker: cannot import {module}: {exc}", file=sys.stderr)
            return 2
    anyio.run(_serve_worker, manager, backend="asyncio", backend_options=options)
    return 0


def _child_command(args: argparse.Namespace, index: int) -> list[str]:
    """The command line of a pool's child ``index``: this worker's, in one process."""
    command = [sys.executable, "-m", "vpsweb_tasks.cli", "worker", "--processes", "1"]
    command += ["--supervisor", str(os.getpid()), "--loop", args.loop]
    if args.config is not None:
        command += ["--config", args.config]
    for module in args.imports:
        command += ["--import", module]
    for extension in args.extensions:
        command += ["--extension", extension]
    if args.concurrency is not None:
        command += ["--concurrency", str(args.concurrency)]
    if args.queues is not None:
        command += ["--queues", args.queues]
    if args.metrics_port is not None:  # one port each: child i serves PORT + i
        command += ["--metrics-port", str(args.metrics_port + index)]
    return command


def _serve_metrics(manager: TaskManager, host: str, port: int) -> None:
    """The worker's own counters and histograms (the levels are any API process's), on
    prometheus_client's HTTP server thread."""
    try:
        from prometheus_client import start_http_server

        from vpsweb_tasks_http.metrics import TaskMetrics
    except ImportError as exc:
        raise ConfigError(
            f"--metrics-port needs the http extra: pip install 'vpsweb-tasks[http]' ({exc})"
        ) from None
    try:
        start_http_server(port, addr=host, registry=TaskMetrics.of(manager).registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc}") from None


async def _serve_worker(manager: TaskManager) -> None:
    # The signal receiver is in place before start-up, so an early SIGTERM still stops
    # the worker gracefully.
    with anyio.open_signal_receiver(*_WORKER_SIGNALS) as signals:
        async with manager:
            types = ", ".join(manager.task_types)
            queues = ", ".join(manager.config.worker_queues)
            logger.info(
                "worker %s running task types: %s; queues: %s", manager.worker_id, types, queues
            )
            print(f"READY {manager.worker_id}", flush=True)
            async for signum in signals:
                if signum == signal.SIGUSR1:  # a sibling in the pool died: reap it now
                    try:
                        await manager.queue.reap()
                    except Exception:
                        logger.exception("reaping dead workers failed")
                    continue
                if signum == PARENT_DIED:
                    logger.warning("the pool's supervisor died: shutting down gracefully")
                else:
                    logger.info("%s: shutting down gracefully", signal.Signals(signum).name)
                break
            _hard_stop_on_next_signal(manager)


#: SIGINT and SIGTERM drain the worker; SIGUSR1 has it reap dead workers now; PARENT_DIED
#: (a pool's child, its supervisor gone) drains it, however many times it comes.
_WORKER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, PARENT_DIED)


def _hard_stop_on_next_signal(manager: TaskManager) -> None:
    """While the worker drains, a second SIGINT or SIGTERM is the hard stop: the grace
    period ends, running tasks are released back to the queue at once. asyncio's own
    handlers, since the task that reads the receiver is busy draining (a task group for a
    reader would wrap the drain's errors in an ExceptionGroup)."""
    loop = asyncio.get_running_loop()

    def hurry(signum: signal.Signals) -> None:
        logger.warning("%s again: releasing running tasks now", signum.name)
        manager.queue.end_grace()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, hurry, signum)


def _log_to_stderr(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        formatter(settings.logging, "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    )
    handler.setLevel(settings.logging.level)
    root = logging.getLogger("vpsweb_tasks")
    root.addHandler(handler)
    root.setLevel(settings.logging.level)


# --- serve -------------------------------------------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from vpsweb_tasks_http.server import serve
    except ImportError as exc:  # the http extra is not installed
        print(f"vpsweb-tasks serve needs the http extra: pip install 'vpsweb-tasks[http]' ({exc})")
        return 2
    settings = _settings(args)
    loop: Literal["uvloop", "asyncio"] = "uvloop" if _use_uvloop(args.loop) else "asyncio"
    background = _ours(settings.background_tasks)
    if args.no_workers:
        background = background.model_copy(update={"enabled": False})
    settings = settings.model_copy(update={"background_tasks": background})
    _log_to_stderr(settings)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    serve(
        settings,
        host=args.host,
        port=args.port,
        imports=args.imports,
        loop=loop,
        extensions=_extensions(args),
    )
    return 0


# --- status ------------------------------------------------------------------------------


def _run_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    storage = settings.storage
    if storage.backend == "sqlite" and not storage.sqlite_path.exists():
        print(f"vpsweb-tasks status: no database at {storage.sqlite_path}", file=sys.stderr)
        return 1
    report = anyio.run(_read_status, settings, backend="asyncio")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format_status(report))
    return 0


async def _read_status(settings: Settings) -> dict[str, Any]:
    async with make_store(settings) as store:
        counts = await store.count_tasks()
        workers = await store.list_workers()
        paused, reason = await store.get_paused()
        described = repr(store)
    now = time.time()
    return {
        "backend": settings.storage.backend,
        "database": described,
        "paused": paused,
        "pause_reason": reason,
        "tasks": {status.value: counts[status] for status in TaskStatus},
        "waiting": counts[TaskStatus.PENDING] + counts[TaskStatus.RETRYING],
        "workers": [
            {
                "worker_id": w.worker_id,
                "hostname": w.hostname,
                "pid": w.pid,
                "concurrency": w.concurrency,
                "started_at": w.started_at,
                "heartbeat_at": w.heartbeat_at,
                "alive": w.expires_at >= now,
            }
            for w in sorted(workers, key=lambda w: w.started_at)
        ],
    }


def _format_status(report: dict[str, Any]) -> str:
    now = time.time()
    queue = "paused" if report["paused"] else "running"
    if report["paused"] and report["pause_reason"]:
        queue += f" ({report['pause_reason']})"
    tasks = "  ".join(f"{status} {n}" for status, n in report["tasks"].items())
    lines = [
        f"database  {report['database']}",
        f"queue     {queue}, {report['waiting']} waiting",
        f"tasks     {tasks}",
        f"workers   {len(report['workers'])}",
    ]
    if report["workers"]:
        rows = [("WORKER", "HOST", "PID", "JOBS", "HEARTBEAT", "STATE")]
        for w in report["workers"]:
            rows.append(
                (
                    w["worker_id"],
                    w["hostname"],
                    str(w["pid"]),
                    str(w["concurrency"]),
                    f"{max(0.0, now - w['heartbeat_at']):.1f}s ago",
                    "alive" if w["alive"] else "expired",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += [
            "  " + "  ".join(c.ljust(n) for c, n in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpsweb-tasks",
        description="Durable background tasks: server, workers, inspection.",
        epilog=EPILOG + LEGACY_EXITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], doc: str) -> Any:
        sub = commands.add_parser(name, help=doc, description=doc)
        sub.add_argument(
            "--config",
            metavar="PATH",
            help="YAML config file (default: $VPSWEB_TASKS_CONFIG, else built-in defaults)",
        )
        sub.set_defaults(run=run)
        return sub

    def extension_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--extension",
            dest="extensions",
            action="append",
            default=[],
            metavar="MODULE:NAME",
            help="an extension to install besides translation jobs (repeatable)",
        )

    def loop_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--loop",
            choices=LOOPS,
            default="auto",
            help="event loop: uvloop if installed (auto, the default), asyncio, or uvloop",
        )

    serve = command(
        "serve",
        _run_serve,
        "Run the HTTP API, the dashboard, the monitor and workers (SQLite by default).",
    )
    serve.add_argument("--host", help="address to bind (default: http.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: http.port, 8000)")
    serve.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="module whose @get_task_manager().task(...) handlers to register (repeatable)",
    )
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="API only: accept tasks and let `vpsweb-tasks worker` processes run them",
    )
    extension_option(serve)
    loop_option(serve)

    worker = command("worker", _run_worker, "Run workers only (to scale out), until SIGTERM.")
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="module whose @get_task_manager().task(...) handlers to register (repeatable)",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="tasks this process runs at once (overrides background_tasks.max_concurrent_jobs)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve this worker's Prometheus counters and histograms at"
        " http://<http.host>:PORT/ (needs the http extra)",
    )
    worker.add_argument(
        "--queues",
        metavar="A,B",
        help="the queues to take tasks from, comma-separated, each one of"
        " background_tasks.queues (overrides background_tasks.worker_queues)",
    )
    worker.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="worker processes to run, supervised: a child that dies is replaced, SIGTERM"
        " drains them all (overrides background_tasks.worker_processes; default 1: this"
        " process)",
    )
    # A pool's child is told its supervisor's pid, to stop when the supervisor dies.
    worker.add_argument("--supervisor", type=int, metavar="PID", help=argparse.SUPPRESS)
    extension_option(worker)
    loop_option(worker)

    status = command("status", _run_status, "Show queue counts, workers and pause state.")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"vpsweb-tasks {args.command}: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # a damaged database, one that cannot be opened or used
        print(f"vpsweb-tasks {args.command}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
