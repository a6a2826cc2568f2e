//! `aggregate`: calls several downstream HTTP sources concurrently, reports
//! progress per source as each finishes (and per retry), and merges their
//! answers into one result:
//! `{sources: {name: body}, failed: {name: {code, message}}, elapsed_ms}`.
//!
//! Input: `{sources: [{name, downstream, path, method?, body?, timeout_ms?,
//! retries?}], concurrency?, allow_partial?}`. Sources only name configured
//! downstreams (see `downstream`). Connect errors, timeouts and 5xx are retried
//! with exponential backoff and jitter, honouring `Retry-After`; a 4xx is not.
//!
//! This file is the kind: its limits, running the fetches side by side
//! (at most `concurrency` at once, all dropped on cancel) and merging their
//! answers into the result or one failure. The input's checks (`plan`) and
//! the fetching of one source with its retries (`fetch`) live beside it.

mod fetch;
mod plan;
mod schema;

pub(crate) use schema::input_schema;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::domain::FieldError;
use crate::kinds::call::Caller;
use crate::kinds::{JobContext, JobFailure, Kind};
use fetch::Outcome;

pub const MAX_SOURCES: usize = 100;
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const MAX_CONCURRENCY: usize = 32;
pub const DEFAULT_RETRIES: u32 = crate::kinds::call::DEFAULT_RETRIES;
pub const MAX_RETRIES: u32 = 10;
pub const DEFAULT_TIMEOUT: Duration = crate::kinds::call::DEFAULT_TIMEOUT;
pub const MAX_TIMEOUT_MS: u64 = 600_000;

pub struct Aggregate {
    caller: Arc<Caller>,
}

impl Aggregate {
    pub(crate) fn new(caller: Arc<Caller>) -> Aggregate {
        Aggregate { caller }
    }
}

/// Implemented directly (not through the typed [`crate::JobKind`]) so that
/// `plan` reports every field error of an input at once.
#[async_trait]
impl Kind for Aggregate {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn input_schema(&self) -> Value {
        schema::input_schema()
    }

    fn check(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        self.plan(input).map(|_| ())
    }

    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let plan = self.plan(&ctx.input).map_err(|e| {
            JobFailure::permanent("bad_input", format!("aggregate input is invalid: {e:?}"))
        })?;
        let started = Instant::now();
        let total = plan.sources.len();
        let done = AtomicUsize::new(0);
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
