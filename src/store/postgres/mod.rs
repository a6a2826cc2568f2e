//! The PostgreSQL store: several herald nodes on one database.
//!
//! Cross-node wake-ups: after an event is committed, its job id is sent on
//! `herald_events` (payloads are capped at 8000 bytes; ids are all they
//! carry), and each node's listener (`notify.rs`) wakes its local streams,
//! which read the store. The notify is NOT part of the event's transaction:
//! NOTIFY takes a database-wide lock at commit and holds it through the WAL
//! flush, so with it inside, every event-writing commit in the cluster
//! queued behind the previous one's fsync (measured: 375 jobs/s, with most
//! backends waiting on `Lock/object`). Instead a notifier task batches the
//! ids of committed events into one notify-only transaction, which writes no
//! WAL and holds the lock for microseconds. Subscribers read the store after
//! the notify, so it can only come late, never early; a notify lost to a
//! crash right after a commit is covered by the listener's periodic
//! wake-up of every local stream. A cancel request of a running job notifies
//! `herald_cancel` inside its transaction (rare, and it must not be lost).
//!
//! Writes are single statements where they can be (a transition is one
//! `WITH … UPDATE … INSERT` round trip, atomic on its own, conditional on the
//! job's `last_seq`); only a cancel request and lease recovery lock the row
//! (`FOR UPDATE`) in a transaction.
//!
//! Node liveness: a node that runs jobs upserts its row in `herald_nodes`
//! every third of the lease, with the database's clock (nodes' clocks may
//! disagree). A job is `running` on the node named in its `node_id`; once that
//! node's heartbeat is older than the lease, any node may run the job again.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::group::{Flush, Group};
use super::pg_batch::{NewJob, Submits, TransitionRow, Write, Writes};
use super::row::{to_json, EventRow, JobRow};
use super::{
    ApplyError, CancelOutcome, FeedCursor, FeedEvent, FeedFilter, FeedStore, JobStore, ListQuery,
    NodeStore, Recovered, StoreError, StoredEvent, Submitted, TaskStore, UploadStore,
};
use crate::domain::{
    CancelDecision, EventSeq, JobError, JobId, JobRecord, JobStatus, NewEvent, Refused, Submission,
    Timestamp, Transition,
};

macro_rules! job_columns {
    () => {
        "id::text AS id, tenant, kind, status, input, progress, result, error, attempt, max_attempts, \
         timeout_secs, cancel_requested, idempotency_key, created_at, started_at, finished_at, last_seq"
    };
}

/// The channel that carries "job X has a new event".
pub const EVENTS_CHANNEL: &str = "herald_events";
/// The channel that carries "job X was asked to cancel".
pub const CANCEL_CHANNEL: &str = "herald_cancel";

/// Who this node is, for leases.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub id: String,
    pub role: &'static str,
    /// A node silent for this long is gone; its jobs run again elsewhere.
    pub lease: Duration,
}

/// The pools a PostgreSQL deployment uses. apalis gets its own pool so its
/// fetches never wait behind herald's writes (and vice versa).
#[derive(Clone, Debug)]
pub struct Pools {
    pub main: PgPool,
    /// The batched statements' connections (see `connect`).
    pub writes: PgPool,
    pub queue: PgPool,
    /// Options for the node's dedicated LISTEN connection.
    pub listen: PgConnectOptions,
}

pub async fn connect(url: &str, pool_size: u32, node: &str) -> Result<Pools, StoreError> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name(&format!("herald {node}"));
    // No ping before each acquire (sqlx's default): it doubled the round
    // trips of every query. A broken connection fails its query instead, and
    // the caller's retry (the runner's, the client's) gets a fresh one.
    let main = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(pool_size.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.clone())
        .await?;
    // The batched transitions join an array of ids against `herald_jobs` and
    // `apalis.jobs` by primary key. PostgreSQL plans a prepared statement once
    // for all its later runs, with the table sizes of that moment: on a new
    // database those are tiny, and it chose sequential scans and hash joins
    // that it kept as the tables grew (4 ms per batch instead of 0.5).
    // Re-planning every run cost as much as running. On these connections,
    // which run only those statements and the batched reads of jobs by id,
    // the planner may use only index lookups.
    let writes = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(2 * WRITERS as u32 + 1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.clone().options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]))
        .await?;
    let queue = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.clone())
        .await?;
    Ok(Pools {
        main,
        writes,
        queue,
        listen: opts.application_name(&format!("herald-listener {node}")),
    })
}

