//! Group commit on SQLite's one write connection: every write of the store
//! goes through the writer (a [`Group`] with one writer task).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use super::checkpoint::Checkpoints;
use super::remote::{claim_remote_in, lease_op_in};
use super::tail::{Keep, Tail, TailEvent};
use super::uploads::{unit_write, UnitWrite};
use super::writes::direct::{self, Direct};
use super::writes::{cancel_in, purge_in};
use crate::domain::{JobId, JobRecord, LeaseOp, LeaseTerms, Submission, Timestamp, Transition};
use crate::store::group::{Batching, Flush, Group};
use crate::store::{
    Applied, ApplyError, CancelOutcome, Claim, LeaseError, Leased, RemoteClaim, StoreError,
    Submitted,
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

impl WriteOp {
    /// One of the job path's writes, which a batch runs on the connection's
    /// handle, a run of them at a time (see `writes/direct.rs`); the others
    /// go through sqlx.
    fn is_direct(&self) -> bool {
        matches!(
            self,
            WriteOp::Submit { .. }
                | WriteOp::Apply { .. }
                | WriteOp::ApplyKnown { .. }
                | WriteOp::Claim { .. }
        )
    }
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

/// The events after `?1` (at most `?2`), each with its job's tenant and kind:
/// a range of the rowid and a lookup by id each, of pages the batch wrote.
pub(super) const TAIL_AFTER: &str = "SELECT e.id, e.job_id, e.seq, e.event, e.data, e.at, \
       j.tenant, j.kind \
     FROM herald_job_events e LEFT JOIN herald_jobs j ON j.id = e.job_id \
     WHERE e.id > ?1 ORDER BY e.id LIMIT ?2";

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
            direct: std::sync::Mutex::default(),
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
    /// The job path's batches run here, on the connection's handle. First,
    /// so that it is dropped first: its statements are finalized before the
    /// pool can close the connection (sqlx panics on a handle that still
    /// has statements).
    direct: std::sync::Mutex<Direct>,
    pool: SqlitePool,
    checkpoints: Checkpoints,
    /// The feed's tail: what each batch appended, read back while feeds read.
    tail: Arc<Tail>,
}

/// What a batch appended for the feeds' tail, or where the tail starts over.
type ReadBack = Result<(Vec<TailEvent>, Option<i64>), StoreError>;

impl Writer {
    /// Runs `ops` (all of them [`WriteOp::is_direct`]) in `tx` on the
    /// connection's handle, taken from sqlx's thread for the while; and,
    /// with `back`, reads back what the batch appended for the tail.
    async fn run_direct(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        ops: &[WriteOp],
        back: Option<(Keep, bool)>,
    ) -> Result<(Vec<Answer>, Option<ReadBack>), sqlx::Error> {
        let mut handle = tx.lock_handle().await?;
        let mut direct = self.direct.lock().expect("direct connection poisoned");
        let conn = direct.over(handle.as_raw_handle());
        let done = ops
            .iter()
            .map(|op| match op {
                WriteOp::Submit { tenant, sub } => {
                    Answer::Submitted(direct::submit(conn, tenant, sub))
                }
                WriteOp::Apply { id, t } => Answer::Applied(direct::apply(conn, *id, t)),
                WriteOp::ApplyKnown { known, ts } => {
                    Answer::AppliedAll(direct::apply_known(conn, known, ts))
                }
                WriteOp::Claim { limit } => Answer::Claimed(direct::claim(conn, *limit)),
                other => Answer::failed(other, &|| {
                    StoreError::WriteFailed("this write does not run on the handle".to_owned())
                }),
            })
            .collect();
        let back = back.map(|(keep, swept)| direct::read_back(conn, keep, swept));
        Ok((done, back))
    }

    /// Runs `op`, one of the rarer writes, in `tx` through sqlx (a round trip
    /// to its connection's thread per statement).
    async fn run_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        op: &WriteOp,
    ) -> Answer {
        match op {
            WriteOp::Cancel { id, reason } => Answer::Cancel(cancel_in(tx, *id, reason).await),
            WriteOp::Purge { before, limit } => Answer::Purged(purge_in(tx, *before, *limit).await),
            WriteOp::ClaimRemote(c) => Answer::ClaimedRemote(claim_remote_in(tx, c).await),
            WriteOp::Lease { id, op, terms } => {
                Answer::Leased(lease_op_in(tx, *id, op, terms).await)
            }
            WriteOp::Unit(write) => Answer::Done(unit_write(tx, write).await),
            direct => Answer::failed(direct, &|| {
                StoreError::WriteFailed("this write runs on the handle only".to_owned())
            }),
        }
    }
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
        let swept = ops.iter().any(|op| matches!(op, WriteOp::Purge { .. }));
        let back = match keep {
            Keep::Off => None,
            keep => Some((keep, swept)),
        };
        // The job path's writes run on the handle, a run of them at a time;
        // the others through sqlx, in turn. The read-back goes with the last
        // run (or alone, after a batch that ends with one of the others).
        let mut done = Vec::with_capacity(ops.len());
        let mut read = None;
        let mut rest = ops;
        loop {
            let n = rest.iter().take_while(|op| op.is_direct()).count();
            let last = n == rest.len();
            if n > 0 || (last && back.is_some()) {
                match self
                    .run_direct(&mut tx, &rest[..n], back.filter(|_| last))
                    .await
                {
                    Ok((answers, b)) => {
                        done.extend(answers);
                        read = b;
                    }
                    Err(e) => {
                        // The transaction is rolled back: nothing of the batch stays.
                        tracing::error!(error = %e, "could not take the write connection's handle");
                        let e = batch_failed("could not take the connection's handle", &e);
                        return Ok(ops.iter().map(|op| Answer::failed(op, &e)).collect());
                    }
                }
            }
            let Some((op, after)) = rest[n..].split_first() else {
                break;
            };
            done.push(self.run_sqlx(&mut tx, op).await);
            rest = after;
        }
        let back = read;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobId, Submitted};
    use crate::store::sqlite::{connect, migrate};
    use crate::store::CancelOutcome;

    /// A batch that mixes the job path's writes (on the handle) with another
    /// (through sqlx) runs them in turn in one transaction: each sees the
    /// ones before it, and each is answered after its kind.
    #[tokio::test]
    async fn a_mixed_batch_runs_its_writes_in_turn() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let pools = connect(&url).await.expect("open the test file");
        migrate(&pools.writer).await.expect("migrate");
        let writer = Writer {
            direct: std::sync::Mutex::default(),
            pool: pools.writer.clone(),
            checkpoints: Checkpoints::start(pools.checkpointer.clone()),
            tail: Arc::new(Tail::default()),
        };
        let submit = |kind: &str| {
            let body = serde_json::json!({"kind": kind, "input": {}});
            WriteOp::Submit {
                tenant: "acme".to_owned(),
                sub: Submission::parse(&body, 3).expect("a valid submission"),
            }
        };
        let ops = vec![
            submit("a"),
            submit("b"),
            WriteOp::Cancel {
                id: JobId::new(),
                reason: "none such".to_owned(),
            },
            submit("c"),
            WriteOp::Claim { limit: 10 },
        ];
        let mut answers = writer.flush(&ops).await.expect("the batch").into_iter();
        let mut created = Vec::new();
        for _ in 0..2 {
            match answers.next().expect("an answer").submitted() {
                Ok(Submitted::Created(job)) => created.push(job.id),
                Ok(other) => panic!("a new queued job, not {other:?}"),
                Err(e) => panic!("submitted: {e}"),
            }
        }
        let cancel = answers.next().expect("an answer").cancel().expect("cancel");
        assert!(matches!(cancel, CancelOutcome::NotFound), "{cancel:?}");
        match answers.next().expect("an answer").submitted() {
            Ok(Submitted::Created(job)) => created.push(job.id),
            other => panic!("a new queued job, not {other:?}"),
        }
        let claim = answers.next().expect("an answer").claimed().expect("claim");
        let started: Vec<JobId> = claim.started.iter().map(|a| a.job.id).collect();
        assert_eq!(started, created, "the claim starts all three, oldest first");
        assert!(!claim.more);

        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT status, last_seq, (SELECT count(*) FROM herald_job_events e \
             WHERE e.job_id = j.id) FROM herald_jobs j ORDER BY run_at, id",
        )
        .fetch_all(&pools.reader)
        .await
        .expect("read back");
        assert_eq!(rows, vec![("running".to_owned(), 2, 2); 3]);

        // The writer goes first, as when the store stops: the connection
        // then closes cleanly (sqlx's thread would panic on a handle with
        // statements still open, and nothing else would tell).
        let unfinalized = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = unfinalized.clone();
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.to_string().contains("unfinalized statements") {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            before(info);
        }));
        drop(writer);
        pools.writer.close().await;
        let _ = std::panic::take_hook();
        assert!(
            !unfinalized.load(std::sync::atomic::Ordering::SeqCst),
            "the write connection closed with statements still open"
        );
    }
}
