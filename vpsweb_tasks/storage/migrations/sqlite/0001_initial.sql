-- The core tables: four of the design document's five (translation_jobs belongs to the
-- translation extension), plus workers, queue state and progress history.
-- Times are epoch seconds (REAL). JSON columns hold TEXT.

CREATE TABLE background_tasks (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    task_type        TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                        ('pending', 'running', 'retrying', 'completed', 'failed', 'cancelled')),
    payload          TEXT NOT NULL DEFAULT '{}',
    metadata         TEXT NOT NULL DEFAULT '{}',
    max_retries      INTEGER NOT NULL,
    timeout_seconds  REAL,
    retry_config     TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    fence            INTEGER NOT NULL DEFAULT 0,
    progress         REAL NOT NULL DEFAULT 0,
    message          TEXT,
    result           TEXT,
    error_message    TEXT,
    error_type       TEXT,
    error_category   TEXT,
    owner            TEXT,
    lease_owner      TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    run_at           REAL NOT NULL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);

-- The claim query's sort, exactly (DESC matters: benchmarks/depth.py).
CREATE INDEX ix_background_tasks_dispatch
    ON background_tasks (priority DESC, run_at)
    WHERE status IN ('pending', 'retrying');
-- Plain FIFO dispatch (enable_priority_queue: false).
CREATE INDEX ix_background_tasks_fifo
    ON background_tasks (run_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX ix_background_tasks_leases
    ON background_tasks (lease_owner, lease_expires_at)
    WHERE status = 'running';
CREATE INDEX ix_background_tasks_status ON background_tasks (status, created_at);
CREATE INDEX ix_background_tasks_finished
    ON background_tasks (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX ix_background_tasks_owner
    ON background_tasks (owner)
    WHERE owner IS NOT NULL;

CREATE TABLE task_executions (
    id             INTEGER PRIMARY KEY,
    task_id        TEXT NOT NULL REFERENCES background_tasks (id) ON DELETE CASCADE,
    attempt        INTEGER NOT NULL,
    fence          INTEGER NOT NULL,
    worker_id      TEXT NOT NULL,
    started_at     REAL NOT NULL,
    finished_at    REAL,
    outcome        TEXT NOT NULL,
    error_category TEXT,
    error_type     TEXT,
    error_message  TEXT,
    traceback      TEXT
);
CREATE UNIQUE INDEX ix_task_executions_task ON task_executions (task_id, fence);

CREATE TABLE task_metrics (
    id                 INTEGER PRIMARY KEY,
    task_id            TEXT NOT NULL REFERENCES background_tasks (id) ON DELETE CASCADE,
    task_type          TEXT NOT NULL,
    attempt            INTEGER NOT NULL,
    outcome            TEXT NOT NULL,
    error_category     TEXT,
    queue_wait_seconds REAL,
    duration_seconds   REAL,
    recorded_at        REAL NOT NULL
);
CREATE INDEX ix_task_metrics_task ON task_metrics (task_id);
CREATE INDEX ix_task_metrics_recorded ON task_metrics (recorded_at);

CREATE TABLE system_metrics (
    id             INTEGER PRIMARY KEY,
    recorded_at    REAL NOT NULL,
    cpu_percent    REAL,
    memory_percent REAL,
    disk_percent   REAL,
    process_rss_mb REAL,
    process_cpu_percent REAL,
    active_tasks   INTEGER,
    queued_tasks   INTEGER
);
CREATE INDEX ix_system_metrics_recorded ON system_metrics (recorded_at);

CREATE TABLE task_progress (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT NOT NULL REFERENCES background_tasks (id) ON DELETE CASCADE,
    progress    REAL NOT NULL,
    message     TEXT,
    metadata    TEXT,
    recorded_at REAL NOT NULL
);
CREATE INDEX ix_task_progress_task ON task_progress (task_id, id);

CREATE TABLE workers (
    worker_id          TEXT PRIMARY KEY NOT NULL,
    hostname           TEXT NOT NULL,
    pid                INTEGER NOT NULL,
    process_started_at REAL,
    concurrency        INTEGER NOT NULL DEFAULT 1,
    started_at         REAL NOT NULL,
    heartbeat_at       REAL NOT NULL,
    expires_at         REAL NOT NULL
);

CREATE TABLE queue_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT
);

-- Tasks per type and status, kept by triggers: the queue-size check on every submit and
-- the statistics read a handful of rows instead of counting tasks.
CREATE TABLE task_counts (
    task_type TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_type, status)
) WITHOUT ROWID;

CREATE TRIGGER tr_background_tasks_insert AFTER INSERT ON background_tasks
BEGIN
    INSERT INTO task_counts (task_type, status, n) VALUES (NEW.task_type, NEW.status, 1)
        ON CONFLICT (task_type, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER tr_background_tasks_delete AFTER DELETE ON background_tasks
BEGIN
    UPDATE task_counts SET n = n - 1
        WHERE task_type = OLD.task_type AND status = OLD.status;
END;

CREATE TRIGGER tr_background_tasks_status AFTER UPDATE OF status ON background_tasks
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE task_counts SET n = n - 1
        WHERE task_type = OLD.task_type AND status = OLD.status;
    INSERT INTO task_counts (task_type, status, n) VALUES (NEW.task_type, NEW.status, 1)
        ON CONFLICT (task_type, status) DO UPDATE SET n = n + 1;
END;
