//! Group commit on SQLite's one write connection: every write of the store
//! goes through the writer task.

use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::tasks::delete_task_in;
use super::uploads::{unit_write, UnitWrite};
use super::writes::{apply_in, apply_known_in, cancel_in, purge_in, submit_in};
use crate::domain::{JobId, JobRecord, Submission, Timestamp, Transition};
use crate::store::{ApplyError, CancelOutcome, StoreError, Submitted};

/// A write for the writer task, with where to send its outcome.
pub(super) enum WriteOp {
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
pub(super) const MAX_BATCH: usize = 256;

/// Group commit: takes every write that is waiting, runs them in one
/// transaction (each sees the ones before it), commits, and only then answers
/// them, so an acknowledged write is a committed one. One commit per batch
/// instead of per write, and the writes run here rather than in their callers,
/// so a caller that gives up (a dropped future) never leaves half a write.
pub(super) async fn run_writer(pool: SqlitePool, mut rx: mpsc::Receiver<WriteOp>) {
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
                Done::DeleteTask(reply, delete_task_in(&mut tx, id).await)
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
