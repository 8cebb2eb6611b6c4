-- Circuit breaker states shared by every worker on this database (last writer wins).
CREATE TABLE circuit_breakers (
    name       TEXT PRIMARY KEY NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half-open')),
    opened_at  DOUBLE PRECISION,
    retry_at   DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    worker_id  TEXT NOT NULL
);
