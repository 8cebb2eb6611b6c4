"""The queue: its status, its waiting and running tasks, clear, pause and resume."""

from __future__ import annotations

from fastapi import Request

from vpsweb_tasks import TaskStatus

from ..deps import state_of
from ..schemas import ClearResponse, PauseRequest, QueueStatusResponse, TaskListResponse
from ._shared import TASKS, Limit, Offset, guarded, task_list

__all__ = ["group"]

group = guarded(TASKS, "background tasks")


@group.get("/queue/status", summary="Get queue status and information")
async def queue_status(request: Request) -> QueueStatusResponse:
    state = state_of(request)
    return QueueStatusResponse.of(await state.manager.queue_status())


@group.get("/queue/tasks", summary="List queued tasks in dispatch order")
async def queue_tasks(request: Request, limit: Limit = 100, offset: Offset = 0) -> TaskListResponse:
    state = state_of(request)
    waiting = [TaskStatus.PENDING, TaskStatus.RETRYING]
    return await task_list(state.manager, waiting, limit, offset, "dispatch")


@group.get("/queue/running", summary="List running tasks")
async def queue_running(
    request: Request, limit: Limit = 100, offset: Offset = 0
) -> TaskListResponse:
    state = state_of(request)
    return await task_list(state.manager, [TaskStatus.RUNNING], limit, offset, "created_desc")


@group.post("/queue/clear", summary="Cancel all pending and retrying tasks")
async def queue_clear(request: Request) -> ClearResponse:
    state = state_of(request)
    return ClearResponse(cancelled=await state.manager.clear())


@group.post("/queue/pause", summary="Pause queue processing (running tasks go on)")
async def queue_pause(request: Request, body: PauseRequest | None = None) -> QueueStatusResponse:
    state = state_of(request)
    await state.manager.pause(reason=body.reason if body else None)
    return QueueStatusResponse.of(await state.manager.queue_status())


@group.post("/queue/resume", summary="Resume queue processing")
async def queue_resume(request: Request) -> QueueStatusResponse:
    state = state_of(request)
    await state.manager.resume()
    return QueueStatusResponse.of(await state.manager.queue_status())
