//! Crash safety: a killed process leaves jobs marked `running`; this puts
//! them back in the queue (the job table), where any worker claims them.
//!
//! - At start-up, before the worker runs: jobs left `running` go back to
//!   `queued` with the next attempt (or fail, if that was their last).
//! - Then periodically (PostgreSQL): the same for the jobs of nodes whose
//!   lease ran out.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::store::{Recovered, Store, StoreError};

pub struct Reconciler {
    pub jobs: Arc<Jobs>,
}

impl Reconciler {
    /// Start-up recovery.
    pub async fn at_startup(&self) -> Result<Recovered, StoreError> {
        let recovered = self.jobs.recover_interrupted().await?;
        if !recovered.requeued.is_empty() || !recovered.failed.is_empty() {
            tracing::warn!(
                requeued = recovered.requeued.len(),
                failed = recovered.failed.len(),
                "recovered jobs a stopped process left running"
            );
        }
        Ok(recovered)
    }

    /// Jobs running on nodes whose lease ran out go back to the queue (next
    /// attempt), where any live node may claim them.
    async fn take_over_expired(&self) -> Result<(), StoreError> {
        let recovered = self.jobs.recover_expired().await?;
        if recovered.requeued.is_empty() && recovered.failed.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            requeued = recovered.requeued.len(),
            failed = recovered.failed.len(),
            "took over jobs of a node whose lease ran out"
        );
        Ok(())
    }

    /// Runs until `stop` fires.
    pub async fn run_periodically(self, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.take_over_expired().await {
                tracing::warn!(error = %e, "lease check failed; will try again");
            }
        }
    }
}

/// Keeps this node's liveness record fresh until `stop` fires.
pub async fn heartbeat(store: Arc<dyn Store>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = store.heartbeat().await {
            tracing::warn!(error = %e, "heartbeat failed; other nodes take this node's jobs over if it stays silent for the lease");
        }
    }
}
