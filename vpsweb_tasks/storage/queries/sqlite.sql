-- The core's named queries for SQLite (see vpsweb_tasks/storage/queries.py for the format,
-- and vpsweb_tasks/storage/logic.py for the operations that run them). Parameters are
-- :named; a list parameter arrives as JSON text and is read with json_each. Times are
-- epoch seconds. A query of several statements runs them in order with the same
-- parameters; its result is the last statement that returns rows.

-- Migrations -------------------------------------------------------------------------------

-- name: migration_tables_exist
SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'component_migrations';

-- name: create_migration_tables
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS component_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
    applied_at REAL NOT NULL, PRIMARY KEY (component, version));

-- name: applied_migrations
SELECT 'core' AS component, version FROM schema_migrations
UNION ALL SELECT component, version FROM component_migrations;

-- name: record_core_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :at);

-- name: record_component_migration
INSERT INTO component_migrations (component, version, name, applied_at)
VALUES (:component, :version, :name, :at);

-- Submit and read --------------------------------------------------------------------------

-- name: count_waiting
-- Waiting tasks (pending + retrying), from the counts the triggers keep.
SELECT coalesce(sum(n), 0) FROM task_counts WHERE status IN ('pending', 'retrying');

-- name: insert_task
-- One new task, unless :limit waiting tasks are there already (the check rides in the
-- INSERT, under the write lock). Its row count: 1 stored, 0 refused.
INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
    max_retries, timeout_seconds, retry_config, owner, run_at, created_at, updated_at,
    max_lost_attempts, idempotency_key, request_fingerprint, trace_context, queue, dispatch_at,
    depends_on, on_dependency_failure, rate_keys, concurrency_key)
SELECT :id, :name, :task_type, :priority, 'pending', :payload, :metadata, :max_retries,
    :timeout_seconds, :retry_config, :owner, :run_at, :created_at, :created_at,
    :max_lost_attempts, :idempotency_key, :request_fingerprint, :trace_context, :queue,
    :dispatch_at, :depends_on, :on_dependency_failure, :rate_keys,
    :concurrency_key
WHERE :limit IS NULL OR (SELECT coalesce(sum(n), 0) FROM task_counts
    WHERE status IN ('pending', 'retrying')) < :limit;

-- name: insert_tasks
-- New tasks from :rows, a JSON array of [id, name, task_type, priority, payload, metadata,
-- max_retries, timeout_seconds, retry_config, owner, run_at, created_at,
-- max_lost_attempts, idempotency_key, request_fingerprint, trace_context, queue,
-- dispatch_at, depends_on, on_dependency_failure, rate_keys, concurrency_key], in that
-- order.
-- With :limit, :together stores all of them only if all fit; otherwise the first ones
-- that fit. The waiting tasks are counted once, before the first row goes in. Its row
-- count: how many (the first ones) were stored. (The statement starts with INSERT, not
-- WITH: Python's sqlite3 counts rows only for statements that start as a write.)
INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
    max_retries, timeout_seconds, retry_config, owner, run_at, created_at, updated_at,
    max_lost_attempts, idempotency_key, request_fingerprint, trace_context, queue, dispatch_at,
    depends_on, on_dependency_failure, rate_keys, concurrency_key)
WITH waiting (n) AS MATERIALIZED (
    SELECT coalesce(sum(n), 0) FROM task_counts WHERE status IN ('pending', 'retrying'))
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
    json_extract(value, '$[3]'), 'pending', json_extract(value, '$[4]'),
    json_extract(value, '$[5]'), json_extract(value, '$[6]'), json_extract(value, '$[7]'),
    json_extract(value, '$[8]'), json_extract(value, '$[9]'), json_extract(value, '$[10]'),
    json_extract(value, '$[11]'), json_extract(value, '$[11]'), json_extract(value, '$[12]'),
    json_extract(value, '$[13]'), json_extract(value, '$[14]'), json_extract(value, '$[15]'),
    json_extract(value, '$[16]'), json_extract(value, '$[17]'), json_extract(value, '$[18]'),
    json_extract(value, '$[19]'), json_extract(value, '$[20]'), json_extract(value, '$[21]')
FROM json_each(:rows), waiting
WHERE :limit IS NULL
   OR (:together AND waiting.n + :count <= :limit)
   OR (NOT :together AND key < :limit - waiting.n)
