//! The event log as JSON pages, for clients that cannot hold a stream:
//! which answer a request asks for (`Accept`), and the pages of a job's log
//! and of the feed (`after`, `limit`, `wait`). The reading and the
//! long-poll live in [`crate::event_log`].

use std::time::Duration;

use poem::http::{header, HeaderMap};
use poem::{FromRequest, Request, RequestBody};
use tokio::time::Instant;

use super::error::ApiError;
use super::event_page::{FeedEventPageDto, FeedLogEventDto, JobEventPageDto, JobLogEventDto};
use super::AppState;
use crate::auth::Tenant;
use crate::domain::{EventSeq, JobRecord};
use crate::event_log::{LogReader, PageRequest};
use crate::limits::StreamSlot;
use crate::store::{FeedCursor, FeedFilter};

/// A page's size when the request names none.
const DEFAULT_LIMIT: i64 = 100;

/// Which answer the request's `Accept` asks for: a JSON page only when it
/// names `application/json` and not `text/event-stream`; anything else
/// (no `Accept`, `*/*`, `text/event-stream`) gets the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Stream,
    Page,
}

impl Wants {
    pub fn of(headers: &HeaderMap) -> Wants {
        let ranges: Vec<String> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter(|range| !refused(range))
            .filter_map(|range| range.split(';').next())
            .map(|media| media.trim().to_ascii_lowercase())
            .collect();
        let names = |media: &str| ranges.iter().any(|r| r == media);
        if names("application/json") && !names("text/event-stream") {
            Wants::Page
        } else {
            Wants::Stream
        }
    }
}

/// A media range with `q=0`: "not this".
fn refused(range: &str) -> bool {
    range.split(';').skip(1).any(|param| {
        param
            .split_once('=')
            .is_some_and(|(k, v)| k.trim() == "q" && v.trim().parse::<f32>() == Ok(0.0))
    })
}

impl<'a> FromRequest<'a> for Wants {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        Ok(Wants::of(req.headers()))
    }
}

/// A page request's `limit` and `wait`, as the query gave them (already in
/// range: the parameters' validators check that).
#[derive(Debug, Clone, Copy)]
pub struct PageParams {
    pub limit: Option<i64>,
    pub wait: Option<u64>,
}

/// A JSON page of `job`'s events after `after`.
pub(super) async fn job_page(
    state: &AppState,
    tenant: &Tenant,
    job: &JobRecord,
    after: EventSeq,
    params: PageParams,
) -> Result<JobEventPageDto, ApiError> {
    let (req, _slot) = page_request(state, tenant, after, params)?;
    let page = reader(state).job_page(job, req).await?;
    tracing::debug!(
        events = page.events.len(),
        terminal = page.terminal,
        "event log page"
    );
    Ok(JobEventPageDto {
        events: page
            .events
            .iter()
            .map(JobLogEventDto::try_from)
            .collect::<Result<_, _>>()?,
        last_event_id: page.last.0,
        terminal: page.terminal,
    })
}

/// A JSON page of the feed after `after`, or after "now" when it is none.
pub(super) async fn feed_page(
    state: &AppState,
    tenant: &Tenant,
    filter: &FeedFilter,
    after: Option<FeedCursor>,
    params: PageParams,
) -> Result<FeedEventPageDto, ApiError> {
    let after = match after {
        Some(c) => c,
        None => state.store.feed_head().await?,
    };
    let (req, _slot) = page_request(state, tenant, after, params)?;
    let (events, next) = reader(state).feed_page(filter, req).await?;
    tracing::debug!(events = events.len(), "feed page");
    Ok(FeedEventPageDto {
        last_event_id: next.to_string(),
        events: events
            .iter()
            .map(FeedLogEventDto::try_from)
            .collect::<Result<_, _>>()?,
        terminal: false,
    })
}

fn reader(state: &AppState) -> LogReader<'_> {
    LogReader {
        store: &state.store,
        hub: &state.hub,
        stop: &state.serving_stop,
    }
}

/// The request, and for a long-poll the tenant's long-poll slot (held until
/// the answer is ready). A long-poll waits at most `wait` seconds, and no
/// longer than HERALD_MAX_STREAM_SECS, the longest a response may take here.
fn page_request<C>(
    state: &AppState,
    tenant: &Tenant,
    after: C,
    params: PageParams,
) -> Result<(PageRequest<C>, Option<StreamSlot>), ApiError> {
    let wait = params.wait.map(|secs| match state.config.max_stream_secs {
        Some(max) => secs.min(max.max(1)),
        None => secs,
    });
    let slot = match wait {
        Some(_) => Some(long_poll_slot(state, tenant)?),
        None => None,
    };
    let req = PageRequest {
        after,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT),
        until: wait.map(|secs| Instant::now() + Duration::from_secs(secs)),
    };
    Ok((req, slot))
}

/// One of the tenant's long-poll slots, or 429 when they are all taken. A
/// separate count from the streams': a page is a plain request, but a
/// waiting one holds a task and a connection, so their number is bounded too.
fn long_poll_slot(state: &AppState, tenant: &Tenant) -> Result<StreamSlot, ApiError> {
    state
        .long_polls
        .acquire(&tenant.0)
        .ok_or_else(|| ApiError::RateLimited {
            detail: format!(
                "this tenant already has {} waiting long-polls (HERALD_MAX_STREAMS_PER_TENANT); retry later, or ask without `wait`",
                state.config.max_streams_per_tenant
            ),
            retry_after_secs: 1,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(accept: &[&str]) -> Wants {
        let mut headers = HeaderMap::new();
        for a in accept {
            headers.append(header::ACCEPT, a.parse().unwrap());
        }
        Wants::of(&headers)
    }

    #[test]
    fn only_an_accept_that_names_json_and_not_the_stream_gets_a_page() {
        for page in [
            &["application/json"][..],
            &["Application/JSON; charset=utf-8"],
            &["application/json, text/plain, */*"],
            &["text/html", "application/json;q=0.5"],
            &["application/json, text/event-stream;q=0"],
        ] {
            assert_eq!(wants(page), Wants::Page, "{page:?}");
        }
        for stream in [
            &[][..],
            &["*/*"],
            &["text/event-stream"],
            &["text/event-stream, application/json"],
            &["application/json;q=0, */*"],
            &["application/*"],
        ] {
            assert_eq!(wants(stream), Wants::Stream, "{stream:?}");
        }
    }
}
