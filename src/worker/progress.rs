//! Progress coalescing: a handler may report thousands of times a second;
//! herald persists at most one ordinary report per job per
//! `HERALD_PROGRESS_MIN_INTERVAL_MS`, always the latest value.
//!
//! Reports and items queue in call order. An ordinary report replaces an
//! ordinary one still waiting at the end of the queue; a *kept* report
//! (aggregate's per-source completions) and an item are never replaced and
//! never wait: their arrival cuts the interval short. When the attempt ends the runner calls
//! [`ProgressPump::finish`], which writes whatever is still queued at once, so
//! the last report always lands before the status or terminal event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::domain::{JobRecord, Progress, Transition};
use crate::jobs::Jobs;
use crate::kinds::{JobFailure, Report as ReportUpdates};
use crate::store::ApplyError;

/// What a handler asked to write.
enum Update {
    Progress(Progress),
    /// An item's JSON.
    Item(String),
}

struct Report {
    update: Update,
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

impl ReportUpdates for Reporter {
    fn progress(
        &self,
        progress: Progress,
        kept: bool,
    ) -> futures::future::BoxFuture<'_, Result<(), JobFailure>> {
        Box::pin(self.report(Update::Progress(progress), kept))
    }

    fn item(&self, item: String) -> futures::future::BoxFuture<'_, Result<(), JobFailure>> {
        Box::pin(self.report(Update::Item(item), true))
    }
}

impl Reporter {
    /// Queues `update`. A kept one resolves once it is persisted.
    async fn report(&self, update: Update, kept: bool) -> Result<(), JobFailure> {
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
                    "progress or an item reported after the attempt ended",
                ));
            }
            match q.reports.back_mut() {
                Some(last) if self.coalesce && !kept && !last.kept => last.update = update,
                _ => q.reports.push_back(Report {
                    update,
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
        let transition = match report.update {
            Update::Progress(p) => Transition::Progress(p),
            Update::Item(item) => Transition::Item(item),
        };
        let result = persist(&current, &jobs, transition).await;
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
    transition: Transition,
) -> Result<(), JobFailure> {
    let known = current.lock().expect("job record poisoned").clone();
    match jobs.record(&known, &transition).await {
        Ok(job) => {
            *current.lock().expect("job record poisoned") = job;
            Ok(())
        }
        Err(ApplyError::Store(e)) => {
            tracing::warn!(job_id = %known.id, error = %e, "progress or item not persisted");
            Err(JobFailure::retryable(
                "store_unavailable",
                format!("could not persist progress or an item: {e}"),
            ))
        }
        Err(e) => Err(JobFailure::permanent("job_not_running", e.to_string())),
    }
}
