//! `aggregate`: calls several downstream HTTP sources concurrently, reports
//! progress per source as each finishes (and per retry), and merges their
//! answers into one result:
//! `{sources: {name: body}, failed: {name: {code, message}}, elapsed_ms}`.
//!
//! Input: `{sources: [{name, downstream, path, method?, body?, timeout_ms?,
//! retries?}], concurrency?, allow_partial?}`. Sources only name configured
//! downstreams (see `downstream`). Connect errors, timeouts and 5xx are retried
//! with exponential backoff and jitter, honouring `Retry-After`; a 4xx is not.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use rand::Rng;
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Map, Value};

use crate::domain::{fields, FieldError};
use crate::downstream::Downstreams;
use crate::worker::{JobContext, JobFailure, JobKind};

pub const MAX_SOURCES: usize = 100;
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const MAX_CONCURRENCY: usize = 32;
pub const DEFAULT_RETRIES: u32 = 2;
pub const MAX_RETRIES: u32 = 10;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// The first retry waits about this long; each later one twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// The longest pause before a retry, `Retry-After` included.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub struct Aggregate {
    downstreams: Arc<Downstreams>,
    http: reqwest::Client,
    max_body_bytes: usize,
}

impl Aggregate {
    pub fn new(downstreams: Arc<Downstreams>, max_body_bytes: usize) -> anyhow::Result<Aggregate> {
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
        Ok(Aggregate {
            downstreams,
            http,
            max_body_bytes,
        })
    }
}

/// One source, validated.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    url: Url,
    headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    method: Method,
    body: Option<Value>,
    timeout: Duration,
    retries: u32,
}

#[derive(Debug)]
struct Plan {
    sources: Vec<Source>,
    concurrency: usize,
    allow_partial: bool,
}

impl Aggregate {
    fn plan(&self, input: &Value) -> Result<Plan, Vec<FieldError>> {
        let obj = fields::object(
            input,
            "",
            "{\"sources\": [{\"name\": …, \"downstream\": …, \"path\": …}]}",
        )?;
        let mut errors = Vec::new();
        fields::unknown_fields(
            obj,
            &["sources", "concurrency", "allow_partial"],
            "",
            &mut errors,
        );
        let concurrency = fields::whole_number(
            obj,
            "concurrency",
            1..=MAX_CONCURRENCY as i64,
            "",
            &mut errors,
        )
        .map_or(DEFAULT_CONCURRENCY, |n| n as usize);
        let allow_partial = fields::boolean(obj, "allow_partial", "", &mut errors).unwrap_or(false);
        let mut sources = Vec::new();
        match obj.get("sources") {
            Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_SOURCES => {
                let mut names = HashSet::new();
                for (i, s) in list.iter().enumerate() {
                    if let Some(src) = self.source(i, s, &mut names, &mut errors) {
                        sources.push(src);
                    }
                }
            }
            Some(Value::Array(_)) => errors.push(FieldError::new(
                "/sources",
                format!("must list 1 to {MAX_SOURCES} sources"),
            )),
            Some(_) => errors.push(FieldError::new("/sources", "must be an array of sources")),
            None => errors.push(FieldError::new("/sources", "is required")),
        }
        if errors.is_empty() {
            Ok(Plan {
                sources,
                concurrency,
                allow_partial,
            })
        } else {
            Err(errors)
        }
    }

