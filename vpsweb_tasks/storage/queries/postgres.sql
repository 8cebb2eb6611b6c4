-- The core's named queries for PostgreSQL (see vpsweb_tasks/storage/queries.py for the
-- format, and vpsweb_tasks/storage/logic.py for the operations that run them). Parameters
-- are %(named)s; a list parameter arrives as an array. Times are epoch seconds. A query
-- with parameters is one statement. Writes that other workers must hear of send their
-- NOTIFY on %(channel)s (given by the backend) from the same statement: it arrives at
-- commit.

-- Migrations -------------------------------------------------------------------------------

-- name: lock_migrations
-- One migrator at a time per schema, across processes (DDL is transactional: the others
-- find everything applied once they get the lock).
SELECT pg_advisory_xact_lock(hashtext('vpsweb_tasks.migrate'),
    hashtext(coalesce(%(schema)s, current_schema(), '')));

-- name: migration_tables_exist
SELECT to_regclass('component_migrations') IS NOT NULL;

-- name: create_migration_tables
-- (Two statements: run without parameters, as one script.)
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS component_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version));

-- name: applied_migrations
SELECT 'core' AS component, version FROM schema_migrations
UNION ALL SELECT component, version FROM component_migrations;

-- name: record_core_migration
INSERT INTO schema_migrations (version, name, applied_at)
VALUES (%(version)s, %(name)s, %(at)s);

-- name: record_component_migration
INSERT INTO component_migrations (component, version, name, applied_at)
VALUES (%(component)s, %(version)s, %(name)s, %(at)s);

-- Submit and read --------------------------------------------------------------------------

-- name: count_waiting
-- Waiting tasks (pending + retrying), counted through the dispatch index up to :limit: no
-- hot counter row that every insert, claim and finish would queue behind.
SELECT count(*) FROM (SELECT 1 FROM background_tasks
    WHERE status IN ('pending', 'retrying') LIMIT %(limit)s) AS waiting;

-- name: insert_task
-- One new task, unless %(limit)s tasks are waiting; with its notice. Its row count: 1
-- stored, 0 refused.
WITH added AS (
    INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
        max_retries, timeout_seconds, retry_config, owner, run_at, created_at, updated_at,
        max_lost_attempts, idempotency_key, request_fingerprint, trace_context, queue,
        dispatch_at, depends_on, on_dependency_failure, rate_keys, concurrency_key)
    SELECT %(id)s, %(name)s, %(task_type)s, %(priority)s, 'pending', %(payload)s,
        %(metadata)s, %(max_retries)s, %(timeout_seconds)s, %(retry_config)s, %(owner)s,
        %(run_at)s, %(created_at)s, %(created_at)s, %(max_lost_attempts)s,
        %(idempotency_key)s, %(request_fingerprint)s, %(trace_context)s,
        coalesce(%(queue)s::text, 'default'), %(dispatch_at)s, %(depends_on)s,
        %(on_dependency_failure)s, %(rate_keys)s, %(concurrency_key)s
    WHERE %(limit)s::int IS NULL OR (SELECT count(*) FROM (SELECT 1 FROM background_tasks
        WHERE status IN ('pending', 'retrying') LIMIT %(limit)s) AS waiting) < %(limit)s
    RETURNING id)
SELECT id, pg_notify(%(channel)s, 'task_added ' || id) FROM added;

-- name: insert_tasks
-- New tasks from %(rows)s, a JSON array of [id, name, task_type, priority, payload,
-- metadata, max_retries, timeout_seconds, retry_config, owner, run_at, created_at,
-- max_lost_attempts, idempotency_key, request_fingerprint, trace_context, queue,
-- dispatch_at, depends_on, on_dependency_failure, rate_keys, concurrency_key], in that order. With %(limit)s,
-- %(together)s stores all of them only if all fit; otherwise the first ones that fit. With
-- one notice. Its row count: how many (the first ones) were stored.
WITH new AS (
    SELECT r, n - 1 AS n FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS e(r, n)),
waiting AS (
    SELECT count(*) AS n FROM (SELECT 1 FROM background_tasks
        WHERE status IN ('pending', 'retrying') LIMIT %(limit)s) AS w),
added AS (
    INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
        max_retries, timeout_seconds, retry_config, owner, run_at, created_at, updated_at,
        max_lost_attempts, idempotency_key, request_fingerprint, trace_context, queue,
        dispatch_at, depends_on, on_dependency_failure, rate_keys, concurrency_key)
    SELECT r->>0, r->>1, r->>2, (r->>3)::int, 'pending', r->>4, r->>5, (r->>6)::int,
        (r->>7)::float8, r->>8, r->>9, (r->>10)::float8, (r->>11)::float8, (r->>11)::float8,
        (r->>12)::int, r->>13, r->>14, r->>15, coalesce(r->>16, 'default'), (r->>17)::float8,
        r->>18, r->>19, r->>20, r->>21
    FROM new, waiting
    WHERE %(limit)s::int IS NULL
       OR (%(together)s AND waiting.n + %(count)s <= %(limit)s)
       OR (NOT %(together)s AND new.n < %(limit)s - waiting.n)
    ORDER BY new.n
    RETURNING id),
