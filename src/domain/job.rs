//! A job, what may happen to it, and the event each change appends.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event_data::{
    event_data, status_data, CancelledData, FailedData, ProgressData, ResultData,
};

use super::{EventSeq, JobId, JobStatus, Timestamp};

/// The names of the events in a job's stream. `error` is deliberately not one of
/// them: browsers' EventSource uses that name for its own connection errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Status,
    Progress,
    Result,
    Failed,
    Cancelled,
    /// One piece of a job's output (`{item, index, at}`).
    Item,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Progress => "progress",
            EventKind::Result => "result",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::Item => "item",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Status,
            EventKind::Progress,
            EventKind::Result,
            EventKind::Failed,
            EventKind::Cancelled,
            EventKind::Item,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The terminal events: exactly one of them ends every job's stream.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Result | EventKind::Failed | EventKind::Cancelled
        )
    }
}

/// A progress report. `percent` is checked to lie in 0..=100 when it is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub data: Option<Value>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("progress percent must be a number from 0 to 100, got {0}")]
pub struct BadPercent(pub f64);

impl Progress {
    pub fn new(
        percent: Option<f64>,
        stage: Option<String>,
        message: Option<String>,
        data: Option<Value>,
    ) -> Result<Progress, BadPercent> {
        if let Some(p) = percent {
            if !p.is_finite() || !(0.0..=100.0).contains(&p) {
                return Err(BadPercent(p));
            }
        }
        Ok(Progress {
            percent,
            stage,
            message,
            data,
        })
    }
}

/// Why a job (or one attempt of it) failed: a stable snake_case code and a sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: String,
    pub kind: String,
    pub status: JobStatus,
    pub input: Value,
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    pub error: Option<JobError>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_secs: Option<i64>,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub last_seq: EventSeq,
    /// How many items the job has appended, over all its attempts.
    pub items_count: i64,
    /// While queued: when its next attempt may start (a retry waits out its
    /// backoff in the queue). The queue claims due jobs in this order. Once
    /// started: when the running attempt started.
    pub run_at: Timestamp,
    /// Run by a worker outside herald (a kind in `HERALD_REMOTE_KINDS`):
    /// only a worker's claim takes it, and while it runs it follows its
    /// lease (see `lease.rs`), not a node's.
    pub remote: bool,
    /// The `worker_id` of the remote worker that claimed it last.
    pub worker: Option<String>,
    /// The lease that worker holds; cleared when herald takes the job back.
    pub lease: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
}

/// An event about to be appended: its name and its one-line JSON data (with `at`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub seq: EventSeq,
    pub kind: EventKind,
    pub data: String,
    pub at: Timestamp,
}

/// Something that happens to a job. Each one appends exactly one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A worker starts the current attempt.
    Start,
    Progress(Progress),
    /// The running attempt appends one item (its JSON, serialized); its index
    /// is the job's `items_count`.
    Item(String),
    /// The attempt failed and another one will run (`attempt + 1`), once
    /// the delay (the backoff) has passed.
    Retry(JobError, std::time::Duration),
    /// The attempt was interrupted by a shutdown: back to the queue, same attempt.
    Requeue,
    Succeed(Value),
    Fail(JobError),
    Cancel {
        reason: String,
    },
}

impl Transition {
    /// The name of the event this transition appends.
    pub fn event_kind(&self) -> EventKind {
        match self {
            Transition::Start | Transition::Retry(..) | Transition::Requeue => EventKind::Status,
            Transition::Progress(_) => EventKind::Progress,
            Transition::Item(_) => EventKind::Item,
            Transition::Succeed(_) => EventKind::Result,
            Transition::Fail(_) => EventKind::Failed,
            Transition::Cancel { .. } => EventKind::Cancelled,
        }
    }
}

/// A transition the job's state does not allow (most often: it is already terminal).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("job is {status}; cannot {action}")]
pub struct Refused {
    pub status: JobStatus,
    pub action: &'static str,
}

impl JobRecord {
    /// The first event of every job: `queued`, attempt 1.
    pub fn created_event(&self) -> NewEvent {
        NewEvent {
            seq: EventSeq(1),
            kind: EventKind::Status,
            data: status_data(JobStatus::Queued, self.attempt, self.created_at, None),
            at: self.created_at,
        }
    }

