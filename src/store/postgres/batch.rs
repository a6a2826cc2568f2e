//! PostgreSQL's batched statements (see [`crate::store::group`]): new jobs,
//! the transitions of running jobs (and the claim's starts), and reads of
//! jobs by id. Each batch is one statement over arrays, so it is
//! atomic on its own and commits once.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use uuid::Uuid;

use crate::domain::{EventSeq, JobId, JobRecord, NewEvent};
use crate::store::group::Flush;
use crate::store::row::{to_json, JobRow};

/// A job's new state and its events, written only while the job's
/// `last_seq` is still the row's `if_seq`. Answers whether it was written.
pub(super) type Write = Box<TransitionRow>;

/// A transition (or several in turn, as one) as its columns, serialized by
/// the caller: the writer task that flushes a batch then only gathers them.
pub(super) struct TransitionRow {
    id: Uuid,
    status: &'static str,
    progress: Option<String>,
    result: Option<String>,
    error: Option<String>,
    attempt: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    if_seq: i64,
    items_count: i64,
    run_at: i64,
    /// In seq order; the last one is the job's `last_seq` and `updated_at`.
    events: Vec<NewEvent>,
}

impl TransitionRow {
    /// `job` as the transition left it, `ev` its event, written while the
    /// job's `last_seq` is still `if_seq`.
    pub(super) fn new(job: &JobRecord, ev: NewEvent, if_seq: EventSeq) -> Self {
        Self::chain(job, vec![ev], if_seq)
    }

    /// `job` as transitions in turn left it, `events` theirs (at least one,
    /// in order): one row write and all the events, or nothing.
    pub(super) fn chain(job: &JobRecord, events: Vec<NewEvent>, if_seq: EventSeq) -> Self {
        assert!(!events.is_empty(), "a transition writes an event");
        TransitionRow {
            id: job.id.0,
            status: job.status.as_str(),
            progress: to_json(&job.progress),
            result: to_json(&job.result),
            error: to_json(&job.error),
            attempt: job.attempt as i64,
            started_at: job.started_at.map(|t| t.0),
            finished_at: job.finished_at.map(|t| t.0),
            if_seq: if_seq.0,
            items_count: job.items_count,
            run_at: job.run_at.0,
            events,
        }
    }

    fn last(&self) -> &NewEvent {
        self.events.last().expect("a transition writes an event")
    }
}

pub(super) struct Writes {
    pub pool: PgPool,
    /// This node: recorded as the one running an attempt it starts.
    pub node: String,
}

#[async_trait]
impl Flush for Writes {
    type Op = Write;
    type Out = bool;
    type Error = sqlx::Error;

    fn key(op: &Write) -> Option<String> {
        Some(op.id.to_string())
    }

    async fn flush(&self, ops: &[Write]) -> Result<Vec<bool>, sqlx::Error> {
        let rows: Vec<&TransitionRow> = ops.iter().map(|op| &**op).collect();
        let written = write_rows(&self.pool, &self.node, &rows).await?;
        Ok(ops.iter().map(|op| written.contains(&op.id)).collect())
    }
}