notice AS (  -- one for the batch: a worker claims whatever it finds when woken
    SELECT pg_notify(%(channel)s, 'task_added ' || min(id)) FROM added HAVING count(*) > 0)
SELECT id FROM added, notice;

-- name: next_run_at
-- The earliest run time to come of a waiting task, but for tasks waiting on dependencies
-- (%(blocked)s): one seek of the index of later run times.
SELECT min(run_at) FROM background_tasks
WHERE status IN ('pending', 'retrying') AND run_at > created_at
  AND run_at > %(now)s AND run_at < %(blocked)s;

-- name: get_task
SELECT * FROM background_tasks WHERE id = %(id)s;

-- name: get_tasks
SELECT * FROM background_tasks WHERE id = ANY(%(ids)s);

-- name: tasks_by_keys
SELECT * FROM background_tasks WHERE idempotency_key = ANY(%(keys)s);

-- name: list_tasks_created
-- Newest first.
SELECT * FROM background_tasks
WHERE status = ANY(%(statuses)s) AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s)
ORDER BY created_at DESC, seq DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_tasks_finished
-- Most recently finished first (NULLs last, as SQLite sorts them descending).
SELECT * FROM background_tasks
WHERE status = ANY(%(statuses)s) AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s)
ORDER BY finished_at DESC NULLS LAST, seq DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_tasks_dispatch
-- In the order waiting tasks are claimed.
SELECT * FROM background_tasks
WHERE status = ANY(%(statuses)s) AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s)
ORDER BY dispatch_at, seq LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_by_status
SELECT status, count(*) AS n FROM background_tasks GROUP BY status;

-- name: count_by_type
-- Grouped from the (task_type, status) index: no counter rows to contend on.
SELECT task_type, status, count(*) AS n FROM background_tasks GROUP BY 1, 2;

-- name: list_executions
-- The task's ended attempts, and the one running now, read off the task row (its row is
-- written when it ends; id 0 until then).
SELECT id, task_id, attempt, fence, worker_id, started_at, finished_at, outcome,
    error_category, error_type, error_message
FROM task_executions WHERE task_id = %(task_id)s
UNION ALL
SELECT 0, id, attempts, fence, lease_owner, started_at, NULL, 'running', NULL, NULL, NULL
FROM background_tasks WHERE id = %(task_id)s AND status = 'running'
ORDER BY fence;

-- Dispatch ---------------------------------------------------------------------------------

-- name: claim
-- Up to %(limit)s eligible tasks of %(queue)s, picked FOR UPDATE SKIP LOCKED in dispatch
-- order (dispatch_at: run time less the priority's aging credit, see logic.dispatch_key;
-- then insertion order), and updated (each execution row is written when the attempt
-- ends): concurrent workers never wait for each other and never claim one task twice.
-- One range of the dispatch index (queue, dispatch_at, seq), bounded by dispatch_at <= now
-- (run_at <= now implies it).
WITH picked AS (
    SELECT id FROM background_tasks
    WHERE status IN ('pending', 'retrying') AND queue = coalesce(%(queue)s::text, 'default')
      AND dispatch_at <= %(now)s AND run_at <= %(now)s
      AND (owner = %(worker)s OR (owner IS NULL
           AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s))))
    ORDER BY dispatch_at, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE background_tasks AS t
    SET status = 'running', attempts = t.attempts + 1, fence = t.fence + 1,
        lease_owner = %(worker)s, lease_expires_at = %(expires)s, cancel_requested = FALSE,
        started_at = %(now)s, updated_at = %(now)s
    FROM picked WHERE t.id = picked.id
    RETURNING t.*
)
SELECT * FROM claimed ORDER BY dispatch_at, seq;

-- name: register_worker
INSERT INTO workers (worker_id, hostname, pid, process_started_at, concurrency, started_at,
    heartbeat_at, expires_at)
VALUES (%(worker)s, %(hostname)s, %(pid)s, %(process_started_at)s, %(concurrency)s,
    %(started_at)s, %(now)s, %(expires)s)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at;

-- name: renew_leases
-- register_worker, and the leases of every task this worker holds.
WITH beat AS (
    INSERT INTO workers (worker_id, hostname, pid, process_started_at, concurrency,
        started_at, heartbeat_at, expires_at)
    VALUES (%(worker)s, %(hostname)s, %(pid)s, %(process_started_at)s, %(concurrency)s,
        %(started_at)s, %(now)s, %(expires)s)
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
        expires_at = excluded.expires_at)
