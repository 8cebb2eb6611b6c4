-- The translation extension's named queries for PostgreSQL (the format:
-- vpsweb_tasks/storage/queries.py); operations in vpsweb_tasks/translation/store.py run
-- them, as translation.<name>.

-- name: insert_jobs
-- The jobs of tasks inserted in the same transaction; %(rows)s is a JSON array of
-- [id, task_id, source_language, target_language, workflow_mode, original_text, metadata,
-- created_at].
INSERT INTO translation_jobs (id, task_id, source_language, target_language, workflow_mode,
    original_text, metadata, steps, created_at, updated_at)
SELECT r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, r->>6, '{}', (r->>7)::float8,
    (r->>7)::float8
FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS e(r, n) ORDER BY n;

-- name: get_job
SELECT * FROM translation_jobs WHERE id = %(id)s;

-- name: list_jobs
-- Newest first, with any status of %(statuses)s (NULL: any).
SELECT j.* FROM translation_jobs AS j JOIN background_tasks AS t ON t.id = j.task_id
WHERE %(statuses)s::text[] IS NULL OR t.status = ANY(%(statuses)s)
ORDER BY j.created_at DESC, j.id DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: save_step
-- Insert or replace one step's checkpoint.
UPDATE translation_jobs
SET steps = (steps::jsonb || jsonb_build_object(%(step)s::text, %(checkpoint)s::jsonb))::text,
    updated_at = %(now)s
WHERE id = %(id)s;

-- name: save_result
UPDATE translation_jobs SET result = %(result)s, updated_at = %(now)s WHERE id = %(id)s;

-- name: report_step
-- Insert or replace what was reported of one step.
UPDATE translation_jobs
SET step_states = (step_states::jsonb || jsonb_build_object(%(step)s::text, %(report)s::jsonb))::text,
    updated_at = %(now)s
WHERE id = %(id)s;

-- name: usage_by_model
-- Tokens and cost of the steps finished since %(since)s, by model (from the checkpoints of
-- the jobs still kept).
SELECT s.value->>'model' AS model, count(*) AS steps,
    sum((s.value->'tokens'->>'prompt_tokens')::bigint) AS prompt_tokens,
    sum((s.value->'tokens'->>'completion_tokens')::bigint) AS completion_tokens,
    sum((s.value->>'cost')::float8) AS cost,
    count(s.value->>'cost') AS priced,
    coalesce(bool_or((s.value->'tokens'->>'estimated')::boolean), false) AS estimated
FROM translation_jobs AS j, jsonb_each(j.steps::jsonb) AS s
WHERE j.updated_at >= %(since)s AND (s.value->>'finished_at')::float8 >= %(since)s
GROUP BY 1 ORDER BY 1;

-- name: usage_by_key
-- As usage_by_model, by the jobs' concurrency key (a request's user: user:<user>); jobs
-- without one are left out.
SELECT t.concurrency_key AS key, count(*) AS steps,
    sum((s.value->'tokens'->>'prompt_tokens')::bigint) AS prompt_tokens,
    sum((s.value->'tokens'->>'completion_tokens')::bigint) AS completion_tokens,
    sum((s.value->>'cost')::float8) AS cost,
    count(s.value->>'cost') AS priced,
    coalesce(bool_or((s.value->'tokens'->>'estimated')::boolean), false) AS estimated
FROM translation_jobs AS j JOIN background_tasks AS t ON t.id = j.task_id,
    jsonb_each(j.steps::jsonb) AS s
WHERE j.updated_at >= %(since)s AND (s.value->>'finished_at')::float8 >= %(since)s
  AND t.concurrency_key IS NOT NULL
GROUP BY 1 ORDER BY 1;