/// Writes the transitions in one statement, each only while its job's
/// `last_seq` is still the row's `if_seq`; returns the ids written. A row
/// that moved on is not updated, so neither are its events inserted. Every
/// table is reached through `id = ANY(array)` on its primary key: the batched
/// writes run on the `writes` pool, whose planner may use nothing but index
/// lookups (the plan is made once, maybe on empty tables, and must stay
/// right as they grow). A transition to `running` records `node` as the
/// node running the attempt. The events go in in the order of `rows` and,
/// within a row, of their seqs (so the feed, which reads a transaction's
/// events by id, has each job's in order).
pub(super) async fn write_rows<'e, E>(
    exec: E,
    node: &str,
    rows: &[&TransitionRow],
) -> Result<HashSet<Uuid>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let mut a = TransitionArrays::default();
    for row in rows {
        a.push(row);
    }
    let written = sqlx::query_scalar(
        "WITH v AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
             $12::int8[], $13::int8[]) \
           AS v(id, status, progress, result, error, attempt, started_at, finished_at, last_seq, \
             at, if_seq, items_count, run_at)), \
         upd AS ( \
           UPDATE herald_jobs j SET status = v.status, progress = v.progress, result = v.result, \
             error = v.error, attempt = v.attempt, started_at = v.started_at, \
             finished_at = v.finished_at, last_seq = v.last_seq, updated_at = v.at, \
             items_count = v.items_count, run_at = v.run_at, \
             node_id = CASE WHEN v.status = 'running' THEN $14 ELSE j.node_id END \
           FROM v WHERE j.id = ANY($1::uuid[]) AND j.id = v.id AND j.last_seq = v.if_seq \
           RETURNING j.id), \
         ins AS ( \
           INSERT INTO herald_job_events (job_id, seq, event, data, at) \
           SELECT e.job_id, e.seq, e.event, e.data, e.at \
             FROM unnest($15::uuid[], $16::int8[], $17::text[], $18::text[], $19::int8[]) \
               WITH ORDINALITY AS e(job_id, seq, event, data, at, n) \
             JOIN upd ON upd.id = e.job_id ORDER BY e.n) \
         SELECT id FROM upd",
    )
    .bind(&a.id)
    .bind(&a.status)
    .bind(&a.progress)
    .bind(&a.result)
    .bind(&a.error)
    .bind(&a.attempt)
    .bind(&a.started_at)
    .bind(&a.finished_at)
    .bind(&a.last_seq)
    .bind(&a.at)
    .bind(&a.if_seq)
    .bind(&a.items_count)
    .bind(&a.run_at)
    .bind(node)
    .bind(&a.ev_job)
    .bind(&a.ev_seq)
    .bind(&a.ev_event)
    .bind(&a.ev_data)
    .bind(&a.ev_at)
    .fetch_all(exec)
    .await?
    .into_iter()
    .collect();
    Ok(written)
}

/// A batch of transitions as the arrays its statement takes: one entry per
/// row in the first group, one per event in the `ev_` ones.
#[derive(Default)]
struct TransitionArrays<'a> {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    progress: Vec<Option<&'a str>>,
    result: Vec<Option<&'a str>>,
    error: Vec<Option<&'a str>>,
    attempt: Vec<i64>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    last_seq: Vec<i64>,
    at: Vec<i64>,
    if_seq: Vec<i64>,
    items_count: Vec<i64>,
    run_at: Vec<i64>,
    ev_job: Vec<Uuid>,
    ev_seq: Vec<i64>,
    ev_event: Vec<&'static str>,
    ev_data: Vec<&'a str>,
    ev_at: Vec<i64>,
}

impl<'a> TransitionArrays<'a> {
    fn push(&mut self, row: &'a TransitionRow) {
        self.id.push(row.id);
        self.status.push(row.status);
        self.progress.push(row.progress.as_deref());
        self.result.push(row.result.as_deref());
        self.error.push(row.error.as_deref());
        self.attempt.push(row.attempt);
        self.started_at.push(row.started_at);
        self.finished_at.push(row.finished_at);
        self.last_seq.push(row.last().seq.0);
        self.at.push(row.last().at.0);
        self.if_seq.push(row.if_seq);
        self.items_count.push(row.items_count);
        self.run_at.push(row.run_at);
        for ev in &row.events {
            self.ev_job.push(row.id);
            self.ev_seq.push(ev.seq.0);
            self.ev_event.push(ev.kind.as_str());
            self.ev_data.push(&ev.data);
            self.ev_at.push(ev.at.0);
        }
    }
}

/// A new job and its first event. Answers whether it was inserted (false:
/// its idempotency key is taken).
/// Its columns are serialized by the caller, as for [`TransitionRow`].
pub(super) struct NewJob {
    id: Uuid,
    task_id: String,
    tenant: String,
    kind: String,
    status: &'static str,
    input: String,
    attempt: i64,
    max_attempts: i64,
    timeout_secs: Option<i64>,
    idempotency_key: Option<String>,
    created_at: i64,
    seq: i64,
    event: &'static str,
    data: String,
    remote: bool,
    /// Set when the job is to be stored started (see [`NewJob::started`]).
    start: Option<StartCols>,
}

/// A job stored started: its `running` columns and its start event.
struct StartCols {
    started_at: i64,
    seq: i64,
    at: i64,
    event: &'static str,
    data: String,
}

