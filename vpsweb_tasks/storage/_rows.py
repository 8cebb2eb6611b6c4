"""Rows to records and outcomes to column changes: the parts both SQL backends share.

SQLite's ``sqlite3.Row`` and psycopg's dict rows both read by column name, and both
backends keep JSON in text columns and times as epoch seconds, so one set of
conversions serves both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ..errors import ErrorCategory
from ..models import (
    ExecutionOutcome,
    ExecutionRecord,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    from_timestamp,
    to_datetime,
)
from ..retry import RetryConfig
from .base import (
    Cancelled,
    Completed,
    Deferred,
    Failed,
    Outcome,
    Released,
    TranslationJobRow,
    WorkerInfo,
)

__all__ = [
    "OUTCOME_NAMES",
    "Expr",
    "as_float",
    "changes_for",
    "dumps",
    "execution_from_row",
    "finished_record",
    "loads",
    "migrations",
    "task_from_row",
    "translation_job_from_row",
    "worker_from_row",
]

Row = Mapping[str, Any]

OUTCOME_NAMES: dict[type, ExecutionOutcome] = {
    Completed: ExecutionOutcome.COMPLETED,
    Failed: ExecutionOutcome.FAILED,
    Cancelled: ExecutionOutcome.CANCELLED,
    Released: ExecutionOutcome.INTERRUPTED,
    Deferred: ExecutionOutcome.DEFERRED,
}


def dumps(value: Any) -> str:
    if value is None:
        return "null"
    if value == {}:  # most payloads and metadata: skip the encoder
        return "{}"
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    return {} if text == "{}" else json.loads(text)


def loads_result(text: str) -> Any:
    return None if text == "null" else json.loads(text)  # most results: None


def as_float(value: Any) -> float | None:
    # SQLite hands a whole-number REAL back as int through RETURNING.
    return None if value is None else float(value)


def task_from_row(row: Row) -> TaskRecord:
    category = row["error_category"]
    result = row["result"]
    return TaskRecord(
        id=row["id"],
        name=row["name"],
        task_type=row["task_type"],
        priority=TaskPriority.from_rank(row["priority"]),
        status=TaskStatus(row["status"]),
        payload=loads(row["payload"]),
        metadata=loads(row["metadata"]),
        max_retries=row["max_retries"],
        timeout_seconds=as_float(row["timeout_seconds"]),
        retry=None
        if row["retry_config"] is None
        else RetryConfig.model_validate_json(row["retry_config"]),
        attempts=row["attempts"],
        progress=float(row["progress"]),
        message=row["message"],
        result=None if result is None else loads_result(result),
        error_message=row["error_message"],
        error_type=row["error_type"],
        error_category=None if category is None else ErrorCategory(category),
        owner=row["owner"],
        lease_owner=row["lease_owner"],
        lease_expires_at=from_timestamp(row["lease_expires_at"]),
        cancel_requested=bool(row["cancel_requested"]),
        run_at=to_datetime(row["run_at"]),
        created_at=to_datetime(row["created_at"]),
        updated_at=to_datetime(row["updated_at"]),
        started_at=from_timestamp(row["started_at"]),
        finished_at=from_timestamp(row["finished_at"]),
    )


def execution_from_row(row: Row) -> ExecutionRecord:
    category = row["error_category"]
    return ExecutionRecord(
        id=row["id"],
        task_id=row["task_id"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        started_at=to_datetime(row["started_at"]),
        finished_at=from_timestamp(row["finished_at"]),
        outcome=ExecutionOutcome(row["outcome"]),
        error_category=None if category is None else ErrorCategory(category),
        error_type=row["error_type"],
        error_message=row["error_message"],
    )


def worker_from_row(row: Row) -> WorkerInfo:
    return WorkerInfo(
        worker_id=row["worker_id"],
        hostname=row["hostname"],
        pid=row["pid"],
        process_started_at=as_float(row["process_started_at"]),
        concurrency=row["concurrency"],
        started_at=float(row["started_at"]),
        heartbeat_at=float(row["heartbeat_at"]),
        expires_at=float(row["expires_at"]),
    )


def migrations(backend: str) -> list[tuple[int, str, str]]:
    """``(version, file name, SQL)`` of a backend's migration scripts, in order."""
    folder = resources.files("vpsweb_tasks.storage.migrations") / backend
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Expr(str):
    """A SQL expression used as a column's new value (never user input)."""

    __slots__ = ()


