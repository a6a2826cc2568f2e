//! The job writes the writer task runs, each inside the batch's transaction
//! (so each sees the writes before it). The job path's writes (a new job, a
//! runner's transitions, the queue's claim) run on the connection's handle,
//! in `writes/direct.rs`, with the statements defined here; the rarer ones
//! run here through sqlx: a cancel request, the retention sweep, a remote
//! worker's claim and lease writes (with `writes/claim.rs`), recovery.

use sqlx::{Sqlite, Transaction};

use crate::domain::{CancelDecision, EventSeq, JobId, JobRecord, NewEvent, Timestamp, Transition};
use crate::store::row::{to_json, JobRow};
use crate::store::{Applied, ApplyError, CancelOutcome, StoreError};

/// A transition's update of the job row, with [`bind_transition`]'s values:
/// `?1` the id, `?2`–`?8` the state, `?9`/`?10` the event's seq and time,
/// `?13` the `last_seq` it must still have (NULL: any), `?14`/`?15` the item
/// count and `run_at` (`?11`/`?12`, the event's name and data, are the
/// insert's).
macro_rules! update_job {
    () => {
        "UPDATE herald_jobs SET status = ?2, progress = ?3, result = ?4, error = ?5, attempt = ?6, \
         started_at = ?7, finished_at = ?8, last_seq = ?9, updated_at = ?10, items_count = ?14, \
         run_at = ?15 \
         WHERE id = ?1 AND (?13 IS NULL OR last_seq = ?13)"
    };
}

/// A transition's event, inserted when the update before it wrote the row.
macro_rules! transition_event {
    () => {
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT ?1, ?9, ?11, ?12, ?10 WHERE changes() = 1"
    };
}

/// One event of a job, by its values: `?1` the job, then seq, name, data, time.
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO herald_job_events (job_id, seq, event, data, at) VALUES (?1, ?2, ?3, ?4, ?5)";

/// The job with id `?1`.
pub(super) const JOB_BY_ID: &str =
    concat!("SELECT ", job_columns!(), " FROM herald_jobs WHERE id = ?1");

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds `?1`–`?15` of [`update_job!`] and its event's insert: `job` as the
/// transition left it, `ev` (the last) event, written while `last_seq` is
/// still `if_seq`.
fn bind_transition<'q>(
    query: SqliteQuery<'q>,
    job: &'q JobRecord,
    ev: &'q NewEvent,
    if_seq: Option<EventSeq>,
) -> SqliteQuery<'q> {
    query
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
        .bind(job.items_count)
        .bind(job.run_at.0)
}

/// Writes a transition's new job state and its event in one round trip to the
/// connection's thread: sqlx runs the statements of one query in turn and binds
/// `?NNN` across all of them. `cancel_requested` is not written: only a cancel
/// request sets it.
///
/// With `if_seq`, the write happens only while the job's `last_seq` is still
/// that (the event insert is conditional on the update through `changes()`),
/// and `Ok(false)` says it had moved on.
pub(super) async fn write_transition(
    tx: &mut Transaction<'static, Sqlite>,
    job: &JobRecord,
    ev: &NewEvent,
    if_seq: Option<EventSeq>,
) -> Result<bool, sqlx::Error> {
    let done = bind_transition(
        sqlx::query(concat!(update_job!(), "; ", transition_event!(), ";")),
        job,
        ev,
        if_seq,
    )
    .execute(&mut **tx)
    .await?;
    written(job, done.rows_affected(), 2, if_seq)
}

/// Whether a job's write of its row and `expected - 1` events went in:
/// `Ok(false)` when nothing was written because the job had moved on from
/// `if_seq`; an error when some other count of rows was.
fn written(
    job: &JobRecord,
    rows: u64,
    expected: u64,
    if_seq: Option<EventSeq>,
) -> Result<bool, sqlx::Error> {
    if rows == 0 && if_seq.is_some() {
        return Ok(false);
    }
    if rows != expected {
        return Err(sqlx::Error::Protocol(format!(
            "the write of job {} and its events wrote {rows} rows instead of {expected}",
            job.id
        )));
    }
    Ok(true)
}

