"""A 30-second tour: real tasks at several priorities on the embedded SQLite default.

Run it from the repository root:

    python examples/quickstart.py

It registers three task types that do real work (count primes in a worker thread, hash
this repository's files, compute word frequencies of a poem), submits a mix of them at
every priority plus the built-in ``backup`` and ``maintenance`` tasks, and prints each
progress update and outcome as it happens. One task fails on its first attempt to show a
durable retry. Everything is stored in ``quickstart.db``; logs go to
``logs/repository.log`` (``grep task_id:<id> logs/repository.log`` tells one task's story).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from vpsweb_tasks import (
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskPriority,
    load_config,
)
from vpsweb_tasks.events import Event, TaskFailed, TaskProgressed, TaskStarted

POEM = """\
Because I could not stop for Death -
He kindly stopped for me -
The Carriage held but just Ourselves -
And Immortality.
We slowly drove - He knew no haste
And I had put away
My labor and my leisure too,
For His Civility -
"""

ROOT = Path(__file__).resolve().parent.parent


def count_primes(lo: int, hi: int) -> int:
    return sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, math.isqrt(n) + 1)))


async def primes(context: TaskContext) -> dict[str, Any]:
    limit = int(context.payload["limit"])
    chunks = 8
    total = 0
    for i in range(chunks):
        lo, hi = limit * i // chunks, limit * (i + 1) // chunks
        total += await anyio.to_thread.run_sync(count_primes, lo, hi)
        await context.update_progress((i + 1) / chunks, f"checked numbers below {hi:,}")
    return {"limit": limit, "primes": total}


async def hash_files(context: TaskContext) -> dict[str, Any]:
    if context.payload.get("flaky") and context.attempt == 1:
        raise ConnectionError("simulated network hiccup: the queue will retry this")
    files = sorted(p for p in (ROOT / "vpsweb_tasks").rglob("*.py"))
    digest = hashlib.sha256()
    for i, path in enumerate(files, 1):
        digest.update(await anyio.Path(path).read_bytes())
        await context.update_progress(i / len(files), f"hashed {path.name}")
    return {"files": len(files), "sha256": digest.hexdigest()[:16]}


async def word_frequencies(context: TaskContext) -> dict[str, Any]:
    words = [w.strip(",.-").lower() for w in context.payload["text"].split()]
    await context.update_progress(0.5, f"{len(words)} words read")
    top = Counter(w for w in words if len(w) > 3).most_common(3)
    await context.update_progress(1.0, "counted")
    return {"words": len(words), "top": top}


def show(event: Event) -> None:
    stamp = time.strftime("%H:%M:%S")
    # A UUIDv7 starts with its timestamp (the same for tasks submitted together): its
    # random tail tells them apart.
    short = "…" + (event.task_id or "")[-8:]
    if isinstance(event, TaskStarted):
        print(f"{stamp} {short} started   (attempt {event.attempt}, {event.task_type})")
    elif isinstance(event, TaskProgressed) and event.update is not None:
        bar = "#" * round(event.update.progress * 20)
        print(f"{stamp} {short} [{bar:<20}] {event.update.progress:4.0%} {event.update.message}")
    elif isinstance(event, TaskFailed):
        retry = "will retry" if event.will_retry else "dead-lettered"
        print(f"{stamp} {short} failed    ({event.category}: {event.error_message}; {retry})")


async def main() -> None:
    settings = load_config(
        storage={"sqlite_path": "quickstart.db"},
        background_tasks={"max_concurrent_jobs": 3, "retry_delay": 1.0},
    )
    async with TaskManager(settings) as manager:
        manager.register("primes", primes)
        manager.register("hash_files", hash_files)
        manager.register("word_frequencies", word_frequencies)
        manager.events.add_listener(show)

        await manager.pause()  # submit everything first, so priorities decide the order
        submitted = [
            await manager.submit(
                TaskDefinition(name="Count primes", task_type="primes", priority=TaskPriority.LOW),
                limit=200_000,
            ),
            await manager.submit(
                TaskDefinition(name="Hash the code", task_type="hash_files", max_retries=2),
                flaky=True,
            ),
            await manager.submit(
                TaskDefinition(
                    name="Word frequencies",
                    task_type="word_frequencies",
                    priority=TaskPriority.CRITICAL,
                ),
                text=POEM,
            ),
            await manager.submit(
                TaskDefinition(
                    name="Back up the queue", task_type="backup", priority=TaskPriority.HIGH
                ),
                path="backups/quickstart.db",
            ),
            await manager.submit(
                TaskDefinition(
                    name="Maintenance", task_type="maintenance", priority=TaskPriority.LOW
                )
            ),
        ]
        print(f"submitted {len(submitted)} tasks; dispatching by priority\n")
        await manager.resume()

        records = [await context.wait(timeout=120) for context in submitted]
        print("\noutcomes:")
        for record in records:
            outcome = record.result if record.result is not None else record.error_message
            if isinstance(outcome, dict) and "checkpoint" in outcome:
                outcome = {"integrity": outcome["integrity"], "after": outcome["after"]}
            print(
                f"  {record.name:<18} {record.priority:<8} {record.status:<9}"
                f" attempts={record.attempts} {outcome}"
            )
        status = await manager.queue_status()
        print(
            f"\nqueue: {status.pending} pending, {status.running} running; database quickstart.db"
        )


if __name__ == "__main__":
    anyio.run(main)
