"""The live event streams (server-sent events) and the stream tokens that open them.

The streams accept ``X-API-Key`` or a ``?token=`` from ``POST .../monitoring/stream-token``,
since a browser's EventSource cannot send headers (:mod:`..auth`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from vpsweb_tasks.events import SubscriberLagged
from vpsweb_tasks.models import to_datetime

from .. import sse
from .._routing import RouteGroup
from ..deps import StreamAuthorised, state_of
from ..errors import STREAM_RESPONSES
from ..schemas import StreamTokenResponse
from ._shared import MONITORING, TASKS, LastEventId, TaskId, guarded

__all__ = ["group", "token_group"]

#: The stream-token route, behind the API key (it comes first of the monitoring routes).
token_group = guarded(MONITORING, "monitoring")
#: The streams: the API key or a stream token.
group = RouteGroup(responses=STREAM_RESPONSES)


@token_group.post(
    "/stream-token", summary="A short-lived token for the event streams (?token=), for EventSource"
)
async def stream_token(request: Request) -> StreamTokenResponse:
    state = state_of(request)
    tokens = state.tokens
    token, expires = tokens.issue()
    return StreamTokenResponse(token=token, expires_at=to_datetime(expires), expires_in=tokens.ttl)


async def existing_task(task_id: TaskId, request: Request) -> str:
    """Answers 404 before a stream starts, rather than inside it. Solved after the guard;
    it reads the state rather than depending on the guard, which FastAPI would validate
    again (reporting a bad ``?token=`` twice)."""
    await state_of(request).manager.get_task(task_id)
    return task_id


@group.get(
    f"{TASKS}/tasks/{{task_id}}/events",
    tags=["background tasks"],
    response_class=EventSourceResponse,
    summary="Server-sent events of one task: its state now, then every change until it ends",
)
async def task_events(
    state: StreamAuthorised,
    task_id: Annotated[str, Depends(existing_task)],
    last_event_id: LastEventId = None,
) -> AsyncIterator[ServerSentEvent]:
    hub = state.manager.events
    # The first event is the task's state now, so a resume point the hub no longer has
    # (events lost, or an id from before a restart) loses nothing: start from now.
    after = hub.last_id
    if last_event_id is not None and hub.can_resume(last_event_id):
        after = last_event_id
    try:
        # Subscribe first, then read the state: nothing can fall between the two.
        async with hub.subscribe(after=after) as stream:
            now = await state.monitor.task_progress(task_id)
            yield sse.task_status(now)
            if now.status.is_terminal:
                return
            async for event in stream:
                if event.task_id != task_id:
                    continue
                yield sse.hub_event(event)
                if event.kind in sse.FINAL_EVENTS:
                    return
    except SubscriberLagged as lagged:  # fell behind while streaming
        yield sse.reset(lagged, now=hub.last_id)


@group.get(
    f"{MONITORING}/events",
    tags=["monitoring"],
    response_class=EventSourceResponse,
    summary="Server-sent events of everything; reconnect with Last-Event-ID to resume",
)
async def all_events(
    state: StreamAuthorised,
    last_event_id: LastEventId = None,
    after: Annotated[int | None, Query(ge=0, description="Resume after this event id")] = None,
) -> AsyncIterator[ServerSentEvent]:
    start = last_event_id if last_event_id is not None else after
    try:
        async with state.monitor.subscribe(after=start) as stream:
            async for event in stream:
                yield sse.hub_event(event)
    except SubscriberLagged as lagged:
        yield sse.reset(lagged, now=state.manager.events.last_id)
