//! The queue is herald's job table: a queued job waits in `herald_jobs`
//! (oldest `run_at` first), and the worker takes jobs with a *claim*, one
//! write that starts a batch of due jobs on this node (`queued` → `running`
//! with their events). A job is one row with one write path: no second queue
//! table to keep in step, no push, no reconciler re-pushing what a crash left
//! between the two.
//!
//! apalis runs the jobs: its worker drives a [`CustomBackend`] whose fetch
//! stream is the claimer below, with the worker's concurrency. The claimer
//! claims as many jobs as there are free slots, hands them to apalis one by
//! one, and then sleeps until it is woken:
//! - a job became queued here ([`QueueWaker::wake_at`]: at once for a new
//!   job, at the end of its backoff for a retry);
//! - another node queued one (PostgreSQL: `herald_queue`, see `notify.rs`);
//! - a running job finished while every slot was taken and more were waiting;
//! - an echo of a wake-up (see [`Wakeups`]), or the backstop interval.
//!
//! Claimed jobs that apalis has not taken yet when the worker stops go back
//! to the queue (same attempt), so a stop never strands a started job.
//!
//! A slot holds a running handler, not a write: once the handler is done,
//! its slot goes to the next job while the outcome is written (see
//! [`Slot::finishing`]). The concurrency bounds the handlers running at
//! once, and, separately, the outcomes being written.
//!
//! A job submitted while a slot is free skips the claim: its submission
//! takes a [`Seat`], and the store writes the job started (`queued` and
//! `running` in one write) unless a due job waits in the queue, which keeps
//! jobs starting in `run_at` order; the job then goes to the claimer as if
//! claimed. It never waits in the queue's index, its status is written once
//! instead of twice, and no claim runs for it. No seat is given while the
//! last claim left due jobs waiting: the job would only queue behind them.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use apalis::prelude::*;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::domain::{JobRecord, Timestamp, Transition};
use crate::jobs::Jobs;

mod backend;
mod slot;
mod wakeups;
use backend::ClaimBackend;
use slot::{handle_task, Runs};
pub use slot::{RunJob, Seat, Slot};
use wakeups::Wakeups;

/// What apalis hands the handler: a job the claim started here.
#[derive(Debug, Clone)]
pub struct Claimed(pub Box<JobRecord>);

/// The queue's wake-ups, shared by the jobs service (which queues jobs) and
/// the worker (which claims them).
#[derive(Clone)]
pub struct Queue {
    wake: QueueWaker,
    /// The backstop: how often an idle worker claims anyway.
    poll_every: Duration,
    /// This node's worker, once it runs: where seats come from.
    claimer: Arc<OnceLock<Arc<Claimer>>>,
}

/// Wakes the local worker, and the remote workers' claims waiting on this
/// node (long polls). Wake-ups that arrive while one is pending collapse
/// into it (`Notify` keeps one permit); a long poll that is not waiting
/// claims before it waits, so it misses nothing.
#[derive(Clone, Default)]
pub struct QueueWaker(Arc<Notify>, Arc<Notify>);

impl QueueWaker {
    pub fn wake(&self) {
        self.0.notify_one();
        self.1.notify_waiters();
    }

    /// What a remote worker's long poll waits on (register it with
    /// `Notified::enable` before claiming).
    pub fn remote(&self) -> &Arc<Notify> {
        &self.1
    }

    /// Wakes the worker at `at` (at once if that has come): when a retry's
    /// backoff ends.
    pub fn wake_at(&self, at: Timestamp) {
        let wait = at.0 - Timestamp::now().0;
        if wait <= 0 {
            self.wake();
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
            me.wake();
        });
    }
}

impl Queue {
    /// `poll_every`: the backstop for a wake-up that never came (on
    /// PostgreSQL, a notification lost with its connection).
    pub fn new(poll_every: Duration) -> Queue {
        Queue {
            wake: QueueWaker::default(),
            poll_every,
            claimer: Arc::default(),
        }
    }

