//! Runs one claimed attempt of a job, with a timeout and a cancel grace, and
//! records its outcome (success, retry, failure, cancel, or back to the queue
//! at shutdown).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;

use super::progress::{not_persisted, ProgressPump, Unwritten};
use crate::cancel::{CancelRegistry, RunningJob};
use crate::domain::{JobError, JobId, JobRecord, Transition};
use crate::jobs::Jobs;
use crate::kinds::{JobContext, JobFailure, Registry, Services};
use crate::store::ApplyError;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How long a handler may go on after its token fired before it is dropped.
    pub cancel_grace: Duration,
    /// A result whose JSON is larger fails the job with `result_too_large`.
    pub max_result_bytes: usize,
    /// The pause before attempt 2; it doubles for each later attempt (capped at a minute).
    pub retry_backoff: Duration,
    /// At most one ordinary progress event per this interval (see `progress`).
    pub progress_interval: Duration,
}

pub struct Runner {
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) kinds: Registry,
    /// What every handler's context shares (store, downstreams, item limits).
    pub(crate) services: Arc<Services>,
    pub(crate) cancels: Arc<CancelRegistry>,
    pub(crate) config: RunnerConfig,
}

/// How one attempt ended.
enum Attempt {
    Finished(Result<Value, JobFailure>),
    TimedOut(i64),
    /// The token fired and the handler did not stop within the cancel grace.
    Abandoned,
}

impl crate::queue::RunJob for Runner {
    fn run(
        self: Arc<Self>,
        job: JobRecord,
        slot: crate::queue::Slot,
    ) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { Runner::run(&self, job, slot).await })
    }
}

