//! Running jobs: the runner (one job's attempts, timeout, cancel grace,
//! retries, outcome), progress coalescing, and crash recovery.
//!
//! - [`runner`]: one job's attempts: start, timeout, cancel grace, retry, outcome.
//! - [`progress`]: progress coalescing (at most one report per interval, latest wins).
//! - [`reconcile`]: pushes queued jobs that have no queue task (after a crash).

pub mod progress;
pub mod reconcile;
pub mod runner;
