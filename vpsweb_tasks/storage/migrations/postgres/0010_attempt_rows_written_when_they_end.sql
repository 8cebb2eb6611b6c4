-- Execution rows written when attempts end, with their metrics (issue 22); the same as
-- SQLite's 0013_attempt_rows_written_when_they_end.sql, which says what each part is for.
DELETE FROM task_executions AS e USING background_tasks AS t
WHERE e.outcome = 'running' AND t.id = e.task_id AND t.status = 'running'
  AND t.fence = e.fence;
ALTER TABLE task_executions ADD COLUMN task_type TEXT;
ALTER TABLE task_executions ADD COLUMN queue_wait_seconds DOUBLE PRECISION;
ALTER TABLE task_executions ADD COLUMN metered BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX ix_task_executions_metered ON task_executions (finished_at) WHERE metered;
ALTER TABLE task_metrics RENAME TO task_metrics_archived;
CREATE VIEW task_metrics AS
SELECT task_id, task_type, attempt, outcome, error_category, queue_wait_seconds,
    duration_seconds, recorded_at
FROM task_metrics_archived
UNION ALL
SELECT task_id, task_type, attempt, outcome, error_category, queue_wait_seconds,
    greatest(0, finished_at - started_at), finished_at
FROM task_executions WHERE metered;
