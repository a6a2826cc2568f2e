//! `GET /metrics`: Prometheus text, with the gauges read at scrape time.

use poem::http::header;
use poem::{Request, Response};

use super::error::ApiError;
use super::AppState;

/// `GET /metrics`: Prometheus text. Protected by `HERALD_METRICS_TOKEN`
/// (`Authorization: Bearer …`) when it is set.
#[poem::handler]
pub(super) async fn metrics_endpoint(req: &Request) -> poem::Result<Response> {
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
