//! Uploaded files (stored in chunks before their job exists) and checkpoints.

use async_trait::async_trait;

use super::PgStore;
use crate::domain::{JobId, Timestamp};
use crate::store::{StoreError, UploadStore};

#[async_trait]
impl UploadStore for PgStore {
    async fn put_upload_chunk(&self, id: JobId, n: i64, data: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO herald_upload_chunks (job_id, n, data, stored_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.0)
        .bind(n)
        .bind(data)
        .bind(Timestamp::now().0)
        .execute(&self.pools.main)
        .await?;
        Ok(())
    }

    async fn upload_chunk(&self, id: JobId, n: i64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar(
                "SELECT data FROM herald_upload_chunks WHERE job_id = $1 AND n = $2",
            )
            .bind(id.0)
            .bind(n)
            .fetch_optional(&self.pools.main)
            .await?,
        )
    }

    async fn delete_upload(&self, id: JobId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM herald_upload_chunks WHERE job_id = $1")
            .bind(id.0)
            .execute(&self.pools.main)
            .await?;
        Ok(())
    }

    async fn purge_orphan_uploads(&self, before: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM herald_upload_chunks c WHERE c.stored_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM herald_jobs j WHERE j.id = c.job_id)",
        )
        .bind(before.0)
        .execute(&self.pools.main)
        .await?;
        Ok(())
    }

    async fn set_checkpoint(&self, id: JobId, checkpoint: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE herald_jobs SET checkpoint = $2 WHERE id = $1")
            .bind(id.0)
            .bind(checkpoint)
            .execute(&self.pools.main)
            .await?;
        Ok(())
    }

    async fn checkpoint(&self, id: JobId) -> Result<Option<String>, StoreError> {
        let cp: Option<Option<String>> =
            sqlx::query_scalar("SELECT checkpoint FROM herald_jobs WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pools.main)
                .await?;
        Ok(cp.flatten())
    }
}