/// Runs herald's migrations (tracked in `herald_migrations`) and apalis's.
/// Two nodes starting at once serialize on sqlx's migration lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut ours = sqlx::migrate!("./migrations/postgres");
    ours.dangerous_set_table_name("herald_migrations");
    ours.run(pool).await?;
    apalis_postgres::PostgresStorage::migrations()
        .run(pool)
        .await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct PgStore {
    pools: Pools,
    node: NodeIdentity,
    notifier: Notifier,
    /// Transitions of running jobs and spent-task deletes, group-committed.
    writes: Group<Writes>,
    /// New jobs, group-committed.
    submits: Group<Submits>,
    /// Reads of one job by id, gathered the same way: a job about to start
    /// is read first, and the jobs of one queue fetch start together.
    reads: Group<Reads>,
}

/// Reads jobs by id, in batches (see [`Group`]).
struct Reads {
    pool: PgPool,
}

#[async_trait]
impl Flush for Reads {
    type Op = JobId;
    type Out = Option<JobRow>;

    fn key(_: &JobId) -> Option<String> {
        None
    }

    async fn flush(&self, ops: &[JobId]) -> Result<Vec<Option<JobRow>>, sqlx::Error> {
        let ids: Vec<Uuid> = ops.iter().map(|id| id.0).collect();
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let by_id: HashMap<String, JobRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(ops
            .iter()
            .map(|id| by_id.get(&id.to_string()).cloned())
            .collect())
    }
}

/// Batches in flight at once, per kind of write.
const WRITERS: usize = 2;

impl PgStore {
    /// Starts the store's notifier task (so: call it inside a tokio runtime).
    pub fn new(pools: Pools, node: NodeIdentity) -> Self {
        let notifier = Notifier::start(pools.main.clone());
        let writes = Group::start(
            Writes {
                pool: pools.writes.clone(),
                node: node.id.clone(),
            },
            WRITERS,
        );
        let submits = Group::start(
            Submits {
                pool: pools.main.clone(),
            },
            WRITERS,
        );
        let reads = Group::start(
            Reads {
                pool: pools.writes.clone(),
            },
            WRITERS,
        );
        PgStore {
            pools,
            node,
            notifier,
            writes,
            submits,
            reads,
        }
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    fn lease_secs(&self) -> f64 {
        self.node.lease.as_secs_f64()
    }
}

/// Sends `herald_events` notifications for committed events, batched: all
/// the ids waiting when it gets to run go out in one notify-only transaction
/// (one notify per distinct job).
#[derive(Clone, Debug)]
struct Notifier(mpsc::UnboundedSender<JobId>);

/// The most ids one notify transaction carries.
const NOTIFY_BATCH: usize = 512;
/// How long the notifier gathers ids before it sends them: what a stream on
/// another node may wait beyond the commit.
const NOTIFY_LINGER: Duration = Duration::from_millis(1);

impl Notifier {
    fn start(pool: PgPool) -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<JobId>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(NOTIFY_BATCH);
            while rx.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
                // A moment more to gather: sending as soon as one id was
                // there made it one notify transaction per event under load.
                tokio::time::sleep(NOTIFY_LINGER).await;
                while batch.len() < NOTIFY_BATCH {
                    match rx.try_recv() {
                        Ok(id) => batch.push(id),
                        Err(_) => break,
                    }
                }
                batch.sort();
                batch.dedup();
                let ids: Vec<String> = batch.drain(..).map(|id| id.to_string()).collect();
                let sent = sqlx::query(
                    "SELECT pg_notify('herald_events', id) FROM unnest($1::text[]) AS id",
                )
                .bind(&ids)
                .execute(&pool)
                .await;
                if let Err(e) = sent {
                    // Other nodes' streams catch up at the listener's periodic wake-up.
                    tracing::warn!(error = %e, jobs = ids.len(), "event notification failed");
                }
            }
        });
        Notifier(tx)
    }

    /// The job has a new committed event.
    fn committed(&self, id: JobId) {
        let _ = self.0.send(id);
    }
}

