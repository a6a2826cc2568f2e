-- The multiplexed feed's cursor (see `PgStore::feed_after`): the id of the
-- transaction that appended each event. Events are read in (txid, id) order,
-- and only below the oldest transaction still running, so an event whose
-- commit comes late can never land behind a cursor already handed out.
ALTER TABLE herald_job_events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX herald_job_events_feed ON herald_job_events (txid, id);
