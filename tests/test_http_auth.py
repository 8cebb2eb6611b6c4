"""The API key fails closed: a configured key that cannot be read stops the server before
it serves; a key is compared as UTF-8 bytes; only the routes the README lists are open."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.routing import Mount

from vpsweb_tasks import TaskManager, TaskMonitor
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks_http import RouteGroup, RouterState, create_app, create_router
from vpsweb_tasks_http.deps import route_class

from .http_server import serve

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parent.parent / "README.md"

#: Every route (path, as the app declares it) that answers without the key.
OPEN = {
    "/api/v1/background-tasks/health",
    "/api/v1/monitoring/health",
    "/dashboard",
    "/dashboard/",
    "/",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_key_variable_that_cannot_be_read_stops_the_app(
    value: str | None,
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if value is None:
        monkeypatch.delenv("TASKS_KEY_NOT_SET", raising=False)
    else:
        monkeypatch.setenv("TASKS_KEY_NOT_SET", value)
    settings = settings_factory(http={"api_key_env": "TASKS_KEY_NOT_SET"})
    with pytest.raises(ConfigError, match=r"http\.api_key_env: environment variable TASKS_KEY"):
        create_app(settings)


@pytest.mark.parametrize(
    ("key", "why"),
    [("", "blank"), ("   ", "blank"), (" key", "whitespace"), ("a\nb", "control characters")],
)
def test_a_key_no_client_could_send_is_refused(
    key: str, why: str, settings_factory: Callable[..., Settings]
) -> None:
    with pytest.raises(ConfigError, match=rf"http\.api_key: .*{why}"):
        create_app(settings_factory(http={"api_key": key}))
    manager = TaskManager(settings_factory())
    with pytest.raises(ValueError, match=why):
        create_router(manager, TaskMonitor(manager), api_key=key)


def test_serve_does_not_start_when_its_key_cannot_be_read(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPSWEB_TASKS_")}
    env.pop("VPSWEB_TEST_MISSING_KEY", None)
    env["VPSWEB_TASKS_HTTP__API_KEY_ENV"] = "VPSWEB_TEST_MISSING_KEY"
    done = subprocess.run(
        [sys.executable, "-m", "vpsweb_tasks.cli", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "VPSWEB_TEST_MISSING_KEY is unset or empty" in done.stderr
    assert "Traceback" not in done.stderr
    assert "startup" not in done.stderr  # uvicorn never started


async def test_a_non_ascii_key_matches_when_sent_as_utf8(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "clé-ключ-鍵"
    monkeypatch.setenv("TASKS_KEY", key)
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    status = "/api/v1/background-tasks/queue/status"
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        sent = await client.get(status, headers={"X-API-Key": key.encode()})
        assert sent.status_code == 200, sent.text
        # What the old check matched (the UTF-8 of the header read as latin-1) no longer does.
        mangled = key.encode().decode("latin-1").encode()
        for wrong in (mangled, "cle-ключ-鍵".encode(), b"cl\xe9"):
            assert (await client.get(status, headers={"X-API-Key": wrong})).status_code == 401


async def test_only_the_routes_the_readme_lists_are_open(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKS_KEY", "s3cret")
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    requests: list[tuple[str, str, str]] = []  # (method, declared path, URL)
    for route in app.routes:
        if isinstance(route, Mount):
            requests.append(("GET", route.path, route.path + "/"))
            continue
        path: str = getattr(route, "path")  # noqa: B009
        url = re.sub(r"\{[^}]+\}", "x", path)
        methods = route.methods if isinstance(route, APIRoute) else {"GET"}
        requests += [(method, path, url) for method in methods or {"GET"} if method != "HEAD"]
    assert len(requests) > 40  # every route group is mounted
    answered_open = set()
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for method, path, url in requests:
            response = await client.request(method, url)
            if response.status_code != 401:
                answered_open.add(path)
            else:
                assert response.headers["www-authenticate"] == "X-API-Key"
    assert answered_open == OPEN
    # The README's auth paragraph names each open route.
    paragraph = README.read_text().split("With an API key configured", 1)[1].split("\n\n")[0]
    for path in OPEN - {"/"}:
        assert f"`{path}" in paragraph, path


async def test_a_stream_without_the_key_says_nothing_of_the_task(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the token (too long, malformed, empty), a caller without the key gets 401,
    the same for a task that exists and one that does not."""
    monkeypatch.setenv("TASKS_KEY", "s3cret")
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        submitted = await client.post(
            "/api/v1/background-tasks/submit",
            json={"task_name": "a", "task_type": "cleanup"},
            headers={"X-API-Key": "s3cret"},
        )
        task_id = submitted.json()["task_id"]
        for token in ("x" * 201, "1.abc", ""):
            for stream in (task_id, "no-such-task"):
                url = f"/api/v1/background-tasks/tasks/{stream}/events"
                denied = await client.get(url, params={"token": token})
                assert denied.status_code == 401, (token[:10], stream, denied.text)


