"""The two health checks, open (no API key): 503 until the manager runs."""

from __future__ import annotations

from vpsweb_tasks import TaskMonitor

from .._routing import RouteGroup
from ..deps import Open
from ..errors import OPEN_RESPONSES
from ..schemas import HealthResponse
from ._shared import MONITORING, TASKS

__all__ = ["group", "health_now"]

group = RouteGroup(responses=OPEN_RESPONSES)


async def health_now(monitor: TaskMonitor) -> HealthResponse:
    """The health report, on a resource sample taken now if none was taken yet."""
    if monitor.latest_sample is None:
        await monitor.sample()
    return HealthResponse.of(await monitor.health())


@group.get(f"{TASKS}/health", tags=["background tasks"], summary="System health check")
async def tasks_health(state: Open) -> HealthResponse:
    return await health_now(state.monitor)


@group.get(f"{MONITORING}/health", tags=["monitoring"], summary="Current system health status")
async def monitoring_health(state: Open) -> HealthResponse:
    return await health_now(state.monitor)
