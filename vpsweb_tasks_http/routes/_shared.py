"""What the route modules share: the prefixes, parameter types, a group's defaults."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Query, Response

from vpsweb_tasks import TaskManager, TaskStatus
from vpsweb_tasks.models import IdempotencyKey, TaskTypeName
from vpsweb_tasks.validation import storable

from .._routing import RouteGroup
from ..errors import GUARDED_RESPONSES
from ..schemas import TaskListResponse

__all__ = [
    "MONITORING",
    "REPLAYED",
    "TASKS",
    "IdempotencyKeyHeader",
    "LastEventId",
    "Limit",
    "Offset",
    "TaskId",
    "TaskTypeFilter",
    "guarded",
    "replayed",
    "task_list",
]

TASKS = "/api/v1/background-tasks"
MONITORING = "/api/v1/monitoring"

# Every string parameter is text storage can hold (vpsweb_tasks.validation): a NUL or a
# lone surrogate in an id or a filter is a 422 naming it, on every backend.
TaskId = Annotated[str, Path(min_length=1, max_length=100, description="The task's id"), storable]
TaskTypeFilter = Annotated[TaskTypeName | None, Query(description="Only tasks of this type")]
#: The ``Last-Event-ID`` header of a stream: the id of the last event the client saw.
#: A parameter of the route, never of its guard: a parameter that fails there would make
#: FastAPI skip the guard (and a task's 404 answer a caller without the key).
LastEventId = Annotated[
    int | None,
    Header(ge=0, description="Resume after this event id (sent by EventSource on reconnect)"),
]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]
#: Header ``Idempotency-Key`` of a POST that creates tasks or jobs (the IETF httpapi
#: draft): a repeat with the same key and body answers 200 with the first submit's ids.
IdempotencyKeyHeader = Annotated[
    IdempotencyKey | None,
    Header(
        alias="Idempotency-Key",
        description="Makes the submit safe to repeat: a repeat with this key and the same"
        " body answers 200 with the first submit's task (nothing new is stored), as long as"
        " the task is retained; the key with another body is a 422. 1-255 visible ASCII"
        " characters (a UUID, say).",
    ),
]

#: The answer of a submit that repeated an earlier one's Idempotency-Key.
REPLAYED = {
    200: {"description": "A repeat of an earlier submit's Idempotency-Key: its task or jobs"}
}


def replayed(response: Response) -> None:
    """Marks the answer as a replay: 200 (not 202) and ``Idempotent-Replayed: true``."""
    response.status_code = 200
    response.headers["Idempotent-Replayed"] = "true"


def guarded(prefix: str = "", tag: str | None = None) -> RouteGroup:
    """A group of routes behind the API key (checked by their route class; each endpoint
    reads its state with :func:`..deps.state_of`), documenting their error answers."""
    return RouteGroup(
        prefix=prefix,
        tags=[] if tag is None else [tag],
        responses=GUARDED_RESPONSES,
        api_key=True,
    )


async def task_list(
    manager: TaskManager, statuses: list[TaskStatus], limit: int, offset: int, order: str
) -> TaskListResponse:
    records = await manager.list_tasks(statuses=statuses, limit=limit, offset=offset, order=order)
    return TaskListResponse.of(records, limit=limit, offset=offset)
