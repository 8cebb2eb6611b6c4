"""The SQLite backend: one file in WAL mode, all access from one dedicated thread.

Several processes may share the file: writes take the lock up front (``BEGIN IMMEDIATE``)
and wait for it up to ``busy_timeout``, so they queue instead of failing with "database is
locked". Claims are one ``UPDATE ... RETURNING`` statement, which SQLite runs under the
write lock: no task is claimed twice. Operations run on the database thread
(:mod:`._dbthread`), which commits whatever arrived meanwhile in one transaction.
"""

from __future__ import annotations

import operator
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import sqlite_utils

from ..errors import LeaseLostError
from ..models import TaskRecord
from . import logic
from ._dbthread import DatabaseThread, Refused
from ._dbthread import Mode as ThreadMode
from .base import Announce, DuplicateKeyError, TaskStore
from .ops import Mode, Operation, Step, drive
from .queries import Queries, split_statements
from .rows import dumps
from .types import Claim, Completed, NewTask, Notice, Outcome

__all__ = ["SQLiteTaskStore"]

T = TypeVar("T")

_THREAD_MODES = {
    Mode.READ: ThreadMode.READ,
    Mode.SNAPSHOT: ThreadMode.READ,
    Mode.WRITE: ThreadMode.WRITE,
    Mode.STATEMENTS: ThreadMode.WRITE,
    Mode.ALONE: ThreadMode.ALONE,
}


_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class Statement:
    """One statement of a named query, its ``:name`` parameters made positional: binding
    a tuple costs a fraction of binding a dict by name (sqlite3 makes a string of each
    name to look it up)."""

    __slots__ = ("_get", "names", "sql")

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(found: re.Match[str]) -> str:
            if found.group(1) not in names:
                names.append(found.group(1))
            return f"?{names.index(found.group(1)) + 1}"

        self.sql = _PARAM.sub(number, sql)
        self.names = tuple(names)
        get = operator.itemgetter(*names) if names else (lambda params: ())
        self._get: Callable[[Mapping[str, Any]], Any] = (
            (lambda params: (get(params),)) if len(names) == 1 else get
        )

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The parameters in order; a list as JSON text (the queries read it with
        json_each)."""
        try:
            values: tuple[Any, ...] = self._get(params)
        except KeyError as exc:
            raise KeyError(f"{self.sql[:60]!r}... needs parameter {exc}") from None
        kinds = tuple(map(type, values))
        if list in kinds or tuple in kinds:
            values = tuple(
                dumps(list(value)) if type(value) is list or type(value) is tuple else value
                for value in values
            )
        return values


def compile_queries(queries: Queries) -> dict[str, tuple[Statement, ...]]:
    return {name: tuple(map(Statement, statements)) for name, statements in queries.items()}


def execute(
    conn: sqlite3.Connection, statements: Mapping[str, tuple[Statement, ...]], step: Step
) -> Any:
    """One step on ``conn``: each statement of its named query, with the same parameters;
    the result of the last statement that returns rows (or the last row count)."""
    if step.fetch == "script":
        for sql in split_statements(step.query):
            conn.execute(sql)
        return None
    found: list[Any] | None = None
    names: list[str] = []
    cursor: sqlite3.Cursor | None = None
    try:
        compiled = statements[step.query]
    except KeyError:
        raise KeyError(f"no sqlite query named {step.query!r}") from None
    try:
        for statement in compiled:
            cursor = conn.execute(statement.sql, statement.args(step.params))
            if cursor.description is not None:
                names = [column[0] for column in cursor.description]
                found = cursor.fetchall()
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            raise DuplicateKeyError(str(exc)) from exc
        raise
    match step.fetch:
        case "rows":
            return [dict(zip(names, each, strict=True)) for each in found or ()]
        case "row":
            return dict(zip(names, found[0], strict=True)) if found else None
        case "value":
            return found[0][0] if found else None
        case _:
            assert cursor is not None
            return cursor.rowcount


def run_on(
    conn: sqlite3.Connection,
    statements: Mapping[str, tuple[Statement, ...]],
    operation: Operation[T],
) -> T:
    """Run an operation's steps on ``conn`` (in whatever transaction it is in)."""
    return drive(operation.steps(), lambda step: execute(conn, statements, step))


