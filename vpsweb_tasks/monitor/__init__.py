"""The monitor: progress, statistics, system resources, health, alerts and overload.

::

    async with TaskMonitor(manager) as monitor:
        monitor.add_progress_listener(task_id, lambda update: print(update.progress))
        print((await monitor.health()).status)

Everything the monitor knows comes from two places: the manager's :class:`EventHub`
(progress, task and breaker events, as they happen) and storage (statistics, progress
history, resource history), so its answers are the same after a restart. While running it
samples system resources every ``resource_check_interval`` (psutil, from this one loop),
keeps the last ``metrics_history_size`` samples and persists them, evaluates health every
``health_check_interval`` and raises or clears alerts as events, and hands each sample to
the dispatcher's overload control (``pause_on_overload``: :mod:`vpsweb_tasks.overload`
decides from this process's load whether its dispatch pauses).

The package: :class:`TaskMonitor` here; :mod:`.statistics` derives task statistics from
storage's aggregates, :mod:`.health` holds the health rules (as data, every level a config
key), alerts and the health report, and :mod:`.resources` samples the system with psutil.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
import psutil

from ..errors import StorageError
from ..events import (
    AlertCleared,
    AlertRaised,
    BreakerStateChanged,
    Event,
    EventHub,
    HealthChanged,
)
from ..models import ProgressUpdate, ResourceSample, TaskStatus, to_datetime
from ..overload import RESUME_FRACTION
from ..storage import logic
from ..storage.types import MetricsWindow, ProgressSnapshot
from .health import (
    Alert,
    Firing,
    HealthReport,
    HealthStatus,
    Level,
    Observation,
    StorageWriteError,
    evaluate,
)
from .resources import PsutilSampler, Sampler
from .statistics import TaskStatistics, statistics_from

if TYPE_CHECKING:
    from ..manager import TaskManager

__all__ = [
    "RESUME_FRACTION",
    "Alert",
    "HealthReport",
    "HealthStatus",
    "Level",
    "ProgressListener",
    "PsutilSampler",
    "Sampler",
    "TaskMonitor",
    "TaskStatistics",
    "get_task_monitor",
    "set_task_monitor",
    "statistics_from",
]

logger = logging.getLogger("vpsweb_tasks.monitor")

ProgressListener = Callable[[ProgressUpdate], Awaitable[None] | None]


class TaskMonitor:
    """Watches one manager; see the module docstring."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        sampler: Sampler | None = None,
    ) -> None:
        self.manager = manager
        self.settings = manager.settings
        self.events: EventHub = manager.events
        self._sampler = sampler
        self._samples: deque[ResourceSample] = deque(
            maxlen=self.settings.task_monitoring.metrics_history_size
        )
        self._alerts: dict[str, Alert] = {}
        self._breakers: dict[str, str] = {}
        self._status: HealthStatus = "healthy"
        self._writes_checked_at: float | None = None
        self._stack: AsyncExitStack | None = None
        self._host: anyio.abc.TaskGroup | None = None
        self._loops: anyio.CancelScope | None = None
        self._owns_host = False
        self.events.add_listener(self._on_breaker, kinds={BreakerStateChanged.kind})

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the sampling and health loops are running."""
        return self._loops is not None

    async def __aenter__(self) -> Self:
        """Host the monitor's loops in a task group for the duration of the block, and
        start them. Inside the block, :meth:`stop` and :meth:`start` pause and resume the
        loops (the HTTP routes ``/monitoring/stop`` and ``/start`` do this)."""
        stack = AsyncExitStack()
        self._host = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        self._start_loops()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_loops()
        stack, self._stack, self._host = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def start(self) -> None:
        """Start the loops (entering the monitor as a context manager if it is not)."""
        if self._host is None:
            await self.__aenter__()
            self._owns_host = True
        else:
            self._start_loops()

    async def stop(self) -> None:
        """Stop the loops (and leave the context entered by :meth:`start`)."""
        if self._owns_host:
            self._owns_host = False
            await self.__aexit__(None, None, None)
        else:
            self._stop_loops()

    def _start_loops(self) -> None:
        if self._loops is not None or self._host is None:
            return
        if self._sampler is None and self.settings.system_resources.enable_resource_monitoring:
            self._sampler = PsutilSampler(self.settings.storage.sqlite_path.parent)
        self._loops = anyio.CancelScope()
        self._host.start_soon(self._run_loops, self._loops)

    def _stop_loops(self) -> None:
        if self._loops is not None:
            self._loops.cancel()
            self._loops = None

    async def _run_loops(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                if self._sampler is not None:
                    interval = self.settings.system_resources.resource_check_interval
                    # The first sample as soon as CPU use can be measured (psutil measures
                    # it between two readings), not one interval after start.
                    sampler = self._sampler
                    first = sampler.min_cpu_span if isinstance(sampler, PsutilSampler) else 0.0
                    tg.start_soon(self._every, interval, self.sample, first)
                if self.settings.task_monitoring.enable_health_checks:
                    interval = self.settings.task_monitoring.health_check_interval
                    tg.start_soon(self._every, interval, self.check_health)

    async def _every(
        self, interval: float, action: Callable[[], Awaitable[Any]], first: float = 0.0
    ) -> None:
        await anyio.sleep(first)
        while True:
            try:
                await action()
            except Exception:
                logger.exception("monitor %s failed", getattr(action, "__name__", action))
            await anyio.sleep(interval)

    # --- listeners -------------------------------------------------------------------------

    def add_progress_listener(
        self, task_id: str | None, fn: ProgressListener
    ) -> Callable[[], None]:
        """Call ``fn(update)`` with every progress update of ``task_id`` (None: of every
        task), in order. ``fn`` may be sync or async; if it raises, the error is logged
        and neither the task nor other listeners are affected. Returns a remover."""

        if inspect.iscoroutinefunction(fn):

            async def forward_async(event: Any) -> None:
                await fn(event.update)

            return self.events.add_listener(
                forward_async, task_id=task_id, kinds={"task_progressed"}
            )

        def forward(event: Any) -> None:
            fn(event.update)

        return self.events.add_listener(forward, task_id=task_id, kinds={"task_progressed"})

    def add_listener(
        self, fn: Callable[[Event], Awaitable[None] | None], *, kinds: set[str] | None = None
    ) -> Callable[[], None]:
        """Call ``fn(event)`` for every event (optionally only some kinds)."""
        return self.events.add_listener(fn, kinds=kinds)

    def subscribe(
        self, *, after: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Live events with ids after ``after`` (see :meth:`EventHub.subscribe`)."""
        return self.events.subscribe(after=after)

    # --- progress ------------------------------------------------------------------------

    async def task_progress(self, task_id: str) -> ProgressUpdate:
        """The latest progress of a task: live if it runs in this process, else stored."""
        context = self.manager.context(task_id)
        record = await self.manager.get_task(task_id)
        progress, message = record.progress, record.message
        if context is not None and context.status is TaskStatus.RUNNING:
            progress, message = context.progress, context.message
        return ProgressUpdate(
            task_id=task_id,
            progress=progress,
            message=message,
            status=record.status,
            timestamp=record.updated_at,
            metadata={},
        )

    async def task_history(self, task_id: str, *, limit: int = 1000) -> list[ProgressSnapshot]:
        """Stored progress history of a task, oldest first (also after it finished)."""
        await self.manager.get_task(task_id)
        await self.manager.queue.flush_progress(task_id)
        return await self.manager.store.progress_history(task_id, limit=limit)

    # --- statistics ------------------------------------------------------------------------

    async def statistics(self) -> TaskStatistics:
        store = self.manager.store
        now = self.manager.clock()
        window_seconds = self.settings.task_monitoring.statistics_window
        if self.settings.task_monitoring.enable_task_metrics:
            window = await store.run(logic.metrics_window(since=now - window_seconds))
        else:  # no task_metrics rows are written: only the counts of tasks now
            window = MetricsWindow(since=now, groups=[], durations=[], dead_lettered=0)
        return statistics_from(
            window,
            now=now,
            window_seconds=window_seconds,
            counts=await store.count_tasks(),
            counts_by_type=await store.run(logic.count_tasks_by_type()),
            task_metrics=self.settings.task_monitoring.enable_task_metrics,
        )

    # --- resources and overload ------------------------------------------------------------

    @property
    def samples(self) -> list[ResourceSample]:
        """Samples kept in memory (at most ``metrics_history_size``), oldest first."""
        return list(self._samples)

    @property
    def latest_sample(self) -> ResourceSample | None:
        return self._samples[-1] if self._samples else None

    def smoothed_cpu(self) -> float | None:
        """Mean system CPU of the latest ``cpu_smoothing_samples`` samples."""
        recent = self._recent()
        return sum(s.cpu_percent for s in recent) / len(recent) if recent else None

    def smoothed_process_cpu(self) -> float | None:
        """Mean CPU of this process, as a percentage of the whole machine (all cores)."""
        recent = self._recent()
        cores = psutil.cpu_count() or 1
        return sum(s.process_cpu_percent for s in recent) / len(recent) / cores if recent else None

    def _recent(self) -> list[ResourceSample]:
        return list(self._samples)[-self.settings.system_resources.cpu_smoothing_samples :]

    async def sample(self) -> ResourceSample | None:
        """Take one resource sample now: keep it, persist it, and apply overload control."""
        if self._sampler is None:
            return None
        counts = await self.manager.store.count_tasks()
        sample = self._sampler.sample(
            now=self.manager.clock(),
            active_tasks=len(self.manager.queue.running),
            queued_tasks=counts[TaskStatus.PENDING] + counts[TaskStatus.RETRYING],
        )
        self._samples.append(sample)
        try:
            await self.manager.store.run(logic.add_resource_sample(sample))
        except StorageError as exc:  # kept in memory; health reports the fault
            logger.warning("resource sample not stored: %s", exc)
        self._control_overload(sample)
        return sample

    async def resource_history(
        self, *, since: float | None = None, limit: int = 1000
    ) -> list[ResourceSample]:
        """Persisted samples (they outlive restarts), oldest first."""
        return await self.manager.store.run(logic.resource_samples(since=since, limit=limit))

    def _control_overload(self, sample: ResourceSample) -> None:
        self.manager.queue.observe_load(sample, self.smoothed_process_cpu())

    # --- health and alerts -----------------------------------------------------------------

    def _on_breaker(self, event: BreakerStateChanged) -> None:
        self._breakers[event.name] = event.new_state

    @property
    def breaker_states(self) -> dict[str, str]:
        """State of every circuit breaker: the manager's registry, and any other breaker
        whose state change was published on the hub."""
        states = dict(self._breakers)
        for name, stats in self.manager.breakers.statistics().items():
            states[name] = stats.state.value
        return dict(sorted(states.items()))

    @property
    def alerts(self) -> list[Alert]:
        return sorted(self._alerts.values(), key=lambda a: (a.level != "critical", a.name))

    async def health(self) -> HealthReport:
        """Evaluate health now (also raising and clearing alerts) and report it."""
        return await self.check_health()

    async def check_health(self) -> HealthReport:
        now = self.manager.clock()
        storage_ok = True
        statistics: TaskStatistics | None = None
        try:
            await self.manager.store.run(logic.ping())
            statistics = await self.statistics()
        except Exception as exc:
            logger.error("storage unreachable: %s", exc)
            storage_ok = False
        if storage_ok:
            await self._check_writes(now)
        writes = self.manager.store.write_status
        last_error = (
            None
            if writes.error is None or writes.error_at is None
            else StorageWriteError(
                cause=writes.error.cause.value, message=str(writes.error), at=writes.error_at
            )
        )
        sample = self._fresh_sample()
        observation = Observation(
            sample=sample,
            statistics=statistics,
            storage_ok=storage_ok,
            storage_write_error=None if writes.writable else last_error,
            breakers=self.breaker_states,
            overload_reason=self.manager.queue.overload_reason,
        )
        firing = evaluate(observation, self.settings)
        await self._update_alerts(firing, now)
        status: HealthStatus = "healthy"
        if any(alert.level == "critical" for alert in self._alerts.values()):
            status = "unhealthy"
        elif self._alerts:
            status = "degraded"
        if status != self._status:
            await self.events.publish(HealthChanged(old_status=self._status, new_status=status))
            logger.log(
                logging.INFO if status == "healthy" else logging.WARNING,
                "health %s -> %s",
                self._status,
                status,
            )
            self._status = status
        counts = statistics.counts if statistics else {}
        return HealthReport(
            status=status,
            at=now,
            cpu_usage=sample.cpu_percent if sample else None,
            memory_usage=sample.memory_percent if sample else None,
            disk_usage=sample.disk_percent if sample else None,
            process_memory_mb=sample.process_rss_mb if sample else None,
            active_tasks=counts.get("running", 0),
            queued_tasks=counts.get("pending", 0) + counts.get("retrying", 0),
            error_rate=statistics.error_rate if statistics else 0.0,
            storage_ok=storage_ok,
            paused=self.manager.queue.paused,
            pause_reason=self.manager.queue.pause_reason,
            alerts=self.alerts,
            storage_writable=storage_ok and writes.writable,
            storage_error=last_error,
        )

    async def _check_writes(self, now: float) -> None:
        """The store's write check, at most every ``storage_check_interval``."""
        at = time.monotonic()
        interval = self.settings.task_monitoring.storage_check_interval
        if self._writes_checked_at is not None and at - self._writes_checked_at < interval:
            return
        self._writes_checked_at = at
        try:
            await self.manager.store.check_writes(now=now)
        except Exception:
            logger.exception("the storage write check failed")

    def _fresh_sample(self) -> ResourceSample | None:
        """The latest sample, its disk figure read again if older than
        ``storage_check_interval`` (a disk filling up shows at the next health check)."""
        sample = self.latest_sample
        if sample is None or not isinstance(self._sampler, PsutilSampler):
            return sample
        try:
            disk = self._sampler.disk_percent(self.settings.task_monitoring.storage_check_interval)
        except OSError:
            return sample
        return dataclasses.replace(sample, disk_percent=disk)

    async def _update_alerts(self, firing: dict[str, Firing], now: float) -> None:
        for name, fires in firing.items():
            current = self._alerts.get(name)
            since = current.since if current else now
            alert = Alert(
                name=name,
                level=fires.level,
                message=fires.message,
                value=fires.value,
                threshold=fires.threshold,
                since=since,
            )
            self._alerts[name] = alert
            if current is None or current.level != alert.level:
                logger.warning("alert %s (%s): %s", name, alert.level, alert.message)
                await self.events.publish(
                    AlertRaised(
                        name=name,
                        level=alert.level,
                        message=alert.message,
                        value=alert.value,
                        threshold=alert.threshold,
                        since=since,
                    )
                )
        for name in [name for name in self._alerts if name not in firing]:
            alert = self._alerts.pop(name)
            logger.info("alert %s cleared", name)
            await self.events.publish(AlertCleared(name=name, message=alert.message))

    # --- summary ---------------------------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        """Everything at once: health, statistics, queue, latest resources, breakers."""
        health = await self.health()
        statistics = await self.statistics()
        queue = await self.manager.queue_status()
        return {
            "health": health,
            "statistics": statistics,
            "queue": queue,
            "resources": self.latest_sample,
            "breakers": dict(self._breakers),
            "monitoring": self.running,
            "at": to_datetime(health.at),
        }


_default: TaskMonitor | None = None


def get_task_monitor() -> TaskMonitor:
    """The process-wide monitor, watching :func:`get_task_manager`'s manager."""
    from ..manager import get_task_manager

    global _default
    manager = get_task_manager()
    if _default is None or _default.manager is not manager:
        _default = TaskMonitor(manager)
    return _default


def set_task_monitor(monitor: TaskMonitor | None) -> None:
    global _default
    _default = monitor
