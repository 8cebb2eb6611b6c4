"""The PostgreSQL backend: several worker processes (or machines) on one database.

psycopg 3 (async) with a small connection pool (psycopg-pool): operations run in
parallel, and a long one (a backup, a VACUUM) never holds up the heartbeats that keep
leases alive. An operation runs on one pooled connection: in one transaction when its
mode asks for one, else each step in autocommit (the hot steps are single statements,
so a claim, a submit or a finish is one round trip). Connections stay borrowed from the
pool between operations (a list of idle ones, :meth:`PostgresTaskStore._borrow`) rather
than checked out and back each time. Concurrent plain submits, and concurrent
completions, go in batches (:mod:`._batch`): one statement and one commit for all that
arrived during the previous batch's round trip. Claims pick their rows ``FOR
UPDATE SKIP LOCKED``: concurrent workers never wait for each other and never claim a task
twice.

Notifications: writes that other workers must hear of (a submit, a cancel request of a
running task, a requeue, a breaker change) send a ``NOTIFY`` from their own statement,
so it arrives at commit; :meth:`PostgresTaskStore.listen` relays them from a dedicated
autocommit connection (LISTEN needs one).

Times are epoch seconds in ``double precision`` columns, passed in by callers as on
SQLite. ``schema`` puts every table in that schema (created if missing; the connections'
``search_path`` points at it), which lets several independent stores share a database.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import anyio.to_thread
import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import ConfigError, StorageFault, StorageUnavailableError
from ..models import TaskRecord
from . import logic
from . import sqlite as sqlite_backend
from ._batch import Combiner
from ._dbthread import Refused
from .base import Announce, DuplicateKeyError, TaskStore, naming_duplicates, refusals
from .ops import Mode, Operation, Step, count, drive_async, script
from .queries import Queries
from .types import Claim, Completed, NewTask, Notice, Outcome

__all__ = ["PostgresTaskStore", "postgres_fault", "safe_dsn"]

logger = logging.getLogger("vpsweb_tasks.storage.postgres")

T = TypeVar("T")
#: Most submits or completions written in one batch: bounds a statement's size.
MAX_BATCH = 256
Connection = psycopg.AsyncConnection[DictRow]

#: Longest a connection stays borrowed from the pool between operations (see _borrow).
KEEP_SECONDS = 60.0

#: ``application_name`` of the connection that LISTENs (visible in pg_stat_activity).
LISTENER_NAME = "vpsweb-tasks-listen"
_NOTICES = ("task_added", "cancel_requested", "breaker_changed")


#: SQLSTATEs that mean "the database cannot do this now", by fault. Classes 08
#: (connection exception) and 57P (operator intervention) are unavailable as a whole.
_SQLSTATES = {
    "53100": StorageFault.DISK_FULL,  # disk_full
    "25006": StorageFault.READ_ONLY,  # read_only_sql_transaction (also a hot standby)
    "55P03": StorageFault.LOCKED,  # lock_not_available (lock_timeout)
    "XX001": StorageFault.CORRUPT,  # data_corrupted
    "XX002": StorageFault.CORRUPT,  # index_corrupted
    "53000": StorageFault.UNAVAILABLE,  # insufficient_resources
    "53200": StorageFault.UNAVAILABLE,  # out_of_memory
    "53300": StorageFault.UNAVAILABLE,  # too_many_connections
    "58030": StorageFault.UNAVAILABLE,  # io_error
}


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, to name the database in messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an invalid DSN)"
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def postgres_fault(exc: BaseException, where: str | None = None) -> StorageUnavailableError | None:
    """The fault an error of psycopg (or its pool) means, or None when it is not one (a
    bug, a constraint, a cancelled statement)."""
    if isinstance(exc, PoolTimeout):
        return StorageUnavailableError(
            StorageFault.UNAVAILABLE, f"no connection to the database: {exc}", where=where
        )
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    cause = _SQLSTATES.get(state or "")
    if cause is None and state is not None and (state[:2] == "08" or state[:3] == "57P"):
        cause = StorageFault.UNAVAILABLE
    if cause is None and state is None and isinstance(exc, psycopg.OperationalError):
        cause = StorageFault.UNAVAILABLE  # the connection failed or was lost
    if cause is None:
        return None
    detail = (exc.diag.message_primary if state else None) or str(exc).strip()
    return StorageUnavailableError(cause, detail, where=where)


def _q(text: str) -> sql.SQL:
    """SQL from this package's query files and validated names, never user input."""
    return sql.SQL(text)


class _Query:
    """A named query, ready to run: whether it takes parameters, and the channel."""

    __slots__ = ("channel", "params", "sql")

    def __init__(self, text: str) -> None:
        self.sql = _q(text)
        self.params = "%(" in text
        self.channel = "%(channel)s" in text


