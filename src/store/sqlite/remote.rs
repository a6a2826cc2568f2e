//! Remote workers on SQLite: a worker's claim and the lease ops are writes
//! like any other, so they go through the writer and run inside its
//! transaction (one process owns the file: the read a lease op is decided on
//! cannot be overtaken before its write).

use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};

use super::writer::WriteOp;
use super::writes::{fetch_job, write_starts, write_steps_in};
use super::SqliteStore;
use crate::domain::{JobId, JobRecord, LeaseOp, LeaseTerms, Timestamp};
use crate::store::remote::{start_remote, LeaseWrites};
use crate::store::row::{corrupt, JobRow};
use crate::store::{Applied, LeaseError, Leased, RemoteClaim, RemoteStore, StoreError};

/// A remote kind's queue head: its first `?3` queued jobs that are due at
/// `?2`, by `run_at`, from the partial index of queued remote jobs.
pub(crate) const REMOTE_HEAD: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs INDEXED BY herald_jobs_ready_remote \
     WHERE status = 'queued' AND remote = 1 AND kind = ?1 AND run_at <= ?2 \
     ORDER BY run_at, id LIMIT +?3"
);

/// [`REMOTE_HEAD`] for a worker limited to some tenants (`?4`, a JSON array).
pub(crate) const REMOTE_HEAD_OF_TENANTS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs INDEXED BY herald_jobs_ready_remote \
     WHERE status = 'queued' AND remote = 1 AND kind = ?1 AND run_at <= ?2 \
       AND tenant IN (SELECT value FROM json_each(?4)) \
     ORDER BY run_at, id LIMIT +?3"
);

/// Running remote jobs over their lease or their timeout at `?1`, from the
/// partial index of running remote jobs.
pub(crate) const LEASES_OVER: &str = "SELECT id FROM herald_jobs INDEXED BY herald_jobs_leased \
     WHERE status = 'running' AND remote = 1 AND (lease_expires_at <= ?1 \
       OR (timeout_secs IS NOT NULL AND run_at + timeout_secs * 1000000 <= ?1)) \
     LIMIT +?2";

/// A lease op's row write besides its events: the lease and the checkpoint.
const WRITE_LEASE: &str = "UPDATE herald_jobs SET worker = ?2, lease = ?3, lease_expires_at = ?4, \
     checkpoint = coalesce(?5, checkpoint) WHERE id = ?1";

/// A worker's claim: each kind's queue head, then one write of the jobs it
/// starts, their leases with them (under the claim's own savepoint).
pub(super) async fn claim_remote_in(
    tx: &mut Transaction<'static, Sqlite>,
    c: &RemoteClaim,
) -> Result<Vec<Applied>, StoreError> {
    let now = Timestamp::now();
    let tenants = c
        .tenants
        .as_ref()
        .map(|t| serde_json::to_string(t).expect("names serialize"));
    let mut head: Vec<JobRecord> = Vec::new();
    for kind in &c.kinds {
        let sql = if tenants.is_some() {
            REMOTE_HEAD_OF_TENANTS
        } else {
            REMOTE_HEAD
        };
        let rows: Vec<JobRow> = sqlx::query_as(sql)
            .bind(kind)
            .bind(now.0)
            .bind(c.limit as i64)
            .bind(tenants.as_deref())
            .fetch_all(&mut **tx)
            .await?;
        for row in rows {
            head.push(JobRecord::try_from(row)?);
        }
    }
    let started: Vec<Applied> = start_remote(head, c, now)?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    if started.is_empty() {
        return Ok(started);
    }
    let written = write_starts(tx, &started).await?;
    if written.len() != started.len() {
        return Err(StoreError::Corrupt(format!(
            "a worker's claim started {} of {} jobs it read",
            written.len(),
            started.len()
        )));
    }
    Ok(started)
}

async fn write_lease(
    tx: &mut Transaction<'static, Sqlite>,
    job: &JobRecord,
    checkpoint: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(WRITE_LEASE)
        .bind(job.id.to_string())
        .bind(job.worker.as_deref())
        .bind(job.lease.as_deref())
        .bind(job.lease_expires_at.map(|t| t.0))
        .bind(checkpoint)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A lease op: the read it is decided on, then the lease (and checkpoint),
/// then the events. No savepoint: each write is one statement, and should
/// the events' write fail after the lease's, the op has only extended a
/// lease that was the worker's (its report is answered with the error, and
/// a retry finds the job as it was).
pub(super) async fn lease_op_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
    op: &LeaseOp,
    terms: &LeaseTerms,
) -> Result<Leased, LeaseError> {
    let job = fetch_job(tx, id).await?.ok_or(LeaseError::NotFound)?;
    let Some(writes) = LeaseWrites::plan(job.clone(), op, Timestamp::now(), terms)? else {
        return Ok(Leased {
            job,
            applied: Vec::new(),
        });
    };
    write_lease(tx, &writes.job, writes.checkpoint.as_deref()).await?;
    if !writes.steps.is_empty() {
        write_steps_in(tx, &writes.steps).await?;
    }
    Ok(writes.into_leased())
}

#[async_trait]
impl RemoteStore for SqliteStore {
    async fn claim_remote(&self, c: &RemoteClaim) -> Result<Vec<Applied>, StoreError> {
        self.write(WriteOp::ClaimRemote(c.clone()))
            .await?
            .claimed_remote()
    }

    async fn lease_op(
        &self,
        id: JobId,
        op: &LeaseOp,
        terms: &LeaseTerms,
    ) -> Result<Leased, LeaseError> {
        self.write(WriteOp::Lease {
            id,
            op: op.clone(),
            terms: *terms,
        })
        .await?
        .leased()
    }

    async fn leases_over(&self, now: Timestamp, limit: i64) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(LEASES_OVER)
            .bind(now.0)
            .bind(limit)
            .fetch_all(&self.pools.reader)
            .await?;
        ids.iter()
            .map(|id| id.parse().map_err(|e| corrupt("job id", e)))
            .collect()
    }
}
