//! `steps`, a job kind the tests own and watch: it runs like `demo`
//! (`{steps, step_ms, fail_at?, ignore_cancel?}`, one progress report per
//! step, result `{"steps": n}`) and writes down in a [`StepLog`] the test
//! holds what each job's handler did: attempts started, steps run, and
//! whether a handler is still running. So a test can see that a cancelled
//! handler stopped, or that a cancelled queued job never started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald::domain::{FieldError, JobId};
use herald::{JobContext, JobFailure, JobKind, Kinds};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::TestApp;

/// What the `steps` handlers did, per job, over all attempts, and how many
/// ran at once.
#[derive(Clone, Default)]
pub struct StepLog(Arc<Mutex<HashMap<JobId, Runs>>>, Arc<Mutex<AtOnce>>);

/// Handlers running now, over all jobs, and the most that ever ran at once.
#[derive(Debug, Clone, Copy, Default)]
struct AtOnce {
    now: u64,
    peak: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Runs {
    started: u64,
    steps: u64,
    running: u64,
}

impl StepLog {
    fn with<T>(&self, id: JobId, f: impl FnOnce(&mut Runs) -> T) -> T {
        f(self.0.lock().unwrap().entry(id).or_default())
    }

    /// Attempts whose handler started.
    pub fn attempts(&self, id: JobId) -> u64 {
        self.with(id, |r| r.started)
    }

    /// Steps run.
    pub fn steps(&self, id: JobId) -> u64 {
        self.with(id, |r| r.steps)
    }

    /// Whether a handler of the job is running: it has neither returned nor
    /// been dropped.
    pub fn is_running(&self, id: JobId) -> bool {
        self.with(id, |r| r.running > 0)
    }

    /// The most handlers, of any jobs, that ever ran at once.
    pub fn peak_at_once(&self) -> u64 {
        self.1.lock().unwrap().peak
    }

    fn at_once(&self, change: i64) {
        let mut a = self.1.lock().unwrap();
        a.now = a.now.checked_add_signed(change).expect("handler count");
        a.peak = a.peak.max(a.now);
    }
}

/// Counts a handler as running from its start until it returns or its future
/// is dropped (which is how herald stops a handler that ignores its token).
struct Running {
    log: StepLog,
    id: JobId,
}

impl Running {
    fn start(log: &StepLog, id: JobId) -> Running {
        log.with(id, |r| {
            r.started += 1;
            r.running += 1;
        });
        log.at_once(1);
        Running {
            log: log.clone(),
            id,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.log.with(self.id, |r| r.running -= 1);
        self.log.at_once(-1);
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    steps: u64,
    step_ms: u64,
    #[serde(default)]
    fail_at: Option<u64>,
    /// Keep stepping after a cancel, so `cancel_grace` has to stop it.
    #[serde(default)]
    ignore_cancel: bool,
}

pub struct Steps {
    log: StepLog,
}

#[async_trait]
impl JobKind for Steps {
    type Input = Input;
    type Output = Value;

    fn name(&self) -> &'static str {
        "steps"
    }

    fn validate(&self, input: &Input) -> Result<(), Vec<FieldError>> {
        match input.fail_at {
            Some(at) if at > input.steps => Err(vec![FieldError::new(
                "/fail_at",
                format!("must be at most steps ({})", input.steps),
            )]),
            _ => Ok(()),
        }
    }

    async fn run(&self, input: Input, ctx: &JobContext) -> Result<Value, JobFailure> {
        let _running = Running::start(&self.log, ctx.job_id);
        for step in 1..=input.steps {
            let pause = tokio::time::sleep(Duration::from_millis(input.step_ms));
            if input.ignore_cancel {
                pause.await;
            } else {
                tokio::select! {
                    _ = pause => {}
                    _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
                }
            }
            self.log.with(ctx.job_id, |r| r.steps += 1);
            if input.fail_at == Some(step) {
                return Err(JobFailure::retryable(
                    "steps_failure",
                    format!("failed at step {step} as asked by fail_at"),
                ));
            }
            let percent = step as f64 * 100.0 / input.steps as f64;
            ctx.progress(
                Some(percent),
                Some("step"),
                Some(&format!("{step}/{}", input.steps)),
                Some(json!({"step": step})),
            )
            .await?;
        }
        Ok(json!({"steps": input.steps}))
    }
}

/// herald with the built-in kinds and `steps`, and the log `steps` writes to.
pub async fn spawn_with_steps(f: impl FnOnce(&mut herald::Config)) -> (TestApp, StepLog) {
    let log = StepLog::default();
    let kinds = Kinds::builtin().with(Steps { log: log.clone() });
    (TestApp::spawn_with_kinds(kinds, f).await, log)
}
