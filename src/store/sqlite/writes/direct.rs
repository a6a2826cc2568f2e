//! The writer's common batches on the connection's own handle: submissions,
//! transitions and the queue's claim, the whole of a job's path.
//!
//! sqlx runs each statement on the connection's thread: a message there, a
//! futex wake, and a context switch each way, about 7 µs a round trip here,
//! and a batch of 11 ops made 13–20 of them. A batch made only of these ops
//! instead takes the handle from that thread once ([`lock_handle`]) and runs
//! its statements here, through rusqlite over the same `sqlite3` handle,
//! prepared once and kept. The transaction is begun and committed through
//! sqlx as before (so a busy wait never blocks the runtime's thread): three
//! round trips a batch. The statements are the sqlx path's own, one at a
//! time, with the same numbered values bound; the rows each must change are
//! checked the same way.
//!
//! [`lock_handle`]: sqlx::sqlite::SqliteConnection::lock_handle

use rusqlite::types::ToSql;
use rusqlite::{CachedStatement, Connection};

use crate::domain::Transition;
use crate::domain::{EventSeq, JobId, JobRecord, NewEvent, StartedAtOnce, Submission, Timestamp};
use crate::store::row::{corrupt, to_json, JobRow};
use crate::store::sqlite::tail::{Keep, TailEvent, TAIL_EVENTS};
use crate::store::{Applied, ApplyError, Claim, StoreError, StoredEvent, Submitted};

/// A rusqlite connection over the writer's `sqlite3` handle, kept with its
/// prepared statements from batch to batch while the handle stays the same
/// (its address is kept to tell).
#[derive(Default)]
pub(in crate::store::sqlite) struct Direct(Option<(usize, Connection)>);

impl Direct {
    /// The connection over `handle`, the writer connection's handle, locked
    /// out of sqlx's thread (`LockedSqliteHandle`) for as long as the
    /// returned borrow lives.
    // The one place herald uses `unsafe`: rusqlite over a handle sqlx opened.
    #[allow(unsafe_code)]
    pub(in crate::store::sqlite) fn over(
        &mut self,
        handle: std::ptr::NonNull<rusqlite::ffi::sqlite3>,
    ) -> &Connection {
        let addr = handle.as_ptr() as usize;
        if self.0.as_ref().is_none_or(|(at, _)| *at != addr) {
            // sqlx replaced the writer's connection (never on its own: see
            // `connect`; only after the old one's thread died). The old
            // statements belong to the old handle; finalizing them could
            // touch freed memory, so they are let go unfinalized: a leak,
            // once.
            if let Some(old) = self.0.take() {
                std::mem::forget(old);
            }
            // SAFETY: the handle is open, and locked out of sqlx's thread
            // whenever this connection is used (the writer holds the lock
            // while it holds the borrow this returns). `from_handle` does not
            // own it: dropping the connection never closes it.
            let conn = unsafe { Connection::from_handle(handle.as_ptr()) }
                .expect("rusqlite wraps an open handle");
            // Every statement here stays prepared (about 17 of them; the
            // default keeps 16, and would prepare one again and again).
            conn.set_prepared_statement_cache_capacity(STATEMENTS);
            self.0 = Some((addr, conn));
        }
        &self.0.as_ref().expect("set above").1
    }
}

/// The most statements kept prepared: more than the batches use.
const STATEMENTS: usize = 32;

/// Runs `f`'s statements all or none, in a savepoint: the batch commits
/// whatever one op answers, so one that fails half-way is rolled back to
/// where it began. Only a claim of several jobs needs it: savepoints cost
/// (one around every op took a job from 116 to 147 µs of server CPU).
fn atomically<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    exec(conn, "SAVEPOINT claim", &[])?;
    let done = f(conn);
    if done.is_err() {
        exec(conn, "ROLLBACK TO claim", &[])?;
    }
    exec(conn, "RELEASE claim", &[])?;
    done
}

/// A rusqlite error as the store's: busy or locked is `Unavailable` (a
/// retry may succeed), anything else a failed write.
fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::WriteFailed(e.to_string()),
    }
}

/// `sql` (one statement), prepared once, with `args` bound by number: `?N`
/// is `args[N - 1]`, as sqlx binds them across a query's statements.
fn bound<'c>(
    conn: &'c Connection,
    sql: &str,
    args: &[&dyn ToSql],
) -> Result<CachedStatement<'c>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(store_error)?;
    for i in 1..=st.parameter_count() {
        let arg = args.get(i - 1).ok_or_else(|| {
            StoreError::WriteFailed(format!("statement wants value ?{i}, given {}", args.len()))
        })?;
        st.raw_bind_parameter(i, arg).map_err(store_error)?;
    }
    Ok(st)
}

