"""End to end over real HTTP: a uvicorn server on a loopback port, driven by httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from vpsweb_tasks import TaskContext, TaskManager, TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app

from .http_server import serve

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"
MONITORING = "/api/v1/monitoring"


@dataclass
class Api:
    client: httpx.AsyncClient
    manager: TaskManager
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    started: dict[str, anyio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> anyio.Event:
        return self.gates.setdefault(name, anyio.Event())

    def started_event(self, name: str) -> anyio.Event:
        return self.started.setdefault(name, anyio.Event())

    async def submit(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post(f"{TASKS}/submit", json={"task_name": "t", **body})
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def wait(self, task_id: str) -> dict[str, Any]:
        await self.manager.wait(task_id, timeout=10)
        response = await self.client.get(f"{TASKS}/status/{task_id}")
        return dict(response.json())


def register(api: Api) -> Callable[[TaskManager], None]:
    def setup(manager: TaskManager) -> None:
        @manager.task("data_processing")
        async def data_processing(context: TaskContext) -> dict[str, Any]:
            gate = context.payload.get("gate")
            await context.update_progress(0.25, "reading")
            if gate:
                api.started_event(gate).set()
                await api.gate(gate).wait()
            await context.update_progress(0.75, "writing")
            return {"rows": 100, "format": context.definition.metadata.get("output_format")}

        @manager.task("fail_once")
        async def fail_once(context: TaskContext) -> str:
            if context.attempt == 1:
                raise ConnectionError("provider unreachable")
            return "ok"

        @manager.task("bad_input")
        async def bad_input(context: TaskContext) -> None:
            raise ValueError("the poem is empty")

    return setup


@pytest.fixture
async def api(settings_factory: Callable[..., Settings]) -> AsyncIterator[Api]:
    settings = settings_factory(background_tasks={"max_queue_size": 20})
    holder = Api(client=None, manager=None)  # type: ignore[arg-type]
    app = create_app(settings, setup=register(holder))
    holder.manager = app.state.manager
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        holder.client = client
        yield holder


async def test_the_documents_submit_example_fields(api: Api) -> None:
    # The document's request body, as written.
    response = await api.client.post(
        f"{TASKS}/submit",
        json={
            "task_name": "Data Processing Task",
            "task_type": "data_processing",
            "priority": "normal",
            "max_retries": 3,
            "timeout_seconds": 300,
            "metadata": {"source_file": "data.csv", "output_format": "json"},
        },
    )
    assert response.status_code == 202
    result = response.json()
    task = await api.wait(result["task_id"])
    assert task["status"] == "completed"
    assert task["result"] == {"rows": 100, "format": "json"}
    assert task["metadata"] == {"source_file": "data.csv", "output_format": "json"}
    assert [e["outcome"] for e in task["executions"]] == ["completed"]
    # The document's progress example reads progress and message.
    progress = (await api.client.get(f"{MONITORING}/tasks/{result['task_id']}/progress")).json()
    assert f"{progress['progress']:.1%} - {progress['message']}" == "100.0% - writing"


async def test_the_documents_health_example_fields(api: Api) -> None:
    health = (await api.client.get(f"{MONITORING}/health")).json()
    assert health["status"] in ("healthy", "degraded", "unhealthy")
    assert f"{health['cpu_usage']:.1f}"
    assert 0 < health["memory_usage"] <= 100
    assert health["active_tasks"] == 0
    assert (await api.client.get(f"{TASKS}/health")).json()["status"] == health["status"]


async def test_task_lists_queue_and_control_routes(api: Api) -> None:
    pause = await api.client.post(f"{TASKS}/queue/pause", json={"reason": "maintenance"})
    assert (pause.status_code, pause.json()["paused"], pause.json()["pause_reason"]) == (
        200,
        True,
        "maintenance",
    )
    low = await api.submit(task_type="data_processing", priority="low")
    high = await api.submit(task_type="data_processing", priority="high")
    queued = (await api.client.get(f"{TASKS}/queue/tasks")).json()
    assert [t["task_id"] for t in queued["tasks"]] == [high["task_id"], low["task_id"]]
    active = (await api.client.get(f"{TASKS}/active")).json()
    assert {t["task_id"] for t in active["tasks"]} == {low["task_id"], high["task_id"]}
    status = (await api.client.get(f"{TASKS}/queue/status")).json()
    assert (status["pending"], status["queue_size"]) == (2, 2)
    cleared = await api.client.post(f"{TASKS}/queue/clear")
    assert cleared.json() == {"cancelled": 2}
    resumed = await api.client.post(f"{TASKS}/queue/resume")
    assert resumed.json()["paused"] is False
    done = await api.submit(task_type="data_processing")
    await api.wait(done["task_id"])
    finished = (await api.client.get(f"{TASKS}/completed")).json()
    assert finished["tasks"][0]["task_id"] == done["task_id"]
    only_cancelled = (
        await api.client.get(f"{TASKS}/completed", params={"status": "cancelled"})
    ).json()
    assert {t["task_id"] for t in only_cancelled["tasks"]} == {low["task_id"], high["task_id"]}
    stats = (await api.client.get(f"{TASKS}/statistics")).json()
    assert stats["counts"]["cancelled"] == 2
    assert stats["completed"] == 1
    assert (await api.client.get(f"{MONITORING}/tasks/statistics")).json()["completed"] == 1


async def test_running_list_and_cancel_of_a_running_task(api: Api) -> None:
    task = await api.submit(task_type="data_processing", payload={"gate": "hold"})
    await api.started_event("hold").wait()
    running = (await api.client.get(f"{TASKS}/queue/running")).json()
    assert [t["task_id"] for t in running["tasks"]] == [task["task_id"]]
    cancelled = await api.client.post(f"{TASKS}/cancel/{task['task_id']}")
    assert cancelled.status_code == 200
    # It ran in the server's own process: stopped before the answer, which says so.
    assert (cancelled.json()["status"], cancelled.json()["cancel_requested"]) == (
        "cancelled",
        False,
    )
    assert (await api.wait(task["task_id"]))["status"] == "cancelled"
    again = await api.client.post(f"{TASKS}/cancel/{task['task_id']}")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]


async def test_unknown_ids_are_404(api: Api) -> None:
    for method, path in [
        ("GET", f"{TASKS}/status/nope"),
        ("POST", f"{TASKS}/cancel/nope"),
        ("GET", f"{MONITORING}/tasks/nope/progress"),
        ("GET", f"{MONITORING}/tasks/nope/history"),
        ("GET", f"{TASKS}/tasks/nope/events"),
    ]:
        response = await api.client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert "nope" in response.json()["detail"]


async def test_retries_and_errors_are_visible(api: Api) -> None:
    flaky = await api.submit(task_type="fail_once")
    task = await api.wait(flaky["task_id"])
    assert (task["status"], task["attempts"]) == ("completed", 2)
    assert [(e["outcome"], e["error_category"]) for e in task["executions"]] == [
        ("failed", "network"),
        ("completed", None),
    ]
    bad = await api.submit(task_type="bad_input")
    task = await api.wait(bad["task_id"])
    assert task["status"] == "failed"
    assert task["error"] == {
        "type": "ValueError",
        "message": "the poem is empty",
        "category": "validation",
    }


async def test_progress_history_alerts_resources_summary_and_performance(api: Api) -> None:
    task = await api.submit(task_type="data_processing")
    await api.wait(task["task_id"])
    history = (await api.client.get(f"{MONITORING}/tasks/{task['task_id']}/history")).json()
    assert [p["message"] for p in history["history"]] == ["reading", "writing"]
    alerts = (await api.client.get(f"{MONITORING}/alerts")).json()
    assert alerts["count"] == len(alerts["alerts"])
    resources = (await api.client.get(f"{MONITORING}/system/resources")).json()
    assert resources["process_rss_mb"] > 10
    performance = (await api.client.get(f"{MONITORING}/metrics/performance")).json()
    assert performance["count"] >= 1
    summary = (await api.client.get(f"{MONITORING}/summary")).json()
    assert summary["queue"]["max_queue_size"] == 20
    assert summary["statistics"]["completed"] == 1
    assert summary["health"]["status"] in ("healthy", "degraded", "unhealthy")


async def test_monitoring_start_and_stop(api: Api) -> None:
    assert (await api.client.post(f"{MONITORING}/stop")).json() == {"monitoring": False}
    assert (await api.client.post(f"{MONITORING}/start")).json() == {"monitoring": True}


async def test_prometheus_metrics(api: Api) -> None:
    task = await api.submit(task_type="data_processing")
    await api.wait(task["task_id"])
    response = await api.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'vpsweb_tasks_tasks{status="completed",task_type="data_processing"} 1.0' in lines
    assert "vpsweb_tasks_queue_paused 0.0" in lines


async def read_events(
    source: httpx.Response | AsyncIterator[str], stop: Callable[[dict[str, str]], bool]
) -> list[dict[str, str]]:
    """Parse a text/event-stream until ``stop(event)``."""
    lines = source.aiter_lines() if isinstance(source, httpx.Response) else source
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if current:
                events.append(current)
                if stop(current):
                    return events
            current = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events


async def test_server_sent_progress_of_a_running_task(api: Api) -> None:
    task = await api.submit(task_type="data_processing", payload={"gate": "sse"})
    await api.started_event("sse").wait()
    url = f"{TASKS}/tasks/{task['task_id']}/events"
    async with api.client.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        [first] = await read_events(lines, lambda e: True)
        assert first["event"] == "status"
        snapshot = json.loads(first["data"])
        assert (snapshot["status"], snapshot["progress"], snapshot["message"]) == (
            "running",
            0.25,
            "reading",
        )
        api.gate("sse").set()
        events = await read_events(lines, lambda e: e.get("event") == "task_completed")
    kinds = [e["event"] for e in events]
    assert kinds == ["task_progressed", "task_completed"]
    progressed = json.loads(events[0]["data"])
    assert (progressed["update"]["progress"], progressed["update"]["message"]) == (0.75, "writing")
    assert int(events[1]["id"]) > int(events[0]["id"])


async def test_event_stream_resumes_with_last_event_id_without_loss(api: Api) -> None:
    first = await api.submit(task_type="data_processing")
    await api.wait(first["task_id"])
    async with api.client.stream("GET", f"{MONITORING}/events", params={"after": 0}) as response:
        seen = await read_events(response, lambda e: e.get("event") == "task_completed")
    last_id = seen[-1]["id"]
    # While nobody listens, more happens.
    second = await api.submit(task_type="data_processing")
    await api.wait(second["task_id"])
    headers = {"Last-Event-ID": last_id}
    async with api.client.stream("GET", f"{MONITORING}/events", headers=headers) as response:
        resumed = await read_events(response, lambda e: e.get("event") == "task_completed")
    ids = [int(e["id"]) for e in resumed]
    assert ids == list(range(int(last_id) + 1, int(last_id) + 1 + len(ids)))  # no gap
    assert {json.loads(e["data"])["task_id"] for e in resumed} == {second["task_id"]}
    assert [e["event"] for e in resumed] == [
        "task_submitted",
        "task_started",
        "task_progressed",
        "task_progressed",
        "task_completed",
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_type": "data_processing"}, "task_name"),
        ({"task_name": "", "task_type": "data_processing"}, "task_name"),
        ({"task_name": "x", "task_type": "data_processing", "priority": "urgent"}, "priority"),
        ({"task_name": "x", "task_type": "data_processing", "max_retries": -1}, "max_retries"),
        ({"task_name": "x", "task_type": "data_processing", "max_retries": "three"}, "max_retries"),
        (
            {"task_name": "x", "task_type": "data_processing", "timeout_seconds": 0},
            "timeout_seconds",
        ),
        (
            {"task_name": "x", "task_type": "data_processing", "metadata": "not an object"},
            "metadata",
        ),
        (
            {"task_name": "x", "task_type": "data_processing", "metadata": {"big": "x" * 70_000}},
            "metadata",
        ),
        ({"task_name": "x", "task_type": "data_processing", "unknown": 1}, "unknown"),
        ({"task_name": "x", "task_type": "no_such_type"}, "task_type"),
        ({"task_name": "x", "task_type": "has space"}, "task_type"),
    ],
)
async def test_bad_submissions_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post(f"{TASKS}/submit", json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
    assert (await api.client.get(f"{TASKS}/queue/status")).json()["queue_size"] == 0


async def test_unknown_type_lists_the_registered_ones(api: Api) -> None:
    response = await api.client.post(
        f"{TASKS}/submit", json={"task_name": "x", "task_type": "nope"}
    )
    [error] = response.json()["detail"]
    assert error["ctx"]["registered"] == [
        "backup",
        "bad_input",
        "cleanup",
        "data_processing",
        "fail_once",
        "maintenance",
        "translation",
    ]


async def test_malformed_json_and_oversized_bodies(api: Api) -> None:
    response = await api.client.post(
        f"{TASKS}/submit",
        content=b'{"task_name": "x",',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    huge = {"task_name": "x", "task_type": "data_processing", "payload": {"blob": "x" * 2_000_000}}
    assert (await api.client.post(f"{TASKS}/submit", json=huge)).status_code == 413
    bad_query = await api.client.get(f"{TASKS}/active", params={"limit": 0})
    assert bad_query.status_code == 422
    assert bad_query.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_a_full_queue_is_429_with_retry_after_and_keeps_what_was_accepted(api: Api) -> None:
    await api.client.post(f"{TASKS}/queue/pause")
    accepted = [await api.submit(task_type="data_processing") for _ in range(20)]
    response = await api.client.post(
        f"{TASKS}/submit", json={"task_name": "x", "task_type": "data_processing"}
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "5"
    assert "max_queue_size=20" in response.json()["detail"]
    await api.client.post(f"{TASKS}/queue/resume")
    for task in accepted:
        assert (await api.wait(task["task_id"]))["status"] == "completed"


async def test_api_key_when_configured(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKS_KEY", "s3cret-key")
    settings = settings_factory(http={"api_key_env": "TASKS_KEY"})
    app = create_app(settings)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        assert (await client.get(f"{MONITORING}/health")).status_code == 200
        assert (await client.get(f"{TASKS}/health")).status_code == 200
        for path in (f"{TASKS}/queue/status", f"{MONITORING}/summary", "/metrics"):
            denied = await client.get(path)
            assert denied.status_code == 401, path
            assert (await client.get(path, headers={"X-API-Key": "wrong"})).status_code == 401
            assert (await client.get(path, headers={"X-API-Key": "s3cret-key"})).status_code == 200


async def test_routes_answer_503_until_the_manager_runs(
    settings_factory: Callable[..., Settings],
) -> None:
    import httpx as _httpx

    app = create_app(settings_factory())
    transport = _httpx.ASGITransport(app=app)  # no lifespan: the manager never starts
    async with _httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get(f"{MONITORING}/health")).status_code == 503
        assert (await client.get(f"{TASKS}/queue/status")).status_code == 503


async def test_the_router_mounts_into_an_existing_app(
    settings_factory: Callable[..., Settings],
) -> None:
    from fastapi import FastAPI

    from vpsweb_tasks import TaskMonitor
    from vpsweb_tasks_http import create_router

    manager = TaskManager(settings_factory())
    monitor = TaskMonitor(manager)
    vpsweb = FastAPI()

    @vpsweb.get("/poems")
    async def poems() -> list[str]:
        return ["Because I could not stop for Death"]

    vpsweb.include_router(create_router(manager, monitor))
    async with manager, monitor:
        transport = httpx.ASGITransport(app=vpsweb)
        async with httpx.AsyncClient(transport=transport, base_url="http://vpsweb") as client:
            assert (await client.get("/poems")).status_code == 200
            queue = await client.get(f"{TASKS}/queue/status")
            assert queue.status_code == 200
            assert queue.json()["worker_id"] == manager.worker_id
    paths = set(vpsweb.openapi()["paths"])
    assert {f"{TASKS}/submit", f"{MONITORING}/health", "/poems"} <= paths


async def test_two_routers_of_two_managers_in_one_app(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    # Two task systems under two prefixes of one host app: each route reaches its own
    # router's manager, key and stream tokens, and the host app's state is left alone.
    from fastapi import FastAPI

    from vpsweb_tasks import TaskMonitor
    from vpsweb_tasks_http import create_router

    async def noop(context: TaskContext) -> None:
        return None

    managers = {
        name: TaskManager(settings_factory(storage={"sqlite_path": str(tmp_path / f"{name}.db")}))
        for name in ("one", "two")
    }
    keys = {name: {"X-API-Key": f"key-{name}"} for name in managers}
    host = FastAPI()
    for name, manager in managers.items():
        manager.task("noop")(noop)
        router = create_router(manager, TaskMonitor(manager), api_key=f"key-{name}")
        host.include_router(router, prefix=f"/{name}")
    one, two = managers["one"], managers["two"]
    transport = httpx.ASGITransport(app=host)
    async with (
        one,
        two,
        httpx.AsyncClient(transport=transport, base_url="http://host") as client,
    ):
        for name, manager in managers.items():
            queue = await client.get(f"/{name}{TASKS}/queue/status", headers=keys[name])
            assert queue.status_code == 200, queue.text
            assert queue.json()["worker_id"] == manager.worker_id
        assert (
            await client.get(f"/two{TASKS}/queue/status", headers=keys["one"])
        ).status_code == 401

        submitted = await client.post(
            f"/one{TASKS}/submit", json={"task_name": "t", "task_type": "noop"}, headers=keys["one"]
        )
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]
        assert submitted.json()["status_url"] == f"http://host/one{TASKS}/status/{task_id}"
        assert (await one.wait(task_id, timeout=10)).status is TaskStatus.COMPLETED
        status = await client.get(f"/one{TASKS}/status/{task_id}", headers=keys["one"])
        assert status.json()["status"] == "completed"
        assert (
            await client.get(f"/two{TASKS}/status/{task_id}", headers=keys["two"])
        ).status_code == 404

        issued = await client.post(f"/one{MONITORING}/stream-token", headers=keys["one"])
        token = {"token": issued.json()["token"]}
        events = await client.get(f"/one{TASKS}/tasks/{task_id}/events", params=token)
        assert events.status_code == 200
        assert "event: status" in events.text
        assert (await client.get(f"/two{MONITORING}/events", params=token)).status_code == 401
    assert not hasattr(host.state, "vpsweb_tasks")
    assert not hasattr(host.state, "manager")


async def test_every_route_but_the_health_checks_wants_the_key_first(
    settings_factory: Callable[..., Settings],
) -> None:
    # Each endpoint takes its manager from its guard: none may go without one. The manager
    # is not started, so every route answers at its guard: 401 without the key, then 503.
    from fastapi import FastAPI
    from fastapi.routing import APIRoute

    from vpsweb_tasks import TaskMonitor
    from vpsweb_tasks.translation import TranslationExtension
    from vpsweb_tasks_http import create_router

    manager = TaskManager(settings_factory(), extensions=[TranslationExtension()])
    router = create_router(manager, TaskMonitor(manager), api_key="k")
    app = FastAPI()
    app.include_router(router)
    open_paths = {f"{TASKS}/health", f"{MONITORING}/health"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        routes = [route for route in router.routes if isinstance(route, APIRoute)]
        assert len(routes) > 40
        for route in routes:
            path = route.path.replace("{task_id}", "x").replace("{job_id}", "x")
            for method in route.methods:
                without = await client.request(method, path)
                expected = 503 if route.path in open_paths else 401
                assert without.status_code == expected, (method, route.path, without.text)
                keyed = await client.request(method, path, headers={"X-API-Key": "k"})
                assert keyed.status_code == 503, (method, route.path, keyed.text)


def test_every_documented_route_is_in_openapi(settings_factory: Callable[..., Settings]) -> None:
    spec = create_app(settings_factory()).openapi()
    documented = {
        ("post", f"{TASKS}/submit"),
        ("get", f"{TASKS}/status/{{task_id}}"),
        ("get", f"{TASKS}/active"),
        ("get", f"{TASKS}/completed"),
        ("get", f"{TASKS}/statistics"),
        ("post", f"{TASKS}/cancel/{{task_id}}"),
        ("get", f"{TASKS}/queue/status"),
        ("get", f"{TASKS}/queue/tasks"),
        ("get", f"{TASKS}/queue/running"),
        ("post", f"{TASKS}/queue/clear"),
        ("post", f"{TASKS}/queue/pause"),
        ("post", f"{TASKS}/queue/resume"),
        ("get", f"{TASKS}/health"),
        ("get", f"{MONITORING}/health"),
        ("get", f"{MONITORING}/summary"),
        ("get", f"{MONITORING}/metrics/performance"),
        ("get", f"{MONITORING}/tasks/statistics"),
        ("get", f"{MONITORING}/tasks/{{task_id}}/progress"),
        ("get", f"{MONITORING}/tasks/{{task_id}}/history"),
        ("get", f"{MONITORING}/alerts"),
        ("get", f"{MONITORING}/system/resources"),
        ("post", f"{MONITORING}/start"),
        ("post", f"{MONITORING}/stop"),
    }
    present = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert documented <= present
    for method, path in documented:
        assert (
            "200" in spec["paths"][path][method]["responses"]
            or "202" in spec["paths"][path][method]["responses"]
        )


def test_task_status_values_match_the_library() -> None:
    assert [s.value for s in TaskStatus] == [
        "pending",
        "running",
        "retrying",
        "completed",
        "failed",
        "cancelled",
    ]


async def test_dead_letter_queue_routes(api: Api) -> None:
    failed = [await api.submit(task_type="bad_input") for _ in range(2)]
    for task in failed:
        assert (await api.wait(task["task_id"]))["status"] == "failed"
    listing = (
        await api.client.get(f"{TASKS}/dead-letters", params={"category": "validation"})
    ).json()
    assert {t["task_id"] for t in listing["tasks"]} == {t["task_id"] for t in failed}
    assert (await api.client.get(f"{TASKS}/dead-letters", params={"category": "network"})).json()[
        "count"
    ] == 0
    bad_category = await api.client.get(f"{TASKS}/dead-letters", params={"category": "cosmic-rays"})
    assert bad_category.status_code == 422
    letter = (await api.client.get(f"{TASKS}/dead-letters/{failed[0]['task_id']}")).json()
    assert [
        (e["outcome"], e["error_category"], e["error_message"]) for e in letter["executions"]
    ] == [("failed", "validation", "the poem is empty")]
    requeued = await api.client.post(f"{TASKS}/dead-letters/{failed[0]['task_id']}/requeue")
    assert (requeued.status_code, requeued.json()["status"]) == (200, "pending")
    assert (await api.wait(failed[0]["task_id"]))["status"] == "failed"  # and fails again
    everything = await api.client.post(
        f"{TASKS}/dead-letters/requeue", json={"task_type": "bad_input"}
    )
    assert everything.json() == {"requeued": 2}
    ok = await api.submit(task_type="data_processing")
    await api.wait(ok["task_id"])
    not_failed = await api.client.post(f"{TASKS}/dead-letters/{ok['task_id']}/requeue")
    assert not_failed.status_code == 409


async def test_breakers_route(api: Api) -> None:
    breaker = api.manager.breakers.get("llm-provider")

    async def refuse() -> None:
        raise ConnectionError("down")

    for _ in range(breaker.statistics().config.failure_threshold):
        with pytest.raises(ConnectionError):
            await breaker.call(refuse)
    body = (await api.client.get(f"{MONITORING}/breakers")).json()
    [llm] = [b for b in body["breakers"] if b["name"] == "llm-provider"]
    assert (llm["state"], llm["failures"], body["open"]) == ("open", 5, 1)
    assert llm["retry_at"] is not None
    health = (await api.client.get(f"{MONITORING}/health")).json()
    assert "breaker:llm-provider" in {a["name"] for a in health["alerts"]}
    breaker.reset()


async def test_the_test_server_keeps_an_idle_connection_longer_than_httpx_reuses_it(
    api: Api,
) -> None:
    """Else a request on a connection httpx still reuses can meet the server closing it
    (ReadError when the machine is busy)."""
    reuse_for = httpx.Limits().keepalive_expiry
    assert reuse_for is not None
    request = b"GET " + f"{MONITORING}/health".encode() + b" HTTP/1.1\r\nhost: test\r\n\r\n"
    host, port = api.client.base_url.host, api.client.base_url.port
    assert port is not None
    async with await anyio.connect_tcp(host, port) as connection:
        reader = BufferedByteReceiveStream(connection)

        async def status() -> bytes:
            await connection.send(request)
            head = await reader.receive_until(b"\r\n\r\n", 65536)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.receive_exactly(length)
            return head.split(b"\r\n", 1)[0]

        assert await status() == b"HTTP/1.1 200 OK"
        await anyio.sleep(reuse_for + 0.5)  # idle for as long as httpx would keep it
        assert await status() == b"HTTP/1.1 200 OK"
