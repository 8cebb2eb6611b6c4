"""Health: alerts and the report of one health check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Alert", "HealthReport", "HealthStatus", "Level"]

Level = Literal["warning", "critical"]
HealthStatus = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    level: Level
    message: str
    value: float | None
    threshold: float | None
    since: float


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: HealthStatus
    at: float
    cpu_usage: float | None
    memory_usage: float | None
    disk_usage: float | None
    process_memory_mb: float | None
    active_tasks: int
    queued_tasks: int
    error_rate: float
    storage_ok: bool
    paused: bool
    pause_reason: str | None
    alerts: list[Alert] = field(default_factory=list)
