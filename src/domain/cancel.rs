//! What asking to cancel a job does to it, by its state (DESIGN.md: a queued
//! job becomes `cancelled` at once, a running one gets `cancel_requested`, a
//! terminal one is refused).

use super::{JobRecord, JobStatus, NewEvent, Timestamp, Transition};

/// What a cancel request means for a job in its current state.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelDecision {
    /// Queued: it becomes `cancelled` at once; the job as it will be stored
    /// and the event to append.
    CancelNow(JobRecord, NewEvent),
    /// Running: the job with `cancel_requested` set, to be stored; the
    /// running attempt is told to stop, and may still finish first.
    Request(JobRecord),
    /// Already terminal: nothing changes (409).
    Terminal,
}

impl JobRecord {
    /// Decides what cancelling the job at `now` does, for `reason`.
    pub fn cancel(&self, reason: &str, now: Timestamp) -> CancelDecision {
        if self.status == JobStatus::Running {
            return CancelDecision::Request(JobRecord {
                cancel_requested: true,
                ..self.clone()
            });
        }
        // Every other state that may become `cancelled` (queued) does so at
        // once; the states that may not are the terminal ones.
        let t = Transition::Cancel {
            reason: reason.to_owned(),
        };
        match self.apply(&t, now) {
            Ok((next, event)) => CancelDecision::CancelNow(next, event),
            Err(_) => CancelDecision::Terminal,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::job::tests::job;
    use super::*;
    use crate::domain::{EventKind, EventSeq};

    #[test]
    fn a_queued_job_is_cancelled_now_with_its_event() {
        let CancelDecision::CancelNow(next, ev) =
            job(JobStatus::Queued).cancel("asked", Timestamp(7))
        else {
            panic!("a queued job is cancelled at once");
        };
        assert_eq!(next.status, JobStatus::Cancelled);
        assert_eq!(next.finished_at, Some(Timestamp(7)));
        assert_eq!(next.last_seq, EventSeq(2));
        assert_eq!((ev.seq, ev.kind), (EventSeq(2), EventKind::Cancelled));
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(data["reason"], "asked");
    }

    #[test]
    fn a_running_job_gets_a_request_and_keeps_running() {
        let running = job(JobStatus::Running);
        let CancelDecision::Request(next) = running.cancel("asked", Timestamp(7)) else {
            panic!("a running job gets cancel_requested");
        };
        assert!(next.cancel_requested);
        assert_eq!(next.status, JobStatus::Running);
        assert_eq!(next.last_seq, running.last_seq, "no event is appended");
    }

    #[test]
    fn a_terminal_job_is_refused() {
        for st in [
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_eq!(
                job(st).cancel("asked", Timestamp(7)),
                CancelDecision::Terminal,
                "{st}"
            );
        }
    }
}
