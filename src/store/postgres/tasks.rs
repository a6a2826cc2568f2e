//! apalis's task rows (`apalis.jobs`) as herald sees them.

use async_trait::async_trait;
use uuid::Uuid;

use super::batch::Write;
use super::PgStore;
use crate::domain::{JobId, Timestamp};
use crate::store::{StoreError, TaskStore};

#[async_trait]
impl TaskStore for PgStore {
    async fn queued_without_task(
        &self,
        startup: bool,
        older_than: Timestamp,
        limit: i64,
    ) -> Result<Vec<JobId>, StoreError> {
        // A task is alive while it waits (Pending), or while a live node holds
        // it (apalis names its worker after the node). At start-up, tasks
        // held under this node's own id belong to a process that is gone.
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT h.id FROM herald_jobs h WHERE h.status = 'queued' AND h.updated_at <= $1 \
             AND NOT EXISTS (SELECT 1 FROM apalis.jobs t WHERE t.id = h.task_id \
               AND (t.status = 'Pending' OR (t.status IN ('Queued', 'Running') \
                 AND NOT ($3 AND t.lock_by = $4) \
                 AND t.lock_by IN (SELECT id FROM herald_nodes \
                   WHERE heartbeat_at > now() - make_interval(secs => $5))))) \
             ORDER BY h.id LIMIT $2",
        )
        .bind(older_than.0)
        .bind(limit)
        .bind(startup)
        .bind(&self.node.id)
        .bind(self.lease_secs())
        .fetch_all(&self.pools.main)
        .await?;
        Ok(ids.into_iter().map(JobId).collect())
    }

    async fn delete_task(&self, id: JobId) -> Result<(), StoreError> {
        self.writes
            .run(Write::DeleteTask(id.task_id().to_string()))
            .await?;
        Ok(())
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
