//! Sending one batch of rows to the downstream: a JSON array POSTed with an
//! `Idempotency-Key`, retried with backoff on 5xx, timeouts and connection
//! errors, and refused for good on a 4xx.
//!
//! It lives apart from the kind because it is the one place that talks HTTP:
//! the kind decides which rows form a batch and records the checkpoint after
//! it; this file only gets one batch acknowledged (or says why not). The key
//! (job id and batch number) is what lets the downstream drop the one batch a
//! crash between its answer and the checkpoint would send twice.

use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use url::Url;

use super::parse::Row;
use super::{Import, ImportInput};
use crate::kinds::{JobContext, JobFailure};

/// Tries per batch: the first and two retries.
const TRIES: u32 = 3;

/// 200 ms, 400 ms … scaled by a random factor in [0.5, 1.5).
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(2u32.saturating_pow(attempt - 1));
    base.mul_f64(rand::rng().random_range(0.5..1.5))
        .min(Duration::from_secs(10))
}

/// How a batch ended when the downstream answered.
pub(super) enum Sent {
    Ok,
    /// A 4xx: these rows failed.
    Refused(String),
}

impl Import {
    /// POSTs batch number `number` (counted from 0 over the whole job),
    /// retrying 5xx, timeouts and connection errors.
    pub(super) async fn send(
        &self,
        ctx: &JobContext,
        url: &Url,
        input: &ImportInput,
        number: u64,
        batch: &[Row],
    ) -> Result<Sent, JobFailure> {
        // The same batch (same rows) gets the same key in every attempt: the
        // checkpoint falls on batch boundaries, so batches are cut alike.
        let key = format!("{}:{}", ctx.job_id, number);
        let ds = self.downstreams.get(&input.downstream).ok_or_else(|| {
            JobFailure::permanent(
                "unknown_downstream",
                format!(
                    "the downstream `{}` is no longer configured",
                    input.downstream
                ),
            )
        })?;
        let body: Vec<&Value> = batch.iter().map(|r| &r.value).collect();
        let timeout = ds.timeout.unwrap_or(Duration::from_secs(30));
        let mut last = String::new();
        for attempt in 1..=TRIES {
            let mut req = self
                .http
                .post(url.clone())
                .header("idempotency-key", &key)
                .json(&body)
                .timeout(timeout);
            for (k, v) in &ds.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(Sent::Ok),
                Ok(resp) if resp.status().is_client_error() => {
                    return Ok(Sent::Refused(format!(
                        "the downstream refused the batch: HTTP {}",
                        resp.status().as_u16()
                    )))
                }
                Ok(resp) => last = format!("HTTP {}", resp.status().as_u16()),
                Err(e) if e.is_timeout() => {
                    last = format!("no answer within {} ms", timeout.as_millis())
                }
                Err(e) => last = format!("request failed: {e}"),
            }
            if attempt < TRIES {
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
                }
            }
        }
        // Still failing after the retries: the attempt fails (and is retried
        // as a whole, from the checkpoint).
        Err(JobFailure::retryable(
            "downstream_unavailable",
            format!("a batch could not be delivered after {TRIES} tries: {last}"),
        ))
    }
}