/// `horizon.h`: every event with a smaller transaction id is final.
///
/// Start from the statement's snapshot: a transaction id below its `xmin` has
/// finished, and one in its in-progress list (`xip`) may still commit. But
/// those lists span the whole server, and a transaction in another database
/// cannot write our tables; left in, any long transaction anywhere on the
/// server (another application, another herald database) would hold the feed
/// back. So an in-progress id is skipped when `pg_stat_activity` shows it
/// belongs to a backend connected to another database. Only that positive
/// proof skips one: a transaction that ended between the snapshot and the
/// read of `pg_stat_activity`, or whose backend this role may not see, still
/// counts, which only delays the feed until the next read. The horizon is the
/// smallest id still counted, or the snapshot's `xmax` when none is.
/// (`backend_xid` is a 32-bit xid; `xip` holds 64-bit ones: compared on the
/// low 32 bits, which are unique among running transactions.)
macro_rules! feed_horizon {
    () => {
        "WITH snap AS (SELECT pg_current_snapshot() AS s), \
         horizon AS (SELECT coalesce( \
           (SELECT min(x) FROM snap, pg_snapshot_xip(snap.s) AS x \
             WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
               WHERE a.datname IS NOT NULL AND a.datname <> current_database() \
                 AND a.backend_xid IS NOT NULL \
                 AND a.backend_xid::text::bigint = x::text::bigint % 4294967296)), \
           (SELECT pg_snapshot_xmax(s) FROM snap)) AS h) "
    };
}

/// Writes a transition's new state and its event in one statement, in a
/// transaction that holds the job's row lock (the unlocked, conditional
/// writes go through [`Writes`], batched). A transition to `running` records
/// this node as the one running the attempt.
async fn write_transition<'e, E>(
    exec: E,
    node: &str,
    job: &JobRecord,
    ev: &NewEvent,
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let written: i64 = sqlx::query_scalar(
        "WITH upd AS ( \
           UPDATE herald_jobs SET status = $2, progress = $3, result = $4, error = $5, attempt = $6, \
             started_at = $7, finished_at = $8, last_seq = $9, updated_at = $10, \
             node_id = CASE WHEN $2 = 'running' THEN $13 ELSE node_id END \
           WHERE id = $1 RETURNING id), \
         ins AS ( \
           INSERT INTO herald_job_events (job_id, seq, event, data, at) \
           SELECT id, $9, $11, $12, $10 FROM upd RETURNING job_id) \
         SELECT count(*) FROM ins",
    )
    .bind(job.id.0)
    .bind(job.status.as_str())
    .bind(to_json(&job.progress))
    .bind(to_json(&job.result))
    .bind(to_json(&job.error))
    .bind(job.attempt as i64)
    .bind(job.started_at.map(|t| t.0))
    .bind(job.finished_at.map(|t| t.0))
    .bind(ev.seq.0)
    .bind(ev.at.0)
    .bind(ev.kind.as_str())
    .bind(&ev.data)
    .bind(node)
    .fetch_one(exec)
    .await?;
    if written != 1 {
        return Err(sqlx::Error::Protocol(format!(
            "transition of job {} wrote {written} events instead of 1",
            job.id
        )));
    }
    Ok(())
}

async fn lock_job(
    tx: &mut Transaction<'static, Postgres>,
    id: JobId,
) -> Result<Option<JobRecord>, StoreError> {
    let row: Option<JobRow> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM herald_jobs WHERE id = $1 FOR UPDATE"
    ))
    .bind(id.0)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(JobRecord::try_from).transpose()
}

