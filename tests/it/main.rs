//! herald's integration tests: one binary (it links once), one module per area.
//! Every test starts the real server on port 0 against a fresh SQLite file and
//! talks HTTP over loopback.

mod aggregate;
mod auth;
mod cli;
mod common;
mod core_jobs;
mod crash;
mod downstream;
mod operability;
mod stream;
mod validation;