/// Runs `sql` with `args` and answers the rows it changed.
fn exec(conn: &Connection, sql: &str, args: &[&dyn ToSql]) -> Result<usize, StoreError> {
    bound(conn, sql, args)?.raw_execute().map_err(store_error)
}

/// The job rows `sql` answers (its columns: `job_columns!`).
fn job_rows(conn: &Connection, sql: &str, args: &[&dyn ToSql]) -> Result<Vec<JobRow>, StoreError> {
    let mut st = bound(conn, sql, args)?;
    let mut rows = st.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(store_error)? {
        out.push(job_row(r).map_err(store_error)?);
    }
    Ok(out)
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        input: r.get(4)?,
        progress: r.get(5)?,
        result: r.get(6)?,
        error: r.get(7)?,
        attempt: r.get(8)?,
        max_attempts: r.get(9)?,
        timeout_secs: r.get(10)?,
        cancel_requested: r.get(11)?,
        idempotency_key: r.get(12)?,
        created_at: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        last_seq: r.get(16)?,
        items_count: r.get(17)?,
        run_at: r.get(18)?,
        remote: r.get(19)?,
        worker: r.get(20)?,
        lease: r.get(21)?,
        lease_expires_at: r.get(22)?,
    })
}

fn fetch_job(conn: &Connection, id: JobId) -> Result<Option<JobRecord>, StoreError> {
    let id = id.to_string();
    job_rows(conn, super::JOB_BY_ID, &[&id])?
        .pop()
        .map(JobRecord::try_from)
        .transpose()
}

/// The values of [`update_job!`] and its event's insert (`?1`–`?15`, as
/// `bind_transition` binds them).
struct TransitionValues<'a> {
    id: String,
    status: &'a str,
    progress: Option<String>,
    result: Option<String>,
    error: Option<String>,
    attempt: i32,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    seq: i64,
    at: i64,
    event: &'a str,
    data: &'a str,
    if_seq: Option<i64>,
    items_count: i64,
    run_at: i64,
}

impl<'a> TransitionValues<'a> {
    fn new(job: &'a JobRecord, ev: &'a NewEvent, if_seq: Option<EventSeq>) -> Self {
        TransitionValues {
            id: job.id.to_string(),
            status: job.status.as_str(),
            progress: to_json(&job.progress),
            result: to_json(&job.result),
            error: to_json(&job.error),
            attempt: job.attempt,
            started_at: job.started_at.map(|t| t.0),
            finished_at: job.finished_at.map(|t| t.0),
            seq: ev.seq.0,
            at: ev.at.0,
            event: ev.kind.as_str(),
            data: &ev.data,
            if_seq: if_seq.map(|s| s.0),
            items_count: job.items_count,
            run_at: job.run_at.0,
        }
    }

    fn args(&self) -> [&dyn ToSql; 15] {
        [
            &self.id,
            &self.status,
            &self.progress,
            &self.result,
            &self.error,
            &self.attempt,
            &self.started_at,
            &self.finished_at,
            &self.seq,
            &self.at,
            &self.event,
            &self.data,
            &self.if_seq,
            &self.items_count,
            &self.run_at,
        ]
    }
}

/// The job's row as the last step left it, and every step's event, written
/// while `last_seq` is still `if_seq` (as `writes.rs`'s `write_steps`): `Ok(false)` when
/// the job had moved on and nothing was written.
fn write_steps(
    conn: &Connection,
    steps: &[(JobRecord, NewEvent)],
    if_seq: Option<EventSeq>,
) -> Result<bool, StoreError> {
    let Some((job, _)) = steps.last() else {
        return Ok(true);
    };
    let events: Vec<&NewEvent> = steps.iter().map(|(_, ev)| ev).collect();
    write(conn, job, &events, if_seq)
}

