"""Prometheus metrics: counters and histograms of what this process saw, and gauges of
levels.

Two kinds of family, after Prometheus' conventions (docs/architecture.md lists them all):

* **Counters and histograms** (``*_total``, ``*_seconds``) are fed by the manager's events
  (:class:`TaskMetrics`, one per manager, in its own ``CollectorRegistry``): tasks
  submitted and finished, attempts, failures by error category, retries, dead letters,
  breaker transitions; queue wait and run time by task type. They are **process-local**:
  each process (API server, worker) exposes what it did itself, from zero at its start;
  ``rate()`` and ``increase()`` in PromQL handle the restarts, and ``sum by (task_type)``
  across instances gives the whole. Submits are counted where they are made, attempts where
  they run.
* **Gauges** are levels read when scraped: from storage (tasks by status, waiting and
  running tasks of every worker: these survive restarts), from the monitor's statistics
  window, from this process (running here, paused, breaker states, resources).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import ClassVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vpsweb_tasks import TaskManager, TaskMonitor
from vpsweb_tasks.events import (
    BreakerStateChanged,
    Event,
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskDeferred,
    TaskFailed,
    TaskRequeued,
    TaskRetryScheduled,
    TaskStarted,
    TaskSubmitted,
)
from vpsweb_tasks.translation import get_vpsweb_adapter

__all__ = ["BREAKER_STATES", "DURATION_BUCKETS", "WAIT_BUCKETS", "TaskMetrics", "render_metrics"]

#: Queue wait: from milliseconds (an idle worker) to an hour (a backlog, a delayed retry).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Run time of an attempt: from a millisecond (a no-op) to job_timeout's order (an LLM job).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BREAKER_STATES = ("closed", "open", "half-open")

_COUNTED = frozenset(
    kind.kind
    for kind in (
        TaskSubmitted,
        TaskStarted,
        TaskCompleted,
        TaskFailed,
        TaskRetryScheduled,
        TaskDeadLettered,
        TaskCancelled,
        TaskDeferred,
        TaskRequeued,
        BreakerStateChanged,
    )
)


class TaskMetrics:
    """The counters and histograms of one manager, fed by its events (a sync listener:
    a label lookup and an increment per event). :meth:`of` gives a manager's one, made on
    first use; make it before the manager starts to count from the start."""

    _made: ClassVar[weakref.WeakKeyDictionary[TaskManager, TaskMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def of(cls, manager: TaskManager) -> TaskMetrics:
        found = cls._made.get(manager)
        if found is None:
            found = cls._made[manager] = cls(manager)
        return found

    def __init__(self, manager: TaskManager) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace="vpsweb_tasks", registry=registry)

        self.submitted = counter(
            "submitted", "Tasks submitted through this process.", ("task_type", "priority")
        )
        self.finished = counter(
            "finished",
            "Tasks that reached a final status in this process (completed, failed: dead-"
            "lettered, cancelled).",
            ("task_type", "outcome"),
        )
        self.attempts = counter(
            "attempts", "Attempts started by this process's workers.", ("task_type",)
        )
        self.attempt_failures = counter(
            "attempt_failures",
            "Failed attempts in this process, by error category (retried or not).",
            ("task_type", "category"),
        )
        self.retries = counter(
            "retries", "Retries scheduled after a failed attempt.", ("task_type", "category")
        )
        self.dead_letters = counter(
            "dead_letters",
            "Tasks dead-lettered (retries exhausted, not retryable, or attempts lost with"
            " their workers).",
            ("task_type", "category"),
        )
        self.deferrals = counter(
            "deferrals",
            "Attempts put off without spending a retry (an open circuit breaker).",
            ("task_type",),
        )
        self.requeued = counter(
            "requeued",
            "Tasks put back in the queue: from the dead letter queue, or released on shutdown.",
            ("task_type", "reason"),
        )
        self.breaker_transitions = counter(
            "breaker_transitions",
            "Circuit breaker state changes seen by this process (its own, and ones adopted"
            " from other workers: shared=true).",
            ("breaker", "old_state", "new_state", "shared"),
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "From a task's run time (its submit, delay or retry time) to the start of the attempt.",
            ("task_type",),
            namespace="vpsweb_tasks",
            registry=registry,
            buckets=WAIT_BUCKETS,
        )
        self.run_time = Histogram(
            "attempt_duration_seconds",
            "Run time of attempts that completed or failed, from claim to outcome.",
            ("task_type", "outcome"),
            namespace="vpsweb_tasks",
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        manager.events.add_listener(self._on_event, kinds=_COUNTED)

    def render(self) -> bytes:
        """The counters and histograms in Prometheus' text format."""
        return generate_latest(self.registry)

    def _on_event(self, event: Event) -> None:
        match event:
            case TaskSubmitted():
                self.submitted.labels(event.task_type, event.priority).inc()
            case TaskStarted():
                self.attempts.labels(event.task_type).inc()
                if event.queue_wait is not None:
                    self.queue_wait.labels(event.task_type).observe(event.queue_wait)
            case TaskCompleted():
                self.finished.labels(event.task_type, "completed").inc()
                if event.duration is not None:
                    self.run_time.labels(event.task_type, "completed").observe(event.duration)
            case TaskFailed():
                self.attempt_failures.labels(event.task_type, event.category.value).inc()
                if event.duration is not None:
                    self.run_time.labels(event.task_type, "failed").observe(event.duration)
            case TaskRetryScheduled():
                self.retries.labels(event.task_type, event.category.value).inc()
            case TaskDeadLettered():
                self.dead_letters.labels(event.task_type, event.category.value).inc()
                self.finished.labels(event.task_type, "failed").inc()
            case TaskCancelled():
                self.finished.labels(event.task_type, "cancelled").inc()
            case TaskDeferred():
                self.deferrals.labels(event.task_type).inc()
            case TaskRequeued():
                self.requeued.labels(event.task_type, event.reason).inc()
            case BreakerStateChanged():
                self.breaker_transitions.labels(
                    event.name, event.old_state, event.new_state, str(event.shared).lower()
                ).inc()


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


async def _gauges(manager: TaskManager, monitor: TaskMonitor) -> list[Metric]:
    """The levels: tasks by status from storage (they fall when retention cleanup deletes
    tasks), rates and quantiles over the statistics window, this process's state."""
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
        _gauge("vpsweb_tasks_running", "Tasks running, in every worker process.", queue.running),
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
    states = GaugeMetricFamily(
        "vpsweb_tasks_breaker_state",
        "A circuit breaker's state: 1 for the state it is in, 0 for the others.",
        labels=["breaker", "state"],
    )
    for name, state in monitor.breaker_states.items():
        breakers.add_metric([name, state], float(state != "closed"))
        for each in BREAKER_STATES:
            states.add_metric([name, each], float(state == each))
    families += [breakers, states]
    families += await _translation_usage(manager)
    return families


async def render_metrics(manager: TaskManager, monitor: TaskMonitor) -> tuple[bytes, str]:
    """The exposition text and its content type: the manager's counters and histograms
    (:class:`TaskMetrics`), then the gauges read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await _gauges(manager, monitor)))
    return TaskMetrics.of(manager).render() + generate_latest(registry), CONTENT_TYPE_LATEST