/// Applies `t` inside an open transaction, the job's row locked.
async fn apply_in(
    tx: &mut Transaction<'static, Postgres>,
    node: &str,
    id: JobId,
    t: &Transition,
) -> Result<JobRecord, ApplyError> {
    let job = lock_job(tx, id).await?.ok_or(ApplyError::NotFound)?;
    let (next, ev) = job.apply(t, Timestamp::now())?;
    write_transition(&mut **tx, node, &next, &ev).await?;
    Ok(next)
}

impl PgStore {
    /// Writes the job's new state and its event while its `last_seq` is still
    /// `if_seq` (group-committed with other jobs' writes); false if it had
    /// moved on.
    async fn write_if_seq(
        &self,
        next: &JobRecord,
        ev: NewEvent,
        if_seq: EventSeq,
        delete_task: bool,
    ) -> Result<bool, sqlx::Error> {
        let row = TransitionRow::new(next, ev, if_seq, delete_task);
        self.writes.run(Write::Transition(Box::new(row))).await
    }

    /// `apply_known`, and with `delete_task` `apply_final`.
    async fn apply_known_then(
        &self,
        known: &JobRecord,
        t: &Transition,
        delete_task: bool,
    ) -> Result<JobRecord, ApplyError> {
        if let Ok((next, ev)) = known.apply(t, Timestamp::now()) {
            if self
                .write_if_seq(&next, ev, known.last_seq, delete_task)
                .await?
            {
                self.notifier.committed(known.id);
                crate::telemetry::applied(t, &next);
                return Ok(next);
            }
        }
        // The job moved on without us. If it is no longer in the attempt we
        // knew (its node was declared gone and another one took it over), this
        // attempt has lost the job: its writes must not touch the new attempt.
        let mut tx = self.pools.main.begin().await?;
        let Some(fresh) = lock_job(&mut tx, known.id).await? else {
            tx.rollback().await?;
            return Err(ApplyError::NotFound);
        };
        if fresh.status != known.status || fresh.attempt != known.attempt {
            tx.rollback().await?;
            return Err(ApplyError::Refused(Refused {
                status: fresh.status,
                action: "record the outcome of an attempt that lost its lease",
            }));
        }
        let (next, ev) = match fresh.apply(t, Timestamp::now()) {
            Ok(applied) => applied,
            Err(refused) => {
                tx.rollback().await?;
                return Err(refused.into());
            }
        };
        write_transition(&mut *tx, &self.node.id, &next, &ev).await?;
        tx.commit().await?;
        self.notifier.committed(known.id);
        crate::telemetry::applied(t, &next);
        if delete_task {
            self.delete_task(known.id).await?;
        }
        Ok(next)
    }

