//! The access log: one span and one log line per request, and the request
//! metrics.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use poem::{Endpoint, IntoResponse, Request, Response};

/// One span per request (method, route, status, latency) and one log line
/// when its response starts. The query string is left out on purpose: stream
/// tokens travel in it.
///
/// A type of its own rather than an `around` closure: every layer of poem's
/// moves the request (and its own future) once more, and the layers around
/// every request are few (see [`super::edge::Edge`]).
pub(super) struct AccessLog<E>(pub E);

impl<E: Endpoint> Endpoint for AccessLog<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
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
        let resp = self
            .0
            .call(req)
            .instrument(span.clone())
            .await?
            .into_response();
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        span.record("status", status);
        span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
        let (count, duration) =
            request_metrics(method_label, route, crate::telemetry::status_label(status));
        count.increment(1);
        duration.record(elapsed.as_secs_f64());
        span.in_scope(|| tracing::info!(target: "herald::access", "request"));
        Ok(resp)
    }
}

type Labels = (&'static str, &'static str, &'static str);

/// The request metrics of a method, route and status, looked up in the
/// registry once: a lookup there hashes the name and every label. The labels
/// come from small fixed sets, so this stays small.
fn request_metrics(
    method: &'static str,
    route: &'static str,
    status: &'static str,
) -> (metrics::Counter, metrics::Histogram) {
    static HANDLES: OnceLock<Mutex<HashMap<Labels, (metrics::Counter, metrics::Histogram)>>> =
        OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        // Bind to our recorder, never to the no-op one.
        crate::telemetry::prometheus();
        Mutex::default()
    });
    let mut handles = handles.lock().unwrap_or_else(PoisonError::into_inner);
    handles
        .entry((method, route, status))
        .or_insert_with(|| {
            let count = metrics::counter!(
                "herald_http_requests_total",
                "method" => method,
                "route" => route,
                "status" => status
            );
            let duration = metrics::histogram!(
                "herald_http_request_duration_seconds",
                "method" => method,
                "route" => route
            );
            (count, duration)
        })
        .clone()
}
