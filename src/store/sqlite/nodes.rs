//! Readiness, and start-up recovery of the jobs a stopped process left
//! running (one process runs everything, so there are no leases to keep).

use async_trait::async_trait;

use super::writes::{apply_in, fetch_job};
use super::SqliteStore;
use crate::domain::JobId;
use crate::store::row::corrupt;
use crate::store::{ApplyError, NodeStore, Recovered, StoreError};

/// The local jobs a stopped herald left running, from the partial index that
/// holds only those.
pub(crate) const RUNNING_LOCAL: &str =
    "SELECT id FROM herald_jobs WHERE status = 'running' AND remote = 0 ORDER BY id";

#[async_trait]
impl NodeStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pools.reader).await?;
        Ok(())
    }

    async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        let ids: Vec<(String,)> = sqlx::query_as(RUNNING_LOCAL)
            .fetch_all(&self.pools.writer)
            .await?;
        for (id,) in ids {
            let id: JobId = id.parse().map_err(|e| corrupt("job id", e))?;
            let mut tx = self.write_tx().await?;
            let Some(job) = fetch_job(&mut tx, id).await? else {
                continue;
            };
            let Some(t) = job.interrupted("the process running it stopped without finishing it")
            else {
                continue;
            };
            match apply_in(&mut tx, id, &t).await {
                Ok(applied) => out.record(applied.job, &t),
                Err(ApplyError::Store(e)) => return Err(e),
                Err(_) => continue,
            }
            tx.commit().await?;
        }
        Ok(out)
    }
}
