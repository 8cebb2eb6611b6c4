"""What the route modules share: the prefixes, parameter types, a group's defaults."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from vpsweb_tasks import TaskManager, TaskStatus

from .._routing import RouteGroup
from ..errors import GUARDED_RESPONSES
from ..schemas import TaskListResponse

__all__ = ["MONITORING", "TASKS", "Limit", "Offset", "TaskId", "guarded", "task_list"]

TASKS = "/api/v1/background-tasks"
MONITORING = "/api/v1/monitoring"

TaskId = Annotated[str, Path(min_length=1, max_length=100, description="The task's id")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


def guarded(prefix: str = "", tag: str | None = None) -> RouteGroup:
    """A group of routes behind the API key (each endpoint takes its state from its guard,
    :mod:`..deps`), documenting their error answers."""
    return RouteGroup(prefix=prefix, tags=[] if tag is None else [tag], responses=GUARDED_RESPONSES)


async def task_list(
    manager: TaskManager, statuses: list[TaskStatus], limit: int, offset: int, order: str
) -> TaskListResponse:
    records = await manager.list_tasks(statuses=statuses, limit=limit, offset=offset, order=order)
    return TaskListResponse.of(records, limit=limit, offset=offset)