    /// A free slot of this node's worker for a job submitted now: the
    /// submission stores its job started (unless due jobs wait in the queue:
    /// those start first, through a claim) and hands it over with
    /// [`Seat::hand`]. None on a node without a worker, while the worker
    /// is full or stopping, or while its last claim left due jobs waiting.
    pub fn seat(&self) -> Option<Seat> {
        let claimer = self.claimer.get()?;
        claimer.reserve().then(|| Seat(claimer.clone()))
    }

    /// Wakes the local worker when `at` has come.
    pub fn wake_at(&self, at: Timestamp) {
        self.wake.wake_at(at);
    }

    /// Wakes the local worker (a job was queued by another node).
    pub fn waker(&self) -> QueueWaker {
        self.wake.clone()
    }

    /// Starts the apalis worker, named `name`, which claims through `jobs`
    /// and runs with `runner`, at most `concurrency` jobs at once; it stops
    /// claiming when `stop` fires, puts back what it claimed and had not
    /// started, and ends once its in-flight jobs have returned. apalis ends
    /// a worker whose backend fails; this starts it again, after a pause that
    /// grows to 5 s.
    pub fn spawn_worker(
        &self,
        name: String,
        jobs: Arc<Jobs>,
        runner: Arc<dyn RunJob>,
        concurrency: usize,
        stop: CancellationToken,
    ) -> Worker {
        let claimer = Arc::new(Claimer {
            jobs: jobs.clone(),
            concurrency: concurrency.max(1),
            inflight: AtomicUsize::new(0),
            hungry: AtomicBool::new(false),
            backlog: AtomicBool::new(false),
            held: Mutex::new(VecDeque::new()),
            claiming: Arc::new(Semaphore::new(1)),
            finishing: Arc::new(Semaphore::new(concurrency.max(1))),
            closed: AtomicBool::new(false),
            wake: self.wake.clone(),
            seated: AtomicUsize::new(0),
            claiming_slots: AtomicUsize::new(0),
            handed: Notify::new(),
        });
        // One worker per node; a second would claim, but give no seats.
        let _ = self.claimer.set(claimer.clone());
        let poll_every = self.poll_every;
        let closer = claimer.clone();
        let task = tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                let ran =
                    run_worker(&name, &claimer, runner.clone(), poll_every, stop.clone()).await;
                if stop.is_cancelled() {
                    break;
                }
                let error = match ran {
                    Ok(()) => "it ended on its own".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(worker = %name, %error, restart_in_ms = pause.as_millis() as u64,
                    "queue worker stopped; starting it again");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            claimer.put_back().await;
        });
        Worker {
            task,
            claimer: closer,
        }
    }
}

/// A running queue worker (see [`Queue::spawn_worker`]).
pub struct Worker {
    /// Ends once the worker has stopped and put back what it held.
    pub task: tokio::task::JoinHandle<()>,
    claimer: Arc<Claimer>,
}

impl Worker {
    /// Stops claiming for good, and waits for a claim in flight to land.
    /// The shutdown calls it before it puts running jobs back in the queue:
    /// a claim already under way when the worker was told to stop (an
    /// echo's, say) could otherwise read a job put back a moment earlier and
    /// start it again, only for it to be put back once more.
    pub async fn close_claims(&self) {
        self.claimer.close().await;
    }
}

async fn run_worker(
    name: &str,
    claimer: &Arc<Claimer>,
    runner: Arc<dyn RunJob>,
    poll_every: Duration,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let wakeups = Wakeups::new(claimer.wake.0.clone(), poll_every);
    let backend = ClaimBackend {
        claims: claimer.clone().claims(wakeups),
    };
    let signal = async move {
        stop.cancelled().await;
        Ok::<(), WorkerError>(())
    };
    WorkerBuilder::new(name)
        .backend(backend)
        .concurrency(claimer.concurrency)
        .data(Runs {
            runner,
            claimer: claimer.clone(),
        })
        .build(handle_task)
        .run_until(signal)
        .await
}

