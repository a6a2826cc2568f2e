//! What becomes of a job whose attempt was interrupted: its process stopped,
//! or its node's lease ran out, before the attempt ended (DESIGN.md: a re-run
//! after a crash or lost lease counts the next attempt).

use super::{JobError, JobRecord, JobStatus, Transition};

impl JobRecord {
    /// The transition that recovers the job, whose running attempt was
    /// interrupted because `why`: back to `queued` with the next attempt
    /// while attempts are left, else `failed` with `worker_lost`. `None`
    /// when it is not running any more (someone else recovered it first).
    /// A remote job follows its lease alone, never a node's: `None` too.
    pub fn interrupted(&self, why: &str) -> Option<Transition> {
        if self.status != JobStatus::Running || self.remote {
            return None;
        }
        let lost = JobError::new(
            "worker_lost",
            format!("attempt {} was interrupted: {why}", self.attempt),
        );
        Some(if self.has_attempts_left() {
            Transition::Retry(lost, std::time::Duration::ZERO)
        } else {
            Transition::Fail(lost)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::job::tests::job;
    use super::*;

    #[test]
    fn an_interrupted_attempt_is_retried_while_attempts_are_left() {
        let t = job(JobStatus::Running).interrupted("it stopped");
        let Some(Transition::Retry(err, _)) = t else {
            panic!("expected a retry, got {t:?}");
        };
        assert_eq!(err.code, "worker_lost");
        assert_eq!(err.message, "attempt 1 was interrupted: it stopped");
    }

    #[test]
    fn an_interrupted_last_attempt_fails_the_job() {
        let mut last = job(JobStatus::Running);
        last.attempt = last.max_attempts;
        let t = last.interrupted("it stopped");
        let Some(Transition::Fail(err)) = t else {
            panic!("expected a failure, got {t:?}");
        };
        assert_eq!(err.code, "worker_lost");
        assert_eq!(err.message, "attempt 3 was interrupted: it stopped");
    }

    #[test]
    fn a_job_that_is_not_running_is_left_alone() {
        for st in [
            JobStatus::Queued,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_eq!(job(st).interrupted("it stopped"), None, "{st}");
        }
    }
}
