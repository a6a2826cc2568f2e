//! Group commit on SQLite's one write connection: every write of the store
//! goes through the writer (a [`Group`] with one writer task).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use super::checkpoint::Checkpoints;
use super::remote::{claim_remote_in, lease_op_in};
use super::tail::{Keep, Tail, TailEvent, TAIL_EVENTS};
use super::uploads::{unit_write, UnitWrite};
use super::writes::{apply_in, apply_known_in, cancel_in, claim_in, purge_in, submit_in};
use crate::domain::{JobId, JobRecord, LeaseOp, LeaseTerms, Submission, Timestamp, Transition};
use crate::store::group::{Batching, Flush, Group};
use crate::store::row::corrupt;
use crate::store::{
    Applied, ApplyError, CancelOutcome, Claim, LeaseError, Leased, RemoteClaim, StoreError,
    StoredEvent, Submitted,
};

/// A write for the writer task.
pub(super) enum WriteOp {
    Submit {
        tenant: String,
        sub: Submission,
    },
    Apply {
        id: JobId,
        t: Transition,
    },
    /// Transitions of a job the caller knows, in turn, as one write.
    ApplyKnown {
        known: Box<JobRecord>,
        ts: Vec<Transition>,
    },
    Cancel {
        id: JobId,
        reason: String,
    },
    /// The queue's claim: starts up to `limit` due queued jobs.
    Claim {
        limit: usize,
    },
    Purge {
        before: Timestamp,
        limit: i64,
    },
    /// A remote worker's claim.
    ClaimRemote(RemoteClaim),
    /// A remote job's change under its lease.
    Lease {
        id: JobId,
        op: LeaseOp,
        terms: LeaseTerms,
    },
    /// Upload chunks and checkpoints: writes that answer nothing but success.
    Unit(UnitWrite),
}

/// The outcome of one op, sent once its batch has committed.
pub(super) enum Answer {
    Submitted(Result<Submitted, StoreError>),
    Applied(Result<Applied, ApplyError>),
    AppliedAll(Result<Vec<Applied>, ApplyError>),
    Cancel(Result<CancelOutcome, StoreError>),
    Claimed(Result<Claim, StoreError>),
    Purged(Result<usize, StoreError>),
    ClaimedRemote(Result<Vec<Applied>, StoreError>),
    Leased(Result<Leased, LeaseError>),
    Done(Result<(), StoreError>),
}

/// The error each op of a batch is answered with when the batch's
/// transaction could not begin or commit (`e`, while doing `what`).
fn batch_failed(what: &str, e: &sqlx::Error) -> impl Fn() -> StoreError {
    let msg = format!("{what}: {e}");
    let unavailable = crate::store::unavailable(e);
    move || match unavailable {
        true => StoreError::Unavailable(msg.clone()),
        false => StoreError::WriteFailed(msg.clone()),
    }
}

impl Answer {
    /// The op, answered with the error `e` makes: nothing of it was written.
    fn failed(op: &WriteOp, e: &impl Fn() -> StoreError) -> Answer {
        match op {
            WriteOp::Submit { .. } => Answer::Submitted(Err(e())),
            WriteOp::Apply { .. } => Answer::Applied(Err(ApplyError::Store(e()))),
            WriteOp::ApplyKnown { .. } => Answer::AppliedAll(Err(ApplyError::Store(e()))),
            WriteOp::Cancel { .. } => Answer::Cancel(Err(e())),
            WriteOp::Claim { .. } => Answer::Claimed(Err(e())),
            WriteOp::Purge { .. } => Answer::Purged(Err(e())),
            WriteOp::ClaimRemote(_) => Answer::ClaimedRemote(Err(e())),
            WriteOp::Lease { .. } => Answer::Leased(Err(LeaseError::Store(e()))),
            WriteOp::Unit(_) => Answer::Done(Err(e())),
        }
    }

