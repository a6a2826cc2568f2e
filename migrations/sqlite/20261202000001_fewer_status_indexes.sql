-- Fewer index entries move at each status change. A job changes status twice
-- on its way (queued → running → its outcome), and each change moved its
-- entry in every index that holds the status: three of them. Two go:
--
-- * (status, id): its readers were start-up recovery (running local jobs,
--   now from the partial index below, which holds only those), the queue's
--   figures (now from the two partial indexes of queued jobs) and the cancel
--   check of running jobs (by primary key).
-- * (tenant, status, kind, id): a list filtered by status and kind now reads
--   (tenant, status, id) and keeps the rows of that kind.
--
-- Measured with the shared harness (20,000 no-op jobs, 50 in flight): these
-- two were about 6% of a job's server CPU.
DROP INDEX herald_jobs_status_id;
DROP INDEX herald_jobs_tenant_status_kind_id;
CREATE INDEX herald_jobs_running_local ON herald_jobs (id) WHERE status = 'running' AND remote = 0;
