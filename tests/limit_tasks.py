"""Task handlers for the rate-limit tests, loaded by real worker processes with
``vpsweb-tasks worker --import tests.limit_tasks`` (their config names the limit ``llm``).

``lim_llm`` makes one chat call to the loopback LLM server at the payload's ``url`` and
reports the call's token usage; its type consumes rate limit ``llm`` at every claim.
``lim_user`` sleeps for the payload's ``seconds`` and appends ``START <task_id>
<monotonic>`` to ``$LIMIT_TASKS_LOG``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import httpx

from vpsweb_tasks import TaskContext, get_task_manager

manager = get_task_manager()
#: One client for the process, made at import: the first call pays no client setup, so
#: the time from a claim to its call is steady.
client = httpx.AsyncClient(timeout=10)


@manager.task("lim_llm", rate_limits=["llm"])
async def lim_llm(context: TaskContext) -> dict[str, Any]:
    answer = await client.post(
        f"{context.payload['url']}/chat/completions",
        json={"model": "m-initial", "messages": [{"role": "user", "content": "hi"}]},
    )
    answer.raise_for_status()
    usage = answer.json().get("usage") or {}
    await context.report_tokens(int(usage.get("total_tokens", 0)))
    return {"n": context.payload["n"]}


@manager.task("lim_user")
async def lim_user(context: TaskContext) -> None:
    fd = os.open(os.environ["LIMIT_TASKS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"START {context.task_id} {time.monotonic()}\n".encode())
    finally:
        os.close(fd)
    await anyio.sleep(float(context.payload["seconds"]))
