//! The queue: claims from `herald_jobs` itself (see `queue.rs`).

use async_trait::async_trait;

use super::writer::WriteOp;
use super::SqliteStore;
use crate::domain::Timestamp;
use crate::store::{Claim, QueueStore, StoreError};

#[async_trait]
impl QueueStore for SqliteStore {
    /// A write like any other (it starts jobs), so it goes through the
    /// writer and commits with the writes around it; one process owns the
    /// file, so nobody else can take the same job.
    async fn claim(&self, limit: usize) -> Result<Claim, StoreError> {
        self.write(WriteOp::Claim { limit }).await?.claimed()
    }

    async fn queue_stats(&self) -> Result<(i64, Option<Timestamp>), StoreError> {
        let (n, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(created_at) FROM herald_jobs WHERE status = 'queued'",
        )
        .fetch_one(&self.pools.reader)
        .await?;
        Ok((n, oldest.map(Timestamp)))
    }
}
