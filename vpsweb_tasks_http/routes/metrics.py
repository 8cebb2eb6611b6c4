"""The Prometheus route (its path is create_router's ``metrics_path``; the exposition text
is built in :mod:`vpsweb_tasks_http.metrics`)."""

from __future__ import annotations

from fastapi import Request, Response

from ..deps import state_of
from ..metrics import render_metrics
from ._shared import guarded

__all__ = ["group"]

#: Added with the metrics path as its prefix.
group = guarded()


@group.get("", tags=["monitoring"], summary="Prometheus metrics", response_class=Response)
async def prometheus(request: Request) -> Response:
    state = state_of(request)
    body, content_type = await render_metrics(state.manager, state.monitor)
    return Response(content=body, media_type=content_type)
