-- The job table is the queue: a worker claims due queued jobs straight from
-- herald_jobs (oldest `run_at` first, `FOR UPDATE SKIP LOCKED` so nodes take
-- different ones) and starts them in the same transaction, so a job is one
-- row with one write path. `run_at` is when a queued job may start: its
-- submission, or the end of a retry's backoff. The partial index holds only
-- queued jobs, so a claim starts from the queue's head whatever the history.
-- apalis's schema (`apalis.jobs`) is no longer used; it is left in place in
-- databases that have it.
ALTER TABLE herald_jobs ADD COLUMN run_at bigint NOT NULL DEFAULT 0;
UPDATE herald_jobs SET run_at = updated_at WHERE status = 'queued';
CREATE INDEX herald_jobs_ready ON herald_jobs (run_at, id) WHERE status = 'queued';