    /// Reads the job, then writes the transition on the condition that the
    /// job has not moved on since: two round trips and no row lock held
    /// across them. Under contention it falls back to locking the row.
    async fn apply_optimistic(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        for _ in 0..4 {
            let job = self.get(id).await?.ok_or(ApplyError::NotFound)?;
            let (next, ev) = job.apply(t, Timestamp::now())?;
            if self.write_if_seq(&next, ev, job.last_seq, false).await? {
                self.notifier.committed(id);
                return Ok(next);
            }
        }
        let mut tx = self.pools.main.begin().await?;
        let job = match apply_in(&mut tx, &self.node.id, id, t).await {
            Ok(job) => job,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        tx.commit().await?;
        self.notifier.committed(id);
        Ok(job)
    }

    /// Recovers the running jobs that `which` selects (ids of jobs whose node is
    /// gone): the next attempt, or `failed` with `worker_lost` after the last.
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
            if job.status != JobStatus::Running {
                tx.rollback().await?;
                continue;
            }
            let lost = JobError::new(
                "worker_lost",
                format!("attempt {} was interrupted: {why}", job.attempt),
            );
            let (t, list) = if job.has_attempts_left() {
                (Transition::Retry(lost), &mut out.requeued)
            } else {
                (Transition::Fail(lost), &mut out.failed)
            };
            match apply_in(&mut tx, &self.node.id, id, &t).await {
                Ok(job) => {
                    tx.commit().await?;
                    self.notifier.committed(id);
                    crate::telemetry::applied(&t, &job);
                    list.push(id);
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
impl JobStore for PgStore {
    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError> {
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
        // The job and its first event (group-committed with other new jobs),
        // or nothing at all when the idempotency key is taken (then the
        // earlier job answers).
        let inserted = self.submits.run(NewJob::new(&job, first)).await?;
        if inserted {
            self.notifier.committed(job.id);
            metrics::counter!("herald_events_appended_total", "event" => "status").increment(1);
            metrics::counter!("herald_jobs_submitted_total", "kind" => job.kind.clone())
                .increment(1);
            return Ok(Submitted::Created(job));
        }
        let key = sub.idempotency_key.as_deref().ok_or_else(|| {
            StoreError::WriteFailed("the job insert wrote nothing without a conflict".to_owned())
        })?;
        let row: JobRow = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = $1 AND idempotency_key = $2"
        ))
        .bind(tenant)
        .bind(key)
        .fetch_one(&self.pools.main)
        .await?;
        let existing = JobRecord::try_from(row)?;
        let same = sub.same_request(
            &existing.kind,
            &existing.input,
            existing.max_attempts,
            existing.timeout_secs,
        );
        Ok(if same {
            Submitted::Existing(existing)
        } else {
            Submitted::Conflict(existing)
        })
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = self.reads.run(id).await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM herald_jobs WHERE tenant = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR kind = $3) \
             AND ($4::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(&q.tenant)
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.kind.as_deref())
        .bind(q.before.map(|id| id.0))
        .bind(q.limit)
        .fetch_all(&self.pools.main)
        .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let job = self.apply_optimistic(id, t).await?;
        crate::telemetry::applied(t, &job);
        Ok(job)
    }

    async fn apply_known(
        &self,
        known: &JobRecord,
        t: &Transition,
    ) -> Result<JobRecord, ApplyError> {
        self.apply_known_then(known, t, false).await
    }

    /// The outcome and the deletion of the spent task in one statement (the
    /// common case), else one after the other.
    async fn apply_final(
        &self,
        known: &JobRecord,
        t: &Transition,
    ) -> Result<JobRecord, ApplyError> {
        self.apply_known_then(known, t, true).await
    }

    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.pools.main.begin().await?;
        let Some(job) = lock_job(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(CancelOutcome::NotFound);
        };
        let outcome = match job.cancel_decision() {
            CancelDecision::Terminal => {
                // Ended explicitly: a dropped transaction that holds a row lock
                // stays open on its pooled connection, and an open transaction
                // holds the feed back (see `feed_after`).
                tx.rollback().await?;
                return Ok(CancelOutcome::Terminal(job));
            }
            CancelDecision::CancelNow => {
                let t = Transition::Cancel {
                    reason: reason.to_owned(),
                };
                let job = match apply_in(&mut tx, &self.node.id, id, &t).await {
                    Ok(job) => job,
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(e) => {
                        return Err(StoreError::Corrupt(format!("cancel of a queued job: {e}")))
                    }
                };
                tx.commit().await?;
                self.notifier.committed(id);
                crate::telemetry::applied(&t, &job);
                return Ok(CancelOutcome::CancelledNow(job));
            }
            CancelDecision::Request => {
                // The node running the job hears the notify and fires its token.
                sqlx::query(
                    "UPDATE herald_jobs SET cancel_requested = true, updated_at = $2 WHERE id = $1",
                )
                .bind(id.0)
                .bind(Timestamp::now().0)
                .execute(&mut *tx)
                .await?;
                sqlx::query("SELECT pg_notify('herald_cancel', $1)")
                    .bind(id.to_string())
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
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, event, data, at FROM herald_job_events WHERE job_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id.0)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pools.main)
        .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let found: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM herald_jobs WHERE id = ANY($1) AND cancel_requested \
             AND status IN ('queued', 'running')",
        )
        .bind(&ids)
        .fetch_all(&self.pools.main)
        .await?;
        Ok(found.into_iter().map(JobId).collect())
    }

    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError> {
        // SKIP LOCKED: two nodes sweeping at once take different rows.
        let mut tx = self.pools.main.begin().await?;
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, task_id FROM herald_jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
             AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(before.0)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let (ids, task_ids): (Vec<Uuid>, Vec<String>) = rows.into_iter().unzip();
        sqlx::query("DELETE FROM herald_job_events WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM apalis.jobs WHERE id = ANY($1)")
            .bind(&task_ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM herald_upload_chunks WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM herald_jobs WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }
}

