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

use super::{
    ApplyError, CancelOutcome, ListQuery, Recovered, Store, StoreError, StoredEvent, Submitted,
};
use crate::domain::{
    CancelDecision, EventKind, EventSeq, JobError, JobId, JobRecord, JobStatus, NewEvent,
    Submission, Timestamp, Transition,
};

/// Opens (creating if missing) the database file with herald's settings.
pub async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(opts)
        .await?;
    Ok(pool)
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
    pool: SqlitePool,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        SqliteStore { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction
    /// that reads first and writes later fails with SQLITE_BUSY when another
    /// writer commits in between, and busy_timeout cannot help it.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
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

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    tenant: String,
    kind: String,
    status: String,
    input: String,
    progress: Option<String>,
    result: Option<String>,
    error: Option<String>,
    attempt: i64,
    max_attempts: i64,
    timeout_secs: Option<i64>,
    cancel_requested: bool,
    idempotency_key: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    last_seq: i64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: Option<String>,
) -> Result<Option<T>, StoreError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what, e)))
        .transpose()
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        Ok(JobRecord {
            id: r.id.parse().map_err(|e| corrupt("job id", e))?,
            tenant: r.tenant,
            kind: r.kind,
            status: r.status.parse().map_err(|e| corrupt("status", e))?,
            input: serde_json::from_str(&r.input).map_err(|e| corrupt("input", e))?,
            progress: parse_json("progress", r.progress)?,
            result: parse_json("result", r.result)?,
            error: parse_json::<JobError>("error", r.error)?,
            attempt: r.attempt as i32,
            max_attempts: r.max_attempts as i32,
            timeout_secs: r.timeout_secs,
            cancel_requested: r.cancel_requested,
            idempotency_key: r.idempotency_key,
            created_at: Timestamp(r.created_at),
            started_at: r.started_at.map(Timestamp),
            finished_at: r.finished_at.map(Timestamp),
            last_seq: EventSeq(r.last_seq),
        })
    }
}

fn to_json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref()
        .map(|v| serde_json::to_string(v).expect("JSON values serialize"))
}

async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
    ev: &NewEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(id.to_string())
    .bind(ev.seq.0)
    .bind(ev.kind.as_str())
    .bind(&ev.data)
    .bind(ev.at.0)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes every column a transition can change.
async fn update_job(
    tx: &mut Transaction<'static, Sqlite>,
    job: &JobRecord,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE herald_jobs SET status = ?2, progress = ?3, result = ?4, error = ?5, attempt = ?6, \
         cancel_requested = ?7, started_at = ?8, finished_at = ?9, last_seq = ?10, updated_at = ?11 \
         WHERE id = ?1",
    )
    .bind(job.id.to_string())
    .bind(job.status.as_str())
    .bind(to_json(&job.progress))
    .bind(to_json(&job.result))
    .bind(to_json(&job.error))
    .bind(job.attempt)
    .bind(job.cancel_requested)
    .bind(job.started_at.map(|t| t.0))
    .bind(job.finished_at.map(|t| t.0))
    .bind(job.last_seq.0)
    .bind(now.0)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
    update_job(tx, &next, now).await?;
    insert_event(tx, id, &ev).await?;
    Ok(next)
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError> {
        let mut tx = self.write_tx().await?;
        if let Some(key) = &sub.idempotency_key {
            let row: Option<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM herald_jobs WHERE tenant = ?1 AND idempotency_key = ?2"
            ))
            .bind(tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
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
            id: JobId::new(),
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
        sqlx::query(
            "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, max_attempts, \
             timeout_secs, idempotency_key, created_at, updated_at, last_seq) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
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
        .bind(job.last_seq.0)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, job.id, &job.created_event()).await?;
        tx.commit().await?;
        Ok(Submitted::Created(job))
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let mut tx = self.write_tx().await?;
        let job = apply_in(&mut tx, id, t).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let Some(job) = fetch_job(&mut tx, id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let outcome = match job.cancel_decision() {
            CancelDecision::Terminal => return Ok(CancelOutcome::Terminal(job)),
            CancelDecision::CancelNow => {
                let t = Transition::Cancel {
                    reason: reason.to_owned(),
                };
                match apply_in(&mut tx, id, &t).await {
                    Ok(job) => CancelOutcome::CancelledNow(job),
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(e) => {
                        return Err(StoreError::Corrupt(format!("cancel of a queued job: {e}")))
                    }
                }
            }
            CancelDecision::Request => {
                sqlx::query(
                    "UPDATE herald_jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
                )
                .bind(id.to_string())
                .bind(Timestamp::now().0)
                .execute(&mut *tx)
                .await?;
                CancelOutcome::Requested(JobRecord {
                    cancel_requested: true,
                    ..job
                })
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn events_after(
        &self,
        id: JobId,
        after: EventSeq,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT seq, event, data, at FROM herald_job_events WHERE job_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(seq, event, data, at)| {
                Ok(StoredEvent {
                    seq: EventSeq(seq),
                    kind: EventKind::parse(&event).ok_or_else(|| corrupt("event name", &event))?,
                    data,
                    at: Timestamp(at),
                })
            })
            .collect()
    }

    async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM herald_jobs WHERE status = 'running' ORDER BY id")
                .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter()
            .map(|(id,)| id.parse().map_err(|e| corrupt("job id", e)))
            .collect()
    }

    async fn delete_task(&self, id: JobId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM Jobs WHERE id = ?1")
            .bind(id.task_id().to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
