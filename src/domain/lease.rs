//! Remote jobs and their leases (DESIGN.md, "Remote workers"): what a
//! worker's report, the lease sweep or a cancel's deadline does to a remote
//! job, decided from the job as stored. The store reads the job and writes
//! the plan in one transaction, so a report never lands on an attempt that
//! is not its own.

use std::time::Duration;

use serde_json::Value;

use super::{JobError, JobRecord, JobStatus, Progress, Timestamp, Transition};

/// What a worker holding a lease reports (`POST /v1/worker/jobs/{id}/…`).
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Heartbeat,
    Progress(Progress),
    /// Items from index `offset` on, each its JSON text.
    Items {
        offset: i64,
        items: Vec<String>,
    },
    Checkpoint(String),
    Complete(Value),
    Fail {
        error: JobError,
        retryable: bool,
    },
    /// The worker acknowledges a cancel (or gives up on its own).
    Cancelled,
    /// The worker gives the job back without spending an attempt.
    Release,
}

impl Report {
    /// The name of the report (its path segment), for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Report::Heartbeat => "heartbeat",
            Report::Progress(_) => "progress",
            Report::Items { .. } => "items",
            Report::Checkpoint(_) => "checkpoint",
            Report::Complete(_) => "complete",
            Report::Fail { .. } => "fail",
            Report::Cancelled => "cancelled",
            Report::Release => "release",
        }
    }
}

/// A change of a remote job under its lease.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOp {
    /// A report from the worker presenting `lease`.
    Report { lease: String, report: Report },
    /// The sweep: the lease ran out, the attempt's `timeout_secs` passed, or
    /// a cancel went unanswered past its deadline. Herald takes the job back.
    TakeBack,
    /// A cancel was requested at `now`: the worker has until `at` to stop
    /// (then [`LeaseOp::TakeBack`] ends the job `cancelled`).
    CancelDeadline { at: Timestamp },
}

/// The lease rules that come from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTerms {
    /// `HERALD_REMOTE_LEASE_SECS`: a lease lasts this long from the last report.
    pub lease_for: Duration,
    /// `HERALD_RETRY_BACKOFF_MS`: the first retry's delay (doubling, at most 60 s).
    pub retry_backoff: Duration,
    /// `HERALD_MAX_ITEMS_PER_JOB`.
    pub max_items: i64,
}

impl LeaseTerms {
    /// The delay before the attempt after `failed_attempt`, as for a
    /// handler's failure.
    pub fn backoff(&self, failed_attempt: i32) -> Duration {
        let factor = 2u32.saturating_pow((failed_attempt - 1).max(0) as u32);
        self.retry_backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(60))
    }
}

/// What becomes of the lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeaseWrite {
    Keep,
    /// A new expiry (a report extends the lease; a cancel sets a deadline).
    ExpiresAt(Timestamp),
    /// Herald takes the job back: every later report is `lease_lost`.
    Void,
}

/// A lease op, decided: the transitions to apply (each appends its event),
/// the lease's new state, the checkpoint to store.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasePlan {
    pub ts: Vec<Transition>,
    pub lease: LeaseWrite,
    pub checkpoint: Option<String>,
}

impl LeasePlan {
    /// Changes nothing (a repeated final report, a sweep that came late).
    pub fn nothing() -> LeasePlan {
        LeasePlan {
            ts: Vec::new(),
            lease: LeaseWrite::Keep,
            checkpoint: None,
        }
    }

    pub fn changes_nothing(&self) -> bool {
        self.ts.is_empty() && self.lease == LeaseWrite::Keep && self.checkpoint.is_none()
    }
}

/// Why a lease op was refused; nothing is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseRefused {
    #[error(
        "the lease is not (or no longer) this job's: the job was taken back or has ended; drop it"
    )]
    LeaseLost,
    #[error("items must continue at index {items_count}; this request starts at {offset}")]
    OffsetGap { offset: i64, items_count: i64 },
    #[error("the job may append at most {max} items (HERALD_MAX_ITEMS_PER_JOB)")]
    TooManyItems { max: i64 },
}

impl JobRecord {
    /// Whether this job's running attempt has outlived its lease or its
    /// `timeout_secs` at `now` (a remote attempt starts at `run_at`).
    pub fn lease_over(&self, now: Timestamp) -> bool {
        self.remote
            && self.status == JobStatus::Running
            && (self.lease_expires_at.is_none_or(|at| at <= now) || self.timed_out(now))
    }

