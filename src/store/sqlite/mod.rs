//! The SQLite store: one file, WAL journal.
//!
//! Durability: `synchronous=NORMAL` in WAL mode. A committed transaction survives
//! a killed process (the WAL is written before commit returns); only an OS crash or
//! power loss can take the last few commits, which DESIGN.md accepts. FULL would
//! cost an fsync per commit (~1,700 commits/s here instead of ~48,000). apalis's
//! own `setup()` sets `synchronous=OFF` on the connection it uses, so we never call
//! it: we run apalis's migrations ourselves on connections that keep NORMAL.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::row::{corrupt, to_json, EventRow, JobRow};
use super::{
    ApplyError, CancelOutcome, FeedCursor, FeedEvent, FeedFilter, FeedStore, JobStore, ListQuery,
    NodeStore, Recovered, StoreError, StoredEvent, Submitted, TaskStore, UploadStore,
};
use crate::domain::{
    CancelDecision, EventSeq, JobError, JobId, JobRecord, JobStatus, NewEvent, Submission,
    Timestamp, Transition,
};

/// The pools over one database file.
///
/// SQLite has one write lock. Several connections that contend for it wait in
/// SQLite's busy handler, which sleeps in growing steps (up to 100 ms): under
/// load that turned into 100+ ms stalls and 160 jobs/s. So all of herald's
/// writes go through `writer`, a single connection driven by one task (group
/// commit, below). apalis gets `queue`, its own: at shutdown it can park a
/// fetch that holds a pool permit without polling it again, which on a shared
/// one-connection pool starved herald's writer. Reads run on `reader`
/// connections in parallel (WAL lets them see the last commit during a write).
#[derive(Clone, Debug)]
pub struct Pools {
    pub writer: SqlitePool,
    pub queue: SqlitePool,
    pub reader: SqlitePool,
}

/// Opens (creating if missing) the database file with herald's settings.
pub async fn connect(url: &str) -> Result<Pools, StoreError> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // Another process on the same file (a second herald by mistake, a
        // backup tool) can still hold the lock for a moment.
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts.clone())
        .await?;
    let queue = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(opts)
        .await?;
    Ok(Pools {
        writer,
        queue,
        reader,
    })
}

/// Runs herald's migrations (tracked in `herald_migrations`) and apalis's (in
/// `_sqlx_migrations`, its default): two migrators on one table refuse to start.
pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut ours = sqlx::migrate!("./migrations/sqlite");
    ours.dangerous_set_table_name("herald_migrations");
    ours.run(pool).await?;
    apalis_sqlite::SqliteStorage::migrations().run(pool).await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pools: Pools,
    writer: mpsc::Sender<WriteOp>,
}

impl SqliteStore {
    /// Starts the store's writer task (so: call it inside a tokio runtime).
    pub fn new(pools: Pools) -> Self {
        let (writer, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run_writer(pools.writer.clone(), rx));
        SqliteStore { pools, writer }
    }

    async fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        self.writer.send(op).await.map_err(|_| writer_gone())
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    async fn unit(&self, write: UnitWrite) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Unit { write, reply }).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction
    /// that reads first and writes later fails with SQLITE_BUSY when another
    /// writer commits in between, and busy_timeout cannot help it.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pools.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The columns `JobRow` reads, as a macro so queries stay `&'static str`
/// (sqlx 0.9 refuses SQL built at run time unless it is asserted safe).
macro_rules! job_columns {
    () => {
        "id, tenant, kind, status, input, progress, result, error, attempt, max_attempts, \
         timeout_secs, cancel_requested, idempotency_key, created_at, started_at, finished_at, last_seq"
    };
}

