-- Translation jobs (the table is in 0001): listed newest first, and found by their task.
-- `steps` holds one checkpoint per finished workflow step, keyed by step name, so a
-- retried job resumes at its first unfinished step; `result` is set when the job ends.
CREATE INDEX ix_translation_jobs_created ON translation_jobs (created_at DESC, id DESC);
