//! `GET /v1/jobs/{id}/events`: the job's Server-Sent Events stream, or a JSON
//! page of its log (see `event_log`).

use poem::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use poem::web::Data;
use poem::{Body, IntoResponse, Request, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::event_log::{self, PageParams, Wants};
use super::event_page::JobEventPageDto;
use super::jobs::owned_job;
use super::models::JobErrorDto;
use super::params::{EventIdHeader, EventIdParam};
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
    #[oai(nullable)]
    pub percent: Option<f64>,
    #[oai(nullable)]
    pub stage: Option<String>,
    #[oai(nullable)]
    pub message: Option<String>,
    #[oai(nullable)]
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
    Page(Json<JobEventPageDto>),
    NothingLeft,
}

const STREAM_DESCRIPTION: &str = "A `text/event-stream`. It opens with `retry: <ms>`, then sends \
each event as `id: <seq>` (the job's gapless sequence number), `event: <name>` (status, progress, \
item, result, failed or cancelled) and `data: <one line of JSON>` (see JobEvent), and comment lines \
(`: keep-alive`) while idle. It closes right after the terminal event (result, failed, cancelled), \
at shutdown, or after HERALD_MAX_STREAM_SECS; reconnect with `Last-Event-ID` to resume. \
With `Accept: application/json` (and not `text/event-stream`): a JSON page of the same events \
(JobEventPage); `terminal` says the job has ended and nothing follows, and `last_event_id` is the \
next request's `after`. A job that has ended answers a page too, never 204.";

impl ApiResponse for EventsResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: STREAM_DESCRIPTION,
                    status: Some(200),
                    status_range: None,
                    content: vec![
                        // The document describes each event whole (`id`,
                        // `event`, `data`): see `openapi::with_stream_events`.
                        MetaMediaType {
                            content_type: "text/event-stream",
                            schema: JobEventDto::schema_ref(),
                        },
                        MetaMediaType {
                            content_type: "application/json",
                            schema: JobEventPageDto::schema_ref(),
                        },
                    ],
                    headers: vec![],
                },
                MetaResponse {
                    description: "Only for the stream: nothing is left to send: the job has ended and the given id is at or past its terminal event. Browsers stop reconnecting.",
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
        JobEventPageDto::register(registry);
    }
}

