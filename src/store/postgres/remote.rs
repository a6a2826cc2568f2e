//! Remote workers on PostgreSQL: a worker's claim locks each kind's queue
//! head with `FOR UPDATE SKIP LOCKED` (workers and nodes claiming at once
//! take different jobs and never wait for each other) and starts what it
//! takes in one transaction; a lease op locks the job's row, decides on it
//! and writes, so a report never lands on an attempt that is not its own.

use async_trait::async_trait;
use uuid::Uuid;

use super::batch::{write_rows, TransitionRow};
use super::transitions::{lock_job, write_transition};
use super::PgStore;
use crate::domain::{JobId, JobRecord, LeaseOp, LeaseTerms, Timestamp};
use crate::store::remote::{start_remote, LeaseWrites};
use crate::store::row::JobRow;
use crate::store::{Applied, LeaseError, Leased, RemoteClaim, RemoteStore, StoreError};

/// A remote kind's queue head: its first `$3` queued jobs due at `$2`, by
/// `run_at`, that no other claim holds (the partial index of queued remote
/// jobs). `herald_jobs.id`, not `id`: that name is first the selected
/// `id::text`, and ordering by it sorted what the index found.
pub(crate) const REMOTE_HEAD: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE status = 'queued' AND remote AND kind = $1 AND run_at <= $2 \
     ORDER BY run_at, herald_jobs.id LIMIT $3 FOR UPDATE SKIP LOCKED"
);

/// [`REMOTE_HEAD`] for a worker limited to the tenants `$4`. The tenant is
/// compared as `tenant || ''`, which no index holds: compared as itself, the
/// planner took a tenant's (tenant, kind, id) index when it expected few of
/// its jobs and sorted all of them, the tenant's whole history of that kind.
pub(crate) const REMOTE_HEAD_OF_TENANTS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE status = 'queued' AND remote AND kind = $1 AND run_at <= $2 \
       AND (tenant || '') = ANY($4) \
     ORDER BY run_at, herald_jobs.id LIMIT $3 FOR UPDATE SKIP LOCKED"
);

/// Running remote jobs over their lease or their timeout at `$1` (the
/// partial index of running remote jobs).
pub(crate) const LEASES_OVER: &str = "SELECT id FROM herald_jobs \
     WHERE status = 'running' AND remote AND (lease_expires_at <= $1 \
       OR (timeout_secs IS NOT NULL AND run_at + timeout_secs * 1000000 <= $1)) \
     LIMIT $2";

#[async_trait]
impl RemoteStore for PgStore {
    async fn claim_remote(&self, c: &RemoteClaim) -> Result<Vec<Applied>, StoreError> {
        let now = Timestamp::now();
        let mut tx = self.pools.writes.begin().await?;
        let mut head: Vec<JobRecord> = Vec::new();
        for kind in &c.kinds {
            let sql = if c.tenants.is_some() {
                REMOTE_HEAD_OF_TENANTS
            } else {
                REMOTE_HEAD
            };
            let rows: Vec<JobRow> = sqlx::query_as(sql)
                .bind(kind)
                .bind(now.0)
                .bind(c.limit as i64)
                .bind(c.tenants.as_deref())
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                head.push(JobRecord::try_from(row)?);
            }
        }
        let starts = start_remote(head, c, now)?;
        if starts.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let writes: Vec<TransitionRow> = starts
            .iter()
            .map(|(if_seq, a)| TransitionRow::new(&a.job, a.event.clone(), *if_seq))
            .collect();
        let rows: Vec<&TransitionRow> = writes.iter().collect();
        let written = write_rows(&mut *tx, &self.node.id, &rows).await?;
        if written.len() != starts.len() {
            // The rows are locked: nothing can have moved them on.
            return Err(StoreError::Corrupt(format!(
                "a worker's claim started {} of {} locked jobs",
                written.len(),
                starts.len()
            )));
        }
        let started: Vec<Applied> = starts.into_iter().map(|(_, a)| a).collect();
        let ids: Vec<Uuid> = started.iter().map(|a| a.job.id.0).collect();
        let leases: Vec<&str> = started
            .iter()
            .map(|a| a.job.lease.as_deref().unwrap_or_default())
            .collect();
        let expires: Vec<i64> = started
            .iter()
            .map(|a| a.job.lease_expires_at.map_or(0, |t| t.0))
            .collect();
        sqlx::query(
            "UPDATE herald_jobs j SET worker = $2, lease = v.lease, lease_expires_at = v.expires \
             FROM unnest($1::uuid[], $3::text[], $4::int8[]) AS v(id, lease, expires) \
             WHERE j.id = ANY($1::uuid[]) AND j.id = v.id",
        )
        .bind(&ids)
        .bind(&c.worker)
        .bind(&leases)
        .bind(&expires)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(started)
    }

    async fn lease_op(
        &self,
        id: JobId,
        op: &LeaseOp,
        terms: &LeaseTerms,
    ) -> Result<Leased, LeaseError> {
        let mut tx = self.pools.main.begin().await?;
        let Some(job) = lock_job(&mut tx, id).await? else {
            tx.rollback().await?;
            return Err(LeaseError::NotFound);
        };
        let writes = match LeaseWrites::plan(job.clone(), op, Timestamp::now(), terms) {
            Ok(Some(writes)) => writes,
            Ok(None) => {
                tx.rollback().await?;
                return Ok(Leased {
                    job,
                    applied: Vec::new(),
                });
            }
            Err(e) => {
                // Ended explicitly: a dropped transaction holding a row lock
                // stays open on its pooled connection.
                tx.rollback().await?;
                return Err(e);
            }
        };
        for (step, ev) in &writes.steps {
            write_transition(&mut *tx, &self.node.id, step, ev).await?;
        }
        sqlx::query(
            "UPDATE herald_jobs SET worker = $2, lease = $3, lease_expires_at = $4, \
             checkpoint = coalesce($5, checkpoint) WHERE id = $1",
        )
        .bind(id.0)
        .bind(writes.job.worker.as_deref())
        .bind(writes.job.lease.as_deref())
        .bind(writes.job.lease_expires_at.map(|t| t.0))
        .bind(writes.checkpoint.as_deref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(writes.into_leased())
    }

    async fn leases_over(&self, now: Timestamp, limit: i64) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(LEASES_OVER)
            .bind(now.0)
            .bind(limit)
            .fetch_all(&self.pools.main)
            .await?;
        Ok(ids.into_iter().map(JobId).collect())
    }
}
