//! `/v1/jobs`: submit, list, get, cancel. Handlers translate between HTTP and
//! the domain; the rules live in `domain` and the store.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::body::JsonBody;
use super::error::ApiError;
use super::models::{JobDto, JobListDto, JobStatusDto, JsonAnswer, StreamTokenDto, SubmitJobDto};
use super::params::{list_cursor, next_list_cursor, ListCursorParam};
use super::ApiTags;
use super::AppState;
use crate::auth::{AuthMode, Tenant};
use crate::domain::{JobId, JobRecord, Submission, Timestamp};
use crate::jobs::Accepted;
use crate::store::{CancelOutcome, ListQuery};

pub struct JobsApi;

#[derive(ApiResponse)]
pub enum SubmitResponse {
    /// Accepted: the job is queued.
    #[oai(status = 202)]
    Accepted(JsonAnswer<JobDto>, #[oai(header = "Location")] String),
    /// The same idempotency key was used before with the same request: that job.
    #[oai(status = 200)]
    Existing(JsonAnswer<JobDto>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum JobResponse {
    #[oai(status = 200)]
    Ok(JsonAnswer<JobDto>),
}

#[derive(ApiResponse)]
pub enum CancelResponse {
    /// Cancelled (it was queued) or asked to stop (it is running).
    #[oai(status = 202)]
    Accepted(JsonAnswer<JobDto>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(JsonAnswer<JobListDto>),
}

fn location(id: JobId) -> String {
    format!("/v1/jobs/{id}")
}

/// Whether a `kind` filter names no kind at all: kind names never hold NUL,
/// and PostgreSQL's text cannot (a query with one fails), so such a filter
/// is answered without asking the store.
pub(super) fn names_no_kind(kind: &Option<String>) -> bool {
    kind.as_deref().is_some_and(|k| k.contains('\0'))
}

/// The job as the API shows it. With authentication on, `links.events` carries
/// a stream token, so a browser's EventSource can open it without headers.
pub fn job_dto(state: &AppState, tenant: &Tenant, job: &JobRecord) -> JobDto {
    let mut dto = JobDto::from(job);
    if state.auth.mode != AuthMode::None {
        let (token, _) = state.auth.mint_stream_token(tenant, job.id);
        dto.links.events = format!("{}?token={token}", dto.links.events);
    }
    dto
}

/// The job if it exists and belongs to `tenant`: another tenant's job is
/// "not found", exactly like a missing one.
pub async fn owned_job(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
) -> Result<JobRecord, ApiError> {
    match state.jobs.get(id).await? {
        Some(job) if job.tenant == tenant.0 => Ok(job),
        _ => Err(ApiError::not_found_job(id)),
    }
}

#[derive(ApiResponse)]
pub enum StreamTokenResponse {
    #[oai(status = 200)]
    Ok(Json<StreamTokenDto>),
}

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Submit a job
    ///
    /// Queues a job of `kind` with `input`. Watch it with `GET /v1/jobs/{id}/events`
    /// (Server-Sent Events) or poll `GET /v1/jobs/{id}`.
    #[oai(path = "/v1/jobs", method = "post")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0))]
    async fn submit(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        body: JsonBody<SubmitJobDto>,
    ) -> Result<SubmitResponse, ApiError> {
        let (state, tenant) = (state.0, tenant.0);
        state.jobs.admit(&tenant.0)?;
        let sub = Submission::parse(&body.value, state.config.default_max_attempts).map_err(
            |errors| ApiError::Invalid {
                code: "validation_failed",
                detail: "the job submission is invalid; see `errors`".to_owned(),
                errors,
            },
        )?;
        Ok(match state.jobs.submit(&tenant.0, sub).await? {
            Accepted::Created(job) => {
                SubmitResponse::Accepted(JsonAnswer(job_dto(state, tenant, &job)), location(job.id))
            }
            Accepted::Existing(job) => {
                SubmitResponse::Existing(JsonAnswer(job_dto(state, tenant, &job)), location(job.id))
            }
        })
    }

    /// List jobs
    ///
    /// Newest first. Pass `next_cursor` back as `cursor` for the next page.
    #[oai(path = "/v1/jobs", method = "get")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0))]
    async fn list(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        /// Only jobs in this status.
        status: Query<Option<JobStatusDto>>,
        /// Only jobs of this kind.
        kind: Query<Option<String>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        /// The previous page's `next_cursor`.
        cursor: Query<Option<ListCursorParam>>,
    ) -> Result<ListResponse, ApiError> {
        let limit = limit.0.unwrap_or(50);
        let before = list_cursor(cursor.0.as_ref().map(|c| c.0.as_str()))?;
        let q = ListQuery {
            tenant: tenant.0 .0.clone(),
            status: status.0.map(Into::into),
            kind: kind.0,
            before,
            // One more than asked shows whether another page exists.
            limit: limit + 1,
        };
        let mut jobs = if names_no_kind(&q.kind) {
            Vec::new()
        } else {
            state.jobs.list(&q).await?
        };
        let more = jobs.len() as i64 > limit;
        jobs.truncate(limit as usize);
        let next_cursor = if more {
            jobs.last().map(|j| next_list_cursor(j.id))
        } else {
            None
        };
        Ok(ListResponse::Ok(JsonAnswer(JobListDto {
            items: jobs.iter().map(|j| job_dto(state.0, tenant.0, j)).collect(),
            next_cursor,
        })))
    }

    /// Get a job
    #[oai(path = "/v1/jobs/:id", method = "get")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0, job_id = %id.0))]
    async fn get(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        id: Path<Uuid>,
    ) -> Result<JobResponse, ApiError> {
        let job = owned_job(state.0, tenant.0, JobId(id.0)).await?;
        Ok(JobResponse::Ok(JsonAnswer(job_dto(
            state.0, tenant.0, &job,
        ))))
    }

    /// Mint a stream token
    ///
    /// A fresh `?token=` for the job's events URL, for clients (browsers) that
    /// cannot send an `Authorization` header on a stream. It is bound to this
    /// job and tenant and expires after HERALD_STREAM_TOKEN_TTL_SECS.
    #[oai(path = "/v1/jobs/:id/stream-token", method = "post")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0, job_id = %id.0))]
    async fn stream_token(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        id: Path<Uuid>,
    ) -> Result<StreamTokenResponse, ApiError> {
        let job = owned_job(state.0, tenant.0, JobId(id.0)).await?;
        Ok(stream_token_response(
            state.0,
            tenant.0,
            job.id.into(),
            &format!("/v1/jobs/{}/events", job.id),
        ))
    }

    /// Cancel a job
    ///
    /// A queued job is cancelled at once; a running one is asked to stop
    /// (`cancel_requested`) and ends `cancelled` unless it finishes first.
    /// Asking again answers 202 again; a job that has ended answers 409.
    #[oai(path = "/v1/jobs/:id/cancel", method = "post")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0, job_id = %id.0))]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        id: Path<Uuid>,
    ) -> Result<CancelResponse, ApiError> {
        let id = JobId(id.0);
        owned_job(state.0, tenant.0, id).await?;
        match state.jobs.cancel(id, "cancelled by request").await? {
            CancelOutcome::NotFound => Err(ApiError::not_found_job(id)),
            CancelOutcome::CancelledNow(job) | CancelOutcome::Requested(job) => Ok(
                CancelResponse::Accepted(JsonAnswer(job_dto(state.0, tenant.0, &job))),
            ),
            CancelOutcome::Terminal(job) => Err(ApiError::Conflict {
                code: "job_terminal",
                detail: format!(
                    "job {id} has already ended ({}); there is nothing to cancel",
                    job.status
                ),
            }),
        }
    }
}

/// A fresh stream or feed token for `scope`, with the URL it opens (`path`
/// plus `?token=`) and when it expires.
pub(super) fn stream_token_response(
    state: &AppState,
    tenant: &Tenant,
    scope: crate::auth::TokenScope,
    path: &str,
) -> StreamTokenResponse {
    let (token, expires) = state.auth.mint_stream_token(tenant, scope);
    let expires_at = Timestamp(
        expires
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as i64,
    );
    StreamTokenResponse::Ok(Json(StreamTokenDto {
        events_url: format!("{path}?token={token}"),
        token,
        expires_at: expires_at.to_rfc3339(),
    }))
}