/// Writes a transition's new job state and its event in one round trip to the
/// connection's thread: sqlx runs the statements of one query in turn and binds
/// `?NNN` across all of them. `cancel_requested` is not written: only a cancel
/// request sets it.
///
/// With `if_seq`, the write happens only while the job's `last_seq` is still
/// that (the event insert is conditional on the update through `changes()`),
/// and `Ok(false)` says it had moved on.
async fn write_transition(
    tx: &mut Transaction<'static, Sqlite>,
    job: &JobRecord,
    ev: &NewEvent,
    if_seq: Option<EventSeq>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald_jobs SET status = ?2, progress = ?3, result = ?4, error = ?5, attempt = ?6, \
         started_at = ?7, finished_at = ?8, last_seq = ?9, updated_at = ?10 \
         WHERE id = ?1 AND (?13 IS NULL OR last_seq = ?13); \
         INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT ?1, ?9, ?11, ?12, ?10 WHERE changes() = 1;",
    )
    .bind(job.id.to_string())
    .bind(job.status.as_str())
    .bind(to_json(&job.progress))
    .bind(to_json(&job.result))
    .bind(to_json(&job.error))
    .bind(job.attempt)
    .bind(job.started_at.map(|t| t.0))
    .bind(job.finished_at.map(|t| t.0))
    .bind(ev.seq.0)
    .bind(ev.at.0)
    .bind(ev.kind.as_str())
    .bind(&ev.data)
    .bind(if_seq.map(|s| s.0))
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 && if_seq.is_some() {
        return Ok(false);
    }
    if done.rows_affected() != 2 {
        return Err(sqlx::Error::Protocol(format!(
            "transition of job {} wrote {} rows instead of 2",
            job.id,
            done.rows_affected()
        )));
    }
    Ok(true)
}

async fn fetch_job(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
) -> Result<Option<JobRecord>, StoreError> {
    let row: Option<JobRow> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM herald_jobs WHERE id = ?1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(JobRecord::try_from).transpose()
}

/// Applies `t` inside an open write transaction.
async fn apply_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
    t: &Transition,
) -> Result<JobRecord, ApplyError> {
    let job = fetch_job(tx, id).await?.ok_or(ApplyError::NotFound)?;
    let now = Timestamp::now();
    let (next, ev) = job.apply(t, now)?;
    write_transition(tx, &next, &ev, None).await?;
    Ok(next)
}

/// Applies `t` to `known` without reading the job first, unless it turns out
/// to have changed since the caller saw it.
async fn apply_known_in(
    tx: &mut Transaction<'static, Sqlite>,
    known: &JobRecord,
    t: &Transition,
) -> Result<JobRecord, ApplyError> {
    let now = Timestamp::now();
    if let Ok((next, ev)) = known.apply(t, now) {
        if write_transition(tx, &next, &ev, Some(known.last_seq)).await? {
            return Ok(next);
        }
    }
    apply_in(tx, known.id, t).await
}

async fn submit_in(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: &str,
    sub: &Submission,
) -> Result<Submitted, StoreError> {
    if let Some(key) = &sub.idempotency_key {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = ?1 AND idempotency_key = ?2"
        ))
        .bind(tenant)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            let existing = JobRecord::try_from(row)?;
            let same = sub.same_request(
                &existing.kind,
                &existing.input,
                existing.max_attempts,
                existing.timeout_secs,
            );
            return Ok(if same {
                Submitted::Existing(existing)
            } else {
                Submitted::Conflict(existing)
            });
        }
    }
    let now = Timestamp::now();
    let job = JobRecord {
        id: sub.job_id.unwrap_or_default(),
        tenant: tenant.to_owned(),
        kind: sub.kind.clone(),
        status: JobStatus::Queued,
        input: sub.input.clone(),
        progress: None,
        result: None,
        error: None,
        attempt: 1,
        max_attempts: sub.max_attempts,
        timeout_secs: sub.timeout_secs,
        cancel_requested: false,
        idempotency_key: sub.idempotency_key.clone(),
        created_at: now,
        started_at: None,
        finished_at: None,
        last_seq: EventSeq(1),
    };
    let first = job.created_event();
    sqlx::query(
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, max_attempts, \
         timeout_secs, idempotency_key, created_at, updated_at, last_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12); \
         INSERT INTO herald_job_events (job_id, seq, event, data, at) VALUES (?1, ?12, ?13, ?14, ?11);",
    )
    .bind(job.id.to_string())
    .bind(job.id.task_id().to_string())
    .bind(&job.tenant)
    .bind(&job.kind)
    .bind(job.status.as_str())
    .bind(serde_json::to_string(&job.input).expect("JSON values serialize"))
    .bind(job.attempt)
    .bind(job.max_attempts)
    .bind(job.timeout_secs)
    .bind(&job.idempotency_key)
    .bind(now.0)
    .bind(first.seq.0)
    .bind(first.kind.as_str())
    .bind(&first.data)
    .execute(&mut **tx)
    .await?;
    Ok(Submitted::Created(job))
}