/// `job`'s row, written with its `events` (the last one's seq and time go in
/// the row) while `last_seq` is still `if_seq`.
fn write(
    conn: &Connection,
    job: &JobRecord,
    events: &[&NewEvent],
    if_seq: Option<EventSeq>,
) -> Result<bool, StoreError> {
    let Some(last) = events.last() else {
        return Ok(true);
    };
    let values = TransitionValues::new(job, last, if_seq);
    match exec(conn, update_job!(), &values.args())? {
        0 if if_seq.is_some() => return Ok(false),
        1 => {}
        n => {
            return Err(StoreError::WriteFailed(format!(
                "the write of job {} updated {n} rows instead of 1",
                job.id
            )))
        }
    }
    for ev in events {
        exec(
            conn,
            super::INSERT_EVENT,
            &[&values.id, &ev.seq.0, &ev.kind.as_str(), &ev.data, &ev.at.0],
        )?;
    }
    Ok(true)
}

fn into_applied(steps: Vec<(JobRecord, NewEvent)>) -> Vec<Applied> {
    steps
        .into_iter()
        .map(|(job, event)| Applied { job, event })
        .collect()
}

/// Applies `ts` in turn to `known` without reading the job first, unless it
/// turns out to have changed since the caller saw it: the job's last state
/// and every step's event in one write.
pub(in crate::store::sqlite) fn apply_known(
    conn: &Connection,
    known: &JobRecord,
    ts: &[Transition],
) -> Result<Vec<Applied>, ApplyError> {
    let now = Timestamp::now();
    if let Ok(steps) = known.apply_all(ts, now) {
        if write_steps(conn, &steps, Some(known.last_seq))? {
            return Ok(into_applied(steps));
        }
    }
    let job = fetch_job(conn, known.id)?.ok_or(ApplyError::NotFound)?;
    let steps = job.apply_all(ts, now)?;
    write_steps(conn, &steps, None)?;
    Ok(into_applied(steps))
}

/// Applies `t` to the job as stored.
pub(in crate::store::sqlite) fn apply(
    conn: &Connection,
    id: JobId,
    t: &Transition,
) -> Result<Applied, ApplyError> {
    let job = fetch_job(conn, id)?.ok_or(ApplyError::NotFound)?;
    let step = [job.apply(t, Timestamp::now())?];
    write_steps(conn, &step, None)?;
    let [(job, event)] = step;
    Ok(Applied { job, event })
}

/// A new job: the tenant's job with the same idempotency key if there is
/// one, else the job stored queued, or started (see [`submit_started`]).
pub(in crate::store::sqlite) fn submit(
    conn: &Connection,
    tenant: &str,
    sub: &Submission,
) -> Result<Submitted, StoreError> {
    if let Some(key) = &sub.idempotency_key {
        if let Some(row) = job_rows(conn, super::JOB_BY_IDEMPOTENCY_KEY, &[&tenant, key])?.pop() {
            return Ok(sub.resubmitted(JobRecord::try_from(row)?));
        }
    }
    let now = Timestamp::now();
    let job = sub.new_job(tenant, now);
    let first = job.created_event();
    if sub.start && !sub.remote {
        return submit_started(conn, job, &first, now);
    }
    let id = job.id.to_string();
    let task_id = job.id.task_id().to_string();
    let input = serde_json::to_string(&job.input).expect("JSON values serialize");
    let args: [&dyn ToSql; 16] = [
        &id,
        &task_id,
        &job.tenant,
        &job.kind,
        &job.status.as_str(),
        &input,
        &job.attempt,
        &job.max_attempts,
        &job.timeout_secs,
        &job.idempotency_key,
        &job.created_at.0,
        &first.seq.0,
        &first.kind.as_str(),
        &first.data,
        &job.run_at.0,
        &job.remote,
    ];
    exec(conn, insert_queued_job!(), &args)?;
    exec(conn, insert_created_event!(), &args)?;
    Ok(Submitted::Created(job))
}

