//! Logging through `tracing`: text or JSON lines, level from RUST_LOG.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_core=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets for every `*_seconds` histogram: 0.5 ms … 5 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The process's Prometheus recorder, installed on first use (one per process,
/// shared by every `Application` in it, as in the tests).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
            .expect("buckets are not empty");
        let handle = builder.install_recorder().unwrap_or_else(|e| {
            // Someone else installed a recorder first: keep a private one so
            // /metrics still answers, if emptier.
            tracing::warn!(error = %e, "a metrics recorder was already installed");
            PrometheusBuilder::new().build_recorder().handle()
        });
        describe();
        // Histogram samples wait in a buffer until upkeep folds them into the
        // buckets: without this, an unscraped herald would grow without bound.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("herald_jobs_submitted_total", "Jobs accepted, by kind.");
    describe_counter!(
        "herald_jobs_finished_total",
        "Jobs that reached a terminal state, by kind and status."
    );
    describe_histogram!(
        "herald_job_run_seconds",
        Unit::Seconds,
        "Run time of one attempt, by kind."
    );
    describe_gauge!("herald_queue_depth", "Jobs waiting in the queue.");
    describe_gauge!(
        "herald_queue_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest queued job."
    );
    describe_gauge!("herald_jobs_running", "Jobs running in this process.");
    describe_gauge!(
        "herald_streams_open",
        "Open event streams on this node, by type."
    );
    describe_counter!(
        "herald_events_appended_total",
        "Events appended, by event name."
    );
    describe_histogram!(
        "herald_event_delivery_lag_seconds",
        Unit::Seconds,
        "From an event's append to its bytes handed to the client's connection."
    );
    describe_counter!(
        "herald_http_requests_total",
        "HTTP requests, by method, route and status."
    );
    describe_histogram!(
        "herald_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response head, by method and route (a stream counts until it opens)."
    );
    describe_counter!("herald_store_errors_total", "Store queries that failed.");
}

/// A request path as a bounded label: job ids become `{id}`. Static strings,
/// so labelling a request allocates nothing (measured: per-request label
/// strings cost ~0.7 KiB of RSS per idle stream through fragmentation).
pub fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_id = |s: &str| uuid::Uuid::try_parse(s).is_ok();
    match segments.as_slice() {
        ["v1", "jobs"] => "/v1/jobs",
        ["v1", "jobs", id] if is_id(id) => "/v1/jobs/{id}",
        ["v1", "jobs", id, "events"] if is_id(id) => "/v1/jobs/{id}/events",
        ["v1", "jobs", id, "cancel"] if is_id(id) => "/v1/jobs/{id}/cancel",
        ["v1", "jobs", id, "stream-token"] if is_id(id) => "/v1/jobs/{id}/stream-token",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["openapi.json"] => "/openapi.json",
        ["docs", ..] => "/docs",
        _ => "other",
    }
}

/// An HTTP method or status as a static label.
pub fn method_label(m: &poem::http::Method) -> &'static str {
    match *m {
        poem::http::Method::GET => "GET",
        poem::http::Method::POST => "POST",
        poem::http::Method::OPTIONS => "OPTIONS",
        poem::http::Method::HEAD => "HEAD",
        poem::http::Method::PUT => "PUT",
        poem::http::Method::DELETE => "DELETE",
        poem::http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

pub fn status_label(status: u16) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (200, "200"),
        (202, "202"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
    ];
    CODES.iter().find(|(c, _)| *c == status).map_or(
        match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        |(_, s)| s,
    )
}

/// Counts an appended event, and a job that reached its end.
pub fn applied(event: crate::domain::EventKind, job: &crate::domain::JobRecord) {
    metrics::counter!("herald_events_appended_total", "event" => event.as_str()).increment(1);
    if job.status.is_terminal() {
        metrics::counter!(
            "herald_jobs_finished_total",
            "kind" => job.kind.clone(),
            "status" => job.status.as_str()
        )
        .increment(1);
    }
}

/// Counts a failed store query.
pub fn store_error() {
    metrics::counter!("herald_store_errors_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn routes_never_carry_ids() {
        assert_eq!(
            route_label("/v1/jobs/01a1fdd4-83fe-76e7-9f42-50d0d1d16752/events"),
            "/v1/jobs/{id}/events"
        );
        assert_eq!(route_label("/v1/jobs"), "/v1/jobs");
        assert_eq!(route_label("/docs/index.css"), "/docs");
        assert_eq!(route_label("/wp-admin/x"), "other");
        assert_eq!(route_label("/v1/jobs/not-an-id"), "other");
    }
}
