//! The access log: one span and one log line per request, and the request
//! metrics.

use std::sync::Arc;

use poem::{Endpoint, IntoResponse, Request, Response};

/// One span per request (method, route, status, latency) and one log line
/// when its response starts. The query string is left out on purpose: stream
/// tokens travel in it.
pub(super) async fn access_log<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
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