async fn cancel_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
    reason: &str,
) -> Result<CancelOutcome, StoreError> {
    let Some(job) = fetch_job(tx, id).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    let outcome = match job.cancel_decision() {
        CancelDecision::Terminal => return Ok(CancelOutcome::Terminal(job)),
        CancelDecision::CancelNow => {
            let t = Transition::Cancel {
                reason: reason.to_owned(),
            };
            match apply_in(tx, id, &t).await {
                Ok(job) => CancelOutcome::CancelledNow(job),
                Err(ApplyError::Store(e)) => return Err(e),
                Err(e) => return Err(StoreError::Corrupt(format!("cancel of a queued job: {e}"))),
            }
        }
        CancelDecision::Request => {
            sqlx::query(
                "UPDATE herald_jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
            )
            .bind(id.to_string())
            .bind(Timestamp::now().0)
            .execute(&mut **tx)
            .await?;
            CancelOutcome::Requested(JobRecord {
                cancel_requested: true,
                ..job
            })
        }
    };
    Ok(outcome)
}

/// A write for the writer task, with where to send its outcome.
enum WriteOp {
    Submit {
        tenant: String,
        sub: Submission,
        reply: oneshot::Sender<Result<Submitted, StoreError>>,
    },
    Apply {
        id: JobId,
        t: Transition,
        known: Option<Box<JobRecord>>,
        reply: oneshot::Sender<Result<JobRecord, ApplyError>>,
    },
    Cancel {
        id: JobId,
        reason: String,
        reply: oneshot::Sender<Result<CancelOutcome, StoreError>>,
    },
    DeleteTask {
        id: JobId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Purge {
        before: Timestamp,
        limit: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Upload chunks and checkpoints: writes that answer nothing but success.
    Unit {
        write: UnitWrite,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

enum UnitWrite {
    PutChunk { id: JobId, n: i64, data: Vec<u8> },
    DeleteUpload(JobId),
    PurgeOrphans(Timestamp),
    Checkpoint { id: JobId, checkpoint: String },
}

async fn unit_write(
    tx: &mut Transaction<'static, Sqlite>,
    write: UnitWrite,
) -> Result<(), StoreError> {
    match write {
        UnitWrite::PutChunk { id, n, data } => {
            sqlx::query(
                "INSERT INTO herald_upload_chunks (job_id, n, data, stored_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(id.to_string())
            .bind(n)
            .bind(data)
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
                .bind(checkpoint)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// The outcome of one op inside a batch, held back until the batch commits.
enum Done {
    Submit(
        oneshot::Sender<Result<Submitted, StoreError>>,
        Result<Submitted, StoreError>,
    ),
    Apply(
        oneshot::Sender<Result<JobRecord, ApplyError>>,
        Result<JobRecord, ApplyError>,
    ),
    Cancel(
        oneshot::Sender<Result<CancelOutcome, StoreError>>,
        Result<CancelOutcome, StoreError>,
    ),
    DeleteTask(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Purge(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
}

impl Done {
    /// The op, answered with `msg` as an error: nothing of it was written.
    fn failed(op: WriteOp, msg: &str) -> Done {
        let e = || StoreError::WriteFailed(msg.to_owned());
        match op {
            WriteOp::Submit { reply, .. } => Done::Submit(reply, Err(e())),
            WriteOp::Apply { reply, .. } => Done::Apply(reply, Err(ApplyError::Store(e()))),
            WriteOp::Cancel { reply, .. } => Done::Cancel(reply, Err(e())),
            WriteOp::DeleteTask { reply, .. } => Done::DeleteTask(reply, Err(e())),
            WriteOp::Purge { reply, .. } => Done::Purge(reply, Err(e())),
            WriteOp::Unit { reply, .. } => Done::DeleteTask(reply, Err(e())),
        }
    }

    /// Replaces a success by `msg` (the commit failed: nothing was written).
    fn fail(self, msg: &str) -> Done {
        let e = || StoreError::WriteFailed(msg.to_owned());
        match self {
            Done::Submit(r, Ok(_)) => Done::Submit(r, Err(e())),
            Done::Apply(r, Ok(_)) => Done::Apply(r, Err(ApplyError::Store(e()))),
            Done::Cancel(r, Ok(_)) => Done::Cancel(r, Err(e())),
            Done::DeleteTask(r, Ok(_)) => Done::DeleteTask(r, Err(e())),
            Done::Purge(r, Ok(_)) => Done::Purge(r, Err(e())),
            other => other,
        }
    }

    fn send(self) {
        // A caller that stopped waiting no longer needs the answer; the write stands.
        match self {
            Done::Submit(r, v) => drop(r.send(v)),
            Done::Apply(r, v) => drop(r.send(v)),
            Done::Cancel(r, v) => drop(r.send(v)),
            Done::DeleteTask(r, v) => drop(r.send(v)),
            Done::Purge(r, v) => drop(r.send(v)),
        }
    }
}

/// The most writes one transaction carries.
const MAX_BATCH: usize = 256;

/// Group commit: takes every write that is waiting, runs them in one
/// transaction (each sees the ones before it), commits, and only then answers
/// them, so an acknowledged write is a committed one. One commit per batch
/// instead of per write, and the writes run here rather than in their callers,
/// so a caller that gives up (a dropped future) never leaves half a write.
async fn run_writer(pool: SqlitePool, mut rx: mpsc::Receiver<WriteOp>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.recv().await {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        write_batch(&pool, batch.drain(..)).await;
    }
}

async fn write_batch(pool: &SqlitePool, ops: impl Iterator<Item = WriteOp>) {
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "could not begin a write transaction");
            let msg = format!("could not begin a transaction: {e}");
            ops.for_each(|op| Done::failed(op, &msg).send());
            return;
        }
    };
    let mut done = Vec::new();
    for op in ops {
        done.push(match op {
            WriteOp::Submit { tenant, sub, reply } => {
                Done::Submit(reply, submit_in(&mut tx, &tenant, &sub).await)
            }
            WriteOp::Apply {
                id,
                t,
                known,
                reply,
            } => {
                let r = match known {
                    Some(job) => apply_known_in(&mut tx, &job, &t).await,
                    None => apply_in(&mut tx, id, &t).await,
                };
                Done::Apply(reply, r)
            }
            WriteOp::Cancel { id, reason, reply } => {
                Done::Cancel(reply, cancel_in(&mut tx, id, &reason).await)
            }
            WriteOp::DeleteTask { id, reply } => {
                let r = sqlx::query("DELETE FROM Jobs WHERE id = ?1")
                    .bind(id.task_id().to_string())
                    .execute(&mut *tx)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from);
                Done::DeleteTask(reply, r)
            }
            WriteOp::Purge {
                before,
                limit,
                reply,
            } => Done::Purge(reply, purge_in(&mut tx, before, limit).await),
            WriteOp::Unit { write, reply } => {
                Done::DeleteTask(reply, unit_write(&mut tx, write).await)
            }
        });
    }
    match tx.commit().await {
        Ok(()) => done.into_iter().for_each(Done::send),
        Err(e) => {
            tracing::error!(error = %e, writes = done.len(), "write batch failed to commit");
            let msg = format!("the commit failed: {e}");
            done.into_iter().for_each(|d| d.fail(&msg).send());
        }
    }
}

/// Deletes the oldest terminal jobs finished before `before` (events follow by
/// ON DELETE CASCADE), and their queue tasks if any are left.
async fn purge_in(
    tx: &mut Transaction<'static, Sqlite>,
    before: Timestamp,
    limit: i64,
) -> Result<usize, StoreError> {
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, task_id FROM herald_jobs WHERE finished_at IS NOT NULL AND finished_at < ?1 \
         AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?2",
    )
    .bind(before.0)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    for (id, task_id) in &ids {
        sqlx::query(
            "DELETE FROM Jobs WHERE id = ?2; DELETE FROM herald_upload_chunks WHERE job_id = ?1; \
             DELETE FROM herald_jobs WHERE id = ?1;",
        )
        .bind(id)
        .bind(task_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(ids.len())
}

fn writer_gone() -> StoreError {
    StoreError::Corrupt("the store's writer task has stopped".to_owned())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Submit {
            tenant: tenant.to_owned(),
            sub: sub.clone(),
            reply,
        })
        .await?;
        let submitted = rx.await.map_err(|_| writer_gone())??;
        if let Submitted::Created(job) = &submitted {
            metrics::counter!("herald_events_appended_total", "event" => "status").increment(1);
            metrics::counter!("herald_jobs_submitted_total", "kind" => job.kind.clone())
                .increment(1);
        }
        Ok(submitted)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pools.reader)
        .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = ?1 \
             AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR kind = ?3) \
             AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
        ))
        .bind(&q.tenant)
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.kind.as_deref())
        .bind(q.before.map(|id| id.to_string()))
        .bind(q.limit)
        .fetch_all(&self.pools.reader)
        .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Apply {
            id,
            t: t.clone(),
            known: None,
            reply,
        })
        .await?;
        let job = rx.await.map_err(|_| writer_gone())??;
        crate::telemetry::applied(t, &job);
        Ok(job)
    }

    async fn apply_known(
        &self,
        known: &JobRecord,
        t: &Transition,
    ) -> Result<JobRecord, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Apply {
            id: known.id,
            t: t.clone(),
            known: Some(Box::new(known.clone())),
            reply,
        })
        .await?;
        let job = rx.await.map_err(|_| writer_gone())??;
        crate::telemetry::applied(t, &job);
        Ok(job)
    }

    /// The outcome, then the deletion of the spent task: two writes, which
    /// the writer may well commit together.
    async fn apply_final(
        &self,
        known: &JobRecord,
        t: &Transition,
    ) -> Result<JobRecord, ApplyError> {
        let job = self.apply_known(known, t).await?;
        self.delete_task(known.id).await?;
        Ok(job)
    }

    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Cancel {
            id,
            reason: reason.to_owned(),
            reply,
        })
        .await?;
        let outcome = rx.await.map_err(|_| writer_gone())??;
        if let CancelOutcome::CancelledNow(job) = &outcome {
            let t = Transition::Cancel {
                reason: reason.to_owned(),
            };
            crate::telemetry::applied(&t, job);
        }
        Ok(outcome)
    }

    async fn events_after(
        &self,
        id: JobId,
        after: EventSeq,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, event, data, at FROM herald_job_events WHERE job_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            let requested: Option<bool> = sqlx::query_scalar(
                "SELECT cancel_requested FROM herald_jobs WHERE id = ?1 \
                 AND status IN ('queued', 'running')",
            )
            .bind(id.to_string())
            .fetch_optional(&self.pools.reader)
            .await?;
            if requested == Some(true) {
                found.push(*id);
            }
        }
        Ok(found)
    }

    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Purge {
            before,
            limit,
            reply,
        })
        .await?;
        rx.await.map_err(|_| writer_gone())?
    }
}

