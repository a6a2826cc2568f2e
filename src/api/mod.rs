//! The HTTP API: poem routes, described by poem-openapi.
//!
//! - [`jobs`]: the `/v1/jobs` routes (submit, list, get, cancel)
//! - [`events`]: a job's Server-Sent Events stream
//! - [`health`]: `/healthz`, `/readyz`
//! - [`models`]: DTOs; [`body`]: the JSON body extractor with a size limit

pub mod body;
pub mod events;
pub mod health;
pub mod jobs;
pub mod models;

use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::app::AppState;
use crate::error::render_any_error;

#[derive(Tags)]
pub enum ApiTags {
    /// Submit, inspect and cancel jobs.
    Jobs,
    /// Liveness and readiness probes.
    Health,
}

type Apis = (jobs::JobsApi, events::EventsApi, health::HealthApi);

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (jobs::JobsApi, events::EventsApi, health::HealthApi),
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
    Route::new()
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .nest("/", api)
        .data(state)
        .data(limit)
        .catch_all_error(render_any_error)
}
