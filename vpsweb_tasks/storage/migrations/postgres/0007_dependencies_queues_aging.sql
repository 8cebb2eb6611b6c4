-- Named queues, dependencies between tasks, and aging (issue 20); the same as SQLite's
-- 0010_dependencies_queues_aging.sql, which says what each part is for.
ALTER TABLE background_tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE background_tasks ADD COLUMN dispatch_at DOUBLE PRECISION;
ALTER TABLE background_tasks ADD COLUMN depends_on TEXT;
ALTER TABLE background_tasks ADD COLUMN on_dependency_failure TEXT NOT NULL DEFAULT 'cancel'
    CHECK (on_dependency_failure IN ('cancel', 'run'));
UPDATE background_tasks SET dispatch_at = CASE
    WHEN status IN ('pending', 'retrying') THEN run_at - priority * 300.0 ELSE 0 END;
ALTER TABLE background_tasks ALTER COLUMN dispatch_at SET NOT NULL;
DROP INDEX IF EXISTS ix_background_tasks_dispatch;
DROP INDEX IF EXISTS ix_background_tasks_fifo;
CREATE INDEX ix_background_tasks_dispatch
    ON background_tasks (queue, dispatch_at, seq)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX ix_background_tasks_later
    ON background_tasks (run_at)
    WHERE status IN ('pending', 'retrying') AND run_at > created_at;

CREATE TABLE task_dependencies (
    depends_on TEXT NOT NULL,
    task_id    TEXT NOT NULL REFERENCES background_tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (depends_on, task_id)
);
CREATE INDEX ix_task_dependencies_task ON task_dependencies (task_id);
