"""Prometheus text metrics, built on prometheus_client from the monitor's snapshot."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vpsweb_tasks import TaskManager, TaskMonitor
from vpsweb_tasks.translation import get_vpsweb_adapter

__all__ = ["render_metrics"]


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


async def _translation_usage(manager: TaskManager) -> list[Metric]:
    """Tokens and cost of translation steps in the statistics window, by model (when the
    translation extension is installed)."""
    try:
        adapter = get_vpsweb_adapter(manager)
    except KeyError:
        return []
    usage = await adapter.usage()
    tokens = GaugeMetricFamily(
        "vpsweb_tasks_translation_tokens_window",
        "Tokens of translation steps finished in the statistics window.",
        labels=["model", "kind"],
    )
    cost = GaugeMetricFamily(
        "vpsweb_tasks_translation_cost_window",
        f"Cost ({usage.currency}) of translation steps finished in the statistics window,"
        " at the configured prices.",
        labels=["model"],
    )
    for each in usage.by_model:
        tokens.add_metric([each.model, "prompt"], each.prompt_tokens)
        tokens.add_metric([each.model, "completion"], each.completion_tokens)
        if each.cost is not None:
            cost.add_metric([each.model], each.cost)
    return [tokens, cost]


async def render_metrics(manager: TaskManager, monitor: TaskMonitor) -> tuple[bytes, str]:
    """The exposition text and its content type. Everything is a gauge: counts come from
    storage (they fall when retention cleanup deletes tasks) and rates are over the
    statistics window."""
    stats = await monitor.statistics()
    queue = await manager.queue_status()
    sample = monitor.latest_sample
    families: list[Metric] = []

    tasks = GaugeMetricFamily(
        "vpsweb_tasks_tasks", "Tasks by type and status.", labels=["task_type", "status"]
    )
    for task_type, by_status in stats.counts_by_type.items():
        for status, n in by_status.items():
            tasks.add_metric([task_type, status], n)
    families.append(tasks)

    errors = GaugeMetricFamily(
        "vpsweb_tasks_failed_attempts_window",
        "Failed attempts in the statistics window, by error category.",
        labels=["category"],
    )
    for category, n in stats.errors_by_category.items():
        errors.add_metric([category], n)
    families.append(errors)

    durations = GaugeMetricFamily(
        "vpsweb_tasks_duration_seconds",
        "Completed attempt durations in the window.",
        labels=["quantile"],
    )
    for quantile, value in (
        ("0.5", stats.duration_p50),
        ("0.95", stats.duration_p95),
        ("0.99", stats.duration_p99),
    ):
        if value is not None:
            durations.add_metric([quantile], value)
    families.append(durations)

    families += [
        _gauge(
            "vpsweb_tasks_window_seconds", "Length of the statistics window.", stats.window_seconds
        ),
        _gauge(
            "vpsweb_tasks_completion_rate_per_minute",
            "Completed tasks per minute.",
            stats.completion_rate,
        ),
        _gauge(
            "vpsweb_tasks_processing_rate_per_minute",
            "Finished attempts per minute.",
            stats.processing_rate,
        ),
        _gauge(
            "vpsweb_tasks_error_rate",
            "Failed attempts / finished attempts in the window.",
            stats.error_rate,
        ),
        _gauge(
            "vpsweb_tasks_retry_success_rate",
            "Share of retries that completed.",
            stats.retry_success_rate,
        ),
        _gauge(
            "vpsweb_tasks_queue_size",
            "Waiting tasks (pending + retrying).",
            queue.pending + queue.retrying,
        ),
        _gauge("vpsweb_tasks_running_here", "Tasks running in this process.", queue.running_here),
        _gauge("vpsweb_tasks_queue_paused", "1 while dispatch is paused.", float(queue.paused)),
        _gauge("vpsweb_tasks_alerts", "Active alerts.", len(monitor.alerts)),
    ]
    if sample is not None:
        families += [
            _gauge("vpsweb_tasks_cpu_percent", "System CPU use.", sample.cpu_percent),
            _gauge("vpsweb_tasks_memory_percent", "System memory use.", sample.memory_percent),
            _gauge(
                "vpsweb_tasks_disk_percent", "Use of the database's volume.", sample.disk_percent
            ),
            _gauge(
                "vpsweb_tasks_process_rss_megabytes",
                "Resident memory of this process.",
                sample.process_rss_mb,
            ),
        ]
    breakers = GaugeMetricFamily(
        "vpsweb_tasks_breaker_open",
        "1 while a circuit breaker is not closed.",
        labels=["breaker", "state"],
    )
    for name, state in monitor.breaker_states.items():
        breakers.add_metric([name, state], float(state != "closed"))
    families.append(breakers)
    families += await _translation_usage(manager)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry), CONTENT_TYPE_LATEST
