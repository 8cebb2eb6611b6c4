"""The routes of the document's tables, plus live events. Each route is one core call.

``create_router(manager, monitor)`` returns one APIRouter holding
``/api/v1/background-tasks/...`` and ``/api/v1/monitoring/...``, all its routes directly on
it (no nested routers); include it in any FastAPI app. Library errors become HTTP errors
here (each route carries its own route class, so the mapping works in an app that is not
ours): unknown id 404, wrong state 409, invalid input 422 naming the field, queue full 429
with Retry-After, not started (or translations not configured) 503. The translation routes
are in ``translation.py``.

(No ``from __future__ import annotations`` here: FastAPI resolves route annotations at
definition time, and some refer to dependencies local to :func:`create_router`.)
"""

import hmac
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, ServerSentEvent

from vpsweb_tasks import (
    TaskDefinition,
    TaskManager,
    TaskMonitor,
    TaskStatus,
)
from vpsweb_tasks.errors import ErrorCategory
from vpsweb_tasks.events import SubscriberLagged
from vpsweb_tasks.models import to_datetime

from . import sse
from ._routing import RouteGroup, group_url
from .auth import StreamTokens
from .errors import GUARDED_RESPONSES, LIBRARY_ERRORS, OPEN_RESPONSES, error_response
from .metrics import render_metrics
from .schemas import (
    AlertResponse,
    AlertsResponse,
    BreakerResponse,
    BreakersResponse,
    ClearResponse,
    ExecutionResponse,
    HealthResponse,
    MonitoringStateResponse,
    PauseRequest,
    PerformanceResponse,
    ProgressHistoryResponse,
    ProgressPoint,
    ProgressResponse,
    QueueStatusResponse,
    RequeueRequest,
    RequeueResponse,
    ResourcesResponse,
    StatisticsResponse,
    StreamTokenResponse,
    SubmitTaskRequest,
    SubmitTaskResponse,
    SummaryResponse,
    TaskDetailResponse,
    TaskListResponse,
    TaskResponse,
)
from .translation import create_translation_router

__all__ = ["create_router"]

TASKS_PREFIX = "/api/v1/background-tasks"
MONITORING_PREFIX = "/api/v1/monitoring"

