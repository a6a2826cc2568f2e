//! herald runs slow jobs from a durable queue and streams each job's progress,
//! items and result to any number of watchers over Server-Sent Events.
//!
//! As a library, herald runs kinds of job of your own beside its built-in
//! ones and keeps everything else (command line, configuration, API, streams,
//! feed, dashboard, both backends): implement [`JobKind`] with a typed input,
//! add it to [`Kinds`], and hand that to [`cli::main`] (or to
//! [`Application::build_with`] to start it yourself, as the tests do).
//!
//! ```no_run
//! use herald::{JobContext, JobFailure, JobKind, Kinds};
//! use serde::{Deserialize, Serialize};
//!
//! /// The input clients submit: `{"day": "2026-11-30", "limit": 10}`.
//! #[derive(Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Input {
//!     /// The day to look at, YYYY-MM-DD.
//!     day: String,
//!     /// At most this many orders, 1 to 1000.
//!     #[serde(default = "ten")]
//!     limit: u32,
//! }
//!
//! fn ten() -> u32 {
//!     10
//! }
//!
//! /// One order, as the `orders` downstream answers `GET /orders?day=…`.
//! #[derive(Deserialize, Serialize)]
//! struct Order {
//!     id: u64,
//!     total: f64,
//! }
//!
//! /// Where an attempt stands, for the next one to resume from.
//! #[derive(Deserialize, Serialize, Default)]
//! struct Tally {
//!     sum: f64,
//! }
//!
//! struct OrderTotals;
//!
//! #[async_trait::async_trait]
//! impl JobKind for OrderTotals {
//!     type Input = Input;
//!     type Output = serde_json::Value;
//!
//!     fn name(&self) -> &'static str {
//!         "order_totals"
//!     }
//!
//!     // Checks beyond serde's: a 422 pointing at `/input/limit`.
//!     fn validate(&self, input: &Input) -> Result<(), Vec<herald::FieldError>> {
//!         if !(1..=1000).contains(&input.limit) {
//!             return Err(vec![herald::FieldError::new("/limit", "must be 1 to 1000")]);
//!         }
//!         Ok(())
//!     }
//!
//!     async fn run(&self, input: Input, ctx: &JobContext) -> Result<serde_json::Value, JobFailure> {
//!         // A named downstream (HERALD_DOWNSTREAMS=orders=http://…), with the
//!         // SSRF guard, timeouts and retries every kind shares.
//!         let orders: Vec<Order> = ctx
//!             .downstream("orders")?
//!             .get(&format!("/orders?day={}", input.day))
//!             .await?;
//!         let orders: Vec<Order> = orders.into_iter().take(input.limit as usize).collect();
//!         // A retried attempt resumes after the items earlier ones appended.
//!         let mut tally: Tally = ctx.checkpoint().await?.unwrap_or_default();
//!         let done = ctx.items_count() as usize;
//!         for (n, order) in orders.iter().enumerate().skip(done) {
//!             if ctx.is_cancelled() {
//!                 return Err(JobFailure::cancelled());
//!             }
//!             tally.sum += order.total;
//!             ctx.item(order).await?; // persisted before this returns
//!             ctx.save_checkpoint(&tally).await?;
//!             let percent = (n + 1) as f64 * 100.0 / orders.len() as f64;
//!             ctx.progress(Some(percent), Some("orders"), None, None).await?;
//!         }
//!         Ok(serde_json::json!({"orders": orders.len(), "sum": tally.sum}))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     herald::cli::main(Kinds::builtin().with(OrderTotals))
//! }
//! ```
//!
//! `examples/crew_suggestions.rs` is a complete worked example, and the
//! README walks through it.
//!
//! # Layout
//!
//! Public, for a binary with kinds of its own:
//! - [`cli`]: the `herald` command line (`serve`, `openapi`, `submit`, `watch`).
//! - [`Application`]: `build` / `build_with` / `run`: store, queue, workers,
//!   HTTP, and the shutdown order.
//! - [`config`]: [`Config`], every setting a flag and an `HERALD_*` variable.
//! - [`kinds`]: the [`JobKind`] trait, [`Kinds`], [`JobContext`], [`JobFailure`],
//!   and the built-in kinds (`demo`, `aggregate`, `import`).
//! - [`domain`]: job ids, `JobStatus` and its transitions, progress, events;
//!   the rules both backends share; no I/O.
//! - [`testing`]: [`testing::TestServer`], a real herald on port 0 inside a
//!   test (what herald's own tests start), for testing kinds of your own.
//! - [`store`]: the store's traits, one per concept (jobs and their events,
//!   the feed, uploads and checkpoints, nodes and leases, the queue's tasks;
//!   `Store` is their sum), and its two backends, a folder each: SQLite (one
//!   process) and PostgreSQL (several nodes). Every batched write (the
//!   queue's pushes too) goes through one helper, the group commit.
//!
//! Inside (private modules):
//! - `jobs`: the jobs service, the only code that changes a job: submit,
//!   start, progress, outcome, cancel, recovery; each with its store write,
//!   wake-ups and metrics.
//! - `uploads`: a file streamed into the store becomes an `import` job.
//! - `worker`: the runner (attempts, timeout, cancel grace, retries),
//!   progress coalescing, and the crash reconciler.
//! - `queue`: the queue (the job table itself: a worker claims due jobs) and
//!   the apalis worker that runs them.
//! - `cancel`: job id → `CancellationToken` for the jobs running here.
//! - `hub`: per-job wake-ups ("look again"; the store holds the events).
//! - `notify`: PostgreSQL LISTEN: other nodes' events, cancels and queue
//!   pushes wake this node.
//! - `stream` and `frame`: a job's SSE stream (subscribe, replay, tail,
//!   heartbeat, end) and one event in SSE framing.
//! - `feed`: the multiplexed feed (`GET /v1/events`).
//! - `event_log`: a job's log and the feed read a page at a time, with the
//!   long-poll, for clients that cannot hold a stream.
//! - `http`: the web layer: routes, middleware (access log, authentication),
//!   `/metrics`, problem+json errors, the OpenAPI document, the accept loop.
//! - `auth`: API keys, JWTs and stream tokens → the request's tenant.
//! - `limits`: per-tenant stream and submission limits.
//! - `downstream`: the named downstreams kinds may call, and the SSRF guard.
//! - `retention`: deletes finished jobs past `HERALD_RETENTION_HOURS`.
//! - `client`: the `herald submit` / `herald watch` commands.
//! - `shutdown`, `telemetry`: signals; tracing and Prometheus metrics.

mod app;
mod auth;
mod cancel;
pub mod cli;
mod client;
pub mod config;
pub mod domain;
mod downstream;
mod event_log;
mod feed;
mod frame;
mod http;
mod hub;
mod jobs;
pub mod kinds;
mod limits;
mod notify;
mod queue;
mod remote;
mod retention;
mod shutdown;
pub mod store;
mod stream;
mod telemetry;
pub mod testing;
mod uploads;
mod worker;

pub use app::Application;
pub use config::Config;
pub use http::{openapi_json, AppState};
pub use kinds::{Downstream, FieldError, JobContext, JobFailure, JobKind, Kinds};
pub use telemetry::init as init_logging;
