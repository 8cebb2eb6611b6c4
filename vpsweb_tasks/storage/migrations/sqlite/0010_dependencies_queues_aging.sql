-- Named queues, dependencies between tasks, and aging (issue 20).
--
-- queue: the named queue a task waits in; a worker claims from the queues it serves. NULL
-- is the default queue (logic.stored_queue): a plain task's row and index entry carry no
-- name, which a plain submit and its claim would pay for.
-- dispatch_at: the task's place in the dispatch order, run_at - priority x aging (see
-- logic.dispatch_key): a waiting task gains a priority level every aging period, so no
-- task starves behind a stream of higher ones. Whenever run_at moves, dispatch_at moves
-- by as much. Rows from before this migration get the default aging (300 s a level).
-- The dispatch index becomes (queue, dispatch_at): a claim is one seek of its queue,
-- bounded by dispatch_at <= now (run_at <= now implies it).
-- ix_background_tasks_later: the run times to come (retries, delayed submits, tasks
-- waiting on dependencies), for next_run_at; a plain submit (run_at = created_at) is not
-- in it, so it costs plain submits and their claims nothing.
-- depends_on: the ids a task waits for (JSON array; NULL: none); on_dependency_failure:
-- 'cancel' (default) or 'run'. A task waiting on its dependencies is pending with run_at
-- at a sentinel time that never comes (logic.BLOCKED); task_dependencies indexes the
-- edges by the dependency, to find its dependents when it finishes.
ALTER TABLE background_tasks ADD COLUMN queue TEXT;
ALTER TABLE background_tasks ADD COLUMN dispatch_at REAL NOT NULL DEFAULT 0;
ALTER TABLE background_tasks ADD COLUMN depends_on TEXT;
ALTER TABLE background_tasks ADD COLUMN on_dependency_failure TEXT NOT NULL DEFAULT 'cancel'
    CHECK (on_dependency_failure IN ('cancel', 'run'));
UPDATE background_tasks SET dispatch_at = run_at - priority * 300.0
WHERE status IN ('pending', 'retrying');
DROP INDEX IF EXISTS ix_background_tasks_dispatch;
CREATE INDEX ix_background_tasks_dispatch
    ON background_tasks (queue, dispatch_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX ix_background_tasks_later
    ON background_tasks (run_at)
    WHERE status IN ('pending', 'retrying') AND run_at > created_at;

CREATE TABLE task_dependencies (
    depends_on TEXT NOT NULL,
    task_id    TEXT NOT NULL REFERENCES background_tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (depends_on, task_id)
) WITHOUT ROWID;
CREATE INDEX ix_task_dependencies_task ON task_dependencies (task_id);