impl NewJob {
    /// `job` stored queued, with `first` (its `queued` event).
    pub(super) fn new(job: &JobRecord, first: NewEvent) -> Self {
        NewJob {
            id: job.id.0,
            task_id: job.id.task_id().to_string(),
            tenant: job.tenant.clone(),
            kind: job.kind.clone(),
            status: job.status.as_str(),
            input: serde_json::to_string(&job.input).expect("JSON values serialize"),
            attempt: job.attempt as i64,
            max_attempts: job.max_attempts as i64,
            timeout_secs: job.timeout_secs,
            idempotency_key: job.idempotency_key.clone(),
            created_at: job.created_at.0,
            seq: first.seq.0,
            event: first.kind.as_str(),
            data: first.data,
            remote: job.remote,
            start: None,
        }
    }

    /// `queued` stored started, as `running` after `start` (see
    /// [`Submission::start`](crate::domain::Submission::start)), on this
    /// node, unless a due local job waits in the queue when the batch is
    /// written: then queued, as [`NewJob::new`] would.
    pub(super) fn started(
        queued: &JobRecord,
        first: NewEvent,
        running: &JobRecord,
        start: NewEvent,
    ) -> Self {
        let mut job = NewJob::new(queued, first);
        job.start = Some(StartCols {
            started_at: running.started_at.map_or(start.at.0, |t| t.0),
            seq: start.seq.0,
            at: start.at.0,
            event: start.kind.as_str(),
            data: start.data,
        });
        job
    }
}

/// Whether a due local job waits in the queue at `$1`: a new job then waits
/// behind it instead of starting at its submission (the claim starts jobs
/// in `run_at` order). The queue's head from the partial index of queued
/// jobs, one entry read: an `EXISTS` would lose the `ORDER BY`, and the
/// planner may then walk the table for the first queued row it meets.
macro_rules! due_job_waits {
    ($at:literal) => {
        concat!(
            "SELECT coalesce((SELECT run_at FROM herald_jobs WHERE status = 'queued' \
               AND NOT remote ORDER BY run_at LIMIT 1) <= ",
            $at,
            ", false)"
        )
    };
}

/// [`due_job_waits!`] as a statement of its own, for its plan test.
#[cfg(test)]
pub(crate) const DUE_JOB_WAITS: &str = due_job_waits!("$1");

/// How a submission batch stored a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inserted {
    /// Its idempotency key is taken: nothing was written.
    No,
    Queued,
    Started,
}

pub(super) struct Submits {
    pub pool: PgPool,
    /// This node: recorded as the one running a job stored started.
    pub node: String,
}

#[async_trait]
impl Flush for Submits {
    type Op = NewJob;
    type Out = Inserted;
    type Error = sqlx::Error;

    /// Two submissions with one idempotency key go in different batches, so
    /// the second finds the first committed.
    fn key(op: &NewJob) -> Option<String> {
        op.idempotency_key
            .as_ref()
            .map(|k| format!("{}\n{k}", op.tenant))
    }