class PostgresTaskStore(TaskStore):
    """Tasks in a PostgreSQL database, shared by any number of worker processes.

    ``dsn`` is a libpq connection string. ``schema`` (optional) holds the tables; it is
    created if missing. ``pool_size`` bounds the connections this store opens (plus one
    for :meth:`listen`).
    """

    dialect = "postgres"

    def __init__(
        self,
        dsn: str | None,
        *,
        history_limit: int = 200,
        task_metrics: bool = True,
        schema: str | None = None,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if dsn is None:
            raise ConfigError(
                "storage.postgres_dsn is required for storage.backend postgres"
                " (a libpq connection string, e.g. postgresql://user@host/dbname)"
            )
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        super().__init__(history_limit=history_limit, task_metrics=task_metrics)
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.channel = "vpsweb_tasks"
        """The NOTIFY channel: one per schema (set by :meth:`open`), so stores on other
        schemas of the same database do not wake each other."""
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._kept: list[Connection] = []
        """Connections borrowed from the pool and kept between operations (see
        :meth:`_borrow`), the last returned at the end."""
        self._borrowing = 0
        """Operations waiting for a connection from the pool."""
        self._return_by: dict[Connection, float] = {}
        """When each kept connection goes back to the pool (its upkeep: the connection's
        lifetime, shrinking when idle), on the first return after that time."""
        self._queries: dict[str, _Query] = {}
        self._submits = Combiner(self._add_together, max_batch=MAX_BATCH)
        self._completions = Combiner(self._complete_together, max_batch=MAX_BATCH)

    def __repr__(self) -> str:
        where = psycopg.conninfo.conninfo_to_dict(self.dsn)
        target = f"{where.get('host', '')}/{where.get('dbname', '')}"
        return f"PostgresTaskStore({target!r}{'' if self.schema is None else f', {self.schema!r}'})"

    # --- lifecycle -------------------------------------------------------------------

    async def _configure(self, conn: Connection) -> None:
        if self.schema is not None:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    async def open(self) -> None:
        if self._pool is not None:
            return
        queries = Queries(self.dialect, split=False)
        queries.load(self._components)
        self._queries = {name: _Query(statements[0]) for name, statements in queries.items()}
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.dsn,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            configure=self._configure,
            name=f"vpsweb-tasks:{self.schema or 'public'}",
        )
        self._pool = pool
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
            prelude: list[Step] = [count("lock_migrations", schema=self.schema)]
            if self.schema is not None:
                create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.schema)
                )
                prelude.append(script(create.as_string(None)))
            migrations = [m for c in self._components for m in c.migrations(self.dialect)]
            self._schema_version = await self.run(logic.migrate(migrations, prelude=prelude))
            async with self._connection() as conn:
                cursor = await conn.execute("SELECT current_schema() AS name")
                row = await cursor.fetchone()
            assert row is not None
            self.channel = f"vpsweb_tasks.{row['name']}"[:63]  # longer names are cut
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.close()
            if isinstance(exc, (psycopg.Error, PoolTimeout)):
                raise await self._open_error(exc) from exc
            raise

    async def _open_error(self, exc: psycopg.Error | PoolTimeout) -> StorageUnavailableError:
        """Why :meth:`open` failed, naming the database (without its password)."""
        where = safe_dsn(self.dsn) + ("" if self.schema is None else f" schema {self.schema}")
        if isinstance(exc, PoolTimeout):  # the pool only says it timed out: ask once why
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, connect_timeout=max(1, int(self.connect_timeout))
                )
            except psycopg.Error as reason:
                return StorageUnavailableError(
                    StorageFault.UNAVAILABLE, f"cannot connect: {str(reason).strip()}", where=where
                )
            await conn.close()
            return StorageUnavailableError(
                StorageFault.UNAVAILABLE, f"cannot connect: {exc}", where=where
            )
        fault = postgres_fault(exc)
        cause = fault.cause if fault is not None else StorageFault.UNAVAILABLE
        return StorageUnavailableError(cause, f"cannot use the database: {exc}", where=where)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        kept, self._kept = self._kept, []
        self._return_by.clear()
        if pool is not None:
            for conn in kept:
                await pool.putconn(conn)
            await pool.close()

    async def _borrow(self) -> Connection:
        """A connection for one operation: the one an operation gave back last, or else one
        from the pool. The pool's checkout (and its commit on return) costs more than a
        hot operation's own Python, so connections stay borrowed between operations (up to
        KEEP_SECONDS, then the pool's upkeep applies)."""
        if self._kept:
            return self._kept.pop()
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        self._borrowing += 1
        try:
            conn = await self._pool.getconn()
        finally:
            self._borrowing -= 1
        self._return_by[conn] = time.monotonic() + KEEP_SECONDS
        return conn

    async def _give_back(self, conn: Connection, *, failed: bool) -> None:
        """Keep ``conn`` for the next operation if it is idle and well and no operation waits
        for the pool; else hand it to the pool, which gives it to that operation, or rolls
        it back or replaces it (a lost server, a cancelled statement)."""
        idle = conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
        keep = not failed and idle and not self._borrowing and self._pool is not None
        if keep and time.monotonic() < self._return_by.get(conn, 0.0):
            self._kept.append(conn)
            return
        self._return_by.pop(conn, None)
        with anyio.CancelScope(shield=True):
            if self._pool is not None:
                await self._pool.putconn(conn)
            else:  # the store closed during the operation
                await conn.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection for one operation (:meth:`_borrow`), given back when it ends."""
        conn = await self._borrow()
        try:
            yield conn
        except BaseException:
            await self._give_back(conn, failed=True)
            raise
        await self._give_back(conn, failed=False)

    # --- running operations ------------------------------------------------------------

    async def _execute(self, conn: Connection, step: Step) -> Any:
        if step.fetch == "script":
            await conn.execute(_q(step.query))
            return None
        query = self._queries.get(step.query)
        if query is None:
            raise KeyError(f"no {self.dialect} query named {step.query!r}")
        params: Any = None
        if query.params:
            params = {**step.params, "channel": self.channel} if query.channel else step.params
        try:
            cursor = await conn.execute(query.sql, params)
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateKeyError(exc.diag.message_detail or str(exc)) from exc
        match step.fetch:
            case "rows":
                return await cursor.fetchall()
            case "row":
                return await cursor.fetchone()
            case "value":
                found = await cursor.fetchone()
                return None if found is None else next(iter(found.values()))
            case _:
                return cursor.rowcount

    async def run(self, operation: Operation[T]) -> T:
        try:
            return await self._run(operation)
        except (psycopg.Error, PoolTimeout) as exc:
            fault = postgres_fault(exc, safe_dsn(self.dsn))
            if fault is None:
                raise
            raise self._fault(fault, operation.mode) from exc

    async def _run(self, operation: Operation[T]) -> T:
        async with self._connection() as conn:

            async def execute(step: Step) -> Any:
                return await self._execute(conn, step)

            if operation.mode is Mode.WRITE:
                async with conn.transaction():
                    return await drive_async(operation.steps(), execute)
            if operation.mode is Mode.SNAPSHOT:
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return await drive_async(operation.steps(), execute)
            return await drive_async(operation.steps(), execute)

    # --- combined writes (a capability of this backend) ----------------------------------

    async def _add_plain(
        self, task: NewTask, *, max_queue_size: int | None, announce: Announce | None
    ) -> bool:
        # A plain submit joins the others that arrived during the previous one's round
        # trip in one INSERT: one commit (and one NOTIFY) for many.
        await self._submits((task, max_queue_size))
        if announce is not None:
            announce()
        return True

    async def _add_together(self, items: list[tuple[NewTask, int | None]]) -> list[Refused | None]:
        """Submits gathered in one batch (logic.add_together); a duplicate id fails the
        batch, which the combiner then runs one at a time."""
        with naming_duplicates(items):
            results = await self.run(logic.add_together(items))
        return refusals(results)

    async def finish(
        self, claimed: Claim, outcome: Outcome, *, now: float, linked: Sequence[Step] = ()
    ) -> TaskRecord:
        if linked or not isinstance(outcome, Completed):
            return await super().finish(claimed, outcome, now=now, linked=linked)
        # Completions that arrive during the previous batch's round trips are written
        # together: one transaction for many.
        return await self._completions((claimed, outcome, now))

    async def _complete_together(
        self, items: list[tuple[Claim, Completed, float]]
    ) -> list[TaskRecord | Refused]:
        results = await self.run(logic.complete_together(items, metrics=self.task_metrics))
        return refusals(results)

    # --- notifications -----------------------------------------------------------------

    async def listen(
        self,
        on_notice: Callable[[Notice, str], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        started = False
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(1, int(self.connect_timeout)),
                    application_name=LISTENER_NAME,
                )
            except psycopg.OperationalError as exc:
                if not started:
                    raise
                logger.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    if not started:
                        started = True
                        task_status.started()
                    delay = 0.1
                    async for notice in conn.notifies():
                        kind, _, task_id = notice.payload.partition(" ")
                        if kind in _NOTICES:
                            on_notice(cast(Notice, kind), task_id)
            except psycopg.OperationalError as exc:
                # Notices sent while we reconnect are lost; polling every
                # queue_check_interval and the heartbeat still find that work.
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # --- housekeeping ------------------------------------------------------------------

    def _tables(self) -> list[str]:
        """Every table of the installed components, parents first."""
        return [table for component in self._components for table in component.tables]

    async def _sizes(self, conn: Connection) -> dict[str, int]:
        tables = [*self._tables(), "schema_migrations", "component_migrations"]
        found = await self._execute(conn, Step("table_sizes", {"tables": tables}, "rows"))
        sizes = {each["name"]: int(each["bytes"]) for each in found}
        return {
            "database_bytes": sum(sizes.values()),
            **{f"{name}_bytes": size for name, size in sizes.items()},
        }

    async def _integrity(self, conn: Connection) -> str:
        """``ok``, or what is wrong: invalid indexes, and rows that break the task
        invariants the contract relies on."""
        invalid = await self._execute(conn, Step("invalid_indexes", {}, "rows"))
        problems = [f"invalid index {each['name']}" for each in invalid]
        broken = await self._execute(conn, Step("broken_invariants", {}, "rows"))
        problems += [f"{each['n']} {each['problem']}" for each in broken if each["n"]]
        return "ok" if not problems else "; ".join(problems)

    async def maintenance(self, *, vacuum: bool = False) -> dict[str, Any]:
        # VACUUM cannot run in a transaction: the pool's connections are in autocommit.
        async with self._connection() as conn:
            before = await self._sizes(conn)
            command = sql.SQL("VACUUM (ANALYZE) {}") if vacuum else sql.SQL("ANALYZE {}")
            for table in [*self._tables(), "schema_migrations", "component_migrations"]:
                await conn.execute(command.format(sql.Identifier(table)))
            integrity = await self._integrity(conn)
            after = await self._sizes(conn)
        return {
            "analyzed": True,
            "vacuumed": vacuum,
            "integrity": integrity,
            "before": before,
            "after": after,
        }

    async def backup(self, path: str) -> dict[str, Any]:
        """A SQLite file with the SQLite backend's schema (of every installed component),
        copied from one REPEATABLE READ snapshot: the same tools (and
        :class:`~vpsweb_tasks.storage.sqlite.SQLiteTaskStore`) read it."""
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        components = self.components

        def create() -> sqlite3.Connection:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.unlink(missing_ok=True)
            copy = sqlite3.connect(partial, isolation_level=None, check_same_thread=False)
            queries = Queries("sqlite", split=True)
            queries.load(components)
            migrations = [m for c in components for m in c.migrations("sqlite")]
            copy.execute("BEGIN")
            statements = sqlite_backend.compile_queries(queries)
            sqlite_backend.run_on(copy, statements, logic.migrate(migrations))
            return copy

        copy = await anyio.to_thread.run_sync(create)
        try:
            async with self._connection() as conn:
                await conn.set_autocommit(False)
                try:
                    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                    await conn.set_read_only(True)
                    async with conn.transaction():
                        for table in self._tables():
                            await self._copy_table(conn, copy, table)
                finally:
                    await conn.set_read_only(None)
                    await conn.set_isolation_level(None)
                    await conn.set_autocommit(True)

            def finish() -> tuple[str, int]:
                copy.execute("COMMIT")
                (check,) = copy.execute("PRAGMA integrity_check").fetchone()
                (tasks,) = copy.execute("SELECT count(*) FROM background_tasks").fetchone()
                return check, tasks

            check, tasks = await anyio.to_thread.run_sync(finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(copy.close)
                await anyio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
            raise
        await anyio.to_thread.run_sync(copy.close)

        def publish() -> int:
            if check != "ok":
                partial.unlink(missing_ok=True)
                raise sqlite3.DatabaseError(f"backup failed its integrity check: {check}")
            os.replace(partial, target)
            return target.stat().st_size

        size = await anyio.to_thread.run_sync(publish)
        return {
            "path": str(target),
            "bytes": size,
            "tasks": tasks,
            "integrity": check,
            "format": "sqlite",
            "source": "postgres",
            "host": socket.gethostname(),
        }

    @staticmethod
    async def _copy_table(conn: Connection, copy: sqlite3.Connection, table: str) -> None:
        wanted = {row[1] for row in copy.execute(f"PRAGMA table_info({table})")}
        async with conn.cursor(name=f"backup_{table}") as cursor:
            await cursor.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            assert cursor.description is not None
            names = [column.name for column in cursor.description]
            # PostgreSQL's `seq` is SQLite's rowid: the copy keeps the insertion order.
            columns = ["rowid" if name == "seq" else name for name in names]
            keep = [i for i, name in enumerate(columns) if name in wanted or name == "rowid"]
            insert = (
                f"INSERT INTO {table} ({', '.join(columns[i] for i in keep)})"
                f" VALUES ({', '.join('?' for _ in keep)})"
            )
            while batch := await cursor.fetchmany(1000):
                rows = [tuple(row[names[i]] for i in keep) for row in batch]
                await anyio.to_thread.run_sync(copy.executemany, insert, rows)