#[async_trait]
impl FeedStore for PgStore {
    /// The feed in (appending transaction id, event id) order, and only below
    /// the oldest transaction still running that could write to this database.
    ///
    /// Why not `id > cursor`: ids come from a sequence when the row is
    /// inserted, but transactions commit in any order, so event 41 can become
    /// visible after event 42 was read; a reader that moved its cursor to 42
    /// would never see 41. Here a transaction with an id below the snapshot's
    /// `xmin` has finished, so the events at or below it are final: nothing
    /// can still appear among them. Everything appended later has a
    /// transaction id at or above that `xmin`, so it sorts after any cursor
    /// already handed out. The cost: an event waits for every older
    /// transaction that may write here to end (a long one holds the feed
    /// back; it never makes it skip). Transactions of other databases on the
    /// same server are left out of that wait, when they can be proven to be
    /// elsewhere (see `feed_horizon!`).
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        let jobs: Option<Vec<Uuid>> = filter
            .jobs
            .as_ref()
            .map(|ids| ids.iter().map(|id| id.0).collect());
        let rows: Vec<(i64, i64, Uuid, i64, String, String, i64)> = sqlx::query_as(concat!(
            feed_horizon!(),
            "SELECT e.txid::text::bigint, e.id, e.job_id, e.seq, e.event, e.data, e.at \
             FROM herald_job_events e JOIN herald_jobs j ON j.id = e.job_id, horizon \
             WHERE (e.txid, e.id) > ($1::text::xid8, $2) \
               AND e.txid < horizon.h \
               AND j.tenant = $3 AND ($4::text IS NULL OR j.kind = $4) \
               AND ($5::uuid[] IS NULL OR e.job_id = ANY($5)) \
             ORDER BY e.txid, e.id LIMIT $6"
        ))
        .bind(after.tx.to_string())
        .bind(after.id)
        .bind(&filter.tenant)
        .bind(filter.kind.as_deref())
        .bind(jobs)
        .bind(limit)
        .fetch_all(&self.pools.main)
        .await?;
        rows.into_iter()
            .map(|(tx, id, job_id, seq, event, data, at)| {
                Ok(FeedEvent {
                    cursor: FeedCursor { tx, id },
                    job_id: JobId(job_id),
                    event: StoredEvent::try_from((seq, event, data, at))?,
                })
            })
            .collect()
    }

    async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        let head: Option<(i64, i64)> = sqlx::query_as(concat!(
            feed_horizon!(),
            "SELECT e.txid::text::bigint, e.id FROM herald_job_events e, horizon \
             WHERE e.txid < horizon.h ORDER BY e.txid DESC, e.id DESC LIMIT 1"
        ))
        .fetch_optional(&self.pools.main)
        .await?;
        Ok(head.map_or(FeedCursor::default(), |(tx, id)| FeedCursor { tx, id }))
    }
}

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

#[async_trait]
impl NodeStore for PgStore {
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
            "SELECT id FROM herald_jobs WHERE status = 'running' AND (node_id IS NULL OR node_id = $1 \
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
            "SELECT id FROM herald_jobs WHERE status = 'running' AND node_id IS DISTINCT FROM $1 \
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
