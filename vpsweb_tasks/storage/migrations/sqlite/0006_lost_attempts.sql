-- Attempts lost with their worker (killed, out of memory, machine gone) are counted apart
-- from the attempts that count against max_retries, with their own bound: a task's own
-- max_lost_attempts, else background_tasks.max_lost_attempts of the reaping worker (NULL).
-- Existing tasks start at 0 lost attempts; the attempts they lost before this migration
-- stay counted as they were.
ALTER TABLE background_tasks ADD COLUMN lost_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE background_tasks ADD COLUMN max_lost_attempts INTEGER;
