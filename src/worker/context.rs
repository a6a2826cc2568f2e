//! What a job handler gets: its input, a way to report progress, and its
//! cancellation token.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::JobFailure;
use crate::domain::{JobId, JobRecord, Progress, Transition};
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
    /// The job as last written, shared with the runner, so a write need not
    /// read it back first.
    current: Arc<Mutex<JobRecord>>,
}

impl JobContext {
    pub(crate) fn new(
        current: Arc<Mutex<JobRecord>>,
        token: CancellationToken,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
    ) -> Self {
        let (job_id, input, attempt) = {
            let job = current.lock().expect("job record poisoned");
            (job.id, job.input.clone(), job.attempt)
        };
        JobContext {
            job_id,
            input,
            attempt,
            token,
            store,
            hub,
            current,
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
        let known = self.current.lock().expect("job record poisoned").clone();
        match self
            .store
            .apply_known(&known, &Transition::Progress(p))
            .await
        {
            Ok(job) => {
                *self.current.lock().expect("job record poisoned") = job;
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