pub(super) async fn fetch_job(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
) -> Result<Option<JobRecord>, StoreError> {
    let row: Option<JobRow> = sqlx::query_as(JOB_BY_ID)
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    row.map(JobRecord::try_from).transpose()
}

/// Applies `t` inside an open write transaction.
pub(super) async fn apply_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
    t: &Transition,
) -> Result<Applied, ApplyError> {
    let job = fetch_job(tx, id).await?.ok_or(ApplyError::NotFound)?;
    let now = Timestamp::now();
    let (next, ev) = job.apply(t, now)?;
    write_transition(tx, &next, &ev, None).await?;
    Ok(Applied {
        job: next,
        event: ev,
    })
}

/// Writes `steps` (see [`write_steps`]) inside a transaction that read the
/// job they start from.
pub(super) async fn write_steps_in(
    tx: &mut Transaction<'static, Sqlite>,
    steps: &[(JobRecord, NewEvent)],
) -> Result<(), sqlx::Error> {
    write_steps(tx, steps, None).await?;
    Ok(())
}

/// Writes the last step's job state and every step's event (see
/// [`write_transition`]); one step is one transition. Several are still one
/// round trip: their events go as one JSON array.
async fn write_steps(
    tx: &mut Transaction<'static, Sqlite>,
    steps: &[(JobRecord, NewEvent)],
    if_seq: Option<EventSeq>,
) -> Result<bool, sqlx::Error> {
    let Some((job, last)) = steps.last() else {
        return Ok(true);
    };
    if steps.len() == 1 {
        return write_transition(tx, job, last, if_seq).await;
    }
    if let [(_, first), _] = steps {
        return write_two_steps(tx, job, first, last, if_seq).await;
    }
    let events: Vec<(i64, &str, &str, i64)> = steps
        .iter()
        .map(|(_, ev)| (ev.seq.0, ev.kind.as_str(), ev.data.as_str(), ev.at.0))
        .collect();
    let done = bind_transition(
        sqlx::query(concat!(
            update_job!(),
            "; INSERT INTO herald_job_events (job_id, seq, event, data, at) \
             SELECT ?1, json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'), \
               json_extract(e.value, '$[2]'), json_extract(e.value, '$[3]') \
             FROM json_each(?16) e WHERE changes() = 1;"
        )),
        job,
        last,
        if_seq,
    )
    .bind(serde_json::to_string(&events).expect("events serialize"))
    .execute(&mut **tx)
    .await?;
    written(job, done.rows_affected(), 1 + steps.len() as u64, if_seq)
}

/// [`write_steps`] for two steps (a last progress report and the outcome,
/// the most common write of all), with the first event's values bound as they
/// are: no JSON array to build and take apart.
async fn write_two_steps(
    tx: &mut Transaction<'static, Sqlite>,
    job: &JobRecord,
    first: &NewEvent,
    last: &NewEvent,
    if_seq: Option<EventSeq>,
) -> Result<bool, sqlx::Error> {
    let done = bind_transition(
        sqlx::query(concat!(
            update_job!(),
            "; INSERT INTO herald_job_events (job_id, seq, event, data, at) \
             SELECT ?1, ?16, ?17, ?18, ?19 WHERE changes() = 1 \
             UNION ALL SELECT ?1, ?9, ?11, ?12, ?10 WHERE changes() = 1;"
        )),
        job,
        last,
        if_seq,
    )
    .bind(first.seq.0)
    .bind(first.kind.as_str())
    .bind(&first.data)
    .bind(first.at.0)
    .execute(&mut **tx)
    .await?;
    written(job, done.rows_affected(), 3, if_seq)
}

