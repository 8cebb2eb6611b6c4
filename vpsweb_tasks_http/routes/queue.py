"""The queue: its status, its waiting and running tasks, clear, pause and resume."""

from __future__ import annotations

from vpsweb_tasks import TaskStatus

from ..deps import Authorised
from ..schemas import ClearResponse, PauseRequest, QueueStatusResponse, TaskListResponse
from ._shared import TASKS, Limit, Offset, guarded, task_list

__all__ = ["group"]

group = guarded(TASKS, "background tasks")


@group.get("/queue/status", summary="Get queue status and information")
async def queue_status(state: Authorised) -> QueueStatusResponse:
    return QueueStatusResponse.of(await state.manager.queue_status())


@group.get("/queue/tasks", summary="List queued tasks in dispatch order")
async def queue_tasks(
    state: Authorised, limit: Limit = 100, offset: Offset = 0
) -> TaskListResponse:
    waiting = [TaskStatus.PENDING, TaskStatus.RETRYING]
    return await task_list(state.manager, waiting, limit, offset, "dispatch")


@group.get("/queue/running", summary="List running tasks")
async def queue_running(
    state: Authorised, limit: Limit = 100, offset: Offset = 0
) -> TaskListResponse:
    return await task_list(state.manager, [TaskStatus.RUNNING], limit, offset, "created_desc")


@group.post("/queue/clear", summary="Cancel all pending and retrying tasks")
async def queue_clear(state: Authorised) -> ClearResponse:
    return ClearResponse(cancelled=await state.manager.clear())


@group.post("/queue/pause", summary="Pause queue processing (running tasks go on)")
async def queue_pause(state: Authorised, body: PauseRequest | None = None) -> QueueStatusResponse:
    await state.manager.pause(reason=body.reason if body else None)
    return QueueStatusResponse.of(await state.manager.queue_status())


@group.post("/queue/resume", summary="Resume queue processing")
async def queue_resume(state: Authorised) -> QueueStatusResponse:
    await state.manager.resume()
    return QueueStatusResponse.of(await state.manager.queue_status())