impl Runner {
    /// Runs the attempt the queue's claim started (`job` is `running` on
    /// this node) and records its outcome: success, failure, cancel, a retry
    /// (back in the queue until its backoff has passed, for any node to
    /// claim), or back to the queue at shutdown. `slot` goes to the next
    /// job once the handler is done, before the outcome is written.
    pub async fn run(&self, job: JobRecord, slot: crate::queue::Slot) {
        let id = job.id;
        let Some(running) = self.cancels.register(id, job.attempt) else {
            tracing::warn!(job_id = %id, attempt = job.attempt,
                "this attempt already runs in this process; duplicate claim ignored");
            return;
        };
        let started = std::time::Instant::now();
        let current = Arc::new(Mutex::new(job.clone()));
        let (outcome, unwritten) = self.attempt(&job, &current, &running).await;
        let _finishing = slot.finishing().await;
        let span = tracing::info_span!("job_outcome", job_id = %id, kind = %job.kind, attempt = job.attempt);
        metrics::histogram!("herald_job_run_seconds", "kind" => job.kind.clone())
            .record(started.elapsed().as_secs_f64());
        let next = self.decide(&job, &running, outcome);
        {
            let _enter = span.enter();
            match &next {
                Transition::Succeed(_) => tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job succeeded"
                ),
                Transition::Retry(e, backoff) => {
                    tracing::warn!(code = %e.code, message = %e.message,
                    retry = true, backoff_ms = backoff.as_millis() as u64, "attempt failed")
                }
                Transition::Fail(e) => {
                    tracing::warn!(code = %e.code, message = %e.message, retry = false, "attempt failed")
                }
                Transition::Cancel { .. } => tracing::info!("job cancelled"),
                Transition::Requeue => tracing::info!("job requeued at shutdown"),
                _ => {}
            }
        }
        // The reports still queued and the outcome: one write.
        // The handler's context has gone with the attempt, as a rule: take
        // the record rather than copy it.
        let known = match Arc::try_unwrap(current) {
            Ok(only) => only.into_inner().expect("job record poisoned"),
            Err(shared) => shared.lock().expect("job record poisoned").clone(),
        };
        let mut last: Vec<Transition> = unwritten.transitions().cloned().collect();
        last.push(next.clone());
        let written = match self.jobs.record_all(&known, &last).await {
            Ok(_) => {
                unwritten.answer(&Ok(()));
                Ok(())
            }
            Err(e) => {
                unwritten.answer(&Err(not_persisted(id, &e)));
                match e {
                    // Tried on its own until it lands (see `persistently`).
                    ApplyError::Store(_) => {
                        let record = || self.jobs.record(&known, &next);
                        self.persistently(id, "outcome", &running, record)
                            .await
                            .map(drop)
                    }
                    e => Err(e),
                }
            }
        };
        match written {
            Ok(()) => {}
            Err(ApplyError::Store(e)) => {
                // Only at shutdown: the job stays `running`, and start-up
                // recovery (or another node, once the lease runs out) puts
                // it back in the queue.
                tracing::warn!(job_id = %id, error = %e, "outcome not recorded at shutdown");
            }
            Err(e) => tracing::warn!(job_id = %id, error = %e, "outcome not recorded"),
        }
    }

    /// Runs `write` (the attempt's outcome) until it lands, the job refuses
    /// it, or the process stops. Given up after a store error, the job would
    /// stay `running` on a live node with nothing to run it: nothing else takes over the jobs of a node that is still
    /// alive. A database that went away for a moment is no reason to lose one.
    async fn persistently<F, Fut>(
        &self,
        id: JobId,
        what: &'static str,
        running: &RunningJob,
        mut write: F,
    ) -> Result<JobRecord, ApplyError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<JobRecord, ApplyError>>,
    {
        let mut pause = Duration::from_millis(50);
        loop {
            match write().await {
                Err(ApplyError::Store(e)) if !running.shutting_down() => {
                    crate::telemetry::store_error();
                    tracing::warn!(job_id = %id, write = what, error = %e,
                        retry_in_ms = pause.as_millis() as u64, "job write failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    fn backoff(&self, failed_attempt: i32) -> Duration {
        let factor = 2u32.saturating_pow((failed_attempt - 1).max(0) as u32);
        self.config
            .retry_backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(60))
    }

    #[tracing::instrument(name = "job_attempt", skip_all,
        fields(job_id = %job.id, kind = %job.kind, attempt = job.attempt))]
    async fn attempt(
        &self,
        job: &JobRecord,
        current: &Arc<Mutex<JobRecord>>,
        running: &RunningJob,
    ) -> (Attempt, Unwritten) {
        let Some(kind) = self.kinds.get(&job.kind) else {
            let unknown = Attempt::Finished(Err(JobFailure::permanent(
                "unknown_kind",
                format!("this herald does not know the job kind `{}`", job.kind),
            )));
            return (unknown, Unwritten::default());
        };
        let (pump, reporter) = ProgressPump::start(
            current.clone(),
            self.jobs.clone(),
            self.config.progress_interval,
        );
        let ctx = JobContext::new(
            job,
            running.token().clone(),
            Arc::new(reporter),
            self.services.clone(),
        );
        let timeout = async {
            match job.timeout_secs {
                Some(s) => tokio::time::sleep(Duration::from_secs(s as u64)).await,
                None => std::future::pending().await,
            }
        };
        let grace = async {
            running.token().cancelled().await;
            tokio::time::sleep(self.config.cancel_grace).await;
        };
        // The handler keeps running after its token fires, until it returns or
        // the grace runs out; dropping its future stops it at its await point.
        // A panic fails this attempt and nothing else: the worker, the other
        // jobs and every stream carry on.
        let run = std::panic::AssertUnwindSafe(kind.run(&ctx)).catch_unwind();
        let outcome = tokio::select! {
            r = run => Attempt::Finished(r.unwrap_or_else(|panic| Err(panicked(panic.as_ref())))),
            _ = timeout => Attempt::TimedOut(job.timeout_secs.unwrap_or_default()),
            _ = grace => Attempt::Abandoned,
        };
        // What is still queued goes with the outcome, before its event.
        (outcome, pump.finish().await)
    }

    fn decide(&self, job: &JobRecord, running: &RunningJob, outcome: Attempt) -> Transition {
        let failure = match outcome {
            Attempt::Finished(Ok(result)) => {
                // A handler that finishes before it notices a cancel still succeeds.
                let size = serde_json::to_vec(&result)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if size > self.config.max_result_bytes {
                    return Transition::Fail(JobError::new(
                        "result_too_large",
                        format!(
                            "the result is {size} bytes of JSON, over the limit of {} (HERALD_MAX_RESULT_BYTES)",
                            self.config.max_result_bytes
                        ),
                    ));
                }
                return Transition::Succeed(result);
            }
            _ if running.token().is_cancelled() => {
                return if running.cancel_requested() {
                    Transition::Cancel {
                        reason: "cancel requested".to_owned(),
                    }
                } else {
                    Transition::Requeue
                };
            }
            Attempt::Finished(Err(f)) => f,
            Attempt::TimedOut(secs) => JobFailure::retryable(
                "timeout",
                format!(
                    "attempt {} did not finish within timeout_secs={secs}",
                    job.attempt
                ),
            ),
            // Only reachable if the token fired and was then reset, which tokens
            // cannot do; treated as an ordinary failed attempt all the same.
            Attempt::Abandoned => JobFailure::retryable("abandoned", "the attempt was stopped"),
        };
        if !failure.permanent && job.has_attempts_left() {
            Transition::Retry(failure.error, self.backoff(job.attempt))
        } else {
            Transition::Fail(failure.error)
        }
    }
}

/// The failure of an attempt whose handler panicked, with the panic's message.
fn panicked(panic: &(dyn std::any::Any + Send)) -> JobFailure {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    tracing::error!(panic = %message, "job handler panicked; the attempt fails");
    JobFailure::retryable("panicked", format!("the handler panicked: {message}"))
}
