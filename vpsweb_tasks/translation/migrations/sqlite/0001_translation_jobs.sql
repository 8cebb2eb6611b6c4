-- Translation jobs: one row per job, linked one-to-one to its background task (the job id
-- is the task's id) and deleted with it. `steps` holds one checkpoint per finished workflow
-- step, keyed by step name, so a retried job resumes at its first unfinished step;
-- `result` is set when the job completes. (Databases made before the extension existed
-- have the table already: IF NOT EXISTS.)
CREATE TABLE IF NOT EXISTS translation_jobs (
    id              TEXT PRIMARY KEY NOT NULL,
    task_id         TEXT NOT NULL UNIQUE REFERENCES background_tasks (id) ON DELETE CASCADE,
    source_language TEXT NOT NULL,
    target_language TEXT NOT NULL,
    workflow_mode   TEXT NOT NULL,
    original_text   TEXT NOT NULL,
    metadata        TEXT NOT NULL DEFAULT '{}',
    steps           TEXT NOT NULL DEFAULT '{}',
    result          TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
-- Listed newest first.
CREATE INDEX IF NOT EXISTS ix_translation_jobs_created
    ON translation_jobs (created_at DESC, id DESC);
