//! `/v1/worker/*`: the remote-worker API (DESIGN.md, "Remote workers"). A
//! worker claims jobs with a long poll and reports under each job's lease;
//! the rules live in `domain::lease` and `remote`, this only translates.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;
use uuid::Uuid;

use super::body::JsonBody;
use super::error::ApiError;
use super::ApiTags;
use super::AppState;
use crate::domain::{JobId, JobRecord, LeaseRefused};
use crate::remote::{parse_report, ClaimError, ClaimRequest, WorkerPrincipal};
use crate::store::{LeaseError, Leased};

pub struct WorkerApi;

/// `POST /v1/worker/claim`'s body.
#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerClaim")]
pub struct ClaimDto {
    /// Remote kinds (`HERALD_REMOTE_KINDS`) this worker runs.
    pub kinds: Vec<String>,
    /// The worker's own name for itself; shown on the job as `worker`.
    pub worker_id: String,
    /// 1 to 100 (default 1).
    pub max_jobs: Option<i64>,
    /// How long to wait for a job, 0 to 60 s (default 25).
    pub wait_secs: Option<i64>,
}

/// A job handed to a worker.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ClaimedJob")]
pub struct ClaimedJobDto {
    pub job_id: Uuid,
    pub kind: String,
    pub input: Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// The submitting tenant's name.
    pub tenant: String,
    /// Send it with every report on this job.
    pub lease: String,
    /// RFC 3339; each report extends it by `HERALD_REMOTE_LEASE_SECS`.
    pub lease_expires_at: String,
    /// What earlier attempts saved (`/checkpoint`); null if nothing.
    #[oai(nullable)]
    pub checkpoint: Option<Value>,
    /// Items earlier attempts appended: the next item's `offset`.
    pub items_count: i64,
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "ClaimedJobs")]
pub struct ClaimedJobsDto {
    /// Empty when nothing came within `wait_secs`.
    pub jobs: Vec<ClaimedJobDto>,
}

/// Every report's body has the lease; each report adds its own fields.
#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerLease")]
pub struct LeaseDto {
    pub lease: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerProgress")]
pub struct ProgressReportDto {
    pub lease: String,
    /// 0 to 100.
    pub percent: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub data: Option<Value>,
    /// Write this report as its own event (default: coalesced, as a
    /// handler's progress is).
    pub keep: Option<bool>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerItems")]
pub struct ItemsReportDto {
    pub lease: String,
    /// The index the first item gets. Items below the job's `items_count`
    /// were appended already (a retried request) and are skipped; above it
    /// is 409 `item_offset_gap`.
    pub offset: i64,
    pub items: Vec<Value>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerCheckpoint")]
pub struct CheckpointReportDto {
    pub lease: String,
    /// Any JSON: handed to the next attempt's claim.
    pub checkpoint: Value,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerComplete")]
pub struct CompleteReportDto {
    pub lease: String,
    pub result: Value,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerError")]
pub struct WorkerErrorDto {
    /// snake_case.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerFail")]
pub struct FailReportDto {
    pub lease: String,
    pub error: WorkerErrorDto,
    /// Another attempt may follow (default true), by the usual rules.
    pub retryable: Option<bool>,
}

/// What every report answers.
#[derive(Debug, Clone, Object)]
#[oai(rename = "WorkerReportAnswer")]
pub struct ReportAnswerDto {
    /// Stop, then report `/cancelled`.
    pub cancel_requested: bool,
    /// RFC 3339; null once the job has ended.
    #[oai(nullable)]
    pub lease_expires_at: Option<String>,
    pub status: String,
    pub attempt: i32,
    /// Items the job has: the next item's `offset`.
    pub items_count: i64,
}

#[derive(ApiResponse)]
pub enum ClaimResponse {
    #[oai(status = 200)]
    Ok(Json<ClaimedJobsDto>),
}

#[derive(ApiResponse)]
pub enum ReportResponse {
    #[oai(status = 200)]
    Ok(Json<ReportAnswerDto>),
}

impl From<ClaimError> for ApiError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::KindNotAllowed(_) => ApiError::Http {
                status: poem::http::StatusCode::FORBIDDEN,
                code: "forbidden",
                detail: e.to_string(),
            },
            ClaimError::Store(e) => e.into(),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::NotFound => ApiError::NotFound(
                "no job with that id; a worker reports only on jobs it claimed".to_owned(),
            ),
            LeaseError::Refused(r @ LeaseRefused::LeaseLost) => ApiError::Conflict {
                code: "lease_lost",
                detail: r.to_string(),
            },
            LeaseError::Refused(r @ LeaseRefused::OffsetGap { .. }) => ApiError::Conflict {
                code: "item_offset_gap",
                detail: format!("{r}: send the items from `items_count` on"),
            },
            LeaseError::Refused(r @ LeaseRefused::TooManyItems { .. }) => ApiError::Invalid {
                code: "too_many_items",
                detail: r.to_string(),
                errors: vec![crate::domain::FieldError::new("/items", r.to_string())],
            },
            LeaseError::Store(e) => e.into(),
        }
    }
}

fn answer(leased: &Leased) -> ReportResponse {
    let job = &leased.job;
    ReportResponse::Ok(Json(ReportAnswerDto {
        cancel_requested: job.cancel_requested,
        lease_expires_at: (job.status == crate::domain::JobStatus::Running)
            .then_some(job.lease_expires_at)
            .flatten()
            .map(|t| t.to_rfc3339()),
        status: job.status.as_str().to_owned(),
        attempt: job.attempt,
        items_count: job.items_count,
    }))
}

async fn claimed(state: &AppState, job: JobRecord) -> Result<ClaimedJobDto, ApiError> {
    // Stored as JSON text; a handler's checkpoint that is not JSON goes as a string.
    let checkpoint = state
        .store
        .checkpoint(job.id)
        .await?
        .map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)));
    Ok(ClaimedJobDto {
        job_id: job.id.0,
        kind: job.kind,
        input: job.input,
        attempt: job.attempt,
        tenant: job.tenant,
        lease: job.lease.unwrap_or_default(),
        lease_expires_at: job
            .lease_expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        checkpoint,
        items_count: job.items_count,
        cancel_requested: job.cancel_requested,
    })
}