/// A new queued job's row: `?1` id, `?2` task id, `?3` tenant, `?4` kind,
/// `?5` status, `?6` input, `?7` attempt, `?8` max attempts, `?9` timeout,
/// `?10` idempotency key, `?11` created, `?12` its first event's seq, `?15`
/// run_at, `?16` remote.
macro_rules! insert_queued_job {
    () => {
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, max_attempts, \
         timeout_secs, idempotency_key, created_at, updated_at, last_seq, run_at, remote) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?15, ?16)"
    };
}

/// Its first event: `?12` seq, `?13` name, `?14` data, at `?11`.
macro_rules! insert_created_event {
    () => {
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) VALUES (?1, ?12, ?13, ?14, ?11)"
    };
}

/// A job submitted to start (`direct::submit_started`), stored started unless a
/// due local job waits; its values are listed there.
macro_rules! insert_started_job {
    () => {
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
           max_attempts, timeout_secs, idempotency_key, created_at, updated_at, last_seq, run_at, \
           remote, started_at) \
         SELECT ?1, ?11, ?12, ?13, ?2, ?14, ?15, ?16, ?17, ?18, ?7, ?4, ?3, ?7, 0, ?19 \
         WHERE NOT EXISTS (SELECT 1 FROM herald_jobs INDEXED BY herald_jobs_ready \
           WHERE status = 'queued' AND remote = 0 AND run_at <= ?7)"
    };
}

/// The same job stored queued instead, when it did not start.
macro_rules! insert_queued_instead {
    () => {
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
           max_attempts, timeout_secs, idempotency_key, created_at, updated_at, last_seq, run_at, \
           remote, started_at) \
         SELECT ?1, ?11, ?12, ?13, ?20, ?14, ?15, ?16, ?17, ?18, ?7, ?7, ?21, ?7, 0, NULL \
         WHERE changes() = 0"
    };
}

/// Its `queued` event.
macro_rules! insert_first_event {
    () => {
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) VALUES (?1, ?10, ?8, ?9, ?7)"
    };
}

/// Its `running` event, when it started.
macro_rules! insert_running_event {
    () => {
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT ?1, ?3, ?5, ?6, ?4 FROM herald_jobs WHERE id = ?1 AND status = ?2"
    };
}

/// The tenant's job with idempotency key `?2`, if any (its unique index).
pub(crate) const JOB_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = ?1 AND idempotency_key = ?2"
);

pub(super) async fn cancel_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: JobId,
    reason: &str,
) -> Result<CancelOutcome, StoreError> {
    let Some(job) = fetch_job(tx, id).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    let outcome = match job.cancel(reason, Timestamp::now()) {
        CancelDecision::Terminal => CancelOutcome::Terminal(job),
        CancelDecision::CancelNow(next, ev) => {
            write_transition(tx, &next, &ev, None).await?;
            CancelOutcome::CancelledNow(next)
        }
        CancelDecision::Request(requested) => {
            sqlx::query(
                "UPDATE herald_jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
            )
            .bind(id.to_string())
            .bind(Timestamp::now().0)
            .execute(&mut **tx)
            .await?;
            CancelOutcome::Requested(requested)
        }
    };
    Ok(outcome)
}

/// Deletes the oldest terminal jobs finished before `before` (events follow by
/// ON DELETE CASCADE) and their upload chunks.
pub(super) async fn purge_in(
    tx: &mut Transaction<'static, Sqlite>,
    before: Timestamp,
    limit: i64,
) -> Result<usize, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM herald_jobs WHERE finished_at IS NOT NULL AND finished_at < ?1 \
         AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT +?2",
    )
    .bind(before.0)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    for id in &ids {
        sqlx::query(
            "DELETE FROM herald_upload_chunks WHERE job_id = ?1; DELETE FROM herald_jobs WHERE id = ?1;",
        )
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(ids.len())
}

mod claim;
pub(super) mod direct;
pub(super) use claim::write_starts;
#[cfg(test)]
pub(crate) use claim::{QUEUE_HEAD, START_JOBS};
