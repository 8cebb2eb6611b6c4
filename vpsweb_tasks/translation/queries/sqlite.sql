-- The translation extension's named queries for SQLite (the format: vpsweb_tasks/storage/
-- queries.py); operations in vpsweb_tasks/translation/store.py run them, as
-- translation.<name>.

-- name: insert_jobs
-- The jobs of tasks inserted in the same transaction; :rows is a JSON array of
-- [id, task_id, source_language, target_language, workflow_mode, original_text, metadata,
-- created_at].
INSERT INTO translation_jobs (id, task_id, source_language, target_language, workflow_mode,
    original_text, metadata, steps, created_at, updated_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
    json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
    json_extract(value, '$[6]'), '{}', json_extract(value, '$[7]'), json_extract(value, '$[7]')
FROM json_each(:rows) ORDER BY key;

-- name: get_job
SELECT * FROM translation_jobs WHERE id = :id;

-- name: list_jobs
-- Newest first, with any status of :statuses (NULL: any).
SELECT j.* FROM translation_jobs AS j JOIN background_tasks AS t ON t.id = j.task_id
WHERE :statuses IS NULL OR t.status IN (SELECT value FROM json_each(:statuses))
ORDER BY j.created_at DESC, j.id DESC LIMIT :limit OFFSET :offset;

-- name: save_step
-- Insert or replace one step's checkpoint (:path is the JSON path of its quoted name).
UPDATE translation_jobs SET steps = json_set(steps, :path, json(:checkpoint)),
    updated_at = :now
WHERE id = :id;

-- name: save_result
UPDATE translation_jobs SET result = :result, updated_at = :now WHERE id = :id;

-- name: report_step
-- Insert or replace what was reported of one step (:path is the JSON path of its quoted
-- name).
UPDATE translation_jobs SET step_states = json_set(step_states, :path, json(:report)),
    updated_at = :now
WHERE id = :id;

-- name: usage_by_model
-- Tokens and cost of the steps finished since :since, by model (from the checkpoints of
-- the jobs still kept).
SELECT json_extract(s.value, '$.model') AS model, count(*) AS steps,
    sum(json_extract(s.value, '$.tokens.prompt_tokens')) AS prompt_tokens,
    sum(json_extract(s.value, '$.tokens.completion_tokens')) AS completion_tokens,
    sum(json_extract(s.value, '$.cost')) AS cost,
    count(json_extract(s.value, '$.cost')) AS priced,
    coalesce(max(json_extract(s.value, '$.tokens.estimated')), 0) AS estimated
FROM translation_jobs AS j, json_each(j.steps) AS s
WHERE j.updated_at >= :since AND json_extract(s.value, '$.finished_at') >= :since
GROUP BY 1 ORDER BY 1;

-- name: usage_by_key
-- As usage_by_model, by the jobs' concurrency key (a request's user: user:<user>); jobs
-- without one are left out.
SELECT t.concurrency_key AS key, count(*) AS steps,
    sum(json_extract(s.value, '$.tokens.prompt_tokens')) AS prompt_tokens,
    sum(json_extract(s.value, '$.tokens.completion_tokens')) AS completion_tokens,
    sum(json_extract(s.value, '$.cost')) AS cost,
    count(json_extract(s.value, '$.cost')) AS priced,
    coalesce(max(json_extract(s.value, '$.tokens.estimated')), 0) AS estimated
FROM translation_jobs AS j JOIN background_tasks AS t ON t.id = j.task_id,
    json_each(j.steps) AS s
WHERE j.updated_at >= :since AND json_extract(s.value, '$.finished_at') >= :since
  AND t.concurrency_key IS NOT NULL
GROUP BY 1 ORDER BY 1;
