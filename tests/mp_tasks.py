"""Task handlers for the multi-process tests, loaded by real worker processes with
``vpsweb-tasks worker --import tests.mp_tasks``.

Every run appends lines to the file named by ``$MP_TASKS_LOG`` (one ``os.write`` of a
short line to an ``O_APPEND`` file, so lines of concurrent processes never interleave):
``START <task_id> <pid>`` when a run begins, ``DONE <task_id> <pid>`` when it returns,
``STOPPED <task_id> <pid>`` when it is cancelled. The test reads them to count runs.
``mp_gated`` reports to the test over a socket instead (see tests/test_cancel_race.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import anyio

from vpsweb_tasks import TaskContext, get_task_manager

manager = get_task_manager()


def record(word: str, task_id: str) -> None:
    fd = os.open(os.environ["MP_TASKS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{word} {task_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@manager.task("mp_work")
async def mp_work(context: TaskContext) -> dict[str, Any]:
    """Sleeps for the payload's ``seconds``: short random work."""
    record("START", context.task_id)
    await anyio.sleep(float(context.payload["seconds"]))
    record("DONE", context.task_id)
    return {"n": context.payload["n"]}


@manager.task("mp_block")
async def mp_block(context: TaskContext) -> None:
    """Runs until cancelled."""
    record("START", context.task_id)
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        record("STOPPED", context.task_id)
        raise


@manager.task("mp_loop")
async def mp_loop(context: TaskContext) -> str:
    """The class of the event loop this worker runs on, as ``module.Name``."""
    loop = type(asyncio.get_running_loop())
    return f"{loop.__module__}.{loop.__qualname__}"


@manager.task("mp_gc")
async def mp_gc(context: TaskContext) -> dict[str, int]:
    """The garbage collector as this worker left it: the youngest generation's threshold
    and the objects frozen out of collections."""
    return {"young": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}


@manager.task("mp_gated")
async def mp_gated(context: TaskContext) -> int:
    """Connects to the test's gate (``port``), says its task id, and works until the gate
    releases it (``x``) or, once the gate said go (``g``), ``seconds`` pass, its natural
    end; it says ``DONE`` before it returns. Cancelled, it closes the connection without a
    word."""
    async with await anyio.connect_tcp("127.0.0.1", int(context.payload["port"])) as gate:
        await gate.send(f"{context.task_id}\n".encode())
        if await gate.receive(1) == b"g":
            with anyio.move_on_after(float(context.payload["seconds"])):
                await gate.receive(1)
        await gate.send(b"DONE\n")
    return int(context.payload["n"])


@manager.task("mp_flow")
async def mp_flow(context: TaskContext) -> dict[str, Any]:
    """A step of a flow: returns its ``name`` and what its dependencies returned
    (``dependency_results``: their names, by id). Blocks until the file ``release``
    names exists, when it names one (a step the test kills its worker in)."""
    record("START", context.task_id)
    release = context.payload.get("release")
    while release is not None and not await anyio.Path(release).exists():  # noqa: ASYNC110
        await anyio.sleep(0.02)  # the test's file, made by another process: polled
    await anyio.sleep(float(context.payload.get("seconds", 0.0)))
    record("DONE", context.task_id)
    saw = {dep: result["name"] for dep, result in context.dependency_results.items()}
    return {"name": context.payload["name"], "saw": saw}
