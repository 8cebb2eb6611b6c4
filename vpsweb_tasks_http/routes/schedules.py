"""Schedules: list, add, read, pause, resume and delete (each call one manager method)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request, Response

from vpsweb_tasks.schedules import ScheduleDefinition

from ..deps import state_of
from ..schemas import ErrorResponse, ScheduleListResponse, ScheduleRequest, ScheduleResponse
from ._shared import TASKS, guarded

__all__ = ["group"]

group = guarded(TASKS, "schedules")

Name = Annotated[
    str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$", description="Its name")
]

#: The answer to a name no schedule has.
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No schedule of that name"}
}


@group.get("/schedules", summary="List schedules with their next run")
async def list_schedules(request: Request) -> ScheduleListResponse:
    state = state_of(request)
    found = await state.manager.list_schedules()
    return ScheduleListResponse(schedules=[ScheduleResponse.of(s) for s in found], count=len(found))


@group.post("/schedules", status_code=201, summary="Add a schedule (cron or interval)")
async def add_schedule(body: ScheduleRequest, request: Request) -> ScheduleResponse:
    """Stored at once; every worker on the database fires it, each tick once. An invalid
    definition (cron, every, timezone...), a taken name or an unregistered task type is a
    422 whose detail names the field; nothing is stored then."""
    state = state_of(request)
    definition = ScheduleDefinition.model_validate(body.model_dump(exclude={"name"}))
    return ScheduleResponse.of(await state.manager.add_schedule(body.name, definition))


@group.get("/schedules/{name}", summary="Get one schedule", responses=NOT_FOUND)
async def get_schedule(name: Name, request: Request) -> ScheduleResponse:
    state = state_of(request)
    return ScheduleResponse.of(await state.manager.get_schedule(name))


@group.post("/schedules/{name}/pause", summary="Pause a schedule", responses=NOT_FOUND)
async def pause_schedule(name: Name, request: Request) -> ScheduleResponse:
    state = state_of(request)
    return ScheduleResponse.of(await state.manager.pause_schedule(name))


@group.post(
    "/schedules/{name}/resume",
    summary="Resume a schedule from its next tick",
    responses=NOT_FOUND,
)
async def resume_schedule(name: Name, request: Request) -> ScheduleResponse:
    state = state_of(request)
    return ScheduleResponse.of(await state.manager.resume_schedule(name))


@group.delete(
    "/schedules/{name}",
    status_code=204,
    summary="Delete a schedule (one defined in code or config returns at the next start)",
    responses=NOT_FOUND,
    response_class=Response,
)
async def delete_schedule(name: Name, request: Request) -> Response:
    state = state_of(request)
    await state.manager.delete_schedule(name)
    return Response(status_code=204)
