//! The feed: every job's events in id order.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::row::corrupt;
use crate::store::{
    FeedCursor, FeedEvent, FeedFilter, FeedRead, FeedStore, StoreError, StoredEvent,
};

/// The events after a cursor (`?1`), at most `?5` (a read's window), each
/// with its data when its job passes the filter: tenant `?2`, kind `?3`,
/// jobs `?4` (a JSON array of ids), the last two when not null.
///
/// It starts from the events after the cursor (a range of the rowid, already
/// in feed order) and looks each event's job up by id. The LEFT JOIN fixes
/// that order: joined the other way round, SQLite started from all of the
/// tenant's jobs, read each one's events and sorted them, about 15 ms a read
/// at 21,000 stored jobs and growing with the history. An event the filter
/// leaves out still comes back, without its data, so that the read knows how
/// far it got (see [`FeedRead`]).
pub(crate) const FEED_AFTER: &str = "SELECT e.id, j.id IS NOT NULL, e.job_id, e.seq, e.event, \
       CASE WHEN j.id IS NOT NULL THEN e.data END, e.at \
     FROM herald_job_events e LEFT JOIN herald_jobs j ON j.id = e.job_id AND j.tenant = ?2 \
       AND (?3 IS NULL OR j.kind = ?3) \
       AND (?4 IS NULL OR e.job_id IN (SELECT value FROM json_each(?4))) \
     WHERE e.id > ?1 ORDER BY e.id LIMIT +?5";

/// The newest event's id: the end of the rowid's b-tree, one lookup.
pub(crate) const FEED_HEAD: &str = "SELECT coalesce(max(id), 0) FROM herald_job_events";

type FeedRow = (i64, bool, String, i64, String, Option<String>, i64);

#[async_trait]
impl FeedStore for SqliteStore {
    /// One writer commits events in id order, and a reader sees whole
    /// commits, so the event id alone is a lossless cursor here. A feed that
    /// has caught up reads the writer's tail (see `tail`), one behind it the
    /// file.
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<FeedRead, StoreError> {
        if let Some(read) = self.tail.read(filter, after, limit) {
            return Ok(read);
        }
        self.feed_from_file(filter, after, limit).await
    }

    async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        if let Some(head) = self.tail.head() {
            return Ok(head);
        }
        let id: i64 = sqlx::query_scalar(FEED_HEAD)
            .fetch_one(&self.pools.reader)
            .await?;
        Ok(FeedCursor { tx: 0, id })
    }
}

impl SqliteStore {
    /// [`FeedStore::feed_after`] from the file.
    pub(crate) async fn feed_from_file(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<FeedRead, StoreError> {
        let jobs = filter.jobs.as_ref().map(|ids| {
            serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())
                .expect("ids serialize")
        });
        let rows: Vec<FeedRow> = sqlx::query_as(FEED_AFTER)
            .bind(after.id)
            .bind(&filter.tenant)
            .bind(filter.kind.as_deref())
            .bind(jobs)
            .bind(FeedRead::window(limit))
            .fetch_all(&self.pools.reader)
            .await?;
        let examined = rows
            .into_iter()
            .map(|(id, kept, job_id, seq, event, data, at)| {
                let cursor = FeedCursor { tx: 0, id };
                let (true, Some(data)) = (kept, data) else {
                    return Ok((cursor, None));
                };
                Ok((
                    cursor,
                    Some(FeedEvent {
                        cursor,
                        job_id: job_id.parse().map_err(|e| corrupt("job id", e))?,
                        event: StoredEvent::try_from((seq, event, data, at))?,
                    }),
                ))
            });
        FeedRead::from_examined(after, limit, examined)
    }
}
