//! `GET /v1/jobs/{id}/events`: the job's Server-Sent Events stream.

use poem::http::{header, StatusCode};
use poem::web::Data;
use poem::{Body, IntoResponse, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::jobs::owned_job;
use super::models::JobErrorDto;
use super::ApiTags;
use super::AppState;
use crate::auth::Tenant;
use crate::domain::{EventSeq, JobId};
use crate::stream;

pub struct EventsApi;

/// `event: status`: the job changed status (a retry shows as `queued` with the next attempt).
#[derive(Debug, Clone, Object)]
#[oai(rename = "StatusEvent")]
pub struct StatusEventDto {
    pub status: super::models::JobStatusDto,
    pub attempt: i32,
    /// When the event was appended: RFC 3339, UTC, microseconds.
    pub at: String,
    /// On a retry: why the previous attempt failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<JobErrorDto>,
}

/// `event: progress`: a progress report.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ProgressEvent")]
pub struct ProgressEventDto {
    /// 0 to 100, or null.
    pub percent: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub data: Option<Value>,
    pub at: String,
}

/// `event: result`: the job succeeded; the stream ends after it.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ResultEvent")]
pub struct ResultEventDto {
    pub result: Value,
    pub at: String,
}

/// `event: failed`: the job failed after its last attempt; the stream ends after it.
#[derive(Debug, Clone, Object)]
#[oai(rename = "FailedEvent")]
pub struct FailedEventDto {
    pub error: JobErrorDto,
    pub attempt: i32,
    pub at: String,
}

/// `event: cancelled`: the job was cancelled; the stream ends after it.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CancelledEvent")]
pub struct CancelledEventDto {
    pub reason: String,
    pub at: String,
}

/// `event: item`: one piece of the job's output; never coalesced.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ItemEvent")]
pub struct ItemEventDto {
    /// The item as the handler appended it.
    pub item: Value,
    /// The job's items count from 0, gapless, in append order.
    pub index: i64,
    pub at: String,
}

/// The `data:` of one event; which one the SSE `event:` field says.
#[derive(Debug, Clone, Union)]
#[oai(rename = "JobEvent")]
pub enum JobEventDto {
    Status(StatusEventDto),
    Progress(ProgressEventDto),
    Result(ResultEventDto),
    Failed(FailedEventDto),
    Cancelled(CancelledEventDto),
    Item(ItemEventDto),
}

pub enum EventsResponse {
    Stream(Body),
    NothingLeft,
}

const STREAM_DESCRIPTION: &str = "A `text/event-stream`. It opens with `retry: <ms>`, then sends \
each event as `id: <seq>` (the job's gapless sequence number), `event: <name>` (status, progress, \
item, result, failed or cancelled) and `data: <one line of JSON>` (see JobEvent), and comment lines \
(`: keep-alive`) while idle. It closes right after the terminal event (result, failed, cancelled), \
at shutdown, or after HERALD_MAX_STREAM_SECS; reconnect with `Last-Event-ID` to resume.";

impl ApiResponse for EventsResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: STREAM_DESCRIPTION,
                    status: Some(200),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "text/event-stream",
                        schema: JobEventDto::schema_ref(),
                    }],
                    headers: vec![],
                },
                MetaResponse {
                    description: "Nothing is left to send: the job has ended and the given id is at or past its terminal event. Browsers stop reconnecting.",
                    status: Some(204),
                    status_range: None,
                    content: vec![],
                    headers: vec![],
                },
            ],
        }
    }

    fn register(registry: &mut Registry) {
        JobEventDto::register(registry);
    }
}

impl IntoResponse for EventsResponse {
    fn into_response(self) -> Response {
        match self {
            EventsResponse::Stream(body) => sse_response(body),
            EventsResponse::NothingLeft => StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// A `text/event-stream` answer: never cached, never buffered by a proxy.
pub(super) fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Accel-Buffering", "no")
        .body(body)
}

/// One of the tenant's stream slots, or 429 when they are all taken.
pub(super) fn stream_slot(
    state: &AppState,
    tenant: &Tenant,
) -> Result<crate::limits::StreamSlot, ApiError> {
    state
        .stream_limit
        .acquire(&tenant.0)
        .ok_or_else(|| ApiError::RateLimited {
            detail: format!(
                "this tenant already has {} open streams (HERALD_MAX_STREAMS_PER_TENANT); close one or retry later",
                state.config.max_streams_per_tenant
            ),
            retry_after_secs: 5,
        })
}

/// Where a reconnecting client resumes: the `Last-Event-ID` header, else the
/// `last_event_id` parameter (for clients that cannot set headers), else
/// none. A value that does not parse is a 400 that says what to send (`hint`).
pub(super) fn resume_after<T>(
    header: Option<String>,
    query: Option<String>,
    hint: &str,
) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let (raw, source) = match (header, query) {
        (Some(h), _) => (h, "the Last-Event-ID header"),
        (None, Some(q)) => (q, "the last_event_id parameter"),
        (None, None) => return Ok(None),
    };
    raw.parse().map(Some).map_err(|e| ApiError::BadRequest {
        code: "bad_last_event_id",
        detail: format!("{source}: {e}; {hint}"),
    })
}

#[OpenApi(tag = "ApiTags::Jobs")]
impl EventsApi {
    /// Stream a job's events
    ///
    /// Server-Sent Events: the job's events from the start (or after
    /// `Last-Event-ID`), then live ones as they happen, until the terminal event.
    #[oai(path = "/v1/jobs/:id/events", method = "get")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0, job_id = %id.0))]
    async fn events(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        id: Path<Uuid>,
        /// Resume after this event id (what a reconnecting EventSource sends).
        #[oai(name = "Last-Event-ID")]
        last_event_id_header: Header<Option<String>>,
        /// Resume after this event id, for clients that cannot set headers on
        /// their first request. The header wins when both are present.
        last_event_id: Query<Option<String>>,
        /// A stream token (see `links.events` and `POST /v1/jobs/{id}/stream-token`),
        /// for clients that cannot send `Authorization`.
        #[oai(name = "token")]
        _token: Query<Option<String>>,
    ) -> Result<EventsResponse, ApiError> {
        let id = JobId(id.0);
        let after = resume_after(
            last_event_id_header.0,
            last_event_id.0,
            "send the `id` of the last event you received",
        )?
        .unwrap_or(EventSeq(0));
        let job = owned_job(state.0, tenant.0, id).await?;
        if job.status.is_terminal() && after >= job.last_seq {
            return Ok(EventsResponse::NothingLeft);
        }
        let slot = stream_slot(state.0, tenant.0)?;
        let body = stream::job_events(
            state.store.clone(),
            &state.hub,
            id,
            after,
            state.stream_settings.clone(),
            state.serving_stop.child_token(),
            (state.streams.guard(), slot),
        );
        Ok(EventsResponse::Stream(Body::from_bytes_stream(body)))
    }
}
