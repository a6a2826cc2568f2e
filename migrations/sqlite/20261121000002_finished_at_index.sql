-- Retention deletes terminal jobs by age, oldest first.
CREATE INDEX herald_jobs_finished_at ON herald_jobs (finished_at) WHERE finished_at IS NOT NULL;
