"""The dead letter queue: list, inspect and requeue the tasks that failed for good."""

from __future__ import annotations

from fastapi import Request

from vpsweb_tasks.errors import ErrorCategory

from ..deps import state_of
from ..schemas import (
    DeadLetterResponse,
    RequeueRequest,
    RequeueResponse,
    TaskListResponse,
    TaskResponse,
)
from ._shared import TASKS, Limit, Offset, TaskId, TaskTypeFilter, guarded

__all__ = ["group"]

group = guarded(TASKS, "background tasks")


@group.get("/dead-letters", summary="Tasks in the dead letter queue, most recent first")
async def dead_letters(
    request: Request,
    limit: Limit = 100,
    offset: Offset = 0,
    category: ErrorCategory | None = None,
    task_type: TaskTypeFilter = None,
) -> TaskListResponse:
    state = state_of(request)
    records = await state.manager.list_dead_letters(
        category=category, task_type=task_type, limit=limit, offset=offset
    )
    return TaskListResponse.of(records, limit=limit, offset=offset)


@group.get("/dead-letters/{task_id}", summary="A dead-lettered task and every attempt's error")
async def dead_letter(task_id: TaskId, request: Request) -> DeadLetterResponse:
    state = state_of(request)
    return DeadLetterResponse.of_letter(await state.manager.dead_letter(task_id))


@group.post("/dead-letters/{task_id}/requeue", summary="Put one failed task back in the queue")
async def requeue(task_id: TaskId, request: Request) -> TaskResponse:
    state = state_of(request)
    return TaskResponse.of(await state.manager.requeue(task_id))


@group.post("/dead-letters/requeue", summary="Requeue every failed task (of a category or type)")
async def requeue_all(request: Request, body: RequeueRequest | None = None) -> RequeueResponse:
    state = state_of(request)
    body = body or RequeueRequest()
    count = await state.manager.requeue_all(category=body.category, task_type=body.task_type)
    return RequeueResponse(requeued=count)