UPDATE background_tasks SET lease_expires_at = %(expires)s
WHERE lease_owner = %(worker)s AND status = 'running'
RETURNING id, fence, cancel_requested;

-- name: finish
-- One attempt's outcome, if %(worker)s still holds the attempt %(fence)s (and, with
-- %(cancel_guard)s, the task's cancel flag is that): the task row, and its execution row,
-- whole, with its metrics (counted in the statistics if %(metrics)s), in one statement.
-- No row back: the lease was lost.
WITH current AS (
    SELECT id, task_type, attempts, fence, lease_owner, run_at, started_at
    FROM background_tasks
    WHERE id = %(id)s AND status = 'running' AND lease_owner = %(worker)s
      AND fence = %(fence)s
      AND (%(cancel_guard)s::boolean IS NULL OR cancel_requested = %(cancel_guard)s)
    FOR UPDATE
), task AS (
    UPDATE background_tasks AS t SET
        status = %(status)s,
        result = CASE WHEN %(status)s = 'completed' THEN %(result)s ELSE t.result END,
        progress = CASE WHEN %(status)s = 'completed' THEN 1.0 ELSE t.progress END,
        finished_at = CASE WHEN %(terminal)s THEN %(now)s ELSE t.finished_at END,
        run_at = coalesce(%(run_at)s, t.run_at),
        dispatch_at = t.dispatch_at + (coalesce(%(run_at)s, t.run_at) - t.run_at),
        attempts = t.attempts - %(give_back)s,
        message = coalesce(%(message)s, t.message),
        error_message = CASE WHEN %(set_error)s THEN %(error_message)s ELSE t.error_message END,
        error_type = CASE WHEN %(set_error)s THEN %(error_type)s ELSE t.error_type END,
        error_category = CASE WHEN %(set_error)s THEN %(error_category)s
                              ELSE t.error_category END,
        lease_owner = NULL, lease_expires_at = NULL, cancel_requested = FALSE,
        updated_at = %(now)s
    FROM current WHERE t.id = current.id
    RETURNING t.progress, t.message
), execution AS (
    INSERT INTO task_executions (task_id, task_type, attempt, fence, worker_id, started_at,
        finished_at, outcome, error_category, error_type, error_message, traceback,
        queue_wait_seconds, metered)
    SELECT id, task_type, attempts, fence, lease_owner, started_at, %(now)s, %(outcome)s,
        %(x_category)s, %(x_type)s, %(x_message)s, %(traceback)s,
        greatest(0, started_at - run_at), %(metrics)s
    FROM current
)
SELECT task.*, EXISTS (SELECT 1 FROM task_dependencies WHERE depends_on = %(id)s) AS dependents
FROM task;

-- name: complete_many
-- What finish writes for a completion, for every row of %(rows)s (a JSON array of [id,
-- worker, fence, result, now]) whose attempt is still held, in one statement for the lot;
-- a row back for each: its id, message, and whether it has dependents.
WITH d AS (
    SELECT e.r->>0 AS id, e.r->>1 AS worker, (e.r->>2)::int AS fence, e.r->>3 AS result,
        (e.r->>4)::float8 AS now
    FROM jsonb_array_elements(%(rows)s::jsonb) AS e(r)),
task AS (
    UPDATE background_tasks AS t SET status = 'completed', result = d.result, progress = 1.0,
        finished_at = d.now, error_message = NULL, error_type = NULL, error_category = NULL,
        lease_owner = NULL, lease_expires_at = NULL, cancel_requested = FALSE,
        updated_at = d.now
    FROM d
    WHERE t.id = d.id AND t.status = 'running' AND t.lease_owner = d.worker
      AND t.fence = d.fence
    RETURNING t.id, t.message, t.task_type, t.attempts, t.run_at, t.started_at, d.worker,
        d.fence, d.now),
execution AS (
    INSERT INTO task_executions (task_id, task_type, attempt, fence, worker_id, started_at,
        finished_at, outcome, queue_wait_seconds, metered)
    SELECT id, task_type, attempts, fence, worker, started_at, now, 'completed',
        greatest(0, started_at - run_at), %(metrics)s
    FROM task)
SELECT id, message, EXISTS (SELECT 1 FROM task_dependencies WHERE depends_on = task.id)
    AS dependents
FROM task;

-- Dependencies -----------------------------------------------------------------------------

-- name: existing_ids
-- Locked in share mode until the insert commits: a dependency cannot be deleted under it.
SELECT id FROM background_tasks WHERE id = ANY(%(ids)s::text[]) ORDER BY id FOR SHARE;

