-- One row per word-count task: the text, stored with the task, and its count, stored with
-- the task's completion. Deleted with its task.
CREATE TABLE word_counts (
    task_id TEXT PRIMARY KEY NOT NULL REFERENCES background_tasks (id) ON DELETE CASCADE,
    text    TEXT NOT NULL,
    words   INTEGER
);