    fn source(
        &self,
        i: usize,
        s: &Value,
        names: &mut HashSet<String>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Source> {
        let here = format!("/sources/{i}");
        let at = |f: &str| format!("{here}{f}");
        let obj = match fields::object(s, &here, "{\"name\": …, \"downstream\": …, \"path\": …}")
        {
            Ok(obj) => obj,
            Err(e) => {
                errors.extend(e);
                return None;
            }
        };
        let before = errors.len();
        let mut allowed = vec![
            "name",
            "downstream",
            "path",
            "method",
            "body",
            "timeout_ms",
            "retries",
        ];
        if self.downstreams.allow_any_url {
            allowed.push("url");
        }
        fields::unknown_fields(obj, &allowed, &here, errors);
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n.len() <= 100 => {
                if !names.insert(n.to_owned()) {
                    errors.push(FieldError::new(
                        at("/name"),
                        "is used by another source; names must be unique",
                    ));
                }
                n.to_owned()
            }
            _ => {
                errors.push(FieldError::new(
                    at("/name"),
                    "is required: a string of 1 to 100 characters",
                ));
                String::new()
            }
        };
        let method = match obj
            .get("method")
            .and_then(|m| m.as_str().map(str::to_ascii_uppercase))
        {
            None if obj.get("method").is_none_or(Value::is_null) => Method::GET,
            Some(m) if m == "GET" => Method::GET,
            Some(m) if m == "POST" => Method::POST,
            _ => {
                errors.push(FieldError::new(at("/method"), "must be GET or POST"));
                Method::GET
            }
        };
        let body = obj.get("body").filter(|b| !b.is_null()).cloned();
        if body.is_some() && method != Method::POST {
            errors.push(FieldError::new(
                at("/body"),
                "is only sent with method POST",
            ));
        }
        let timeout_ms =
            fields::whole_number(obj, "timeout_ms", 1..=MAX_TIMEOUT_MS as i64, &here, errors)
                .map(|n| n as u64);
        let retries = fields::whole_number(obj, "retries", 0..=MAX_RETRIES as i64, &here, errors)
            .map_or(DEFAULT_RETRIES, |n| n as u32);
        let target = if let (Some(url), true) = (obj.get("url"), self.downstreams.allow_any_url) {
            match url
                .as_str()
                .and_then(|u| Url::parse(u).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
            {
                Some(u) => Some((u, Vec::new(), None)),
                None => {
                    errors.push(FieldError::new(at("/url"), "must be an http or https URL"));
                    None
                }
            }
        } else {
            let downstream = obj.get("downstream").and_then(Value::as_str);
            let path = obj.get("path").and_then(Value::as_str);
            match (downstream, path) {
                (None, _) => {
                    errors.push(FieldError::new(
                        at("/downstream"),
                        "is required: the name of a configured downstream",
                    ));
                    None
                }
                (Some(_), None) => {
                    errors.push(FieldError::new(
                        at("/path"),
                        "is required: a path under the downstream, such as /v1/items",
                    ));
                    None
                }
                (Some(d), Some(p)) => match self.downstreams.resolve(d, p) {
                    Ok((url, ds)) => Some((url, ds.headers.clone(), ds.timeout)),
                    Err(why) => {
                        let field = if self.downstreams.get(d).is_none() {
                            "/downstream"
                        } else {
                            "/path"
                        };
                        errors.push(FieldError::new(at(field), why));
                        None
                    }
                },
            }
        };
        if errors.len() > before {
            return None;
        }
        let (url, headers, default_timeout): (Url, _, Option<Duration>) = target?;
        Some(Source {
            name,
            url,
            headers,
            method,
            body,
            timeout: timeout_ms
                .map(Duration::from_millis)
                .or(default_timeout)
                .unwrap_or(DEFAULT_TIMEOUT),
            retries,
        })
    }
}

/// How one source ended.
struct Outcome {
    name: String,
    result: Result<Value, (String, String)>,
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
    async fn fetch(
        &self,
        ctx: &JobContext,
        src: &Source,
        done: &std::sync::atomic::AtomicUsize,
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
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
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
        let finished = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
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

#[async_trait]
impl JobKind for Aggregate {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn validate(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        self.plan(input).map(|_| ())
    }

    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let plan = self.plan(&ctx.input).map_err(|e| {
            JobFailure::permanent("bad_input", format!("aggregate input is invalid: {e:?}"))
        })?;
        let started = Instant::now();
        let total = plan.sources.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        // Futures do nothing until polled: `buffer_unordered` runs at most
        // `concurrency` of them at a time.
        let fetches: Vec<_> = plan
            .sources
            .iter()
            .map(|src| self.fetch(ctx, src, &done, total))
            .collect();
        let all = futures::stream::iter(fetches)
            .buffer_unordered(plan.concurrency)
            .collect::<Vec<Outcome>>();
        // Dropping the fetches on cancel closes their connections at once.
        let outcomes = tokio::select! {
            o = all => o,
            _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
        };
        let mut sources = Map::new();
        let mut failed = BTreeMap::new();
        for o in outcomes {
            match o.result {
                Ok(v) => {
                    sources.insert(o.name, v);
                }
                Err((code, message)) => {
                    failed.insert(o.name, json!({"code": code, "message": message}));
                }
            }
        }
        if !failed.is_empty() && !plan.allow_partial {
            let list: Vec<String> = failed
                .iter()
                .map(|(n, e)| format!("{n} ({})", e["code"].as_str().unwrap_or("?")))
                .collect();
            let message = format!(
                "{} of {total} sources failed: {}; set allow_partial to keep the others",
                failed.len(),
                list.join(", ")
            );
            // Sources were already retried; only a downstream that might be
            // back later is worth another attempt of the whole job.
            let all_client_errors = failed.values().all(|e| {
                e["code"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("http_4") && c != "http_429")
                    || e["code"] == "body_too_large"
            });
            return Err(if all_client_errors {
                JobFailure::permanent("sources_failed", message)
            } else {
                JobFailure::retryable("sources_failed", message)
            });
        }
        Ok(json!({
            "sources": sources,
            "failed": failed,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }))
    }
}