    /// Whether another attempt may follow a failed one.
    pub fn has_attempts_left(&self) -> bool {
        self.attempt < self.max_attempts
    }

    /// Applies `ts` in turn at `now`: each step's job and event, the last job
    /// being what is stored, or `Refused` at the first step the state does
    /// not allow (then none of them is written).
    pub fn apply_all(
        &self,
        ts: &[Transition],
        now: Timestamp,
    ) -> Result<Vec<(JobRecord, NewEvent)>, Refused> {
        let mut steps: Vec<(JobRecord, NewEvent)> = Vec::with_capacity(ts.len());
        for t in ts {
            let step = steps.last().map_or(self, |(job, _)| job).apply(t, now)?;
            steps.push(step);
        }
        Ok(steps)
    }

    /// Applies `t` at `now`: the job as it will be stored and the event to append
    /// with the next sequence number, or `Refused` when the state does not allow it.
    pub fn apply(&self, t: &Transition, now: Timestamp) -> Result<(JobRecord, NewEvent), Refused> {
        let mut next = self.clone();
        let seq = self.last_seq.next();
        let refuse = |action| Refused {
            status: self.status,
            action,
        };
        let (kind, data) = match t {
            Transition::Start => {
                if !self.status.can_become(JobStatus::Running) {
                    return Err(refuse("start"));
                }
                next.status = JobStatus::Running;
                next.started_at.get_or_insert(now);
                next.run_at = now;
                (
                    EventKind::Status,
                    status_data(JobStatus::Running, next.attempt, now, None),
                )
            }
            Transition::Progress(p) => {
                if !self.status.accepts_progress() {
                    return Err(refuse("report progress"));
                }
                next.progress = Some(p.clone());
                let data = event_data(&ProgressData {
                    at: now.to_rfc3339(),
                    data: &p.data,
                    message: &p.message,
                    percent: p.percent,
                    stage: &p.stage,
                });
                (EventKind::Progress, data)
            }
            Transition::Item(item) => {
                if !self.status.accepts_progress() {
                    return Err(refuse("append an item"));
                }
                next.items_count += 1;
                // `item` is already JSON: spliced in as it is, not parsed again.
                let data = format!(
                    r#"{{"item":{item},"index":{},"at":"{}"}}"#,
                    self.items_count,
                    now.to_rfc3339()
                );
                (EventKind::Item, data)
            }
            Transition::Retry(err, delay) => {
                if !self.status.can_become(JobStatus::Queued) {
                    return Err(refuse("retry"));
                }
                next.status = JobStatus::Queued;
                next.attempt += 1;
                next.run_at = now.after(*delay);
                (
                    EventKind::Status,
                    status_data(JobStatus::Queued, next.attempt, now, Some(err)),
                )
            }
            Transition::Requeue => {
                if !self.status.can_become(JobStatus::Queued) {
                    return Err(refuse("requeue"));
                }
                next.status = JobStatus::Queued;
                next.run_at = now;
                (
                    EventKind::Status,
                    status_data(JobStatus::Queued, next.attempt, now, None),
                )
            }
            Transition::Succeed(result) => {
                if !self.status.can_become(JobStatus::Succeeded) {
                    return Err(refuse("succeed"));
                }
                next.status = JobStatus::Succeeded;
                next.result = Some(result.clone());
                next.finished_at = Some(now);
                let data = event_data(&ResultData {
                    at: now.to_rfc3339(),
                    result,
                });
                (EventKind::Result, data)
            }
            Transition::Fail(err) => {
                if !self.status.can_become(JobStatus::Failed) {
                    return Err(refuse("fail"));
                }
                next.status = JobStatus::Failed;
                next.error = Some(err.clone());
                next.finished_at = Some(now);
                let data = event_data(&FailedData {
                    at: now.to_rfc3339(),
                    attempt: next.attempt,
                    error: err,
                });
                (EventKind::Failed, data)
            }
            Transition::Cancel { reason } => {
                if !self.status.can_become(JobStatus::Cancelled) {
                    return Err(refuse("cancel"));
                }
                next.status = JobStatus::Cancelled;
                next.finished_at = Some(now);
                let data = event_data(&CancelledData {
                    at: now.to_rfc3339(),
                    reason,
                });
                (EventKind::Cancelled, data)
            }
        };
        next.last_seq = seq;
        Ok((
            next,
            NewEvent {
                seq,
                kind,
                data,
                at: now,
            },
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests;