/// A report `name` on job `id`, from `body`.
async fn report(
    state: &AppState,
    worker: &WorkerPrincipal,
    id: Uuid,
    name: &str,
    body: &Value,
) -> Result<ReportResponse, ApiError> {
    let (lease, report, keep) =
        parse_report(name, body, state.config.max_item_bytes).map_err(|errors| {
            ApiError::Invalid {
                code: "validation_failed",
                detail: format!("the {name} report is invalid; see `errors`"),
                errors,
            }
        })?;
    tracing::debug!(worker = %worker.name, job_id = %id, report = name, "worker report");
    let leased = state.remote.report(JobId(id), lease, report, keep).await?;
    Ok(answer(&leased))
}

#[OpenApi(tag = "ApiTags::Workers")]
impl WorkerApi {
    /// Claim jobs (long poll)
    ///
    /// Takes up to `max_jobs` queued jobs of the given remote kinds, each
    /// with a lease, and makes them `running`. Answers as soon as a job is
    /// there, or with `{"jobs": []}` after `wait_secs`. Needs a worker key.
    #[oai(path = "/v1/worker/claim", method = "post")]
    async fn claim(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        body: JsonBody<ClaimDto>,
    ) -> Result<ClaimResponse, ApiError> {
        let req = ClaimRequest::parse(&body.value, state.remote.kinds()).map_err(|errors| {
            ApiError::Invalid {
                code: "validation_failed",
                detail: "the claim is invalid; see `errors`".to_owned(),
                errors,
            }
        })?;
        let jobs = state.remote.claim(worker.0, &req).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(claimed(state.0, job).await?);
        }
        Ok(ClaimResponse::Ok(Json(ClaimedJobsDto { jobs: out })))
    }

    /// Heartbeat: extend the lease
    #[oai(path = "/v1/worker/jobs/:id/heartbeat", method = "post")]
    async fn heartbeat(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<LeaseDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "heartbeat", &body.value).await
    }

    /// Report progress
    ///
    /// Coalesced like a handler's progress (at most one event per
    /// `HERALD_PROGRESS_MIN_INTERVAL_MS`, the last one wins) unless `keep`.
    #[oai(path = "/v1/worker/jobs/:id/progress", method = "post")]
    async fn progress(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<ProgressReportDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "progress", &body.value).await
    }

    /// Append items
    ///
    /// `offset` is the index the first item should get: a retried request
    /// never appends an item twice. Answers the job's `items_count`.
    #[oai(path = "/v1/worker/jobs/:id/items", method = "post")]
    async fn items(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<ItemsReportDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "items", &body.value).await
    }

    /// Save a checkpoint
    ///
    /// Where the work stands; a later attempt's claim carries it.
    #[oai(path = "/v1/worker/jobs/:id/checkpoint", method = "post")]
    async fn checkpoint(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<CheckpointReportDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "checkpoint", &body.value).await
    }

    /// Complete: the job succeeded
    ///
    /// Repeating it with the same lease answers 200 again and changes nothing.
    #[oai(path = "/v1/worker/jobs/:id/complete", method = "post")]
    async fn complete(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<CompleteReportDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "complete", &body.value).await
    }

    /// Fail the attempt
    ///
    /// Another attempt follows (back to `queued`) or the job fails, by the
    /// same rules as a handler's failure.
    #[oai(path = "/v1/worker/jobs/:id/fail", method = "post")]
    async fn fail(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<FailReportDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "fail", &body.value).await
    }

    /// Confirm a cancel: the job is `cancelled`
    #[oai(path = "/v1/worker/jobs/:id/cancelled", method = "post")]
    async fn cancelled(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<LeaseDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "cancelled", &body.value).await
    }

    /// Release: give the job back
    ///
    /// Back to `queued` without spending an attempt (a worker shutting down).
    #[oai(path = "/v1/worker/jobs/:id/release", method = "post")]
    async fn release(
        &self,
        state: Data<&AppState>,
        worker: Data<&WorkerPrincipal>,
        id: Path<Uuid>,
        body: JsonBody<LeaseDto>,
    ) -> Result<ReportResponse, ApiError> {
        report(state.0, worker.0, id.0, "release", &body.value).await
    }
}

/// `/v1/worker/*` bodies may be as large as a result
/// (`HERALD_MAX_RESULT_BYTES`, a result or a batch of items), not
/// `HERALD_MAX_BODY_BYTES`.
pub(super) async fn worker_body_limit<E: poem::Endpoint>(
    ep: std::sync::Arc<E>,
    mut req: poem::Request,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    if req.uri().path().starts_with("/v1/worker/") {
        let state = req.data::<AppState>().expect("state is attached");
        // The result sits inside a report's body, with its lease.
        let limit = state.config.max_result_bytes.saturating_add(4096);
        req.set_data(super::body::BodyLimit(limit));
    }
    Ok(ep.call(req).await?.into_response())
}
