"""How long a process's store waits for SQLite's write lock: its ``BEGIN IMMEDIATE``
calls and, where the checkout has one, the side lock's hand-off before them (wall time).

``install(path)`` patches this process (sqlite3's connections, the database thread) and
appends ``{"wait": seconds, "begins": count}`` as one JSON line to ``path`` at exit; used by
``ab.py --split`` in both of its processes. Benchmarks only.
"""

from __future__ import annotations

import atexit
import functools
import json
import sqlite3
import time
from typing import Any

spent = {"wait": 0.0, "begins": 0}


def _timed(fn: Any) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent["wait"] += time.perf_counter() - started

    return call


class _Connection(sqlite3.Connection):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql == "BEGIN IMMEDIATE":
            spent["begins"] += 1
            started = time.perf_counter()
            try:
                return super().execute(sql, *args)
            finally:
                spent["wait"] += time.perf_counter() - started
        return super().execute(sql, *args)


def install(path: str) -> None:
    from vpsweb_tasks.storage._dbthread import DatabaseThread

    sqlite3.connect = functools.partial(sqlite3.connect, factory=_Connection)  # type: ignore[assignment]
    take = getattr(DatabaseThread, "_take_handoff", None)
    if take is not None:
        DatabaseThread._take_handoff = _timed(take)  # type: ignore[method-assign]

    def report() -> None:
        with open(path, "a") as file:
            file.write(json.dumps(spent) + "\n")

    atexit.register(report)
