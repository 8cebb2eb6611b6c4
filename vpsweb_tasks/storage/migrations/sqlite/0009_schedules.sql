-- Schedules: a task type fired by a cron expression (read in its timezone) or every so many
-- seconds. The row is where processes agree: a scheduler fires a tick in the transaction
-- that moves next_run_at on, so each tick fires once whichever process is up.
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY NOT NULL,
    task_type    TEXT NOT NULL,
    cron         TEXT,
    every        REAL,
    timezone     TEXT NOT NULL DEFAULT 'UTC',
    payload      TEXT NOT NULL DEFAULT '{}',
    priority     INTEGER NOT NULL DEFAULT 1,
    enabled      INTEGER NOT NULL DEFAULT 1,
    -- 'latest' | 'skip'; NULL: background_tasks.schedule_missed
    missed       TEXT CHECK (missed IN ('latest', 'skip')),
    -- an interval's ticks are anchor_at + k * every
    anchor_at    REAL NOT NULL,
    next_run_at  REAL NOT NULL,
    last_tick_at REAL,
    last_task_id TEXT,
    -- 'code' | 'config' | 'builtin' definitions are written again at start when their
    -- fingerprint (the definition as text) changed; 'api' ones live only here
    origin       TEXT NOT NULL CHECK (origin IN ('code', 'config', 'api', 'builtin')),
    fingerprint  TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    CHECK ((cron IS NULL) <> (every IS NULL))
);
-- The scheduler's question: which enabled schedule is due next.
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;

-- One row per tick fired: the primary key is what makes a tick fire once. task_id is the
-- task it submitted (NULL: the queue was full). Rows older than the task retention are
-- deleted by the cleanup; a schedule's go with it.
CREATE TABLE schedule_ticks (
    schedule  TEXT NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    tick_at   REAL NOT NULL,
    task_id   TEXT,
    fired_at  REAL NOT NULL,
    worker_id TEXT NOT NULL,
    PRIMARY KEY (schedule, tick_at)
) WITHOUT ROWID;
CREATE INDEX schedule_ticks_fired ON schedule_ticks (fired_at);
