//! apalis's task rows (its `Jobs` table) as herald sees them.

use async_trait::async_trait;

use super::writer::WriteOp;
use super::SqliteStore;
use crate::domain::{JobId, Timestamp};
use crate::store::row::corrupt;
use crate::store::{StoreError, TaskStore};

#[async_trait]
impl TaskStore for SqliteStore {
    async fn queued_without_task(
        &self,
        startup: bool,
        older_than: Timestamp,
        limit: i64,
    ) -> Result<Vec<JobId>, StoreError> {
        // apalis's statuses: Pending (waiting), Queued (fetched by a worker),
        // Running, Done, Failed, Killed. At start-up only Pending is alive: the
        // worker that fetched or ran a task is gone.
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT h.id FROM herald_jobs h WHERE h.status = 'queued' AND h.updated_at <= ?1 \
             AND NOT EXISTS (SELECT 1 FROM Jobs t WHERE t.id = h.task_id \
               AND (t.status = 'Pending' OR (?3 = 0 AND t.status IN ('Queued', 'Running')))) \
             ORDER BY h.id LIMIT ?2",
        )
        .bind(older_than.0)
        .bind(limit)
        .bind(startup)
        .fetch_all(&self.pools.reader)
        .await?;
        ids.into_iter()
            .map(|(id,)| id.parse().map_err(|e| corrupt("job id", e)))
            .collect()
    }

    async fn delete_task(&self, id: JobId) -> Result<(), StoreError> {
        self.write(WriteOp::DeleteTask(id)).await?.done()
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