-- name: insert_dependencies
-- %(rows)s is a JSON array of [depends_on, task_id].
INSERT INTO task_dependencies (depends_on, task_id)
SELECT r->>0, r->>1 FROM jsonb_array_elements(%(rows)s::jsonb) AS e(r);

-- name: blocked_dependents
-- Tasks waiting on their dependencies (pending at %(blocked)s), among the dependents of
-- %(of)s and among %(ids)s: for each, how many of its dependencies have not finished, and
-- the first that failed, was cancelled or is gone, as 'status:id'.
SELECT w.id, w.on_dependency_failure AS policy,
    count(*) FILTER (WHERE t.id IS NOT NULL
        AND t.status NOT IN ('completed', 'failed', 'cancelled')) AS unfinished,
    min(CASE WHEN t.id IS NULL THEN 'gone:' || d.depends_on
             WHEN t.status IN ('failed', 'cancelled') THEN t.status || ':' || d.depends_on
        END) AS broken
FROM background_tasks AS w
JOIN task_dependencies AS d ON d.task_id = w.id
LEFT JOIN background_tasks AS t ON t.id = d.depends_on
WHERE w.id IN (SELECT task_id FROM task_dependencies WHERE depends_on = ANY(%(of)s::text[])
               UNION ALL SELECT unnest(%(ids)s::text[]))
  AND w.status = 'pending' AND w.run_at >= %(blocked)s
GROUP BY w.id, w.on_dependency_failure;

-- name: release_dependents
-- Tasks of %(ids)s still waiting on dependencies become runnable now; with their notices.
WITH released AS (
    UPDATE background_tasks SET run_at = %(now)s,
        dispatch_at = dispatch_at + (%(now)s - run_at), updated_at = %(now)s
    WHERE id = ANY(%(ids)s::text[]) AND status = 'pending' AND run_at >= %(blocked)s
    RETURNING id)
SELECT id, pg_notify(%(channel)s, 'task_added ' || id) AS notified FROM released;

-- name: cancel_dependents
-- %(rows)s is a JSON array of [id, reason]: tasks still waiting on dependencies, cancelled
-- with the reason as their message and error.
UPDATE background_tasks AS t SET status = 'cancelled', finished_at = %(now)s,
    updated_at = %(now)s, message = d.r->>1, error_message = d.r->>1,
    error_type = %(error_type)s, error_category = %(category)s
FROM jsonb_array_elements(%(rows)s::jsonb) AS d(r)
WHERE t.id = d.r->>0 AND t.status = 'pending' AND t.run_at >= %(blocked)s
RETURNING t.id;

-- name: blocked_tasks
-- Every task waiting on its dependencies.
SELECT id FROM background_tasks
WHERE status IN ('pending', 'retrying') AND run_at > created_at AND run_at >= %(blocked)s;

-- name: cancelled_dependents
-- The dependents of %(ids)s that settle_dependents cancelled at %(now)s, for them.
SELECT w.* FROM task_dependencies AS d JOIN background_tasks AS w ON w.id = d.task_id
WHERE d.depends_on = ANY(%(ids)s::text[]) AND w.status = 'cancelled'
  AND w.finished_at = %(now)s AND w.error_type = %(error_type)s;

-- name: dependencies_of
-- The dependencies of %(id)s, with their status (NULL: deleted) and result.
SELECT d.depends_on AS id, t.status, t.result FROM task_dependencies AS d
LEFT JOIN background_tasks AS t ON t.id = d.depends_on
WHERE d.task_id = %(id)s;

-- Workers and crash recovery -----------------------------------------------------------------

-- name: list_workers
SELECT * FROM workers;

-- name: remove_worker
DELETE FROM workers WHERE worker_id = %(worker)s;

-- name: expire_workers
UPDATE workers SET expires_at = 0 WHERE worker_id = ANY(%(ids)s);

-- name: dead_workers
-- Rows locked by a concurrent reaper are theirs: skipped.
SELECT worker_id FROM workers WHERE expires_at < %(now)s FOR UPDATE SKIP LOCKED;

-- name: lost_tasks
-- Running tasks whose lease expired or whose worker is dead (rows locked by a concurrent
-- reaper or a finishing worker are theirs: skipped).
SELECT * FROM background_tasks WHERE status = 'running'
  AND (lease_expires_at < %(now)s OR lease_owner = ANY(%(dead)s))
ORDER BY seq FOR UPDATE SKIP LOCKED;

-- name: lost_execution
-- The execution row of a lost attempt (%(attempt)s, %(fence)s of %(worker)s, started at
-- %(started_at)s).
INSERT INTO task_executions (task_id, task_type, attempt, fence, worker_id, started_at,
    finished_at, outcome, error_category, error_type, error_message)
