-- herald's own tables. apalis owns `Jobs` and `Workers` (SQLite table names ignore
-- case, hence the herald_ prefix); these migrations are tracked in
-- `herald_migrations`, apart from apalis's `_sqlx_migrations`.

CREATE TABLE herald_jobs (
    id               TEXT    PRIMARY KEY NOT NULL,  -- UUIDv7, sorts by creation
    task_id          TEXT    NOT NULL UNIQUE,       -- the same 128 bits as a ULID: apalis's task id
    tenant           TEXT    NOT NULL DEFAULT '',
    kind             TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    input            TEXT    NOT NULL,              -- JSON
    progress         TEXT,                          -- JSON, latest report
    result           TEXT,                          -- JSON
    error            TEXT,                          -- JSON {code, message}
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    timeout_secs     INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    created_at       INTEGER NOT NULL,              -- microseconds since the epoch
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL               -- seq of the job's latest event
);

CREATE UNIQUE INDEX herald_jobs_idempotency ON herald_jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX herald_jobs_tenant_id ON herald_jobs (tenant, id);
CREATE INDEX herald_jobs_status_id ON herald_jobs (status, id);
CREATE INDEX herald_jobs_kind_id ON herald_jobs (kind, id);

CREATE TABLE herald_job_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,  -- global append order
    job_id TEXT    NOT NULL REFERENCES herald_jobs (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,                   -- per job: 1, 2, 3 ... gapless
    event  TEXT    NOT NULL,
    data   TEXT    NOT NULL,                   -- the exact one-line JSON sent as SSE data
    at     INTEGER NOT NULL,
    UNIQUE (job_id, seq)
);
