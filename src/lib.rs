//! herald runs slow jobs from a durable queue and streams each job's progress
//! and result to any number of watchers over Server-Sent Events.
//!
//! # Layout
//!
//! - [`config`]: `Config`, every setting a flag and an `HERALD_*` variable.
//! - [`app`]: `Application::build` / `run`: store, queue, workers, HTTP, shutdown order.
//! - [`retention`]: deletes finished jobs past `HERALD_RETENTION_HOURS`.
//! - [`server`]: the HTTP/1.1 accept loop (hyper) that serves the poem app.
//! - [`shutdown`]: SIGTERM / Ctrl-C → the shutdown token.
//! - [`client`]: the `herald submit` / `herald watch` client commands.
//! - [`auth`]: API keys, JWTs and stream tokens → the request's tenant.
//! - [`domain`]: job ids, `JobStatus` and its transitions, progress, events; no I/O.
//! - [`store`]: the store's traits, one per concept (jobs and their events, the feed,
//!   uploads and checkpoints, nodes and leases, the queue's tasks; `Store` is their sum),
//!   and its two backends, a folder each: SQLite (one process) and PostgreSQL (several
//!   nodes, leases in `herald_nodes`). Every batched write (the queue's pushes too) goes
//!   through `store/group.rs`, the group commit.
//! - [`worker`]: the `JobKind` trait and registry, the runner (attempts, timeout,
//!   cancel grace, retries), the apalis queue, the crash reconciler, the kinds
//!   (`demo`, `aggregate`, and `import`, which feeds an uploaded file to a downstream).
//! - [`cancel`]: job id → `CancellationToken` for the jobs running here.
//! - [`downstream`]: the named downstreams `aggregate` may call, and the SSRF guard.
//! - [`limits`]: per-tenant stream and submission limits.
//! - [`hub`]: per-job wake-ups ("look again"; the store holds the events).
//! - [`notify`]: PostgreSQL LISTEN: other nodes' events, cancels and queue pushes wake this node.
//! - [`stream`]: a job's SSE stream: subscribe, replay, tail, heartbeat, end.
//! - [`feed`]: the multiplexed feed (`GET /v1/events`): many jobs' events on one stream.
//! - [`api`]: the HTTP API (poem + poem-openapi) and its DTOs.
//! - [`error`]: `ApiError` → RFC 9457 problem+json.
//! - [`telemetry`]: tracing set-up, and the Prometheus metrics (recorder, labels, helpers).

pub mod api;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod config;
pub mod domain;
pub mod downstream;
pub mod error;
pub mod feed;
pub mod hub;
pub mod limits;
pub mod notify;
pub mod retention;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod worker;

pub use app::{AppState, Application};
pub use config::Config;
pub use worker::{JobContext, JobFailure, JobKind, Kinds};
