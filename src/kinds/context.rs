//! What a job handler gets: its input, a way to report progress, and its
//! cancellation token.

use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use std::sync::Arc;

use futures::future::BoxFuture;

use super::JobFailure;
use crate::domain::{JobId, JobRecord, Progress};

/// Where a handler's progress reports go (the runner's coalescing pump).
pub trait ReportProgress: Send + Sync {
    /// Queues `progress`; a `kept` report resolves once it is persisted.
    fn report(&self, progress: Progress, kept: bool) -> BoxFuture<'_, Result<(), JobFailure>>;
}

pub struct JobContext {
    pub job_id: JobId,
    pub input: Value,
    /// 1 for the first attempt.
    pub attempt: i32,
    token: CancellationToken,
    reporter: Arc<dyn ReportProgress>,
}

impl JobContext {
    pub(crate) fn new(
        job: &JobRecord,
        token: CancellationToken,
        reporter: Arc<dyn ReportProgress>,
    ) -> Self {
        JobContext {
            job_id: job.id,
            input: job.input.clone(),
            attempt: job.attempt,
            token,
            reporter,
        }
    }

    /// Completes when the job is cancelled or the process stops its jobs.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Reports progress: persisted as a `progress` event and pushed to every
    /// stream of the job. `percent` must lie in 0..=100. Reports closer together
    /// than `HERALD_PROGRESS_MIN_INTERVAL_MS` are coalesced: the latest wins.
    pub async fn progress(
        &self,
        percent: Option<f64>,
        stage: Option<&str>,
        message: Option<&str>,
        data: Option<Value>,
    ) -> Result<(), JobFailure> {
        let p = build(percent, stage, message, data)?;
        self.reporter.report(p, false).await
    }

    /// Like [`Self::progress`], but this report is never coalesced away or
    /// delayed, and it is persisted when this returns (a per-source completion,
    /// say, that a watcher must see).
    pub async fn progress_kept(
        &self,
        percent: Option<f64>,
        stage: Option<&str>,
        message: Option<&str>,
        data: Option<Value>,
    ) -> Result<(), JobFailure> {
        let p = build(percent, stage, message, data)?;
        self.reporter.report(p, true).await
    }
}

fn build(
    percent: Option<f64>,
    stage: Option<&str>,
    message: Option<&str>,
    data: Option<Value>,
) -> Result<Progress, JobFailure> {
    Progress::new(
        percent,
        stage.map(str::to_owned),
        message.map(str::to_owned),
        data,
    )
    .map_err(|e| JobFailure::permanent("bad_progress", e.to_string()))
}
