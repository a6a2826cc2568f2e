//! Node liveness and leases: heartbeats, leaving, and the recovery of jobs
//! whose node stopped (at start-up, or when its lease ran out).

use async_trait::async_trait;
use uuid::Uuid;

use super::transitions::{apply_in, lock_job};
use super::PgStore;
use crate::domain::{JobId, NewEvent};
use crate::store::{ApplyError, NodeStore, Recovered, StoreError};

impl PgStore {
    /// Recovers the running jobs `ids` (their node is gone, because `why`):
    /// the next attempt, or `failed` with `worker_lost` after the last.
    async fn recover(&self, ids: Vec<Uuid>, why: &str) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        for id in ids {
            let id = JobId(id);
            let mut tx = self.pools.main.begin().await?;
            // Re-checked under the row lock: another node may have got here first.
            let Some(job) = lock_job(&mut tx, id).await? else {
                tx.rollback().await?;
                continue;
            };
            let Some(t) = job.interrupted(why) else {
                tx.rollback().await?;
                continue;
            };
            match apply_in(&mut tx, &self.node.id, id, &t).await {
                Ok(job) => {
                    tx.commit().await?;
                    out.record(job, &t);
                }
                Err(ApplyError::Store(e)) => return Err(e),
                Err(_) => {
                    tx.rollback().await?;
                    continue;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl NodeStore for PgStore {
    /// Batched `herald_events` notifications, sent outside the events'
    /// transactions (see the module doc of `store::postgres`).
    async fn announce(&self, id: JobId) {
        self.notifier.committed(id).await;
    }

    async fn announce_event(&self, id: JobId, ev: &NewEvent) {
        self.notifier.committed_event(id, ev).await;
    }

    async fn announce_queued(&self) {
        self.notifier.queued().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pools.main).await?;
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO herald_nodes (id, role) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), role = EXCLUDED.role",
        )
        .bind(&self.node.id)
        .bind(self.node.role)
        .execute(&self.pools.main)
        .await?;
        Ok(())
    }

    async fn leave(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM herald_nodes WHERE id = $1")
            .bind(&self.node.id)
            .execute(&self.pools.main)
            .await?;
        Ok(())
    }

    /// At start-up: this node's own jobs (a restart under the same
    /// `HERALD_NODE_ID`) and those of nodes whose lease ran out.
    async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM herald_jobs WHERE status = 'running' AND NOT remote AND (node_id IS NULL OR node_id = $1 \
               OR node_id NOT IN (SELECT id FROM herald_nodes \
                 WHERE heartbeat_at > now() - make_interval(secs => $2))) ORDER BY id",
        )
        .bind(&self.node.id)
        .bind(self.lease_secs())
        .fetch_all(&self.pools.main)
        .await?;
        self.recover(ids, "the node running it stopped without finishing it")
            .await
    }

    async fn recover_expired(&self) -> Result<Recovered, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM herald_jobs WHERE status = 'running' AND NOT remote AND node_id IS DISTINCT FROM $1 \
               AND (node_id IS NULL OR node_id NOT IN (SELECT id FROM herald_nodes \
                 WHERE heartbeat_at > now() - make_interval(secs => $2))) ORDER BY id LIMIT 500",
        )
        .bind(&self.node.id)
        .bind(self.lease_secs())
        .fetch_all(&self.pools.main)
        .await?;
        if ids.is_empty() {
            return Ok(Recovered::default());
        }
        let why = format!(
            "the node running it stopped heart-beating for longer than the {} s lease (HERALD_WORKER_LEASE_SECS)",
            self.node.lease.as_secs()
        );
        self.recover(ids, &why).await
    }
}