VALUES (%(id)s, %(task_type)s, %(attempt)s, %(fence)s, %(worker)s, %(started_at)s,
    %(now)s, 'lost', %(category)s, %(error_type)s, %(message)s);

-- name: end_lost_attempt
-- The task of a lost attempt: its new status, counts (%(attempts)s, %(lost_attempts)s) and
-- error.
UPDATE background_tasks SET status = %(status)s, lease_owner = NULL, lease_expires_at = NULL,
    cancel_requested = FALSE, updated_at = %(now)s, run_at = coalesce(%(retry_at)s, run_at),
    dispatch_at = dispatch_at + (coalesce(%(retry_at)s, run_at) - run_at),
    attempts = %(attempts)s, lost_attempts = %(lost_attempts)s,
    finished_at = CASE WHEN %(status)s IN ('failed', 'cancelled') THEN %(now)s END,
    error_message = %(message)s, error_type = %(error_type)s, error_category = %(category)s
WHERE id = %(id)s
RETURNING *;

-- name: fail_orphans
-- Waiting closures whose process (owner) is dead or unknown.
UPDATE background_tasks SET status = 'failed', finished_at = %(now)s, updated_at = %(now)s,
    error_type = %(error_type)s, error_category = %(category)s, error_message = %(message)s
WHERE status IN ('pending', 'retrying') AND owner IS NOT NULL
  AND (owner = ANY(%(dead)s) OR owner NOT IN (SELECT worker_id FROM workers))
RETURNING *;

-- name: delete_workers
DELETE FROM workers WHERE worker_id = ANY(%(ids)s);

-- Progress ---------------------------------------------------------------------------------

-- name: running_among
-- Locked in id order: one lock order for every writer of several task rows.
SELECT id FROM background_tasks WHERE status = 'running' AND id = ANY(%(ids)s)
ORDER BY id FOR UPDATE;

-- name: save_progress
-- %(rows)s is a JSON array of [id, progress, message, at], one per task.
UPDATE background_tasks AS t SET progress = (d.r->>1)::float8,
    message = coalesce(d.r->>2, t.message), updated_at = (d.r->>3)::float8
FROM jsonb_array_elements(%(rows)s::jsonb) AS d(r)
WHERE t.id = d.r->>0;

-- name: append_progress
-- %(rows)s is a JSON array of [id, progress, message, metadata, at], oldest first.
INSERT INTO task_progress (task_id, progress, message, metadata, recorded_at)
SELECT r->>0, (r->>1)::float8, r->>2, r->>3, (r->>4)::float8
FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS e(r, n) ORDER BY n;

-- name: trim_progress
-- Keep the newest %(keep)s history rows of each task of %(ids)s. Each task's cutoff is
-- found once (a walk of %(keep)s index entries), not once for each of its rows.
DELETE FROM task_progress AS p
USING (SELECT t.task_id,
           (SELECT q.id FROM task_progress AS q WHERE q.task_id = t.task_id
            ORDER BY q.id DESC LIMIT 1 OFFSET %(keep)s) AS cut
       FROM unnest(%(ids)s::text[]) AS t(task_id)) AS c
WHERE p.task_id = c.task_id AND p.id <= c.cut;

-- name: progress_history
SELECT * FROM (SELECT * FROM task_progress WHERE task_id = %(task_id)s
               ORDER BY id DESC LIMIT %(limit)s) AS recent ORDER BY id;

-- Cancel, pause, requeue -------------------------------------------------------------------

-- name: task_status
SELECT status FROM background_tasks WHERE id = %(id)s FOR UPDATE;

-- name: request_cancel_running
WITH requested AS (
    UPDATE background_tasks SET cancel_requested = TRUE, updated_at = %(now)s
    WHERE id = %(id)s RETURNING *)
SELECT requested.*, pg_notify(%(channel)s, 'cancel_requested ' || requested.id) AS notified
FROM requested;

-- name: cancel_requests
-- The attempts %(worker)s holds that have a cancel requested, from its leases' index.
SELECT id, fence FROM background_tasks
WHERE lease_owner = %(worker)s AND status = 'running' AND cancel_requested;

-- name: cancel_task
UPDATE background_tasks SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s RETURNING *;

-- name: cancel_waiting
UPDATE background_tasks SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s
WHERE status IN ('pending', 'retrying') RETURNING id;

-- name: requeue_failed
WITH requeued AS (
    UPDATE background_tasks SET status = 'pending', attempts = 0, lost_attempts = 0,
        run_at = %(now)s, dispatch_at = dispatch_at + (%(now)s - run_at), updated_at = %(now)s,
        finished_at = NULL, progress = 0
    WHERE status = 'failed'
      AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s))
      AND (%(category)s::text IS NULL OR error_category = %(category)s)
      AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s)
    RETURNING *)