ORDER BY key;

-- name: next_run_at
-- The earliest run time to come of a waiting task, but for tasks waiting on dependencies
-- (:blocked): one seek of the index of later run times.
SELECT min(run_at) FROM background_tasks INDEXED BY ix_background_tasks_later
WHERE status IN ('pending', 'retrying') AND run_at > created_at
  AND run_at > :now AND run_at < :blocked;

-- name: get_task
SELECT * FROM background_tasks WHERE id = :id;

-- name: get_tasks
SELECT * FROM background_tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: tasks_by_keys
SELECT * FROM background_tasks
WHERE idempotency_key IN (SELECT value FROM json_each(:keys));

-- name: list_tasks_created
-- Newest first.
SELECT * FROM background_tasks
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND (:task_type IS NULL OR task_type = :task_type)
ORDER BY created_at DESC, rowid DESC LIMIT :limit OFFSET :offset;

-- name: list_tasks_finished
-- Most recently finished first.
SELECT * FROM background_tasks
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND (:task_type IS NULL OR task_type = :task_type)
ORDER BY finished_at DESC, rowid DESC LIMIT :limit OFFSET :offset;

-- name: list_tasks_dispatch
-- In the order waiting tasks are claimed.
SELECT * FROM background_tasks
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND (:task_type IS NULL OR task_type = :task_type)
ORDER BY dispatch_at, rowid LIMIT :limit OFFSET :offset;

-- name: count_by_status
SELECT status, sum(n) AS n FROM task_counts GROUP BY status;

-- name: count_by_type
SELECT task_type, status, n FROM task_counts WHERE n > 0;

-- name: list_executions
-- The task's ended attempts, and the one running now, read off the task row (its row is
-- written when it ends; id 0 until then).
SELECT id, task_id, attempt, fence, worker_id, started_at, finished_at, outcome,
    error_category, error_type, error_message
FROM task_executions WHERE task_id = :task_id
UNION ALL
SELECT 0, id, attempts, fence, lease_owner, started_at, NULL, 'running', NULL, NULL, NULL
FROM background_tasks WHERE id = :task_id AND status = 'running'
ORDER BY fence;

-- Dispatch ---------------------------------------------------------------------------------

