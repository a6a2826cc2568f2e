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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::store::sqlite::{connect, migrate, SqliteStore};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let pools = connect(&url).await.expect("open the test file");
        migrate(&pools.writer).await.expect("migrate");
        (dir, SqliteStore::new(pools))
    }

    #[tokio::test]
    async fn a_submission_starts_its_job_only_while_no_due_job_waits() {
        let (_dir, store) = store().await;
        conformance::submission_starts_only_while_no_due_job_waits(&store).await;
    }

    #[tokio::test]
    async fn a_claim_says_whether_due_jobs_are_left() {
        let (_dir, store) = store().await;
        conformance::a_claim_says_whether_due_jobs_are_left(&store).await;
    }

    #[tokio::test]
    async fn last_reports_and_outcome_land_in_order() {
        let (_dir, store) = store().await;
        conformance::last_reports_and_outcome_land_in_order(&store).await;
    }

    /// The figures count queued local and remote jobs alike, from their two
    /// partial indexes, and nothing that is not queued.
    #[tokio::test]
    async fn the_queue_figures_count_local_and_remote_queued_jobs() {
        let (_dir, store) = store().await;
        let pools = store.pools().clone();
        assert_eq!(store.queue_stats().await.expect("stats"), (0, None));
        for (i, status, remote) in [
            (1, "succeeded", 0),
            (2, "queued", 1),
            (3, "running", 0),
            (4, "queued", 0),
            (5, "queued", 0),
        ] {
            sqlx::query(
                "INSERT INTO herald_jobs (id, task_id, kind, status, input, attempt, \
                   max_attempts, created_at, updated_at, last_seq, remote) \
                 VALUES (printf('%08x-0000-7000-8000-000000000000', ?1), printf('t%d', ?1), \
                   'demo', ?2, '{}', 1, 1, ?1 * 10, ?1 * 10, 1, ?3)",
            )
            .bind(i)
            .bind(status)
            .bind(remote)
            .execute(&pools.writer)
            .await
            .expect("insert a job");
        }
        assert_eq!(
            store.queue_stats().await.expect("stats"),
            (3, Some(Timestamp(20))),
            "two local and one remote queued job, the oldest the remote one"
        );
    }
}