TaskId = Annotated[str, Path(min_length=1, max_length=100, description="The task's id")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


def _route_class(retry_after: int) -> type[APIRoute]:
    class LibraryErrorsRoute(APIRoute):
        """Maps the library's exceptions to HTTP answers."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except LIBRARY_ERRORS as exc:
                    return error_response(exc, retry_after=retry_after)

            return route

    return LibraryErrorsRoute


def create_router(
    manager: TaskManager,
    monitor: TaskMonitor,
    *,
    api_key: str | None = None,
    queue_full_retry_after: int = 5,
    metrics_path: str | None = "/metrics",
    stream_token_ttl: float = 60.0,
    router: APIRouter | None = None,
) -> APIRouter:
    """The API of one manager and its monitor. With ``api_key``, every route but the two
    health checks requires header ``X-API-Key`` (compared in constant time); the two event
    streams also accept ``?token=`` from ``POST /api/v1/monitoring/stream-token``, valid for
    ``stream_token_ttl`` seconds, since a browser's EventSource cannot send headers."""
    tokens = StreamTokens(api_key, ttl=stream_token_ttl)

    expected_key = api_key.encode() if api_key is not None else None

    def check_running() -> None:
        if not manager.running:
            raise HTTPException(503, "the task manager is not running yet")

    def check_key(x_api_key: str | None) -> None:
        if expected_key is None:
            return
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected_key):
            raise HTTPException(
                401, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "X-API-Key"}
            )

    # Each guard is one dependency (key, then running: 401 before 503), not two: FastAPI
    # solves, caches and validates every dependency of every request on its own.
    async def running() -> None:
        check_running()

    async def authorised(x_api_key: Annotated[str | None, Header()] = None) -> None:
        check_key(x_api_key)
        check_running()

    async def stream_authorised(
        x_api_key: Annotated[str | None, Header()] = None,
        token: Annotated[
            str | None,
            Query(max_length=200, description="A token from POST .../monitoring/stream-token"),
        ] = None,
    ) -> None:
        if not (token is not None and expected_key is not None and tokens.valid(token)):
            check_key(x_api_key)
        check_running()

    route_class = _route_class(queue_full_retry_after)
    errors = OPEN_RESPONSES
    guarded_errors = GUARDED_RESPONSES
    router = router if router is not None else APIRouter()
    public = RouteGroup(route_class=route_class, dependencies=[Depends(running)], responses=errors)
    guarded = [Depends(authorised)]

    def guarded_group(prefix: str, tag: str, guard: Callable[..., Any]) -> RouteGroup:
        return RouteGroup(
            prefix=prefix,
            tags=[tag],
            route_class=route_class,
            dependencies=[Depends(guard)],
            responses=guarded_errors,
        )

    tasks = guarded_group(TASKS_PREFIX, "background tasks", authorised)
    monitoring = guarded_group(MONITORING_PREFIX, "monitoring", authorised)
    # The event streams: X-API-Key or a stream token.
    task_streams = guarded_group(TASKS_PREFIX, "background tasks", stream_authorised)
    monitoring_streams = guarded_group(MONITORING_PREFIX, "monitoring", stream_authorised)

    async def health_now() -> HealthResponse:
        if monitor.latest_sample is None:
            await monitor.sample()
        return HealthResponse.of(await monitor.health())

    # --- health (no API key) ----------------------------------------------------------------

    @public.get(f"{TASKS_PREFIX}/health", tags=["background tasks"], summary="System health check")
    async def tasks_health() -> HealthResponse:
        return await health_now()

    @public.get(
        f"{MONITORING_PREFIX}/health", tags=["monitoring"], summary="Current system health status"
    )
    async def monitoring_health() -> HealthResponse:
        return await health_now()

    # --- task management ----------------------------------------------------------------------

    @tasks.post("/submit", status_code=202, summary="Submit a new background task")
    async def submit(body: SubmitTaskRequest, request: Request) -> SubmitTaskResponse:
        definition = TaskDefinition(
            name=body.task_name,
            task_type=body.task_type,
            priority=body.priority,
            max_retries=body.max_retries,
            timeout_seconds=body.timeout_seconds,
            metadata=body.metadata,
            delay=body.delay_seconds,
        )
        context = await manager.submit(definition, body.task_type, **body.payload)
        record = await context.wait_stored()
        return SubmitTaskResponse(
            task_id=record.id,
            status=record.status,
            task_type=record.task_type,
            priority=record.priority,
            created_at=record.created_at,
            status_url=f"{group_url(request, '/submit')}/status/{quote(record.id, safe='')}",
        )

    @tasks.get("/status/{task_id}", name="task_status", summary="Get task status and progress")
    async def status(task_id: TaskId) -> TaskDetailResponse:
        record = await manager.get_task(task_id)
        # The store's own call: manager.list_executions would read the task a second time.
        executions = await manager.store.list_executions(task_id)
        return TaskDetailResponse.of(
            record, executions=[ExecutionResponse.of(e) for e in executions]
        )

    async def listing(
        statuses: list[TaskStatus], limit: int, offset: int, order: str
    ) -> TaskListResponse:
        records = await manager.list_tasks(
            statuses=statuses, limit=limit, offset=offset, order=order
        )
        return TaskListResponse.of(records, limit=limit, offset=offset)

    @tasks.get("/active", summary="List all active tasks (waiting and running)")
    async def active(limit: Limit = 100, offset: Offset = 0) -> TaskListResponse:
        waiting = [TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.RETRYING]
        return await listing(waiting, limit, offset, "created_desc")

    @tasks.get("/completed", summary="List finished tasks, most recent first")
    async def completed(
        limit: Limit = 100,
        offset: Offset = 0,
        status: Annotated[
            list[Literal["completed", "failed", "cancelled"]] | None,
            Query(description="Any of completed, failed, cancelled (default: all three)"),
        ] = None,
    ) -> TaskListResponse:
        finished = [TaskStatus(s) for s in status or ("completed", "failed", "cancelled")]
        return await listing(finished, limit, offset, "finished_desc")

    @tasks.get("/statistics", summary="Get comprehensive task statistics")
    async def statistics() -> StatisticsResponse:
        return StatisticsResponse.of(await monitor.statistics())

    @tasks.post("/cancel/{task_id}", summary="Cancel a waiting or running task")
    async def cancel(task_id: TaskId) -> TaskResponse:
        return TaskResponse.of(await manager.cancel(task_id))

    # --- queue ------------------------------------------------------------------------------

    @tasks.get("/queue/status", summary="Get queue status and information")
    async def queue_status() -> QueueStatusResponse:
        return QueueStatusResponse.of(await manager.queue_status())

    @tasks.get("/queue/tasks", summary="List queued tasks in dispatch order")
    async def queue_tasks(limit: Limit = 100, offset: Offset = 0) -> TaskListResponse:
        return await listing([TaskStatus.PENDING, TaskStatus.RETRYING], limit, offset, "dispatch")

    @tasks.get("/queue/running", summary="List running tasks")
    async def queue_running(limit: Limit = 100, offset: Offset = 0) -> TaskListResponse:
        return await listing([TaskStatus.RUNNING], limit, offset, "created_desc")

    @tasks.post("/queue/clear", summary="Cancel all pending and retrying tasks")
    async def queue_clear() -> ClearResponse:
        return ClearResponse(cancelled=await manager.clear())

    @tasks.post("/queue/pause", summary="Pause queue processing (running tasks go on)")
    async def queue_pause(body: PauseRequest | None = None) -> QueueStatusResponse:
        await manager.pause(reason=body.reason if body else None)
        return QueueStatusResponse.of(await manager.queue_status())

    @tasks.post("/queue/resume", summary="Resume queue processing")
    async def queue_resume() -> QueueStatusResponse:
        await manager.resume()
        return QueueStatusResponse.of(await manager.queue_status())

    # --- dead letter queue ---------------------------------------------------------------------

    @tasks.get("/dead-letters", summary="Tasks in the dead letter queue, most recent first")
    async def dead_letters(
        limit: Limit = 100,
        offset: Offset = 0,
        category: ErrorCategory | None = None,
        task_type: Annotated[str | None, Query(max_length=100)] = None,
    ) -> TaskListResponse:
        records = await manager.list_dead_letters(
            category=category, task_type=task_type, limit=limit, offset=offset
        )
        return TaskListResponse.of(records, limit=limit, offset=offset)

    @tasks.get("/dead-letters/{task_id}", summary="A dead-lettered task and every attempt's error")
    async def dead_letter(task_id: TaskId) -> TaskDetailResponse:
        letter = await manager.dead_letter(task_id)
        return TaskDetailResponse.of(
            letter.task, executions=[ExecutionResponse.of(e) for e in letter.executions]
        )

    @tasks.post("/dead-letters/{task_id}/requeue", summary="Put one failed task back in the queue")
    async def requeue(task_id: TaskId) -> TaskResponse:
        return TaskResponse.of(await manager.requeue(task_id))

    @tasks.post(
        "/dead-letters/requeue", summary="Requeue every failed task (of a category or type)"
    )
    async def requeue_all(body: RequeueRequest | None = None) -> RequeueResponse:
        body = body or RequeueRequest()
        count = await manager.requeue_all(category=body.category, task_type=body.task_type)
        return RequeueResponse(requeued=count)

    # --- live events --------------------------------------------------------------------------

    async def existing_task(task_id: TaskId) -> str:
        """Answers 404 before a stream starts, rather than inside it."""
        await manager.get_task(task_id)
        return task_id

    @monitoring.post(
        "/stream-token",
        summary="A short-lived token for the event streams (?token=), for EventSource",
    )
    async def stream_token() -> StreamTokenResponse:
        token, expires = tokens.issue()
        return StreamTokenResponse(
            token=token, expires_at=to_datetime(expires), expires_in=tokens.ttl
        )

    @task_streams.get(
        "/tasks/{task_id}/events",
        response_class=EventSourceResponse,
        summary="Server-sent events of one task: its state now, then every change until it ends",
    )
    async def task_events(
        task_id: Annotated[str, Depends(existing_task)],
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        start = sse.resume_point(last_event_id, None)
        hub = manager.events
        # Subscribe first, then read the state: nothing can fall between the two.
        async with hub.subscribe(after=start if start is not None else hub.last_id) as stream:
            now = await monitor.task_progress(task_id)
            yield sse.task_status(now)
            if now.status.is_terminal:
                return
            async for event in stream:
                if event.task_id != task_id:
                    continue
                yield sse.hub_event(event)
                if event.kind in sse.FINAL_EVENTS:
                    return

    @monitoring_streams.get(
        "/events",
        response_class=EventSourceResponse,
        summary="Server-sent events of everything; reconnect with Last-Event-ID to resume",
    )
    async def all_events(
        last_event_id: Annotated[str | None, Header()] = None,
        after: Annotated[int | None, Query(ge=0, description="Resume after this event id")] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        start = sse.resume_point(last_event_id, after)
        try:
            async with monitor.subscribe(after=start) as stream:
                async for event in stream:
                    yield sse.hub_event(event)
        except SubscriberLagged as lagged:
            yield sse.reset(lagged, now=manager.events.last_id)

    # --- monitoring ---------------------------------------------------------------------------

    @monitoring.get("/summary", summary="Complete monitoring summary")
    async def summary() -> SummaryResponse:
        health = await health_now()
        sample = monitor.latest_sample
        return SummaryResponse(
            health=health,
            statistics=StatisticsResponse.of(await monitor.statistics()),
            queue=QueueStatusResponse.of(await manager.queue_status()),
            resources=None if sample is None else ResourcesResponse.of(sample),
            breakers=monitor.breaker_states,
            monitoring=monitor.running,
        )

    @monitoring.get("/metrics/performance", summary="Performance (resource) metrics history")
    async def performance(
        since: Annotated[float | None, Query(description="Epoch seconds")] = None,
        limit: Limit = 1000,
    ) -> PerformanceResponse:
        samples = await monitor.resource_history(since=since, limit=limit)
        return PerformanceResponse(
            samples=[ResourcesResponse.of(s) for s in samples], count=len(samples)
        )

    @monitoring.get("/tasks/statistics", summary="Task statistics")
    async def task_statistics() -> StatisticsResponse:
        return StatisticsResponse.of(await monitor.statistics())

    @monitoring.get("/tasks/{task_id}/progress", summary="Task progress information")
    async def task_progress(task_id: TaskId) -> ProgressResponse:
        return ProgressResponse.of(await monitor.task_progress(task_id))

    @monitoring.get("/tasks/{task_id}/history", summary="Task progress history")
    async def task_history(task_id: TaskId, limit: Limit = 1000) -> ProgressHistoryResponse:
        history = await monitor.task_history(task_id, limit=limit)
        return ProgressHistoryResponse(
            task_id=task_id, history=[ProgressPoint.of(s) for s in history]
        )

    @monitoring.get("/breakers", summary="Circuit breakers and their states")
    async def breakers() -> BreakersResponse:
        stats = [BreakerResponse.of(s) for s in manager.breakers.statistics().values()]
        return BreakersResponse(breakers=stats, open=sum(b.state != "closed" for b in stats))

    @monitoring.get("/alerts", summary="Current alert status")
    async def alerts() -> AlertsResponse:
        await monitor.health()
        current = [AlertResponse.of(alert) for alert in monitor.alerts]
        critical = sum(alert.level == "critical" for alert in current)
        return AlertsResponse(
            alerts=current, count=len(current), critical=critical, warning=len(current) - critical
        )

    @monitoring.get("/system/resources", summary="System resource usage")
    async def resources() -> ResourcesResponse:
        sample = await monitor.sample() or monitor.latest_sample
        if sample is None:
            raise HTTPException(
                503, "resource monitoring is disabled (system_resources.enable_resource_monitoring)"
            )
        return ResourcesResponse.of(sample)

    @monitoring.post("/start", summary="Start monitoring system")
    async def start_monitoring() -> MonitoringStateResponse:
        await monitor.start()
        return MonitoringStateResponse(monitoring=monitor.running)

    @monitoring.post("/stop", summary="Stop monitoring system")
    async def stop_monitoring() -> MonitoringStateResponse:
        await monitor.stop()
        return MonitoringStateResponse(monitoring=monitor.running)

    public.add_to(router)
    create_translation_router(
        manager,
        route_class=route_class,
        dependencies=guarded,
        responses=guarded_errors,
        prefix=TASKS_PREFIX,
        router=router,
    )
    for group in (tasks, monitoring, task_streams, monitoring_streams):
        group.add_to(router)
    if metrics_path is not None:
        metrics = RouteGroup(
            route_class=route_class, dependencies=guarded, responses=guarded_errors
        )

        @metrics.get(
            metrics_path, tags=["monitoring"], summary="Prometheus metrics", response_class=Response
        )
        async def prometheus() -> Response:
            body, content_type = await render_metrics(manager, monitor)
            return Response(content=body, media_type=content_type)

        metrics.add_to(router)
    return router
