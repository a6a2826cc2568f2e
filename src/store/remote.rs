//! What both backends share for remote workers: the claim's request, a lease
//! op's outcome, and the plan a lease op writes (decided in
//! `domain::lease`, applied here, written by each backend in one
//! transaction with the read it was decided on).

use std::time::Duration;

use super::{Applied, StoreError};
use crate::domain::{
    JobRecord, LeaseOp, LeaseRefused, LeaseTerms, LeaseWrite, NewEvent, Timestamp,
};

/// A remote worker's claim (`POST /v1/worker/claim`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteClaim {
    /// Remote kinds it runs (never empty).
    pub kinds: Vec<String>,
    /// Only these tenants' jobs (a worker key limited to them); `None`: any.
    pub tenants: Option<Vec<String>>,
    /// The worker's own name for itself, recorded on the job.
    pub worker: String,
    pub limit: usize,
    pub lease_for: Duration,
}

/// What a lease op did: the job as it now is, and the events it appended.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub job: JobRecord,
    pub applied: Vec<Applied>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("job not found")]
    NotFound,
    #[error(transparent)]
    Refused(#[from] LeaseRefused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> Self {
        LeaseError::Store(e.into())
    }
}

/// A lease op decided and applied to `job` (as read in the op's
/// transaction): the steps to write (each its job and event; the last job
/// is the row to store), the row's lease and checkpoint afterwards, or
/// `None` when it changes nothing.
pub(super) struct LeaseWrites {
    pub steps: Vec<(JobRecord, NewEvent)>,
    /// The job as the op leaves it, lease fields included.
    pub job: JobRecord,
    pub checkpoint: Option<String>,
}

impl LeaseWrites {
    pub(super) fn plan(
        job: JobRecord,
        op: &LeaseOp,
        now: Timestamp,
        terms: &LeaseTerms,
    ) -> Result<Option<LeaseWrites>, LeaseError> {
        let plan = job.plan_lease_op(op, now, terms)?;
        if plan.changes_nothing() {
            return Ok(None);
        }
        // The plan was made from this very row: a refusal here means the
        // row cannot take it any more, which is a lost lease to the worker.
        let steps = job
            .apply_all(&plan.ts, now)
            .map_err(|_| LeaseRefused::LeaseLost)?;
        let mut last = steps.last().map_or(job, |(j, _)| j.clone());
        match plan.lease {
            LeaseWrite::Keep => {}
            LeaseWrite::ExpiresAt(at) => last.lease_expires_at = Some(at),
            LeaseWrite::Void => {
                last.lease = None;
                last.lease_expires_at = None;
            }
        }
        Ok(Some(LeaseWrites {
            steps,
            job: last,
            checkpoint: plan.checkpoint,
        }))
    }

    pub(super) fn into_leased(self) -> Leased {
        Leased {
            job: self.job,
            applied: self
                .steps
                .into_iter()
                .map(|(job, event)| Applied { job, event })
                .collect(),
        }
    }
}

/// A new lease: 128 random bits, as hex.
pub(super) fn new_lease() -> String {
    let mut bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The claim's jobs, started for `c.worker` at `now`: each with a lease of
/// its own. `head` holds each kind's first due jobs (run_at order within a
/// kind); the claim takes the oldest `c.limit` of them all.
pub(super) fn start_remote(
    mut head: Vec<JobRecord>,
    c: &RemoteClaim,
    now: Timestamp,
) -> Result<Vec<(crate::domain::EventSeq, Applied)>, StoreError> {
    head.sort_by_key(|j| (j.run_at, j.id));
    head.truncate(c.limit);
    head.into_iter()
        .map(|job| {
            let (mut next, event) =
                job.apply(&crate::domain::Transition::Start, now)
                    .map_err(|refused| {
                        StoreError::Corrupt(format!(
                            "queued job {} cannot start: {refused}",
                            job.id
                        ))
                    })?;
            next.worker = Some(c.worker.clone());
            next.lease = Some(new_lease());
            next.lease_expires_at = Some(now.after(c.lease_for));
            Ok((job.last_seq, Applied { job: next, event }))
        })
        .collect()
}
