"""/metrics by Prometheus' conventions, read with prometheus_client's own parser from a
real server: each family's type, counters that move as tasks run, histograms in seconds,
and the gauges operators already scrape under their old names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config
from vpsweb_tasks.breakers import BreakerConfig, BreakerRegistry
from vpsweb_tasks.config import Settings
from vpsweb_tasks.events import BreakerStateChanged, TaskDeadLettered
from vpsweb_tasks_http import create_app
from vpsweb_tasks_http.metrics import TaskMetrics

from .http_server import serve
from .mp_support import Worker, poll, unused_handler, write_config
from .support import EventRecorder, closed_port

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"


@dataclass
class Scrape:
    types: dict[str, str]
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series is not there (a counter not yet moved)."""
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(found)


async def scrape(client: httpx.AsyncClient, path: str = "/metrics") -> Scrape:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a family is exposed twice"
    return Scrape(
        types={family.name: family.type for family in families},
        samples=[sample for family in families for sample in family.samples],
    )


@pytest.fixture
async def served(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[tuple[httpx.AsyncClient, TaskManager]]:
    # A registry of its own: the breaker this test trips is nobody else's.
    manager = TaskManager(settings_factory(), breakers=BreakerRegistry())

    @manager.task("fine")
    async def fine(context: TaskContext) -> int:
        return 1

    @manager.task("flaky")
    async def flaky(context: TaskContext) -> str:
        if context.attempt == 1:
            raise ConnectionError("provider unreachable")
        return "ok"

    @manager.task("broken")
    async def broken(context: TaskContext) -> None:
        raise ValueError("the poem is empty")

    app = create_app(manager=manager)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client, manager


async def submit(client: httpx.AsyncClient, task_type: str, **body: Any) -> str:
    response = await client.post(
        f"{TASKS}/submit", json={"task_name": task_type, "task_type": task_type, **body}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


async def test_families_have_prometheus_types_and_counters_move(
    served: tuple[httpx.AsyncClient, TaskManager],
) -> None:
    client, manager = served
    before = await scrape(client)
    counters = {
        "vpsweb_tasks_submitted",
        "vpsweb_tasks_finished",
        "vpsweb_tasks_attempts",
        "vpsweb_tasks_attempt_failures",
        "vpsweb_tasks_retries",
        "vpsweb_tasks_dead_letters",
        "vpsweb_tasks_deferrals",
        "vpsweb_tasks_requeued",
        "vpsweb_tasks_breaker_transitions",
    }
    histograms = {"vpsweb_tasks_queue_wait_seconds", "vpsweb_tasks_attempt_duration_seconds"}
    # Levels are gauges, under the names operators already scrape, plus the new ones.
    gauges = {
        "vpsweb_tasks_tasks",
        "vpsweb_tasks_queue_size",
        "vpsweb_tasks_running",
        "vpsweb_tasks_running_here",
        "vpsweb_tasks_queue_paused",
        "vpsweb_tasks_breaker_open",
        "vpsweb_tasks_breaker_state",
        "vpsweb_tasks_failed_attempts_window",
        "vpsweb_tasks_duration_seconds",
        "vpsweb_tasks_error_rate",
        "vpsweb_tasks_alerts",
    }
    assert {name: before.types.get(name) for name in counters} == dict.fromkeys(counters, "counter")
    assert {name: before.types.get(name) for name in histograms} == dict.fromkeys(
        histograms, "histogram"
    )
    assert {name: before.types.get(name) for name in gauges} == dict.fromkeys(gauges, "gauge")
    # Nothing ran yet: the counters are at zero (no series) in this new process.
    assert before.value("vpsweb_tasks_submitted_total") == 0
    assert before.value("vpsweb_tasks_queue_size") == 0

    events = EventRecorder()
    manager.events.add_listener(events)
    ids = [await submit(client, "fine", priority="high") for _ in range(3)]
    ids.append(await submit(client, "flaky"))
    ids.append(await submit(client, "broken"))
    for task_id in ids:
        await manager.wait(task_id, timeout=10)
    await events.wait_for(TaskDeadLettered)
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("vpsweb_tasks_submitted_total", task_type="fine", priority="high") == 3
    assert moved("vpsweb_tasks_submitted_total") == 5
    assert moved("vpsweb_tasks_finished_total", task_type="fine", outcome="completed") == 3
    assert moved("vpsweb_tasks_finished_total", task_type="flaky", outcome="completed") == 1
    assert moved("vpsweb_tasks_finished_total", task_type="broken", outcome="failed") == 1
    assert moved("vpsweb_tasks_attempts_total", task_type="flaky") == 2
    assert moved("vpsweb_tasks_attempts_total") == 6
    assert moved("vpsweb_tasks_attempt_failures_total", task_type="flaky", category="network") == 1
    assert moved("vpsweb_tasks_retries_total", task_type="flaky", category="network") == 1
    assert moved("vpsweb_tasks_dead_letters_total", task_type="broken", category="validation") == 1
    assert moved("vpsweb_tasks_attempt_failures_total", category="validation") == 1
    # Histograms: one observation per start, and per completed or failed attempt.
    assert moved("vpsweb_tasks_queue_wait_seconds_count") == 6
    assert moved("vpsweb_tasks_queue_wait_seconds_count", task_type="fine") == 3
    assert moved("vpsweb_tasks_attempt_duration_seconds_count", outcome="completed") == 4
    assert moved("vpsweb_tasks_attempt_duration_seconds_count", outcome="failed") == 2
    assert after.value("vpsweb_tasks_attempt_duration_seconds_sum") >= 0
    inf = after.value("vpsweb_tasks_queue_wait_seconds_bucket", task_type="fine", le="+Inf")
    assert inf == 3
    # Levels from storage: every task is finished, none waits.
    assert after.value("vpsweb_tasks_tasks", task_type="fine", status="completed") == 3
    assert after.value("vpsweb_tasks_queue_size") == 0
    assert after.value("vpsweb_tasks_running") == 0

    # A breaker that opens and is reset: two transitions, and its state as a state set.
    breaker = manager.breakers.get("metrics-test", BreakerConfig(failure_threshold=1))
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("down")
    await events.wait_for(BreakerStateChanged, new_state="open")
    opened = await scrape(client)
    assert (
        opened.value(
            "vpsweb_tasks_breaker_transitions_total",
            breaker="metrics-test",
            old_state="closed",
            new_state="open",
            shared="false",
        )
        == 1
    )
    assert opened.value("vpsweb_tasks_breaker_state", breaker="metrics-test", state="open") == 1
    assert opened.value("vpsweb_tasks_breaker_state", breaker="metrics-test", state="closed") == 0
    breaker.reset()
    await events.wait_for(BreakerStateChanged, new_state="closed")
    closed = await scrape(client)
    assert closed.value("vpsweb_tasks_breaker_transitions_total", new_state="closed") == 1
    assert closed.value("vpsweb_tasks_breaker_state", breaker="metrics-test", state="closed") == 1


async def test_each_manager_counts_its_own(settings_factory: Callable[..., Settings]) -> None:
    """Counters live in a registry per manager, not prometheus_client's global one: two
    managers in one process (two apps, or tests) never add into each other."""
    first, second = TaskManager(settings_factory()), TaskManager(settings_factory())
    assert TaskMetrics.of(first) is TaskMetrics.of(first)
    assert TaskMetrics.of(first).registry is not TaskMetrics.of(second).registry
    async with first:
        await (await first.submit(TaskDefinition(name="c", task_type="cleanup"))).wait()
    text = TaskMetrics.of(first).render().decode()
    assert 'vpsweb_tasks_submitted_total{priority="normal",task_type="cleanup"} 1.0' in text
    assert "vpsweb_tasks_submitted_total{" not in TaskMetrics.of(second).render().decode()
    assert REGISTRY.get_sample_value("vpsweb_tasks_submitted_total") is None


@pytest.mark.slow
async def test_a_worker_process_serves_its_own_counters(tmp_path: Path) -> None:
    """``vpsweb-tasks worker --metrics-port``: the attempts are counted where they run."""
    storage = {"sqlite_path": str(tmp_path / "tasks.db")}
    port = await closed_port()
    worker = Worker(
        write_config(tmp_path / "w.yaml", storage),
        tmp_path / "runs.log",
        tmp_path / "worker.stderr",
        ("--metrics-port", str(port)),
    )
    try:
        await worker.ready()
        api_config = write_config(
            tmp_path / "api.yaml", storage, enabled=False, queue_check_interval=0.05
        )
        async with TaskManager(load_config(api_config)) as api:
            api.register("mp_work", unused_handler)
            definition = TaskDefinition(name="w", task_type="mp_work")
            contexts = [await api.submit(definition, seconds=0, n=n) for n in range(3)]
            for context in contexts:
                await api.wait(context.task_id, timeout=30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def three_finished() -> bool:
                scraped = await scrape(client, path="/")
                return scraped.value("vpsweb_tasks_finished_total", task_type="mp_work") == 3

            await poll(three_finished, timeout=10)  # the worker counts after its write
            scraped = await scrape(client, path="/")
        assert scraped.types["vpsweb_tasks_attempts"] == "counter"
        assert scraped.value("vpsweb_tasks_attempts_total", task_type="mp_work") == 3
        assert scraped.value("vpsweb_tasks_queue_wait_seconds_count", task_type="mp_work") == 3
        # Submits are counted where they are made: in the API process, not here.
        assert scraped.value("vpsweb_tasks_submitted_total") == 0
        assert await worker.stop() == 0
    finally:
        worker.close()
