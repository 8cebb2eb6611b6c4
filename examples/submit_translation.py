"""The design document's "Submitting a Translation Job" example, against a running server
(`vpsweb-tasks serve` with a provider configured: see docs/translation.md). With
`--wait`, it then follows the job to its end and prints the final translation.
"""

import asyncio
import sys

import httpx
from _server import BASE_URL


async def submit_translation():
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{BASE_URL}/api/v1/background-tasks/translation",
            json={
                "original_text": "Hello world, how are you?",
                "source_language": "en",
                "target_language": "zh-Hans",
                "workflow_mode": "hybrid",
                "metadata": {"author": "Test Author", "title": "Test Poem"},
            },
        )
        if response.status_code != 202:  # e.g. 503: no LLM provider configured
            sys.exit(f"server said ({response.status_code}): {response.json().get('detail')}")
        return response.json()


async def wait_for(job_id):
    url = f"{BASE_URL}/api/v1/background-tasks/translation/{job_id}"
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", f"{url}/events") as events:
            # The stream VPSWeb's UI listens to: it replays the steps done before it opened.
            async for line in events.aiter_lines():
                if line in ("event: step_start", "event: step_complete", "event: completed"):
                    print(line.removeprefix("event: "))
                if line in ("event: completed", "event: error"):
                    break
        result = await client.get(f"{url}/result")
        return result.json().get("final_translation")


result = asyncio.run(submit_translation())
print(f"Translation job submitted: {result['job_id']}")
if "--wait" in sys.argv:
    print(f"Final translation: {asyncio.run(wait_for(result['job_id']))}")