/// The claim loop's state, shared by the worker's runs, its jobs (which
/// free slots) and the final put-back.
struct Claimer {
    jobs: Arc<Jobs>,
    concurrency: usize,
    /// Jobs handed to apalis whose run has not ended.
    inflight: AtomicUsize,
    /// A claim filled every free slot, so more jobs may be waiting: the next
    /// job to finish wakes the claimer.
    hungry: AtomicBool,
    /// The last claim left due jobs in the queue. No seat is given then: a
    /// job submitted now would be stored queued behind them anyway (see
    /// [`Queue::seat`]), and the slot it held meanwhile would sit idle
    /// instead of going to the next claim.
    backlog: AtomicBool,
    /// Started jobs not yet handed to apalis: claimed, or handed over by a
    /// seat.
    held: Mutex<VecDeque<JobRecord>>,
    /// Held by a claim in flight: the put-back waits for it.
    claiming: Arc<Semaphore>,
    /// One permit per outcome being written after its slot was freed (see
    /// [`Slot::finishing`]): at most `concurrency` at once.
    finishing: Arc<Semaphore>,
    /// Set at shutdown, before running jobs are put back: no claim starts
    /// after it (see [`Worker::close_claims`]), and no seat is given.
    closed: AtomicBool,
    wake: QueueWaker,
    /// Seats given whose job has not been handed over (or given up) yet.
    seated: AtomicUsize,
    /// The free slots the claim in flight may fill: no seat is given for
    /// them meanwhile. (A submission seated while the claim was on its way
    /// could store its job started beside the older job the claim starts,
    /// and their `running` events could then disagree with their order.)
    claiming_slots: AtomicUsize,
    /// A seat handed its job over.
    handed: Notify,
}

impl Claimer {
    /// The fetch stream: a claimed job whenever apalis asks for one (it asks
    /// only while it has a free slot). It never ends: a failed claim is
    /// logged and tried again at the next wake-up.
    fn claims(self: Arc<Self>, wakeups: Wakeups) -> BoxStream<'static, Task<Claimed>> {
        let state = ClaimLoop {
            claimer: self,
            wakeups,
            due: None,
            more: true,
        };
        futures::stream::unfold(state, |mut state| async move {
            let job = state.next().await;
            Some((Task::new(Claimed(Box::new(job))), state))
        })
        .boxed()
    }

    fn take_held(&self) -> Option<JobRecord> {
        self.held.lock().expect("held jobs poisoned").pop_front()
    }

    /// Slots neither running a job, nor promised to a seat, a held job or
    /// the claim in flight.
    fn free(&self) -> usize {
        let held = self.held.lock().expect("held jobs poisoned");
        let taken = self.inflight.load(Ordering::SeqCst)
            + self.seated.load(Ordering::SeqCst)
            + self.claiming_slots.load(Ordering::SeqCst);
        self.concurrency.saturating_sub(taken + held.len())
    }

    /// Takes a seat (see [`Queue::seat`]). Two submissions and a claim that
    /// look at once may promise one slot twice; the job over the limit
    /// then waits in `held`, started, until a slot frees, as a claimed job
    /// would: apalis never runs more than `concurrency` at once.
    fn reserve(&self) -> bool {
        if self.closed.load(Ordering::SeqCst)
            || self.backlog.load(Ordering::SeqCst)
            || self.free() == 0
        {
            return false;
        }
        self.seated.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Claims up to `free` jobs into `held`. The claim runs in a task of its
    /// own: a worker that stops mid-claim drops the stream, but the claim
    /// still lands in `held`, where the put-back finds it.
    async fn claim(self: &Arc<Self>, free: usize) -> Result<(usize, Option<Timestamp>), String> {
        let permit = self
            .claiming
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        if self.closed.load(Ordering::SeqCst) {
            return Ok((0, None));
        }
        let me = self.clone();
        self.claiming_slots.store(free, Ordering::SeqCst);
        let claimed = tokio::spawn(async move {
            let _permit = permit;
            let claim = me.jobs.claim(free).await;
            let claim = match claim {
                Ok(claim) => claim,
                Err(e) => {
                    me.claiming_slots.store(0, Ordering::SeqCst);
                    return Err(e.to_string());
                }
            };
            me.backlog.store(claim.more, Ordering::SeqCst);
            let n = claim.started.len();
            {
                let mut held = me.held.lock().expect("held jobs poisoned");
                held.extend(claim.started.into_iter().map(|a| a.job));
                // Under the lock `free` reads `held` with: the slots pass
                // from the claim to its jobs at once.
                me.claiming_slots.store(0, Ordering::SeqCst);
            }
            Ok::<_, String>((n, claim.next_due))
        });
        claimed.await.map_err(|e| e.to_string())?
    }

    /// No claim starts from now on, and the one in flight (if any) has
    /// landed when this returns.
    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _in_flight_done = self.claiming.acquire().await;
    }

    /// A job's run ended: its slot is free.
    fn finished(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        if self.hungry.swap(false, Ordering::SeqCst) {
            self.wake.wake();
        }
    }

    /// At the worker's stop: jobs claimed and never started go back to the
    /// queue (same attempt), for this node's next start or another node.
    async fn put_back(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _claims_done = self.claiming.acquire().await;
        // A seat given before the stop hands its job over once its
        // submission's write is answered; that job goes back too.
        let waited = std::time::Instant::now();
        while self.seated.load(Ordering::SeqCst) > 0 && waited.elapsed() < SEAT_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held: Vec<JobRecord> = self
            .held
            .lock()
            .expect("held jobs poisoned")
            .drain(..)
            .collect();
        for job in held {
            if let Err(e) = self.jobs.record(&job, &Transition::Requeue).await {
                // Start-up recovery (or, on PostgreSQL, another node once this
                // one's lease has run out) puts it back instead.
                tracing::warn!(job_id = %job.id, error = %e,
                    "could not put a claimed job back in the queue at shutdown");
            }
        }
    }
}