async def test_a_bad_last_event_id_without_the_key_is_401(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last-Event-ID is validated by the stream routes, after their guard: a caller without
    the key learns neither that the header is bad (422) nor whether the task exists (404)."""
    monkeypatch.setenv("TASKS_KEY", "s3cret")
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    tasks = "/api/v1/background-tasks"
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        submitted = await client.post(
            f"{tasks}/submit",
            json={"task_name": "a", "task_type": "cleanup", "delay_seconds": 600},
            headers={"X-API-Key": "s3cret"},
        )
        task_id = submitted.json()["task_id"]
        for url in (
            f"{tasks}/tasks/{task_id}/events",
            f"{tasks}/tasks/no-such-task/events",
            f"{tasks}/tasks/%00/events",
            f"{tasks}/translation/{task_id}/events",
            f"{tasks}/translation/no-such-job/events",
            "/api/v1/monitoring/events",
        ):
            for value in ("abc", "", "-1"):
                for params in ({}, {"token": "1.abc"}):
                    denied = await client.get(url, params=params, headers={"Last-Event-ID": value})
                    assert denied.status_code == 401, (url, value, params, denied.text)
            # With the key, the same header is a 422 (or the task's 404), never a stream.
            answered = await client.get(
                url, headers={"Last-Event-ID": "abc", "X-API-Key": "s3cret"}
            )
            assert answered.status_code in (404, 422), (url, answered.text)


async def test_a_caller_without_the_key_learns_nothing_of_its_body(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is checked before the body is read: a body that cannot be parsed, or that
    names no task type, is a 401 without the key (and the 422 or 404 only with it)."""
    monkeypatch.setenv("TASKS_KEY", "s3cret")
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    submit = "/api/v1/background-tasks/submit"
    bodies = [b"{not json", b'{"task_name": "a", "task_type": "cleanup", "priority": 7}']
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for body in bodies:
            for key in ({}, {"X-API-Key": "wrong"}):
                headers = {"content-type": "application/json", **key}
                denied = await client.post(submit, content=body, headers=headers)
                assert denied.status_code == 401, (body, key, denied.text)
                assert denied.json() == {"detail": "missing or wrong X-API-Key"}
            headers = {"content-type": "application/json", "X-API-Key": "s3cret"}
            answered = await client.post(submit, content=body, headers=headers)
            assert answered.status_code == 422, answered.text


def test_a_group_behind_the_key_needs_a_route_class_that_checks_it(
    settings_factory: Callable[..., Settings],
) -> None:
    """Fails closed: a group behind the key added with a route class that would not check
    the key is refused, not served open."""
    group = RouteGroup(prefix="/x", api_key=True)

    @group.get("/y")
    async def endpoint() -> dict[str, str]:
        return {}

    with pytest.raises(TypeError, match="api_key=True"):
        group.add_to(APIRouter())
    manager = TaskManager(settings_factory())
    state = RouterState.create(manager, TaskMonitor(manager), api_key="k")
    router = APIRouter()
    group.add_to(router, route_class=route_class(state))
    [route] = router.routes
    assert isinstance(route, APIRoute)
    assert route.openapi_extra is not None
    assert [p["name"] for p in route.openapi_extra["parameters"]] == ["x-api-key"]