SELECT requeued.*, pg_notify(%(channel)s, 'task_added ' || requeued.id) AS notified
FROM requeued;

-- name: set_paused
INSERT INTO queue_state (key, value) VALUES ('paused', %(value)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: clear_paused
DELETE FROM queue_state WHERE key = 'paused';

-- name: get_paused
SELECT value FROM queue_state WHERE key = 'paused';

-- Shared circuit breakers --------------------------------------------------------------------

-- name: save_breaker_state
-- Insert or replace, unless the stored state is newer; with its notice.
WITH saved AS (
    INSERT INTO circuit_breakers AS b (name, state, opened_at, retry_at, updated_at, worker_id)
    VALUES (%(name)s, %(state)s, %(opened_at)s, %(retry_at)s, %(updated_at)s, %(worker_id)s)
    ON CONFLICT (name) DO UPDATE SET state = excluded.state, opened_at = excluded.opened_at,
        retry_at = excluded.retry_at, updated_at = excluded.updated_at,
        worker_id = excluded.worker_id
    WHERE excluded.updated_at >= b.updated_at
    RETURNING name)
SELECT pg_notify(%(channel)s, 'breaker_changed ' || name) FROM saved;

-- name: load_breaker_states
SELECT * FROM circuit_breakers ORDER BY name;

-- Schedules --------------------------------------------------------------------------------

-- name: define_schedule
-- A schedule from code or config, written at start: inserted, or replaced when its
-- definition (fingerprint) changed. An unchanged one keeps its runtime state (paused or
-- resumed, its next run). Its row count: 1 written, 0 unchanged.
INSERT INTO schedules (name, task_type, cron, every, timezone, payload, priority, enabled,
    missed, anchor_at, next_run_at, origin, fingerprint, created_at, updated_at)
VALUES (%(name)s, %(task_type)s, %(cron)s, %(every)s, %(timezone)s, %(payload)s, %(priority)s, %(enabled)s, %(missed)s,
    %(anchor_at)s, %(next_run_at)s, %(origin)s, %(fingerprint)s, %(now)s, %(now)s)
ON CONFLICT (name) DO UPDATE SET task_type = excluded.task_type, cron = excluded.cron,
    every = excluded.every, timezone = excluded.timezone, payload = excluded.payload,
    priority = excluded.priority, enabled = excluded.enabled, missed = excluded.missed,
    anchor_at = excluded.anchor_at, next_run_at = excluded.next_run_at,
    origin = excluded.origin, fingerprint = excluded.fingerprint,
    updated_at = excluded.updated_at
WHERE schedules.fingerprint IS DISTINCT FROM excluded.fingerprint;

-- name: add_schedule
-- A new schedule, unless the name is taken. Its row count: 1 added, 0 taken.
INSERT INTO schedules (name, task_type, cron, every, timezone, payload, priority, enabled,
    missed, anchor_at, next_run_at, origin, fingerprint, created_at, updated_at)
VALUES (%(name)s, %(task_type)s, %(cron)s, %(every)s, %(timezone)s, %(payload)s, %(priority)s, %(enabled)s, %(missed)s,
    %(anchor_at)s, %(next_run_at)s, %(origin)s, %(fingerprint)s, %(now)s, %(now)s)
ON CONFLICT (name) DO NOTHING;

-- name: schedule_fingerprints
SELECT name, fingerprint FROM schedules;

-- name: list_schedules
SELECT * FROM schedules ORDER BY name;

-- name: get_schedule
SELECT * FROM schedules WHERE name = %(name)s;

-- name: lock_schedule
-- The schedule, to change in this transaction: other writers wait for it.
SELECT * FROM schedules WHERE name = %(name)s FOR UPDATE;

-- name: lock_due_schedules
-- Enabled schedules whose next tick is due, to fire in this transaction. One another
-- process is firing is skipped: it moves next_run_at on before anyone could fire it again.
SELECT * FROM schedules WHERE enabled AND next_run_at <= %(now)s ORDER BY next_run_at, name
FOR UPDATE SKIP LOCKED;

-- name: next_schedule_at
-- When the next enabled schedule is due (NULL: none is enabled).
SELECT min(next_run_at) FROM schedules WHERE enabled;

-- name: insert_schedule_tick
-- A tick, unless it was fired already. Its row count: 1 fired now, 0 fired before.
INSERT INTO schedule_ticks (schedule, tick_at, task_id, fired_at, worker_id)
VALUES (%(schedule)s, %(tick_at)s, %(task_id)s, %(now)s, %(worker)s)
ON CONFLICT (schedule, tick_at) DO NOTHING;

-- name: tick_without_task
-- The tick's task was refused (queue full): the tick stays fired, with no task.
UPDATE schedule_ticks SET task_id = NULL WHERE schedule = %(schedule)s AND tick_at = %(tick_at)s;

-- name: advance_schedule
UPDATE schedules SET next_run_at = %(next_run_at)s, last_tick_at = %(last_tick_at)s,
    last_task_id = %(last_task_id)s, updated_at = %(now)s
WHERE name = %(name)s;

-- name: set_schedule_enabled
-- Pause or resume; a resumed schedule goes on from %(next_run_at)s.
UPDATE schedules SET enabled = %(enabled)s, next_run_at = %(next_run_at)s, updated_at = %(now)s
WHERE name = %(name)s RETURNING *;

-- name: delete_schedule
-- Its row count: 1 deleted, 0 none of that name (its ticks go with it: ON DELETE CASCADE).
DELETE FROM schedules WHERE name = %(name)s;

-- name: schedule_ticks
-- The ticks of a schedule fired since %(since)s, oldest first.
SELECT * FROM schedule_ticks WHERE schedule = %(schedule)s AND tick_at >= %(since)s
ORDER BY tick_at LIMIT %(limit)s;

-- name: cleanup_schedule_ticks
DELETE FROM schedule_ticks WHERE fired_at < %(before)s;

-- Statistics and system metrics --------------------------------------------------------------

-- name: metrics_groups
SELECT task_type, outcome, error_category, attempt > 1 AS retry, count(*) AS n,
    sum(duration_seconds) AS duration, sum(queue_wait_seconds) AS wait
FROM task_metrics WHERE recorded_at >= %(since)s GROUP BY 1, 2, 3, 4;

-- name: metrics_durations
SELECT duration_seconds FROM task_metrics WHERE recorded_at >= %(since)s
  AND outcome = 'completed' AND duration_seconds IS NOT NULL
ORDER BY recorded_at DESC LIMIT %(limit)s;

-- name: dead_lettered_since
SELECT count(*) FROM background_tasks WHERE finished_at >= %(since)s AND status = 'failed';

-- name: add_resource_sample
INSERT INTO system_metrics (recorded_at, cpu_percent, memory_percent, disk_percent,
    process_rss_mb, process_cpu_percent, active_tasks, queued_tasks)
VALUES (%(recorded_at)s, %(cpu_percent)s, %(memory_percent)s, %(disk_percent)s,
    %(process_rss_mb)s, %(process_cpu_percent)s, %(active_tasks)s, %(queued_tasks)s);

-- name: resource_samples
-- The newest %(limit)s samples since %(since)s, oldest first.
SELECT * FROM (SELECT * FROM system_metrics WHERE recorded_at >= %(since)s
               ORDER BY recorded_at DESC LIMIT %(limit)s) AS recent ORDER BY recorded_at;

-- name: ping
SELECT 1;

-- name: write_check
-- The storage write check (logic.check_writes): one key upserted, a real commit.
INSERT INTO queue_state (key, value) VALUES ('write_check', %(at)s::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- Housekeeping -----------------------------------------------------------------------------

-- name: cleanup_tasks
-- Up to 500 finished tasks that finished before %(before)s (their rows in the other tables
-- go with them: ON DELETE CASCADE); small transactions hold no lock for long.
-- Tasks a task still to run depends on are kept (it reads their results when it starts).
DELETE FROM background_tasks WHERE id IN (SELECT id FROM background_tasks AS f
    WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at < %(before)s
      AND NOT EXISTS (SELECT 1 FROM task_dependencies AS d
          JOIN background_tasks AS w ON w.id = d.task_id
          WHERE d.depends_on = f.id AND w.status NOT IN ('completed', 'failed', 'cancelled'))
    LIMIT 500);

-- name: cleanup_samples
DELETE FROM system_metrics WHERE recorded_at < %(before)s;

-- name: table_sizes
SELECT relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = current_schema() AND relname = ANY(%(tables)s)
ORDER BY relname;

-- name: invalid_indexes
-- Indexes left invalid (e.g. by a failed concurrent build).
SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND NOT (i.indisvalid AND i.indisready);

-- name: broken_invariants
-- Rows that break the task invariants the contract relies on, by problem.
SELECT 'running tasks without a lease' AS problem, count(*) AS n FROM background_tasks
    WHERE status = 'running' AND (lease_owner IS NULL OR lease_expires_at IS NULL)
UNION ALL
SELECT 'finished tasks still leased', count(*) FROM background_tasks
    WHERE status IN ('completed', 'failed', 'cancelled') AND lease_owner IS NOT NULL
UNION ALL
SELECT 'running tasks whose attempt has its execution row already', count(*)
    FROM background_tasks t
    WHERE status = 'running' AND EXISTS (SELECT 1 FROM task_executions e
        WHERE e.task_id = t.id AND e.fence = t.fence);

-- Rate limits, concurrency keys, retry budgets (see logic.claim_limited) -----------------------

-- name: claim_candidates
-- As SQLite's, and each candidate locked (SKIP LOCKED: another claim's are passed over).
SELECT seq, id, run_at, dispatch_at, rate_keys, concurrency_key
FROM background_tasks AS t
WHERE status IN ('pending', 'retrying') AND queue = coalesce(%(queue)s::text, 'default')
  AND dispatch_at <= %(horizon)s
  AND run_at <= %(now)s
  AND (owner = %(worker)s OR (owner IS NULL
       AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s))))
  AND (%(max_running)s::int IS NULL OR concurrency_key IS NULL OR (
       SELECT count(*) FROM background_tasks AS r
       WHERE r.status = 'running' AND r.concurrency_key = t.concurrency_key)
       < %(max_running)s)
