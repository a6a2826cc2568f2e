//! Progress coalescing: a handler may report thousands of times a second;
//! herald persists at most one ordinary report per job per
//! `HERALD_PROGRESS_MIN_INTERVAL_MS`, always the latest value.
//!
//! Reports queue in call order. An ordinary report replaces an ordinary one
//! still waiting at the end of the queue; a *kept* report (aggregate's
//! per-source completions) is never replaced and never waits: its arrival cuts
//! the interval short. When the attempt ends the runner calls
//! [`ProgressPump::finish`], which writes whatever is still queued at once, so
//! the last report always lands before the status or terminal event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::domain::{JobRecord, Progress, Transition};
use crate::jobs::Jobs;
use crate::kinds::{JobFailure, ReportProgress};
use crate::store::ApplyError;

struct Report {
    progress: Progress,
    kept: bool,
    persisted: Option<oneshot::Sender<Result<(), JobFailure>>>,
}

#[derive(Default)]
struct Queue {
    reports: VecDeque<Report>,
    closing: bool,
}

struct Shared {
    // A std Mutex: held only to push or pop, never across an await.
    queue: Mutex<Queue>,
    notify: Notify,
}

/// The handler's side: enqueue reports.
#[derive(Clone)]
pub(crate) struct Reporter {
    shared: Arc<Shared>,
    /// Off when the interval is zero: then every report is written.
    coalesce: bool,
}

impl ReportProgress for Reporter {
    fn report(
        &self,
        progress: Progress,
        kept: bool,
    ) -> futures::future::BoxFuture<'_, Result<(), JobFailure>> {
        Box::pin(self.report(progress, kept))
    }
}

impl Reporter {
    /// Queues `progress`. A kept report resolves once it is persisted.
    pub(crate) async fn report(&self, progress: Progress, kept: bool) -> Result<(), JobFailure> {
        let (tx, rx) = if kept {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        {
            let mut q = self.shared.queue.lock().expect("progress queue poisoned");
            if q.closing {
                return Err(JobFailure::permanent(
                    "attempt_over",
                    "progress reported after the attempt ended",
                ));
            }
            match q.reports.back_mut() {
                Some(last) if self.coalesce && !kept && !last.kept => last.progress = progress,
                _ => q.reports.push_back(Report {
                    progress,
                    kept,
                    persisted: tx,
                }),
            }
        }
        self.shared.notify.notify_one();
        match rx {
            Some(rx) => rx.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// The runner's side: the task that writes reports.
pub(crate) struct ProgressPump {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ProgressPump {
    pub(crate) fn start(
        current: Arc<Mutex<JobRecord>>,
        jobs: Arc<Jobs>,
        interval: Duration,
    ) -> (ProgressPump, Reporter) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        });
        let task = tokio::spawn(pump(shared.clone(), current, jobs, interval));
        (
            ProgressPump {
                shared: shared.clone(),
                task,
            },
            Reporter {
                shared,
                coalesce: !interval.is_zero(),
            },
        )
    }

    /// Writes what is still queued, without waiting for the interval, and stops.
    pub(crate) async fn finish(self) {
        self.shared
            .queue
            .lock()
            .expect("progress queue poisoned")
            .closing = true;
        self.shared.notify.notify_one();
        let _ = self.task.await;
    }
}

async fn pump(
    shared: Arc<Shared>,
    current: Arc<Mutex<JobRecord>>,
    jobs: Arc<Jobs>,
    interval: Duration,
) {
    loop {
        let (next, closing) = {
            let mut q = shared.queue.lock().expect("progress queue poisoned");
            (q.reports.pop_front(), q.closing)
        };
        let Some(report) = next else {
            if closing {
                return;
            }
            shared.notify.notified().await;
            continue;
        };
        let result = persist(&current, &jobs, report.progress).await;
        if let Some(tx) = report.persisted {
            let _ = tx.send(result);
        }
        if report.kept || interval.is_zero() {
            continue;
        }
        // Hold further ordinary reports back for the interval, unless a kept
        // report arrives or the attempt ends.
        let until = tokio::time::Instant::now() + interval;
        loop {
            let urgent = {
                let q = shared.queue.lock().expect("progress queue poisoned");
                q.closing || q.reports.iter().any(|r| r.kept)
            };
            if urgent {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = shared.notify.notified() => {}
            }
        }
    }
}

async fn persist(
    current: &Mutex<JobRecord>,
    jobs: &Jobs,
    progress: Progress,
) -> Result<(), JobFailure> {
    let known = current.lock().expect("job record poisoned").clone();
    match jobs.record(&known, &Transition::Progress(progress)).await {
        Ok(job) => {
            *current.lock().expect("job record poisoned") = job;
            Ok(())
        }
        Err(ApplyError::Store(e)) => {
            tracing::warn!(job_id = %known.id, error = %e, "progress not persisted");
            Err(JobFailure::retryable(
                "store_unavailable",
                format!("could not persist progress: {e}"),
            ))
        }
        Err(e) => Err(JobFailure::permanent("job_not_running", e.to_string())),
    }
}
