"""The monitor: progress listeners, statistics, resources, health, alerts and overload.

Time is a fake clock and resource readings are injected, so nothing here sleeps.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest

from vpsweb_tasks import (
    ProgressUpdate,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskMonitor,
    TaskStatus,
    get_task_monitor,
    set_task_manager,
)
from vpsweb_tasks.config import Settings
from vpsweb_tasks.events import AlertCleared, AlertRaised, BreakerStateChanged, Event
from vpsweb_tasks.models import ResourceSample
from vpsweb_tasks.monitor import TaskStatistics, set_task_monitor, statistics_from
from vpsweb_tasks.monitor.health import THRESHOLD_RULES, Observation, evaluate
from vpsweb_tasks.monitor.resources import PsutilSampler
from vpsweb_tasks.storage.base import AttemptGroup, MetricsWindow

from .conftest import FakeClock

pytestmark = pytest.mark.anyio

CALM = ResourceSample(
    recorded_at=0.0,
    cpu_percent=10.0,
    memory_percent=30.0,
    disk_percent=40.0,
    process_rss_mb=50.0,
)


class FakeSampler:
    """Hands out the reading the test sets."""

    def __init__(self) -> None:
        self.reading = CALM

    def sample(self, *, now: float, active_tasks: int, queued_tasks: int) -> ResourceSample:
        return replace(
            self.reading, recorded_at=now, active_tasks=active_tasks, queued_tasks=queued_tasks
        )


@pytest.fixture
def sampler() -> FakeSampler:
    return FakeSampler()


@pytest.fixture(params=[False])
async def monitored(
    request: pytest.FixtureRequest,
    settings_factory: Callable[..., Settings],
    clock: FakeClock,
    sampler: FakeSampler,
) -> AsyncIterator[tuple[TaskManager, TaskMonitor]]:
    """A manager and an unstarted monitor (tests drive sampling and health checks).
    Parametrised by pause_on_overload: off unless a test asks for it."""
    settings = settings_factory(
        task_monitoring={"queue_size_warning": 3, "failed_task_threshold": 2},
        background_tasks={"max_queue_size": 6, "pause_on_overload": request.param},
    )
    async with TaskManager(settings, clock=clock) as manager:
        yield manager, TaskMonitor(manager, sampler=sampler)


def alert_log(manager: TaskManager) -> list[tuple[str, str, str]]:
    log: list[tuple[str, str, str]] = []

    def record(event: Event) -> None:
        if isinstance(event, AlertRaised):
            log.append(("raised", event.name, event.level))
        elif isinstance(event, AlertCleared):
            log.append(("cleared", event.name, ""))

    manager.events.add_listener(record, kinds={"alert_raised", "alert_cleared"})
    return log


async def test_the_documents_monitoring_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VPSWEB_TASKS_CONFIG", raising=False)
    set_task_manager(None)
    set_task_monitor(None)

    # --- from the design document, "Monitoring Integration", imports adjusted ---
    from vpsweb_tasks import get_task_monitor

    async def setup_custom_monitoring() -> None:
        monitor = get_task_monitor()

        def progress_listener(update: ProgressUpdate) -> None:
            print(f"Task {update.task_id}: {update.progress:.1%} - {update.message}")
            # Send to external monitoring system
            # webhook_notification(update)

        monitor.add_progress_listener("task_id_here", progress_listener)

    # --- end of the example ---

    try:
        await setup_custom_monitoring()
        monitor = get_task_monitor()
        async with monitor.manager as manager:

            async def work(context: TaskContext) -> None:
                await context.update_progress(0.5, "halfway")

            context = await manager.submit(TaskDefinition(name="w", task_type="w"), work)
            # The same listener, on a real task id.
            monitor.add_progress_listener(
                context.task_id,
                lambda u: print(f"Task {u.task_id}: {u.progress:.1%} - {u.message}"),
            )
            await context.wait(10)
        assert f"Task {context.task_id}: 50.0% - halfway" in capsys.readouterr().out
    finally:
        set_task_manager(None)
        set_task_monitor(None)


async def test_progress_listeners_get_every_update_in_order_and_storage_stays_bounded(
    monitored: tuple[TaskManager, TaskMonitor],
) -> None:
    manager, monitor = monitored
    sync_seen: list[float] = []
    async_seen: list[float] = []
    everyone: list[str] = []

    async def async_listener(update: ProgressUpdate) -> None:
        await anyio.lowlevel.checkpoint()
        async_seen.append(update.progress)

    async def chatty(context: TaskContext) -> None:
        for i in range(1, 10_001):
            await context.update_progress(i / 10_000, "crunching")

    context = manager.create_task(TaskDefinition(name="c", task_type="c"), chatty)
    monitor.add_progress_listener(context.task_id, lambda u: sync_seen.append(u.progress))
    monitor.add_progress_listener(context.task_id, async_listener)
    monitor.add_progress_listener(None, lambda u: everyone.append(u.task_id))
    await context.wait(60)
    expected = [i / 10_000 for i in range(1, 10_001)]
    assert sync_seen == expected
    with anyio.fail_after(10):
        while len(async_seen) < len(expected):
            await manager.queue.next_round()
    assert async_seen == expected
    assert len(everyone) == 10_000
    # Storage got the updates coalesced: at most one row per flush, capped per task.
    history = await monitor.task_history(context.task_id)
    assert 1 <= len(history) <= manager.settings.task_monitoring.progress_history_limit
    assert history[-1].progress == 1.0


async def test_a_listener_that_raises_breaks_neither_the_task_nor_other_listeners(
    monitored: tuple[TaskManager, TaskMonitor],
) -> None:
    manager, monitor = monitored
    seen: list[float] = []

    def broken(update: ProgressUpdate) -> None:
        raise RuntimeError("listener bug")

    async def broken_async(update: ProgressUpdate) -> None:
        raise RuntimeError("async listener bug")

    async def work(context: TaskContext) -> str:
        await context.update_progress(0.5)
        await context.update_progress(1.0)
        return "fine"

    context = manager.create_task(TaskDefinition(name="w", task_type="w"), work)
    monitor.add_progress_listener(context.task_id, broken)
    monitor.add_progress_listener(context.task_id, broken_async)
    monitor.add_progress_listener(context.task_id, lambda u: seen.append(u.progress))
    record = await context.wait(10)
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "fine")
    assert seen == [0.5, 1.0]


async def test_progress_and_history_are_readable_after_the_task_ends(
    monitored: tuple[TaskManager, TaskMonitor],
) -> None:
    manager, monitor = monitored

    async def steps(context: TaskContext) -> None:
        for step in ("Initial Translation", "Editor Review", "Translator Revision"):
            await context.update_progress(context.progress + 1 / 3, step)

    context = manager.create_task(TaskDefinition(name="s", task_type="s"), steps)
    await context.wait(10)
    progress = await monitor.task_progress(context.task_id)
    assert (progress.progress, progress.status) == (1.0, TaskStatus.COMPLETED)
    assert progress.message == "Translator Revision"
    history = await monitor.task_history(context.task_id)
    assert [s.message for s in history] == [
        "Initial Translation",
        "Editor Review",
        "Translator Revision",
    ]


def test_statistics_from_aggregates() -> None:
    window = MetricsWindow(
        since=0.0,
        groups=[
            AttemptGroup("a", "completed", None, False, 6, 12.0, 6.0),
            AttemptGroup("a", "failed", "network", False, 3, 3.0, 3.0),
            AttemptGroup("a", "completed", None, True, 2, 4.0, 2.0),
            AttemptGroup("b", "failed", "timeout", True, 1, 1.0, 1.0),
            AttemptGroup("b", "deferred", None, False, 5, 0.0, 0.0),
        ],
        durations=[float(d) for d in range(1, 101)],
        dead_lettered=1,
    )
    stats = statistics_from(
        window,
        now=100.0,
        window_seconds=600.0,
        counts={TaskStatus.PENDING: 2},
        counts_by_type={"a": {TaskStatus.PENDING: 2}},
    )
    assert stats.attempts == 12
    assert stats.completed == 8
    assert stats.failed_attempts == 4
    assert stats.completion_rate == pytest.approx(0.8)  # 8 per 10 minutes
    assert stats.processing_rate == pytest.approx(1.2)
    assert stats.average_duration == pytest.approx(2.0)
    assert (stats.duration_p50, stats.duration_p95, stats.duration_p99) == (50.0, 95.0, 99.0)
    assert stats.error_rate == pytest.approx(4 / 12)
    assert stats.errors_by_category == {"network": 3, "timeout": 1}
    assert stats.retry_success_rate == pytest.approx(2 / 3)
    assert stats.counts_by_type == {"a": {"pending": 2}}


async def test_statistics_are_the_same_after_a_restart(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    settings = settings_factory(background_tasks={"max_retry_attempts": 1})

    async def run(manager: TaskManager) -> None:
        @manager.task("ok")
        async def ok(context: TaskContext) -> None:
            clock.advance(0.5)

        @manager.task("bad")
        async def bad(context: TaskContext) -> None:
            raise ValueError("nope")

        for name in ["ok"] * 5 + ["bad"] * 2:
            await (await manager.submit(TaskDefinition(name=name, task_type=name))).wait(10)

    async with TaskManager(settings, clock=clock) as manager:
        await run(manager)
        before = await TaskMonitor(manager, sampler=FakeSampler()).statistics()
    async with TaskManager(settings, clock=clock) as manager:
        after = await TaskMonitor(manager, sampler=FakeSampler()).statistics()
    assert after == before
    assert before.completed == 5
    assert before.dead_lettered == 2
    assert before.errors_by_category == {"validation": 2}
    assert before.average_duration == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("reading", "alert", "level"),
    [
        ({"cpu_percent": 75.0}, "cpu", "warning"),
        ({"cpu_percent": 85.0}, "cpu", "critical"),
        ({"memory_percent": 80.0}, "memory", "warning"),
        ({"memory_percent": 90.0}, "memory", "critical"),
        ({"disk_percent": 85.0}, "disk", "warning"),
        ({"disk_percent": 95.0}, "disk", "critical"),
        ({"process_rss_mb": 420.0}, "process_memory", "warning"),
        ({"process_rss_mb": 600.0}, "process_memory", "critical"),
    ],
)
async def test_resource_thresholds_raise_and_clear_alerts(
    monitored: tuple[TaskManager, TaskMonitor],
    sampler: FakeSampler,
    reading: dict[str, float],
    alert: str,
    level: str,
) -> None:
    manager, monitor = monitored
    log = alert_log(manager)
    await monitor.sample()
    assert (await monitor.health()).status == "healthy"
    sampler.reading = replace(CALM, **reading)
    await monitor.sample()
    report = await monitor.health()
    assert report.status == ("unhealthy" if level == "critical" else "degraded")
    [raised] = report.alerts
    assert (raised.name, raised.level) == (alert, level)
    assert raised.value == next(iter(reading.values()))
    sampler.reading = CALM
    await monitor.sample()
    assert (await monitor.health()).status == "healthy"
    assert log == [("raised", alert, level), ("cleared", alert, "")]


async def test_error_rate_thresholds(monitored: tuple[TaskManager, TaskMonitor]) -> None:
    manager, monitor = monitored

    @manager.task("job")
    async def job(context: TaskContext) -> None:
        if context.payload["fail"]:
            raise ValueError("bad")

    async def run(fail: bool) -> None:
        await (await manager.submit(TaskDefinition(name="j", task_type="job"), fail=fail)).wait(10)

    for _ in range(9):
        await run(False)
    await run(True)  # 1 in 10: not above 10%
    assert "error_rate" not in {a.name for a in (await monitor.health()).alerts}
    await run(True)  # 2 in 11: above 10%
    assert {a.name: a.level for a in (await monitor.health()).alerts}["error_rate"] == "warning"
    await run(True)  # 3 in 12 = 25%
    report = await monitor.health()
    assert {a.name: a.level for a in report.alerts}["error_rate"] == "critical"
    assert report.status == "unhealthy"


def statistics_with(*, completed: int, failed: int, dead_lettered: int = 0) -> TaskStatistics:
    window = MetricsWindow(
        since=0.0,
        groups=[
            AttemptGroup("a", "completed", None, False, completed, 0.0, 0.0),
            AttemptGroup("a", "failed", "network", False, failed, 0.0, 0.0),
        ],
        durations=[],
        dead_lettered=dead_lettered,
    )
    return statistics_from(window, now=0.0, window_seconds=3600.0, counts={}, counts_by_type={})


def test_the_rule_table_reads_its_levels_from_config(
    settings_factory: Callable[..., Settings],
) -> None:
    observation = Observation(sample=CALM, statistics=statistics_with(completed=93, failed=7))
    assert evaluate(observation, settings_factory()) == {}  # 7% is below the default 10%
    lower = settings_factory(task_monitoring={"error_rate_warning": 0.05})
    [(name, fires)] = evaluate(observation, lower).items()
    assert (name, fires.level, fires.message) == (
        "error_rate",
        "warning",
        "error rate 7.0% (above 5%)",
    )
    assert (fires.value, fires.threshold) == (pytest.approx(7.0), 5.0)
    lowest = settings_factory(
        task_monitoring={"error_rate_warning": 0.02, "error_rate_critical": 0.06}
    )
    fires = evaluate(observation, lowest)["error_rate"]
    assert (fires.level, fires.message) == ("critical", "error rate 7.0% (above 6%)")

    busy = Observation(sample=replace(CALM, cpu_percent=65.0), statistics=None)
    assert evaluate(busy, settings_factory()) == {}  # the default warning is at 70%
    fires = evaluate(busy, settings_factory(system_resources={"cpu_warning_threshold": 60}))["cpu"]
    assert (fires.level, fires.message) == ("warning", "CPU at 65.0% (warning at 60%)")


def test_the_rule_tables_default_messages(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    observation = Observation(
        sample=replace(CALM, cpu_percent=85.0, process_rss_mb=420.0),
        statistics=statistics_with(completed=9, failed=3, dead_lettered=5),
        storage_ok=False,
        breakers={"llm": "open", "db": "closed"},
        overload_reason="overloaded: process memory 470 MB is above 461 MB",
    )
    firing = {name: (f.level, f.message) for name, f in evaluate(observation, settings).items()}
    assert firing == {
        "storage": ("critical", "the task database cannot be reached"),
        "cpu": ("critical", "CPU at 85.0% (limit 80%)"),
        "process_memory": ("warning", "process memory at 420.0 MB (warning at 409.6 MB)"),
        "error_rate": ("critical", "error rate 25.0% (above 20%)"),
        "failed_tasks": (
            "warning",
            "5 tasks failed for good in the last 60 minutes (threshold 5)",
        ),
        "breaker:llm": ("warning", "circuit breaker 'llm' is open"),
        "overload": (
            "warning",
            "dispatch paused: overloaded: process memory 470 MB is above 461 MB",
        ),
    }


def test_every_level_of_the_rule_table_is_a_config_key(
    settings_factory: Callable[..., Settings],
) -> None:
    default = settings_factory()
    changed = settings_factory(
        system_resources={
            "cpu_warning_threshold": 50,
            "max_cpu_usage": 60,
            "memory_warning_threshold": 50,
            "max_memory_usage_percent": 60,
            "disk_warning_threshold": 50,
            "max_disk_usage_percent": 60,
        },
        task_monitoring={
            "memory_usage_warning": 0.5,
            "error_rate_warning": 0.3,
            "error_rate_critical": 0.4,
            "queue_size_warning": 7,
            "failed_task_threshold": 9,
        },
        background_tasks={"max_memory_mb": 100, "max_queue_size": 8},
    )
    for rule in THRESHOLD_RULES:
        levels = [(level(default), level(changed)) for level in (rule.warning, rule.critical)]
        assert any(before is not None for before, _ in levels), rule.name
        for before, after in levels:
            if before is not None:
                assert after != before, rule.name


async def test_queue_size_and_failed_task_alerts(
    monitored: tuple[TaskManager, TaskMonitor],
) -> None:
    manager, monitor = monitored

    @manager.task("job")
    async def job(context: TaskContext) -> None:
        if context.payload.get("fail"):
            raise PermissionError("denied")

    await manager.pause()
    for _ in range(3):
        await manager.submit(TaskDefinition(name="j", task_type="job"))
    alerts = {a.name: a for a in (await monitor.health()).alerts}
    assert (alerts["queue_size"].level, alerts["queue_size"].value) == ("warning", 3.0)
    await manager.clear()
    await manager.resume()
    for _ in range(2):
        await (await manager.submit(TaskDefinition(name="f", task_type="job"), fail=True)).wait(10)
    alerts = {a.name: a for a in (await monitor.health()).alerts}
    assert "queue_size" not in alerts
    assert alerts["failed_tasks"].level == "warning"


async def test_an_open_breaker_raises_an_alert_until_it_closes(
    monitored: tuple[TaskManager, TaskMonitor],
) -> None:
    manager, monitor = monitored
    await manager.events.publish(
        BreakerStateChanged(name="llm", old_state="closed", new_state="open")
    )
    report = await monitor.health()
    assert [(a.name, a.level) for a in report.alerts] == [("breaker:llm", "warning")]
    await manager.events.publish(
        BreakerStateChanged(name="llm", old_state="open", new_state="closed")
    )
    assert (await monitor.health()).status == "healthy"


async def test_unreachable_storage_is_critical(
    monitored: tuple[TaskManager, TaskMonitor], monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, monitor = monitored

    async def unreachable(*args: object) -> None:
        raise OSError("database gone")

    monkeypatch.setattr(manager.store, "run", unreachable)
    report = await monitor.health()
    assert report.status == "unhealthy"
    assert not report.storage_ok
    assert [a.name for a in report.alerts] == ["storage"]


overload_on = pytest.mark.parametrize("monitored", [True], indirect=True)


@overload_on
async def test_overload_pauses_dispatch_and_resumes_when_load_falls(
    monitored: tuple[TaskManager, TaskMonitor], sampler: FakeSampler
) -> None:
    manager, monitor = monitored
    ran: list[str] = []

    @manager.task("job")
    async def job(context: TaskContext) -> None:
        ran.append(context.task_id)

    sampler.reading = replace(CALM, process_rss_mb=470.0)  # above 0.9 * 512 MB
    await monitor.sample()
    status = await manager.queue_status()
    assert status.paused
    assert status.pause_reason is not None
    assert "process memory 470 MB" in status.pause_reason
    context = await manager.submit(TaskDefinition(name="j", task_type="job"))
    await manager.queue.next_round()
    assert ran == []
    assert "overload" in {a.name for a in (await monitor.health()).alerts}
    sampler.reading = replace(CALM, process_rss_mb=450.0)  # below the pause level, not far enough
    await monitor.sample()
    assert (await manager.queue_status()).paused
    sampler.reading = replace(CALM, cpu_percent=20.0)
    await monitor.sample()
    assert not (await manager.queue_status()).paused
    assert (await context.wait(10)).status is TaskStatus.COMPLETED
    assert ran == [context.task_id]


@overload_on
async def test_cpu_overload_too(
    monitored: tuple[TaskManager, TaskMonitor], sampler: FakeSampler
) -> None:
    manager, monitor = monitored
    cores = psutil.cpu_count() or 1
    # This process at 75% of the whole machine: above 0.9 * 80%.
    sampler.reading = replace(CALM, process_cpu_percent=75.0 * cores)
    await monitor.sample()
    reason = (await manager.queue_status()).pause_reason
    assert reason is not None
    assert "process CPU 75%" in reason


@overload_on
async def test_a_machine_busy_with_other_work_does_not_pause_the_queue(
    monitored: tuple[TaskManager, TaskMonitor], sampler: FakeSampler
) -> None:
    manager, monitor = monitored
    sampler.reading = replace(CALM, cpu_percent=99.0, process_cpu_percent=1.0)
    await monitor.sample()
    assert not (await manager.queue_status()).paused
    assert "cpu" in {a.name for a in (await monitor.health()).alerts}


async def test_real_resource_samples_are_kept_bounded_and_persisted(
    settings_factory: Callable[..., Settings], clock: FakeClock, tmp_path: Path
) -> None:
    settings = settings_factory(task_monitoring={"metrics_history_size": 3})
    async with TaskManager(settings, clock=clock) as manager:
        monitor = TaskMonitor(manager, sampler=PsutilSampler(tmp_path))
        for _ in range(5):
            clock.advance(30)
            sample = await monitor.sample()
            assert sample is not None
            assert 0.0 <= sample.cpu_percent <= 100.0
            assert 0.0 < sample.memory_percent <= 100.0
            assert 0.0 < sample.disk_percent <= 100.0
            assert sample.process_rss_mb > 10
        assert len(monitor.samples) == 3
        stored = await monitor.resource_history()
    assert len(stored) == 5
    assert [s.recorded_at for s in stored] == sorted(s.recorded_at for s in stored)


async def test_the_monitor_runs_its_loops_when_started(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        system_resources={"resource_check_interval": 0.01},
        task_monitoring={"health_check_interval": 0.01},
    )
    async with TaskManager(settings) as manager:
        sampled = anyio.Event()

        class Recording(FakeSampler):
            def sample(self, **kwargs: Any) -> ResourceSample:
                sampled.set()
                return super().sample(**kwargs)

        async with TaskMonitor(manager, sampler=Recording()) as monitor:
            with anyio.fail_after(10):
                await sampled.wait()
            assert monitor.running
        assert not monitor.running


async def test_the_first_resource_sample_is_taken_at_start_and_measures_cpu(
    settings_factory: Callable[..., Settings],
) -> None:
    """Health must not report 0% CPU for a whole resource_check_interval after start: the
    first sample comes as soon as psutil can measure CPU use (min_cpu_span), and measures
    it over that span rather than reporting a placeholder."""
    settings = settings_factory(system_resources={"resource_check_interval": 3600})
    sampled = anyio.Event()
    spans: list[float] = []

    class Recording(PsutilSampler):
        def __init__(self) -> None:
            super().__init__()
            self.created = time.monotonic()

        def sample(self, **kwargs: Any) -> ResourceSample:
            spans.append(time.monotonic() - self.created)
            sampled.set()
            return super().sample(**kwargs)

    async with (
        TaskManager(settings) as manager,
        TaskMonitor(manager, sampler=Recording()) as monitor,
    ):
        with anyio.fail_after(10):
            await sampled.wait()
        health = await monitor.health()
    assert spans[0] >= PsutilSampler.min_cpu_span
    assert len(spans) == 1  # one at start, the next an interval later
    sample = monitor.latest_sample
    assert sample is not None
    assert health.cpu_usage == sample.cpu_percent


def test_get_task_monitor_follows_the_process_wide_manager(tmp_path: Path) -> None:
    set_task_manager(None)
    set_task_monitor(None)
    try:
        assert get_task_monitor() is get_task_monitor()
        assert get_task_monitor().manager is not None
    finally:
        set_task_manager(None)
        set_task_monitor(None)
