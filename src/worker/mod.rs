//! Running jobs: the runner (a claimed job's attempt, timeout, cancel grace,
//! outcome), progress coalescing, and crash recovery.
//!
//! - [`runner`]: a claimed job's attempt: timeout, cancel grace, outcome (a
//!   retry goes back to the queue until its backoff has passed).
//! - [`progress`]: progress coalescing (at most one report per interval, latest wins).
//! - [`reconcile`]: puts back in the queue the jobs a stopped process or a
//!   node whose lease ran out left running.

pub mod progress;
pub mod reconcile;
pub mod runner;
