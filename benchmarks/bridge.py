"""What a database job costs the event loop, by how its caller waits for the answer.

    .venv/bin/python benchmarks/bridge.py [--jobs 50000] [--callers 16] [--repeat 3]

16 callers each send jobs to one thread, which answers them a batch at a time with one
call into the loop (as the SQLite store's database thread does), and wait for their
answers. Printed: the event loop's CPU per job when callers wait on an anyio event made
by the loop's backend (what the store does: anyio from end to end), on one made by
``anyio.Event()``, and on an asyncio future (what the store did before). The thread does
no work, so the figures are the bridge alone.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel

KINDS = ("anyio event (backend)", "anyio.Event()", "asyncio future")


async def run(kind: str, jobs: int, callers: int) -> float:
    """Loop CPU seconds per job."""
    token = anyio.lowlevel.current_token()
    loop = asyncio.get_running_loop()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def answer(batch: list[Any]) -> None:
        for waiter in batch:
            if kind == "asyncio future":
                waiter.set_result(None)
            else:
                waiter.set()

    def worker() -> None:
        while (first := inbox.get()) is not None:
            batch = [first]
            while True:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            if kind == "asyncio future":
                loop.call_soon_threadsafe(answer, batch)
            else:
                token.backend_class.run_sync_soon(answer, (batch,), token.native_token)

    thread = threading.Thread(target=worker)
    thread.start()

    async def one() -> None:
        if kind == "asyncio future":
            future = loop.create_future()
            inbox.put(future)
            await future
        else:
            event = (
                token.backend_class.create_event()
                if kind == "anyio event (backend)"
                else anyio.Event()
            )
            inbox.put(event)
            await event.wait()

    async def caller() -> None:
        for _ in range(jobs // callers):
            await one()

    started = time.thread_time()
    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    spent = time.thread_time() - started
    inbox.put(None)
    thread.join()
    return spent / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spent: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeat):  # interleaved
        for kind in KINDS:
            spent[kind].append(anyio.run(run, kind, args.jobs, args.callers))
    print(f"{args.jobs:,} jobs from {args.callers} callers, {args.repeat} interleaved runs")
    print(f"{'waiting on':<24} {'loop CPU per job (median)':>26}")
    for kind in KINDS:
        print(f"{kind:<24} {statistics.median(spent[kind]) * 1e6:>23.2f} us")


if __name__ == "__main__":
    main()