    /// Replaces a success by the error `e` makes (the commit failed:
    /// nothing was written).
    fn fail(self, e: &impl Fn() -> StoreError) -> Answer {
        match self {
            Answer::Submitted(Ok(_)) => Answer::Submitted(Err(e())),
            Answer::Applied(Ok(_)) => Answer::Applied(Err(ApplyError::Store(e()))),
            Answer::AppliedAll(Ok(_)) => Answer::AppliedAll(Err(ApplyError::Store(e()))),
            Answer::Cancel(Ok(_)) => Answer::Cancel(Err(e())),
            Answer::Claimed(Ok(_)) => Answer::Claimed(Err(e())),
            Answer::Purged(Ok(_)) => Answer::Purged(Err(e())),
            Answer::ClaimedRemote(Ok(_)) => Answer::ClaimedRemote(Err(e())),
            Answer::Leased(Ok(_)) => Answer::Leased(Err(LeaseError::Store(e()))),
            Answer::Done(Ok(_)) => Answer::Done(Err(e())),
            other => other,
        }
    }

    pub(super) fn submitted(self) -> Result<Submitted, StoreError> {
        match self {
            Answer::Submitted(r) => r,
            _ => Err(mismatch()),
        }
    }

    pub(super) fn applied(self) -> Result<Applied, ApplyError> {
        match self {
            Answer::Applied(r) => r,
            _ => Err(mismatch().into()),
        }
    }

    pub(super) fn applied_all(self) -> Result<Vec<Applied>, ApplyError> {
        match self {
            Answer::AppliedAll(r) => r,
            _ => Err(mismatch().into()),
        }
    }

    pub(super) fn cancel(self) -> Result<CancelOutcome, StoreError> {
        match self {
            Answer::Cancel(r) => r,
            _ => Err(mismatch()),
        }
    }

    pub(super) fn claimed(self) -> Result<Claim, StoreError> {
        match self {
            Answer::Claimed(r) => r,
            _ => Err(mismatch()),
        }
    }

    pub(super) fn purged(self) -> Result<usize, StoreError> {
        match self {
            Answer::Purged(r) => r,
            _ => Err(mismatch()),
        }
    }

    pub(super) fn claimed_remote(self) -> Result<Vec<Applied>, StoreError> {
        match self {
            Answer::ClaimedRemote(r) => r,
            _ => Err(mismatch()),
        }
    }

    pub(super) fn leased(self) -> Result<Leased, LeaseError> {
        match self {
            Answer::Leased(r) => r,
            _ => Err(mismatch().into()),
        }
    }

    pub(super) fn done(self) -> Result<(), StoreError> {
        match self {
            Answer::Done(r) => r,
            _ => Err(mismatch()),
        }
    }
}

