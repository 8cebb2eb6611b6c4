"""Task statistics over a recent window, derived from storage's aggregates (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models import TaskStatus
from ..storage.types import MetricsWindow

__all__ = ["TaskStatistics", "statistics_from"]


@dataclass(frozen=True, slots=True)
class TaskStatistics:
    """Task statistics over the last ``window_seconds``, computed from storage."""

    at: float
    window_seconds: float
    counts: dict[str, int]
    """Tasks per status, right now."""
    counts_by_type: dict[str, dict[str, int]]
    attempts: int
    """Attempts finished in the window (any outcome)."""
    completed: int
    failed_attempts: int
    dead_lettered: int
    completion_rate: float
    """Completed tasks per minute."""
    processing_rate: float
    """Finished attempts per minute."""
    average_duration: float | None
    duration_p50: float | None
    duration_p95: float | None
    duration_p99: float | None
    average_queue_wait: float | None
    error_rate: float
    """Failed attempts / finished attempts."""
    errors_by_category: dict[str, int]
    error_rate_by_category: dict[str, float]
    retry_success_rate: float | None
    """Of the attempts after the first that finished, the share that completed."""
    task_metrics: bool = True
    """False when ``task_monitoring.enable_task_metrics`` is off: no attempt is recorded,
    so the window's figures (attempts, rates, durations, errors) are zero or None and
    only ``counts`` (tasks per status now) are real."""


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]


def statistics_from(
    window: MetricsWindow,
    *,
    now: float,
    window_seconds: float,
    counts: dict[TaskStatus, int],
    counts_by_type: dict[str, dict[TaskStatus, int]],
    task_metrics: bool = True,
) -> TaskStatistics:
    """Derive the statistics from storage aggregates (pure; tested on its own)."""
    attempts = completed = failed = retries = retries_completed = 0
    duration_total = wait_total = 0.0
    errors: dict[str, int] = {}
    for group in window.groups:
        if group.outcome in ("deferred", "interrupted"):
            continue  # not attempts that ran to an end
        attempts += group.count
        wait_total += group.wait_total
        if group.retry and group.outcome in ("completed", "failed", "lost"):
            retries += group.count
            if group.outcome == "completed":
                retries_completed += group.count
        if group.outcome == "completed":
            completed += group.count
            duration_total += group.duration_total
        elif group.outcome in ("failed", "lost"):
            failed += group.count
            category = group.category or "unknown"
            errors[category] = errors.get(category, 0) + group.count
    minutes = window_seconds / 60
    ordered = sorted(window.durations)
    return TaskStatistics(
        at=now,
        window_seconds=window_seconds,
        counts={status.value: n for status, n in counts.items()},
        counts_by_type={
            task_type: {status.value: n for status, n in by_status.items()}
            for task_type, by_status in sorted(counts_by_type.items())
        },
        attempts=attempts,
        completed=completed,
        failed_attempts=failed,
        dead_lettered=window.dead_lettered,
        completion_rate=completed / minutes,
        processing_rate=attempts / minutes,
        average_duration=duration_total / completed if completed else None,
        duration_p50=_percentile(ordered, 0.50),
        duration_p95=_percentile(ordered, 0.95),
        duration_p99=_percentile(ordered, 0.99),
        average_queue_wait=wait_total / attempts if attempts else None,
        error_rate=failed / attempts if attempts else 0.0,
        errors_by_category=dict(sorted(errors.items())),
        error_rate_by_category={k: v / attempts for k, v in sorted(errors.items())},
        retry_success_rate=retries_completed / retries if retries else None,
        task_metrics=task_metrics,
    )
