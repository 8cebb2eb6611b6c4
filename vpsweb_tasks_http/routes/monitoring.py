"""Monitoring: the summary, resource history, task statistics, progress and history,
breakers, alerts, resources, and starting and stopping the monitor."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query, Request

from ..deps import state_of
from ..schemas import (
    AlertResponse,
    AlertsResponse,
    BreakerResponse,
    BreakersResponse,
    LimitsResponse,
    MonitoringStateResponse,
    PerformanceResponse,
    ProgressHistoryResponse,
    ProgressPoint,
    ProgressResponse,
    QueueStatusResponse,
    ResourcesResponse,
    StatisticsResponse,
    SummaryResponse,
)
from ._shared import MONITORING, Limit, TaskId, guarded
from .health import health_now

__all__ = ["group"]

group = guarded(MONITORING, "monitoring")


@group.get("/summary", summary="Complete monitoring summary")
async def summary(request: Request) -> SummaryResponse:
    state = state_of(request)
    monitor = state.monitor
    health = await health_now(monitor)
    sample = monitor.latest_sample
    return SummaryResponse(
        health=health,
        statistics=StatisticsResponse.of(await monitor.statistics()),
        queue=QueueStatusResponse.of(await state.manager.queue_status()),
        resources=None if sample is None else ResourcesResponse.of(sample),
        breakers=monitor.breaker_states,
        monitoring=monitor.running,
    )


@group.get("/metrics/performance", summary="Performance (resource) metrics history")
async def performance(
    request: Request,
    since: Annotated[float | None, Query(description="Epoch seconds", allow_inf_nan=False)] = None,
    limit: Limit = 1000,
) -> PerformanceResponse:
    state = state_of(request)
    samples = await state.monitor.resource_history(since=since, limit=limit)
    return PerformanceResponse(
        samples=[ResourcesResponse.of(s) for s in samples], count=len(samples)
    )


@group.get("/tasks/statistics", summary="Task statistics")
async def task_statistics(request: Request) -> StatisticsResponse:
    state = state_of(request)
    return StatisticsResponse.of(await state.monitor.statistics())


@group.get("/tasks/{task_id}/progress", summary="Task progress information")
async def task_progress(task_id: TaskId, request: Request) -> ProgressResponse:
    state = state_of(request)
    return ProgressResponse.of(await state.monitor.task_progress(task_id))


@group.get("/tasks/{task_id}/history", summary="Task progress history")
async def task_history(
    task_id: TaskId, request: Request, limit: Limit = 1000
) -> ProgressHistoryResponse:
    state = state_of(request)
    history = await state.monitor.task_history(task_id, limit=limit)
    return ProgressHistoryResponse(task_id=task_id, history=[ProgressPoint.of(s) for s in history])


@group.get("/breakers", summary="Circuit breakers and their states")
async def breakers(request: Request) -> BreakersResponse:
    state = state_of(request)
    stats = [BreakerResponse.of(s) for s in state.manager.breakers.statistics().values()]
    return BreakersResponse(breakers=stats, open=sum(b.state != "closed" for b in stats))


@group.get("/limits", summary="Rate limits, concurrency keys and retry budgets")
async def limits(request: Request) -> LimitsResponse:
    """Each rate limit with its config and its keys' shared state (next free slot, tokens
    left, usage by key), the running bound per concurrency key with the running tasks per
    key, and the retry budgets with their recent calls and retries."""
    state = state_of(request)
    return LimitsResponse.model_validate(await state.manager.limits_state())


@group.get("/alerts", summary="Current alert status")
async def alerts(request: Request) -> AlertsResponse:
    state = state_of(request)
    monitor = state.monitor
    await monitor.health()
    current = [AlertResponse.of(alert) for alert in monitor.alerts]
    critical = sum(alert.level == "critical" for alert in current)
    return AlertsResponse(
        alerts=current, count=len(current), critical=critical, warning=len(current) - critical
    )


@group.get("/system/resources", summary="System resource usage")
async def resources(request: Request) -> ResourcesResponse:
    state = state_of(request)
    sample = await state.monitor.sample() or state.monitor.latest_sample
    if sample is None:
        raise HTTPException(
            503, "resource monitoring is disabled (system_resources.enable_resource_monitoring)"
        )
    return ResourcesResponse.of(sample)


@group.post("/start", summary="Start monitoring system")
async def start_monitoring(request: Request) -> MonitoringStateResponse:
    state = state_of(request)
    await state.monitor.start()
    return MonitoringStateResponse(monitoring=state.monitor.running)


@group.post("/stop", summary="Stop monitoring system")
async def stop_monitoring(request: Request) -> MonitoringStateResponse:
    state = state_of(request)
    await state.monitor.stop()
    return MonitoringStateResponse(monitoring=state.monitor.running)
