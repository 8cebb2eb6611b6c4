"""Rows to records, and values to columns, for every backend.

Both backends keep JSON in text columns and times as epoch seconds, and hand rows over as
dicts, so one set of conversions serves both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..config import DEFAULT_QUEUE
from ..errors import ErrorCategory
from ..models import (
    ExecutionOutcome,
    ExecutionRecord,
    ResourceSample,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    from_timestamp,
    task_record,
    to_datetime,
)
from ..retry import RetryConfig
from ..schedules import ScheduleDefinition, ScheduleRecord
from ..validation import readable
from .types import NewTask, ProgressRow, ProgressSnapshot, SharedBreakerState, WorkerInfo

__all__ = [
    "as_float",
    "breaker_from_row",
    "dumps",
    "execution_from_row",
    "loads",
    "loads_result",
    "new_task_params",
    "new_task_row",
    "progress_from_row",
    "progress_row",
    "sample_from_row",
    "schedule_from_row",
    "schedule_params",
    "stored_queue",
    "task_from_row",
    "worker_from_row",
]

Row = Mapping[str, Any]


def dumps(value: Any) -> str:
    if value is None:
        return "null"
    if value == {}:  # most payloads and metadata: skip the encoder
        return "{}"
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    if text == "{}":
        return {}
    value = json.loads(text)
    # JSON stored before validation existed may hold a lone surrogate's escape: what it
    # parses to no answer can encode. A surrogate escape in the text is rare and cheap
    # to look for (surrogate pairs of emoji and the like have them too, and pass).
    return readable(value) if "\\ud" in text else value


def loads_result(text: str) -> Any:
    return None if text == "null" else loads(text)  # most results: None


def as_float(value: Any) -> float | None:
    # SQLite hands a whole-number REAL back as int through RETURNING.
    return None if value is None else float(value)


def stored_queue(queue: str) -> str | None:
    """A queue's name as the parameters carry it: None for the default queue (SQLite
    stores it as NULL, PostgreSQL by name)."""
    return None if queue == DEFAULT_QUEUE else queue


def new_task_params(task: NewTask) -> dict[str, Any]:
    """A new task's columns, as the parameters of ``insert_task``."""
    return {
        "id": task.id,
        "name": task.name,
        "task_type": task.task_type,
        "priority": task.priority,
        "payload": dumps(task.payload),
        "metadata": dumps(task.metadata),
        "max_retries": task.max_retries,
        "timeout_seconds": task.timeout_seconds,
        "retry_config": None if task.retry is None else dumps(task.retry),
        "owner": task.owner,
        "run_at": task.stored_run_at,
        "created_at": task.created_at,
        "max_lost_attempts": task.max_lost_attempts,
        "idempotency_key": task.idempotency_key,
        "request_fingerprint": task.request_fingerprint,
        "trace_context": None if task.trace_context is None else dumps(task.trace_context),
        "queue": stored_queue(task.queue),
        "dispatch_at": task.stored_dispatch_at,
        "depends_on": dumps(list(task.depends_on)) if task.depends_on else None,
        "on_dependency_failure": task.on_dependency_failure,
        "rate_keys": rate_keys_json(task.rate_keys),
        "concurrency_key": task.concurrency_key,
    }


def new_task_row(task: NewTask) -> list[Any]:
    """A new task's columns, as one row of ``insert_tasks``' JSON array."""
    return [
        task.id,
        task.name,
        task.task_type,
        task.priority,
        dumps(task.payload),
        dumps(task.metadata),
        task.max_retries,
        task.timeout_seconds,
        None if task.retry is None else dumps(task.retry),
        task.owner,
        task.stored_run_at,
        task.created_at,
        task.max_lost_attempts,
        task.idempotency_key,
        task.request_fingerprint,
        None if task.trace_context is None else dumps(task.trace_context),
        stored_queue(task.queue),
        task.stored_dispatch_at,
        dumps(list(task.depends_on)) if task.depends_on else None,
        task.on_dependency_failure,
        rate_keys_json(task.rate_keys),
        task.concurrency_key,
    ]