/// The events a batch appended after `keep`'s id, in id order, with their
/// jobs' tenant and kind, for the feed's tail; or, with the id to start the
/// tail over from, none (when it starts, after the retention sweep, or when
/// the batch appended more than the tail keeps).
async fn read_back(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    keep: Keep,
    swept: bool,
) -> Result<(Vec<TailEvent>, Option<i64>), StoreError> {
    let last = match keep {
        Keep::After(last) if !swept => last,
        _ => return Ok((Vec::new(), Some(newest(tx).await?))),
    };
    let rows: Vec<TailRow> = sqlx::query_as(TAIL_AFTER)
        .bind(last)
        .bind(TAIL_EVENTS as i64 + 1)
        .fetch_all(&mut **tx)
        .await?;
    if rows.len() > TAIL_EVENTS {
        return Ok((Vec::new(), Some(newest(tx).await?)));
    }
    let events = rows
        .into_iter()
        .map(|(id, job_id, seq, event, data, at, tenant, kind)| {
            Ok(TailEvent {
                id,
                job_id: job_id.parse().map_err(|e| corrupt("job id", e))?,
                job: tenant.zip(kind),
                event: StoredEvent::try_from((seq, event, data, at))?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((events, None))
}

/// The newest event's id, as the batch leaves it.
async fn newest(tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(super::feed::FEED_HEAD)
        .fetch_one(&mut **tx)
        .await
}

/// The events after `?1` (at most `?2`), each with its job's tenant and kind:
/// a range of the rowid and a lookup by id each, of pages the batch wrote.
pub(super) const TAIL_AFTER: &str = "SELECT e.id, e.job_id, e.seq, e.event, e.data, e.at, \
       j.tenant, j.kind \
     FROM herald_job_events e LEFT JOIN herald_jobs j ON j.id = e.job_id \
     WHERE e.id > ?1 ORDER BY e.id LIMIT ?2";

type TailRow = (
    i64,
    String,
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
);

/// The writer answers each op after its own kind (`Answer::failed` and
/// `write` keep to that); this says so if it ever did not.
fn mismatch() -> StoreError {
    StoreError::Corrupt("the store's writer answered a different kind of write".to_owned())
}

/// The most writes one transaction carries.
const MAX_BATCH: usize = 256;

/// Starts the writer task (so: call it inside a tokio runtime). One writer,
/// since SQLite has one write lock; senders wait once `4 * MAX_BATCH` writes
/// are queued.
pub(super) fn start(pool: SqlitePool, checkpoints: Checkpoints, tail: Arc<Tail>) -> Group<Writer> {
    Group::start(
        Writer {
            pool,
            checkpoints,
            tail,
        },
        Batching {
            writers: 1,
            max_batch: MAX_BATCH,
            capacity: Some(4 * MAX_BATCH),
            linger: None,
        },
    )
}

pub(super) struct Writer {
    pool: SqlitePool,
    checkpoints: Checkpoints,
    /// The feed's tail: what each batch appended, read back while feeds read.
    tail: Arc<Tail>,
}

/// Group commit: takes every write that is waiting, runs them in one
/// transaction (each sees the ones before it), commits, and only then answers
/// them, so an acknowledged write is a committed one. One commit per batch
/// instead of per write, and the writes run here rather than in their callers,
/// so a caller that gives up (a dropped future) never leaves half a write.
#[async_trait]
impl Flush for Writer {
    type Op = WriteOp;
    type Out = Answer;
    type Error = StoreError;

    /// Never fails as a batch: an op's own failure is its answer, and when
    /// the transaction cannot begin or commit, every op is answered with
    /// that. The group's one-by-one retry would only repeat it: with one
    /// writer on one file, what fails a transaction is the file's state (the
    /// lock held elsewhere past the busy timeout, a full disk), not one op.
    async fn flush(&self, ops: &[WriteOp]) -> Result<Vec<Answer>, StoreError> {
        self.checkpoints.before_batch(&self.pool).await;
        let mut tx = match self.pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "could not begin a write transaction");
                let e = batch_failed("could not begin a transaction", &e);
                return Ok(ops.iter().map(|op| Answer::failed(op, &e)).collect());
            }
        };
        let keep = self.tail.keep();
        let mut done = Vec::with_capacity(ops.len());
        for op in ops {
            done.push(match op {
                WriteOp::Submit { tenant, sub } => {
                    Answer::Submitted(submit_in(&mut tx, tenant, sub).await)
                }
                WriteOp::Apply { id, t } => Answer::Applied(apply_in(&mut tx, *id, t).await),
                WriteOp::ApplyKnown { known, ts } => {
                    Answer::AppliedAll(apply_known_in(&mut tx, known, ts).await)
                }
                WriteOp::Cancel { id, reason } => {
                    Answer::Cancel(cancel_in(&mut tx, *id, reason).await)
                }
                WriteOp::Claim { limit } => Answer::Claimed(claim_in(&mut tx, *limit).await),
                WriteOp::Purge { before, limit } => {
                    Answer::Purged(purge_in(&mut tx, *before, *limit).await)
                }
                WriteOp::ClaimRemote(c) => Answer::ClaimedRemote(claim_remote_in(&mut tx, c).await),
                WriteOp::Lease { id, op, terms } => {
                    Answer::Leased(lease_op_in(&mut tx, *id, op, terms).await)
                }
                WriteOp::Unit(write) => Answer::Done(unit_write(&mut tx, write).await),
            });
        }
        let swept = ops.iter().any(|op| matches!(op, WriteOp::Purge { .. }));
        let back = match keep {
            Keep::Off => None,
            _ => Some(read_back(&mut tx, keep, swept).await),
        };
        match tx.commit().await {
            Ok(()) => {
                self.checkpoints.committed();
                match back {
                    Some(Ok((events, start_over))) => self.tail.committed(keep, events, start_over),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "could not read back a batch's events for the feeds; they read the file");
                        self.tail.let_go();
                    }
                    None => {}
                }
                Ok(done)
            }
            Err(e) => {
                tracing::error!(error = %e, writes = done.len(), "write batch failed to commit");
                let e = batch_failed("the commit failed", &e);
                Ok(done.into_iter().map(|d| d.fail(&e)).collect())
            }
        }
    }
}
