"""Schedules over real HTTP: /api/v1/background-tasks/schedules on a uvicorn server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from vpsweb_tasks import TaskContext, TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app

from .http_server import serve

pytestmark = pytest.mark.anyio

SCHEDULES = "/api/v1/background-tasks/schedules"


def setup(manager: TaskManager) -> None:
    @manager.task("report")
    async def report(context: TaskContext) -> dict[str, Any]:
        return {"for": context.payload.get("team")}


@pytest.fixture
async def client(settings_factory: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_factory(), setup=setup)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


async def names(client: httpx.AsyncClient) -> list[str]:
    listing = (await client.get(SCHEDULES)).json()
    assert listing["count"] == len(listing["schedules"])
    return [s["name"] for s in listing["schedules"]]


async def poll(
    client: httpx.AsyncClient, path: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET ``path`` until ``done(body)``: the server's own tasks change it, so poll."""
    with anyio.fail_after(10):
        while True:
            body: dict[str, Any] = (await client.get(path)).json()
            if done(body):
                return body
            await anyio.sleep(0.02)


async def test_add_read_pause_resume_and_delete(client: httpx.AsyncClient) -> None:
    added = await client.post(
        SCHEDULES,
        json={
            "name": "nightly",
            "task_type": "report",
            "cron": "0 3 * * *",
            "timezone": "Europe/Warsaw",
            "payload": {"team": "ops"},
            "priority": "low",
        },
    )
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["name"] == "nightly"
    assert (body["cron"], body["every"], body["timezone"]) == ("0 3 * * *", None, "Europe/Warsaw")
    assert (body["payload"], body["priority"], body["origin"]) == ({"team": "ops"}, "low", "api")
    assert body["enabled"] is True
    assert body["next_run_at"].endswith(("T01:00:00Z", "T02:00:00Z"))  # 03:00 in Warsaw
    assert await names(client) == ["cleanup", "nightly"]
    assert (await client.get(f"{SCHEDULES}/nightly")).json() == body

    paused = await client.post(f"{SCHEDULES}/nightly/pause")
    assert paused.status_code == 200
    assert (paused.json()["enabled"], paused.json()["next_run_at"]) == (False, None)
    resumed = (await client.post(f"{SCHEDULES}/nightly/resume")).json()
    assert (resumed["enabled"], resumed["next_run_at"]) == (True, body["next_run_at"])

    deleted = await client.delete(f"{SCHEDULES}/nightly")
    assert (deleted.status_code, deleted.content) == (204, b"")
    for method, path in [
        ("GET", f"{SCHEDULES}/nightly"),
        ("DELETE", f"{SCHEDULES}/nightly"),
        ("POST", f"{SCHEDULES}/nightly/pause"),
        ("POST", f"{SCHEDULES}/nightly/resume"),
    ]:
        missing = await client.request(method, path)
        assert missing.status_code == 404, (method, path)
        assert missing.json() == {"detail": "schedule not found: nightly"}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"cron": "0 3 * *"}, "cron", "5 fields"),
        ({"cron": "0 25 * * *"}, "cron", "Bad hour"),
        ({"every": 0}, "every", "greater than or equal to 0.01"),
        ({"every": -1}, "every", "greater than or equal to 0.01"),
        ({}, "every", "one of cron or every is required"),
        ({"cron": "* * * * *", "every": 60}, "every", "not both"),
        ({"every": 60, "timezone": "Europe/Atlantis"}, "timezone", "unknown timezone"),
        ({"every": 60, "task_type": "nope"}, "task_type", "unknown task type 'nope'"),
        ({"every": 60, "name": "two words"}, "name", "pattern"),
        ({"every": 60, "name": "cleanup"}, "name", "exists already"),
        ({"every": 60, "color": "red"}, "color", "Extra inputs"),
    ],
)
async def test_bad_schedules_are_422s_naming_the_field_and_store_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, words: str
) -> None:
    request = {"name": "bad", "task_type": "report", **body}
    response = await client.post(SCHEDULES, json=request)
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", field]
    assert words in problem["msg"]
    assert await names(client) == ["cleanup"]
    assert (await client.get(f"{SCHEDULES}/cleanup")).json()["every"] == 3600


async def test_a_schedule_added_over_http_fires_and_its_tasks_run(
    client: httpx.AsyncClient,
) -> None:
    added = await client.post(
        SCHEDULES,
        json={"name": "quick", "task_type": "report", "every": 0.1, "payload": {"team": "a"}},
    )
    assert added.status_code == 201, added.text
    schedule = await poll(client, f"{SCHEDULES}/quick", lambda s: s["last_task_id"] is not None)
    status = f"/api/v1/background-tasks/status/{schedule['last_task_id']}"
    task = await poll(client, status, lambda t: t["status"] == "completed")
    assert task["result"] == {"for": "a"}
    assert task["metadata"]["schedule"] == "quick"
    await client.post(f"{SCHEDULES}/quick/pause")


def test_the_schedule_routes_are_in_openapi_with_their_answers(
    settings_factory: Callable[..., Settings],
) -> None:
    paths = create_app(settings_factory(), setup=setup).openapi()["paths"]
    expected = {
        (SCHEDULES, "get"): {"200", "401", "503"},
        (SCHEDULES, "post"): {"201", "401", "422", "503"},
        (f"{SCHEDULES}/{{name}}", "get"): {"200", "401", "404", "422", "503"},
        (f"{SCHEDULES}/{{name}}", "delete"): {"204", "401", "404", "422", "503"},
        (f"{SCHEDULES}/{{name}}/pause", "post"): {"200", "401", "404", "422", "503"},
        (f"{SCHEDULES}/{{name}}/resume", "post"): {"200", "401", "404", "422", "503"},
    }
    for (path, method), codes in expected.items():
        documented = set(paths[path][method]["responses"])
        assert codes <= documented, (path, method, documented)
        assert paths[path][method]["tags"] == ["schedules"]
