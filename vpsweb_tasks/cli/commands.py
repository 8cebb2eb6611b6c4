"""The inspection commands: ``tasks``, ``dead-letters``, ``submit``, ``queue``, ``watch``.

Each works on the database of ``--config`` directly, or on a server with ``--url`` (and
``--api-key`` or ``$VPSWEB_TASKS_API_KEY``); ``--json`` prints one JSON document, the
HTTP API's shapes, and nothing else. Failures are one line on stderr and an exit status
of :class:`~.exits.Exit`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.prompt import Confirm

from ..config import load_config
from ..errors import ErrorCategory, VpswebTasksError
from ..models import TaskPriority, TaskStatus
from .backends import Backend, Direct, Http, parse_statuses
from .exits import EPILOG, CliError, Exit, exit_of
from .views import View, console, print_json, show_task, task_table

__all__ = ["add_commands"]

Action = Callable[[Backend, argparse.Namespace, Console], Awaitable[int]]

API_KEY_ENV = "VPSWEB_TASKS_API_KEY"
URL_ENV = "VPSWEB_TASKS_URL"


# --- running one command ---------------------------------------------------------------------


def _backend(args: argparse.Namespace) -> Direct | Http:
    url = args.url or os.environ.get(URL_ENV) or None
    if url is None:
        return Direct(load_config(args.config), connect_timeout=args.request_timeout)
    if args.config is not None:
        raise CliError(Exit.USAGE, "--url and --config: give one (a server, or a database)")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return Http(url, api_key=api_key, timeout=args.request_timeout)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Log records (the library's, psycopg's pool retrying a connection) stay out of the
    terminal: the command says what went wrong in its one line."""
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    action: Action = args.action
    out = console()

    async def run() -> int:
        async with _backend(args) as backend:
            return await action(backend, args, out)

    try:
        with _quiet_logging():
            return anyio.run(run, backend="asyncio")
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except (CliError, VpswebTasksError, ValueError) as exc:
        error = exit_of(exc)
        print(f"{args.command_line}: {error.message}", file=sys.stderr)
        return error.code


# --- arguments --------------------------------------------------------------------------------


