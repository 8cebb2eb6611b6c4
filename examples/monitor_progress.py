"""The design document's "Monitoring Task Progress" example. Usage:

python examples/monitor_progress.py <task_id>
"""

import asyncio
import sys

import httpx
from _server import BASE_URL


async def monitor_task(task_id):
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{BASE_URL}/api/v1/monitoring/tasks/{task_id}/progress")
        return response.json()


progress = asyncio.run(monitor_task(sys.argv[1] if len(sys.argv) > 1 else "task_id_here"))
if "progress" not in progress:
    sys.exit(f"no such task: {progress}")
print(f"Task progress: {progress['progress']:.1%} - {progress['message']}")
