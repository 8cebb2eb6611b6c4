-- Shared rate limits, concurrency keys and retry budgets (issue 21).
--
-- rate_keys: the rate-limit keys a task consumes when claimed, a JSON array of
-- [limit name, key] pairs resolved at submit from its type's templates (NULL: none).
-- concurrency_key: the key (e.g. a user) whose running tasks are bounded across every
-- worker (background_tasks.max_running_per_key) and whose tasks are spread in the dispatch
-- order (background_tasks.fair_share_seconds). ix_background_tasks_running_key counts a
-- key's running tasks; it holds running tasks with a key only.
-- rate_limits: one row per key, GCRA state: tat (the theoretical arrival time of the
-- next request: a claim may take the key when tat <= now, and moves it one emission
-- interval, per / requests, later) and token_tat (when the tokens reported so far are
-- paid back at tokens / per; a claim needs token_tat - per <= now).
-- concurrency_keys: one row per key: the dispatch place of its latest task (fair
-- queueing), and the row a claim locks before it counts the key's running tasks.
-- retry_budget: per dependency (a breaker name or a rate-limit key) and second, the
-- first attempts and the retries that called it.
ALTER TABLE background_tasks ADD COLUMN rate_keys TEXT;
ALTER TABLE background_tasks ADD COLUMN concurrency_key TEXT;
CREATE INDEX ix_background_tasks_running_key ON background_tasks (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE rate_limits (
    key        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    tat        REAL NOT NULL DEFAULT 0,
    token_tat  REAL NOT NULL DEFAULT 0,
    requests   INTEGER NOT NULL DEFAULT 0,
    tokens     INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE concurrency_keys (
    key        TEXT PRIMARY KEY,
    last_start REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE retry_budget (
    dependency TEXT NOT NULL,
    second     INTEGER NOT NULL,
    calls      INTEGER NOT NULL DEFAULT 0,
    retries    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dependency, second)
) WITHOUT ROWID;
