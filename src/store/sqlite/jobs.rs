//! Jobs and their events: reads on the reader pool, writes through the writer.

use async_trait::async_trait;
use uuid::Uuid;

use super::writer::WriteOp;
use super::SqliteStore;
use crate::domain::{EventSeq, JobId, JobRecord, Submission, Timestamp, Transition};
use crate::store::row::{corrupt, EventRow, JobRow};
use crate::store::{
    Applied, ApplyError, CancelOutcome, JobStore, ListQuery, StoreError, StoredEvent, Submitted,
};

// The reads below are the ones requests and streams make; each starts from
// an index on what it asks for, whatever the size of the history
// (`plans.rs` checks their query plans).

/// One job by its id (the primary key).
pub(crate) const JOB_BY_ID: &str =
    concat!("SELECT ", job_columns!(), " FROM herald_jobs WHERE id = ?1");

/// A page of a tenant's jobs, newest first, before the job `?2` (the max
/// uuid for the first page), at most `?3`; one text per filter, so that each
/// reads the index whose prefix is that filter (an `(?4 IS NULL OR status =
/// ?4)` form lets SQLite use only the tenant's index, and a rare status then
/// walks the tenant's whole history).
pub(crate) const LIST_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = ?1 AND id < ?2 ORDER BY id DESC LIMIT +?3"
);
/// [`LIST_JOBS`] in status `?4`.
pub(crate) const LIST_JOBS_BY_STATUS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = ?1 AND status = ?4 AND id < ?2 ORDER BY id DESC LIMIT +?3"
);
/// [`LIST_JOBS`] of kind `?4`.
pub(crate) const LIST_JOBS_BY_KIND: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = ?1 AND kind = ?4 AND id < ?2 ORDER BY id DESC LIMIT +?3"
);
/// [`LIST_JOBS`] in status `?4` and of kind `?5`: the tenant's jobs in that
/// status, newest first, keeping those of the kind. No index holds both: one
/// would move its entry at every status change of every job, for this one
/// filter (see the migration `fewer_status_indexes`). Named, because with
/// statistics SQLite may take (tenant, kind, id) instead, whose rows of the
/// kind in other statuses (mostly finished ones) can be many more.
pub(crate) const LIST_JOBS_BY_STATUS_KIND: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs INDEXED BY herald_jobs_tenant_status_id \
     WHERE tenant = ?1 AND status = ?4 AND kind = ?5 AND id < ?2 \
     ORDER BY id DESC LIMIT +?3"
);

/// The list query for `q`'s filters: bind the tenant, the cursor and the
/// limit, then the status and the kind when `q` has them.
pub(crate) fn list_sql(q: &ListQuery) -> &'static str {
    match (q.status.is_some(), q.kind.is_some()) {
        (false, false) => LIST_JOBS,
        (true, false) => LIST_JOBS_BY_STATUS,
        (false, true) => LIST_JOBS_BY_KIND,
        (true, true) => LIST_JOBS_BY_STATUS_KIND,
    }
}

/// A job's events after seq `?2`, at most `?3` (the (job_id, seq) key).
pub(crate) const EVENTS_AFTER: &str = "SELECT seq, event, data, at FROM herald_job_events \
     WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT +?3";

/// A job's items from index `?2`, at most `?3`. The partial index on item
/// events keeps the offset's skipping to this job's items, without reading
/// their rows; named, because with statistics (`ANALYZE`) SQLite took the
/// (job_id, seq) key instead and read every event of the job up to the offset.
pub(crate) const ITEMS: &str = "SELECT data FROM herald_job_events \
     INDEXED BY herald_job_events_items \
     WHERE job_id = ?1 AND event = 'item' ORDER BY seq LIMIT +?3 OFFSET +?2";

/// Which of the jobs `?1` (a JSON array of ids) have a cancel request
/// stored: one statement, each id looked up by key.
pub(crate) const CANCEL_REQUESTED_AMONG: &str = "SELECT id FROM herald_jobs \
     WHERE id IN (SELECT value FROM json_each(?1)) AND cancel_requested \
       AND status IN ('queued', 'running')";

#[async_trait]
impl JobStore for SqliteStore {
    fn starts_on_submit(&self) -> bool {
        true
    }

    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError> {
        let submitted = self
            .write(WriteOp::Submit {
                tenant: tenant.to_owned(),
                sub: sub.clone(),
            })
            .await?
            .submitted()?;
        Ok(submitted)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(JOB_BY_ID)
            .bind(id.to_string())
            .fetch_optional(&self.pools.reader)
            .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        let mut query = sqlx::query_as(list_sql(q))
            .bind(&q.tenant)
            .bind(q.before.unwrap_or(JobId(Uuid::max())).to_string())
            .bind(q.limit);
        if let Some(status) = q.status {
            query = query.bind(status.as_str());
        }
        if let Some(kind) = &q.kind {
            query = query.bind(kind);
        }
        let rows: Vec<JobRow> = query.fetch_all(&self.pools.reader).await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let job = self
            .write(WriteOp::Apply { id, t: t.clone() })
            .await?
            .applied()?;
        Ok(job.job)
    }

    async fn apply_known(&self, known: &JobRecord, t: &Transition) -> Result<Applied, ApplyError> {
        let mut applied = self.apply_known_all(known, std::slice::from_ref(t)).await?;
        applied
            .pop()
            .ok_or_else(|| StoreError::WriteFailed("a transition wrote no event".to_owned()).into())
    }

    async fn apply_known_all(
        &self,
        known: &JobRecord,
        ts: &[Transition],
    ) -> Result<Vec<Applied>, ApplyError> {
        self.write(WriteOp::ApplyKnown {
            known: Box::new(known.clone()),
            ts: ts.to_vec(),
        })
        .await?
        .applied_all()
    }

    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let outcome = self
            .write(WriteOp::Cancel {
                id,
                reason: reason.to_owned(),
            })
            .await?
            .cancel()?;
        Ok(outcome)
    }

    async fn events_after(
        &self,
        id: JobId,
        after: EventSeq,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(EVENTS_AFTER)
            .bind(id.to_string())
            .bind(after.0)
            .bind(limit)
            .fetch_all(&self.pools.reader)
            .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn items(&self, id: JobId, offset: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(ITEMS)
            .bind(id.to_string())
            .bind(offset)
            .bind(limit)
            .fetch_all(&self.pools.reader)
            .await?)
    }

    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let ids = serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())
            .expect("ids serialize");
        let found: Vec<String> = sqlx::query_scalar(CANCEL_REQUESTED_AMONG)
            .bind(ids)
            .fetch_all(&self.pools.reader)
            .await?;
        found
            .iter()
            .map(|id| id.parse().map_err(|e| corrupt("job id", e)))
            .collect()
    }

    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError> {
        self.write(WriteOp::Purge { before, limit }).await?.purged()
    }
}
