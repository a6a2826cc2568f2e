-- Items: a job's output, one piece at a time. Each item is an `item` event in
-- the job's log (the log is the one source of truth); the job row counts
-- them, and a partial index lets `GET /v1/jobs/{id}/items` page through a
-- job's items without reading its other events.
ALTER TABLE herald_jobs ADD COLUMN items_count bigint NOT NULL DEFAULT 0;
CREATE INDEX herald_job_events_items ON herald_job_events (job_id, seq) WHERE event = 'item';
