"""The SQLite backend: one file in WAL mode, all access from one dedicated thread.

Several processes may share the file: writes take the lock up front (``BEGIN IMMEDIATE``)
and wait for it up to ``busy_timeout``, so they queue instead of failing with "database is
locked"; a side lock (:mod:`.handoff`) wakes a waiting process as soon as the lock is
free. Claims are one ``UPDATE ... RETURNING`` statement, which SQLite runs under the write
lock: no task is claimed twice. Operations run on the database thread
(:mod:`._dbthread`), which commits whatever arrived meanwhile in one transaction.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import resource
import socket
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import sqlite_utils

from ..errors import StorageCorruptError, StorageFault, StorageUnavailableError
from ..models import TaskRecord
from . import logic
from ._dbthread import DatabaseThread, Refused
from ._dbthread import Mode as ThreadMode
from .base import Announce, DuplicateKeyError, TaskStore, naming_duplicates, refusals
from .handoff import HANDOFF_WAIT, WriteHandoff
from .ops import Mode, Operation, Step, drive
from .queries import Queries, split_statements
from .rows import dumps
from .types import Claim, Completed, NewTask, Notice, Outcome

__all__ = ["SQLiteTaskStore", "StartupCheck", "sqlite_fault"]

T = TypeVar("T")

_THREAD_MODES = {
    Mode.READ: ThreadMode.READ,
    Mode.SNAPSHOT: ThreadMode.READ,
    Mode.WRITE: ThreadMode.WRITE,
    Mode.STATEMENTS: ThreadMode.WRITE,
    Mode.ALONE: ThreadMode.ALONE,
}


#: ``storage.startup_check``: SQLite's ``PRAGMA quick_check`` (O(pages), no index
#: cross-check), ``integrity_check`` (also checks every index against its table), or none.
StartupCheck = Literal["quick", "full", "off"]

_FULL, _READONLY, _BUSY, _LOCKED, _CORRUPT, _NOTADB = 13, 8, 5, 6, 11, 26
#: Primary result codes whose errno SQLite does not pass on: the file tells why.
_IO = {10: "SQLITE_IOERR", 14: "SQLITE_CANTOPEN", 3: "SQLITE_PERM"}


def _no_room(path: str) -> str | None:
    """Why the file at ``path`` cannot grow, if it cannot: a full volume, or a file size
    limit (RLIMIT_FSIZE) its files have reached."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        volume = os.statvfs(folder)
    except OSError:
        return None
    free = volume.f_bfree if os.geteuid() == 0 else volume.f_bavail
    if free == 0:
        return "no space left on the volume"
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        sizes = [os.path.getsize(f) for f in (path, path + "-wal") if os.path.exists(f)]
        if sizes and max(sizes) + 65536 >= limit:
            return f"the file size limit ({limit} bytes) is reached"
    return None


def _not_writable(path: str) -> bool:
    """Whether the database or its journal cannot be written (a read-only volume or file,
    an immutable file): ``access(2)`` says so even to root."""
    files = [f for f in (path, path + "-wal") if os.path.exists(f)]
    return any(not os.access(f, os.W_OK) for f in files)