#[async_trait]
impl FeedStore for SqliteStore {
    /// One writer commits events in id order, and a reader sees whole
    /// commits, so the event id alone is a lossless cursor here.
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        let jobs = filter.jobs.as_ref().map(|ids| {
            serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())
                .expect("ids serialize")
        });
        let rows: Vec<(i64, String, i64, String, String, i64)> = sqlx::query_as(
            "SELECT e.id, e.job_id, e.seq, e.event, e.data, e.at FROM herald_job_events e \
             JOIN herald_jobs j ON j.id = e.job_id \
             WHERE e.id > ?1 AND j.tenant = ?2 AND (?3 IS NULL OR j.kind = ?3) \
             AND (?4 IS NULL OR e.job_id IN (SELECT value FROM json_each(?4))) \
             ORDER BY e.id LIMIT ?5",
        )
        .bind(after.id)
        .bind(&filter.tenant)
        .bind(filter.kind.as_deref())
        .bind(jobs)
        .bind(limit)
        .fetch_all(&self.pools.reader)
        .await?;
        rows.into_iter()
            .map(|(id, job_id, seq, event, data, at)| {
                Ok(FeedEvent {
                    cursor: FeedCursor { tx: 0, id },
                    job_id: job_id.parse().map_err(|e| corrupt("job id", e))?,
                    event: StoredEvent::try_from((seq, event, data, at))?,
                })
            })
            .collect()
    }

    async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        let id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM herald_job_events")
            .fetch_one(&self.pools.reader)
            .await?;
        Ok(FeedCursor { tx: 0, id })
    }
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

#[async_trait]
impl NodeStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pools.reader).await?;
        Ok(())
    }

    async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM herald_jobs WHERE status = 'running' ORDER BY id")
                .fetch_all(&self.pools.writer)
                .await?;
        for (id,) in ids {
            let id: JobId = id.parse().map_err(|e| corrupt("job id", e))?;
            let mut tx = self.write_tx().await?;
            let Some(job) = fetch_job(&mut tx, id).await? else {
                continue;
            };
            if job.status != JobStatus::Running {
                continue;
            }
            let lost = JobError::new(
                "worker_lost",
                format!(
                    "attempt {} was interrupted: the process running it stopped without finishing it",
                    job.attempt
                ),
            );
            let (t, list) = if job.has_attempts_left() {
                (Transition::Retry(lost), &mut out.requeued)
            } else {
                (Transition::Fail(lost), &mut out.failed)
            };
            match apply_in(&mut tx, id, &t).await {
                Ok(_) => list.push(id),
                Err(ApplyError::Store(e)) => return Err(e),
                Err(_) => continue,
            }
            tx.commit().await?;
        }
        Ok(out)
    }
}

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
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::DeleteTask { id, reply }).await?;
        rx.await.map_err(|_| writer_gone())?
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
