-- The queue's claim reads `herald_jobs_ready` (queued jobs by run_at). With
-- `herald_jobs_status_id` beside it, the planner took (status = 'queued')
-- from that index and sorted what it found, whenever it expected few queued
-- jobs. Nothing else reads (status, id) any more: job lists use the
-- (tenant, status, id) index, recovery the running jobs' partial index.
DROP INDEX IF EXISTS herald_jobs_status_id;