def rate_keys_json(pairs: tuple[tuple[str, str], ...]) -> str | None:
    """A task's rate-limit keys as stored: a JSON array of [name, key] pairs, or NULL."""
    return dumps([list(pair) for pair in pairs]) if pairs else None


def rate_keys_of(stored: str | None) -> tuple[tuple[str, str], ...]:
    return () if stored is None else tuple((name, key) for name, key in json.loads(stored))


def task_from_row(row: Row) -> TaskRecord:
    category = row["error_category"]
    result = row["result"]
    return task_record(
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
        lost_attempts=row["lost_attempts"],
        max_lost_attempts=row["max_lost_attempts"],
        idempotency_key=row["idempotency_key"],
        queue=row["queue"] or DEFAULT_QUEUE,
        depends_on=() if row["depends_on"] is None else tuple(json.loads(row["depends_on"])),
        on_dependency_failure=row["on_dependency_failure"],
        rate_keys=rate_keys_of(row["rate_keys"]),
        concurrency_key=row["concurrency_key"],
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
        trace_context=None if (trace := row.get("trace_context")) is None else loads(trace),
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


def progress_row(
    task_id: str, progress: float, message: str | None, metadata: dict[str, Any] | None, at: float
) -> ProgressRow:
    """A progress report as stored (see :data:`ProgressRow`)."""
    return (task_id, progress, message, None if metadata is None else dumps(metadata), at)


def progress_from_row(row: Row) -> ProgressSnapshot:
    metadata = row["metadata"]
    return ProgressSnapshot(
        task_id=row["task_id"],
        progress=float(row["progress"]),
        message=row["message"],
        metadata=None if metadata is None else loads(metadata),
        at=float(row["recorded_at"]),
    )


def breaker_from_row(row: Row) -> SharedBreakerState:
    return SharedBreakerState(
        name=row["name"],
        state=row["state"],
        opened_at=as_float(row["opened_at"]),
        retry_at=as_float(row["retry_at"]),
        updated_at=float(row["updated_at"]),
        worker_id=row["worker_id"],
    )


def sample_from_row(row: Row) -> ResourceSample:
    return ResourceSample(
        recorded_at=float(row["recorded_at"]),
        cpu_percent=float(row["cpu_percent"]),
        memory_percent=float(row["memory_percent"]),
        disk_percent=float(row["disk_percent"]),
        process_rss_mb=float(row["process_rss_mb"]),
        process_cpu_percent=float(row["process_cpu_percent"] or 0.0),
        active_tasks=row["active_tasks"] or 0,
        queued_tasks=row["queued_tasks"] or 0,
    )


def schedule_params(
    name: str,
    definition: ScheduleDefinition,
    *,
    origin: str,
    anchor_at: float,
    next_run_at: float,
    now: float,
) -> dict[str, Any]:
    """A schedule's columns, as the parameters of ``define_schedule`` / ``add_schedule``."""
    return {
        "name": name,
        "task_type": definition.task_type,
        "cron": definition.cron,
        "every": definition.every,
        "timezone": definition.timezone,
        "payload": dumps(definition.payload),
        "priority": TaskPriority(definition.priority).rank,
        "enabled": definition.enabled,
        "missed": definition.missed,
        "anchor_at": anchor_at,
        "next_run_at": next_run_at,
        "origin": origin,
        "fingerprint": None if origin == "api" else definition.fingerprint(),
        "now": now,
    }


def schedule_from_row(row: Row) -> ScheduleRecord:
    # Stored definitions were validated when they were written.
    definition = ScheduleDefinition.model_construct(
        task_type=row["task_type"],
        cron=row["cron"],
        every=as_float(row["every"]),
        timezone=row["timezone"],
        payload=loads(row["payload"]),
        priority=TaskPriority.from_rank(row["priority"]).value,
        enabled=bool(row["enabled"]),
        missed=row["missed"],
    )
    return ScheduleRecord(
        name=row["name"],
        definition=definition,
        next_run_at=float(row["next_run_at"]),
        anchor_at=float(row["anchor_at"]),
        origin=row["origin"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_tick_at=as_float(row["last_tick_at"]),
        last_task_id=row["last_task_id"],
    )
