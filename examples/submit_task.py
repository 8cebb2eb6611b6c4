"""The design document's "Submitting a Background Task" example, against a running server
(`vpsweb-tasks serve`). The built-in `data_processing` type converts `data/data.csv` (in
the server's data folder) to JSON; this script writes a small data.csv there first so the
task has something real to do when server and script share a working folder.
"""

import asyncio
import csv
from pathlib import Path

import httpx
from _server import BASE_URL

rows = [{"poem_id": i, "title": f"Poem {i}", "lines": 4 * i} for i in range(1, 101)]
Path("data").mkdir(exist_ok=True)
with Path("data/data.csv").open("w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


async def submit_task():
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{BASE_URL}/api/v1/background-tasks/submit",
            json={
                "task_name": "Data Processing Task",
                "task_type": "data_processing",
                "priority": "normal",
                "max_retries": 3,
                "timeout_seconds": 300,
                "metadata": {"source_file": "data.csv", "output_format": "json"},
            },
        )
        return response.json()


result = asyncio.run(submit_task())
print(f"Task submitted: {result['task_id']}")
