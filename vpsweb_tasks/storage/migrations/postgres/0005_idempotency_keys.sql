-- Idempotency keys: a submit that repeats an earlier one's key gets the earlier task back.
-- The unique index makes two processes racing on one key store one task. It is partial:
-- tasks without a key (most) cost it nothing. request_fingerprint tells a repeat of the
-- same request from another request that reuses the key (an error).
ALTER TABLE background_tasks ADD COLUMN idempotency_key TEXT;
ALTER TABLE background_tasks ADD COLUMN request_fingerprint TEXT;
CREATE UNIQUE INDEX background_tasks_idempotency_key ON background_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
