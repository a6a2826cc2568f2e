//! Jobs and their events.

use async_trait::async_trait;
use uuid::Uuid;

use super::batch::NewJob;
use super::transitions::{lock_job, write_transition};
use super::PgStore;
use crate::domain::{
    CancelDecision, EventSeq, JobId, JobRecord, Submission, Timestamp, Transition,
};
use crate::store::row::{EventRow, JobRow};
use crate::store::{
    Applied, ApplyError, CancelOutcome, JobStore, ListQuery, StoreError, StoredEvent, Submitted,
};

#[async_trait]
impl JobStore for PgStore {
    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError> {
        let job = sub.new_job(tenant, Timestamp::now());
        let first = job.created_event();
        // The job and its first event (group-committed with other new jobs),
        // or nothing at all when the idempotency key is taken (then the
        // earlier job answers).
        let inserted = self.submits.run(NewJob::new(&job, first)).await?;
        if inserted {
            return Ok(Submitted::Created(job));
        }
        let key = sub.idempotency_key.as_deref().ok_or_else(|| {
            StoreError::WriteFailed("the job insert wrote nothing without a conflict".to_owned())
        })?;
        let row: JobRow = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = $1 AND idempotency_key = $2"
        ))
        .bind(tenant)
        .bind(key)
        .fetch_one(&self.pools.main)
        .await?;
        Ok(sub.resubmitted(JobRecord::try_from(row)?))
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = self.reads.run(id).await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR kind = $3) \
             AND ($4::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(&q.tenant)
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.kind.as_deref())
        .bind(q.before.map(|id| id.0))
        .bind(q.limit)
        .fetch_all(&self.pools.main)
        .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let job = self.apply_optimistic(id, t).await?;
        Ok(job)
    }

    async fn apply_known(&self, known: &JobRecord, t: &Transition) -> Result<Applied, ApplyError> {
        self.apply_known_then(known, t).await
    }

    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.pools.main.begin().await?;
        let Some(job) = lock_job(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(CancelOutcome::NotFound);
        };
        let outcome = match job.cancel(reason, Timestamp::now()) {
            CancelDecision::Terminal => {
                // Ended explicitly: a dropped transaction that holds a row lock
                // stays open on its pooled connection, and an open transaction
                // holds the feed back (see `feed_after`).
                tx.rollback().await?;
                return Ok(CancelOutcome::Terminal(job));
            }
            CancelDecision::CancelNow(next, ev) => {
                write_transition(&mut *tx, &self.node.id, &next, &ev).await?;
                tx.commit().await?;
                return Ok(CancelOutcome::CancelledNow(next));
            }
            CancelDecision::Request(requested) => {
                // The node running the job hears the notify and fires its token.
                sqlx::query(
                    "UPDATE herald_jobs SET cancel_requested = true, updated_at = $2 WHERE id = $1",
                )
                .bind(id.0)
                .bind(Timestamp::now().0)
                .execute(&mut *tx)
                .await?;
                sqlx::query("SELECT pg_notify('herald_cancel', $1)")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Requested(requested)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn events_after(
        &self,
        id: JobId,
        after: EventSeq,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, event, data, at FROM herald_job_events WHERE job_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id.0)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pools.main)
        .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn items(&self, id: JobId, offset: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        // The partial index on item events keeps the offset's skipping to
        // this job's items.
        Ok(sqlx::query_scalar(
            "SELECT data FROM herald_job_events WHERE job_id = $1 AND event = 'item' \
             ORDER BY seq LIMIT $3 OFFSET $2",
        )
        .bind(id.0)
        .bind(offset)
        .bind(limit)
        .fetch_all(&self.pools.main)
        .await?)
    }

    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let found: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM herald_jobs WHERE id = ANY($1) AND cancel_requested \
             AND status IN ('queued', 'running')",
        )
        .bind(&ids)
        .fetch_all(&self.pools.main)
        .await?;
        Ok(found.into_iter().map(JobId).collect())
    }

    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError> {
        // SKIP LOCKED: two nodes sweeping at once take different rows.
        let mut tx = self.pools.main.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM herald_jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
             AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(before.0)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        sqlx::query("DELETE FROM herald_job_events WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM herald_upload_chunks WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM herald_jobs WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }
}
