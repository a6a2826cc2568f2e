//! What a job holds of the worker: a [`Seat`] while its submission is
//! written (it was submitted while a slot was free), then a [`Slot`] while
//! its handler runs, then a [`Finishing`] while its outcome is written; and
//! apalis's handler, which runs the job in a task of its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use apalis::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::{Claimed, Claimer};
use crate::domain::JobRecord;

/// A worker slot taken by a submission (see
/// [`Queue::seat`](super::Queue::seat)); given up when dropped without
/// [`Seat::hand`] (the job was stored queued, or not at all).
pub struct Seat(pub(super) Arc<Claimer>);

impl Seat {
    /// Hands over the job the submission stored started: apalis runs it
    /// next, as if claimed.
    pub fn hand(self, job: JobRecord) {
        self.0
            .held
            .lock()
            .expect("held jobs poisoned")
            .push_back(job);
        self.0.handed.notify_one();
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.seated.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every job's handler shares: the runner, and the claimer whose slot
/// the job holds.
#[derive(Clone)]
pub(super) struct Runs {
    pub(super) runner: Arc<dyn RunJob>,
    pub(super) claimer: Arc<Claimer>,
}

/// A claimed job's worker slot. It is freed when the handler is done
/// ([`Slot::finishing`]), or when it is dropped, however the run ends.
pub struct Slot {
    claimer: Arc<Claimer>,
    /// Tells apalis's handler (`handle_task`) that the slot is free.
    freed: Option<oneshot::Sender<()>>,
}

impl Slot {
    /// The job's handler is done and its outcome is about to be written:
    /// the slot goes to the next job now, not once the write has committed
    /// (a group commit's wait, several ms under load, during which the slot
    /// ran nothing). Waits while `concurrency` outcomes are being written
    /// already, so the writes in flight stay bounded; hold what this returns
    /// until the outcome is written.
    pub async fn finishing(self) -> Finishing {
        let permit = self.claimer.finishing.clone().acquire_owned().await.ok();
        drop(self);
        Finishing { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.claimer.finished();
        if let Some(freed) = self.freed.take() {
            let _ = freed.send(());
        }
    }
}

/// An outcome being written after its job's slot was freed (see
/// [`Slot::finishing`]).
pub struct Finishing {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Runs a claimed job to its outcome (see `worker::runner`), and frees its
/// slot once the handler is done.
pub trait RunJob: Send + Sync + 'static {
    fn run(self: Arc<Self>, job: JobRecord, slot: Slot) -> futures::future::BoxFuture<'static, ()>;
}

pub(super) async fn handle_task(job: Claimed, runs: Data<Runs>) -> Result<(), BoxDynError> {
    let Runs { runner, claimer } = (*runs).clone();
    let id = job.0.id;
    // The job runs in a task of its own: apalis drives its handlers inside
    // the worker and may drop them when the worker stops, and a runner
    // dropped between deciding an outcome and writing it would leave the
    // job `running` after a clean shutdown. The application waits for
    // running jobs itself (the cancel registry counts them), outcomes being
    // written included. apalis's slot is free when ours is: the task goes
    // on writing the outcome.
    let (freed, slot_free) = oneshot::channel();
    let slot = Slot {
        claimer,
        freed: Some(freed),
    };
    tokio::spawn(async move {
        let run = std::panic::AssertUnwindSafe(runner.run(*job.0, slot));
        if futures::FutureExt::catch_unwind(run).await.is_err() {
            tracing::error!(job_id = %id, "job run ended abnormally (a panic outside its handler)");
        }
    });
    // Sent by the slot's drop, which a panic runs too.
    let _ = slot_free.await;
    Ok(())
}
