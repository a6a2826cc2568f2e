//! The job state machine: which status may follow which.

use std::fmt;
use std::str::FromStr;

/// Where a job is in its life.
///
/// `queued → running → succeeded | failed | cancelled`; a retry, a requeue at
/// shutdown and a re-run after a crash go `running → queued`. A queued job can be
/// cancelled at once. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Whether a job in `self` may move to `next`. Progress reports are not
    /// transitions; they are allowed only while `running` (see [`Self::accepts_progress`]).
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Running, Queued)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
        )
    }

    pub fn accepts_progress(self) -> bool {
        self == JobStatus::Running
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a job status (queued, running, succeeded, failed, cancelled)")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::JobStatus::{self, *};

    #[test]
    fn every_allowed_transition() {
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Queued),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for from in [Succeeded, Failed, Cancelled] {
            assert!(from.is_terminal());
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be refused");
            }
            assert!(!from.accepts_progress());
        }
    }

    #[test]
    fn queued_cannot_skip_to_an_outcome() {
        assert!(!Queued.can_become(Succeeded));
        assert!(!Queued.can_become(Failed));
        assert!(!Queued.accepts_progress());
        assert!(Running.accepts_progress());
    }

    #[test]
    fn names_round_trip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
        }
        assert!("done".parse::<JobStatus>().is_err());
    }
}
