-- Plain FIFO claims (enable_priority_queue: false) read the dispatch index, the first
-- rows of each priority, and sort those few: the FIFO index cost every insert and claim
-- for a mode few deployments use.
DROP INDEX IF EXISTS ix_background_tasks_fifo;
