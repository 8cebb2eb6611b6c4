"""The PostgreSQL backend: several worker processes (or machines) on one database.

psycopg 3 (async) with a small connection pool (psycopg-pool): operations run in
parallel, and a long one (a backup, a VACUUM) never holds up the heartbeats that keep
leases alive. Each operation is one statement in autocommit, or one explicit
transaction. Claims are a single statement: the eligible rows are picked ``FOR UPDATE
SKIP LOCKED`` in dispatch order, updated, and given their execution rows, so concurrent
workers never wait for each other and never claim one task twice.

Notifications: ``add_task`` and ``request_cancel`` (of a running task) send a ``NOTIFY``
in their own transaction, so it arrives at commit; :meth:`PostgresTaskStore.listen`
relays them from a dedicated autocommit connection (LISTEN needs one).

Times are epoch seconds in ``double precision`` columns, passed in by callers as on
SQLite. ``schema`` puts every table in that schema (created if missing; the connections'
``search_path`` points at it), which lets several independent stores share a database.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.abc
import anyio.to_thread
import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from ..errors import (
    ConfigError,
    ErrorCategory,
    HandlerUnavailableError,
    LeaseLostError,
    QueueFullError,
    TaskNotFoundError,
    TaskStateError,
    WorkerLostError,
)
from ..models import (
    ExecutionRecord,
    ResourceSample,
    TaskRecord,
    TaskStatus,
)
from ._rows import Expr as _Expr
from ._rows import changes_for as _changes_for
from ._rows import dumps as _dumps
from ._rows import execution_from_row as _execution
from ._rows import migrations, translation_job_from_row
from ._rows import task_from_row as _task
from ._rows import worker_from_row as _worker
from .base import (
    AttemptGroup,
    Cancelled,
    Claim,
    Deferred,
    Failed,
    HeartbeatResult,
    LeaseToken,
    MetricsWindow,
    NewTask,
    NewTranslationJob,
    Notice,
    Outcome,
    ProgressSnapshot,
    ReapResult,
    Released,
    RetryDecider,
    SharedBreakerState,
    TaskStore,
    TranslationJobRow,
    WorkerInfo,
)
from .sqlite import SQLiteTaskStore

__all__ = ["PostgresTaskStore"]

logger = logging.getLogger("vpsweb_tasks.storage.postgres")

Connection = psycopg.AsyncConnection[DictRow]

#: ``application_name`` of the connection that LISTENs (visible in pg_stat_activity).
LISTENER_NAME = "vpsweb-tasks-listen"

_WAITING = "('pending', 'retrying')"
_TERMINAL = "('completed', 'failed', 'cancelled')"
_ORDER_PRIORITY = "priority DESC, run_at, seq"
_ORDER_FIFO = "run_at, seq"

_CLAIM = """
WITH picked AS (
    SELECT id FROM background_tasks
    WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s AND {runnable}
    ORDER BY {order}
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE background_tasks AS t
    SET status = 'running', attempts = t.attempts + 1, fence = t.fence + 1,
        lease_owner = %(worker)s, lease_expires_at = %(expires)s, cancel_requested = FALSE,
        started_at = %(now)s, updated_at = %(now)s
    FROM picked WHERE t.id = picked.id
    RETURNING t.*
), executions AS (
    INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at, outcome)
    SELECT id, attempts, fence, %(worker)s, %(now)s, 'running' FROM claimed
)
SELECT * FROM claimed ORDER BY {order}
"""
_NO_CANCEL = " AND NOT cancel_requested"
_CANCEL = " AND cancel_requested"
_RUNNABLE_ANY = "(owner IS NULL OR owner = %(worker)s)"
_RUNNABLE_TYPES = "(owner = %(worker)s OR (owner IS NULL AND task_type = ANY(%(types)s)))"

_INSERT_COLUMNS = (
    "id, name, task_type, priority, status, payload, metadata, max_retries, timeout_seconds,"
    " retry_config, owner, run_at, created_at, updated_at"
)
_INSERT_VALUES = (
    "%(id)s, %(name)s, %(task_type)s, %(priority)s, 'pending', %(payload)s, %(metadata)s,"
    " %(max_retries)s, %(timeout_seconds)s, %(retry_config)s, %(owner)s, %(run_at)s,"
    " %(created_at)s, %(created_at)s"
)
# The queue-size check counts waiting rows through the dispatch index, stopping at the
# limit: no hot counter row that every insert, claim and finish would queue behind.
_WAITING_UP_TO = (
    "SELECT count(*) FROM (SELECT 1 FROM background_tasks"
    f" WHERE status IN {_WAITING} LIMIT %(max_queue_size)s) AS waiting"
)

# add_translation_jobs: the batch's columns as arrays, one row per task, in order.
_BATCH_ROWS = (
    "unnest(%(id)s::text[], %(name)s::text[], %(task_type)s::text[], %(priority)s::int[],"
    " %(payload)s::text[], %(metadata)s::text[], %(max_retries)s::int[],"
    " %(timeout_seconds)s::float8[], %(retry_config)s::text[], %(owner)s::text[],"
    " %(run_at)s::float8[], %(created_at)s::float8[]) WITH ORDINALITY AS t(id, name,"
    " task_type, priority, payload, metadata, max_retries, timeout_seconds, retry_config,"
    " owner, run_at, created_at, ord)"
)
_BATCH_VALUES = (
    "t.id, t.name, t.task_type, t.priority, 'pending', t.payload, t.metadata, t.max_retries,"
    " t.timeout_seconds, t.retry_config, t.owner, t.run_at, t.created_at, t.created_at"
)
_ROOM_FOR_ALL = f"({_WAITING_UP_TO}) + %(count)s <= %(max_queue_size)s"

#: Tables copied by :meth:`PostgresTaskStore.backup`, parents before children.
_BACKUP_TABLES = (
    "background_tasks",
    "task_executions",
    "task_metrics",
    "translation_jobs",
    "system_metrics",
    "task_progress",
    "workers",
    "queue_state",
)


def _q(text: str) -> sql.SQL:
    """SQL built from this module's constants and validated names, never user input."""
    return sql.SQL(text)


