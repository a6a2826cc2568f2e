-- Job lists that start from what they ask for. `GET /v1/jobs` pages through
-- one tenant's jobs, newest first, optionally of one status, one kind, or
-- both (and the feed's `status` filter lists a status's jobs the same way).
-- With only (tenant, id), a filtered page walked the tenant's jobs from the
-- cursor down until it found a page of matches: a rare status or kind read
-- the tenant's whole history. Each filter now has an index whose prefix is
-- the filter and whose last column is the order, so a page reads its own
-- rows and no others. `kind` and `tenant` never change, so the kind index
-- costs one entry per new job; the status ones also move with each status
-- change (a few times per job).
--
-- (kind, id) goes: only the list read it, (tenant, kind, id) serves that
-- better, and with statistics the planner sometimes still chose it and
-- walked every tenant's jobs of the kind to fill one tenant's page.
CREATE INDEX herald_jobs_tenant_status_id ON herald_jobs (tenant, status, id);
CREATE INDEX herald_jobs_tenant_kind_id ON herald_jobs (tenant, kind, id);
CREATE INDEX herald_jobs_tenant_status_kind_id ON herald_jobs (tenant, status, kind, id);
DROP INDEX herald_jobs_kind_id;
