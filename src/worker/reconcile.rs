//! Crash safety. A job row and its queue task are written in separate steps,
//! and a killed process leaves jobs marked running; this puts both right.
//!
//! - At start-up, before the worker runs: jobs left `running` go back to
//!   `queued` with the next attempt (or fail, if that was their last), and every
//!   queued job whose task is not waiting in the queue gets a fresh task.
//! - Then periodically: queued jobs that have had no live task for a while (a
//!   push that failed after the row was committed) are pushed again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::domain::Timestamp;
use crate::jobs::Jobs;
use crate::queue::Queue;
use crate::store::{Store, StoreError};

const BATCH: i64 = 500;

/// A queued job is only considered orphaned once it has been without a task for
/// this long, so a push that is still on its way is not doubled.
const ORPHAN_AGE: Duration = Duration::from_secs(5);

pub struct Reconciler {
    pub jobs: Arc<Jobs>,
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub cancels: Arc<CancelRegistry>,
}

impl Reconciler {
    /// Start-up recovery; returns how many jobs were given a fresh task.
    pub async fn at_startup(&self) -> Result<usize, StoreError> {
        let recovered = self.jobs.recover_interrupted().await?;
        if !recovered.requeued.is_empty() || !recovered.failed.is_empty() {
            tracing::warn!(
                requeued = recovered.requeued.len(),
                failed = recovered.failed.len(),
                "recovered jobs a stopped process left running"
            );
        }
        self.push_orphans(true, Timestamp::now()).await
    }

    async fn push_orphans(
        &self,
        startup: bool,
        older_than: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut pushed = 0;
        loop {
            let ids = self
                .store
                .queued_without_task(startup, older_than, BATCH)
                .await?;
            let n = ids.len();
            let before = pushed;
            for id in ids {
                if self.cancels.is_running(id) {
                    continue;
                }
                self.store.delete_task(id).await?;
                match self.queue.push(id).await {
                    Ok(()) => pushed += 1,
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "re-push failed; will try again")
                    }
                }
            }
            // One page only, except at start-up; stop early if nothing could be pushed.
            if (n as i64) < BATCH || !startup || pushed == before {
                return Ok(pushed);
            }
        }
    }

    /// Jobs running on nodes whose lease ran out go back to the queue (next
    /// attempt) with a fresh task, which any live node may fetch.
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
        for id in recovered.requeued.into_iter().map(|job| job.id) {
            self.store.delete_task(id).await?;
            if let Err(e) = self.queue.push(id).await {
                tracing::warn!(job_id = %id, error = %e, "re-push failed; will try again");
            }
        }
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
            let cutoff = Timestamp(Timestamp::now().0 - ORPHAN_AGE.as_micros() as i64);
            match self.push_orphans(false, cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    pushed = n,
                    "queued jobs without a queue task were pushed again"
                ),
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed; will try again"),
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
