-- Fewer writes per job event. Each job's row is rewritten at every status
-- change and every event is a new row, so every index and constraint on
-- them is paid for many times per job (measured: about 11 WAL records per
-- transition, and a row lock on the job for every event's foreign-key check).
--
-- * The events' foreign key goes: events are only ever inserted in the same
--   statement that writes their job's row, and retention deletes a job's
--   events with it (see `PgStore::purge_finished`). Its check locked the job's
--   row once more for every event.
-- * The events' primary key becomes (job_id, seq), which was already unique
--   and is how events are read; the index on `id` alone served nothing (the
--   feed reads by (txid, id)).
-- * The unique index on `herald_jobs.task_id` goes: the task id is the job id
--   in another spelling, and nothing looks a job up by it.
-- * `herald_jobs` leaves a fifth of each page free, so an update that changes
--   no indexed column (a progress report) can stay on its page and skip the
--   indexes (a HOT update).
ALTER TABLE herald_job_events DROP CONSTRAINT herald_job_events_job_id_fkey;
ALTER TABLE herald_job_events
    DROP CONSTRAINT herald_job_events_pkey,
    DROP CONSTRAINT herald_job_events_job_id_seq_key,
    ADD CONSTRAINT herald_job_events_pkey PRIMARY KEY (job_id, seq);
ALTER TABLE herald_jobs DROP CONSTRAINT herald_jobs_task_id_key;
ALTER TABLE herald_jobs SET (fillfactor = 80);
