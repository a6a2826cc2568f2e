//! Fetching one source: a request with its timeout and body-size limit,
//! retried on connect errors, timeouts and 5xx with exponential backoff and
//! jitter (or the downstream's `Retry-After`), with a progress event for each
//! retry and for the end.
//!
//! Apart from the kind because it is the one place that talks HTTP: the kind
//! runs these fetches side by side and merges what they return; this file
//! only turns one source into an answer or a failure (`code`, `message`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::plan::Source;
use super::Aggregate;
use crate::kinds::JobContext;

/// The first retry waits about this long; each later one twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// The longest pause before a retry, `Retry-After` included.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How one source ended.
pub(super) struct Outcome {
    pub(super) name: String,
    pub(super) result: Result<Value, (String, String)>,
}

/// One request's failure: its code, message, and whether another try may help.
struct TryError {
    code: String,
    message: String,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Aggregate {
    async fn fetch_once(&self, src: &Source) -> Result<(Value, usize, StatusCode), TryError> {
        let mut req = self.http.request(src.method.clone(), src.url.clone());
        for (k, v) in &src.headers {
            req = req.header(k, v);
        }
        if let Some(body) = &src.body {
            req = req.json(body);
        }
        let work = async {
            let resp = req.send().await.map_err(|e| TryError {
                code: if e.is_connect() {
                    "connect_failed"
                } else {
                    "request_failed"
                }
                .to_owned(),
                message: format!("{e}"),
                retry: true,
                retry_after: None,
            })?;
            let status = resp.status();
            if !status.is_success() {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(TryError {
                    code: format!("http_{}", status.as_u16()),
                    message: format!(
                        "{} answered {status}",
                        src.url.host_str().unwrap_or("downstream")
                    ),
                    // Never a 4xx, 429 included: the contract is that only
                    // connect errors, timeouts and 5xx are retried.
                    retry: status.is_server_error(),
                    retry_after,
                });
            }
            let mut bytes = Vec::new();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| TryError {
                    code: "body_failed".to_owned(),
                    message: format!("reading the response body failed: {e}"),
                    retry: true,
                    retry_after: None,
                })?;
                if bytes.len() + chunk.len() > self.max_body_bytes {
                    return Err(TryError {
                        code: "body_too_large".to_owned(),
                        message: format!(
                            "the response body is over the limit of {} bytes (HERALD_DOWNSTREAM_MAX_BODY_BYTES)",
                            self.max_body_bytes
                        ),
                        retry: false,
                        retry_after: None,
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            let n = bytes.len();
            // JSON when it parses, the text otherwise.
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok((value, n, status))
        };
        match tokio::time::timeout(src.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(TryError {
                code: "timeout".to_owned(),
                message: format!("no complete answer within {} ms", src.timeout.as_millis()),
                retry: true,
                retry_after: None,
            }),
        }
    }

    /// Fetches one source with its retries, reporting each retry and the end.
    pub(super) async fn fetch(
        &self,
        ctx: &JobContext,
        src: &Source,
        done: &AtomicUsize,
        total: usize,
    ) -> Outcome {
        let started = Instant::now();
        let mut attempt = 1;
        let result = loop {
            match self.fetch_once(src).await {
                Ok((value, bytes, status)) => break Ok((value, bytes, status.as_u16())),
                Err(e) if e.retry && attempt <= src.retries => {
                    let pause = e
                        .retry_after
                        .unwrap_or_else(|| backoff(attempt))
                        .min(BACKOFF_CAP);
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

/// 200 ms, 400 ms, 800 ms … each scaled by a random factor in [0.5, 1.5).
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let jitter = rand::rng().random_range(0.5..1.5);
    base.mul_f64(jitter).min(BACKOFF_CAP)
}
