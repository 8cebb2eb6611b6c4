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


if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} <task_id>  (a task id, as submit_task.py prints it)")
progress = asyncio.run(monitor_task(sys.argv[1]))
if "progress" not in progress:
    sys.exit(f"server said: {progress.get('detail', progress)}")
print(f"Task progress: {progress['progress']:.1%} - {progress['message']}")
