"""The SQLite backend: one file in WAL mode, all access from one dedicated thread.

Several processes may share the file: writes take the lock up front (``BEGIN IMMEDIATE``)
and wait for it up to ``busy_timeout``, so they queue instead of failing with "database is
locked". Claims are one ``UPDATE ... WHERE rowid IN (SELECT ... ORDER BY ... LIMIT n)
RETURNING`` statement, which SQLite runs under the write lock: no task is claimed twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import sqlite_utils

from ..errors import (
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
    TaskPriority,
    TaskRecord,
    TaskStatus,
)
from ._dbthread import DatabaseThread, Mode, Refused
from ._rows import Expr as _Expr
from ._rows import as_float as _as_float
from ._rows import changes_for as _changes_for
from ._rows import dumps as _dumps
from ._rows import execution_from_row as _execution
from ._rows import finished_record, migrations, translation_job_from_row
from ._rows import task_from_row as _task
from ._rows import worker_from_row as _worker
from .base import (
    AttemptGroup,
    Cancelled,
    Claim,
    Completed,
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

__all__ = ["SQLiteTaskStore"]

_WAITING = "('pending', 'retrying')"
_TERMINAL = "('completed', 'failed', 'cancelled')"

_CLAIM = """
UPDATE background_tasks
SET status = 'running', attempts = attempts + 1, fence = fence + 1,
    lease_owner = :worker, lease_expires_at = :expires, cancel_requested = 0,
    started_at = :now, updated_at = :now
