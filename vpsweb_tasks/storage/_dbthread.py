"""One dedicated thread that owns a SQLite connection and commits in groups.

All database work of a store runs on this thread, in submission order. Jobs that arrive
while a transaction is running are committed together in the next one (group commit):
each job runs inside its own SAVEPOINT, so one job's error rolls back only that job, and
every caller is answered only after the COMMIT that made its change durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Most jobs committed in one transaction; bounds how long one write lock is held.
MAX_GROUP = 256


class Mode(Enum):
    READ = "read"
    """Runs in a read transaction (one consistent snapshot)."""
    WRITE = "write"
    """Runs in a write transaction, grouped with other jobs."""
    ALONE = "alone"
    """Runs outside any transaction (VACUUM, checkpoints, backups)."""


Done = Callable[[Any, BaseException | None], None]


class _Job(Generic[T]):
    __slots__ = ("done", "fn", "mode")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], mode: Mode, done: Done) -> None:
        self.fn = fn
        self.mode = mode
        self.done = done


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the work was done anyway
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class DatabaseThread:
    """Runs ``fn(connection)`` jobs on one thread; see the module docstring."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, name: str) -> None:
        self._connect = connect
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, fn: Callable[[sqlite3.Connection], Any], mode: Mode, done: Done) -> None:
        """Queue a job; ``done(result, error)`` is called on the database thread."""
        if self._closed:
            raise RuntimeError("database thread is closed")
        self._jobs.put(_Job(fn, mode, done))

    async def run(self, fn: Callable[[sqlite3.Connection], T], mode: Mode = Mode.WRITE) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            # RuntimeError: the loop is gone, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, result, error)

        self.submit(fn, mode, done)
        return await future

    def close(self) -> None:
        """Run every queued job, then close the connection and join the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join()

    # --- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                job = self._jobs.get()
                if job is None:
                    break
                batch = [job]
                while len(batch) < MAX_GROUP:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                        break
                    batch.append(more)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        group: list[_Job[Any]] = []
        for job in batch:
            if job.mode is Mode.ALONE:
                self._run_group(conn, group)
                group = []
                self._run_alone(conn, job)
            else:
                group.append(job)
        self._run_group(conn, group)

    @staticmethod
    def _run_alone(conn: sqlite3.Connection, job: _Job[Any]) -> None:
        try:
            result = job.fn(conn)
        except BaseException as exc:
            job.done(None, exc)
        else:
            job.done(result, None)

    @staticmethod
    def _run_group(conn: sqlite3.Connection, group: list[_Job[Any]]) -> None:
        if not group:
            return
        writes = any(job.mode is Mode.WRITE for job in group)
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        except BaseException as exc:
            for job in group:
                job.done(None, exc)
            return
        for job in group:
            conn.execute("SAVEPOINT job")
            try:
                result = job.fn(conn)
            except BaseException as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                outcomes.append((None, exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append((result, None))
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(None, exc)] * len(group)
        for job, (result, error) in zip(group, outcomes, strict=True):
            job.done(result, error)
