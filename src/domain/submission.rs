//! A job submission (`POST /v1/jobs`): parsed from the request's JSON and checked
//! in one place, so every error names its field with a JSON pointer.

use serde::Serialize;
use serde_json::Value;

use super::{fields, EventSeq, JobRecord, JobStatus, NewEvent, Timestamp};

/// One invalid field: where it is in the request body and what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

pub const MAX_ATTEMPTS_LIMIT: i64 = 20;
/// One week: an attempt that needs longer is better split into several jobs.
pub const MAX_TIMEOUT_SECS: i64 = 7 * 24 * 3600;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What a submission did.
#[derive(Debug)]
pub enum Submitted {
    Created(JobRecord),
    /// Created and started at once (see [`Submission::start`]).
    Started(Box<StartedAtOnce>),
    /// The same idempotency key with the same request: the earlier job.
    Existing(JobRecord),
    /// The same idempotency key with a different request.
    Conflict(JobRecord),
}

/// A job a submission stored started ([`Submitted::Started`]).
#[derive(Debug)]
pub struct StartedAtOnce {
    /// The job as accepted: `queued`, its first event
    /// ([`JobRecord::created_event`]) stored.
    pub queued: JobRecord,
    /// The job as stored: `running`, after `start`.
    pub running: JobRecord,
    /// Its start event (seq 2).
    pub start: NewEvent,
}

/// A validated submission, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The id the job gets; new when not given (an upload names its job
    /// before the body is stored).
    pub job_id: Option<super::JobId>,
    pub kind: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub max_attempts: i32,
    pub timeout_secs: Option<i64>,
    /// Its kind is run by remote workers (set by the jobs service from the
    /// kind, whatever the caller says).
    pub remote: bool,
    /// Store the job started, as a claim would (its `queued` and `running`
    /// events in the same write), unless due jobs wait in the queue: set by
    /// the jobs service when a worker of this node has a free slot for it.
    /// A store may store it queued instead; its answer says which.
    pub start: bool,
}

impl Submission {
    /// Checks the body's shape. The kind's own input rules are checked by the
    /// worker registry afterwards.
    pub fn parse(body: &Value, default_max_attempts: i32) -> Result<Submission, Vec<FieldError>> {
        let obj = fields::object(body, "", "{\"kind\": \"demo\", \"input\": {...}}")?;
        let mut errors = Vec::new();
        fields::unknown_fields(
            obj,
            &[
                "kind",
                "input",
                "idempotency_key",
                "max_attempts",
                "timeout_secs",
            ],
            "",
            &mut errors,
        );
        let kind = match obj.get("kind") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                errors.push(FieldError::new("/kind", "must not be empty"));
                None
            }
            Some(_) => {
                errors.push(FieldError::new(
                    "/kind",
                    "must be a string naming a job kind",
                ));
                None
            }
            None => {
                errors.push(FieldError::new("/kind", "is required"));
                None
            }
        };
        let input = match obj.get("input") {
            Some(v) => Some(v.clone()),
            None => {
                errors.push(FieldError::new(
                    "/input",
                    "is required (use {} for a kind that takes no input)",
                ));
                None
            }
        };
        let idempotency_key = match obj.get("idempotency_key") {
            None | Some(Value::Null) => None,
            // Characters, not bytes: what a client's schema validator counts.
            // No NUL: PostgreSQL's text cannot hold one.
            Some(Value::String(s))
                if !s.is_empty()
                    && s.chars().count() <= MAX_IDEMPOTENCY_KEY_LEN
                    && !s.contains('\0') =>
            {
                Some(s.clone())
            }
            Some(_) => {
                errors.push(FieldError::new(
                    "/idempotency_key",
                    format!("must be a string of 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters, without NUL"),
                ));
                None
            }
        };
        let max_attempts =
            fields::whole_number(obj, "max_attempts", 1..=MAX_ATTEMPTS_LIMIT, "", &mut errors)
                .map(|v| v as i32)
                .unwrap_or(default_max_attempts);
        let timeout_secs =
            fields::whole_number(obj, "timeout_secs", 1..=MAX_TIMEOUT_SECS, "", &mut errors);

        match (kind, input) {
            (Some(kind), Some(input)) if errors.is_empty() => Ok(Submission {
                job_id: None,
                kind,
                input,
                idempotency_key,
                max_attempts,
                timeout_secs,
                remote: false,
                start: false,
            }),
            _ => Err(errors),
        }
    }

    /// The job this submission creates for `tenant` at `now`: `queued`, at
    /// its first attempt, with its first event still to append
    /// ([`JobRecord::created_event`]).
    pub fn new_job(&self, tenant: &str, now: Timestamp) -> JobRecord {
        JobRecord {
            id: self.job_id.unwrap_or_default(),
            tenant: tenant.to_owned(),
            kind: self.kind.clone(),
            status: JobStatus::Queued,
            input: self.input.clone(),
            progress: None,
            result: None,
            error: None,
            attempt: 1,
            max_attempts: self.max_attempts,
            timeout_secs: self.timeout_secs,
            cancel_requested: false,
            idempotency_key: self.idempotency_key.clone(),
            created_at: now,
            started_at: None,
            finished_at: None,
            last_seq: EventSeq(1),
            items_count: 0,
            run_at: now,
            remote: self.remote,
            worker: None,
            lease: None,
            lease_expires_at: None,
        }
    }

    /// The answer to this submission when `existing` already holds its
    /// idempotency key: that job, if this asks for the same one, else a
    /// conflict.
    pub fn resubmitted(&self, existing: JobRecord) -> Submitted {
        let same = self.same_request(
            &existing.kind,
            &existing.input,
            existing.max_attempts,
            existing.timeout_secs,
        );
        if same {
            Submitted::Existing(existing)
        } else {
            Submitted::Conflict(existing)
        }
    }

    /// Whether `self` asks for the same job as an earlier submission with the same
    /// idempotency key: same kind, input, max_attempts and timeout_secs, compared as
    /// JSON values (so key order and `1.0` vs `1` do not matter).
    fn same_request(
        &self,
        kind: &str,
        input: &Value,
        max_attempts: i32,
        timeout_secs: Option<i64>,
    ) -> bool {
        self.kind == kind
            && json_equal(&self.input, input)
            && self.max_attempts == max_attempts
            && self.timeout_secs == timeout_secs
    }
}