WHERE rowid IN ({pick})
RETURNING rowid AS seq, *
"""
_PICK = (
    "SELECT rowid{columns} FROM background_tasks INDEXED BY ix_background_tasks_dispatch"
    " WHERE status IN ('pending', 'retrying'){priority} AND run_at <= :now AND {runnable}"
    " ORDER BY {order} LIMIT :limit"
)


def claim_sql(*, typed: bool, by_priority: bool) -> str:
    """The claim statement. It names the dispatch index, ``(priority DESC, run_at)`` of
    waiting rows: without planner statistics (a new or never-analysed file) SQLite may
    pick the status index and sort every waiting row, so claims would slow down as the
    queue grows. Plain FIFO (``by_priority=False``) reads the first ``limit`` rows of each
    priority from that index and sorts those few by ``run_at``: a second index in FIFO
    order would cost every insert and claim, for a mode few use."""
    runnable = _RUNNABLE_TYPES if typed else _RUNNABLE_ANY
    if by_priority:
        pick = _PICK.format(columns="", priority="", runnable=runnable, order=_ORDER_PRIORITY)
    else:
        arms = " UNION ALL ".join(
            "SELECT * FROM ("
            + _PICK.format(
                columns=", run_at",
                priority=f" AND priority = {rank}",
                runnable=runnable,
                order=_ORDER_FIFO,
            )
            + ")"
            for rank in (priority.rank for priority in TaskPriority)
        )
        pick = f"SELECT rowid FROM ({arms}) ORDER BY {_ORDER_FIFO} LIMIT :limit"
    return _CLAIM.format(pick=pick)


_RECORD_METRIC = (
    "INSERT INTO task_metrics (task_id, task_type, attempt, outcome, error_category,"
    " queue_wait_seconds, duration_seconds, recorded_at)"
    " SELECT id, task_type, attempts, :outcome, :error_category,"
    " max(0.0, started_at - run_at), max(0.0, :now - started_at), :now"
    " FROM background_tasks"
    " WHERE id = :id AND status = 'running' AND lease_owner = :worker AND fence = :fence"
)
_INSERT_COLUMNS = (
    "INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,"
    " max_retries, timeout_seconds, retry_config, owner, run_at, created_at, updated_at)"
)
_INSERT = _INSERT_COLUMNS + " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_WAITING_COUNT = f"SELECT coalesce(sum(n), 0) FROM task_counts WHERE status IN {_WAITING}"
_INSERT_UNLESS_FULL = (
    _INSERT_COLUMNS + " SELECT ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?"
    f" WHERE ({_WAITING_COUNT}) < ?"
)
_RUNNABLE_ANY = "(owner IS NULL OR owner = :worker)"
_RUNNABLE_TYPES = (
    "(owner = :worker OR (owner IS NULL AND task_type IN (SELECT value FROM json_each(:types))))"
)
_ORDER_PRIORITY = "priority DESC, run_at, rowid"
_ORDER_FIFO = "run_at, rowid"


_FINISH_EXECUTION = (
    "UPDATE task_executions SET finished_at = :now, outcome = :outcome,"
    " error_category = :error_category, error_type = :error_type,"
    " error_message = :error_message, traceback = :traceback"
    " WHERE task_id = :id AND fence = :fence"
)


_FINISH_SQL: dict[tuple[tuple[str, ...], bool], str] = {}


def _finish_sql(changes: dict[str, Any], *, whole: bool) -> str:
    """The task row's UPDATE for these changes (cached: one per outcome shape; a column
    whose value is an :class:`Expr` always has the same expression)."""
    key = (tuple(changes), whole)
    sql = _FINISH_SQL.get(key)
    if sql is None:
        assignments = ", ".join(
            f"{column} = {value}" if isinstance(value, _Expr) else f"{column} = :{column}"
            for column, value in changes.items()
        )
        # Given the claimed record, only what may have changed under the running task
        # (and was not cleared here) is read back: RETURNING * and decoding it cost
        # ~20 us a task.
        returning = "*" if whole else "progress, message"
        sql = _FINISH_SQL[key] = (
            f"UPDATE background_tasks SET {assignments}, lease_owner = NULL,"
            " lease_expires_at = NULL, cancel_requested = 0, updated_at = :now"
            f" WHERE id = :id RETURNING {returning}"
        )
    return sql


def _new_row(task: NewTask) -> tuple[Any, ...]:
    """A new task's columns, ``id`` to ``created_at`` in ``_INSERT_COLUMNS``' order."""
    return (
        task.id,
        task.name,
        task.task_type,
        task.priority,
        _dumps(task.payload),
        _dumps(task.metadata),
        task.max_retries,
        task.timeout_seconds,
        None if task.retry is None else _dumps(task.retry),
        task.owner,
        task.run_at,
        task.created_at,
    )


def _insert_task(conn: sqlite3.Connection, task: NewTask, max_queue_size: int | None) -> None:
    values = (*_new_row(task), task.created_at)  # updated_at
    try:
        if max_queue_size is None:
            conn.execute(_INSERT, values)
            return
        # The size check rides in the INSERT: one statement, under the write lock.
        if conn.execute(_INSERT_UNLESS_FULL, (*values, max_queue_size)).rowcount:
            return
    except sqlite3.IntegrityError as exc:
        raise ValueError(f"task {task.id} already exists") from exc
    (size,) = conn.execute(_WAITING_COUNT).fetchone()
    raise QueueFullError(max_queue_size, size)


def _json_rows(*columns: str) -> str:
    """A subquery over the JSON array of arrays bound to its ``?``, one row per inner
    array, its items named ``columns`` in order (and ``n``, the row's place)."""
    picks = ", ".join(f"json_extract(value, '$[{i}]') AS {c}" for i, c in enumerate(columns))
    return f"(SELECT key AS n, {picks} FROM json_each(?))"


_INSERT_MANY = (
    _INSERT_COLUMNS + " SELECT id, name, task_type, priority, 'pending', payload, metadata,"
    " max_retries, timeout_seconds, retry_config, owner, run_at, created_at, created_at FROM "
    + _json_rows(
        *("id", "name", "task_type", "priority", "payload", "metadata", "max_retries"),
        *("timeout_seconds", "retry_config", "owner", "run_at", "created_at"),
    )
)


def _insert_tasks(
    conn: sqlite3.Connection, items: list[tuple[NewTask, int | None, TaskRecord]]
) -> list[TaskRecord | Refused]:
    """Submits that landed in one group, as one INSERT over a JSON array. The size check
    counts the waiting rows once, under the write lock, and lets tasks in, in order, while
    there is room; a duplicate id fails the statement, and the group is then retried one
    task at a time, which names the duplicate."""
    if len(items) == 1:
        ((task, limit, record),) = items
        try:
            _insert_task(conn, task, limit)
        except (QueueFullError, ValueError) as exc:
            return [Refused(exc)]
        return [record]
    results: list[TaskRecord | Refused] = []
    rows: list[tuple[Any, ...]] = []
    waiting = 0
    if any(limit is not None for _, limit, _ in items):
        (waiting,) = conn.execute(_WAITING_COUNT).fetchone()
    for task, limit, record in items:
        if limit is not None and waiting >= limit:
            results.append(Refused(QueueFullError(limit, waiting)))
            continue
        waiting += 1
        rows.append(_new_row(task))
        results.append(record)
    if rows:
        conn.execute(_INSERT_MANY, (_dumps(rows),))
    return results


def _finish(
    conn: sqlite3.Connection,
    token: LeaseToken,
    outcome: Outcome,
    now: float,
    claimed: TaskRecord | None,
) -> TaskRecord:
    """One attempt's outcome: the metrics row, the task row and the execution row."""
    lease = {"id": token.task_id, "worker": token.worker_id, "fence": token.fence}
    # A cancel request that raced with the attempt's end still wins over a failure.
    tries: list[tuple[Outcome, str]] = [(outcome, "")]
    if isinstance(outcome, Failed | Released | Deferred):
        tries = [(outcome, " AND NOT cancel_requested"), (Cancelled(), " AND cancel_requested")]
    # The metrics row is taken from the row as the attempt left it, and only if the lease
    # is still ours: that INSERT is also the lease check. One parameter dict serves the
    # three statements (a name has the same value in each; SQLite binds only the names a
    # statement uses).
    for effective, guard in tries:
        changes, execution = _changes_for(effective, now)
        params = {**changes, **execution, **lease, "now": now}
        if conn.execute(_RECORD_METRIC + guard, params).rowcount:
            break
    else:
        raise _lease_lost(token)
    updated = conn.execute(_finish_sql(changes, whole=claimed is None), params).fetchone()
    conn.execute(_FINISH_EXECUTION, params)
    if claimed is None:
        return _task(updated)
    progress, message = updated
    return finished_record(claimed, changes, progress=progress, message=message, now=now)


def _lease_lost(token: LeaseToken) -> LeaseLostError:
    return LeaseLostError(
        f"task_id:{token.task_id} is no longer held by {token.worker_id} (fence {token.fence})"
    )


# Completed attempts that landed in one group: each statement covers all of them. The
# first is the lease check, and reads the message (a completion sets progress to 1 and
# leaves the message as it was); the JSON rows are [id, worker, fence, result, now]. CROSS
# JOIN keeps those few rows the outer loop: else SQLite may walk every running task.
_DONE = _json_rows("id", "worker", "fence", "result", "now")
_HELD = (
    "SELECT json_group_array(json_array(d.n, t.message)) FROM " + _DONE + " AS d"
    " CROSS JOIN background_tasks AS t ON t.id = d.id"
    " WHERE t.status = 'running' AND t.lease_owner = d.worker AND t.fence = d.fence"
)
_COMPLETE_METRICS = (
    "INSERT INTO task_metrics (task_id, task_type, attempt, outcome, error_category,"
    " queue_wait_seconds, duration_seconds, recorded_at)"
    " SELECT t.id, t.task_type, t.attempts, 'completed', NULL,"
    " max(0.0, t.started_at - t.run_at), max(0.0, d.now - t.started_at), d.now"
    " FROM " + _DONE + " AS d CROSS JOIN background_tasks AS t ON t.id = d.id"
)
_COMPLETE_TASKS = (
    "UPDATE background_tasks SET status = 'completed', result = d.result, progress = 1.0,"
    " finished_at = d.now, error_message = NULL, error_type = NULL, error_category = NULL,"
    " lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, updated_at = d.now"
    " FROM " + _DONE + " AS d WHERE background_tasks.id = d.id"
)
_COMPLETE_EXECUTIONS = (
    "UPDATE task_executions SET finished_at = d.now, outcome = 'completed',"
    " error_category = NULL, error_type = NULL, error_message = NULL, traceback = NULL"
    " FROM " + _DONE + " AS d WHERE task_id = d.id AND task_executions.fence = d.fence"
)


def _complete(
    conn: sqlite3.Connection, items: list[tuple[LeaseToken, Completed, float, TaskRecord]]
) -> list[TaskRecord | Refused]:
    """Completed attempts that landed in one group (their claims' records given): what
    :func:`_finish` writes for each, in four statements for the lot."""
    if len(items) == 1:
        ((token, outcome, now, claimed),) = items
        try:
            return [_finish(conn, token, outcome, now, claimed)]
        except LeaseLostError as exc:
            return [Refused(exc)]
    changes = [_changes_for(outcome, now)[0] for _, outcome, now, _ in items]
    rows = [
        (token.task_id, token.worker_id, token.fence, change["result"], now)
        for (token, _, now, _), change in zip(items, changes, strict=True)
    ]
    (held,) = conn.execute(_HELD, (_dumps(rows),)).fetchone()
    messages: dict[int, str | None] = dict(json.loads(held))
    results: list[TaskRecord | Refused] = []
    kept: list[tuple[Any, ...]] = []
    finishing: set[str] = set()
    for key, (token, _, now, claimed) in enumerate(items):
        if key not in messages or token.task_id in finishing:  # a second finish: stale
            results.append(Refused(_lease_lost(token)))
            continue
        finishing.add(token.task_id)
        kept.append(rows[key])
        results.append(
            finished_record(claimed, changes[key], progress=1.0, message=messages[key], now=now)
        )
    if kept:
        encoded = _dumps(kept)
        conn.execute(_COMPLETE_METRICS, (encoded,))
        conn.execute(_COMPLETE_TASKS, (encoded,))
        conn.execute(_COMPLETE_EXECUTIONS, (encoded,))
    return results


def _insert_job(conn: sqlite3.Connection, task: NewTask, job: NewTranslationJob) -> None:
    try:
        conn.execute(
            "INSERT INTO translation_jobs (id, task_id, source_language, target_language,"
            " workflow_mode, original_text, metadata, steps, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)",
            (
                job.id,
                task.id,
                job.source_language,
                job.target_language,
                job.workflow_mode,
                job.original_text,
                _dumps(job.metadata),
                task.created_at,
                task.created_at,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise ValueError(f"translation job {job.id} already exists") from exc


class SQLiteTaskStore(TaskStore):
    """Tasks in one SQLite file (WAL). ``path`` may be ``":memory:"`` for throwaway use."""

    serial_writes = True  # every call is a job of the one database thread, in order

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        history_limit: int = 200,
        watch_interval: float = 0.05,
        cache_mb: int = 32,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.history_limit = history_limit
        self.watch_interval = watch_interval
        self.cache_mb = cache_mb
        self._thread: DatabaseThread | None = None
        self._schema_version = 0

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
        )
        conn.row_factory = sqlite3.Row
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
        thread = DatabaseThread(self._connect, name=f"vpsweb-tasks-sqlite:{Path(self.path).name}")
        thread.start()
        self._thread = thread
        try:
            self._schema_version = await thread.run(self._migrate)
        except BaseException:
            self._thread = None
            thread.close()
            raise

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> int:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        if "schema_migrations" not in db.table_names():
            conn.execute(
                "CREATE TABLE schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations("sqlite"):
            if version in applied:
                continue
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            applied.add(version)
        return max(applied, default=0)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            # Joining waits for queued writes; do it off the event loop.
            import anyio.to_thread

            await anyio.to_thread.run_sync(thread.close)

    async def listen(
        self,
        on_notice: Callable[[Notice, str], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Commits to the file, seen every ``watch_interval`` seconds through ``PRAGMA
        data_version`` and relayed as one ``changed`` notice. SQLite cannot say what
        changed; the queue looks again (a claim round), so a task submitted by another
        process starts within ``watch_interval`` instead of the poll interval.

        The watch is a plain thread with a connection of its own: a check costs ~20 us and
        never wakes the event loop unless something changed (this store's own commits
        count too: one extra claim round, at most one per interval). A ``watch_interval``
        of 0 (or an in-memory database) turns it off."""
        if self.watch_interval <= 0 or self.path == ":memory:":
            await super().listen(on_notice, task_status=task_status)
            return
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=self.busy_timeout)

        def version() -> int:
            (value,) = conn.execute("PRAGMA data_version").fetchone()
            return int(value)

        def watch(seen: int) -> None:
            try:
                while not stop.wait(self.watch_interval):
                    current = version()
                    if current != seen:
                        seen = current
                        loop.call_soon_threadsafe(on_notice, "changed", "")
            except RuntimeError:  # the loop closed under us: nobody is listening
                pass
            finally:
                conn.close()

        thread = threading.Thread(
            target=watch, args=(version(),), name=f"vpsweb-tasks-watch:{Path(self.path).name}"
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

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def _db(self) -> DatabaseThread:
        if self._thread is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._thread

    # --- submit and read -------------------------------------------------------------

    async def add_task(self, task: NewTask, *, max_queue_size: int | None = None) -> TaskRecord:
        record: TaskRecord = await self._db().run_combined(
            _insert_tasks, (task, max_queue_size, task.record())
        )
        return record

    async def get_task(self, task_id: str) -> TaskRecord | None:
        def get(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute("SELECT * FROM background_tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else _task(row)

        return await self._db().run(get, Mode.READ)

    async def get_tasks(self, task_ids: Collection[str]) -> list[TaskRecord]:
        ids = _dumps(list(task_ids))

        def get(conn: sqlite3.Connection) -> list[TaskRecord]:
            rows = conn.execute(
                "SELECT * FROM background_tasks WHERE id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            return [_task(row) for row in rows]

        return await self._db().run(get, Mode.READ)

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
            "created_desc": "created_at DESC, rowid DESC",
            "finished_desc": "finished_at DESC, rowid DESC",
            "dispatch": _ORDER_PRIORITY,
        }
        if order not in orders:
            raise ValueError(f"order must be one of {sorted(orders)}")
        where = []
        params: list[Any] = []
        if statuses is not None:
            where.append("status IN (SELECT value FROM json_each(?))")
            params.append(_dumps([TaskStatus(s).value for s in statuses]))
        if task_type is not None:
            where.append("task_type = ?")
            params.append(task_type)
        sql = "SELECT * FROM background_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {orders[order]} LIMIT ? OFFSET ?"
        params += [limit, offset]

        def select(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [_task(row) for row in conn.execute(sql, params)]

        return await self._db().run(select, Mode.READ)

    async def count_tasks(self) -> dict[TaskStatus, int]:
        def count(conn: sqlite3.Connection) -> dict[TaskStatus, int]:
            counts = dict.fromkeys(TaskStatus, 0)
            for status, n in conn.execute("SELECT status, sum(n) FROM task_counts GROUP BY status"):
                counts[TaskStatus(status)] = n
            return counts

        return await self._db().run(count, Mode.READ)

    async def list_executions(self, task_id: str) -> list[ExecutionRecord]:
        def select(conn: sqlite3.Connection) -> list[ExecutionRecord]:
            rows = conn.execute(
                "SELECT * FROM task_executions WHERE task_id = ? ORDER BY fence", (task_id,)
            )
            return [_execution(row) for row in rows]

        return await self._db().run(select, Mode.READ)

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
        sql = claim_sql(typed=task_types is not None, by_priority=by_priority)
        params: dict[str, Any] = {
            "worker": worker_id,
            "expires": now + lease_seconds,
            "now": now,
            "limit": limit,
        }
        if task_types is not None:
            params["types"] = _dumps(sorted(task_types))

        def claim(conn: sqlite3.Connection) -> list[Claim]:
            cursor = conn.execute(sql, params)
            # As dicts: sqlite3.Row finds a column by name with a scan of every name,
            # ~10 us a row for the ~35 lookups a claimed row gets.
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            if not rows:
                return []
            if by_priority:
                rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["seq"]))
            else:
                rows.sort(key=lambda r: (r["run_at"], r["seq"]))
            conn.executemany(
                "INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at,"
                " outcome) VALUES (?, ?, ?, ?, ?, 'running')",
                [(r["id"], r["attempts"], r["fence"], worker_id, now) for r in rows],
            )
            return [Claim(_task(r), LeaseToken(r["id"], worker_id, r["fence"])) for r in rows]

        return await self._db().run(claim)

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

        def beat(conn: sqlite3.Connection) -> HeartbeatResult:
            conn.execute(
                "INSERT INTO workers (worker_id, hostname, pid, process_started_at, concurrency,"
                " started_at, heartbeat_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
                " expires_at = excluded.expires_at",
                (
                    worker.worker_id,
                    worker.hostname,
                    worker.pid,
                    worker.process_started_at,
                    worker.concurrency,
                    worker.started_at or now,
                    now,
                    expires,
                ),
            )
            held: dict[str, tuple[int, bool]] = {}
            if tokens:
                for task_id, fence, cancel in conn.execute(
                    "UPDATE background_tasks SET lease_expires_at = ?"
                    " WHERE lease_owner = ? AND status = 'running'"
                    " RETURNING id, fence, cancel_requested",
                    (expires, worker.worker_id),
                ):
                    held[task_id] = (fence, bool(cancel))
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

        return await self._db().run(beat)

    async def finish(
        self,
        token: LeaseToken,
        outcome: Outcome,
        *,
        now: float,
        claimed: TaskRecord | None = None,
    ) -> TaskRecord:
        record: TaskRecord
        if claimed is not None and isinstance(outcome, Completed):
            record = await self._db().run_combined(_complete, (token, outcome, now, claimed))
        else:
            record = await self._db().run(lambda conn: _finish(conn, token, outcome, now, claimed))
        return record

    async def save_progress(self, snapshots: Sequence[ProgressSnapshot]) -> None:
        if not snapshots:
            return
        latest: dict[str, ProgressSnapshot] = {}
        for snapshot in snapshots:
            latest[snapshot.task_id] = snapshot
        limit = self.history_limit

        def save(conn: sqlite3.Connection) -> None:
            running = {
                task_id
                for (task_id,) in conn.execute(
                    "SELECT id FROM background_tasks WHERE status = 'running'"
                    " AND id IN (SELECT value FROM json_each(?))",
                    (_dumps(list(latest)),),
                )
            }
            if not running:
                return
            conn.executemany(
                "UPDATE background_tasks SET progress = ?, message = coalesce(?, message),"
                " updated_at = ? WHERE id = ?",
                [
                    (s.progress, s.message, s.at, s.task_id)
                    for s in latest.values()
                    if s.task_id in running
                ],
            )
            conn.executemany(
                "INSERT INTO task_progress (task_id, progress, message, metadata, recorded_at)"
                " VALUES (?, ?, ?, ?, ?)",
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
            conn.executemany(
                "DELETE FROM task_progress WHERE task_id = ?1 AND id <= (SELECT id FROM"
                " task_progress WHERE task_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                [(task_id, limit) for task_id in running],
            )

        await self._db().run(save)

    async def progress_history(self, task_id: str, *, limit: int = 1000) -> list[ProgressSnapshot]:
        def select(conn: sqlite3.Connection) -> list[ProgressSnapshot]:
            rows = conn.execute(
                "SELECT * FROM (SELECT * FROM task_progress WHERE task_id = ?"
                " ORDER BY id DESC LIMIT ?) ORDER BY id",
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

        return await self._db().run(select, Mode.READ)

    # --- cancel, pause, clear ----------------------------------------------------------

    async def request_cancel(self, task_id: str, *, now: float) -> TaskRecord:
        def cancel(conn: sqlite3.Connection) -> TaskRecord:
            row = conn.execute(
                "SELECT status FROM background_tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None:
                raise TaskNotFoundError(task_id)
            status = TaskStatus(row["status"])
            if status.is_terminal:
                raise TaskStateError(task_id, status.value, "cancel")
            if status is TaskStatus.RUNNING:
                sql = (
                    "UPDATE background_tasks SET cancel_requested = 1, updated_at = ?"
                    " WHERE id = ? RETURNING *"
                )
            else:
                sql = (
                    "UPDATE background_tasks SET status = 'cancelled', finished_at = ?1,"
                    " updated_at = ?1 WHERE id = ?2 RETURNING *"
                )
            return _task(conn.execute(sql, (now, task_id)).fetchone())

        return await self._db().run(cancel)

    async def cancel_waiting(self, *, now: float) -> list[str]:
        def cancel(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "UPDATE background_tasks SET status = 'cancelled', finished_at = ?1,"
                f" updated_at = ?1 WHERE status IN {_WAITING} RETURNING id",
                (now,),
            )
            return [task_id for (task_id,) in rows]

        return await self._db().run(cancel)

    async def set_paused(self, paused: bool, *, reason: str | None = None) -> None:
        value = _dumps({"reason": reason}) if paused else None

        def store(conn: sqlite3.Connection) -> None:
            if paused:
                conn.execute(
                    "INSERT INTO queue_state (key, value) VALUES ('paused', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (value,),
                )
            else:
                conn.execute("DELETE FROM queue_state WHERE key = 'paused'")

        await self._db().run(store)

    async def get_paused(self) -> tuple[bool, str | None]:
        def load(conn: sqlite3.Connection) -> tuple[bool, str | None]:
            row = conn.execute("SELECT value FROM queue_state WHERE key = 'paused'").fetchone()
            if row is None:
                return False, None
            reason = json.loads(row["value"]).get("reason")
            return True, reason

        return await self._db().run(load, Mode.READ)

    async def requeue_failed(
        self,
        *,
        now: float,
        task_ids: Collection[str] | None = None,
        category: ErrorCategory | None = None,
        task_type: str | None = None,
    ) -> list[TaskRecord]:
        where = ["status = 'failed'"]
        params: list[Any] = [now]
        if task_ids is not None:
            where.append("id IN (SELECT value FROM json_each(?))")
            params.append(_dumps(list(task_ids)))
        if category is not None:
            where.append("error_category = ?")
            params.append(ErrorCategory(category).value)
        if task_type is not None:
            where.append("task_type = ?")
            params.append(task_type)
        sql = (
            "UPDATE background_tasks SET status = 'pending', attempts = 0, run_at = ?1,"
            " updated_at = ?1, finished_at = NULL, progress = 0"
            " WHERE " + " AND ".join(where) + " RETURNING *"
        )

        def requeue(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [_task(row) for row in conn.execute(sql, params)]

        return await self._db().run(requeue)

    # --- workers and crash recovery ----------------------------------------------------

    async def list_workers(self) -> list[WorkerInfo]:
        def select(conn: sqlite3.Connection) -> list[WorkerInfo]:
            return [_worker(row) for row in conn.execute("SELECT * FROM workers")]

        return await self._db().run(select, Mode.READ)

    async def expire_workers(self, worker_ids: Collection[str]) -> None:
        ids = _dumps(list(worker_ids))

        def expire(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE workers SET expires_at = 0"
                " WHERE worker_id IN (SELECT value FROM json_each(?))",
                (ids,),
            )

        await self._db().run(expire)

    async def remove_worker(self, worker_id: str) -> None:
        def remove(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

        await self._db().run(remove)

    async def reap(self, *, now: float, decide: RetryDecider) -> ReapResult:
        def reap(conn: sqlite3.Connection) -> ReapResult:
            dead = [
                worker_id
                for (worker_id,) in conn.execute(
                    "SELECT worker_id FROM workers WHERE expires_at < ?", (now,)
                )
            ]
            dead_json = _dumps(dead)
            requeued: list[TaskRecord] = []
            failed: list[TaskRecord] = []
            lost_rows = conn.execute(
                "SELECT * FROM background_tasks WHERE status = 'running'"
                " AND (lease_expires_at < ? OR lease_owner IN (SELECT value FROM json_each(?)))",
                (now, dead_json),
            ).fetchall()
            for row in lost_rows:
                lost: Exception = WorkerLostError(
                    f"worker {row['lease_owner']} stopped renewing its lease on task_id:{row['id']}"
                )
                conn.execute(
                    "UPDATE task_executions SET finished_at = ?, outcome = 'lost',"
                    " error_category = 'resource', error_type = 'WorkerLostError',"
                    " error_message = ? WHERE task_id = ? AND fence = ?",
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
                updated = conn.execute(
                    "UPDATE background_tasks SET status = :status, lease_owner = NULL,"
                    " lease_expires_at = NULL, cancel_requested = 0, updated_at = :now,"
                    " run_at = coalesce(:retry_at, run_at),"
                    " finished_at = CASE WHEN :status IN ('failed', 'cancelled') THEN :now END,"
                    " error_message = :message, error_type = :type, error_category = :category"
                    " WHERE id = :id RETURNING *",
                    {
                        "status": status,
                        "now": now,
                        "retry_at": retry_at,
                        "message": str(error),
                        "type": type(error).__name__,
                        "category": ErrorCategory.RESOURCE.value,
                        "id": row["id"],
                    },
                ).fetchone()
                (requeued if status == "retrying" else failed).append(_task(updated))
            orphans = conn.execute(
                "UPDATE background_tasks SET status = 'failed', finished_at = :now,"
                " updated_at = :now, error_type = 'HandlerUnavailableError',"
                " error_category = 'resource', error_message = 'the process holding this"
                " task''s callable is gone; register the task type to make it resumable'"
                f" WHERE status IN {_WAITING} AND owner IS NOT NULL AND (owner IN"
                " (SELECT value FROM json_each(:dead)) OR owner NOT IN"
                " (SELECT worker_id FROM workers)) RETURNING *",
                {"now": now, "dead": dead_json},
            ).fetchall()
            failed.extend(_task(row) for row in orphans)
            conn.execute(
                "DELETE FROM workers WHERE worker_id IN (SELECT value FROM json_each(?))",
                (dead_json,),
            )
            return ReapResult(requeued=requeued, failed=failed, expired_workers=dead)

        return await self._db().run(reap)

    # --- shared circuit breakers --------------------------------------------------------

    async def save_breaker_state(self, state: SharedBreakerState) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO circuit_breakers (name, state, opened_at, retry_at, updated_at,"
                " worker_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " state = excluded.state, opened_at = excluded.opened_at,"
                " retry_at = excluded.retry_at, updated_at = excluded.updated_at,"
                " worker_id = excluded.worker_id WHERE excluded.updated_at >= updated_at",
                (
                    state.name,
                    state.state,
                    state.opened_at,
                    state.retry_at,
                    state.updated_at,
                    state.worker_id,
                ),
            )

        await self._db().run(save)

    async def load_breaker_states(self) -> list[SharedBreakerState]:
        def load(conn: sqlite3.Connection) -> list[SharedBreakerState]:
            return [
                SharedBreakerState(
                    name=row["name"],
                    state=row["state"],
                    opened_at=_as_float(row["opened_at"]),
                    retry_at=_as_float(row["retry_at"]),
                    updated_at=float(row["updated_at"]),
                    worker_id=row["worker_id"],
                )
                for row in conn.execute("SELECT * FROM circuit_breakers ORDER BY name")
            ]

        return await self._db().run(load, Mode.READ)

    # --- statistics and system metrics ---------------------------------------------------

    async def count_tasks_by_type(self) -> dict[str, dict[TaskStatus, int]]:
        def count(conn: sqlite3.Connection) -> dict[str, dict[TaskStatus, int]]:
            counts: dict[str, dict[TaskStatus, int]] = {}
            for task_type, status, n in conn.execute(
                "SELECT task_type, status, n FROM task_counts WHERE n > 0"
            ):
                counts.setdefault(task_type, dict.fromkeys(TaskStatus, 0))[TaskStatus(status)] = n
            return counts

        return await self._db().run(count, Mode.READ)

    async def metrics_window(self, *, since: float, sample_limit: int = 10_000) -> MetricsWindow:
        def window(conn: sqlite3.Connection) -> MetricsWindow:
            groups = [
                AttemptGroup(
                    task_type=row[0],
                    outcome=row[1],
                    category=row[2],
                    retry=bool(row[3]),
                    count=row[4],
                    duration_total=float(row[5] or 0.0),
                    wait_total=float(row[6] or 0.0),
                )
                for row in conn.execute(
                    "SELECT task_type, outcome, error_category, attempt > 1, count(*),"
                    " sum(duration_seconds), sum(queue_wait_seconds) FROM task_metrics"
                    " WHERE recorded_at >= ? GROUP BY 1, 2, 3, 4",
                    (since,),
                )
            ]
            durations = [
                float(d)
                for (d,) in conn.execute(
                    "SELECT duration_seconds FROM task_metrics WHERE recorded_at >= ?"
                    " AND outcome = 'completed' AND duration_seconds IS NOT NULL"
                    " ORDER BY recorded_at DESC LIMIT ?",
                    (since, sample_limit),
                )
            ]
            (dead,) = conn.execute(
                "SELECT count(*) FROM background_tasks WHERE finished_at >= ?"
                " AND status = 'failed'",
                (since,),
            ).fetchone()
            return MetricsWindow(
                since=since, groups=groups, durations=durations, dead_lettered=dead
            )

        return await self._db().run(window, Mode.READ)

    async def add_resource_sample(self, sample: ResourceSample) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO system_metrics (recorded_at, cpu_percent, memory_percent,"
                " disk_percent, process_rss_mb, process_cpu_percent, active_tasks, queued_tasks)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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

        await self._db().run(insert)

    async def resource_samples(
        self, *, since: float | None = None, limit: int = 1000
    ) -> list[ResourceSample]:
        def select(conn: sqlite3.Connection) -> list[ResourceSample]:
            rows = conn.execute(
                "SELECT * FROM (SELECT * FROM system_metrics WHERE recorded_at >= ?"
                " ORDER BY recorded_at DESC LIMIT ?) ORDER BY recorded_at",
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

        return await self._db().run(select, Mode.READ)

    async def ping(self) -> None:
        await self._db().run(lambda conn: conn.execute("SELECT 1").fetchone(), Mode.READ)

    # --- translation jobs ----------------------------------------------------------------

    async def add_translation_job(
        self, task: NewTask, job: NewTranslationJob, *, max_queue_size: int | None = None
    ) -> TranslationJobRow:
        def insert(conn: sqlite3.Connection) -> TranslationJobRow:
            _insert_task(conn, task, max_queue_size)
            _insert_job(conn, task, job)
            return job.row(task)

        return await self._db().run(insert)

    async def add_translation_jobs(
        self,
        items: Sequence[tuple[NewTask, NewTranslationJob]],
        *,
        max_queue_size: int | None = None,
    ) -> list[TranslationJobRow]:
        items = list(items)
        if not items:
            return []

        def insert(conn: sqlite3.Connection) -> list[TranslationJobRow]:
            # The transaction holds the write lock from its BEGIN IMMEDIATE: no other
            # writer, in this process or another, can change the count before the inserts.
            # An error rolls back the whole transaction, rows inserted so far included.
            if max_queue_size is not None:
                (waiting,) = conn.execute(_WAITING_COUNT).fetchone()
                if waiting + len(items) > max_queue_size:
                    raise QueueFullError(max_queue_size, waiting, len(items))
            for task, job in items:
                _insert_task(conn, task, None)
                _insert_job(conn, task, job)
            return [job.row(task) for task, job in items]

        return await self._db().run(insert)

    @staticmethod
    def _jobs(conn: sqlite3.Connection, rows: list[Any]) -> list[TranslationJobRow]:
        ids = _dumps([row["task_id"] for row in rows])
        tasks = {
            task["id"]: _task(task)
            for task in conn.execute(
                "SELECT * FROM background_tasks WHERE id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
        }
        return [translation_job_from_row(row, tasks[row["task_id"]]) for row in rows]

    async def get_translation_job(self, job_id: str) -> TranslationJobRow | None:
        def get(conn: sqlite3.Connection) -> TranslationJobRow | None:
            row = conn.execute("SELECT * FROM translation_jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else self._jobs(conn, [row])[0]

        return await self._db().run(get, Mode.READ)

    async def list_translation_jobs(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TranslationJobRow]:
        sql = "SELECT j.* FROM translation_jobs AS j"
        params: list[Any] = []
        if statuses is not None:
            sql += (
                " JOIN background_tasks AS t ON t.id = j.task_id"
                " WHERE t.status IN (SELECT value FROM json_each(?))"
            )
            params.append(_dumps([TaskStatus(s).value for s in statuses]))
        sql += " ORDER BY j.created_at DESC, j.id DESC LIMIT ? OFFSET ?"
        params += [limit, offset]

        def select(conn: sqlite3.Connection) -> list[TranslationJobRow]:
            return self._jobs(conn, list(conn.execute(sql, params)))

        return await self._db().run(select, Mode.READ)

    async def save_translation_step(
        self, job_id: str, step: str, checkpoint: dict[str, Any], *, now: float
    ) -> None:
        path = "$." + json.dumps(step)  # a quoted key: any step name is safe

        def save(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE translation_jobs SET steps = json_set(steps, ?, json(?)),"
                " updated_at = ? WHERE id = ?",
                (path, _dumps(checkpoint), now, job_id),
            ).rowcount
            if not changed:
                raise TaskNotFoundError(job_id)

        await self._db().run(save)

    async def save_translation_result(
        self, job_id: str, result: dict[str, Any], *, now: float
    ) -> None:
        def save(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE translation_jobs SET result = ?, updated_at = ? WHERE id = ?",
                (_dumps(result), now, job_id),
            ).rowcount
            if not changed:
                raise TaskNotFoundError(job_id)

        await self._db().run(save)

    # --- housekeeping ------------------------------------------------------------------

    async def cleanup(self, *, finished_before: float) -> int:
        def delete_some(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM background_tasks WHERE rowid IN (SELECT rowid FROM"
                f" background_tasks WHERE status IN {_TERMINAL} AND finished_at < ? LIMIT 500)",
                (finished_before,),
            ).rowcount

        def delete_samples(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM system_metrics WHERE recorded_at < ?", (finished_before,))

        # Small transactions, so other writers are never blocked for long.
        total = 0
        while deleted := await self._db().run(delete_some):
            total += deleted
        await self._db().run(delete_samples)
        return total

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
            busy, wal_pages, checkpointed = conn.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
            conn.execute("ANALYZE")
            conn.execute("PRAGMA optimize")
            if vacuum:
                conn.execute("VACUUM")
            (check,) = conn.execute("PRAGMA quick_check").fetchone()
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

        return await self._db().run(maintain, Mode.ALONE)

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

        return await self._db().run(copy, Mode.ALONE)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script; a trigger body's semicolons stay inside it."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements: list[str] = []
    current = ""
    for chunk in "\n".join(lines).split(";"):
        current += chunk + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        raise ValueError(f"incomplete SQL statement in migration: {current!r}")
    return statements
