"""Schedules: a task type fired by a cron expression or at a fixed interval.

A :class:`ScheduleDefinition` says what to fire (``task_type``, ``payload``,
``priority``) and when: ``cron``, a 5-field expression read in ``timezone``, or ``every``
so many seconds. Schedules come from code (:meth:`TaskManager.schedule
<vpsweb_tasks.TaskManager.schedule>`, ``@manager.scheduled``), from the config's
``schedules:`` section, or are added at runtime (``await manager.add_schedule(...)``, the
HTTP API); they live in storage, so every process on a database shares them.

Each tick fires exactly once across those processes: a worker's scheduler fires it in one
transaction that locks the schedule's row, writes a unique ``(schedule, tick)`` row and
the task, and moves ``next_run_at`` on (see :func:`vpsweb_tasks.storage.logic.fire_schedules`).

This module is pure: when the ticks fall (:class:`Cadence`, on `cronsim
<https://pypi.org/project/cronsim/>`_ for cron, which follows Debian cron through DST
changes), and which of the due ticks to fire (:func:`plan`).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from .errors import InvalidScheduleError
from .validation import JsonObject

__all__ = [
    "MAX_CATCH_UP",
    "MAX_EVERY",
    "MIN_EVERY",
    "Cadence",
    "Missed",
    "Plan",
    "Priority",
    "ScheduleDefinition",
    "ScheduleName",
    "ScheduleRecord",
    "cadence_of",
    "define",
    "first_run",
    "plan",
]

#: What to do with ticks a scheduler finds more than ``background_tasks.schedule_grace``
#: seconds late (every process that could fire them was down): ``latest`` fires the
#: latest of them once, ``skip`` fires none; either way the schedule goes on from the
#: next tick, never flooding the queue with the backlog.
Missed = Literal["latest", "skip"]

#: A task priority as it is written (:class:`~vpsweb_tasks.models.TaskPriority`'s values).
Priority = Literal["low", "normal", "high", "critical"]

#: The most ticks of one schedule fired at once (an interval far shorter than the grace):
#: older ones count as missed.
MAX_CATCH_UP = 100

#: The shortest and longest intervals (``every``), in seconds.
MIN_EVERY = 0.01
MAX_EVERY = 10 * 366 * 24 * 3600.0

#: A schedule's name: its key in the config, its path segment over HTTP.
ScheduleName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _seconds(value: Any) -> Any:
    return value.total_seconds() if isinstance(value, timedelta) else value


class ScheduleDefinition(BaseModel):
    """A schedule: which task type to submit, and when (exactly one of ``cron`` and
    ``every``). In the config, ``schedules`` maps each schedule's name to these keys; an
    invalid one is a ConfigError naming it (``schedules.nightly.cron``)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    task_type: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
    """The registered task type each tick submits."""
    cron: str | None = None
    """A 5-field cron expression (minute hour day-of-month month day-of-week), read in
    ``timezone``; e.g. ``"0 3 * * *"``, 03:00 every day."""
    every: Annotated[float, BeforeValidator(_seconds), Field(ge=MIN_EVERY, le=MAX_EVERY)] | None = (
        None
    )
    """Fire every so many seconds (float seconds or a timedelta; from 0.01 s to ten
    years), the first tick one interval after the schedule is created."""
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    """IANA name of the zone ``cron`` is read in (``Europe/Warsaw``)."""
    payload: JsonObject = Field(default_factory=dict)
    """The JSON payload of every task it submits."""
    priority: Priority = "normal"
    """The priority of every task it submits."""
    enabled: bool = True
    """False: defined but paused (it fires once resumed)."""
    missed: Missed | None = None
    """Ticks found late after a downtime: ``latest`` (run the latest once) or ``skip``;
    None: ``background_tasks.schedule_missed``."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        expression = " ".join(value.split())
        if len(expression.split(" ")) != 5:
            raise ValueError(
                "must have 5 fields (minute hour day-of-month month day-of-week),"
                f" not {len(expression.split())}"
            )
        try:
            ticks = CronSim(expression, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"is not a valid cron expression: {exc}") from None
        try:
            next(ticks)
        except StopIteration:
            raise ValueError("never fires (no matching time in the next 50 years)") from None
        return expression

    @field_validator("every")
    @classmethod
    def _one_of_cron_or_every(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "cron" not in info.data:  # cron itself was invalid: that is the error to report
            return value
        cron = info.data["cron"]
        if cron is None and value is None:
            raise ValueError("one of cron or every is required")
        if cron is not None and value is not None:
            raise ValueError("give cron or every, not both")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, say
            raise ValueError(f"unknown timezone {value!r} (an IANA name such as UTC)") from None
        return value

    def cadence(self, *, anchor: float) -> Cadence:
        """When it fires; an interval's ticks are ``anchor + k * every``."""
        return cadence_of(self.cron, self.every, self.timezone, anchor)

    def fingerprint(self) -> str:
        """The definition as text: a definition from code or config that is unchanged since
        it was stored leaves the schedule's runtime state alone."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def define(**fields: Any) -> ScheduleDefinition:
    """A :class:`ScheduleDefinition`, or :class:`~vpsweb_tasks.errors.InvalidScheduleError`
    naming the first invalid field."""
    try:
        return ScheduleDefinition(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "schedule"
        raise InvalidScheduleError(where, first["msg"]) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRecord:
    """A schedule as storage holds it. Times are epoch seconds."""

    name: str
    definition: ScheduleDefinition
    next_run_at: float
    """The next tick (of an enabled schedule, the time it fires)."""
    anchor_at: float
    """An interval's ticks are ``anchor_at + k * every``."""
    origin: Literal["code", "config", "api", "builtin"]
    """Where it was defined: code and config definitions are written again at start."""
    created_at: float
    updated_at: float
    last_tick_at: float | None = None
    last_task_id: str | None = None
    """The task the last tick submitted (None if the queue was full)."""

    @property
    def enabled(self) -> bool:
        return self.definition.enabled

    def cadence(self) -> Cadence:
        return self.definition.cadence(anchor=self.anchor_at)


