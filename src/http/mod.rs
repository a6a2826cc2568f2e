//! The web layer: routes (poem, described by poem-openapi), middleware
//! (access log, authentication, CORS, body limit), `/metrics`, error
//! rendering and the accept loop. Handlers translate HTTP to calls on the
//! jobs service, the uploads service, the streams and the feed; they decide
//! nothing themselves.
//!
//! - [`AppState`]: what handlers share
//! - [`server`]: the HTTP/1.1 accept loop (hyper) that serves the routes
//! - [`error`]: `ApiError` → RFC 9457 problem+json
//! - `jobs`: the `/v1/jobs` routes (submit, list, get, cancel)
//! - `events`: a job's Server-Sent Events stream
//! - `event_log`, `event_page`: the same logs as JSON pages (`Accept:
//!   application/json` on a job's events and on the feed), and their DTOs
//! - `feed`: the multiplexed feed of many jobs' events, and its tokens
//! - `health`: `/healthz`, `/readyz`
//! - `dashboard`: the dashboard page at `/` (static files in the binary)
//! - `uploads`: `POST /v1/uploads`, a file streamed into the store → an `import` job
//! - `worker`: `/v1/worker/*`, the remote workers' claims and reports
//! - `models`: DTOs; `body`: the JSON body extractor with a size limit;
//!   `params`: parameters the handlers parse themselves, as documented
//! - `authenticate`, `access_log`, `allow`, `metrics`: the middleware
//!   (`allow` puts `Allow` on a 405) and `/metrics`

mod access_log;
mod allow;
mod authenticate;
mod body;
mod dashboard;
mod edge;
pub mod error;
mod event_log;
mod event_page;
mod events;
mod feed;
mod health;
mod items;
mod jobs;
mod metrics;
mod models;
mod openapi;
mod params;
pub mod server;
mod state;
mod uploads;
mod worker;

pub use state::AppState;

use poem::http::Method;
use poem::{EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

use access_log::AccessLog;
use authenticate::authenticate;
use metrics::metrics_endpoint;

#[derive(Tags)]
pub enum ApiTags {
    /// Submit, inspect and cancel jobs.
    Jobs,
    /// Liveness and readiness probes.
    Health,
    /// Remote workers: claim jobs of remote kinds and report on them (worker keys only).
    Workers,
}

type Apis = (
    dashboard::DashboardApi,
    jobs::JobsApi,
    events::EventsApi,
    feed::FeedApi,
    items::ItemsApi,
    health::HealthApi,
    worker::WorkerApi,
);

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            dashboard::DashboardApi,
            jobs::JobsApi,
            events::EventsApi,
            feed::FeedApi,
            items::ItemsApi,
            health::HealthApi,
            worker::WorkerApi,
        ),
        "herald",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Runs slow jobs from a durable queue and streams their progress and result over \
         Server-Sent Events. Every error is RFC 9457 problem+json with a stable `code`.",
    )
}

/// The OpenAPI document of a herald running `kinds`, each kind's input
/// schema included (and what poem-openapi cannot generate: the uploads
/// route, the security schemes): what `herald openapi` prints, `/openapi.json` serves,
/// and (for the built-in kinds) `openapi/openapi.json` holds.
pub fn openapi_json(kinds: &crate::Kinds) -> String {
    openapi::complete(&openapi_service().spec(), &kinds.schemas())
}

pub fn routes(state: AppState) -> poem::endpoint::BoxEndpoint<'static, poem::Response> {
    let api = openapi_service();
    let generated = api.spec();
    let spec = openapi::complete(&generated, &state.jobs.kinds().schemas());
    // The docs page embeds the document: the one with the kinds patched in.
    let docs_html = api.swagger_ui_html().replacen(&generated, &spec, 1);
    let docs = poem::get(poem::endpoint::make_sync(move |_| {
        poem::web::Html(docs_html.clone())
    }));
    let limit = state.config.max_body_bytes;
    let cors = (!state.config.cors_origins.is_empty()).then(|| {
        poem::middleware::Cors::new()
            .allow_origins(state.config.cors_origins.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(["authorization", "content-type", "last-event-id"])
            .expose_headers(["location", "retry-after"])
            .max_age(600)
    });
    let allow = std::sync::Arc::new(allow::AllowTable::new(&spec, allow::PLAIN_ROUTES));
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
            .at(
                "/openapi.json",
                poem::get(poem::endpoint::make_sync(move |_| {
                    poem::Response::builder()
                        .content_type("application/json; charset=utf-8")
                        .body(spec.clone())
                })),
            )
            .at("/docs", docs)
            .nest(
                "/",
                api.around(authenticate).around(worker::worker_body_limit),
            )
    } else {
        route.nest(
            "/",
            OpenApiService::new(health::HealthApi, "herald", env!("CARGO_PKG_VERSION")),
        )
    };
    let edge = edge::Edge {
        inner: route,
        state,
        limit,
        allow,
    };
    // CORS answers preflights and marks every answer, errors included; a
    // server without it has no layer for it.
    match cors {
        Some(cors) => AccessLog(edge.with(cors)).boxed(),
        None => AccessLog(edge).boxed(),
    }
}
