-- Shared rate limits, concurrency keys and retry budgets (issue 21); the same as SQLite's
-- 0012_limits.sql, which says what each part is for.
ALTER TABLE background_tasks ADD COLUMN rate_keys TEXT;
ALTER TABLE background_tasks ADD COLUMN concurrency_key TEXT;
CREATE INDEX ix_background_tasks_running_key ON background_tasks (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE rate_limits (
    key        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    tat        DOUBLE PRECISION NOT NULL DEFAULT 0,
    token_tat  DOUBLE PRECISION NOT NULL DEFAULT 0,
    requests   BIGINT NOT NULL DEFAULT 0,
    tokens     BIGINT NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE TABLE concurrency_keys (
    key        TEXT PRIMARY KEY,
    last_start DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE TABLE retry_budget (
    dependency TEXT NOT NULL,
    second     BIGINT NOT NULL,
    calls      BIGINT NOT NULL DEFAULT 0,
    retries    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (dependency, second)
);
