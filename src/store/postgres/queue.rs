//! The queue: claims from `herald_jobs` itself (see `queue.rs`).

use async_trait::async_trait;

use super::batch::{write_rows, TransitionRow};
use super::PgStore;
use crate::domain::Timestamp;
use crate::store::row::JobRow;
use crate::store::{Claim, QueueStore, StoreError};

/// The queue's head: the first `$1` queued jobs by `run_at` that no other
/// claim holds (the partial index of queued jobs, which holds nothing else).
pub(crate) const QUEUE_HEAD: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE status = 'queued' AND NOT remote ORDER BY run_at, id LIMIT $1 \
     FOR UPDATE SKIP LOCKED"
);

#[async_trait]
impl QueueStore for PgStore {
    /// One transaction on the `writes` pool (index lookups only): lock the
    /// queue's first `limit` jobs by `run_at` that no other node holds
    /// (`SKIP LOCKED`: nodes claiming at once take different jobs and never
    /// wait for each other), start those that are due in one batched
    /// statement, commit. Four round trips for the whole batch.
    async fn claim(&self, limit: usize) -> Result<Claim, StoreError> {
        let mut tx = self.pools.writes.begin().await?;
        // One row more than it may start: whether more wait (that row stays
        // locked, and skipped by other claims, until the commit).
        let rows: Vec<JobRow> = sqlx::query_as(QUEUE_HEAD)
            .bind(limit as i64 + 1)
            .fetch_all(&mut *tx)
            .await?;
        let plan = Claim::plan(rows, Timestamp::now(), limit)?;
        let writes: Vec<TransitionRow> = plan
            .starts
            .iter()
            .map(|(if_seq, a)| TransitionRow::new(&a.job, a.event.clone(), *if_seq))
            .collect();
        let claim = plan.claim();
        if claim.started.is_empty() {
            tx.rollback().await?;
            return Ok(claim);
        }
        let rows: Vec<&TransitionRow> = writes.iter().collect();
        let written = write_rows(&mut *tx, &self.node.id, &rows).await?;
        if written.len() != claim.started.len() {
            // The rows are locked: nothing can have moved them on.
            return Err(StoreError::Corrupt(format!(
                "a claim started {} of {} locked jobs",
                written.len(),
                claim.started.len()
            )));
        }
        tx.commit().await?;
        Ok(claim)
    }

    async fn queue_stats(&self) -> Result<(i64, Option<Timestamp>), StoreError> {
        let (n, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(created_at) FROM herald_jobs WHERE status = 'queued'",
        )
        .fetch_one(&self.pools.main)
        .await?;
        Ok((n, oldest.map(Timestamp)))
    }
}
