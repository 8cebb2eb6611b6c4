"""The links in submit answers (``status_url`` etc.) point at the routes wherever the app is
served: under a proxy's ``root_path``, mounted into another app, or included with a prefix.
They are built from the request's own URL; each is checked against Starlette's own
``url_path_for`` and followed."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from vpsweb_tasks import TaskContext, TaskManager, TaskMonitor
from vpsweb_tasks.config import Settings
from vpsweb_tasks.translation import TranslationExtension
from vpsweb_tasks_http import create_app, create_router

from .llm_server import fake_llm
from .test_translation import DOCUMENT_REQUEST, provider

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"


def register(manager: TaskManager) -> None:
    @manager.task("noop")
    async def noop(context: TaskContext) -> None:
        return None


async def test_links_of_an_app_mounted_under_a_prefix_behind_a_proxy(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(background_tasks={"enabled": False})
    app = create_app(settings, setup=register)
    outer = FastAPI()
    outer.mount("/ops", app)
    # As uvicorn --root-path /proxy passes it: the full path, and the proxy's prefix.
    transport = httpx.ASGITransport(app=outer, root_path="/proxy")
    async with (
        app.state.manager,
        httpx.AsyncClient(transport=transport, base_url="https://example.org") as client,
    ):
        response = await client.post(
            f"/proxy/ops{TASKS}/submit", json={"task_name": "t", "task_type": "noop"}
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        expected = outer.url_path_for("task_status", task_id=task_id)
        assert expected == f"/ops{TASKS}/status/{task_id}"
        status_url = response.json()["status_url"]
        assert status_url == f"https://example.org/proxy{expected}"
        status = await client.get(status_url)
        assert status.status_code == 200, status.text
        assert status.json()["task_id"] == task_id


async def test_links_of_the_router_included_with_a_prefix(
    settings_factory: Callable[..., Settings],
) -> None:
    manager = TaskManager(settings_factory(background_tasks={"enabled": False}))
    register(manager)
    monitor = TaskMonitor(manager)
    vpsweb = FastAPI()
    vpsweb.include_router(create_router(manager, monitor), prefix="/tasks-api")
    transport = httpx.ASGITransport(app=vpsweb)
    async with manager, httpx.AsyncClient(transport=transport, base_url="http://vpsweb") as client:
        response = await client.post(
            f"/tasks-api{TASKS}/submit?unused=1", json={"task_name": "t", "task_type": "noop"}
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        expected = vpsweb.url_path_for("task_status", task_id=task_id)
        assert response.json()["status_url"] == f"http://vpsweb{expected}"
        assert expected == f"/tasks-api{TASKS}/status/{task_id}"
        assert (await client.get(response.json()["status_url"])).status_code == 200


async def test_translation_links_of_a_mounted_app(
    settings_factory: Callable[..., Settings],
) -> None:
    async with fake_llm() as llm:
        settings = settings_factory(background_tasks={"enabled": False}, providers=provider(llm))
        app = create_app(settings)
        outer = FastAPI()
        outer.mount("/ops", app)
        transport = httpx.ASGITransport(app=outer)
        async with (
            app.state.manager,
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            one = await client.post(f"/ops{TASKS}/translation", json=DOCUMENT_REQUEST)
            assert one.status_code == 202, one.text
            batch = await client.post(
                f"/ops{TASKS}/translation/batch",
                json={"requests": [DOCUMENT_REQUEST, DOCUMENT_REQUEST]},
            )
            assert batch.status_code == 202, batch.text
            jobs = [one.json(), *batch.json()["jobs"]]
            assert len({job["job_id"] for job in jobs}) == 3
            for job in jobs:
                for key, name in (
                    ("status_url", "translation_status"),
                    ("result_url", "translation_result"),
                    ("events_url", "translation_events"),
                ):
                    path = outer.url_path_for(name, job_id=job["job_id"])
                    assert job[key] == f"http://test{path}"
                status = await client.get(job["status_url"])
                assert status.status_code == 200, status.text
                assert status.json()["job_id"] == job["job_id"]


def test_the_routes_are_flat(settings_factory: Callable[..., Settings]) -> None:
    # An included router is matched again at each level of nesting on every request
    # (FastAPI 0.165): our routes sit directly on the app's router, in the documented order.
    from fastapi.routing import APIRoute

    app = create_app(settings_factory())
    ours = [route for route in app.router.routes if isinstance(route, APIRoute)]
    assert len(ours) == len([r for r in app.router.routes if hasattr(r, "path")]) - 5
    assert all(hasattr(route, "path") for route in app.router.routes)
    paths = [route.path for route in ours]
    assert paths[:2] == [f"{TASKS}/health", "/api/v1/monitoring/health"]
    assert paths.index(f"{TASKS}/submit") < paths.index(f"{TASKS}/status/{{task_id}}")
    manager = TaskManager(settings_factory(), extensions=[TranslationExtension()])
    router = create_router(manager, TaskMonitor(manager))
    assert all(isinstance(route, APIRoute) for route in router.routes)
    assert {route.path for route in router.routes} == {
        path for path in paths if path.startswith("/api/")
    } | {"/metrics"}
