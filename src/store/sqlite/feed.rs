//! The feed: every job's events in id order.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::row::corrupt;
use crate::store::{FeedCursor, FeedEvent, FeedFilter, FeedStore, StoreError, StoredEvent};

#[async_trait]
impl FeedStore for SqliteStore {
    /// One writer commits events in id order, and a reader sees whole
    /// commits, so the event id alone is a lossless cursor here.
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        let jobs = filter.jobs.as_ref().map(|ids| {
            serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())
                .expect("ids serialize")
        });
        let rows: Vec<(i64, String, i64, String, String, i64)> = sqlx::query_as(
            "SELECT e.id, e.job_id, e.seq, e.event, e.data, e.at FROM herald_job_events e \
             JOIN herald_jobs j ON j.id = e.job_id \
             WHERE e.id > ?1 AND j.tenant = ?2 AND (?3 IS NULL OR j.kind = ?3) \
             AND (?4 IS NULL OR e.job_id IN (SELECT value FROM json_each(?4))) \
             ORDER BY e.id LIMIT ?5",
        )
        .bind(after.id)
        .bind(&filter.tenant)
        .bind(filter.kind.as_deref())
        .bind(jobs)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await?;
        rows.into_iter()
            .map(|(id, job_id, seq, event, data, at)| {
                Ok(FeedEvent {
                    cursor: FeedCursor { tx: 0, id },
                    job_id: job_id.parse().map_err(|e| corrupt("job id", e))?,
                    event: StoredEvent::try_from((seq, event, data, at))?,
                })
            })
            .collect()
    }

    async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        let id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM herald_job_events")
            .fetch_one(&self.pools.reader)
            .await?;
        Ok(FeedCursor { tx: 0, id })
    }
}