impl IntoResponse for EventsResponse {
    fn into_response(self) -> Response {
        match self {
            EventsResponse::Stream(body) => sse_response(body),
            EventsResponse::Page(page) => page.into_response(),
            EventsResponse::NothingLeft => StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// A `text/event-stream` answer: never cached, never buffered by a proxy.
pub(super) fn sse_response(body: Body) -> Response {
    // hyper keeps a response's header map, emptied, for the connection's
    // next request: one this size, not the eight-slot map a first insert
    // makes, is what an idle stream keeps (about 300 bytes less).
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    let mut resp = Response::builder().status(StatusCode::OK).body(body);
    *resp.headers_mut() = headers;
    resp
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

/// `Last-Event-ID` as text. poem-openapi's header parameter skips a value
/// that is not visible ASCII, as if it were absent; such a value is a bad id,
/// not a missing one.
pub(super) fn readable_last_event_id<P>(
    req: &Request,
    parsed: Option<P>,
    text: impl Fn(P) -> String,
) -> Result<Option<String>, ApiError> {
    match (req.headers().get("last-event-id"), parsed) {
        (_, Some(p)) => Ok(Some(text(p))),
        (Some(_), None) => Err(ApiError::BadRequest {
            code: "bad_last_event_id",
            detail: "the Last-Event-ID header is not text (visible ASCII); send the `id` of the last event you received".to_owned(),
        }),
        (None, None) => Ok(None),
    }
}

/// Where a client resumes: the `Last-Event-ID` header (unless empty), else
/// the `after` parameter, else the `last_event_id` parameter, else none. The
/// header wins because a browser's EventSource sends it on its own reconnect
/// while its URL keeps the first request's parameters. Every value given must
/// parse, the ones that lose included: a value that does not is a 400 that
/// says what to send (`hint`).
pub(super) fn resume_after<T>(
    header: Option<String>,
    after: Option<String>,
    query: Option<String>,
    hint: &str,
) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    // An empty `Last-Event-ID` names no event: an EventSource whose last
    // event id is empty sends none, and the SSE spec reads an empty `id:` as
    // a reset.
    let header = header.filter(|h| !h.trim().is_empty());
    let parse = |raw: Option<String>, source: &str| -> Result<Option<T>, ApiError> {
        raw.map(|raw| raw.parse())
            .transpose()
            .map_err(|e| ApiError::BadRequest {
                code: "bad_last_event_id",
                detail: format!("{source}: {e}; {hint}"),
            })
    };
    let header = parse(header, "the Last-Event-ID header")?;
    let after = parse(after, "the after parameter")?;
    let query = parse(query, "the last_event_id parameter")?;
    Ok(header.or(after).or(query))
}

#[OpenApi(tag = "ApiTags::Jobs")]
impl EventsApi {
    /// Stream a job's events, or read them a page at a time
    ///
    /// Server-Sent Events: the job's events from the start (or after
    /// `Last-Event-ID`), then live ones as they happen, until the terminal event.
    /// With `Accept: application/json` (and not `text/event-stream`), a JSON
    /// page of the same events instead, for clients that cannot hold a stream:
    /// after `after`, at most `limit`, waiting up to `wait` seconds for a first one.
    #[oai(path = "/v1/jobs/:id/events", method = "get")]
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0, job_id = %id.0))]
    async fn events(
        &self,
        req: &Request,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        id: Path<Uuid>,
        wants: Wants,
        /// Resume after this event id (what a reconnecting EventSource sends).
        /// It wins over `after` and `last_event_id`.
        #[oai(name = "Last-Event-ID")]
        last_event_id_header: Header<Option<EventIdHeader>>,
        /// The events after this id (a page's `last_event_id`). It wins over
        /// `last_event_id`.
        after: Query<Option<EventIdParam>>,
        /// Resume after this event id, for clients that cannot set headers on
        /// their first request.
        last_event_id: Query<Option<EventIdParam>>,
        /// JSON pages only: at most this many events, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// JSON pages only: when there is no event after `after` yet, wait up
        /// to this many seconds (1 to 25) for one; an empty page when none came.
        #[oai(validator(minimum(value = "1"), maximum(value = "25")))]
        wait: Query<Option<u64>>,
    ) -> Result<EventsResponse, ApiError> {
        let id = JobId(id.0);
        let after = resume_after(
            readable_last_event_id(req, last_event_id_header.0, |p| p.0)?,
            after.0.map(|p| p.0),
            last_event_id.0.map(|p| p.0),
            "send the `id` of the last event you received",
        )?
        .unwrap_or(EventSeq(0));
        // A whole stream of a job this node just created for this tenant (a
        // client that submits, then watches) needs no read: the job is
        // there, the tenant's, and has its `queued` event to send.
        let fresh = wants != Wants::Page
            && after == EventSeq(0)
            && state.jobs.created_here_by(id, &tenant.0 .0);
        if !fresh {
            let job = owned_job(state.0, tenant.0, id).await?;
            if wants == Wants::Page {
                let params = PageParams {
                    limit: limit.0,
                    wait: wait.0,
                };
                let page = event_log::job_page(state.0, tenant.0, &job, after, params).await?;
                return Ok(EventsResponse::Page(Json(page)));
            }
            if job.status.is_terminal() && after >= job.last_seq {
                return Ok(EventsResponse::NothingLeft);
            }
        }
        let slot = stream_slot(state.0, tenant.0)?;
        let body = stream::job_events(
            state.store.clone(),
            &state.hub,
            id,
            after,
            state.stream_settings.clone(),
            state.serving_stop.clone(),
            (state.streams.guard(), slot),
        );
        Ok(EventsResponse::Stream(Body::from_bytes_stream(body)))
    }
}
