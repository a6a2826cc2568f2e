//! Fetching one source: a request with its timeout and body-size limit,
//! retried on connect errors, timeouts and 5xx with exponential backoff and
//! jitter (or the downstream's `Retry-After`), with a progress event for each
//! retry and for the end.
//!
//! Apart from the kind because it is the one place that talks HTTP: the kind
//! runs these fetches side by side and merges what they return; this file
//! only turns one source into an answer or a failure (`code`, `message`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{json, Value};

use super::plan::Source;
use super::Aggregate;
use crate::kinds::call::{pause_before_retry, Request};
use crate::kinds::JobContext;

/// How one source ended.
pub(super) struct Outcome {
    pub(super) name: String,
    pub(super) result: Result<Value, (String, String)>,
}

impl Aggregate {
    /// Fetches one source with its retries, reporting each retry and the end.
    pub(super) async fn fetch(
        &self,
        ctx: &JobContext,
        src: &Source,
        done: &AtomicUsize,
        total: usize,
    ) -> Outcome {
        let started = Instant::now();
        let req = Request {
            url: src.url.clone(),
            method: src.method.clone(),
            headers: src.headers.clone(),
            body: src.body.clone(),
            timeout: src.timeout,
        };
        let mut attempt = 1;
        let result = loop {
            match self.caller.once(&req).await {
                Ok((value, bytes, status)) => break Ok((value, bytes, status.as_u16())),
                Err(e) if e.retry && attempt <= src.retries => {
                    let pause = pause_before_retry(attempt, e.retry_after);
                    let finished = done.load(Ordering::SeqCst);
                    let _ = ctx
                        .progress_kept(
                            Some(percent(finished, total)),
                            Some("fetch"),
                            Some(&format!(
                                "{}: {} ({}), retrying",
                                src.name, e.code, e.message
                            )),
                            Some(json!({
                                "source": src.name, "status": "retrying", "attempt": attempt,
                                "elapsed_ms": started.elapsed().as_millis() as u64, "bytes": 0,
                                "error": {"code": e.code, "message": e.message},
                                "retry_in_ms": pause.as_millis() as u64,
                            })),
                        )
                        .await;
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => break Err((e.code, e.message)),
            }
        };
        let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (status, bytes, message) = match &result {
            Ok((_, bytes, http)) => ("ok", *bytes, format!("{}: ok ({http})", src.name)),
            Err((code, msg)) => ("failed", 0, format!("{}: failed: {code} ({msg})", src.name)),
        };
        let mut data = json!({
            "source": src.name, "status": status, "attempt": attempt,
            "elapsed_ms": elapsed_ms, "bytes": bytes,
        });
        if let Err((code, msg)) = &result {
            data["error"] = json!({"code": code, "message": msg});
        }
        let _ = ctx
            .progress_kept(
                Some(percent(finished, total)),
                Some("fetch"),
                Some(&message),
                Some(data),
            )
            .await;
        Outcome {
            name: src.name.clone(),
            result: result.map(|(v, _, _)| v),
        }
    }
}

fn percent(done: usize, total: usize) -> f64 {
    (done as f64 * 100.0 / total.max(1) as f64).clamp(0.0, 100.0)
}
