-- What the workflow reported of each step (running, completed, failed) and in which
-- attempt, keyed by step name: any workflow's progress callbacks, VPSWeb's included, so a
-- job's current step and finished steps are known without checkpoints.
ALTER TABLE translation_jobs ADD COLUMN step_states TEXT NOT NULL DEFAULT '{}';
