//! The HTTP API: poem routes, described by poem-openapi.
//!
//! - [`jobs`]: the `/v1/jobs` routes (submit, list, get, cancel)
//! - [`events`]: a job's Server-Sent Events stream
//! - [`feed`]: the multiplexed feed of many jobs' events, and its tokens
//! - [`health`]: `/healthz`, `/readyz`
//! - [`dashboard`]: the dashboard page at `/` (static files in the binary)
//! - [`uploads`]: `POST /v1/uploads`, a file streamed into the store → an `import` job
//! - [`models`]: DTOs; [`body`]: the JSON body extractor with a size limit

pub mod body;
pub mod dashboard;
pub mod events;
pub mod feed;
pub mod health;
pub mod jobs;
pub mod models;
pub mod uploads;

use std::sync::Arc;

use poem::http::{header, Method};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::app::AppState;
use crate::auth::{AuthError, AuthMode, TokenScope};
use crate::domain::JobId;
use crate::error::{render_any_error, ApiError};

#[derive(Tags)]
pub enum ApiTags {
    /// Submit, inspect and cancel jobs.
    Jobs,
    /// Liveness and readiness probes.
    Health,
}

type Apis = (
    dashboard::DashboardApi,
    jobs::JobsApi,
    events::EventsApi,
    feed::FeedApi,
    health::HealthApi,
);

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            dashboard::DashboardApi,
            jobs::JobsApi,
            events::EventsApi,
            feed::FeedApi,
            health::HealthApi,
        ),
        "herald",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Runs slow jobs from a durable queue and streams their progress and result over \
         Server-Sent Events. Every error is RFC 9457 problem+json with a stable `code`.",
    )
}

/// The OpenAPI document, as `herald openapi` prints it and `openapi/openapi.json` holds it.
pub fn openapi_json() -> String {
    openapi_service().spec()
}

pub fn routes(state: AppState) -> impl Endpoint {
    let api = openapi_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let limit = body::BodyLimit(state.config.max_body_bytes);
    let cors = (!state.config.cors_origins.is_empty()).then(|| {
        poem::middleware::Cors::new()
            .allow_origins(state.config.cors_origins.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(["authorization", "content-type", "last-event-id"])
            .expose_headers(["location", "retry-after"])
            .max_age(600)
    });
    let route = Route::new().at("/metrics", poem::get(metrics_endpoint));
    // Worker nodes answer the probes and /metrics only.
    let route = if state.config.role.serves_api() {
        route
            .at("/js/*path", poem::get(dashboard::script))
            .at("/style.css", poem::get(dashboard::style))
            .at(
                "/v1/uploads",
                poem::post(uploads::upload).around(authenticate),
            )
            .at("/openapi.json", spec)
            .nest("/docs", docs)
            .nest("/", api.around(authenticate))
    } else {
        route.nest(
            "/",
            OpenApiService::new(health::HealthApi, "herald", env!("CARGO_PKG_VERSION")),
        )
    };
    route
        .data(state)
        .data(limit)
        .catch_all_error(render_any_error)
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .around(access_log)
}

/// `GET /metrics`: Prometheus text. Protected by `HERALD_METRICS_TOKEN`
/// (`Authorization: Bearer …`) when it is set.
#[poem::handler]
async fn metrics_endpoint(req: &Request) -> poem::Result<Response> {
    let state = req.data::<AppState>().expect("state is attached");
    if let Some(token) = &state.config.metrics_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let ok: bool =
            subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.0.as_bytes()).into();
        if !ok {
            return Err(ApiError::Unauthorized(
                "/metrics needs Authorization: Bearer <HERALD_METRICS_TOKEN>".to_owned(),
            )
            .into());
        }
    }
    // Gauges read at scrape time.
    metrics::gauge!("herald_jobs_running").set(state.cancels.running_count() as f64);
    metrics::gauge!("herald_streams_open", "type" => "job").set(state.streams.open() as f64);
    metrics::gauge!("herald_streams_open", "type" => "feed").set(state.feeds.open() as f64);
    if let Ok((depth, oldest)) = state.store.queue_stats().await {
        metrics::gauge!("herald_queue_depth").set(depth as f64);
        let age = oldest.map_or(0.0, |t| {
            (crate::domain::Timestamp::now().0 - t.0).max(0) as f64 / 1e6
        });
        metrics::gauge!("herald_queue_oldest_age_seconds").set(age);
    }
    let handle = crate::telemetry::prometheus();
    handle.run_upkeep();
    Ok(Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render()))
}

/// One span per request (method, route, status, latency) and one log line
/// when its response starts. The query string is left out on purpose: stream
/// tokens travel in it.
async fn access_log<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = crate::telemetry::route_label(&path);
    let method_label = crate::telemetry::method_label(&method);
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        path = %path,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let resp = ep.call(req).instrument(span.clone()).await?.into_response();
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    span.record("status", status);
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    metrics::counter!(
        "herald_http_requests_total",
        "method" => method_label,
        "route" => route,
        "status" => crate::telemetry::status_label(status)
    )
    .increment(1);
    metrics::histogram!(
        "herald_http_request_duration_seconds",
        "method" => method_label,
        "route" => route
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| tracing::info!(target: "herald::access", "request"));
    Ok(resp)
}

/// Puts the caller's [`Tenant`] into the request, or answers 401. A job's
/// stream also accepts `?token=` (a stream token for that job), and the feed
/// a feed token, since a browser's EventSource cannot send headers.
async fn authenticate<E: Endpoint>(ep: Arc<E>, mut req: Request) -> poem::Result<Response> {
    let path = req.uri().path();
    // The dashboard page is public (it asks for a key itself), as the probes are.
    let public = matches!(path, "/healthz" | "/readyz" | "/");
    if public {
        return Ok(ep.call(req).await?.into_response());
    }
    let state = req.data::<AppState>().expect("state is attached").clone();
    let stream_scope = if path == "/v1/events" {
        Some(TokenScope::Feed)
    } else {
        path.strip_prefix("/v1/jobs/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .and_then(|id| id.parse::<JobId>().ok())
            .map(TokenScope::Job)
    };
    let query_token = req.uri().query().and_then(|q| url_param(q, "token"));
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let tenant = match (stream_scope, query_token, bearer) {
        (Some(scope), Some(token), None) if state.auth.mode != AuthMode::None => {
            state.auth.verify_stream_token(&token, scope)
        }
        (_, _, bearer) => state.auth.authenticate(bearer.as_deref()),
    };
    match tenant {
        Ok(tenant) => {
            req.extensions_mut().insert(tenant);
            Ok(ep.call(req).await?.into_response())
        }
        Err(e) => Err(ApiError::Unauthorized(match e {
            AuthError::Missing => "no credentials: send Authorization: Bearer <API key or JWT>".to_owned(),
            AuthError::Invalid => "the credentials are not valid".to_owned(),
            AuthError::Expired => "the token has expired; get a fresh one (POST /v1/jobs/{id}/stream-token, or POST /v1/events/stream-token for the feed) and reconnect with Last-Event-ID".to_owned(),
        })
        .into()),
    }
}

/// The value of `name` in a query string, percent-decoded.
fn url_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
