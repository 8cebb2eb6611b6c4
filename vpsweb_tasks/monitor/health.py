"""Health: the rules that raise alerts, as data, and the report of one health check.

A health check observes the latest resource sample, the task statistics, whether storage
answers, the circuit breakers and the overload pause (:class:`Observation`), and
:func:`evaluate` names every alert that fires now:

- ``storage`` (critical) while the task database cannot be reached;
- ``storage_writes`` (critical) while it answers reads but takes no writes (a full disk, a
  read-only file or session, a held lock): submits are refused, so health is
  ``unhealthy``, though reads still work;
- one alert per :class:`ThresholdRule` of :data:`THRESHOLD_RULES`: a value read from the
  observation against a warning and a critical level read from config, the critical
  level tried first;
- ``breaker:<name>`` (warning) while a circuit breaker is not closed;
- ``overload`` (warning) while dispatch is paused because this process is overloaded.

No threshold is written in code: every level comes from :class:`~vpsweb_tasks.config.Settings`,
so changing a key changes the alert.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..models import ResourceSample
from .statistics import TaskStatistics

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "THRESHOLD_RULES",
    "Alert",
    "Firing",
    "HealthReport",
    "HealthStatus",
    "Level",
    "Observation",
    "StorageWriteError",
    "ThresholdRule",
    "evaluate",
    "evaluate_rule",
]

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
class StorageWriteError:
    """The latest write the task database refused: why (a
    :class:`~vpsweb_tasks.errors.StorageFault` value), the error, and when."""

    cause: str
    message: str
    at: float


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
    storage_writable: bool = True
    """Whether the latest write (the health check's write check, or any other) succeeded."""
    storage_error: StorageWriteError | None = None
    """The latest write failure, kept once the store recovers (compare ``at``)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What one health check looks at."""

    sample: ResourceSample | None
    """The latest resource sample (None before the first, or without sampling)."""
    statistics: TaskStatistics | None
    """Task statistics (None when storage could not be read)."""
    storage_ok: bool = True
    storage_write_error: StorageWriteError | None = None
    """Why storage takes no writes now; None while it does."""
    breakers: Mapping[str, str] = field(default_factory=dict)
    """State of every circuit breaker, by name."""
    overload_reason: str | None = None
    """Why dispatch is paused for overload, if it is."""


@dataclass(frozen=True, slots=True)
class Firing:
    """An alert that fires now; the monitor turns it into an :class:`Alert` with the time
    it started firing."""

    level: Level
    message: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """One alert with a warning and a critical level.

    The alert is critical when the value reaches the critical level, else a warning when
    it reaches the warning level (with ``strictly_above``: when it passes the level). Its
    ``threshold`` is the level reached. Messages are :meth:`str.format` templates given
    ``what``, ``unit``, ``value``, ``threshold`` and ``window_minutes`` (the statistics'
    window).
    """

    name: str
    """The alert's name."""
    what: str
    """How messages name the value."""
    value: Callable[[Observation, Settings], float | None]
    """Reads the value; None when it is not measured now (no sample, no statistics...)."""
    warning: Callable[[Settings], float | None]
    """The warning level, from config; None: the rule has no warning level."""
    critical: Callable[[Settings], float | None]
    """The critical level, from config; None: the rule has no critical level."""
    unit: str = ""
    warning_message: str = "{what} at {value:.1f}{unit} (warning at {threshold:g}{unit})"
    critical_message: str = "{what} at {value:.1f}{unit} (limit {threshold:g}{unit})"
    strictly_above: bool = False


def _waiting(statistics: TaskStatistics) -> float:
    return float(statistics.counts.get("pending", 0) + statistics.counts.get("retrying", 0))


def _error_rate_percent(observation: Observation, settings: Settings) -> float | None:
    statistics = observation.statistics
    if statistics is None:
        return None
    if statistics.attempts < settings.task_monitoring.min_attempts_for_error_rate:
        return None
    return statistics.error_rate * 100


_ABOVE = "{what} {value:.1f}{unit} (above {threshold:g}{unit})"

#: The alerts with levels, in the order a health check evaluates them.
THRESHOLD_RULES: tuple[ThresholdRule, ...] = (
    ThresholdRule(
        name="cpu",
        what="CPU",
        unit="%",
        value=lambda o, s: o.sample.cpu_percent if o.sample else None,
        warning=lambda s: s.system_resources.cpu_warning_threshold,
        critical=lambda s: s.system_resources.max_cpu_usage,
    ),
    ThresholdRule(
        name="memory",
        what="memory",
        unit="%",
        value=lambda o, s: o.sample.memory_percent if o.sample else None,
        warning=lambda s: s.system_resources.memory_warning_threshold,
        critical=lambda s: s.system_resources.max_memory_usage_percent,
    ),
    ThresholdRule(
        name="disk",
        what="disk",
        unit="%",
        value=lambda o, s: o.sample.disk_percent if o.sample else None,
        warning=lambda s: s.system_resources.disk_warning_threshold,
        critical=lambda s: s.system_resources.max_disk_usage_percent,
    ),
    ThresholdRule(
        name="process_memory",
        what="process memory",
        unit=" MB",
        value=lambda o, s: o.sample.process_rss_mb if o.sample else None,
        warning=lambda s: s.task_monitoring.memory_usage_warning * s.background_tasks.max_memory_mb,
        critical=lambda s: s.background_tasks.max_memory_mb,
    ),
    ThresholdRule(
        name="error_rate",
        what="error rate",
        unit="%",
        value=_error_rate_percent,
        warning=lambda s: s.task_monitoring.error_rate_warning * 100,
        critical=lambda s: s.task_monitoring.error_rate_critical * 100,
        warning_message=_ABOVE,
        critical_message=_ABOVE,
        strictly_above=True,
    ),
    ThresholdRule(
        name="queue_size",
        what="waiting tasks",
        value=lambda o, s: _waiting(o.statistics) if o.statistics else None,
        warning=lambda s: s.task_monitoring.queue_size_warning,
        critical=lambda s: s.background_tasks.max_queue_size,
    ),
    ThresholdRule(
        name="failed_tasks",
        what="tasks failed for good",
        value=lambda o, s: float(o.statistics.dead_lettered) if o.statistics else None,
        warning=lambda s: float(s.task_monitoring.failed_task_threshold),
        critical=lambda s: None,
        warning_message=(
            "{value:.0f} {what} in the last {window_minutes:g} minutes (threshold {threshold:.0f})"
        ),
    ),
)


def evaluate_rule(
    rule: ThresholdRule, observation: Observation, settings: Settings
) -> Firing | None:
    """The alert ``rule`` raises now, if any."""
    value = rule.value(observation, settings)
    if value is None:
        return None
    levels: tuple[tuple[Level, float | None, str], ...] = (
        ("critical", rule.critical(settings), rule.critical_message),
        ("warning", rule.warning(settings), rule.warning_message),
    )
    for level, threshold, template in levels:
        if threshold is None:
            continue
        if value > threshold or (value == threshold and not rule.strictly_above):
            window = (
                observation.statistics.window_seconds
                if observation.statistics is not None
                else settings.task_monitoring.statistics_window
            )
            message = template.format(
                what=rule.what,
                unit=rule.unit,
                value=value,
                threshold=threshold,
                window_minutes=window / 60,
            )
            return Firing(level, message, value, threshold)
    return None


def evaluate(
    observation: Observation,
    settings: Settings,
    rules: tuple[ThresholdRule, ...] = THRESHOLD_RULES,
) -> dict[str, Firing]:
    """Every alert that fires now, by name (see the module docstring)."""
    firing: dict[str, Firing] = {}
    if not observation.storage_ok:
        firing["storage"] = Firing("critical", "the task database cannot be reached")
    elif observation.storage_write_error is not None:
        error = observation.storage_write_error
        firing["storage_writes"] = Firing(
            "critical",
            f"the task database takes no writes ({error.cause}): new work is refused,"
            f" reads still work; {error.message}",
        )
    for rule in rules:
        found = evaluate_rule(rule, observation, settings)
        if found is not None:
            firing[rule.name] = found
    for name, state in observation.breakers.items():
        if state != "closed":
            firing[f"breaker:{name}"] = Firing("warning", f"circuit breaker {name!r} is {state}")
    if observation.overload_reason is not None:
        firing["overload"] = Firing("warning", f"dispatch paused: {observation.overload_reason}")
    return firing