    fn timed_out(&self, now: Timestamp) -> bool {
        self.timeout_secs
            .is_some_and(|secs| self.run_at.after(Duration::from_secs(secs.max(0) as u64)) <= now)
    }

    /// Decides `op` on this job (as stored) at `now`.
    pub fn plan_lease_op(
        &self,
        op: &LeaseOp,
        now: Timestamp,
        terms: &LeaseTerms,
    ) -> Result<LeasePlan, LeaseRefused> {
        match op {
            LeaseOp::Report { lease, report } => self.plan_report(lease, report, now, terms),
            LeaseOp::TakeBack => Ok(self.plan_take_back(now, terms)),
            LeaseOp::CancelDeadline { at } => {
                if !(self.remote && self.status == JobStatus::Running && self.lease.is_some()) {
                    return Ok(LeasePlan::nothing());
                }
                let later = self.lease_expires_at.map_or(*at, |t| t.max(*at));
                Ok(LeasePlan {
                    ts: Vec::new(),
                    lease: LeaseWrite::ExpiresAt(later),
                    checkpoint: None,
                })
            }
        }
    }

    fn plan_report(
        &self,
        lease: &str,
        report: &Report,
        now: Timestamp,
        terms: &LeaseTerms,
    ) -> Result<LeasePlan, LeaseRefused> {
        if !self.remote || self.lease.as_deref() != Some(lease) {
            return Err(LeaseRefused::LeaseLost);
        }
        if self.status != JobStatus::Running {
            // The holder's own final report ended the attempt (herald clears
            // the lease when it takes a job back): the same report again is
            // answered as before and changes nothing; any other is too late.
            let repeated = match report {
                Report::Complete(_) => self.status == JobStatus::Succeeded,
                Report::Fail { .. } => {
                    matches!(self.status, JobStatus::Failed | JobStatus::Queued)
                }
                Report::Cancelled => self.status == JobStatus::Cancelled,
                Report::Release => self.status == JobStatus::Queued,
                _ => false,
            };
            return if repeated {
                Ok(LeasePlan::nothing())
            } else {
                Err(LeaseRefused::LeaseLost)
            };
        }
        if self.lease_over(now) {
            // The sweep takes it back at its next round.
            return Err(LeaseRefused::LeaseLost);
        }
        // After a cancel request the deadline stands: reports do not push it.
        let extended = if self.cancel_requested {
            LeaseWrite::Keep
        } else {
            LeaseWrite::ExpiresAt(now.after(terms.lease_for))
        };
        let plan = |ts: Vec<Transition>| LeasePlan {
            ts,
            lease: extended,
            checkpoint: None,
        };
        Ok(match report {
            Report::Heartbeat => plan(Vec::new()),
            Report::Progress(p) => plan(vec![Transition::Progress(p.clone())]),
            Report::Items { offset, items } => {
                if *offset > self.items_count {
                    return Err(LeaseRefused::OffsetGap {
                        offset: *offset,
                        items_count: self.items_count,
                    });
                }
                // Items below the count were appended by an earlier try of
                // this request: skipped, so a retry never appends twice.
                let skip = (self.items_count - offset) as usize;
                let new: Vec<Transition> = items
                    .iter()
                    .skip(skip)
                    .map(|item| Transition::Item(item.clone()))
                    .collect();
                if self.items_count + new.len() as i64 > terms.max_items {
                    return Err(LeaseRefused::TooManyItems {
                        max: terms.max_items,
                    });
                }
                plan(new)
            }
            Report::Checkpoint(c) => LeasePlan {
                checkpoint: Some(c.clone()),
                ..plan(Vec::new())
            },
            Report::Complete(result) => LeasePlan {
                lease: LeaseWrite::Keep,
                ..plan(vec![Transition::Succeed(result.clone())])
            },
            Report::Fail { error, retryable } => {
                let t = if *retryable && self.has_attempts_left() {
                    Transition::Retry(error.clone(), terms.backoff(self.attempt))
                } else {
                    Transition::Fail(error.clone())
                };
                LeasePlan {
                    lease: LeaseWrite::Keep,
                    ..plan(vec![t])
                }
            }
            Report::Cancelled => {
                let reason = if self.cancel_requested {
                    "cancel requested"
                } else {
                    "cancelled by its worker"
                };
                LeasePlan {
                    lease: LeaseWrite::Keep,
                    ..plan(vec![Transition::Cancel {
                        reason: reason.to_owned(),
                    }])
                }
            }
            Report::Release => LeasePlan {
                lease: LeaseWrite::Keep,
                ..plan(vec![Transition::Requeue])
            },
        })
    }