ORDER BY dispatch_at, seq LIMIT %(scan)s
FOR UPDATE OF t SKIP LOCKED;

-- name: claim_ids
WITH claimed AS (
    UPDATE background_tasks AS t
    SET status = 'running', attempts = t.attempts + 1, fence = t.fence + 1,
        lease_owner = %(worker)s, lease_expires_at = %(expires)s, cancel_requested = FALSE,
        started_at = %(now)s, updated_at = %(now)s
    WHERE t.id = ANY(%(ids)s) AND t.status IN ('pending', 'retrying')
    RETURNING t.*
)
SELECT * FROM claimed;

-- name: defer_to_slots
UPDATE background_tasks AS t
SET run_at = (d.r->>1)::float8, dispatch_at = t.dispatch_at + ((d.r->>1)::float8 - t.run_at),
    updated_at = %(now)s
FROM jsonb_array_elements(%(rows)s::jsonb) AS d(r)
WHERE t.id = d.r->>0 AND t.status IN ('pending', 'retrying');

-- name: ensure_concurrency_keys
INSERT INTO concurrency_keys (key) SELECT unnest(%(keys)s::text[])
ON CONFLICT (key) DO NOTHING;

-- name: lock_concurrency_keys
-- Claims lock keys in one order (keys, then rate limits), so they never deadlock; a count
-- of a key's running tasks after the lock sees every claim committed before it.
SELECT key FROM concurrency_keys WHERE key = ANY(%(keys)s) ORDER BY key FOR UPDATE;