/// Numbers compare by value (`1` equals `1.0`); everything else structurally.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// RFC 6901: `~` becomes `~0` and `/` becomes `~1` inside a pointer segment.
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_minimal_submission_gets_defaults() {
        let s = Submission::parse(&json!({"kind": "demo", "input": {"steps": 1}}), 3).unwrap();
        assert_eq!(s.kind, "demo");
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.timeout_secs, None);
        assert_eq!(s.idempotency_key, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let errs = Submission::parse(
            &json!({"input": 1, "max_attempts": 0, "timeout_secs": "x", "idempotency_key": 5, "colour": 1}),
            3,
        )
        .unwrap_err();
        let pointers: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        for p in [
            "/kind",
            "/max_attempts",
            "/timeout_secs",
            "/idempotency_key",
            "/colour",
        ] {
            assert!(pointers.contains(&p), "{p} missing from {pointers:?}");
        }
    }

    #[test]
    fn bounds_on_attempts() {
        assert!(
            Submission::parse(&json!({"kind": "k", "input": {}, "max_attempts": 20}), 3).is_ok()
        );
        assert!(
            Submission::parse(&json!({"kind": "k", "input": {}, "max_attempts": 21}), 3).is_err()
        );
        assert!(
            Submission::parse(&json!({"kind": "k", "input": {}, "max_attempts": 2.5}), 3).is_err()
        );
    }

    #[test]
    fn not_an_object() {
        let errs = Submission::parse(&json!([1]), 3).unwrap_err();
        assert_eq!(errs[0].pointer, "");
    }

    #[test]
    fn same_request_compares_json_values() {
        let s = Submission::parse(&json!({"kind": "k", "input": {"a": 1, "b": [1.0]}}), 3).unwrap();
        assert!(s.same_request("k", &json!({"b": [1], "a": 1.0}), 3, None));
        assert!(!s.same_request("k", &json!({"b": [1], "a": 2}), 3, None));
        assert!(!s.same_request("k", &json!({"b": [1], "a": 1}), 4, None));
        assert!(!s.same_request("j", &json!({"b": [1], "a": 1}), 3, None));
    }

    #[test]
    fn a_new_job_is_queued_at_its_first_attempt() {
        let mut s = Submission::parse(
            &json!({"kind": "k", "input": {"a": 1}, "idempotency_key": "x", "max_attempts": 5, "timeout_secs": 9}),
            3,
        )
        .unwrap();
        let id = crate::domain::JobId::new();
        s.job_id = Some(id);
        let job = s.new_job("acme", Timestamp(42));
        assert_eq!(job.id, id);
        assert_eq!((job.tenant.as_str(), job.kind.as_str()), ("acme", "k"));
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.input, json!({"a": 1}));
        assert_eq!((job.attempt, job.max_attempts), (1, 5));
        assert_eq!(job.timeout_secs, Some(9));
        assert_eq!(job.idempotency_key.as_deref(), Some("x"));
        assert_eq!(job.created_at, Timestamp(42));
        assert_eq!(job.last_seq, EventSeq(1));
        assert!(!job.cancel_requested);
        assert!(job.progress.is_none() && job.result.is_none() && job.error.is_none());
        assert!(job.started_at.is_none() && job.finished_at.is_none());
        assert_eq!(job.created_event().seq, EventSeq(1));
    }

    #[test]
    fn a_job_without_an_id_gets_a_new_one() {
        let s = Submission::parse(&json!({"kind": "k", "input": {}}), 3).unwrap();
        assert_ne!(
            s.new_job("", Timestamp(1)).id,
            s.new_job("", Timestamp(1)).id
        );
    }

    #[test]
    fn the_same_key_answers_the_earlier_job_or_a_conflict() {
        let first = Submission::parse(
            &json!({"kind": "k", "input": {"a": 1}, "idempotency_key": "x"}),
            3,
        )
        .unwrap()
        .new_job("", Timestamp(1));
        let same = Submission::parse(
            &json!({"kind": "k", "input": {"a": 1.0}, "idempotency_key": "x"}),
            3,
        )
        .unwrap();
        assert!(
            matches!(same.resubmitted(first.clone()), Submitted::Existing(j) if j.id == first.id)
        );
        let other = Submission::parse(
            &json!({"kind": "k", "input": {"a": 2}, "idempotency_key": "x"}),
            3,
        )
        .unwrap();
        assert!(
            matches!(other.resubmitted(first.clone()), Submitted::Conflict(j) if j.id == first.id)
        );
    }

    #[test]
    fn pointer_escaping() {
        assert_eq!(escape_pointer("a/b~c"), "a~1b~0c");
    }
}