    /// One statement for the batch: the jobs, their first events, and the
    /// start events of those stored started. Whether a due job waits is
    /// read once for the batch, at its newest submission's time.
    async fn flush(&self, ops: &[NewJob]) -> Result<Vec<Inserted>, sqlx::Error> {
        let mut a = NewJobArrays::default();
        for op in ops {
            a.push(op);
        }
        let now = ops.iter().map(|op| op.created_at).max().unwrap_or(0);
        // A taken idempotency key inserts nothing for that job (the caller
        // then answers with the earlier job).
        let inserted: HashMap<Uuid, bool> = sqlx::query_as(concat!(
            "WITH v AS ( \
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::int8[], \
                 $12::int8[], $13::text[], $14::text[], $15::bool[], $16::int8[], $17::int8[], \
                 $18::int8[], $19::text[], $20::text[]) \
               AS v(id, task_id, tenant, kind, status, input, attempt, max_attempts, timeout_secs, \
                 idempotency_key, created_at, seq, event, data, remote, started_at, start_seq, \
                 start_at, start_event, start_data)), \
             w AS (",
            due_job_waits!("$22"),
            " AS waits), \
             s AS (SELECT v.*, v.start_seq IS NOT NULL AND NOT w.waits AS go FROM v, w), \
             j AS ( \
               INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
                 max_attempts, timeout_secs, idempotency_key, created_at, updated_at, last_seq, \
                 run_at, remote, started_at, node_id) \
               SELECT id, task_id, tenant, kind, CASE WHEN go THEN 'running' ELSE status END, \
                 input, attempt, max_attempts, timeout_secs, idempotency_key, created_at, \
                 CASE WHEN go THEN start_at ELSE created_at END, \
                 CASE WHEN go THEN start_seq ELSE seq END, \
                 CASE WHEN go THEN start_at ELSE created_at END, remote, \
                 CASE WHEN go THEN started_at END, CASE WHEN go THEN $21::text END FROM s \
               ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
               RETURNING id, status), \
             e AS ( \
               INSERT INTO herald_job_events (job_id, seq, event, data, at) \
               SELECT s.id, s.seq, s.event, s.data, s.created_at FROM s JOIN j ON j.id = s.id \
               UNION ALL \
               SELECT s.id, s.start_seq, s.start_event, s.start_data, s.start_at \
                 FROM s JOIN j ON j.id = s.id WHERE s.go) \
             SELECT id, status = 'running' FROM j"
        ))
        .bind(&a.id)
        .bind(&a.task_id)
        .bind(&a.tenant)
        .bind(&a.kind)
        .bind(&a.status)
        .bind(&a.input)
        .bind(&a.attempt)
        .bind(&a.max_attempts)
        .bind(&a.timeout_secs)
        .bind(&a.key)
        .bind(&a.created_at)
        .bind(&a.seq)
        .bind(&a.event)
        .bind(&a.data)
        .bind(&a.remote)
        .bind(&a.started_at)
        .bind(&a.start_seq)
        .bind(&a.start_at)
        .bind(&a.start_event)
        .bind(&a.start_data)
        .bind(&self.node)
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok(ops
            .iter()
            .map(|op| match inserted.get(&op.id) {
                None => Inserted::No,
                Some(false) => Inserted::Queued,
                Some(true) => Inserted::Started,
            })
            .collect())
    }
}

/// A submission batch as the arrays its statement takes.
#[derive(Default)]
struct NewJobArrays<'a> {
    id: Vec<Uuid>,
    task_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    kind: Vec<&'a str>,
    status: Vec<&'static str>,
    input: Vec<&'a str>,
    attempt: Vec<i64>,
    max_attempts: Vec<i64>,
    timeout_secs: Vec<Option<i64>>,
    key: Vec<Option<&'a str>>,
    created_at: Vec<i64>,
    seq: Vec<i64>,
    event: Vec<&'static str>,
    data: Vec<&'a str>,
    remote: Vec<bool>,
    started_at: Vec<Option<i64>>,
    start_seq: Vec<Option<i64>>,
    start_at: Vec<Option<i64>>,
    start_event: Vec<Option<&'static str>>,
    start_data: Vec<Option<&'a str>>,
}

impl<'a> NewJobArrays<'a> {
    fn push(&mut self, op: &'a NewJob) {
        self.id.push(op.id);
        self.task_id.push(&op.task_id);
        self.tenant.push(&op.tenant);
        self.kind.push(&op.kind);
        self.status.push(op.status);
        self.input.push(&op.input);
        self.attempt.push(op.attempt);
        self.max_attempts.push(op.max_attempts);
        self.timeout_secs.push(op.timeout_secs);
        self.key.push(op.idempotency_key.as_deref());
        self.created_at.push(op.created_at);
        self.seq.push(op.seq);
        self.event.push(op.event);
        self.data.push(&op.data);
        self.remote.push(op.remote);
        let start = op.start.as_ref();
        self.started_at.push(start.map(|s| s.started_at));
        self.start_seq.push(start.map(|s| s.seq));
        self.start_at.push(start.map(|s| s.at));
        self.start_event.push(start.map(|s| s.event));
        self.start_data.push(start.map(|s| s.data.as_str()));
    }
}

/// Jobs by their ids `$1` (the primary key): `get`, batched.
pub(crate) const JOBS_BY_IDS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE id = ANY($1)"
);

/// Reads jobs by id, in batches (see [`crate::store::group`]).
pub(super) struct Reads {
    pub pool: PgPool,
}

#[async_trait]
impl Flush for Reads {
    type Op = JobId;
    type Out = Option<JobRow>;
    type Error = sqlx::Error;

    async fn flush(&self, ops: &[JobId]) -> Result<Vec<Option<JobRow>>, sqlx::Error> {
        let ids: Vec<Uuid> = ops.iter().map(|id| id.0).collect();
        let rows: Vec<JobRow> = sqlx::query_as(JOBS_BY_IDS)
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
