//! The job row as both backends read it. Both keep JSON as text (exactly what
//! was written, so an event's data goes out byte for byte) and times as
//! microseconds since the epoch; PostgreSQL selects its uuid id as text.

use super::StoreError;
use super::StoredEvent;
use crate::domain::{EventKind, EventSeq, JobError, JobRecord, Timestamp};

#[derive(Clone, sqlx::FromRow)]
pub(super) struct JobRow {
    pub(super) id: String,
    pub(super) tenant: String,
    pub(super) kind: String,
    pub(super) status: String,
    pub(super) input: String,
    pub(super) progress: Option<String>,
    pub(super) result: Option<String>,
    pub(super) error: Option<String>,
    pub(super) attempt: i64,
    pub(super) max_attempts: i64,
    pub(super) timeout_secs: Option<i64>,
    pub(super) cancel_requested: bool,
    pub(super) idempotency_key: Option<String>,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
    pub(super) last_seq: i64,
    pub(super) items_count: i64,
    pub(super) run_at: i64,
    pub(super) remote: bool,
    pub(super) worker: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) lease_expires_at: Option<i64>,
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: Option<String>,
) -> Result<Option<T>, StoreError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what, e)))
        .transpose()
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        Ok(JobRecord {
            id: r.id.parse().map_err(|e| corrupt("job id", e))?,
            tenant: r.tenant,
            kind: r.kind,
            status: r.status.parse().map_err(|e| corrupt("status", e))?,
            input: serde_json::from_str(&r.input).map_err(|e| corrupt("input", e))?,
            progress: parse_json("progress", r.progress)?,
            result: parse_json("result", r.result)?,
            error: parse_json::<JobError>("error", r.error)?,
            attempt: r.attempt as i32,
            max_attempts: r.max_attempts as i32,
            timeout_secs: r.timeout_secs,
            cancel_requested: r.cancel_requested,
            idempotency_key: r.idempotency_key,
            created_at: Timestamp(r.created_at),
            started_at: r.started_at.map(Timestamp),
            finished_at: r.finished_at.map(Timestamp),
            last_seq: EventSeq(r.last_seq),
            items_count: r.items_count,
            run_at: Timestamp(r.run_at),
            remote: r.remote,
            worker: r.worker,
            lease: r.lease,
            lease_expires_at: r.lease_expires_at.map(Timestamp),
        })
    }
}

pub(super) fn to_json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref()
        .map(|v| serde_json::to_string(v).expect("JSON values serialize"))
}

/// An event row as both backends read it: (seq, event name, data, at).
pub(super) type EventRow = (i64, String, String, i64);

impl TryFrom<EventRow> for StoredEvent {
    type Error = StoreError;
    fn try_from((seq, event, data, at): EventRow) -> Result<Self, StoreError> {
        Ok(StoredEvent {
            seq: EventSeq(seq),
            kind: EventKind::parse(&event).ok_or_else(|| corrupt("event name", &event))?,
            data,
            at: Timestamp(at),
        })
    }
}
