//! Jobs and their events: reads on the reader pool, writes through the writer.

use async_trait::async_trait;

use super::writer::WriteOp;
use super::SqliteStore;
use crate::domain::{EventSeq, JobId, JobRecord, Submission, Timestamp, Transition};
use crate::store::row::{EventRow, JobRow};
use crate::store::{
    Applied, ApplyError, CancelOutcome, JobStore, ListQuery, StoreError, StoredEvent, Submitted,
};

#[async_trait]
impl JobStore for SqliteStore {
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
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pools.reader)
        .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = ?1 \
             AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR kind = ?3) \
             AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
        ))
        .bind(&q.tenant)
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.kind.as_deref())
        .bind(q.before.map(|id| id.to_string()))
        .bind(q.limit)
        .fetch_all(&self.pools.reader)
        .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let job = self
            .write(WriteOp::Apply {
                id,
                t: t.clone(),
                known: None,
            })
            .await?
            .applied()?;
        Ok(job.job)
    }

    async fn apply_known(&self, known: &JobRecord, t: &Transition) -> Result<Applied, ApplyError> {
        let job = self
            .write(WriteOp::Apply {
                id: known.id,
                t: t.clone(),
                known: Some(Box::new(known.clone())),
            })
            .await?
            .applied()?;
        Ok(job)
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
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, event, data, at FROM herald_job_events WHERE job_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn items(&self, id: JobId, offset: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        // The partial index on item events keeps the offset's skipping to
        // this job's items.
        Ok(sqlx::query_scalar(
            "SELECT data FROM herald_job_events WHERE job_id = ?1 AND event = 'item' \
             ORDER BY seq LIMIT ?3 OFFSET ?2",
        )
        .bind(id.to_string())
        .bind(offset)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await?)
    }

    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            let requested: Option<bool> = sqlx::query_scalar(
                "SELECT cancel_requested FROM herald_jobs WHERE id = ?1 \
                 AND status IN ('queued', 'running')",
            )
            .bind(id.to_string())
            .fetch_optional(&self.pools.reader)
            .await?;
            if requested == Some(true) {
                found.push(*id);
            }
        }
        Ok(found)
    }

    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError> {
        self.write(WriteOp::Purge { before, limit }).await?.purged()
    }
}
