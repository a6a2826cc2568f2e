-- herald's own tables on PostgreSQL. apalis keeps its queue in the `apalis`
-- schema; these migrations are tracked in `herald_migrations`, apart from
-- apalis's `_sqlx_migrations`. JSON is kept as text (an event's data goes out
-- byte for byte as it was written) and times as microseconds since the epoch,
-- as on SQLite, so both backends read one row type.

CREATE TABLE herald_jobs (
    id               uuid    PRIMARY KEY,           -- UUIDv7, sorts by creation
    task_id          text    NOT NULL UNIQUE,       -- the same 128 bits as a ULID: apalis's task id
    tenant           text    NOT NULL DEFAULT '',
    kind             text    NOT NULL,
    status           text    NOT NULL,
    input            text    NOT NULL,
    progress         text,
    result           text,
    error            text,
    attempt          bigint  NOT NULL,
    max_attempts     bigint  NOT NULL,
    timeout_secs     bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    idempotency_key  text,
    created_at       bigint  NOT NULL,
    started_at       bigint,
    finished_at      bigint,
    updated_at       bigint  NOT NULL,
    last_seq         bigint  NOT NULL,
    node_id          text                           -- the node that started the current attempt
);

CREATE UNIQUE INDEX herald_jobs_idempotency ON herald_jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX herald_jobs_tenant_id ON herald_jobs (tenant, id);
CREATE INDEX herald_jobs_status_id ON herald_jobs (status, id);
CREATE INDEX herald_jobs_kind_id ON herald_jobs (kind, id);
CREATE INDEX herald_jobs_finished_at ON herald_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX herald_jobs_running_node ON herald_jobs (node_id) WHERE status = 'running';

CREATE TABLE herald_job_events (
    id     bigserial PRIMARY KEY,                 -- global append order (see the feed)
    job_id uuid      NOT NULL REFERENCES herald_jobs (id) ON DELETE CASCADE,
    seq    bigint    NOT NULL,                    -- per job: 1, 2, 3 ... gapless
    event  text      NOT NULL,
    data   text      NOT NULL,
    at     bigint    NOT NULL,
    UNIQUE (job_id, seq)
);

-- Nodes that run jobs, with the database's clock: a node whose heartbeat is
-- older than the lease is gone, and its running jobs are run again elsewhere.
CREATE TABLE herald_nodes (
    id           text        PRIMARY KEY,
    role         text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