class SQLiteTaskStore(TaskStore):
    """Tasks in one SQLite file (WAL). ``path`` may be ``":memory:"`` for throwaway use."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        history_limit: int = 200,
        task_metrics: bool = True,
        watch_interval: float = 0.05,
        cache_mb: int = 32,
    ) -> None:
        super().__init__(history_limit=history_limit, task_metrics=task_metrics)
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.watch_interval = watch_interval
        self.cache_mb = cache_mb
        self._thread: DatabaseThread | None = None
        self._statements: dict[str, tuple[Statement, ...]] = {}

    def __repr__(self) -> str:
        return f"SQLiteTaskStore({self.path!r})"

    # --- lifecycle -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self.busy_timeout,
            cached_statements=256,
        )
        db = sqlite_utils.Database(conn, execute_plugins=False)
        if self.path != ":memory:":
            db.enable_wal()
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA cache_size=-{int(self.cache_mb) * 1024}")  # negative: KiB
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    async def open(self) -> None:
        if self._thread is not None:
            return
        queries = Queries(self.dialect, split=True)
        queries.load(self._components)
        self._statements = compile_queries(queries)
        thread = DatabaseThread(self._connect, name=f"vpsweb-tasks-sqlite:{Path(self.path).name}")
        await thread.start()
        self._thread = thread
        try:
            migrations = [m for c in self._components for m in c.migrations(self.dialect)]
            self._schema_version = await self.run(logic.migrate(migrations))
        except BaseException:
            self._thread = None
            with anyio.CancelScope(shield=True):
                await thread.close()
            raise

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            await thread.close()

    def _db(self) -> DatabaseThread:
        if self._thread is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._thread

    # --- running operations ------------------------------------------------------------

    def _drive(self, conn: sqlite3.Connection, operation: Operation[T]) -> T:
        return run_on(conn, self._statements, operation)

    def _submit(self, operation: Operation[T]) -> Any:
        return self._db().submit(
            lambda conn: self._drive(conn, operation), _THREAD_MODES[operation.mode]
        )

    async def run(self, operation: Operation[T]) -> T:
        result: T = await self._submit(operation)
        return result

    # --- combined writes (a capability of this backend) ----------------------------------

    async def add_tasks(
        self,
        tasks: Sequence[NewTask],
        *,
        max_queue_size: int | None = None,
        linked: Sequence[Step] = (),
        announce: Announce | None = None,
    ) -> None:
        if linked or len(tasks) != 1:
            await super().add_tasks(
                tasks, max_queue_size=max_queue_size, linked=linked, announce=announce
            )
            return
        # A plain submit joins the others of its group commit in one INSERT. It is queued
        # before anything else runs on the thread, so a claim queued after announce()
        # sees it (and may share its commit).
        job = self._db().submit_combined(self._add_together, (tasks[0], max_queue_size))
        if announce is not None:
            announce()
        await job

    def _add_together(
        self, conn: sqlite3.Connection, items: list[tuple[NewTask, int | None]]
    ) -> list[Refused | None]:
        """Submits that landed in one group: the tasks are let in, in order, while there
        is room; a duplicate id fails the group, which is then run one submit at a time."""
        if len(items) == 1:  # alone, or a group's retry one at a time
            ((task, limit),) = items
            try:
                (result,) = self._drive(conn, logic.add_tasks([task], limit=limit))
            except DuplicateKeyError as exc:
                raise DuplicateKeyError(f"task {task.id} already exists") from exc
            return [None if result is None else Refused(result)]
        limits = {limit for _, limit in items}
        if len(limits) == 1:
            (limit,) = limits
            results = self._drive(conn, logic.add_tasks([task for task, _ in items], limit=limit))
        else:  # different limits (managers of several configs on one store): in turn
            results = [
                self._drive(conn, logic.add_tasks([task], limit=limit))[0] for task, limit in items
            ]
        return [None if r is None else Refused(r) for r in results]

    async def finish(
        self, claimed: Claim, outcome: Outcome, *, now: float, linked: Sequence[Step] = ()
    ) -> TaskRecord:
        if linked or not isinstance(outcome, Completed):
            return await super().finish(claimed, outcome, now=now, linked=linked)
        # Completions that land in one group commit are written together.
        record: TaskRecord = await self._db().submit_combined(
            self._complete_together, (claimed, outcome, now)
        )
        return record

    def _complete_together(
        self, conn: sqlite3.Connection, items: list[tuple[Claim, Completed, float]]
    ) -> list[TaskRecord | Refused]:
        if len(items) == 1:
            ((claimed, outcome, now),) = items
            try:
                finish = logic.finish(claimed, outcome, now=now, metrics=self.task_metrics)
                return [self._drive(conn, finish)]
            except LeaseLostError as exc:
                return [Refused(exc)]
        results = self._drive(conn, logic.complete_many(items, metrics=self.task_metrics))
        return [Refused(r) if isinstance(r, LeaseLostError) else r for r in results]

    # --- notifications -----------------------------------------------------------------

    async def listen(
        self,
        on_notice: Callable[[Notice, str], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Commits to the file, seen every ``watch_interval`` seconds through ``PRAGMA
        data_version`` and relayed as one ``changed`` notice. SQLite cannot say what
        changed; the queue looks again (a claim round, and, while it runs tasks, a read
        of their cancel flags: ``logic.cancel_requests``), so a task submitted by another
        process starts, and one cancelled by another process stops, within
        ``watch_interval`` instead of the poll interval or the next heartbeat.

        The watch is a thread with a connection of its own, which never wakes the event
        loop unless something changed (this store's own commits count too: one extra
        claim round, at most one per interval). A ``watch_interval`` of 0 (or an
        in-memory database) turns it off."""
        if self.watch_interval <= 0 or self.path == ":memory:":
            await super().listen(on_notice, task_status=task_status)
            return
        token = anyio.lowlevel.current_token()
        stop = threading.Event()
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=self.busy_timeout)

        def version() -> int:
            (found,) = conn.execute("PRAGMA data_version").fetchone()
            return int(found)

        def watch(seen: int) -> None:
            try:
                while not stop.wait(self.watch_interval):
                    current = version()
                    if current != seen:
                        seen = current
                        token.backend_class.run_sync_soon(
                            on_notice, ("changed", ""), token.native_token
                        )
            except anyio.RunFinishedError:  # the loop ended under us: nobody is listening
                pass
            finally:
                conn.close()

        seen = await anyio.to_thread.run_sync(version)
        thread = threading.Thread(
            target=watch, args=(seen,), name=f"vpsweb-tasks-watch:{Path(self.path).name}"
        )
        thread.daemon = True
        thread.start()
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()  # wakes the thread at once; it closes its connection and ends
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)

    # --- housekeeping ------------------------------------------------------------------

    def _sizes(self) -> dict[str, int]:
        if self.path == ":memory:":
            return {"database_bytes": 0, "wal_bytes": 0}
        wal = Path(self.path + "-wal")
        return {
            "database_bytes": Path(self.path).stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }

    async def maintenance(self, *, vacuum: bool = False) -> dict[str, Any]:
        def maintain(conn: sqlite3.Connection) -> dict[str, Any]:
            before = self._sizes()
            checkpoint = execute(conn, self._statements, Step("wal_checkpoint", {}, "row"))
            busy, wal_pages, checkpointed = checkpoint.values()
            execute(conn, self._statements, Step("analyze", {}, "count"))
            if vacuum:
                execute(conn, self._statements, Step("vacuum", {}, "count"))
            check = execute(conn, self._statements, Step("quick_check", {}, "value"))
            return {
                "checkpoint": {
                    "busy": bool(busy),
                    "wal_pages": wal_pages,
                    "checkpointed": checkpointed,
                },
                "analyzed": True,
                "vacuumed": vacuum,
                "integrity": check,
                "before": before,
                "after": self._sizes(),
            }

        return await self._db().run(maintain, ThreadMode.ALONE)

    async def backup(self, path: str) -> dict[str, Any]:
        target = Path(path)

        def copy(conn: sqlite3.Connection) -> dict[str, Any]:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.unlink(missing_ok=True)
            destination = sqlite3.connect(partial)
            try:
                conn.backup(destination)
                (check,) = destination.execute("PRAGMA integrity_check").fetchone()
                (tasks,) = destination.execute("SELECT count(*) FROM background_tasks").fetchone()
            finally:
                destination.close()
            if check != "ok":
                partial.unlink(missing_ok=True)
                raise sqlite3.DatabaseError(f"backup failed its integrity check: {check}")
            os.replace(partial, target)
            return {
                "path": str(target),
                "bytes": target.stat().st_size,
                "tasks": tasks,
                "integrity": check,
                "host": socket.gethostname(),
            }

        return await self._db().run(copy, ThreadMode.ALONE)
