"""Task management: submit, status, the active and finished lists, statistics, cancel."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import Query, Request, Response

from vpsweb_tasks import TaskDefinition, TaskStatus

from .._routing import group_url
from ..deps import state_of
from ..schemas import (
    DependencyResponse,
    ExecutionResponse,
    StatisticsResponse,
    SubmitTaskRequest,
    SubmitTaskResponse,
    TaskDetailResponse,
    TaskListResponse,
    TaskResponse,
)
from ._shared import (
    REPLAYED,
    TASKS,
    IdempotencyKeyHeader,
    Limit,
    Offset,
    TaskId,
    guarded,
    replayed,
    task_list,
)

__all__ = ["group"]

group = guarded(TASKS, "background tasks")


@group.post("/submit", status_code=202, responses=REPLAYED, summary="Submit a new background task")
async def submit(
    body: SubmitTaskRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SubmitTaskResponse:
    """202: stored. With an `Idempotency-Key` header that an earlier submit of the same
    body used: 200 (and `Idempotent-Replayed: true`) with that submit's task, nothing new
    stored; the key with another body: 422 naming the header."""
    state = state_of(request)
    definition = TaskDefinition(
        name=body.task_name,
        task_type=body.task_type,
        priority=body.priority,
        max_retries=body.max_retries,
        timeout_seconds=body.timeout_seconds,
        metadata=body.metadata,
        delay=body.delay_seconds,
        run_at=body.run_at,
        idempotency_key=idempotency_key,
        queue=body.queue,
        depends_on=tuple(body.depends_on),
        on_dependency_failure=body.on_dependency_failure,
        concurrency_key=body.concurrency_key,
        max_lost_attempts=body.max_lost_attempts,
    )
    context = await state.manager.submit(definition, body.task_type, **body.payload)
    record = await context.wait_stored()
    if context.replayed:
        replayed(response)
    return SubmitTaskResponse(
        task_id=record.id,
        status=record.status,
        task_type=record.task_type,
        priority=record.priority,
        created_at=record.created_at,
        status_url=f"{group_url(request, '/submit')}/status/{quote(record.id, safe='')}",
    )


@group.get("/status/{task_id}", name="task_status", summary="Get task status and progress")
async def status(task_id: TaskId, request: Request) -> TaskDetailResponse:
    state = state_of(request)
    record = await state.manager.get_task(task_id)
    # The store's own call: manager.list_executions would read the task a second time.
    executions = await state.manager.store.list_executions(task_id)
    dependencies: dict[str, TaskStatus | None] = {}
    if record.depends_on:
        dependencies = await state.manager.dependencies(task_id)
    return TaskDetailResponse.of(
        record,
        executions=[ExecutionResponse.of(e) for e in executions],
        dependencies=[
            DependencyResponse(task_id=dep, status=status) for dep, status in dependencies.items()
        ],
        waiting_on=[
            dep
            for dep, status in dependencies.items()
            if status is not None and not status.is_terminal
        ]
        if record.waiting_on_dependencies
        else [],
    )


@group.get("/active", summary="List all active tasks (waiting and running)")
async def active(request: Request, limit: Limit = 100, offset: Offset = 0) -> TaskListResponse:
    state = state_of(request)
    waiting = [TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.RETRYING]
    return await task_list(state.manager, waiting, limit, offset, "created_desc")


@group.get("/completed", summary="List finished tasks, most recent first")
async def completed(
    request: Request,
    limit: Limit = 100,
    offset: Offset = 0,
    status: Annotated[
        list[Literal["completed", "failed", "cancelled"]] | None,
        Query(description="Any of completed, failed, cancelled (default: all three)"),
    ] = None,
) -> TaskListResponse:
    state = state_of(request)
    finished = [TaskStatus(s) for s in status or ("completed", "failed", "cancelled")]
    return await task_list(state.manager, finished, limit, offset, "finished_desc")


@group.get("/statistics", summary="Get comprehensive task statistics")
async def statistics(request: Request) -> StatisticsResponse:
    state = state_of(request)
    return StatisticsResponse.of(await state.monitor.statistics())


@group.post("/cancel/{task_id}", summary="Cancel a waiting or running task")
async def cancel(task_id: TaskId, request: Request) -> TaskResponse:
    """The answer says which happened. `status` `cancelled`: the task was waiting, or it
    ran in this server's process and has stopped. Or `cancel_requested` true with the
    task's status (`running`): a worker process runs it, and stops it as soon as it hears
    of the request; the task then ends `cancelled` (or `completed`, if its work had
    already returned). A task that already finished answers 409."""
    state = state_of(request)
    return TaskResponse.of(await state.manager.cancel(task_id))
