"""The dashboard's server side: the page and its files, and stream tokens for EventSource.
(The page itself is exercised in a real browser in test_dashboard_browser.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import FakeClock
from vpsweb_tasks import TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app, mount_dashboard
from vpsweb_tasks_http.auth import StreamTokens
from vpsweb_tasks_http.dashboard import STATIC_DIR

from .http_server import serve

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"
MONITORING = "/api/v1/monitoring"


def meta(page: str, name: str) -> str:
    match = re.search(rf'<meta name="{name}" content="([^"]*)">', page)
    assert match is not None, name
    return match.group(1)


async def test_the_page_its_files_and_the_link_from_the_root(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = await client.get("/dashboard/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert (meta(page.text, "vpsweb-api-base"), meta(page.text, "vpsweb-api-key")) == ("", "")
        assert meta(page.text, "vpsweb-features") == ""  # no translation routes here
        redirect = await client.get("/dashboard")
        assert (redirect.status_code, redirect.headers["location"]) == (
            307,
            "http://test/dashboard/",
        )
        # Every module and stylesheet the page loads is served, with a type browsers accept.
        for name in sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in (".js", ".css")):
            response = await client.get(f"/dashboard/{name}")
            assert response.status_code == 200, name
            expected = "text/javascript" if name.endswith(".js") else "text/css"
            assert response.headers["content-type"].startswith(expected), name
        assert (await client.get("/dashboard/nope.js")).status_code == 404
        # No third-party host anywhere: the page must work offline.
        for path in STATIC_DIR.iterdir():
            assert not re.search(
                r"(src|href)=\"https?:|import .*https?:|url\(https?:", path.read_text()
            ), path
        root = await client.get("/", headers={"accept": "text/html"})
        assert 'href="dashboard/"' in root.text
        assert (await client.get("/")).json()["dashboard"] == "/dashboard/"


async def test_the_page_asks_for_the_key_when_the_server_has_one(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKS_KEY", "k")
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = await client.get("/dashboard/")  # the page itself is public: it holds no data
        assert meta(page.text, "vpsweb-api-key") == "required"


async def test_mounted_under_a_prefix_and_with_translation_routes(
    settings_factory: Callable[..., Settings],
) -> None:
    inner = FastAPI()

    @inner.get(f"/tasks-api{TASKS}/translation/{{job_id}}")
    async def job(job_id: str) -> dict[str, str]:
        return {"job_id": job_id}

    mount_dashboard(inner, "/ops/", api_base="/tasks-api/")
    outer = FastAPI()
    outer.mount("/vpsweb", inner)
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = (await client.get("/vpsweb/ops/")).text
        assert meta(page, "vpsweb-api-base") == "/vpsweb/tasks-api"
        assert meta(page, "vpsweb-features") == "translation"
        assert (await client.get("/vpsweb/ops/app.js")).status_code == 200


def test_stream_tokens_expire_and_cannot_be_forged(clock: FakeClock) -> None:
    tokens = StreamTokens("key", ttl=60, clock=clock)
    token, expires = tokens.issue()
    assert expires == clock.now + 60
    assert tokens.valid(token)
    clock.advance(59.9)
    assert tokens.valid(token)
    clock.advance(0.1)
    assert not tokens.valid(token)  # expired
    token, _ = tokens.issue()
    expiry, _, signature = token.partition(".")
    assert not tokens.valid(f"{int(expiry) + 3600}.{signature}")  # a longer life is not signed
    flipped = signature[:-1] + ("1" if signature.endswith("0") else "0")
    assert not tokens.valid(f"{expiry}.{flipped}")
    assert not tokens.valid(signature)
    assert not tokens.valid("")
    assert not tokens.valid("-1.abc")
    assert not StreamTokens("other key", clock=clock).valid(token)  # keys do not share tokens
    assert StreamTokens("key", clock=clock).valid(token)  # but survive a restart


async def test_event_streams_accept_a_stream_token_and_nothing_else_does(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKS_KEY", "s3cret")
    app = create_app(settings_factory(http={"api_key_env": "TASKS_KEY"}))
    manager: TaskManager = app.state.manager
    key = {"X-API-Key": "s3cret"}
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        assert (await client.post(f"{MONITORING}/stream-token")).status_code == 401
        issued = await client.post(f"{MONITORING}/stream-token", headers=key)
        assert issued.status_code == 200
        body = issued.json()
        assert body["expires_in"] == 60
        token = body["token"]

        submitted = await client.post(
            f"{TASKS}/submit", json={"task_name": "t", "task_type": "cleanup"}, headers=key
        )
        task_id = submitted.json()["task_id"]
        await manager.wait(task_id, timeout=10)
        events = f"{TASKS}/tasks/{task_id}/events"
        # The task is over, so its stream is one status event and the end.
        assert (await client.get(events)).status_code == 401
        assert (await client.get(events, params={"token": "1.forged"})).status_code == 401
        streamed = await client.get(events, params={"token": token})
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert '"status": "completed"' in streamed.text
        assert (await client.get(events, headers=key)).status_code == 200  # the key still works

        async with client.stream(
            "GET", f"{MONITORING}/events", params={"token": token, "after": 0}
        ) as everything:
            assert everything.status_code == 200
            with anyio.fail_after(5):  # the stream replays from event 0
                async for line in everything.aiter_lines():
                    if line == "event: task_submitted":
                        break
        assert (await client.get(f"{MONITORING}/events", params={"token": "x"})).status_code == 401

        # A token opens the streams only, never the JSON routes.
        for path in (f"{TASKS}/queue/status", f"{MONITORING}/summary"):
            assert (await client.get(path, params={"token": token})).status_code == 401, path
