//! Progress coalescing: a handler may report thousands of times a second;
//! herald persists at most one ordinary report per job per
//! `HERALD_PROGRESS_MIN_INTERVAL_MS`, always the latest value.
//!
//! Reports and items queue in call order. An ordinary report replaces an
//! ordinary one still waiting at the end of the queue; a *kept* report
//! (aggregate's per-source completions) and an item are never replaced and
//! never wait: their arrival cuts the interval short. The pump writes whatever
//! is queued when it gets to it in one write (a burst of items is one commit).
//! When the attempt ends the runner calls [`ProgressPump::finish`], which hands
//! it what is still queued; the runner writes that and the outcome together,
//! so the last report always lands before the status or terminal event, and a
//! short job's last report costs no write of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::domain::{JobRecord, Progress, Transition};
use crate::jobs::Jobs;
use crate::kinds::{JobFailure, Report as ReportUpdates};
use crate::store::ApplyError;

struct Report {
    transition: Transition,
    kept: bool,
    persisted: Option<oneshot::Sender<Result<(), JobFailure>>>,
}

/// The reports still queued when the attempt ended: the runner writes them
/// with the attempt's outcome, in one write.
#[derive(Default)]
pub(crate) struct Unwritten(Vec<Report>);

impl Unwritten {
    pub(crate) fn transitions(&self) -> impl Iterator<Item = &Transition> {
        self.0.iter().map(|r| &r.transition)
    }

    /// Tells whoever waits for one of them how its write went.
    pub(crate) fn answer(self, result: &Result<(), JobFailure>) {
        answer(self.0, result);
    }
}

fn answer(reports: Vec<Report>, result: &Result<(), JobFailure>) {
    for report in reports {
        if let Some(tx) = report.persisted {
            let _ = tx.send(result.clone());
        }
    }
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
        Box::pin(self.report(Transition::Progress(progress), kept))
    }

    fn item(&self, item: String) -> futures::future::BoxFuture<'_, Result<(), JobFailure>> {
        Box::pin(self.report(Transition::Item(item), true))
    }
}

impl Reporter {
    /// Queues `update`. A kept one resolves once it is persisted.
    async fn report(&self, transition: Transition, kept: bool) -> Result<(), JobFailure> {
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
                Some(last) if self.coalesce && !kept && !last.kept => last.transition = transition,
                _ => q.reports.push_back(Report {
                    transition,
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

    /// Stops the pump once the write it is making (if any) has landed, and
    /// hands over what is still queued.
    pub(crate) async fn finish(self) -> Unwritten {
        self.shared
            .queue
            .lock()
            .expect("progress queue poisoned")
            .closing = true;
        self.shared.notify.notify_one();
        let _ = self.task.await;
        let mut q = self.shared.queue.lock().expect("progress queue poisoned");
        Unwritten(q.reports.drain(..).collect())
    }
}

/// Writes the queued reports, all that are queued at once in one write,
/// until the attempt ends (what is queued then is the runner's to write).
async fn pump(
    shared: Arc<Shared>,
    current: Arc<Mutex<JobRecord>>,
    jobs: Arc<Jobs>,
    interval: Duration,
) {
    loop {
        let reports: Vec<Report> = {
            let mut q = shared.queue.lock().expect("progress queue poisoned");
            if q.closing {
                return;
            }
            q.reports.drain(..).collect()
        };
        if reports.is_empty() {
            shared.notify.notified().await;
            continue;
        }
        let transitions: Vec<Transition> = reports.iter().map(|r| r.transition.clone()).collect();
        let all_kept = reports.iter().all(|r| r.kept);
        let result = persist(&current, &jobs, &transitions).await;
        answer(reports, &result);
        if all_kept || interval.is_zero() {
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
    transitions: &[Transition],
) -> Result<(), JobFailure> {
    let known = current.lock().expect("job record poisoned").clone();
    match jobs.record_all(&known, transitions).await {
        Ok(job) => {
            *current.lock().expect("job record poisoned") = job;
            Ok(())
        }
        Err(e) => Err(not_persisted(known.id, &e)),
    }
}

/// What a handler hears when its report or item could not be written.
pub(crate) fn not_persisted(id: crate::domain::JobId, e: &ApplyError) -> JobFailure {
    match e {
        ApplyError::Store(e) => {
            tracing::warn!(job_id = %id, error = %e, "progress or item not persisted");
            JobFailure::retryable(
                "store_unavailable",
                format!("could not persist progress or an item: {e}"),
            )
        }
        e => JobFailure::permanent("job_not_running", e.to_string()),
    }
}