def _json_object(option: str, text: str) -> dict[str, Any]:
    """``--payload`` and ``--metadata``: a JSON object, or ``@FILE`` holding one
    (``@-``: standard input)."""
    if text.startswith("@"):
        name = text[1:]
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(Exit.USAGE, f"{option}: cannot read {name}: {exc}") from None

    def finite_only(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=finite_only)
    except (ValueError, RecursionError) as exc:
        raise CliError(Exit.USAGE, f"{option}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(Exit.USAGE, f"{option}: must be a JSON object, not {type(value).__name__}")
    return value


def _ids(values: list[str]) -> list[str]:
    ids = [value.strip() for value in values]
    if any(not value for value in ids):
        raise CliError(Exit.USAGE, "TASK_ID: must not be empty")
    return ids


def _limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be 1 to 1000")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
    return value


# --- tasks ------------------------------------------------------------------------------------


def _answer(
    args: argparse.Namespace, out: Console, document: Any, text: str | Callable[[], None]
) -> int:
    """The command's answer: ``document`` as JSON with ``--json``, else ``text`` (a line, or
    a function that prints the human form)."""
    if args.json:
        print_json(document)
    elif callable(text):
        text()
    else:
        out.print(text)
    return Exit.OK


async def _tasks_list(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    views = await backend.list_tasks(parse_statuses(args.status), args.type, args.limit)
    if args.json:
        print_json(views)
    elif views:
        out.print(task_table(views))
    else:
        out.print("no tasks")
    return Exit.OK


async def _tasks_show(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    (task_id,) = _ids([args.task_id])
    view = await backend.show(task_id)
    return _answer(args, out, view, lambda: show_task(out, view))


async def _tasks_cancel(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    (task_id,) = _ids([args.task_id])
    view = await backend.cancel(task_id)
    if args.json:
        print_json(view)
    elif view["status"] == TaskStatus.CANCELLED:
        out.print(f"cancelled {task_id}")
    else:
        out.print(
            f"cancel requested: {task_id} is {view['status']}; the worker running it stops it"
            f" (follow it with: vpsweb-tasks watch {task_id})"
        )
    return Exit.OK


async def _tasks_retry(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    (task_id,) = _ids([args.task_id])
    view = await backend.requeue(task_id)
    return _answer(args, out, view, f"requeued {task_id} ({view['status']})")


# --- dead letters -----------------------------------------------------------------------------


async def _dead_letters_list(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    views = await backend.dead_letters(args.category, args.type, args.limit)
    if args.json:
        print_json(views)
    elif views:
        out.print(task_table(views))
    else:
        out.print("no dead letters")
    return Exit.OK


async def _dead_letters_requeue(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    ids = _ids(args.task_ids)
    filtered = args.category is not None or args.type is not None
    if ids and (filtered or args.all):
        raise CliError(Exit.USAGE, "TASK_ID: give task ids, or --category/--type/--all, not both")
    if not ids and not filtered and not args.all:
        raise CliError(
            Exit.USAGE, "name the tasks: TASK_ID ..., --category, --type, or --all for every one"
        )
    document: dict[str, Any]
    if ids:
        views = [await backend.requeue(task_id) for task_id in ids]
        document = {"requeued": len(views), "tasks": views}
    else:
        document = {"requeued": await backend.requeue_all(args.category, args.type)}
    requeued = document["requeued"]
    return _answer(args, out, document, f"requeued {requeued} task{_s(requeued)}")


# --- submit -----------------------------------------------------------------------------------


async def _submit(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    body: dict[str, Any] = {
        "task_name": args.name or args.task_type,
        "task_type": args.task_type,
        "payload": _json_object("--payload", args.payload),
    }
    optional = {
        "priority": args.priority,
        "max_retries": args.max_retries,
        "timeout_seconds": args.timeout,
        "delay_seconds": args.delay,
        "run_at": args.run_at,
        "queue": args.queue,
        "depends_on": args.depends_on,
        "concurrency_key": args.concurrency_key,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if args.metadata is not None:
        body["metadata"] = _json_object("--metadata", args.metadata)
    submitted = await backend.submit(body, args.idempotency_key)
    if args.watch:
        return await _follow(backend, submitted["task_id"], args, out)
    if args.json:
        print_json(submitted)
    else:
        if submitted["replayed"]:
            print("(a repeat of an earlier submit's idempotency key: its task)", file=sys.stderr)
        out.print(submitted["task_id"])
    return Exit.OK


# --- queue ------------------------------------------------------------------------------------


def _queue_line(view: View) -> str:
    state = "paused" if view["paused"] else "running"
    if view["paused"] and view.get("pause_reason"):
        state += f" ({view['pause_reason']})"
    return f"queue {state}: {view['queue_size']} waiting, {view['running']} running"


async def _queue_pause(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    view = await backend.pause(args.reason)
    return _answer(args, out, view, _queue_line(view))


async def _queue_resume(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    view = await backend.resume()
    return _answer(args, out, view, _queue_line(view))


async def _queue_clear(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    if not args.yes and sys.stdin.isatty() and not args.json:
        question = "Cancel every pending and retrying task?"
        if not await anyio.to_thread.run_sync(Confirm.ask, question):
            return Exit.OK
    cancelled = await backend.clear()
    document = {"cancelled": cancelled}
    return _answer(args, out, document, f"cancelled {cancelled} waiting task{_s(cancelled)}")


# --- watch ------------------------------------------------------------------------------------

OUTCOMES = {
    "completed": Exit.OK,
    "failed": Exit.TASK_FAILED,
    "cancelled": Exit.TASK_CANCELLED,
}


async def _watch(backend: Backend, args: argparse.Namespace, out: Console) -> int:
    (task_id,) = _ids([args.task_id])
    return await _follow(backend, task_id, args, out)


def _describe(view: View) -> str:
    message = view.get("message")
    return f"{view['status']}: {message}" if message else str(view["status"])


async def _follow(backend: Backend, task_id: str, args: argparse.Namespace, out: Console) -> int:
    """Follow the task until it ends; the exit status says how it ended."""
    if args.json:
        final = await backend.watch(task_id, args.interval, lambda view: None)
        print_json(final)
    elif out.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=out, transient=False) as progress:
            bar = progress.add_task(task_id, total=100)

            def report(view: View) -> None:
                progress.update(bar, completed=view["progress"] * 100, description=_describe(view))

            final = await backend.watch(task_id, args.interval, report)
            report(final)
        _print_outcome(out, final)
    else:  # a pipe or a file: a line per change
        seen: list[tuple[Any, ...]] = []

        def line(view: View) -> None:
            key = (view["status"], round(view["progress"], 3), view.get("message"))
            if not seen or seen[-1] != key:
                seen.append(key)
                out.print(f"{view['progress'] * 100:5.1f}% {_describe(view)}")

        final = await backend.watch(task_id, args.interval, line)
        line(final)
        _print_outcome(out, final)
    return OUTCOMES[final["status"]]


def _print_outcome(out: Console, view: View) -> None:
    status = view["status"]
    if status == "completed":
        took = view.get("duration_seconds")
        out.print(f"completed {view['task_id']}" + (f" in {took:.2f}s" if took else ""))
        if view.get("result") is not None:
            out.print(json.dumps(view["result"], ensure_ascii=False))
    elif status == "failed":
        error = view.get("error") or {}
        out.print(
            f"failed {view['task_id']}: {error.get('type') or 'error'}:"
            f" {error.get('message') or ''}"
        )
    else:
        out.print(f"{status} {view['task_id']}")


def _s(count: int) -> str:
    return "" if count == 1 else "s"


# --- the parser -------------------------------------------------------------------------------


def _client_options() -> argparse.ArgumentParser:
    """The options every inspection command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_argument_group("where (the database of --config, or a server)")
    where.add_argument(
        "--config",
        metavar="PATH",
        help="YAML config naming the database (default: $VPSWEB_TASKS_CONFIG, else defaults)",
    )
    where.add_argument(
        "--url",
        metavar="URL",
        help=f"a vpsweb-tasks server instead, e.g. http://127.0.0.1:8000 (default: ${URL_ENV})",
    )
    where.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the server's API key (default: ${API_KEY_ENV})",
    )
    where.add_argument(
        "--request-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the server or the database to answer (default 10)",
    )
    parent.add_argument("--json", action="store_true", help="print one JSON document")
    return parent


def add_commands(commands: Any) -> None:
    """Adds the inspection commands to the ``vpsweb-tasks`` parser's subcommands."""
    parent = _client_options()
    formatter = argparse.RawDescriptionHelpFormatter

    def add(group: Any, name: str, action: Action, doc: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=doc,
            description=doc,
            parents=[parent],
            epilog=EPILOG,
            formatter_class=formatter,
        )
        sub.set_defaults(run=_run, action=action, command_line=sub.prog)
        return sub

    def group(name: str, doc: str) -> Any:
        sub = commands.add_parser(
            name, help=doc, description=doc, epilog=EPILOG, formatter_class=formatter
        )
        return sub.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    tasks = group("tasks", "List, show, cancel and retry tasks.")
    listing = add(
        tasks,
        "list",
        _tasks_list,
        "List tasks: waiting and running ones newest first, then finished ones most"
        " recently finished first.",
    )
    listing.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help="only these statuses (repeat or comma-separate): "
        + ", ".join(s.value for s in TaskStatus),
    )
    listing.add_argument("--type", metavar="TYPE", help="only tasks of this type")
    listing.add_argument("--limit", type=_limit, default=50, help="at most this many (1-1000)")
    show = add(tasks, "show", _tasks_show, "A task, its result or error, every attempt.")
    show.add_argument("task_id", metavar="TASK_ID")
    cancel = add(
        tasks,
        "cancel",
        _tasks_cancel,
        "Cancel a waiting task, or ask the worker running it to stop it.",
    )
    cancel.add_argument("task_id", metavar="TASK_ID")
    retry = add(
        tasks,
        "retry",
        _tasks_retry,
        "Requeue a failed task (from the dead letter queue), its attempts reset.",
    )
    retry.add_argument("task_id", metavar="TASK_ID")

    letters = group("dead-letters", "The dead letter queue: tasks that failed for good.")
    letters_list = add(
        letters,
        "list",
        _dead_letters_list,
        "Failed tasks, most recently failed first.",
    )
    categories = [c.value for c in ErrorCategory]
    letters_list.add_argument("--category", choices=categories, help="only this error category")
    letters_list.add_argument("--type", metavar="TYPE", help="only tasks of this type")
    letters_list.add_argument("--limit", type=_limit, default=50, help="at most this many (1-1000)")
    requeue = add(
        letters,
        "requeue",
        _dead_letters_requeue,
        "Requeue failed tasks: these ids, or every one of a category or type (--all: every one).",
    )
    requeue.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    requeue.add_argument("--category", choices=categories, help="those of this error category")
    requeue.add_argument("--type", metavar="TYPE", help="those of this task type")
    requeue.add_argument("--all", action="store_true", help="every failed task")

    submit = add(
        commands,
        "submit",
        _submit,
        "Submit a task of a type the workers run; prints its id.",
    )
    submit.add_argument("task_type", metavar="TYPE")
    submit.add_argument(
        "--payload",
        default="{}",
        metavar="JSON",
        help="the handler's input, a JSON object, or @FILE (@-: stdin); default {}",
    )
    submit.add_argument("--name", help="the task's name (default: TYPE)")
    submit.add_argument("--priority", choices=[p.value for p in TaskPriority])
    submit.add_argument("--max-retries", type=int, metavar="N")
    submit.add_argument("--timeout", type=float, metavar="SECONDS", help="the task's timeout")
    submit.add_argument("--delay", type=float, metavar="SECONDS", help="run no earlier than this")
    submit.add_argument(
        "--run-at", metavar="TIME", help="run no earlier than this (2026-12-24T18:00:00+01:00)"
    )
    submit.add_argument("--metadata", metavar="JSON", help="a JSON object kept with the task")
    submit.add_argument("--queue", metavar="NAME", help="the named queue it waits in")
    submit.add_argument(
        "--depends-on",
        action="append",
        metavar="TASK_ID",
        help="start once this task completed (repeat for more)",
    )
    submit.add_argument(
        "--concurrency-key", metavar="KEY", help="bounds and shares running tasks per key"
    )
    submit.add_argument(
        "--idempotency-key", metavar="KEY", help="a repeat with this key gets the first task"
    )
    submit.add_argument(
        "--watch", action="store_true", help="then follow it as `watch` does (its exit status)"
    )
    submit.add_argument("--interval", type=_seconds, default=0.25, help=argparse.SUPPRESS)

    queue = group("queue", "Pause, resume or clear the queue (every worker).")
    pause = add(queue, "pause", _queue_pause, "Stop dispatching; running tasks go on.")
    pause.add_argument("--reason", help="shown in the queue's status")
    add(queue, "resume", _queue_resume, "Dispatch again.")
    clear = add(queue, "clear", _queue_clear, "Cancel every pending and retrying task.")
    clear.add_argument("--yes", action="store_true", help="do not ask (asked only on a terminal)")

    watch = add(
        commands,
        "watch",
        _watch,
        "Follow a task until it ends, with a progress bar; the exit status is its outcome"
        " (0 completed, 1 failed, 7 cancelled).",
    )
    watch.add_argument("task_id", metavar="TASK_ID")
    watch.add_argument(
        "--interval",
        type=_seconds,
        default=0.25,
        metavar="SECONDS",
        help="how often to read the task's state (default 0.25; over HTTP the task's event"
        " stream brings changes at once as well)",
    )