def sqlite_fault(exc: sqlite3.Error, path: str) -> StorageUnavailableError | None:
    """The fault an error of sqlite3 means, or None when it is not one (a bug, a
    constraint). SQLite's I/O errors do not say why; the file does."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    cause: StorageFault | None = None
    detail = str(exc)
    if primary == _FULL:
        cause = StorageFault.DISK_FULL
        why = _no_room(path)
        detail = f"{exc}: {why}" if why else detail
    elif primary == _READONLY:
        cause = StorageFault.READ_ONLY
    elif primary in (_BUSY, _LOCKED):
        cause = StorageFault.LOCKED
        detail = f"{exc} (another process held the write lock past storage.busy_timeout)"
    elif primary in (_CORRUPT, _NOTADB):
        cause = StorageFault.CORRUPT
    elif primary in _IO:
        name = getattr(exc, "sqlite_errorname", _IO[primary])
        if path != ":memory:" and _not_writable(path):
            cause, detail = StorageFault.READ_ONLY, f"{exc} ({name}): the file is not writable"
        elif path != ":memory:" and (why := _no_room(path)) is not None:
            cause, detail = StorageFault.DISK_FULL, f"{exc} ({name}): {why}"
        else:
            cause, detail = StorageFault.UNAVAILABLE, f"{exc} ({name})"
    if cause is None:
        return None
    return StorageUnavailableError(cause, detail, where=path)


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
        startup_check: StartupCheck = "quick",
    ) -> None:
        super().__init__(history_limit=history_limit, task_metrics=task_metrics)
        self.path = str(path)
        self.startup_check = startup_check
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
        try:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            if self.path != ":memory:":
                db.enable_wal()
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA cache_size=-{int(self.cache_mb) * 1024}")  # negative: KiB
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Connect, check the file (``startup_check``), migrate. A file that is not a
        database, or fails the check, raises :class:`StorageCorruptError` naming it."""
        if self._thread is not None:
            return
        queries = Queries(self.dialect, split=True)
        queries.load(self._components)
        self._statements = compile_queries(queries)
        thread = DatabaseThread(
            self._connect,
            name=f"vpsweb-tasks-sqlite:{Path(self.path).name}",
            handoff=self._handoff(),
        )
        try:
            await thread.start()
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        self._thread = thread
        try:
            await self._check_file()
            migrations = [m for c in self._components for m in c.migrations(self.dialect)]
            self._schema_version = await self.run(logic.migrate(migrations))
        except StorageUnavailableError as exc:
            await self._abandon(thread)
            if exc.cause is StorageFault.CORRUPT:
                raise StorageCorruptError(self.path, [exc.detail]) from exc
            raise
        except BaseException:
            await self._abandon(thread)
            raise

    def _handoff(self) -> WriteHandoff | None:
        if self.path == ":memory:":
            return None
        with contextlib.suppress(OSError):  # else the connection says why
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return WriteHandoff.open(self.path, wait=min(HANDOFF_WAIT, self.busy_timeout))

    async def _abandon(self, thread: DatabaseThread) -> None:
        self._thread = None
        with anyio.CancelScope(shield=True):
            await thread.close()

    def _open_error(self, exc: sqlite3.Error) -> Exception:
        fault = sqlite_fault(exc, self.path)
        if fault is None:
            return exc
        if fault.cause is StorageFault.CORRUPT:
            return StorageCorruptError(self.path, [str(exc)])
        return fault

    async def _check_file(self) -> None:
        """``startup_check``: ``PRAGMA quick_check`` (``quick``, O(pages): ~0.1 s for a
        100 MB file in the page cache, ~1.5 s from disk) or ``integrity_check``
        (``full``), before anything is written."""
        if self.startup_check == "off" or self.path == ":memory:":
            return
        name = "startup_quick_check" if self.startup_check == "quick" else "startup_integrity_check"

        def check(conn: sqlite3.Connection) -> list[str]:
            found = execute(conn, self._statements, Step(name, {}, "rows"))
            return [str(next(iter(each.values()))) for each in found]

        try:
            problems = await self._db().run(check, ThreadMode.ALONE)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        if problems != ["ok"]:
            raise StorageCorruptError(self.path, problems)

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
        try:
            result: T = await self._submit(operation)
        except sqlite3.Error as exc:
            fault = sqlite_fault(exc, self.path)
            if fault is None:
                raise
            raise self._fault(fault, operation.mode) from exc
        return result

    # --- combined writes (a capability of this backend) ----------------------------------

    async def _add_plain(
        self, task: NewTask, *, max_queue_size: int | None, announce: Announce | None
    ) -> bool:
        # A plain submit joins the others of its group commit in one INSERT. It is queued
        # before anything else runs on the thread, so a claim queued after announce()
        # sees it (and may share its commit).
        job = self._db().submit_combined(self._add_together, (task, max_queue_size))
        if announce is not None:
            announce()
        try:
            await job
        except sqlite3.Error as exc:
            fault = sqlite_fault(exc, self.path)
            if fault is None:
                raise
            raise self._fault(fault, Mode.WRITE) from exc
        return True

    def _add_together(
        self, conn: sqlite3.Connection, items: list[tuple[NewTask, int | None]]
    ) -> list[Refused | None]:
        """Submits that landed in one group (logic.add_together); a duplicate id fails the
        group, which is then run one submit at a time."""
        with naming_duplicates(items):
            results = self._drive(conn, logic.add_together(items))
        return refusals(results)

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
        results = self._drive(conn, logic.complete_together(items, metrics=self.task_metrics))
        return refusals(results)

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

        try:
            return await self._db().run(maintain, ThreadMode.ALONE)
        except sqlite3.Error as exc:
            fault = sqlite_fault(exc, self.path)
            if fault is None:
                raise
            raise self._fault(fault, Mode.ALONE) from exc

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
