"""The Huey side of the benchmarks: a ``SqliteHuey`` whose storage takes a ``synchronous``
pragma, and one no-op task.

Huey's ``SqliteStorage`` only knows ``fsync=True`` (``synchronous=FULL``) and ``fsync=False``
(``OFF``); the benchmarks compare at NORMAL too, so the subclass sets the pragma itself in
``_create_connection``, the hook where huey opens its one connection.

The consumer runs as its own process, as huey is deployed::

    HUEY_BENCH_DB=/path/huey.db HUEY_BENCH_SYNC=NORMAL \\
        python -m huey.bin.huey_consumer huey_app.huey -w 4 -k thread -d 0.001 -m 0.001 -b 1

(from the benchmarks/ folder, so that ``huey_app`` is importable under the same name in the
producer and the consumer: huey names a task ``module.function``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from huey import SqliteHuey
from huey.storage import SqliteStorage

#: Consumer options for "4 worker threads, poll delay 1 ms": a constant 1 ms poll (no
#: back-off growing to huey's default 10 s), no periodic scheduler, warnings only.
CONSUMER_OPTIONS = ["-w", "4", "-k", "thread", "-d", "0.001", "-m", "0.001", "-b", "1", "-n", "-q"]


class PragmaSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """Huey's SQLite storage (WAL, its default) with a chosen ``synchronous`` pragma."""

    def __init__(self, *args: Any, synchronous: str = "NORMAL", **kwargs: Any) -> None:
        self.synchronous = synchronous.upper()
        super().__init__(*args, **kwargs)

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn


class PragmaSqliteHuey(SqliteHuey):  # type: ignore[misc]
    storage_class = PragmaSqliteStorage


def noop() -> None:
    return None


def stamp() -> float:
    """When the task started, on the wall clock shared by the processes."""
    return time.time()


def make_huey(filename: str, synchronous: str) -> PragmaSqliteHuey:
    """A huey on ``filename`` that stores every result (None too), so that the producer can
    count finished tasks in the result store. Register the task with :func:`noop_task`."""
    return PragmaSqliteHuey("bench", filename=filename, synchronous=synchronous, store_none=True)


def noop_task(app: PragmaSqliteHuey) -> Any:
    """The registered no-op of ``app``; calling it enqueues one task."""
    return app.task()(noop)


def stamp_task(app: PragmaSqliteHuey) -> Any:
    """The registered :func:`stamp` of ``app``."""
    return app.task()(stamp)


huey: PragmaSqliteHuey | None = None
if "HUEY_BENCH_DB" in os.environ:  # the consumer process
    huey = make_huey(os.environ["HUEY_BENCH_DB"], os.environ.get("HUEY_BENCH_SYNC", "NORMAL"))
    noop_task(huey)
    stamp_task(huey)
