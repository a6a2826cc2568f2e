//! Calling a named downstream: one request with its timeout and body-size
//! limit, and the retry rule every kind shares (connect errors, timeouts and
//! 5xx are retried with exponential backoff and jitter, or the downstream's
//! `Retry-After`; a 4xx never is).
//!
//! `aggregate` runs many of these side by side with a progress event per
//! retry; a kind of your own gets [`Downstream`] from
//! [`JobContext::downstream`](super::JobContext::downstream).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::JobFailure;
use crate::downstream::Downstreams;

/// The first retry waits about this long; each later one twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// The longest pause before a retry, `Retry-After` included.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A downstream without a configured timeout gets this one.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries after the first try, unless a kind asks otherwise.
pub(crate) const DEFAULT_RETRIES: u32 = 2;

/// The HTTP client every kind shares, with the configured downstreams.
pub(crate) struct Caller {
    pub(crate) downstreams: Arc<Downstreams>,
    http: reqwest::Client,
    max_body_bytes: usize,
}

/// One request, resolved against its downstream.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) url: Url,
    pub(crate) method: Method,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Option<Value>,
    pub(crate) timeout: Duration,
}

/// One try's failure: its code, message, and whether another try may help.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) retry: bool,
    pub(crate) retry_after: Option<Duration>,
}

impl CallError {
    fn new(code: &str, message: String, retry: bool) -> CallError {
        CallError {
            code: code.to_owned(),
            message,
            retry,
            retry_after: None,
        }
    }
}

impl Caller {
    pub(crate) fn new(
        downstreams: Arc<Downstreams>,
        max_body_bytes: usize,
    ) -> anyhow::Result<Caller> {
        let redirects = if downstreams.allow_any_url {
            reqwest::redirect::Policy::limited(5)
        } else {
            // A redirect could lead anywhere: follow none.
            reqwest::redirect::Policy::none()
        };
        let http = reqwest::Client::builder()
            .redirect(redirects)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Caller {
            downstreams,
            http,
            max_body_bytes,
        })
    }

    /// One try: the answer's JSON (its text when it is not JSON), its size
    /// and status.
    pub(crate) async fn once(
        &self,
        req: &Request,
    ) -> Result<(Value, usize, StatusCode), CallError> {
        let mut builder = self.http.request(req.method.clone(), req.url.clone());
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        let work = async {
            let resp = builder.send().await.map_err(|e| {
                let code = if e.is_connect() {
                    "connect_failed"
                } else {
                    "request_failed"
                };
                CallError::new(code, format!("{e}"), true)
            })?;
            let status = resp.status();
            if !status.is_success() {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let host = req.url.host_str().unwrap_or("downstream");
                // Never a 4xx, 429 included: the contract is that only
                // connect errors, timeouts and 5xx are retried.
                let mut e = CallError::new(
                    &format!("http_{}", status.as_u16()),
                    format!("{host} answered {status}"),
                    status.is_server_error(),
                );
                e.retry_after = retry_after;
                return Err(e);
            }
            let mut bytes = Vec::new();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    let message = format!("reading the response body failed: {e}");
                    CallError::new("body_failed", message, true)
                })?;
                if bytes.len() + chunk.len() > self.max_body_bytes {
                    let message = format!(
                        "the response body is over the limit of {} bytes (HERALD_DOWNSTREAM_MAX_BODY_BYTES)",
                        self.max_body_bytes
                    );
                    return Err(CallError::new("body_too_large", message, false));
                }
                bytes.extend_from_slice(&chunk);
            }
            let n = bytes.len();
            // JSON when it parses, the text otherwise.
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok((value, n, status))
        };
        match tokio::time::timeout(req.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CallError::new(
                "timeout",
                format!("no complete answer within {} ms", req.timeout.as_millis()),
                true,
            )),
        }
    }
}

/// How long to wait before retry `attempt` (1 for the first retry): 200 ms,
/// 400 ms, 800 ms … each scaled by a random factor in [0.5, 1.5), or what
/// the downstream asked for.
pub(crate) fn pause_before_retry(attempt: u32, retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or_else(|| {
            let base = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
            base.mul_f64(rand::rng().random_range(0.5..1.5))
        })
        .min(BACKOFF_CAP)
}

/// A named downstream (from `HERALD_DOWNSTREAMS` or the downstreams file),
/// as a kind calls it: paths stay under its base URL (the same guard as
/// `aggregate`'s), its headers and timeout apply, and connect errors,
/// timeouts and 5xx are retried (2 retries unless [`Downstream::retries`]
/// says otherwise).
///
/// A call that still fails is a [`JobFailure`] with the last try's code
/// (`http_503`, `timeout`, `connect_failed` …): permanent for a 4xx or an
/// answer that does not fit the type asked for, else retryable, so the job's
/// next attempt tries again.
pub struct Downstream {
    pub(crate) caller: Arc<Caller>,
    pub(crate) name: String,
    pub(crate) retries: u32,
    pub(crate) timeout: Option<Duration>,
}

impl Downstream {
    /// Retries after the first try (default 2).
    pub fn retries(mut self, retries: u32) -> Downstream {
        self.retries = retries;
        self
    }

    /// The time one try may take (default: the downstream's configured
    /// timeout, else 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Downstream {
        self.timeout = Some(timeout);
        self
    }

    /// `GET path` (with its query), the answer read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, JobFailure> {
        self.call::<T>(Method::GET, path, None).await
    }

    /// `POST path` with `body` as JSON, the answer read as `T`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, JobFailure> {
        self.call::<T>(Method::POST, path, Some(body.clone())).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, JobFailure> {
        let (url, ds) = self
            .caller
            .downstreams
            .resolve(&self.name, path)
            .map_err(|e| JobFailure::permanent("bad_downstream_path", e))?;
        let req = Request {
            url,
            method,
            headers: ds.headers.clone(),
            body,
            timeout: self.timeout.or(ds.timeout).unwrap_or(DEFAULT_TIMEOUT),
        };
        let mut attempt = 1;
        let value = loop {
            match self.caller.once(&req).await {
                Ok((value, _, _)) => break value,
                Err(e) if e.retry && attempt <= self.retries => {
                    let pause = pause_before_retry(attempt, e.retry_after);
                    tracing::warn!(downstream = %self.name, path, code = %e.code,
                        message = %e.message, retry_in_ms = pause.as_millis() as u64,
                        "downstream call failed; retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => {
                    let message = format!(
                        "downstream `{}` {path}: {} (after {attempt} tries)",
                        self.name, e.message
                    );
                    return Err(if e.retry || e.code == "http_429" {
                        JobFailure::retryable(e.code, message)
                    } else {
                        JobFailure::permanent(e.code, message)
                    });
                }
            }
        };
        serde_json::from_value(value).map_err(|e| {
            JobFailure::permanent(
                "bad_downstream_answer",
                format!(
                    "downstream `{}` {path} answered JSON of an unexpected shape: {e}",
                    self.name
                ),
            )
        })
    }
}