class PostgresTaskStore(TaskStore):
    """Tasks in a PostgreSQL database, shared by any number of worker processes.

    ``dsn`` is a libpq connection string. ``schema`` (optional) holds the tables; it is
    created if missing. ``pool_size`` bounds the connections this store opens (plus one
    for :meth:`listen`).
    """

    def __init__(
        self,
        dsn: str | None,
        *,
        history_limit: int = 200,
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
        self.dsn = dsn
        self.history_limit = history_limit
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.channel = "vpsweb_tasks"
        """The NOTIFY channel: one per schema (set by :meth:`open`), so stores on other
        schemas of the same database do not wake each other."""
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._schema_version = 0

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
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
            self._pool = pool
            self._schema_version = await self._migrate()
            row = await self._fetchone("SELECT current_schema() AS name")
            assert row is not None
            self.channel = f"vpsweb_tasks.{row['name']}"[:63]  # longer names are cut
        except BaseException:
            self._pool = None
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise

    async def _migrate(self) -> int:
        async with self._connection() as conn, conn.transaction():
            # One migrator at a time per schema, across processes; DDL is transactional,
            # so the others find everything applied once they get the lock.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('vpsweb_tasks.migrate'),"
                " hashtext(coalesce(%s, current_schema(), '')))",
                (self.schema,),
            )
            if self.schema is not None:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            applied = {row["version"] for row in await cursor.fetchall()}
            for version, name, script in migrations("postgres"):
                if version in applied:
                    continue
                await conn.execute(_q(script))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (version, name, time.time()),
                )
                applied.add(version)
        return max(applied, default=0)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def _connection(self) -> Any:
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._pool.connection()

    async def _fetchall(self, query: Any, params: Any = None) -> list[DictRow]:
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return cast(list[DictRow], await cursor.fetchall())

    async def _fetchone(self, query: Any, params: Any = None) -> DictRow | None:
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return cast(DictRow | None, await cursor.fetchone())

    async def _notify(self, conn: Connection, kind: Notice, task_id: str) -> None:
        await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{kind} {task_id}"))

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
                        if kind in ("task_added", "cancel_requested", "breaker_changed"):
                            on_notice(cast(Notice, kind), task_id)
            except psycopg.OperationalError as exc:
                # Notices sent while we reconnect are lost; polling every
                # queue_check_interval and the heartbeat still find that work.
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # --- submit and read -------------------------------------------------------------

    async def add_task(self, task: NewTask, *, max_queue_size: int | None = None) -> TaskRecord:
        async with self._connection() as conn:
            return await self._add_task_on(conn, task, max_queue_size)

    async def _add_task_on(
        self, conn: Connection, task: NewTask, max_queue_size: int | None
    ) -> TaskRecord:
        params: dict[str, Any] = {
            "id": task.id,
            "name": task.name,
            "task_type": task.task_type,
            "priority": task.priority,
            "payload": _dumps(task.payload),
            "metadata": _dumps(task.metadata),
            "max_retries": task.max_retries,
            "timeout_seconds": task.timeout_seconds,
            "retry_config": None if task.retry is None else _dumps(task.retry),
            "owner": task.owner,
            "run_at": task.run_at,
            "created_at": task.created_at,
            "max_queue_size": max_queue_size,
            "channel": self.channel,
        }
        if max_queue_size is None:
            insert = f"INSERT INTO background_tasks ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES})"
        else:
            insert = (
                f"INSERT INTO background_tasks ({_INSERT_COLUMNS}) SELECT {_INSERT_VALUES}"
                f" WHERE ({_WAITING_UP_TO}) < %(max_queue_size)s"
            )
        # One statement: the check, the row and its notice commit together.
        query = (
            f"WITH added AS ({insert} RETURNING *)"
            " SELECT added.*, pg_notify(%(channel)s, 'task_added ' || added.id) FROM added"
        )
        try:
            cursor = await conn.execute(_q(query), params)
            row = await cursor.fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise ValueError(f"task {task.id} already exists") from exc
        if row is None:
            assert max_queue_size is not None
            raise QueueFullError(max_queue_size, max_queue_size)
        return _task(row)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        row = await self._fetchone("SELECT * FROM background_tasks WHERE id = %s", (task_id,))
        return None if row is None else _task(row)

    async def get_tasks(self, task_ids: Collection[str]) -> list[TaskRecord]:
        rows = await self._fetchall(
            "SELECT * FROM background_tasks WHERE id = ANY(%s)", (list(task_ids),)
        )
        return [_task(row) for row in rows]

    async def list_tasks(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "created_desc",
    ) -> list[TaskRecord]:
        orders = {
            "created_desc": "created_at DESC, seq DESC",
            # SQLite sorts NULL first ascending, so last descending: the same here.
            "finished_desc": "finished_at DESC NULLS LAST, seq DESC",
            "dispatch": _ORDER_PRIORITY,
        }
        if order not in orders:
            raise ValueError(f"order must be one of {sorted(orders)}")
        where = []
        params: list[Any] = []
        if statuses is not None:
            where.append("status = ANY(%s)")
            params.append([TaskStatus(s).value for s in statuses])
        if task_type is not None:
            where.append("task_type = %s")
            params.append(task_type)
        query = "SELECT * FROM background_tasks"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += f" ORDER BY {orders[order]} LIMIT %s OFFSET %s"
        params += [limit, offset]
        return [_task(row) for row in await self._fetchall(_q(query), params)]

    async def count_tasks(self) -> dict[TaskStatus, int]:
        counts = dict.fromkeys(TaskStatus, 0)
        for row in await self._fetchall(
            "SELECT status, count(*) AS n FROM background_tasks GROUP BY status"
        ):
            counts[TaskStatus(row["status"])] = row["n"]
        return counts

    async def list_executions(self, task_id: str) -> list[ExecutionRecord]:
        rows = await self._fetchall(
            "SELECT * FROM task_executions WHERE task_id = %s ORDER BY fence", (task_id,)
        )
        return [_execution(row) for row in rows]

    # --- dispatch --------------------------------------------------------------------

    async def claim(
        self,
        *,
        worker_id: str,
        now: float,
        lease_seconds: float,
        limit: int,
        task_types: Collection[str] | None = None,
        by_priority: bool = True,
    ) -> list[Claim]:
        if limit <= 0:
            return []
        query = _CLAIM.format(
            runnable=_RUNNABLE_ANY if task_types is None else _RUNNABLE_TYPES,
            order=_ORDER_PRIORITY if by_priority else _ORDER_FIFO,
        )
        params: dict[str, Any] = {
            "worker": worker_id,
            "expires": now + lease_seconds,
            "now": now,
            "limit": limit,
        }
        if task_types is not None:
            params["types"] = sorted(task_types)
        rows = await self._fetchall(_q(query), params)
        return [Claim(_task(r), LeaseToken(r["id"], worker_id, r["fence"])) for r in rows]

    async def heartbeat(
        self,
        *,
        worker: WorkerInfo,
        now: float,
        lease_seconds: float,
        running: Collection[LeaseToken] = (),
    ) -> HeartbeatResult:
        expires = now + lease_seconds
        tokens = {token.task_id: token.fence for token in running}
        upsert = (
            "INSERT INTO workers (worker_id, hostname, pid, process_started_at, concurrency,"
            " started_at, heartbeat_at, expires_at)"
            " VALUES (%(worker)s, %(hostname)s, %(pid)s, %(process_started_at)s,"
            " %(concurrency)s, %(started_at)s, %(now)s, %(expires)s)"
            " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
            " expires_at = excluded.expires_at"
        )
        params = {
            "worker": worker.worker_id,
            "hostname": worker.hostname,
            "pid": worker.pid,
            "process_started_at": worker.process_started_at,
            "concurrency": worker.concurrency,
            "started_at": worker.started_at or now,
            "now": now,
            "expires": expires,
        }
        held: dict[str, tuple[int, bool]] = {}
        if not tokens:
            async with self._connection() as conn:
                await conn.execute(upsert, params)
        else:
            rows = await self._fetchall(
                _q(
                    f"WITH beat AS ({upsert}) UPDATE background_tasks SET lease_expires_at ="
                    " %(expires)s WHERE lease_owner = %(worker)s AND status = 'running'"
                    " RETURNING id, fence, cancel_requested"
                ),
                params,
            )
            held = {row["id"]: (row["fence"], bool(row["cancel_requested"])) for row in rows}
        lost = frozenset(
            task_id
            for task_id, fence in tokens.items()
            if task_id not in held or held[task_id][0] != fence
        )
        cancel_requested = frozenset(
            task_id
            for task_id, (fence, cancel) in held.items()
            if cancel and tokens.get(task_id) == fence
        )
        return HeartbeatResult(lost=lost, cancel_requested=cancel_requested)

    async def finish(
        self,
        token: LeaseToken,
        outcome: Outcome,
        *,
        now: float,
        claimed: TaskRecord | None = None,
    ) -> TaskRecord:
        # The row is read back whole in the same statement; `claimed` would spare nothing.
        cancel_can_win = isinstance(outcome, Failed | Released | Deferred)
        row = await self._finish_as(token, outcome, now, guard=_NO_CANCEL if cancel_can_win else "")
        if row is None and cancel_can_win:
            # A cancel request that raced with the attempt's end still wins.
            row = await self._finish_as(token, Cancelled(), now, guard=_CANCEL)
        if row is None:
            raise LeaseLostError(
                f"task_id:{token.task_id} is no longer held by {token.worker_id}"
                f" (fence {token.fence})"
            )
        return _task(row)

    async def _finish_as(
        self, token: LeaseToken, outcome: Outcome, now: float, *, guard: str
    ) -> DictRow | None:
        """Record ``outcome`` in one statement if the token is current and the row matches
        ``guard``; None (changing nothing) otherwise. One statement, not a transaction of
        several: a task's end costs a single round trip."""
        changes, execution = _changes_for(outcome, now)
        assignments = ", ".join(
            f"{column} = {value}" if isinstance(value, _Expr) else f"{column} = %({column})s"
            for column, value in changes.items()
        )
        values = {c: v for c, v in changes.items() if not isinstance(v, _Expr)}
        return await self._fetchone(
            _q(
                "WITH current AS (SELECT id AS c_id, task_type AS c_type, attempts AS c_attempts,"
                " run_at AS c_run_at, started_at AS c_started FROM background_tasks"
                " WHERE id = %(id)s AND status = 'running' AND lease_owner = %(worker)s"
                f" AND fence = %(fence)s{guard} FOR UPDATE),"
                f" task AS (UPDATE background_tasks SET {assignments}, lease_owner = NULL,"
                " lease_expires_at = NULL, cancel_requested = FALSE, updated_at = %(now)s"
                " FROM current WHERE id = c_id RETURNING background_tasks.*),"
                " execution AS (UPDATE task_executions SET finished_at = %(now)s,"
                " outcome = %(x_outcome)s, error_category = %(x_error_category)s,"
                " error_type = %(x_error_type)s, error_message = %(x_error_message)s,"
                " traceback = %(x_traceback)s"
                " WHERE task_id = (SELECT c_id FROM current) AND fence = %(fence)s),"
                " metric AS (INSERT INTO task_metrics (task_id, task_type, attempt, outcome,"
                " error_category, queue_wait_seconds, duration_seconds, recorded_at)"
                " SELECT c_id, c_type, c_attempts, %(x_outcome)s, %(x_error_category)s,"
                " CASE WHEN c_started IS NOT NULL THEN greatest(0, c_started - c_run_at) END,"
                " CASE WHEN c_started IS NOT NULL THEN greatest(0, %(now)s - c_started) END,"
                " %(now)s FROM current)"
                " SELECT * FROM task"
            ),
            {
                **values,
                **{f"x_{key}": value for key, value in execution.items()},
                "now": now,
                "id": token.task_id,
                "worker": token.worker_id,
                "fence": token.fence,
            },
        )

    async def save_progress(self, snapshots: Sequence[ProgressSnapshot]) -> None:
        if not snapshots:
            return
        latest: dict[str, ProgressSnapshot] = {}
        for snapshot in snapshots:
            latest[snapshot.task_id] = snapshot
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT id FROM background_tasks WHERE status = 'running' AND id = ANY(%s)"
                " ORDER BY id FOR UPDATE",  # one lock order for every writer of several rows
                (list(latest),),
            )
            running = {row["id"] for row in await cursor.fetchall()}
            if not running:
                return
            async with conn.cursor() as cur:
                await cur.executemany(
                    "UPDATE background_tasks SET progress = %s,"
                    " message = coalesce(%s, message), updated_at = %s WHERE id = %s",
                    [
                        (s.progress, s.message, s.at, s.task_id)
                        for s in latest.values()
                        if s.task_id in running
                    ],
                )
                await cur.executemany(
                    "INSERT INTO task_progress (task_id, progress, message, metadata,"
                    " recorded_at) VALUES (%s, %s, %s, %s, %s)",
                    [
                        (
                            s.task_id,
                            s.progress,
                            s.message,
                            None if s.metadata is None else _dumps(s.metadata),
                            s.at,
                        )
                        for s in snapshots
                        if s.task_id in running
                    ],
                )
                await cur.executemany(
                    "DELETE FROM task_progress WHERE task_id = %(id)s AND id <= (SELECT id FROM"
                    " task_progress WHERE task_id = %(id)s ORDER BY id DESC LIMIT 1"
                    " OFFSET %(keep)s)",
                    [{"id": task_id, "keep": self.history_limit} for task_id in running],
                )

    async def progress_history(self, task_id: str, *, limit: int = 1000) -> list[ProgressSnapshot]:
        rows = await self._fetchall(
            "SELECT * FROM (SELECT * FROM task_progress WHERE task_id = %s"
            " ORDER BY id DESC LIMIT %s) AS recent ORDER BY id",
            (task_id, limit),
        )
        return [
            ProgressSnapshot(
                task_id=row["task_id"],
                progress=float(row["progress"]),
                message=row["message"],
                metadata=None if row["metadata"] is None else json.loads(row["metadata"]),
                at=float(row["recorded_at"]),
            )
            for row in rows
        ]

    # --- cancel, pause, clear ----------------------------------------------------------

    async def request_cancel(self, task_id: str, *, now: float) -> TaskRecord:
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT status FROM background_tasks WHERE id = %s FOR UPDATE", (task_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                raise TaskNotFoundError(task_id)
            status = TaskStatus(row["status"])
            if status.is_terminal:
                raise TaskStateError(task_id, status.value, "cancel")
            if status is TaskStatus.RUNNING:
                query = (
                    "UPDATE background_tasks SET cancel_requested = TRUE, updated_at = %(now)s"
                    " WHERE id = %(id)s RETURNING *"
                )
            else:
                query = (
                    "UPDATE background_tasks SET status = 'cancelled', finished_at = %(now)s,"
                    " updated_at = %(now)s WHERE id = %(id)s RETURNING *"
                )
            cursor = await conn.execute(query, {"now": now, "id": task_id})
            updated = await cursor.fetchone()
            assert updated is not None
            if status is TaskStatus.RUNNING:
                await self._notify(conn, "cancel_requested", task_id)
            return _task(updated)

    async def cancel_waiting(self, *, now: float) -> list[str]:
        rows = await self._fetchall(
            "UPDATE background_tasks SET status = 'cancelled', finished_at = %(now)s,"
            f" updated_at = %(now)s WHERE status IN {_WAITING} RETURNING id",
            {"now": now},
        )
        return [row["id"] for row in rows]

    async def set_paused(self, paused: bool, *, reason: str | None = None) -> None:
        async with self._connection() as conn:
            if paused:
                await conn.execute(
                    "INSERT INTO queue_state (key, value) VALUES ('paused', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_dumps({"reason": reason}),),
                )
            else:
                await conn.execute("DELETE FROM queue_state WHERE key = 'paused'")

    async def get_paused(self) -> tuple[bool, str | None]:
        row = await self._fetchone("SELECT value FROM queue_state WHERE key = 'paused'")
        if row is None:
            return False, None
        return True, json.loads(row["value"]).get("reason")

    async def requeue_failed(
        self,
        *,
        now: float,
        task_ids: Collection[str] | None = None,
        category: ErrorCategory | None = None,
        task_type: str | None = None,
    ) -> list[TaskRecord]:
        where = ["status = 'failed'"]
        params: dict[str, Any] = {"now": now, "channel": self.channel}
        if task_ids is not None:
            where.append("id = ANY(%(ids)s)")
            params["ids"] = list(task_ids)
        if category is not None:
            where.append("error_category = %(category)s")
            params["category"] = ErrorCategory(category).value
        if task_type is not None:
            where.append("task_type = %(task_type)s")
            params["task_type"] = task_type
        query = (
            "WITH requeued AS (UPDATE background_tasks SET status = 'pending', attempts = 0,"
            " run_at = %(now)s, updated_at = %(now)s, finished_at = NULL, progress = 0"
            " WHERE " + " AND ".join(where) + " RETURNING *)"
            " SELECT requeued.*, pg_notify(%(channel)s, 'task_added ' || requeued.id)"
            " FROM requeued"
        )
        return [_task(row) for row in await self._fetchall(_q(query), params)]

    # --- workers and crash recovery ----------------------------------------------------

    async def list_workers(self) -> list[WorkerInfo]:
        return [_worker(row) for row in await self._fetchall("SELECT * FROM workers")]

    async def expire_workers(self, worker_ids: Collection[str]) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE workers SET expires_at = 0 WHERE worker_id = ANY(%s)", (list(worker_ids),)
            )

    async def remove_worker(self, worker_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM workers WHERE worker_id = %s", (worker_id,))

    async def reap(self, *, now: float, decide: RetryDecider) -> ReapResult:
        async with self._connection() as conn, conn.transaction():
            # Rows locked by a concurrent reaper or a finishing worker are theirs: skip them.
            cursor = await conn.execute(
                "SELECT worker_id FROM workers WHERE expires_at < %s FOR UPDATE SKIP LOCKED",
                (now,),
            )
            dead = [row["worker_id"] for row in await cursor.fetchall()]
            cursor = await conn.execute(
                "SELECT * FROM background_tasks WHERE status = 'running'"
                " AND (lease_expires_at < %s OR lease_owner = ANY(%s))"
                " ORDER BY seq FOR UPDATE SKIP LOCKED",
                (now, dead),
            )
            requeued: list[TaskRecord] = []
            failed: list[TaskRecord] = []
            for row in await cursor.fetchall():
                lost: Exception = WorkerLostError(
                    f"worker {row['lease_owner']} stopped renewing its lease on task_id:{row['id']}"
                )
                await conn.execute(
                    "UPDATE task_executions SET finished_at = %s, outcome = 'lost',"
                    " error_category = 'resource', error_type = 'WorkerLostError',"
                    " error_message = %s WHERE task_id = %s AND fence = %s",
                    (now, str(lost), row["id"], row["fence"]),
                )
                record = _task(row)
                orphan = row["owner"] is not None and (
                    row["owner"] in dead or row["owner"] == row["lease_owner"]
                )
                retry_at = None if orphan or row["cancel_requested"] else decide(record)
                error: Exception = lost
                if row["cancel_requested"]:
                    status = "cancelled"
                elif orphan:
                    status = "failed"
                    error = HandlerUnavailableError(
                        f"the process holding the callable of task_id:{row['id']} died"
                    )
                else:
                    status = "failed" if retry_at is None else "retrying"
                cursor = await conn.execute(
                    "UPDATE background_tasks SET status = %(status)s, lease_owner = NULL,"
                    " lease_expires_at = NULL, cancel_requested = FALSE, updated_at = %(now)s,"
                    " run_at = coalesce(%(retry_at)s, run_at),"
                    " finished_at = CASE WHEN %(status)s IN ('failed', 'cancelled')"
                    " THEN %(now)s END,"
                    " error_message = %(message)s, error_type = %(type)s,"
                    " error_category = %(category)s WHERE id = %(id)s RETURNING *",
                    {
                        "status": status,
                        "now": now,
                        "retry_at": retry_at,
                        "message": str(error),
                        "type": type(error).__name__,
                        "category": ErrorCategory.RESOURCE.value,
                        "id": row["id"],
                    },
                )
                updated = await cursor.fetchone()
                assert updated is not None
                (requeued if status == "retrying" else failed).append(_task(updated))
            cursor = await conn.execute(
                "UPDATE background_tasks SET status = 'failed', finished_at = %(now)s,"
                " updated_at = %(now)s, error_type = 'HandlerUnavailableError',"
                " error_category = 'resource', error_message = 'the process holding this"
                " task''s callable is gone; register the task type to make it resumable'"
                f" WHERE status IN {_WAITING} AND owner IS NOT NULL AND (owner = ANY(%(dead)s)"
                " OR owner NOT IN (SELECT worker_id FROM workers)) RETURNING *",
                {"now": now, "dead": dead},
            )
            failed.extend(_task(row) for row in await cursor.fetchall())
            await conn.execute("DELETE FROM workers WHERE worker_id = ANY(%s)", (dead,))
            return ReapResult(requeued=requeued, failed=failed, expired_workers=dead)

    # --- shared circuit breakers --------------------------------------------------------

    async def save_breaker_state(self, state: SharedBreakerState) -> None:
        # Autocommit: the row and its notice commit together, in one statement.
        await self._fetchall(
            "WITH saved AS (INSERT INTO circuit_breakers AS b (name, state, opened_at,"
            " retry_at, updated_at, worker_id) VALUES (%(name)s, %(state)s, %(opened_at)s,"
            " %(retry_at)s, %(updated_at)s, %(worker_id)s) ON CONFLICT (name) DO UPDATE SET"
            " state = excluded.state, opened_at = excluded.opened_at,"
            " retry_at = excluded.retry_at, updated_at = excluded.updated_at,"
            " worker_id = excluded.worker_id WHERE excluded.updated_at >= b.updated_at"
            " RETURNING name)"
            " SELECT pg_notify(%(channel)s, 'breaker_changed ' || name) FROM saved",
            {
                "name": state.name,
                "state": state.state,
                "opened_at": state.opened_at,
                "retry_at": state.retry_at,
                "updated_at": state.updated_at,
                "worker_id": state.worker_id,
                "channel": self.channel,
            },
        )

    async def load_breaker_states(self) -> list[SharedBreakerState]:
        return [
            SharedBreakerState(
                name=row["name"],
                state=row["state"],
                opened_at=row["opened_at"],
                retry_at=row["retry_at"],
                updated_at=row["updated_at"],
                worker_id=row["worker_id"],
            )
            for row in await self._fetchall("SELECT * FROM circuit_breakers ORDER BY name")
        ]

    # --- statistics and system metrics ---------------------------------------------------

    async def count_tasks_by_type(self) -> dict[str, dict[TaskStatus, int]]:
        # Grouped from the (task_type, status) index: no counter rows to contend on.
        counts: dict[str, dict[TaskStatus, int]] = {}
        for row in await self._fetchall(
            "SELECT task_type, status, count(*) AS n FROM background_tasks GROUP BY 1, 2"
        ):
            per_type = counts.setdefault(row["task_type"], dict.fromkeys(TaskStatus, 0))
            per_type[TaskStatus(row["status"])] = row["n"]
        return counts

    async def metrics_window(self, *, since: float, sample_limit: int = 10_000) -> MetricsWindow:
        async with self._connection() as conn:
            await conn.set_autocommit(False)
            try:
                # One snapshot for the three reads, as SQLite's read transaction gives.
                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                async with conn.transaction():
                    cursor = await conn.execute(
                        "SELECT task_type, outcome, error_category, attempt > 1 AS retry,"
                        " count(*) AS n, sum(duration_seconds) AS duration,"
                        " sum(queue_wait_seconds) AS wait FROM task_metrics"
                        " WHERE recorded_at >= %s GROUP BY 1, 2, 3, 4",
                        (since,),
                    )
                    groups = [
                        AttemptGroup(
                            task_type=row["task_type"],
                            outcome=row["outcome"],
                            category=row["error_category"],
                            retry=bool(row["retry"]),
                            count=row["n"],
                            duration_total=float(row["duration"] or 0.0),
                            wait_total=float(row["wait"] or 0.0),
                        )
                        for row in await cursor.fetchall()
                    ]
                    cursor = await conn.execute(
                        "SELECT duration_seconds FROM task_metrics WHERE recorded_at >= %s"
                        " AND outcome = 'completed' AND duration_seconds IS NOT NULL"
                        " ORDER BY recorded_at DESC LIMIT %s",
                        (since, sample_limit),
                    )
                    durations = [float(row["duration_seconds"]) for row in await cursor.fetchall()]
                    cursor = await conn.execute(
                        "SELECT count(*) AS n FROM background_tasks WHERE finished_at >= %s"
                        " AND status = 'failed'",
                        (since,),
                    )
                    dead = await cursor.fetchone()
            finally:
                await conn.set_isolation_level(None)
                await conn.set_autocommit(True)
        return MetricsWindow(
            since=since,
            groups=groups,
            durations=durations,
            dead_lettered=0 if dead is None else dead["n"],
        )

    async def add_resource_sample(self, sample: ResourceSample) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO system_metrics (recorded_at, cpu_percent, memory_percent,"
                " disk_percent, process_rss_mb, process_cpu_percent, active_tasks, queued_tasks)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    sample.recorded_at,
                    sample.cpu_percent,
                    sample.memory_percent,
                    sample.disk_percent,
                    sample.process_rss_mb,
                    sample.process_cpu_percent,
                    sample.active_tasks,
                    sample.queued_tasks,
                ),
            )

    async def resource_samples(
        self, *, since: float | None = None, limit: int = 1000
    ) -> list[ResourceSample]:
        rows = await self._fetchall(
            "SELECT * FROM (SELECT * FROM system_metrics WHERE recorded_at >= %s"
            " ORDER BY recorded_at DESC LIMIT %s) AS recent ORDER BY recorded_at",
            (since if since is not None else 0.0, limit),
        )
        return [
            ResourceSample(
                recorded_at=float(row["recorded_at"]),
                cpu_percent=float(row["cpu_percent"]),
                memory_percent=float(row["memory_percent"]),
                disk_percent=float(row["disk_percent"]),
                process_rss_mb=float(row["process_rss_mb"]),
                process_cpu_percent=float(row["process_cpu_percent"] or 0.0),
                active_tasks=row["active_tasks"] or 0,
                queued_tasks=row["queued_tasks"] or 0,
            )
            for row in rows
        ]

    async def ping(self) -> None:
        await self._fetchone("SELECT 1 AS ok")

    # --- translation jobs ----------------------------------------------------------------

    async def add_translation_job(
        self, task: NewTask, job: NewTranslationJob, *, max_queue_size: int | None = None
    ) -> TranslationJobRow:
        async with self._connection() as conn, conn.transaction():
            # The task first (with its queue-size check and notice), then its job: one
            # transaction, so the notice arrives when both exist.
            await self._add_task_on(conn, task, max_queue_size)
            await self._add_jobs_on(conn, [(task, job)])
        return job.row(task)

    async def add_translation_jobs(
        self,
        items: Sequence[tuple[NewTask, NewTranslationJob]],
        *,
        max_queue_size: int | None = None,
    ) -> list[TranslationJobRow]:
        items = list(items)
        if not items:
            return []
        tasks = [task for task, _ in items]
        columns: dict[str, list[Any]] = {
            "id": [task.id for task in tasks],
            "name": [task.name for task in tasks],
            "task_type": [task.task_type for task in tasks],
            "priority": [task.priority for task in tasks],
            "payload": [_dumps(task.payload) for task in tasks],
            "metadata": [_dumps(task.metadata) for task in tasks],
            "max_retries": [task.max_retries for task in tasks],
            "timeout_seconds": [task.timeout_seconds for task in tasks],
            "retry_config": [None if task.retry is None else _dumps(task.retry) for task in tasks],
            "owner": [task.owner for task in tasks],
            "run_at": [task.run_at for task in tasks],
            "created_at": [task.created_at for task in tasks],
        }
        params: dict[str, Any] = {
            **columns,
            "count": len(items),
            "max_queue_size": max_queue_size,
            "channel": self.channel,
        }
        room = "TRUE" if max_queue_size is None else _ROOM_FOR_ALL
        # One statement, as for add_task: the size check for the whole batch, every task
        # row (in the order given: seq keeps FIFO) and their notices.
        query = (
            f"WITH added AS (INSERT INTO background_tasks ({_INSERT_COLUMNS})"
            f" SELECT {_BATCH_VALUES} FROM {_BATCH_ROWS} WHERE {room} ORDER BY t.ord"
            " RETURNING id)"
            " SELECT added.id, pg_notify(%(channel)s, 'task_added ' || added.id) FROM added"
        )
        async with self._connection() as conn, conn.transaction():
            try:
                cursor = await conn.execute(_q(query), params)
                added = await cursor.fetchall()
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError(
                    f"a task of the batch already exists ({exc.diag.message_detail})"
                ) from exc
            if len(added) != len(items):
                assert max_queue_size is not None
                cursor = await conn.execute(_q(f"SELECT ({_WAITING_UP_TO}) AS waiting"), params)
                counted = await cursor.fetchone()
                # Raising inside the transaction rolls it back: nothing was stored.
                waiting = counted["waiting"] if counted else 0
                raise QueueFullError(max_queue_size, waiting, len(items))
            await self._add_jobs_on(conn, items)
        return [job.row(task) for task, job in items]

    async def _add_jobs_on(
        self, conn: Connection, items: Sequence[tuple[NewTask, NewTranslationJob]]
    ) -> None:
        """The ``translation_jobs`` rows of tasks inserted in this transaction."""
        try:
            await conn.execute(
                "INSERT INTO translation_jobs (id, task_id, source_language, target_language,"
                " workflow_mode, original_text, metadata, steps, created_at, updated_at)"
                " SELECT j.id, j.task_id, j.source_language, j.target_language,"
                " j.workflow_mode, j.original_text, j.metadata, '{}', j.created_at,"
                " j.created_at FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::text[], %s::float8[]) AS j(id, task_id,"
                " source_language, target_language, workflow_mode, original_text, metadata,"
                " created_at)",
                (
                    [job.id for _, job in items],
                    [task.id for task, _ in items],
                    [job.source_language for _, job in items],
                    [job.target_language for _, job in items],
                    [job.workflow_mode for _, job in items],
                    [job.original_text for _, job in items],
                    [_dumps(job.metadata) for _, job in items],
                    [task.created_at for task, _ in items],
                ),
            )
        except psycopg.errors.UniqueViolation as exc:
            if len(items) == 1:
                raise ValueError(f"translation job {items[0][1].id} already exists") from exc
            raise ValueError(
                f"a translation job of the batch already exists ({exc.diag.message_detail})"
            ) from exc

    async def _jobs(self, conn: Connection, rows: list[DictRow]) -> list[TranslationJobRow]:
        cursor = await conn.execute(
            "SELECT * FROM background_tasks WHERE id = ANY(%s)",
            ([row["task_id"] for row in rows],),
        )
        tasks = {task["id"]: _task(task) for task in await cursor.fetchall()}
        return [translation_job_from_row(row, tasks[row["task_id"]]) for row in rows]

    async def _read_jobs(self, query: Any, params: Any) -> list[TranslationJobRow]:
        # Jobs and their tasks from one snapshot.
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor = await conn.execute(query, params)
            rows = cast(list[DictRow], await cursor.fetchall())
            return await self._jobs(conn, rows) if rows else []

    async def get_translation_job(self, job_id: str) -> TranslationJobRow | None:
        jobs = await self._read_jobs("SELECT * FROM translation_jobs WHERE id = %s", (job_id,))
        return jobs[0] if jobs else None

    async def list_translation_jobs(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TranslationJobRow]:
        query = "SELECT j.* FROM translation_jobs AS j"
        params: list[Any] = []
        if statuses is not None:
            query += " JOIN background_tasks AS t ON t.id = j.task_id WHERE t.status = ANY(%s)"
            params.append([TaskStatus(s).value for s in statuses])
        query += " ORDER BY j.created_at DESC, j.id DESC LIMIT %s OFFSET %s"
        params += [limit, offset]
        return await self._read_jobs(_q(query), params)

    async def save_translation_step(
        self, job_id: str, step: str, checkpoint: dict[str, Any], *, now: float
    ) -> None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE translation_jobs"
                " SET steps = (steps::jsonb || jsonb_build_object(%s::text, %s::jsonb))::text,"
                " updated_at = %s WHERE id = %s",
                (step, _dumps(checkpoint), now, job_id),
            )
            if cursor.rowcount == 0:
                raise TaskNotFoundError(job_id)

    async def save_translation_result(
        self, job_id: str, result: dict[str, Any], *, now: float
    ) -> None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE translation_jobs SET result = %s, updated_at = %s WHERE id = %s",
                (_dumps(result), now, job_id),
            )
            if cursor.rowcount == 0:
                raise TaskNotFoundError(job_id)

    # --- housekeeping ------------------------------------------------------------------

    async def cleanup(self, *, finished_before: float) -> int:
        # Small transactions, so no lock is held for long.
        total = 0
        while True:
            async with self._connection() as conn:
                cursor = await conn.execute(
                    "DELETE FROM background_tasks WHERE id IN (SELECT id FROM background_tasks"
                    f" WHERE status IN {_TERMINAL} AND finished_at < %s LIMIT 500)",
                    (finished_before,),
                )
                deleted = cursor.rowcount
            if deleted <= 0:
                break
            total += deleted
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM system_metrics WHERE recorded_at < %s", (finished_before,)
            )
        return total

    async def _sizes(self, conn: Connection) -> dict[str, int]:
        cursor = await conn.execute(
            "SELECT relname AS name, pg_total_relation_size(c.oid) AS bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname = current_schema()"
            " AND relname = ANY(%s) ORDER BY relname",
            ([*_BACKUP_TABLES, "schema_migrations"],),
        )
        tables = {row["name"]: int(row["bytes"]) for row in await cursor.fetchall()}
        return {
            "database_bytes": sum(tables.values()),
            **{f"{k}_bytes": v for k, v in tables.items()},
        }

    async def _integrity(self, conn: Connection) -> str:
        """``ok``, or what is wrong: indexes left invalid (e.g. by a failed concurrent
        build), and rows that break the task invariants the contract relies on."""
        problems: list[str] = []
        cursor = await conn.execute(
            "SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND NOT (i.indisvalid AND i.indisready)"
        )
        problems += [f"invalid index {row['name']}" for row in await cursor.fetchall()]
        checks = {
            "running tasks without a lease": "SELECT count(*) AS n FROM background_tasks"
            " WHERE status = 'running' AND (lease_owner IS NULL OR lease_expires_at IS NULL)",
            "finished tasks still leased": "SELECT count(*) AS n FROM background_tasks"
            f" WHERE status IN {_TERMINAL} AND lease_owner IS NOT NULL",
            "running tasks without a running execution": "SELECT count(*) AS n FROM"
            " background_tasks t WHERE status = 'running' AND NOT EXISTS (SELECT 1 FROM"
            " task_executions e WHERE e.task_id = t.id AND e.fence = t.fence"
            " AND e.outcome = 'running')",
        }
        for problem, query in checks.items():
            cursor = await conn.execute(_q(query))
            found = await cursor.fetchone()
            if found is not None and found["n"]:
                problems.append(f"{found['n']} {problem}")
        return "ok" if not problems else "; ".join(problems)

    async def maintenance(self, *, vacuum: bool = False) -> dict[str, Any]:
        # VACUUM cannot run in a transaction: the pool's connections are in autocommit.
        async with self._connection() as conn:
            before = await self._sizes(conn)
            command = "VACUUM (ANALYZE)" if vacuum else "ANALYZE"
            for table in [*_BACKUP_TABLES, "schema_migrations"]:
                await conn.execute(_q(f"{command} {table}"))
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
        """A SQLite file with the SQLite backend's schema, copied from one REPEATABLE READ
        snapshot: the same tools (and :class:`SQLiteTaskStore`) read it."""
        target = Path(path)
        partial = target.with_name(target.name + ".partial")

        def create() -> sqlite3.Connection:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.unlink(missing_ok=True)
            copy = sqlite3.connect(partial, isolation_level=None, check_same_thread=False)
            SQLiteTaskStore._migrate(copy)
            copy.execute("BEGIN")
            return copy

        copy = await anyio.to_thread.run_sync(create)
        try:
            async with self._connection() as conn:
                await conn.set_autocommit(False)
                try:
                    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                    await conn.set_read_only(True)
                    async with conn.transaction():
                        for table in _BACKUP_TABLES:
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
            await cursor.execute(_q(f"SELECT * FROM {table}"))
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
