//! Claims' statements: the queue's head (which the local claim in
//! `direct.rs` reads), and the starts of a remote worker's claim, written
//! inside the writer's transaction.

use sqlx::{Sqlite, Transaction};

use super::to_json;
use crate::store::{Applied, StoreError};

/// The claim's update of the jobs it starts, from `?1`, a JSON array of
/// `[id, status, progress, result, error, attempt, started_at, finished_at,
/// seq, at, event, data, items_count, run_at, worker, lease,
/// lease_expires_at]`: each job found by its key (a local job's lease
/// fields are null; a remote job's are its worker's).
macro_rules! start_jobs {
    () => {
        "UPDATE herald_jobs SET status = v.value ->> 1, progress = v.value ->> 2, \
           result = v.value ->> 3, error = v.value ->> 4, attempt = v.value ->> 5, \
           started_at = v.value ->> 6, finished_at = v.value ->> 7, last_seq = v.value ->> 8, \
           updated_at = v.value ->> 9, items_count = v.value ->> 12, run_at = v.value ->> 13, \
           worker = v.value ->> 14, lease = v.value ->> 15, lease_expires_at = v.value ->> 16 \
         FROM json_each(?1) AS v WHERE herald_jobs.id = v.value ->> 0 RETURNING id"
    };
}

/// Their events, from the same array: for the jobs the update started
/// (those now at the event's seq), so a job's row and its events agree.
macro_rules! start_events {
    () => {
        "INSERT INTO herald_job_events (job_id, seq, event, data, at) \
         SELECT j.id, v.value ->> 8, v.value ->> 10, v.value ->> 11, v.value ->> 9 \
         FROM json_each(?1) AS v JOIN herald_jobs j \
           ON j.id = v.value ->> 0 AND j.last_seq = v.value ->> 8"
    };
}

/// [`start_jobs!`], for its plan test.
#[cfg(test)]
pub(crate) const START_JOBS: &str = start_jobs!();

/// Writes the claim's starts: each job's new state and its event, for all of
/// them in one statement each (their values as one JSON array); answers the
/// ids it started (all of them: the claim read them in this transaction).
/// The writer commits its batch whatever one op answers, so the write is
/// wrapped in a savepoint: one that fails half-way leaves no job started
/// without its claimer knowing.
pub(in crate::store::sqlite) async fn write_starts(
    tx: &mut Transaction<'static, Sqlite>,
    started: &[Applied],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<serde_json::Value> = started
        .iter()
        .map(|Applied { job, event: ev }| {
            serde_json::json!([
                job.id.to_string(),
                job.status.as_str(),
                to_json(&job.progress),
                to_json(&job.result),
                to_json(&job.error),
                job.attempt,
                job.started_at.map(|t| t.0),
                job.finished_at.map(|t| t.0),
                ev.seq.0,
                ev.at.0,
                ev.kind.as_str(),
                ev.data,
                job.items_count,
                job.run_at.0,
                job.worker,
                job.lease,
                job.lease_expires_at.map(|t| t.0),
            ])
        })
        .collect();
    // Rows come from the update's RETURNING only (sqlx's rows_affected
    // would count the savepoint statements too).
    let written: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(concat!(
        "SAVEPOINT claim; ",
        start_jobs!(),
        "; ",
        start_events!(),
        "; RELEASE claim;"
    ))
    .bind(serde_json::Value::Array(rows).to_string())
    .fetch_all(&mut **tx)
    .await;
    match written {
        Ok(ids) => Ok(ids.into_iter().collect()),
        Err(e) => {
            sqlx::query("ROLLBACK TO claim; RELEASE claim")
                .execute(&mut **tx)
                .await?;
            Err(e.into())
        }
    }
}

/// The queue's head: the first `?1` queued jobs by `run_at`, from the
/// partial index of queued jobs, which holds nothing else. Named, because
/// SQLite once took (status = 'queued') from a (status, id) index instead
/// and sorted everything queued; the name holds the plan whatever other
/// indexes there are.
pub(crate) const QUEUE_HEAD: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs INDEXED BY herald_jobs_ready WHERE status = 'queued' AND remote = 0 \
     ORDER BY run_at, id LIMIT +?1"
);