/// Inserts `job` started at `now` (see [`Submission::start`]) unless a due
/// local job waits in the queue (that one starts first, by a claim): then
/// queued, as any job. The row as the claim would leave it, or as queued,
/// and its events (`queued`; and `running` when it started): 3 rows when it
/// started, 2 when it was queued behind a due job. A started job never
/// enters the partial index of queued jobs, and its status is written once.
fn submit_started(
    conn: &Connection,
    queued: JobRecord,
    first: &NewEvent,
    now: Timestamp,
) -> Result<Submitted, StoreError> {
    let (job, start) = queued.apply(&Transition::Start, now).map_err(|refused| {
        StoreError::Corrupt(format!("a new job {} cannot start: {refused}", queued.id))
    })?;
    let id = job.id.to_string();
    let task_id = job.id.task_id().to_string();
    let input = serde_json::to_string(&job.input).expect("JSON values serialize");
    let args: [&dyn ToSql; 21] = [
        &id,
        &job.status.as_str(),
        &start.seq.0,
        &start.at.0,
        &start.kind.as_str(),
        &start.data,
        &job.created_at.0,
        &first.kind.as_str(),
        &first.data,
        &first.seq.0,
        &task_id,
        &job.tenant,
        &job.kind,
        &input,
        &job.attempt,
        &job.max_attempts,
        &job.timeout_secs,
        &job.idempotency_key,
        &job.started_at.map(|t| t.0),
        &queued.status.as_str(),
        &queued.last_seq.0,
    ];
    let mut rows = 0;
    for sql in [
        insert_started_job!(),
        insert_queued_instead!(),
        insert_first_event!(),
        insert_running_event!(),
    ] {
        rows += exec(conn, sql, &args)?;
    }
    match rows {
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

/// The queue's claim: the first `limit` queued jobs by `run_at`, and one
/// more to know whether more wait (from the partial index of queued jobs,
/// so the cost does not grow with history); those that are due start, each
/// written with its values bound (a statement here costs no round trip, so
/// no JSON array), all of them or none (see [`atomically`]); the first one
/// that is not due says when the next one will be.
pub(in crate::store::sqlite) fn claim(
    conn: &Connection,
    limit: usize,
) -> Result<Claim, StoreError> {
    let head = job_rows(conn, super::claim::QUEUE_HEAD, &[&(limit as i64 + 1)])?;
    let claim = Claim::plan(head, Timestamp::now(), limit)?.claim();
    let start = |conn: &Connection| {
        for a in &claim.started {
            if !write(conn, &a.job, &[&a.event], None)? {
                return Err(StoreError::WriteFailed(format!(
                    "the claim's start of job {} wrote nothing",
                    a.job.id
                )));
            }
        }
        Ok(())
    };
    // One job is one update and its event, as any transition; several go
    // in a savepoint, so none is left started when a later one fails.
    match claim.started.len() {
        0 => {}
        1 => start(conn)?,
        _ => atomically(conn, start)?,
    }
    Ok(claim)
}

/// The events a batch appended after `keep`'s id, in id order, with their
/// jobs' tenant and kind, for the feed's tail; or, with the id to start the
/// tail over from, none (when it starts, after the retention sweep, or when
/// the batch appended more than the tail keeps).
pub(in crate::store::sqlite) fn read_back(
    conn: &Connection,
    keep: Keep,
    swept: bool,
) -> Result<(Vec<TailEvent>, Option<i64>), StoreError> {
    let newest = || -> Result<Option<i64>, StoreError> {
        let mut st = bound(conn, crate::store::sqlite::feed::FEED_HEAD, &[])?;
        let id: i64 = st
            .raw_query()
            .next()
            .map_err(store_error)?
            .ok_or_else(|| StoreError::WriteFailed("no newest event id".to_owned()))?
            .get(0)
            .map_err(store_error)?;
        Ok(Some(id))
    };
    let last = match keep {
        Keep::After(last) if !swept => last,
        _ => return Ok((Vec::new(), newest()?)),
    };
    let limit = TAIL_EVENTS as i64 + 1;
    let mut st = bound(
        conn,
        crate::store::sqlite::writer::TAIL_AFTER,
        &[&last, &limit],
    )?;
    let mut rows = st.raw_query();
    let mut events = Vec::new();
    while let Some(r) = rows.next().map_err(store_error)? {
        let id: i64 = r.get(0).map_err(store_error)?;
        let job_id: String = r.get(1).map_err(store_error)?;
        let event = (
            r.get(2).map_err(store_error)?,
            r.get(3).map_err(store_error)?,
            r.get(4).map_err(store_error)?,
            r.get(5).map_err(store_error)?,
        );
        let tenant: Option<String> = r.get(6).map_err(store_error)?;
        let kind: Option<String> = r.get(7).map_err(store_error)?;
        events.push(TailEvent {
            id,
            job_id: job_id.parse().map_err(|e| corrupt("job id", e))?,
            job: tenant.zip(kind),
            event: StoredEvent::try_from(event)?,
        });
    }
    drop(rows);
    drop(st);
    if events.len() > TAIL_EVENTS {
        return Ok((Vec::new(), newest()?));
    }
    Ok((events, None))
}
