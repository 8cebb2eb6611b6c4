-- Fewer writes a task (issue 22): an attempt's execution row is written once, complete,
-- when the attempt ends (a finish, a completion in a batch, the reap of a lost attempt),
-- and carries the attempt's metrics. A claim writes only the task row: while an attempt
-- runs, its execution is read off the task row (attempts, fence, lease_owner, started_at;
-- see the list_executions query). A completed task: one task-row UPDATE at its claim; one
-- task-row UPDATE and one execution-row INSERT at its finish.
DROP TRIGGER tr_background_tasks_claimed;
-- The rows claims wrote for the attempts running now: their task rows hold them, and their
-- finish (or reap) writes them whole.
DELETE FROM task_executions WHERE outcome = 'running' AND EXISTS (
    SELECT 1 FROM background_tasks AS t WHERE t.id = task_executions.task_id
      AND t.status = 'running' AND t.fence = task_executions.fence);
-- The metrics of an attempt, on its row: its task's type (statistics group by it: no join
-- with the tasks) and its wait in the queue before it started; its duration and time are
-- read off the row (the task_metrics view below). metered: the attempt is counted in the
-- statistics (a finish, with task_monitoring.enable_task_metrics on); a lost one is not.
ALTER TABLE task_executions ADD COLUMN task_type TEXT;
ALTER TABLE task_executions ADD COLUMN queue_wait_seconds REAL;
ALTER TABLE task_executions ADD COLUMN metered INTEGER NOT NULL DEFAULT 0;
CREATE INDEX ix_task_executions_metered ON task_executions (finished_at) WHERE metered;
-- The metrics rows written before this migration stay in their table, renamed; the view
-- task_metrics reads them and the new ones as one table of the same columns (less the id).
ALTER TABLE task_metrics RENAME TO task_metrics_archived;
CREATE VIEW task_metrics AS
SELECT task_id, task_type, attempt, outcome, error_category, queue_wait_seconds,
    duration_seconds, recorded_at
FROM task_metrics_archived
UNION ALL
SELECT task_id, task_type, attempt, outcome, error_category, queue_wait_seconds,
    max(0.0, finished_at - started_at), finished_at
FROM task_executions WHERE metered;
