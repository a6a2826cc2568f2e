//! `GET /v1/events`: the multiplexed feed (a stream, or a JSON page of it, see
//! `event_log`), and `POST /v1/events/stream-token`.

use poem::web::Data;
use poem::{Body, IntoResponse, Request, Response};
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::error::ApiError;
use super::event_log::{self, PageParams, Wants};
use super::event_page::{FeedEventData, FeedEventPageDto};
use super::events::{readable_last_event_id, resume_after, sse_response, stream_slot};
use super::jobs::{names_no_kind, stream_token_response, StreamTokenResponse};
use super::models::JobStatusDto;
use super::params::{FeedCursorHeader, FeedCursorParam};
use super::ApiTags;
use super::AppState;
use crate::auth::{Tenant, TokenScope};
use crate::domain::JobId;
use crate::feed::Start;
use crate::store::{FeedCursor, FeedFilter, ListQuery};

pub struct FeedApi;

/// The most jobs a `status=` filter selects when the feed opens.
const STATUS_FILTER_LIMIT: i64 = 1000;

pub enum FeedResponse {
    Stream(Body),
    Page(Json<FeedEventPageDto>),
}

const FEED_DESCRIPTION: &str = "A `text/event-stream` of the events of every job of the caller's \
tenant (or of the jobs the filters select). It opens with `retry: <ms>`, then sends each event as \
`id: <cursor>` (an opaque feed position), `event: <name>` (the job event's name: status, progress, \
item, result, failed or cancelled) and `data: <one line of JSON>`: the job event's data (see JobEvent) \
plus `job_id` and `seq` (the event's id in the job's own stream). Comment lines (`: keep-alive`) \
while idle. It does not end on its own: only at shutdown or after HERALD_MAX_STREAM_SECS; \
reconnect with `Last-Event-ID` (or `last_event_id`) set to the last cursor to resume without loss \
or repetition. Without a cursor it starts from now, and its first frame after `retry:` names that \
moment: `id: <cursor>` and a blank line, no data (an EventSource keeps it as its last event id, so a \
connection that drops before the first event resumes without loss). With `Accept: application/json` \
(and not `text/event-stream`): a JSON page of the same events (FeedEventPage), whose \
`last_event_id` is the next request's `after`.";

impl ApiResponse for FeedResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: FEED_DESCRIPTION,
                status: Some(200),
                status_range: None,
                content: vec![
                    // The document describes each event whole (`id`,
                    // `event`, `data`): see `openapi::with_stream_events`.
                    MetaMediaType {
                        content_type: "text/event-stream",
                        schema: FeedEventData::schema_ref(),
                    },
                    MetaMediaType {
                        content_type: "application/json",
                        schema: FeedEventPageDto::schema_ref(),
                    },
                ],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        FeedEventData::register(registry);
        FeedEventPageDto::register(registry);
    }
}

impl IntoResponse for FeedResponse {
    fn into_response(self) -> Response {
        match self {
            FeedResponse::Stream(body) => sse_response(body),
            FeedResponse::Page(page) => page.into_response(),
        }
    }
}

