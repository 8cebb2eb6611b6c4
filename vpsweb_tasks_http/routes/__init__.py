"""The routes of the document's tables, plus live events: one module per route group.

``health`` (open), ``tasks``, ``queue``, ``dead_letters``, ``schedules``, ``streams``
(server-sent events and their tokens), ``monitoring`` and ``metrics``; and the groups of
the manager's extensions (the translation extension's is ``translation``), after the
health checks.
Each module declares its routes once, at module level, in a
:class:`~vpsweb_tasks_http.RouteGroup`; :func:`add_routes` adds every group's routes
directly to one router (no nested routers), in the documented order, with the route class
that binds them to one :class:`RouterState` (:mod:`vpsweb_tasks_http.deps`).
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter

from vpsweb_tasks import TaskManager, TaskMonitor

from .._routing import RouteGroup
from ..deps import RouterState, route_class
from ..metrics import TaskMetrics
from . import dead_letters, health, metrics, monitoring, queue, schedules, streams, tasks

__all__ = ["add_routes", "create_router", "extension_groups"]

#: In the order they are matched (the stream-token route is the first monitoring route);
#: extensions' groups come between the first and the others.
GROUPS = (
    health.group,
    tasks.group,
    queue.group,
    dead_letters.group,
    schedules.group,
    streams.token_group,
    monitoring.group,
    streams.group,
)


def add_routes(
    router: APIRouter, state: RouterState, *, metrics_path: str | None = "/metrics"
) -> APIRouter:
    """Adds the routes of ``state``'s manager and monitor to ``router``, which is returned."""
    bound = route_class(state)
    first, *rest = GROUPS
    for group in (first, *extension_groups(state.manager), *rest):
        group.add_to(router, route_class=bound)
    if metrics_path is not None:
        TaskMetrics.of(state.manager)  # counting from now, before the manager starts
        metrics.group.add_to(router, route_class=bound, prefix=metrics_path)
    return router


def extension_groups(manager: TaskManager) -> list[RouteGroup]:
    """The route groups of the manager's extensions (``Extension.routes``, a
    ``"module:attribute"`` naming a :class:`RouteGroup`), in the order installed."""
    groups = []
    for extension in manager.extensions:
        if extension.routes is not None:
            module, _, name = extension.routes.partition(":")
            group = getattr(importlib.import_module(module), name)
            if not isinstance(group, RouteGroup):
                raise TypeError(f"{extension.routes} is not a vpsweb_tasks_http.RouteGroup")
            groups.append(group)
    return groups


def create_router(
    manager: TaskManager,
    monitor: TaskMonitor,
    *,
    api_key: str | None = None,
    queue_full_retry_after: int = 5,
    storage_retry_after: int = 5,
    metrics_path: str | None = "/metrics",
    stream_token_ttl: float = 60.0,
    router: APIRouter | None = None,
) -> APIRouter:
    """The API of one manager and its monitor. With ``api_key``, every route but the two
    health checks requires header ``X-API-Key`` (compared in constant time); the two event
    streams also accept ``?token=`` from ``POST /api/v1/monitoring/stream-token``, valid for
    ``stream_token_ttl`` seconds, since a browser's EventSource cannot send headers.
    ``queue_full_retry_after`` and ``storage_retry_after`` are the ``Retry-After`` seconds
    of a 429 (queue full) and of a 503 (storage cannot take the write now)."""
    state = RouterState.create(
        manager,
        monitor,
        api_key=api_key,
        queue_full_retry_after=queue_full_retry_after,
        storage_retry_after=storage_retry_after,
        stream_token_ttl=stream_token_ttl,
    )
    return add_routes(
        router if router is not None else APIRouter(), state, metrics_path=metrics_path
    )
