//! Transitions: the conditional, group-committed write of a job the caller
//! knows, and the writes under the job's row lock that it falls back to.

use sqlx::{Postgres, Transaction};

use super::batch::{TransitionRow, Write};
use super::PgStore;
use crate::domain::{EventSeq, JobId, JobRecord, NewEvent, Refused, Timestamp, Transition};
use crate::store::row::{to_json, JobRow};
use crate::store::{Applied, ApplyError, JobStore, StoreError};

/// Writes a transition's new state and its event in one statement, in a
/// transaction that holds the job's row lock (the unlocked, conditional
/// writes go through [`super::batch::Writes`], batched). A transition to `running` records
/// this node as the one running the attempt.
pub(super) async fn write_transition<'e, E>(
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
             started_at = $7, finished_at = $8, last_seq = $9, updated_at = $10, items_count = $14, \
             run_at = $15, \
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
    .bind(job.items_count)
    .bind(job.run_at.0)
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

pub(super) async fn lock_job(
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
pub(super) async fn apply_in(
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
    pub(super) async fn write_if_seq(
        &self,
        next: &JobRecord,
        ev: NewEvent,
        if_seq: EventSeq,
    ) -> Result<bool, sqlx::Error> {
        let row: Write = Box::new(TransitionRow::new(next, ev, if_seq));
        self.writes.run(row).await
    }

    /// `apply_known_all` in one conditional write, when every transition
    /// applies in turn to the job as known (a runner's last reports and its
    /// outcome): one row update and all their events, group-committed like
    /// any transition. None, with nothing written, when one does not apply or
    /// the job moved on: the caller then applies them one by one.
    pub(super) async fn apply_known_at_once(
        &self,
        known: &JobRecord,
        ts: &[Transition],
    ) -> Result<Option<Vec<Applied>>, sqlx::Error> {
        let mut applied: Vec<Applied> = Vec::with_capacity(ts.len());
        for t in ts {
            let from = applied.last().map_or(known, |a| &a.job);
            let Ok((job, event)) = from.apply(t, Timestamp::now()) else {
                return Ok(None);
            };
            applied.push(Applied { job, event });
        }
        let Some(last) = applied.last() else {
            return Ok(Some(applied));
        };
        let events = applied.iter().map(|a| a.event.clone()).collect();
        let row: Write = Box::new(TransitionRow::chain(&last.job, events, known.last_seq));
        Ok(self.writes.run(row).await?.then_some(applied))
    }

    /// `apply_known`: the conditional write, then the locked one if the job
    /// moved on.
    pub(super) async fn apply_known_then(
        &self,
        known: &JobRecord,
        t: &Transition,
    ) -> Result<Applied, ApplyError> {
        if let Ok((next, ev)) = known.apply(t, Timestamp::now()) {
            if self.write_if_seq(&next, ev.clone(), known.last_seq).await? {
                return Ok(Applied {
                    job: next,
                    event: ev,
                });
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
        Ok(Applied {
            job: next,
            event: ev,
        })
    }

    /// Reads the job, then writes the transition on the condition that the
    /// job has not moved on since: two round trips and no row lock held
    /// across them. Under contention it falls back to locking the row.
    pub(super) async fn apply_optimistic(
        &self,
        id: JobId,
        t: &Transition,
    ) -> Result<JobRecord, ApplyError> {
        for _ in 0..4 {
            let job = self.get(id).await?.ok_or(ApplyError::NotFound)?;
            let (next, ev) = job.apply(t, Timestamp::now())?;
            if self.write_if_seq(&next, ev, job.last_seq).await? {
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
        Ok(job)
    }
}