#[OpenApi(tag = "ApiTags::Jobs")]
impl FeedApi {
    /// Stream the events of many jobs, or read them a page at a time
    ///
    /// Server-Sent Events: every job's events on one connection (a browser
    /// allows only six per host). Filters select jobs, not events: once a job
    /// is selected, all its later events follow, the terminal one included.
    /// With `Accept: application/json` (and not `text/event-stream`), a JSON
    /// page of the same events instead: after `after` (or from now), at most
    /// `limit`, waiting up to `wait` seconds for a first one.
    #[oai(path = "/v1/events", method = "get")]
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0))]
    async fn feed(
        &self,
        req: &Request,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
        /// Only these jobs (repeat the parameter for several).
        job: Query<Option<Vec<Uuid>>>,
        /// Only jobs of this kind.
        kind: Query<Option<String>>,
        /// Only the jobs that are in this status when the feed opens (at most 1,000).
        status: Query<Option<JobStatusDto>>,
        wants: Wants,
        /// Resume after this feed cursor (what a reconnecting EventSource sends).
        /// It wins over `after` and `last_event_id`.
        #[oai(name = "Last-Event-ID")]
        last_event_id_header: Header<Option<FeedCursorHeader>>,
        /// The events after this feed cursor (a page's `last_event_id`). It
        /// wins over `last_event_id`.
        after: Query<Option<FeedCursorParam>>,
        /// Resume after this feed cursor, for clients that cannot set headers.
        last_event_id: Query<Option<FeedCursorParam>>,
        /// JSON pages only: at most this many events, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// JSON pages only: when there is no event after the cursor yet, wait
        /// up to this many seconds (1 to 25) for one; an empty page when none came.
        #[oai(validator(minimum(value = "1"), maximum(value = "25")))]
        wait: Query<Option<u64>>,
    ) -> Result<FeedResponse, ApiError> {
        let after: Option<FeedCursor> = resume_after(
            readable_last_event_id(req, last_event_id_header.0, |p| p.0)?,
            after.0.map(|p| p.0),
            last_event_id.0.map(|p| p.0),
            "send the `id` of the last feed event you received, or none to start from now",
        )?;
        let mut jobs: Option<Vec<JobId>> = job
            .0
            .filter(|ids| !ids.is_empty())
            .map(|ids| ids.into_iter().map(JobId).collect());
        if let Some(status) = status.0 {
            let in_status = state
                .jobs
                .list(&ListQuery {
                    tenant: tenant.0 .0.clone(),
                    status: Some(status.into()),
                    kind: None,
                    before: None,
                    limit: STATUS_FILTER_LIMIT,
                })
                .await?;
            let ids: Vec<JobId> = in_status.iter().map(|j| j.id).collect();
            jobs = Some(match jobs {
                Some(listed) => listed.into_iter().filter(|id| ids.contains(id)).collect(),
                None => ids,
            });
        }
        let kind = kind.0;
        if names_no_kind(&kind) {
            // No job is of that kind: select none.
            jobs = Some(Vec::new());
        }
        let filter = FeedFilter {
            tenant: tenant.0 .0.clone(),
            jobs,
            kind: kind.filter(|k| !k.contains('\0')),
        };
        if wants == Wants::Page {
            let params = PageParams {
                limit: limit.0,
                wait: wait.0,
            };
            let page = event_log::feed_page(state.0, tenant.0, &filter, after, params).await?;
            return Ok(FeedResponse::Page(Json(page)));
        }
        let slot = stream_slot(state.0, tenant.0)?;
        let start = match after {
            Some(c) => Start::After(c),
            None => Start::Now(state.store.feed_head().await?),
        };
        let body = crate::feed::feed_events(
            state.store.clone(),
            &state.hub,
            filter,
            start,
            state.stream_settings.clone(),
            state.serving_stop.clone(),
            (state.feeds.guard(), slot),
        );
        Ok(FeedResponse::Stream(Body::from_bytes_stream(body)))
    }

    /// Mint a feed token
    ///
    /// A `?token=` for `GET /v1/events`, for clients (browsers) that cannot
    /// send an `Authorization` header on a stream. It is bound to the tenant
    /// and expires after HERALD_STREAM_TOKEN_TTL_SECS; reconnect with a fresh
    /// one and `last_event_id` to resume.
    #[oai(path = "/v1/events/stream-token", method = "post")]
    #[tracing::instrument(skip_all, fields(tenant = %tenant.0 .0))]
    async fn feed_token(
        &self,
        state: Data<&AppState>,
        tenant: Data<&Tenant>,
    ) -> Result<StreamTokenResponse, ApiError> {
        Ok(stream_token_response(
            state.0,
            tenant.0,
            TokenScope::Feed,
            "/v1/events",
        ))
    }
}
