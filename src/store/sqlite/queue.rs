//! The queue: claims from `herald_jobs` itself (see `queue.rs`).

use async_trait::async_trait;

use super::writer::WriteOp;
use super::SqliteStore;
use crate::domain::Timestamp;
use crate::store::{Claim, QueueStore, StoreError};

/// How many jobs are queued and the oldest one's creation, for local and for
/// remote ones (a row each), from their partial indexes, which hold queued
/// jobs only: the figure costs the queue's length, not the history's.
pub(crate) const QUEUE_STATS: &str = "SELECT count(*), min(created_at) FROM herald_jobs \
       WHERE status = 'queued' AND remote = 0 \
     UNION ALL \
     SELECT count(*), min(created_at) FROM herald_jobs WHERE status = 'queued' AND remote = 1";

#[async_trait]
impl QueueStore for SqliteStore {
    /// A write like any other (it starts jobs), so it goes through the
    /// writer and commits with the writes around it; one process owns the
    /// file, so nobody else can take the same job.
    async fn claim(&self, limit: usize) -> Result<Claim, StoreError> {
        self.write(WriteOp::Claim { limit }).await?.claimed()
    }

    async fn queue_stats(&self) -> Result<(i64, Option<Timestamp>), StoreError> {
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(QUEUE_STATS)
            .fetch_all(&self.pools.reader)
            .await?;
        let n = rows.iter().map(|(n, _)| n).sum();
        let oldest = rows.iter().filter_map(|(_, at)| *at).min();
        Ok((n, oldest.map(Timestamp)))
    }
}
