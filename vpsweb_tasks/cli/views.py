"""What the inspection commands print: JSON documents and rich tables.

The JSON of a task is the HTTP API's (``TaskResponse``, ``TaskDetailResponse``: the same
field names and formats), whichever way the command reached it, so a script reads one
shape; the direct mode builds it from the records here (the core never imports the HTTP
package).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..models import ExecutionRecord, QueueStatus, TaskRecord

__all__ = [
    "console",
    "execution_view",
    "print_json",
    "queue_view",
    "show_task",
    "task_table",
    "task_view",
]

View = dict[str, Any]


def task_view(record: TaskRecord, executions: Sequence[ExecutionRecord] | None = None) -> View:
    """A task as the HTTP API answers it (with ``executions``: as ``GET .../status/{id}``)."""
    error = None
    if record.error_message is not None or record.error_type is not None:
        error = {
            "type": record.error_type,
            "message": record.error_message,
            "category": None if record.error_category is None else record.error_category.value,
        }
    view: View = {
        "task_id": record.id,
        "name": record.name,
        "task_type": record.task_type,
        "priority": record.priority,
        "status": record.status,
        "progress": record.progress,
        "message": record.message,
        "attempts": record.attempts,
        "max_retries": record.max_retries,
        "timeout_seconds": record.timeout_seconds,
        "metadata": record.metadata,
        "result": record.result,
        "error": error,
        "cancel_requested": record.cancel_requested,
        "created_at": record.created_at,
        "run_at": record.run_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_seconds": record.duration_seconds,
        "lost_attempts": record.lost_attempts,
        "max_lost_attempts": record.max_lost_attempts,
        "scheduled": record.status.is_waiting
        and not record.waiting_on_dependencies
        and record.run_at > datetime.now(UTC),
        "idempotency_key": record.idempotency_key,
        "queue": record.queue,
        "depends_on": list(record.depends_on),
        "concurrency_key": record.concurrency_key,
        "rate_limit_keys": [key for _, key in record.rate_keys],
    }
    if executions is not None:
        view["executions"] = [execution_view(e) for e in executions]
    result: View = to_jsonable_python(view)
    return result


def execution_view(record: ExecutionRecord) -> View:
    view: View = to_jsonable_python(
        {
            "attempt": record.attempt,
            "worker_id": record.worker_id,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "outcome": record.outcome.value,
            "error_category": None
            if record.error_category is None
            else record.error_category.value,
            "error_type": record.error_type,
            "error_message": record.error_message,
        }
    )
    return view


def queue_view(status: QueueStatus) -> View:
    """The queue as ``GET .../queue/status`` answers it."""
    return {
        "paused": status.paused,
        "pause_reason": status.pause_reason,
        "pending": status.pending,
        "retrying": status.retrying,
        "running": status.running,
        "running_here": status.running_here,
        "queue_size": status.pending + status.retrying,
        "max_queue_size": status.max_queue_size,
        "max_concurrent_jobs": status.max_concurrent_jobs,
        "worker_id": status.worker_id,
        "workers_enabled": status.workers_enabled,
    }


# --- printing -------------------------------------------------------------------------------


def console() -> Console:
    """stdout. Not a terminal: no colours or control codes, and wide enough that a table
    never cuts a task id (a script or a pager reads it)."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=200, no_color=True)


def print_json(document: Any) -> None:
    """One JSON document on stdout and nothing else (``--json``)."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


STATUS_STYLES = {
    "pending": "cyan",
    "running": "blue",
    "retrying": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def when(value: str | None) -> str:
    """An ISO time of the API as ``2026-11-20 10:00:01`` (UTC)."""
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _note(view: Mapping[str, Any]) -> str:
    error = view.get("error")
    if view["status"] in ("failed", "retrying") and error:
        return f"{error.get('type') or 'error'}: {error.get('message') or ''}"
    return str(view.get("message") or "")


def task_table(views: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Table:
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("TYPE", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("TRIES", justify="right", no_wrap=True)
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("MESSAGE", overflow="ellipsis", no_wrap=True, max_width=60)
    for view in views:
        table.add_row(
            view["task_id"],
            view["task_type"],
            status_text(view["status"]),
            f"{view['progress'] * 100:.0f}%",
            str(view["attempts"]),
            when(view["created_at"]),
            _note(view),
        )
    return table


def show_task(out: Console, view: Mapping[str, Any]) -> None:
    """``tasks show``: the task's fields, its result or error, and every attempt."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", view["task_id"]),
        ("name", view["name"]),
        ("type", view["task_type"]),
        ("status", status_text(view["status"])),
        ("priority", view["priority"]),
        ("progress", f"{view['progress'] * 100:.0f}%" + _suffix(view.get("message"))),
        ("attempts", f"{view['attempts']} of {view['max_retries'] + 1}"),
        ("created", when(view["created_at"])),
        ("run at", when(view["run_at"])),
        ("started", when(view["started_at"])),
        ("finished", when(view["finished_at"])),
    ]
    if view.get("duration_seconds") is not None:
        rows.append(("duration", f"{view['duration_seconds']:.3f}s"))
    if view.get("cancel_requested") and view["status"] == "running":
        rows.append(("cancel", "requested: the worker running it is stopping it"))
    if view.get("idempotency_key"):
        rows.append(("idempotency key", view["idempotency_key"]))
    if view.get("metadata"):
        rows.append(("metadata", json.dumps(view["metadata"], ensure_ascii=False)))
    if view.get("result") is not None:
        rows.append(("result", json.dumps(view["result"], ensure_ascii=False)))
    error = view.get("error")
    if error:
        category = f" [{error['category']}]" if error.get("category") else ""
        rows.append(("error", f"{error.get('type') or 'error'}{category}: {error.get('message')}"))
    for name, value in rows:
        grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    out.print(grid)
    executions = view.get("executions") or []
    if executions:
        table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
        for column in ("ATTEMPT", "WORKER", "STARTED (UTC)", "FINISHED (UTC)", "OUTCOME", "ERROR"):
            table.add_column(column, no_wrap=column != "ERROR")
        for run in executions:
            error_text = ""
            if run.get("error_type") or run.get("error_message"):
                error_text = f"{run.get('error_type') or 'error'}: {run.get('error_message') or ''}"
            table.add_row(
                str(run["attempt"]),
                run["worker_id"],
                when(run["started_at"]),
                when(run["finished_at"]),
                status_text(run["outcome"]),
                Text(error_text),
            )
        out.print()
        out.print(table)


def _suffix(message: object) -> str:
    return f" ({message})" if message else ""
