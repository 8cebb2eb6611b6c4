"""The design document's "Getting System Health Status" example."""

import asyncio

import httpx
from _server import BASE_URL


async def get_system_health():
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{BASE_URL}/api/v1/monitoring/health")
        return response.json()


health = asyncio.run(get_system_health())
print(f"System status: {health['status']}")
print(f"CPU usage: {health['cpu_usage']:.1f}%")
print(f"Memory usage: {health['memory_usage']:.1f}%")
print(f"Active tasks: {health['active_tasks']}")
