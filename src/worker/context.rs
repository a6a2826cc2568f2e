//! What a job handler gets: its input, a way to report progress, and its
//! cancellation token.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::JobFailure;
use crate::domain::{JobId, Progress, Transition};
use crate::hub::Hub;
use crate::store::{ApplyError, Store};

pub struct JobContext {
    pub job_id: JobId,
    pub input: Value,
    /// 1 for the first attempt.
    pub attempt: i32,
    token: CancellationToken,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
}

impl JobContext {
    pub(crate) fn new(
        job_id: JobId,
        input: Value,
        attempt: i32,
        token: CancellationToken,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
    ) -> Self {
        JobContext {
            job_id,
            input,
            attempt,
            token,
            store,
            hub,
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
    /// stream of the job. `percent` must lie in 0..=100.
    pub async fn progress(
        &self,
        percent: Option<f64>,
        stage: Option<&str>,
        message: Option<&str>,
        data: Option<Value>,
    ) -> Result<(), JobFailure> {
        let p = Progress::new(
            percent,
            stage.map(str::to_owned),
            message.map(str::to_owned),
            data,
        )
        .map_err(|e| JobFailure::permanent("bad_progress", e.to_string()))?;
        match self
            .store
            .apply(self.job_id, &Transition::Progress(p))
            .await
        {
            Ok(_) => {
                self.hub.notify(self.job_id);
                Ok(())
            }
            Err(ApplyError::Store(e)) => Err(JobFailure::retryable(
                "store_unavailable",
                format!("could not persist progress: {e}"),
            )),
            Err(e) => Err(JobFailure::permanent("job_not_running", e.to_string())),
        }
    }
}
