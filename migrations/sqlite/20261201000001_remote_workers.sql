-- Remote workers (kinds in HERALD_REMOTE_KINDS, run by processes outside
-- herald over the worker API). A remote job waits in the same table as every
-- job, but only a worker's claim takes it: the local claim reads
-- `herald_jobs_ready` (local jobs only), a worker's claim reads
-- `herald_jobs_ready_remote` by kind. While it runs, a remote job follows its
-- lease (`lease`, `lease_expires_at`), not a node's: the lease sweep reads
-- `herald_jobs_leased`. `worker` is the claimer's `worker_id`, kept after the
-- job ends (the snapshot shows it); `lease` is kept too after the holder's
-- own last report (so a repeated one is recognised) and cleared when herald
-- takes the job back (lease lost, timeout, a cancel that was not heard).
ALTER TABLE herald_jobs ADD COLUMN remote INTEGER NOT NULL DEFAULT 0;
ALTER TABLE herald_jobs ADD COLUMN worker TEXT;
ALTER TABLE herald_jobs ADD COLUMN lease TEXT;
ALTER TABLE herald_jobs ADD COLUMN lease_expires_at INTEGER;
DROP INDEX herald_jobs_ready;
CREATE INDEX herald_jobs_ready ON herald_jobs (run_at, id) WHERE status = 'queued' AND remote = 0;
CREATE INDEX herald_jobs_ready_remote ON herald_jobs (kind, run_at, id) WHERE status = 'queued' AND remote = 1;
CREATE INDEX herald_jobs_leased ON herald_jobs (lease_expires_at) WHERE status = 'running' AND remote = 1;