/// How long the put-back waits for seats to hand their jobs over: a write
/// answered later than that leaves its job `running` for start-up recovery.
const SEAT_WAIT: Duration = Duration::from_secs(10);

struct ClaimLoop {
    claimer: Arc<Claimer>,
    wakeups: Wakeups,
    /// When the next queued job that is not due yet becomes due.
    due: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether a claim may find something now.
    more: bool,
}

impl ClaimLoop {
    /// The next job for apalis, waiting for one as long as it takes.
    async fn next(&mut self) -> JobRecord {
        let c = self.claimer.clone();
        loop {
            if let Some(job) = c.take_held() {
                c.inflight.fetch_add(1, Ordering::SeqCst);
                return job;
            }
            let free = c.free();
            if free == 0 {
                c.hungry.store(true, Ordering::SeqCst);
            } else if self.more {
                match c.claim(free).await {
                    Ok((n, due)) => {
                        self.more = n == free;
                        if n == free {
                            c.hungry.store(true, Ordering::SeqCst);
                        }
                        self.due = due.map(|at| {
                            let wait = (at.0 - Timestamp::now().0).max(0) as u64;
                            Box::pin(tokio::time::sleep(Duration::from_micros(wait)))
                        });
                        if n > 0 {
                            continue;
                        }
                    }
                    Err(e) => {
                        crate::telemetry::store_error();
                        tracing::warn!(error = %e, "queue claim failed; trying again at the next wake-up");
                        self.more = false;
                    }
                }
            }
            let due = async {
                match &mut self.due {
                    Some(sleep) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                _ = self.wakeups.next() => true,
                _ = due => true,
                // A seat's job is in `held`: no claim needed for it.
                _ = c.handed.notified() => false,
            };
            if woken {
                self.due = None;
                self.more = true;
            }
        }
    }
}
