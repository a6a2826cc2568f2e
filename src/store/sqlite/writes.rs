//! The job writes the writer task runs, each inside the batch's transaction
//! (so each sees the writes before it): a new job, a transition, a cancel
//! request, the retention sweep, and the queue's claim (`writes/claim.rs`).

use sqlx::{Sqlite, Transaction};

use crate::domain::{
    CancelDecision, EventSeq, JobId, JobRecord, NewEvent, StartedAtOnce, Submission, Timestamp,
    Transition,
};
use crate::store::row::{to_json, JobRow};
use crate::store::{Applied, ApplyError, CancelOutcome, StoreError, Submitted};

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
        sqlx::query(concat!(
            update_job!(),
            "; INSERT INTO herald_job_events (job_id, seq, event, data, at) \
             SELECT ?1, ?9, ?11, ?12, ?10 WHERE changes() = 1;"
        )),
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

/// Applies `ts` in turn to `known` without reading the job first, unless it
/// turns out to have changed since the caller saw it: the job's last state
/// and every step's event in one write, all or none.
pub(super) async fn apply_known_in(
    tx: &mut Transaction<'static, Sqlite>,
    known: &JobRecord,
    ts: &[Transition],
) -> Result<Vec<Applied>, ApplyError> {
    let now = Timestamp::now();
    if let Ok(steps) = known.apply_all(ts, now) {
        if write_steps(tx, &steps, Some(known.last_seq)).await? {
            return Ok(into_applied(steps));
        }
    }
    let job = fetch_job(tx, known.id).await?.ok_or(ApplyError::NotFound)?;
    let steps = job.apply_all(ts, now)?;
    write_steps(tx, &steps, None).await?;
    Ok(into_applied(steps))
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

fn into_applied(steps: Vec<(JobRecord, NewEvent)>) -> Vec<Applied> {
    steps
        .into_iter()
        .map(|(job, event)| Applied { job, event })
        .collect()
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

/// The tenant's job with idempotency key `?2`, if any (its unique index).
pub(crate) const JOB_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = ?1 AND idempotency_key = ?2"
);

pub(super) async fn submit_in(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: &str,
    sub: &Submission,
) -> Result<Submitted, StoreError> {
    if let Some(key) = &sub.idempotency_key {
        let row: Option<JobRow> = sqlx::query_as(JOB_BY_IDEMPOTENCY_KEY)
            .bind(tenant)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = row {
            return Ok(sub.resubmitted(JobRecord::try_from(row)?));
        }
    }
    let now = Timestamp::now();
    let job = sub.new_job(tenant, now);
    let first = job.created_event();
    if sub.start && !sub.remote {
        return submit_started(tx, job, &first, now).await;
    }
    sqlx::query(
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, max_attempts, \
         timeout_secs, idempotency_key, created_at, updated_at, last_seq, run_at, remote) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?15, ?16); \
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
    .bind(job.created_at.0)
    .bind(first.seq.0)
    .bind(first.kind.as_str())
    .bind(&first.data)
    .bind(job.run_at.0)
    .bind(job.remote)
    .execute(&mut **tx)
    .await?;
    Ok(Submitted::Created(job))
}

/// Inserts `job` started at `now` (see [`Submission::start`]) unless a due
/// local job waits in the queue (that one starts first, by a claim): then
/// queued, as any job. One round trip either way: the row as the claim would
/// leave it, or as queued, and its events (`first`, `queued`; and `running`
/// when it started). A started job never enters the partial index of queued
/// jobs, and its status is written once.
async fn submit_started(
    tx: &mut Transaction<'static, Sqlite>,
    queued: JobRecord,
    first: &NewEvent,
    now: Timestamp,
) -> Result<Submitted, StoreError> {
    let (job, start) = queued.apply(&Transition::Start, now).map_err(|refused| {
        StoreError::Corrupt(format!("a new job {} cannot start: {refused}", queued.id))
    })?;
    // sqlx numbers each statement's unused `?NNN` below its highest one as
    // the next positional values, and stops binding past the last value: the
    // statements use low numbers where they can (the `running` event's are
    // `?1`–`?6`), so none runs out.
    let done = sqlx::query(
        "INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
           max_attempts, timeout_secs, idempotency_key, created_at, updated_at, last_seq, run_at, \
           remote, started_at) \
         SELECT ?1, ?11, ?12, ?13, ?2, ?14, ?15, ?16, ?17, ?18, ?7, ?4, ?3, ?7, 0, ?19 \
         WHERE NOT EXISTS (SELECT 1 FROM herald_jobs INDEXED BY herald_jobs_ready \
           WHERE status = 'queued' AND remote = 0 AND run_at <= ?7); \
         INSERT INTO herald_jobs (id, task_id, tenant, kind, status, input, attempt, \
           max_attempts, timeout_secs, idempotency_key, created_at, updated_at, last_seq, run_at, \
           remote, started_at) \
         SELECT ?1, ?11, ?12, ?13, ?20, ?14, ?15, ?16, ?17, ?18, ?7, ?7, ?21, ?7, 0, NULL \
         WHERE changes() = 0; \
         INSERT INTO herald_job_events (job_id, seq, event, data, at) VALUES (?1, ?10, ?8, ?9, ?7); \
         INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT ?1, ?3, ?5, ?6, ?4 FROM herald_jobs WHERE id = ?1 AND status = ?2;",
    )
    .bind(job.id.to_string())
    .bind(job.status.as_str())
    .bind(start.seq.0)
    .bind(start.at.0)
    .bind(start.kind.as_str())
    .bind(&start.data)
    .bind(job.created_at.0)
    .bind(first.kind.as_str())
    .bind(&first.data)
    .bind(first.seq.0)
    .bind(job.id.task_id().to_string())
    .bind(&job.tenant)
    .bind(&job.kind)
    .bind(serde_json::to_string(&job.input).expect("JSON values serialize"))
    .bind(job.attempt)
    .bind(job.max_attempts)
    .bind(job.timeout_secs)
    .bind(&job.idempotency_key)
    .bind(job.started_at.map(|t| t.0))
    .bind(queued.status.as_str())
    .bind(queued.last_seq.0)
    .execute(&mut **tx)
    .await?;
    // The job's row and its events: 3 rows when it started, 2 when queued.
    match done.rows_affected() {
        3 => Ok(Submitted::Started(Box::new(StartedAtOnce {
            queued,
            running: job,
            start,
        }))),
        2 => Ok(Submitted::Created(queued)),
        n => Err(StoreError::WriteFailed(format!(
            "the submission of job {} wrote {n} rows instead of 2 or 3",
            queued.id
        ))),
    }
}

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
pub(super) use claim::{claim_in, write_starts};
#[cfg(test)]
pub(crate) use claim::{QUEUE_HEAD, START_JOBS};