    /// The sweep's decision: a running remote job whose lease ran out goes
    /// back to the queue as its next attempt (`worker_lost`, or `failed`
    /// after its last); one past its `timeout_secs` fails the attempt with
    /// `timeout`, retried by the usual rules; one whose cancel went
    /// unanswered ends `cancelled`. The lease is void in every case. Nothing,
    /// if the job is not (or no longer) over its lease.
    fn plan_take_back(&self, now: Timestamp, terms: &LeaseTerms) -> LeasePlan {
        if !self.lease_over(now) {
            return LeasePlan::nothing();
        }
        let retry_or_fail = |error: JobError, delay: Duration| {
            if self.has_attempts_left() {
                Transition::Retry(error, delay)
            } else {
                Transition::Fail(error)
            }
        };
        let t = if self.cancel_requested {
            Transition::Cancel {
                reason:
                    "cancel requested; the worker did not confirm in time, so herald ended the job"
                        .to_owned(),
            }
        } else if self.timed_out(now) {
            let secs = self.timeout_secs.unwrap_or_default();
            retry_or_fail(
                JobError::new(
                    "timeout",
                    format!(
                        "attempt {} did not finish within timeout_secs={secs}",
                        self.attempt
                    ),
                ),
                terms.backoff(self.attempt),
            )
        } else {
            retry_or_fail(
                JobError::new(
                    "worker_lost",
                    format!(
                        "attempt {} was interrupted: worker `{}` stopped reporting for longer than its lease",
                        self.attempt,
                        self.worker.as_deref().unwrap_or("?")
                    ),
                ),
                Duration::ZERO,
            )
        };
        LeasePlan {
            ts: vec![t],
            lease: LeaseWrite::Void,
            checkpoint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::job::tests::job;
    use super::*;

    const T0: Timestamp = Timestamp(1_000_000_000);

    fn terms() -> LeaseTerms {
        LeaseTerms {
            lease_for: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(500),
            max_items: 5,
        }
    }

    fn leased() -> JobRecord {
        let mut j = job(JobStatus::Running);
        j.remote = true;
        j.worker = Some("py-1".into());
        j.lease = Some("L1".into());
        j.lease_expires_at = Some(T0.after(Duration::from_secs(10)));
        j.run_at = T0;
        j
    }

    fn report(r: Report) -> LeaseOp {
        LeaseOp::Report {
            lease: "L1".into(),
            report: r,
        }
    }

    fn items(offset: i64, n: usize) -> Report {
        Report::Items {
            offset,
            items: (0..n).map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn a_report_with_the_lease_extends_it() {
        let plan = leased()
            .plan_lease_op(&report(Report::Heartbeat), T0, &terms())
            .unwrap();
        assert_eq!(plan.ts, []);
        assert_eq!(
            plan.lease,
            LeaseWrite::ExpiresAt(T0.after(Duration::from_secs(30)))
        );
    }

    #[test]
    fn another_lease_or_a_lapsed_one_is_lost() {
        let other = LeaseOp::Report {
            lease: "L2".into(),
            report: Report::Heartbeat,
        };
        assert_eq!(
            leased().plan_lease_op(&other, T0, &terms()),
            Err(LeaseRefused::LeaseLost)
        );
        let late = T0.after(Duration::from_secs(11));
        assert_eq!(
            leased().plan_lease_op(&report(Report::Heartbeat), late, &terms()),
            Err(LeaseRefused::LeaseLost)
        );
        let mut local = leased();
        local.remote = false;
        assert_eq!(
            local.plan_lease_op(&report(Report::Heartbeat), T0, &terms()),
            Err(LeaseRefused::LeaseLost)
        );
    }

    #[test]
    fn items_below_the_count_are_skipped_and_a_gap_is_refused() {
        let mut j = leased();
        j.items_count = 2;
        // A retried request [0, 1, 2]: only index 2 is new.
        let plan = j.plan_lease_op(&report(items(0, 3)), T0, &terms()).unwrap();
        assert_eq!(plan.ts, [Transition::Item("2".into())]);
        // All of it already there: nothing appended, the lease extended.
        let plan = j.plan_lease_op(&report(items(0, 2)), T0, &terms()).unwrap();
        assert_eq!(plan.ts, []);
        assert_eq!(
            j.plan_lease_op(&report(items(3, 1)), T0, &terms()),
            Err(LeaseRefused::OffsetGap {
                offset: 3,
                items_count: 2
            })
        );
        assert_eq!(
            j.plan_lease_op(&report(items(2, 4)), T0, &terms()),
            Err(LeaseRefused::TooManyItems { max: 5 })
        );
    }

    #[test]
    fn a_failure_retries_by_the_usual_rules() {
        let fail = |retryable| {
            report(Report::Fail {
                error: JobError::new("down", "the API is down"),
                retryable,
            })
        };
        let plan = leased().plan_lease_op(&fail(true), T0, &terms()).unwrap();
        assert!(matches!(&plan.ts[..], [Transition::Retry(e, d)]
            if e.code == "down" && *d == Duration::from_millis(500)));
        assert_eq!(plan.lease, LeaseWrite::Keep);
        let plan = leased().plan_lease_op(&fail(false), T0, &terms()).unwrap();
        assert!(matches!(&plan.ts[..], [Transition::Fail(_)]));
        let mut last = leased();
        last.attempt = last.max_attempts;
        let plan = last.plan_lease_op(&fail(true), T0, &terms()).unwrap();
        assert!(matches!(&plan.ts[..], [Transition::Fail(_)]));
    }

    #[test]
    fn the_same_final_report_again_changes_nothing_and_others_are_too_late() {
        let (done, _) = leased().apply(&Transition::Succeed(json!(1)), T0).unwrap();
        let again = done.plan_lease_op(&report(Report::Complete(json!(1))), T0, &terms());
        assert_eq!(again, Ok(LeasePlan::nothing()));
        for other in [Report::Heartbeat, Report::Cancelled, items(0, 1)] {
            assert_eq!(
                done.plan_lease_op(&report(other), T0, &terms()),
                Err(LeaseRefused::LeaseLost)
            );
        }
        let (released, _) = leased().apply(&Transition::Requeue, T0).unwrap();
        assert_eq!(
            released.plan_lease_op(&report(Report::Release), T0, &terms()),
            Ok(LeasePlan::nothing())
        );
    }

    #[test]
    fn the_sweep_takes_back_lapsed_timed_out_and_unheard_cancels() {
        let lapsed = T0.after(Duration::from_secs(10));
        assert_eq!(
            leased().plan_lease_op(&LeaseOp::TakeBack, T0, &terms()),
            Ok(LeasePlan::nothing()),
            "a live lease is left alone"
        );
        let plan = leased()
            .plan_lease_op(&LeaseOp::TakeBack, lapsed, &terms())
            .unwrap();
        assert!(matches!(&plan.ts[..], [Transition::Retry(e, d)]
            if e.code == "worker_lost" && d.is_zero()));
        assert_eq!(plan.lease, LeaseWrite::Void);

        let mut timed = leased();
        timed.timeout_secs = Some(2);
        let plan = timed
            .plan_lease_op(
                &LeaseOp::TakeBack,
                T0.after(Duration::from_secs(2)),
                &terms(),
            )
            .unwrap();
        assert!(matches!(&plan.ts[..], [Transition::Retry(e, _)] if e.code == "timeout"));

        let mut cancelled = leased();
        cancelled.cancel_requested = true;
        let plan = cancelled
            .plan_lease_op(&LeaseOp::TakeBack, lapsed, &terms())
            .unwrap();
        assert!(matches!(&plan.ts[..], [Transition::Cancel { .. }]));
    }

    #[test]
    fn after_a_cancel_reports_keep_the_deadline() {
        let mut j = leased();
        let deadline = T0.after(Duration::from_secs(40));
        let plan = j
            .plan_lease_op(&LeaseOp::CancelDeadline { at: deadline }, T0, &terms())
            .unwrap();
        assert_eq!(plan.lease, LeaseWrite::ExpiresAt(deadline));
        j.cancel_requested = true;
        j.lease_expires_at = Some(deadline);
        let plan = j
            .plan_lease_op(&report(Report::Heartbeat), T0, &terms())
            .unwrap();
        assert_eq!(plan.lease, LeaseWrite::Keep);
    }
}