# --- when ticks fall --------------------------------------------------------------------------


class Cadence(Protocol):
    """The ticks of a schedule, as epoch seconds."""

    def after(self, moment: float) -> float:
        """The first tick strictly after ``moment``."""

    def at_or_before(self, moment: float) -> float | None:
        """The latest tick at or before ``moment`` (None: none)."""


@dataclass(frozen=True, slots=True)
class _Interval:
    anchor: float
    every: float

    def _tick(self, k: int) -> float:
        return self.anchor + k * self.every

    def after(self, moment: float) -> float:
        k = math.floor((moment - self.anchor) / self.every) + 1
        while self._tick(k - 1) > moment:  # floating point: settle on the exact tick
            k -= 1
        while self._tick(k) <= moment:
            k += 1
        return self._tick(k)

    def at_or_before(self, moment: float) -> float | None:
        if moment < self.anchor:
            return None
        k = math.floor((moment - self.anchor) / self.every)
        while k > 0 and self._tick(k) > moment:
            k -= 1
        while self._tick(k + 1) <= moment:
            k += 1
        return self._tick(k)


@dataclass(frozen=True, slots=True)
class _Cron:
    expression: str
    zone: ZoneInfo

    def after(self, moment: float) -> float:
        # cronsim starts strictly after the whole second it is given (ticks are whole
        # seconds), reading the expression in the zone of that datetime.
        start = datetime.fromtimestamp(math.floor(moment), self.zone)
        return next(CronSim(self.expression, start)).timestamp()

    def at_or_before(self, moment: float) -> float | None:
        start = datetime.fromtimestamp(math.floor(moment) + 1, self.zone)
        try:
            return next(CronSim(self.expression, start, reverse=True)).timestamp()
        except StopIteration:
            return None


def cadence_of(cron: str | None, every: float | None, timezone: str, anchor: float) -> Cadence:
    if cron is not None:
        return _Cron(cron, ZoneInfo(timezone))
    assert every is not None
    return _Interval(anchor, every)


# --- which due ticks to fire ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What a scheduler does with one schedule at ``now``."""

    ticks: tuple[float, ...]
    """The ticks to fire, oldest first."""
    next_run_at: float
    """The first tick after ``now``."""
    missed_since: float | None
    """The first tick that was missed (found later than the grace), if any."""


def plan(cadence: Cadence, next_run_at: float, *, now: float, grace: float, missed: Missed) -> Plan:
    """The ticks of a schedule due at ``now`` (those from ``next_run_at`` on) to fire.

    Ticks at most ``grace`` seconds late are on time: each is fired (at most
    :data:`MAX_CATCH_UP`, the latest). Older ones were missed: with ``latest``, the
    latest of them is fired once, unless a tick on time fires anyway; with ``skip``, none.
    """
    if next_run_at > now:
        return Plan((), next_run_at, None)
    cutoff = now - grace
    tick = next_run_at if next_run_at >= cutoff else cadence.after(cutoff)
    on_time: deque[float] = deque(maxlen=MAX_CATCH_UP)
    passed = 0
    while tick <= now:
        on_time.append(tick)
        passed += 1
        tick = cadence.after(tick)
    late = next_run_at < cutoff or passed > len(on_time)
    ticks = tuple(on_time)
    if late and not ticks and missed == "latest":
        latest = cadence.at_or_before(now)
        ticks = () if latest is None else (latest,)
    return Plan(ticks, tick, next_run_at if late else None)


def first_run(definition: ScheduleDefinition, now: float) -> tuple[float, float]:
    """``(anchor_at, next_run_at)`` of a schedule created at ``now``."""
    return now, definition.cadence(anchor=now).after(now)