-- name: claim
-- Up to :limit eligible tasks of :queue (NULL: the default queue, stored as NULL: a
-- plain task's row and index entry carry no queue name) in dispatch order (dispatch_at: run time less the
-- priority's aging credit, see logic.dispatch_key; then insertion order), each given a
-- lease (its execution row is written when the attempt ends). One seek of the dispatch index (queue, dispatch_at), bounded
-- by dispatch_at <= :now (run_at <= :now implies it), so tasks that wait for their
-- dependencies or for a time far away are never read. The pick names the index: without
-- planner statistics (a new file) SQLite may pick the status index and sort every waiting
-- row. Runnable: this worker's own closures, or unowned tasks of :types (NULL: any type).
UPDATE background_tasks
SET status = 'running', attempts = attempts + 1, fence = fence + 1,
    lease_owner = :worker, lease_expires_at = :expires, cancel_requested = 0,
    started_at = :now, updated_at = :now
WHERE rowid IN (
    SELECT rowid FROM background_tasks INDEXED BY ix_background_tasks_dispatch
    WHERE status IN ('pending', 'retrying') AND queue IS :queue AND dispatch_at <= :now
      AND run_at <= :now
      AND (owner = :worker OR (owner IS NULL
           AND (:types IS NULL OR task_type IN (SELECT value FROM json_each(:types)))))
    ORDER BY dispatch_at, rowid LIMIT :limit)
RETURNING rowid AS seq, *;

-- name: register_worker
INSERT INTO workers (worker_id, hostname, pid, process_started_at, concurrency, started_at,
    heartbeat_at, expires_at)
VALUES (:worker, :hostname, :pid, :process_started_at, :concurrency, :started_at, :now, :expires)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at;

-- name: renew_leases
-- register_worker, and the leases of every task this worker holds.
INSERT INTO workers (worker_id, hostname, pid, process_started_at, concurrency, started_at,
    heartbeat_at, expires_at)
VALUES (:worker, :hostname, :pid, :process_started_at, :concurrency, :started_at, :now, :expires)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at;
UPDATE background_tasks SET lease_expires_at = :expires
WHERE lease_owner = :worker AND status = 'running'
RETURNING id, fence, cancel_requested;

-- name: finish
-- One attempt's outcome, if :worker still holds the attempt :fence (and, with
-- :cancel_guard, the task's cancel flag is that): its execution row, whole, with its
-- metrics (counted in the statistics if :metrics), read off the task row before the task
-- row is updated. No row back: the lease was lost.
INSERT INTO task_executions (task_id, task_type, attempt, fence, worker_id, started_at,
    finished_at, outcome, error_category, error_type, error_message, traceback,
    queue_wait_seconds, metered)
SELECT id, task_type, attempts, fence, lease_owner, started_at, :now, :outcome, :x_category, :x_type,
    :x_message, :traceback, max(0.0, started_at - run_at), :metrics
FROM background_tasks WHERE id = :id AND status = 'running' AND lease_owner = :worker
  AND fence = :fence AND (:cancel_guard IS NULL OR cancel_requested = :cancel_guard);
UPDATE background_tasks SET
    status = :status,
    result = CASE WHEN :status = 'completed' THEN :result ELSE result END,
    progress = CASE WHEN :status = 'completed' THEN 1.0 ELSE progress END,
    finished_at = CASE WHEN :terminal THEN :now ELSE finished_at END,
    run_at = coalesce(:run_at, run_at),
    dispatch_at = dispatch_at + (coalesce(:run_at, run_at) - run_at),
    attempts = attempts - :give_back,
    message = coalesce(:message, message),
    error_message = CASE WHEN :set_error THEN :error_message ELSE error_message END,
    error_type = CASE WHEN :set_error THEN :error_type ELSE error_type END,
    error_category = CASE WHEN :set_error THEN :error_category ELSE error_category END,
    lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, updated_at = :now
WHERE id = :id AND status = 'running' AND lease_owner = :worker AND fence = :fence
  AND (:cancel_guard IS NULL OR cancel_requested = :cancel_guard)
RETURNING progress, message,
    EXISTS (SELECT 1 FROM task_dependencies WHERE depends_on = :id) AS dependents;

-- name: complete_many
-- What finish writes for a completion, for every row of :rows (a JSON array of [id, worker,
-- fence, result, now]) whose attempt is still held, in two statements for the lot (the
-- task rows last: the execution rows are read off them); a row back for each: its id,
-- message, and whether it has dependents. CROSS JOIN (and the unary + that keeps the
-- status index out of the last one) keeps :rows the outer loop: else SQLite walks every
-- running task.
INSERT INTO task_executions (task_id, task_type, attempt, fence, worker_id, started_at,
    finished_at, outcome, queue_wait_seconds, metered)
SELECT t.id, t.task_type, t.attempts, t.fence, t.lease_owner, t.started_at, d.now, 'completed',
    max(0.0, t.started_at - t.run_at), :metrics
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS worker,
          json_extract(value, '$[2]') AS fence, json_extract(value, '$[4]') AS now
      FROM json_each(:rows)) AS d
CROSS JOIN background_tasks AS t ON t.id = d.id
WHERE t.status = 'running' AND t.lease_owner = d.worker AND t.fence = d.fence;
UPDATE background_tasks SET status = 'completed', result = d.result, progress = 1.0,
    finished_at = d.now, error_message = NULL, error_type = NULL, error_category = NULL,
    lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, updated_at = d.now
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS worker,
          json_extract(value, '$[2]') AS fence, json_extract(value, '$[3]') AS result,
          json_extract(value, '$[4]') AS now FROM json_each(:rows)) AS d
WHERE background_tasks.id = d.id AND +background_tasks.status = 'running'
  AND background_tasks.lease_owner = d.worker AND background_tasks.fence = d.fence
RETURNING id, message,
    EXISTS (SELECT 1 FROM task_dependencies WHERE depends_on = background_tasks.id)
        AS dependents;

-- Dependencies -----------------------------------------------------------------------------

-- name: existing_ids
SELECT id FROM background_tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: insert_dependencies
-- :rows is a JSON array of [depends_on, task_id].
INSERT INTO task_dependencies (depends_on, task_id)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:rows);

