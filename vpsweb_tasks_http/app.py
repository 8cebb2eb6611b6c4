"""``create_app()``: the API, workers and monitor in one FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

import vpsweb_tasks
from vpsweb_tasks import Settings, TaskManager, TaskMonitor, load_config
from vpsweb_tasks.translation import TranslationExtension

from .dashboard import mount_dashboard
from .deps import RouterState
from .routes import add_routes

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    manager: TaskManager | None = None,
    monitor: TaskMonitor | None = None,
    setup: Callable[[TaskManager], None] | None = None,
) -> FastAPI:
    """A FastAPI app whose lifespan starts and stops the manager (workers, unless
    ``background_tasks.enabled`` is false) and the monitor. Without a ``manager``, one is
    made with the translation extension installed. ``setup(manager)`` runs before start,
    to register task types. ``app.state`` holds ``manager``, ``monitor`` and
    ``vpsweb_tasks``, the routes' :class:`~vpsweb_tasks_http.deps.RouterState`."""
    settings = settings or (manager.settings if manager else load_config())
    manager = manager or TaskManager(settings, extensions=[TranslationExtension()])
    monitor = monitor or TaskMonitor(manager)
    if setup is not None:
        setup(manager)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with manager, monitor:
            yield

    app = FastAPI(
        title="vpsweb-tasks",
        version=vpsweb_tasks.__version__,
        description="Durable background tasks: submit, follow, cancel; queue and monitoring.",
        lifespan=lifespan,
        max_body_size=settings.http.max_request_bytes,
    )
    api_key = settings.http.resolved_api_key()
    state = RouterState.create(
        manager,
        monitor,
        api_key=api_key,
        queue_full_retry_after=settings.http.queue_full_retry_after,
        storage_retry_after=settings.http.storage_retry_after,
    )
    app.state.manager = manager
    app.state.monitor = monitor
    app.state.vpsweb_tasks = state
    add_routes(app.router, state)  # onto app.router itself: no included router to match through

    mount_dashboard(app, api_key_required=api_key is not None)

    @app.get("/", include_in_schema=False, response_model=None)
    async def index(request: Request) -> HTMLResponse | JSONResponse:
        links: dict[str, Any] = {
            "name": "vpsweb-tasks",
            "version": vpsweb_tasks.__version__,
            "dashboard": "/dashboard/",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "api": ["/api/v1/background-tasks", "/api/v1/monitoring"],
            "metrics": "/metrics",
        }
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(_INDEX_HTML)
        return JSONResponse(links)

    return app


_INDEX_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vpsweb-tasks</title></head>
<body style="font-family: system-ui, sans-serif; margin: 2rem">
<h1>vpsweb-tasks {vpsweb_tasks.__version__}</h1>
<ul>
<li><a href="dashboard/">Dashboard</a></li>
<li><a href="docs">API documentation</a> (<a href="openapi.json">OpenAPI</a>)</li>
<li><a href="metrics">Prometheus metrics</a></li>
</ul>
</body></html>
"""