def changes_for(outcome: Outcome, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Column changes of the task row, and of the execution row, for an outcome."""
    execution: dict[str, Any] = {
        "outcome": OUTCOME_NAMES[type(outcome)].value,
        "error_category": None,
        "error_type": None,
        "error_message": None,
        "traceback": None,
    }
    match outcome:
        case Completed(result=result, result_json=encoded):
            changes: dict[str, Any] = {
                "status": "completed",
                "result": dumps(result) if encoded is None else encoded,
                "progress": 1.0,
                "finished_at": now,
                "error_message": None,
                "error_type": None,
                "error_category": None,
            }
        case Failed() as failed:
            error = {
                "error_message": failed.error_message,
                "error_type": failed.error_type,
                "error_category": ErrorCategory(failed.category).value,
            }
            execution |= error | {"traceback": failed.traceback}
            if failed.retry_at is None:
                changes = {"status": "failed", "finished_at": now, **error}
            else:
                changes = {"status": "retrying", "run_at": failed.retry_at, **error}
        case Cancelled(reason=reason):
            changes = {"status": "cancelled", "finished_at": now, "message": reason}
        case Released():
            changes = {"status": "pending", "attempts": Expr("attempts - 1")}
        case Deferred(retry_at=retry_at, reason=reason):
            changes = {
                "status": "retrying",
                "run_at": retry_at,
                "attempts": Expr("attempts - 1"),
                "message": reason,
            }
            execution["error_message"] = reason
    return changes, execution


def finished_record(
    claimed: TaskRecord,
    changes: Mapping[str, Any],
    *,
    progress: float,
    message: str | None,
    now: float,
) -> TaskRecord:
    """The record a finish leaves behind, built from the record its claim returned and the
    finish's own ``changes`` (of :func:`changes_for`) instead of read back and decoded.

    While a task runs, only its lease, progress, message and cancel flag change under it;
    the finish clears the lease and the flag, so ``progress`` and ``message`` (as the
    finish left them) are all it needs from the row."""
    stamp = to_datetime(now)
    result = changes.get("result")
    run_at = changes.get("run_at")
    error_category = changes.get("error_category", claimed.error_category)
    # Spelled out rather than dataclasses.replace(), which costs twice as much.
    return TaskRecord(
        id=claimed.id,
        name=claimed.name,
        task_type=claimed.task_type,
        priority=claimed.priority,
        status=TaskStatus(changes["status"]),
        payload=claimed.payload,
        metadata=claimed.metadata,
        max_retries=claimed.max_retries,
        timeout_seconds=claimed.timeout_seconds,
        retry=claimed.retry,
        attempts=claimed.attempts - 1 if "attempts" in changes else claimed.attempts,
        progress=float(progress),
        message=message,
        result=claimed.result if result is None else loads_result(result),
        error_message=changes.get("error_message", claimed.error_message),
        error_type=changes.get("error_type", claimed.error_type),
        error_category=None if error_category is None else ErrorCategory(error_category),
        owner=claimed.owner,
        lease_owner=None,
        lease_expires_at=None,
        cancel_requested=False,
        run_at=claimed.run_at if run_at is None else to_datetime(run_at),
        created_at=claimed.created_at,
        updated_at=stamp,
        started_at=claimed.started_at,
        finished_at=stamp if "finished_at" in changes else claimed.finished_at,
    )


def translation_job_from_row(row: Row, task: TaskRecord) -> TranslationJobRow:
    result = row["result"]
    return TranslationJobRow(
        id=row["id"],
        task=task,
        source_language=row["source_language"],
        target_language=row["target_language"],
        workflow_mode=row["workflow_mode"],
        original_text=row["original_text"],
        metadata=loads(row["metadata"]),
        steps=loads(row["steps"]),
        result=None if result is None else loads_result(result),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )
