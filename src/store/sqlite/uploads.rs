//! Uploaded files (stored in chunks before their job exists) and checkpoints.

use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};

use super::SqliteStore;
use crate::domain::{JobId, Timestamp};
use crate::store::{StoreError, UploadStore};

/// Upload chunks and checkpoints: writes that answer nothing but success.
pub(super) enum UnitWrite {
    PutChunk { id: JobId, n: i64, data: Vec<u8> },
    DeleteUpload(JobId),
    PurgeOrphans(Timestamp),
    Checkpoint { id: JobId, checkpoint: String },
}

pub(super) async fn unit_write(
    tx: &mut Transaction<'static, Sqlite>,
    write: &UnitWrite,
) -> Result<(), StoreError> {
    match write {
        UnitWrite::PutChunk { id, n, data } => {
            sqlx::query(
                "INSERT INTO herald_upload_chunks (job_id, n, data, stored_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(id.to_string())
            .bind(*n)
            .bind(data.as_slice())
            .bind(Timestamp::now().0)
                .execute(&mut **tx)
                .await?;
        }
        UnitWrite::DeleteUpload(id) => {
            sqlx::query("DELETE FROM herald_upload_chunks WHERE job_id = ?1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        UnitWrite::PurgeOrphans(before) => {
            sqlx::query(
                "DELETE FROM herald_upload_chunks WHERE stored_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM herald_jobs j WHERE j.id = herald_upload_chunks.job_id)",
            )
            .bind(before.0)
            .execute(&mut **tx)
            .await?;
        }
        UnitWrite::Checkpoint { id, checkpoint } => {
            sqlx::query("UPDATE herald_jobs SET checkpoint = ?2 WHERE id = ?1")
                .bind(id.to_string())
                .bind(checkpoint.as_str())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl UploadStore for SqliteStore {
    async fn put_upload_chunk(&self, id: JobId, n: i64, data: &[u8]) -> Result<(), StoreError> {
        self.unit(UnitWrite::PutChunk {
            id,
            n,
            data: data.to_vec(),
        })
        .await
    }

    async fn upload_chunk(&self, id: JobId, n: i64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar(
                "SELECT data FROM herald_upload_chunks WHERE job_id = ?1 AND n = ?2",
            )
            .bind(id.to_string())
            .bind(n)
            .fetch_optional(&self.pools.reader)
            .await?,
        )
    }

    async fn delete_upload(&self, id: JobId) -> Result<(), StoreError> {
        self.unit(UnitWrite::DeleteUpload(id)).await
    }

    async fn purge_orphan_uploads(&self, before: Timestamp) -> Result<(), StoreError> {
        self.unit(UnitWrite::PurgeOrphans(before)).await
    }

    async fn set_checkpoint(&self, id: JobId, checkpoint: &str) -> Result<(), StoreError> {
        self.unit(UnitWrite::Checkpoint {
            id,
            checkpoint: checkpoint.to_owned(),
        })
        .await
    }

    async fn checkpoint(&self, id: JobId) -> Result<Option<String>, StoreError> {
        let cp: Option<Option<String>> =
            sqlx::query_scalar("SELECT checkpoint FROM herald_jobs WHERE id = ?1")
                .bind(id.to_string())
                .fetch_optional(&self.pools.reader)
                .await?;
        Ok(cp.flatten())
    }
}