-- name: blocked_dependents
-- Tasks waiting on their dependencies (pending at :blocked), among the dependents of :of
-- and among :ids: for each, how many of its dependencies have not finished, and the first
-- that failed, was cancelled or is gone, as 'status:id'.
SELECT w.id, w.on_dependency_failure AS policy,
    sum(t.id IS NOT NULL AND t.status NOT IN ('completed', 'failed', 'cancelled'))
        AS unfinished,
    min(CASE WHEN t.id IS NULL THEN 'gone:' || d.depends_on
             WHEN t.status IN ('failed', 'cancelled') THEN t.status || ':' || d.depends_on
        END) AS broken
FROM background_tasks AS w
JOIN task_dependencies AS d ON d.task_id = w.id
LEFT JOIN background_tasks AS t ON t.id = d.depends_on
WHERE w.id IN (SELECT task_id FROM task_dependencies
               WHERE depends_on IN (SELECT value FROM json_each(:of))
               UNION ALL SELECT value FROM json_each(:ids))
  AND w.status = 'pending' AND w.run_at >= :blocked
GROUP BY w.id, w.on_dependency_failure;

-- name: release_dependents
-- Tasks of :ids still waiting on dependencies become runnable now.
UPDATE background_tasks SET run_at = :now, dispatch_at = dispatch_at + (:now - run_at),
    updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending' AND run_at >= :blocked
RETURNING id;

-- name: cancel_dependents
-- :rows is a JSON array of [id, reason]: tasks still waiting on dependencies, cancelled
-- with the reason as their message and error.
UPDATE background_tasks SET status = 'cancelled', finished_at = :now, updated_at = :now,
    message = d.reason, error_message = d.reason, error_type = :error_type,
    error_category = :category
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS reason
      FROM json_each(:rows)) AS d
WHERE background_tasks.id = d.id AND background_tasks.status = 'pending'
  AND background_tasks.run_at >= :blocked
RETURNING background_tasks.id;

-- name: blocked_tasks
-- Every task waiting on its dependencies.
SELECT id FROM background_tasks INDEXED BY ix_background_tasks_later
WHERE status IN ('pending', 'retrying') AND run_at > created_at AND run_at >= :blocked;

-- name: cancelled_dependents
-- The dependents of :ids that settle_dependents cancelled at :now, for them.
SELECT w.* FROM task_dependencies AS d JOIN background_tasks AS w ON w.id = d.task_id
WHERE d.depends_on IN (SELECT value FROM json_each(:ids)) AND w.status = 'cancelled'
  AND w.finished_at = :now AND w.error_type = :error_type;

-- name: dependencies_of
-- The dependencies of :id, with their status (NULL: deleted) and result.
SELECT d.depends_on AS id, t.status, t.result FROM task_dependencies AS d
LEFT JOIN background_tasks AS t ON t.id = d.depends_on
WHERE d.task_id = :id;

-- Workers and crash recovery -----------------------------------------------------------------

-- name: list_workers
SELECT * FROM workers;

-- name: remove_worker
DELETE FROM workers WHERE worker_id = :worker;

-- name: expire_workers
UPDATE workers SET expires_at = 0 WHERE worker_id IN (SELECT value FROM json_each(:ids));

-- name: dead_workers
SELECT worker_id FROM workers WHERE expires_at < :now;

-- name: lost_tasks
-- Running tasks whose lease expired or whose worker is dead.
SELECT * FROM background_tasks WHERE status = 'running'
  AND (lease_expires_at < :now OR lease_owner IN (SELECT value FROM json_each(:dead)));

-- name: lost_execution
-- The execution row of a lost attempt (:attempt, :fence of :worker, started at :started_at).
INSERT INTO task_executions (task_id, task_type, attempt, fence, worker_id, started_at,
    finished_at, outcome, error_category, error_type, error_message)
VALUES (:id, :task_type, :attempt, :fence, :worker, :started_at, :now, 'lost', :category, :error_type,
    :message);

-- name: end_lost_attempt
-- The task of a lost attempt: its new status, counts (:attempts, :lost_attempts) and error.
UPDATE background_tasks SET status = :status, lease_owner = NULL, lease_expires_at = NULL,
    cancel_requested = 0, updated_at = :now, run_at = coalesce(:retry_at, run_at),
    dispatch_at = dispatch_at + (coalesce(:retry_at, run_at) - run_at), attempts = :attempts, lost_attempts = :lost_attempts,
    finished_at = CASE WHEN :status IN ('failed', 'cancelled') THEN :now END,
    error_message = :message, error_type = :error_type, error_category = :category
