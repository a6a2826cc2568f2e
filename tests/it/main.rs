//! herald's integration tests: one binary (it links once), one module per area.
//! Every test starts the real server on port 0 against a fresh SQLite file, or
//! a fresh PostgreSQL database (`sqlite::` and `postgres::` variants, see
//! `backend_tests!`), and talks HTTP over loopback.

#[macro_use]
mod common;

mod aggregate;
mod auth;
mod browser;
mod chaos;
mod cli;
mod core_jobs;
mod crash;
mod crew;
mod dashboard;
mod downstream;
mod event_log;
mod feed;
mod hostile;
mod items;
mod js_client;
mod kinds;
mod nodes;
mod operability;
mod own_kinds;
mod queue;
mod remote;
mod schema_fuzz;
mod stream;
mod uploads;
mod validation;
