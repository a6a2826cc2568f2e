-- One index entry fewer moves at each status change, as on SQLite: a job
-- changes status on its way (queued → running → its outcome, or stored
-- running at once), and each change is a new row version with an entry in
-- every index of `herald_jobs` (the status is indexed, so it is never a HOT
-- update). A list filtered by status and kind now reads (tenant, status, id)
-- or (tenant, kind, id), whichever the planner finds narrower, and keeps the
-- rows that match the other filter.
DROP INDEX herald_jobs_tenant_status_kind_id;