-- name: running_per_key
SELECT concurrency_key AS key, count(*) AS n FROM background_tasks
WHERE status = 'running' AND concurrency_key = ANY(%(keys)s)
GROUP BY concurrency_key;

-- name: place_keyed
INSERT INTO concurrency_keys AS c (key, last_start) VALUES (%(key)s, %(dispatch_at)s)
ON CONFLICT (key) DO UPDATE SET
    last_start = greatest(c.last_start + %(quantum)s, excluded.last_start)
RETURNING last_start;

-- name: ensure_rate_limits
INSERT INTO rate_limits (key, name)
SELECT r->>0, r->>1 FROM jsonb_array_elements(%(rows)s::jsonb) AS e(r)
ON CONFLICT (key) DO NOTHING;

-- name: lock_rate_limits
SELECT key, tat, token_tat FROM rate_limits WHERE key = ANY(%(keys)s) ORDER BY key FOR UPDATE;

-- name: save_rate_limits
UPDATE rate_limits AS l
SET tat = (d.r->>1)::float8, token_tat = (d.r->>2)::float8,
    requests = l.requests + (d.r->>3)::bigint, tokens = l.tokens + (d.r->>4)::bigint,
    updated_at = %(now)s
FROM jsonb_array_elements(%(rows)s::jsonb) AS d(r)
WHERE l.key = d.r->>0;

-- name: rate_limit_states
SELECT * FROM rate_limits ORDER BY name, key LIMIT %(limit)s;

-- name: running_keys
SELECT concurrency_key AS key, count(*) AS n FROM background_tasks
WHERE status = 'running' AND concurrency_key IS NOT NULL
GROUP BY concurrency_key ORDER BY n DESC, key LIMIT %(limit)s;

-- name: count_retry_budget
INSERT INTO retry_budget AS b (dependency, second, calls, retries)
VALUES (%(dependency)s, %(second)s, 1, CASE WHEN %(retry)s THEN 1 ELSE 0 END)
ON CONFLICT (dependency, second) DO UPDATE SET calls = b.calls + 1,
    retries = b.retries + excluded.retries;

-- name: retry_budget_window
SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(retries), 0) AS retries
FROM retry_budget WHERE dependency = %(dependency)s AND second >= %(since)s;

-- name: delete_retry_budget
DELETE FROM retry_budget WHERE second < %(before)s;
