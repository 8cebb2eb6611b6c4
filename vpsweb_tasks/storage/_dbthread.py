"""One dedicated thread that owns a SQLite connection and commits in groups.

All database work of a SQLite store runs on this thread (anyio's worker threads are a
pool: a capacity limiter of one does not pin a connection to one thread). Jobs that
arrive while a transaction is running are committed together in the next one (group
commit), and every caller is answered only after the COMMIT that made its change
durable.

Jobs of one kind in a group can be combined: ``submit_combined(combine, item)`` queues an
item, and the group calls ``combine`` once with every item of that kind, where the first
of them stood, so a burst of submits is one INSERT instead of one per task. Every job of
a group is still in flight (no caller has been answered), so running some of them earlier
than their turn is an order the callers could have seen anyway.

A group runs without savepoints, optimistically: if any job in it raises, the whole
transaction is rolled back and each job of the group is run again in a transaction of its
own, so one job's error never undoes another's change. Jobs are pure functions of the
database, so running one again is safe. A combined item that fails on its own (a full
queue, a lost lease) is answered with :class:`Refused` instead, so the others still commit.

Callers wait on an anyio event; the thread answers a whole group with one call into the
event loop (the ``EventLoopToken`` of the loop that started the thread: a store is used
from the loop that opened it), not one per job.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .handoff import WriteHandoff

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


#: Runs the items of several jobs in one call and returns one result per item, in order;
#: a :class:`Refused` result is raised to that item's caller alone.
Combine = Callable[[sqlite3.Connection, list[Any]], list[Any]]


@dataclass(frozen=True, slots=True)
class Refused:
    """A combined item's own error: its caller gets ``error``, the others their results."""

    error: BaseException


class Job(Generic[T]):
    """A queued job; ``await job`` for its result (or its error)."""

    __slots__ = ("combine", "done", "error", "fn", "item", "mode", "result")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T] | None,
        mode: Mode,
        done: anyio.Event,
        combine: Combine | None = None,
        item: Any = None,
    ) -> None:
        self.fn = fn
        self.mode = mode
        self.done = done
        self.combine = combine
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None

    def __await__(self) -> Generator[Any, None, T]:
        yield from self.done.wait().__await__()
        if self.error is not None:
            raise self.error
        result: T = self.result
        return result


def _answer(jobs: list[Job[Any]]) -> None:
    for job in jobs:
        job.done.set()


class DatabaseThread:
    """Runs ``fn(connection)`` jobs on one thread; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        name: str,
        handoff: WriteHandoff | None = None,
    ) -> None:
        self._connect = connect
        self._handoff = handoff
        self._jobs: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._token: anyio.lowlevel.EventLoopToken | None = None

    async def start(self) -> None:
        """Start the thread and wait (off the event loop) until it has connected."""
        self._token = anyio.lowlevel.current_token()
        self._thread.start()
        await anyio.to_thread.run_sync(self._ready.wait)
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, fn: Callable[[sqlite3.Connection], T], mode: Mode = Mode.WRITE) -> Job[T]:
        """Queue ``fn`` now; await the returned job for its result."""
        return self._put(Job(fn, mode, self._event()))

    def submit_combined(self, combine: Combine, item: Any) -> Job[Any]:
        """Queue an item of ``combine`` now: ``combine(conn, [item, ...])`` runs once for
        every item of this ``combine`` in one group commit (a write)."""
        return self._put(Job(None, Mode.WRITE, self._event(), combine, item))

    def _event(self) -> anyio.Event:
        # The loop's backend makes it directly: anyio.Event() looks the backend up each time.
        if self._token is None:
            raise RuntimeError("database thread is not started")
        return self._token.backend_class.create_event()

    async def run(self, fn: Callable[[sqlite3.Connection], T], mode: Mode = Mode.WRITE) -> T:
        return await self.submit(fn, mode)

    def _put(self, job: Job[T]) -> Job[T]:
        if self._closed:
            raise RuntimeError("database thread is closed")
        self._jobs.put(job)
        return job

    async def close(self) -> None:
        """Run every queued job, then close the connection and join the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        await anyio.to_thread.run_sync(self._thread.join)

    # --- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            if self._handoff is not None:
                self._handoff.close()
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
                self._answer(batch)
        finally:
            conn.close()
            if self._handoff is not None:
                self._handoff.close()

    def _answer(self, batch: list[Job[Any]]) -> None:
        token = self._token
        assert token is not None
        # RunFinishedError: the loop is gone, so nobody is waiting any more.
        with contextlib.suppress(anyio.RunFinishedError):
            token.backend_class.run_sync_soon(_answer, (batch,), token.native_token)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Job[Any]]) -> None:
        group: list[Job[Any]] = []
        for job in batch:
            if job.mode is Mode.ALONE:
                self._run_group(conn, group)
                group = []
                self._run_alone(conn, job)
            else:
                group.append(job)
        self._run_group(conn, group)

    def _run_alone(self, conn: sqlite3.Connection, job: Job[Any]) -> None:
        try:
            self._run_jobs(conn, [job])
        except BaseException as exc:
            job.error = exc

    @staticmethod
    def _run_jobs(conn: sqlite3.Connection, group: list[Job[Any]]) -> None:
        combined: dict[Combine, list[Job[Any]]] = {}
        for job in group:
            job.error = None  # from a try of the whole group
            if job.combine is not None:
                combined.setdefault(job.combine, []).append(job)
        for job in group:
            if job.combine is not None:
                jobs = combined.pop(job.combine, None)
                if jobs is not None:  # else run already, with the first of its kind
                    results = job.combine(conn, [each.item for each in jobs])
                    for each, result in zip(jobs, results, strict=True):
                        if isinstance(result, Refused):
                            each.error = result.error
                        else:
                            each.result = result
            elif job.fn is not None:
                job.result = job.fn(conn)

    def _run_group(self, conn: sqlite3.Connection, group: list[Job[Any]]) -> None:
        if not group:
            return
        if len(group) > 1 and self._run_together(conn, group):
            return
        for job in group:
            self._run_together(conn, [job], last_try=True)

    def _run_together(
        self, conn: sqlite3.Connection, group: list[Job[Any]], *, last_try: bool = False
    ) -> bool:
        """Run the jobs in one transaction. True if it committed; else everything is rolled
        back and, unless ``last_try``, the jobs' errors are left for a retry one by one."""
        writes = any(job.mode is Mode.WRITE for job in group)
        handed = writes and self._take_handoff()
        try:
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            DatabaseThread._run_jobs(conn, group)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if last_try:
                group[0].error = exc
            return False
        finally:
            if handed:
                self._release_handoff()
        return True

    def _take_handoff(self) -> bool:
        """Other processes' writers are woken the moment we let go (``handoff``), not
        when SQLite's busy handler next looks."""
        return self._handoff is not None and self._handoff.acquire()

    def _release_handoff(self) -> None:
        assert self._handoff is not None
        self._handoff.release()
