//! Response and request DTOs, as the OpenAPI document shows them.

use poem::IntoResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{Enum, Object};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{JobRecord, JobStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[oai(rename = "JobStatus", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobStatusDto {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<JobStatus> for JobStatusDto {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Queued => JobStatusDto::Queued,
            JobStatus::Running => JobStatusDto::Running,
            JobStatus::Succeeded => JobStatusDto::Succeeded,
            JobStatus::Failed => JobStatusDto::Failed,
            JobStatus::Cancelled => JobStatusDto::Cancelled,
        }
    }
}

impl From<JobStatusDto> for JobStatus {
    fn from(s: JobStatusDto) -> Self {
        match s {
            JobStatusDto::Queued => JobStatus::Queued,
            JobStatusDto::Running => JobStatus::Running,
            JobStatusDto::Succeeded => JobStatus::Succeeded,
            JobStatusDto::Failed => JobStatus::Failed,
            JobStatusDto::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// A job submission.
#[derive(Debug, Clone, Object)]
#[oai(rename = "SubmitJob")]
pub struct SubmitJobDto {
    /// The job kind, e.g. `demo`.
    pub kind: String,
    /// The kind's input; each kind's schema is in `GET /v1/kinds` (and below, keyed on `kind`).
    pub input: Value,
    /// Submitting again with the same key answers 200 with the same job (409 if
    /// the kind, input, max_attempts or timeout_secs differ). 1 to 255
    /// characters, without NUL.
    #[oai(
        nullable,
        validator(min_length = 1, max_length = 255, pattern = r"^[^\x00]*$")
    )]
    pub idempotency_key: Option<String>,
    /// 1 to 20; default HERALD_DEFAULT_MAX_ATTEMPTS (3).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "20")))]
    pub max_attempts: Option<i32>,
    /// Limit for each attempt, in seconds (1 to 604800, a week); a timeout is
    /// a failed attempt with code `timeout`. None by default.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "604800")))]
    pub timeout_secs: Option<i64>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Progress")]
pub struct ProgressDto {
    /// 0 to 100, or null when the handler does not know.
    #[oai(nullable)]
    pub percent: Option<f64>,
    #[oai(nullable)]
    pub stage: Option<String>,
    #[oai(nullable)]
    pub message: Option<String>,
    /// Anything the handler adds, as JSON; null when it adds nothing.
    #[oai(nullable)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "JobError")]
pub struct JobErrorDto {
    /// Stable snake_case code, e.g. `timeout`, `demo_failure`, `result_too_large`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "JobLinks")]
pub struct LinksDto {
    #[oai(rename = "self")]
    #[serde(rename = "self")]
    pub self_: String,
    /// The job's Server-Sent Events stream.
    pub events: String,
}

/// A job snapshot. Every field is always present; `null` when not known yet.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Job")]
pub struct JobDto {
    pub id: Uuid,
    pub kind: String,
    pub status: JobStatusDto,
    pub input: Value,
    /// The latest progress report; null until the first one.
    #[oai(nullable)]
    pub progress: Option<ProgressDto>,
    /// What the job answered; null until it succeeds.
    #[oai(nullable)]
    pub result: Option<Value>,
    /// Why the job failed; null unless it failed.
    #[oai(nullable)]
    pub error: Option<JobErrorDto>,
    /// The current (or last) attempt, from 1.
    pub attempt: i32,
    pub max_attempts: i32,
    /// Limit for each attempt, in seconds; null when it has none.
    #[oai(nullable)]
    pub timeout_secs: Option<i64>,
    pub cancel_requested: bool,
    /// RFC 3339, UTC, microseconds.
    pub created_at: String,
    /// When the first attempt started; null while it has not.
    #[oai(nullable)]
    pub started_at: Option<String>,
    /// When the job ended; null while it has not.
    #[oai(nullable)]
    pub finished_at: Option<String>,
    /// The id of the job's latest event: resume its stream from here.
    pub last_event_id: i64,
    /// How many items the job has appended (`GET /v1/jobs/{id}/items`).
    pub items_count: i64,
    /// The `worker_id` of the remote worker that claimed it last; null for
    /// a kind herald runs itself, or before a worker claims it.
    #[oai(nullable)]
    pub worker: Option<String>,
    pub links: LinksDto,
}

impl From<&JobRecord> for JobDto {
    fn from(j: &JobRecord) -> Self {
        let self_ = format!("/v1/jobs/{}", j.id);
        JobDto {
            id: j.id.0,
            kind: j.kind.clone(),
            status: j.status.into(),
            input: j.input.clone(),
            progress: j.progress.as_ref().map(|p| ProgressDto {
                percent: p.percent,
                stage: p.stage.clone(),
                message: p.message.clone(),
                data: p.data.clone(),
            }),
            result: j.result.clone(),
            error: j.error.as_ref().map(|e| JobErrorDto {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            timeout_secs: j.timeout_secs,
            cancel_requested: j.cancel_requested,
            created_at: j.created_at.to_rfc3339(),
            started_at: j.started_at.map(|t| t.to_rfc3339()),
            finished_at: j.finished_at.map(|t| t.to_rfc3339()),
            last_event_id: j.last_seq.0,
            items_count: j.items_count,
            worker: j.worker.clone(),
            links: LinksDto {
                events: format!("{self_}/events"),
                self_,
            },
        }
    }
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "JobList")]
pub struct JobListDto {
    /// Newest first.
    pub items: Vec<JobDto>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "Health")]
pub struct HealthDto {
    /// `ok` or `ready`.
    pub status: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "StreamToken")]
pub struct StreamTokenDto {
    /// Pass as `?token=` on the job's events URL.
    pub token: String,
    /// The job's events URL with the token in it, ready for `new EventSource(…)`.
    pub events_url: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// A JSON body written straight from `T`'s serde form, and documented as
/// poem-openapi's `Json<T>` is (same content type, `T`'s schema). `Json<T>`
/// first builds a `serde_json::Value` of the whole object (a map with a
/// `String` key for every field, the input copied into it) and then writes
/// that: for a submit's answer that was about a tenth of the job's CPU. `T`'s
/// serde form must be its `ToJSON` form; the job DTOs derive both with the
/// same names, and the API tests read these answers against the document.
pub struct JsonAnswer<T>(pub T);

/// The content type of a [`JsonAnswer`], as of poem-openapi's `Json`.
const JSON: &str = "application/json; charset=utf-8";

impl<T: Type> Payload for JsonAnswer<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn check_content_type(content_type: &str) -> bool {
        <poem_openapi::payload::Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for JsonAnswer<T> {
    fn into_response(self) -> poem::Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => poem::Response::builder().content_type(JSON).body(body),
            Err(e) => {
                tracing::error!(error = %e, "a response body did not serialize");
                poem::Response::builder()
                    .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
                    .finish()
            }
        }
    }
}