WHERE id = :id
RETURNING *;

-- name: fail_orphans
-- Waiting closures whose process (owner) is dead or unknown.
UPDATE background_tasks SET status = 'failed', finished_at = :now, updated_at = :now,
    error_type = :error_type, error_category = :category, error_message = :message
WHERE status IN ('pending', 'retrying') AND owner IS NOT NULL
  AND (owner IN (SELECT value FROM json_each(:dead)) OR owner NOT IN (SELECT worker_id FROM workers))
RETURNING *;

-- name: delete_workers
DELETE FROM workers WHERE worker_id IN (SELECT value FROM json_each(:ids));

-- Progress ---------------------------------------------------------------------------------

-- name: running_among
SELECT id FROM background_tasks WHERE status = 'running'
  AND id IN (SELECT value FROM json_each(:ids));

-- name: save_progress
-- :rows is a JSON array of [id, progress, message, at], one per task.
UPDATE background_tasks SET progress = d.progress,
    message = coalesce(d.message, background_tasks.message), updated_at = d.at
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS progress,
          json_extract(value, '$[2]') AS message, json_extract(value, '$[3]') AS at
      FROM json_each(:rows)) AS d
WHERE background_tasks.id = d.id;

-- name: append_progress
-- :rows is a JSON array of [id, progress, message, metadata, at], oldest first.
INSERT INTO task_progress (task_id, progress, message, metadata, recorded_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
    json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(:rows) ORDER BY key;

-- name: trim_progress
-- Keep the newest :keep history rows of each task of :ids. Each task's cutoff is found
-- once (a walk of :keep index entries), not once for each of its rows.
DELETE FROM task_progress WHERE id IN (
    SELECT p.id
    FROM (SELECT j.value AS task_id,
              (SELECT q.id FROM task_progress AS q WHERE q.task_id = j.value
               ORDER BY q.id DESC LIMIT 1 OFFSET :keep) AS cut
          FROM json_each(:ids) AS j) AS c
    JOIN task_progress AS p ON p.task_id = c.task_id AND p.id <= c.cut);

-- name: progress_history
SELECT * FROM (SELECT * FROM task_progress WHERE task_id = :task_id
               ORDER BY id DESC LIMIT :limit) ORDER BY id;

-- Cancel, pause, requeue -------------------------------------------------------------------

-- name: task_status
SELECT status FROM background_tasks WHERE id = :id;

-- name: request_cancel_running
UPDATE background_tasks SET cancel_requested = 1, updated_at = :now WHERE id = :id
RETURNING *;

-- name: cancel_requests
-- The attempts :worker holds that have a cancel requested, from its leases' index.
SELECT id, fence FROM background_tasks INDEXED BY ix_background_tasks_leases
WHERE lease_owner = :worker AND status = 'running' AND cancel_requested = 1;

-- name: cancel_task
UPDATE background_tasks SET status = 'cancelled', finished_at = :now, updated_at = :now
WHERE id = :id RETURNING *;

-- name: cancel_waiting
UPDATE background_tasks SET status = 'cancelled', finished_at = :now, updated_at = :now
WHERE status IN ('pending', 'retrying') RETURNING id;

-- name: requeue_failed
UPDATE background_tasks SET status = 'pending', attempts = 0, lost_attempts = 0, run_at = :now,
    dispatch_at = dispatch_at + (:now - run_at), updated_at = :now, finished_at = NULL,
    progress = 0
WHERE status = 'failed'
  AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
  AND (:category IS NULL OR error_category = :category)
  AND (:task_type IS NULL OR task_type = :task_type)
RETURNING *;

-- name: set_paused
INSERT INTO queue_state (key, value) VALUES ('paused', :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: clear_paused
DELETE FROM queue_state WHERE key = 'paused';

-- name: get_paused
SELECT value FROM queue_state WHERE key = 'paused';

-- Shared circuit breakers --------------------------------------------------------------------

-- name: save_breaker_state
-- Insert or replace, unless the stored state is newer.
INSERT INTO circuit_breakers (name, state, opened_at, retry_at, updated_at, worker_id)
VALUES (:name, :state, :opened_at, :retry_at, :updated_at, :worker_id)
ON CONFLICT (name) DO UPDATE SET state = excluded.state, opened_at = excluded.opened_at,
    retry_at = excluded.retry_at, updated_at = excluded.updated_at,
    worker_id = excluded.worker_id
WHERE excluded.updated_at >= updated_at;

-- name: load_breaker_states
SELECT * FROM circuit_breakers ORDER BY name;

-- Schedules --------------------------------------------------------------------------------

-- name: define_schedule
-- A schedule from code or config, written at start: inserted, or replaced when its
-- definition (fingerprint) changed. An unchanged one keeps its runtime state (paused or
-- resumed, its next run). Its row count: 1 written, 0 unchanged.
INSERT INTO schedules (name, task_type, cron, every, timezone, payload, priority, enabled,
    missed, anchor_at, next_run_at, origin, fingerprint, created_at, updated_at)
VALUES (:name, :task_type, :cron, :every, :timezone, :payload, :priority, :enabled, :missed,
    :anchor_at, :next_run_at, :origin, :fingerprint, :now, :now)
ON CONFLICT (name) DO UPDATE SET task_type = excluded.task_type, cron = excluded.cron,
    every = excluded.every, timezone = excluded.timezone, payload = excluded.payload,
    priority = excluded.priority, enabled = excluded.enabled, missed = excluded.missed,
    anchor_at = excluded.anchor_at, next_run_at = excluded.next_run_at,
    origin = excluded.origin, fingerprint = excluded.fingerprint,
    updated_at = excluded.updated_at
WHERE schedules.fingerprint IS NOT excluded.fingerprint;

-- name: add_schedule
-- A new schedule, unless the name is taken. Its row count: 1 added, 0 taken.
INSERT INTO schedules (name, task_type, cron, every, timezone, payload, priority, enabled,
    missed, anchor_at, next_run_at, origin, fingerprint, created_at, updated_at)
VALUES (:name, :task_type, :cron, :every, :timezone, :payload, :priority, :enabled, :missed,
    :anchor_at, :next_run_at, :origin, :fingerprint, :now, :now)
ON CONFLICT (name) DO NOTHING;

-- name: schedule_fingerprints
SELECT name, fingerprint FROM schedules;

-- name: list_schedules
SELECT * FROM schedules ORDER BY name;

-- name: get_schedule
SELECT * FROM schedules WHERE name = :name;

-- name: lock_schedule
-- The schedule, to change in this transaction (SQLite's writers take turns already).
SELECT * FROM schedules WHERE name = :name;

-- name: lock_due_schedules
-- Enabled schedules whose next tick is due, to fire in this transaction.
SELECT * FROM schedules WHERE enabled AND next_run_at <= :now ORDER BY next_run_at, name;

-- name: next_schedule_at
-- When the next enabled schedule is due (NULL: none is enabled).
SELECT min(next_run_at) FROM schedules WHERE enabled;

-- name: insert_schedule_tick
-- A tick, unless it was fired already. Its row count: 1 fired now, 0 fired before.
INSERT INTO schedule_ticks (schedule, tick_at, task_id, fired_at, worker_id)
VALUES (:schedule, :tick_at, :task_id, :now, :worker)
ON CONFLICT (schedule, tick_at) DO NOTHING;

-- name: tick_without_task
-- The tick's task was refused (queue full): the tick stays fired, with no task.
UPDATE schedule_ticks SET task_id = NULL WHERE schedule = :schedule AND tick_at = :tick_at;

-- name: advance_schedule
UPDATE schedules SET next_run_at = :next_run_at, last_tick_at = :last_tick_at,
    last_task_id = :last_task_id, updated_at = :now
WHERE name = :name;

-- name: set_schedule_enabled
-- Pause or resume; a resumed schedule goes on from :next_run_at.
UPDATE schedules SET enabled = :enabled, next_run_at = :next_run_at, updated_at = :now
WHERE name = :name RETURNING *;

-- name: delete_schedule
-- Its row count: 1 deleted, 0 none of that name (its ticks go with it: ON DELETE CASCADE).
DELETE FROM schedules WHERE name = :name;

-- name: schedule_ticks
-- The ticks of a schedule fired since :since, oldest first.
SELECT * FROM schedule_ticks WHERE schedule = :schedule AND tick_at >= :since
ORDER BY tick_at LIMIT :limit;

-- name: cleanup_schedule_ticks
DELETE FROM schedule_ticks WHERE fired_at < :before;

-- Statistics and system metrics --------------------------------------------------------------

-- name: metrics_groups
SELECT task_type, outcome, error_category, attempt > 1 AS retry, count(*) AS n,
    sum(duration_seconds) AS duration, sum(queue_wait_seconds) AS wait
FROM task_metrics WHERE recorded_at >= :since GROUP BY 1, 2, 3, 4;

-- name: metrics_durations
SELECT duration_seconds FROM task_metrics WHERE recorded_at >= :since
  AND outcome = 'completed' AND duration_seconds IS NOT NULL
ORDER BY recorded_at DESC LIMIT :limit;

-- name: dead_lettered_since
SELECT count(*) FROM background_tasks WHERE finished_at >= :since AND status = 'failed';

-- name: add_resource_sample
INSERT INTO system_metrics (recorded_at, cpu_percent, memory_percent, disk_percent,
    process_rss_mb, process_cpu_percent, active_tasks, queued_tasks)
VALUES (:recorded_at, :cpu_percent, :memory_percent, :disk_percent, :process_rss_mb,
    :process_cpu_percent, :active_tasks, :queued_tasks);

-- name: resource_samples
-- The newest :limit samples since :since, oldest first.
SELECT * FROM (SELECT * FROM system_metrics WHERE recorded_at >= :since
               ORDER BY recorded_at DESC LIMIT :limit) ORDER BY recorded_at;

-- name: ping
SELECT 1;

-- name: write_check
-- The storage write check (logic.check_writes): one key upserted, a real commit.
INSERT INTO queue_state (key, value) VALUES ('write_check', :at)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- Housekeeping -----------------------------------------------------------------------------

-- name: cleanup_tasks
-- Up to 500 finished tasks that finished before :before (their rows in the other tables
-- go with them: ON DELETE CASCADE), but for those a task still to run depends on (it
-- reads their results when it starts).
DELETE FROM background_tasks WHERE rowid IN (SELECT rowid FROM background_tasks AS f
    WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at < :before
      AND NOT EXISTS (SELECT 1 FROM task_dependencies AS d
          JOIN background_tasks AS w ON w.id = d.task_id
          WHERE d.depends_on = f.id AND w.status NOT IN ('completed', 'failed', 'cancelled'))
    LIMIT 500);

-- name: cleanup_samples
DELETE FROM system_metrics WHERE recorded_at < :before;

-- name: count_tasks
SELECT count(*) FROM background_tasks;

-- name: wal_checkpoint
PRAGMA wal_checkpoint(TRUNCATE);

-- name: analyze
ANALYZE;
PRAGMA optimize;

-- name: vacuum
VACUUM;

-- name: quick_check
PRAGMA quick_check;

-- name: startup_quick_check
-- storage.startup_check quick: every page read once; at most 20 problems reported.
PRAGMA quick_check(20);

-- name: startup_integrity_check
-- storage.startup_check full: also every index against its table.
PRAGMA integrity_check(20);

-- Rate limits, concurrency keys, retry budgets (see logic.claim_limited) -----------------------

-- name: claim_candidates
-- Up to :scan waiting tasks of :queue (NULL: the default) that a claim with limits may
-- take, in dispatch order, as the plain claim picks them (dispatch_at up to :horizon: fair
-- queueing places a key's tasks later than now). A task whose concurrency key has :max_running running tasks is
-- skipped (a count on the index of running keys). Read in the claim's write transaction.
SELECT rowid AS seq, id, run_at, dispatch_at, rate_keys, concurrency_key
FROM background_tasks AS t INDEXED BY ix_background_tasks_dispatch
WHERE status IN ('pending', 'retrying') AND queue IS :queue AND dispatch_at <= :horizon
  AND run_at <= :now
  AND (owner = :worker OR (owner IS NULL
       AND (:types IS NULL OR task_type IN (SELECT value FROM json_each(:types)))))
  AND (:max_running IS NULL OR concurrency_key IS NULL OR (
       SELECT count(*) FROM background_tasks AS r INDEXED BY ix_background_tasks_running_key
       WHERE r.status = 'running' AND r.concurrency_key = t.concurrency_key) < :max_running)
ORDER BY dispatch_at, rowid LIMIT :scan;

-- name: claim_ids
-- The claim of the tasks :ids (picked by claim_candidates in this transaction): as claim.
UPDATE background_tasks
SET status = 'running', attempts = attempts + 1, fence = fence + 1,
    lease_owner = :worker, lease_expires_at = :expires, cancel_requested = 0,
    started_at = :now, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('pending', 'retrying')
RETURNING rowid AS seq, *;

-- name: defer_to_slots
-- Tasks whose rate limit has no slot now wait for it: :rows, a JSON array of [id, slot];
-- run_at moves to the slot and dispatch_at by as much. No attempt is spent.
UPDATE background_tasks
SET run_at = d.slot,
    dispatch_at = background_tasks.dispatch_at + (d.slot - background_tasks.run_at),
    updated_at = :now
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS slot
      FROM json_each(:rows)) AS d
WHERE background_tasks.id = d.id AND background_tasks.status IN ('pending', 'retrying');

-- name: ensure_concurrency_keys
INSERT INTO concurrency_keys (key) SELECT value FROM json_each(:keys) WHERE true
ON CONFLICT (key) DO NOTHING;

-- name: lock_concurrency_keys
-- (SQLite's write transaction holds every row already.)
SELECT key FROM concurrency_keys WHERE key IN (SELECT value FROM json_each(:keys)) ORDER BY key;

-- name: running_per_key
SELECT concurrency_key AS key, count(*) AS n
FROM background_tasks INDEXED BY ix_background_tasks_running_key
WHERE status = 'running' AND concurrency_key IN (SELECT value FROM json_each(:keys))
GROUP BY concurrency_key;

-- name: place_keyed
-- Fair queueing: the dispatch place of a new task of :key, at least :quantum after the
-- key's previous one, and not before :dispatch_at (its place without a key).
INSERT INTO concurrency_keys (key, last_start) VALUES (:key, :dispatch_at)
ON CONFLICT (key) DO UPDATE SET
    last_start = max(concurrency_keys.last_start + :quantum, excluded.last_start)
RETURNING last_start;

-- name: ensure_rate_limits
-- :rows, a JSON array of [key, name].
INSERT INTO rate_limits (key, name)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:rows) WHERE true
ON CONFLICT (key) DO NOTHING;

-- name: lock_rate_limits
SELECT key, tat, token_tat FROM rate_limits
WHERE key IN (SELECT value FROM json_each(:keys)) ORDER BY key;

-- name: save_rate_limits
-- :rows, a JSON array of [key, tat, token_tat, requests taken, tokens reported].
UPDATE rate_limits
SET tat = d.tat, token_tat = d.token_tat, requests = rate_limits.requests + d.requests,
    tokens = rate_limits.tokens + d.tokens, updated_at = :now
FROM (SELECT json_extract(value, '$[0]') AS key, json_extract(value, '$[1]') AS tat,
             json_extract(value, '$[2]') AS token_tat, json_extract(value, '$[3]') AS requests,
             json_extract(value, '$[4]') AS tokens
      FROM json_each(:rows)) AS d
WHERE rate_limits.key = d.key;

-- name: rate_limit_states
SELECT * FROM rate_limits ORDER BY name, key LIMIT :limit;

-- name: running_keys
-- Concurrency keys with running tasks, busiest first.
SELECT concurrency_key AS key, count(*) AS n
FROM background_tasks INDEXED BY ix_background_tasks_running_key
WHERE status = 'running' AND concurrency_key IS NOT NULL
GROUP BY concurrency_key ORDER BY n DESC, key LIMIT :limit;

-- name: count_retry_budget
-- One call to :dependency in the second :second: a first attempt, or (:retry) a retry.
INSERT INTO retry_budget (dependency, second, calls, retries)
VALUES (:dependency, :second, 1, CASE WHEN :retry THEN 1 ELSE 0 END)
ON CONFLICT (dependency, second) DO UPDATE SET calls = calls + 1,
    retries = retries + excluded.retries;

-- name: retry_budget_window
SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(retries), 0) AS retries
FROM retry_budget WHERE dependency = :dependency AND second >= :since;

-- name: delete_retry_budget
DELETE FROM retry_budget WHERE second < :before;
