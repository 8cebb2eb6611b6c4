-- The trace context of the submit that stored a task (OpenTelemetry's propagation fields,
-- as JSON: {"traceparent": ...}), so its attempts, in whichever worker process, join the
-- submitter's trace. NULL when the submitter traced nothing (most tasks, and every task
-- without the otel extra): the column costs them nothing.
ALTER TABLE background_tasks ADD COLUMN trace_context TEXT;
