-- A claim (the only write that moves a task's fence) writes the attempt's execution row
-- in the same statement, as PostgreSQL's claim does in its CTE: one statement a claim
-- instead of a second one that finds the claimed rows again.
CREATE TRIGGER tr_background_tasks_claimed AFTER UPDATE OF fence ON background_tasks
WHEN NEW.status = 'running'
BEGIN
    INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at, outcome)
    VALUES (NEW.id, NEW.attempts, NEW.fence, NEW.lease_owner, NEW.started_at, 'running');
END;
