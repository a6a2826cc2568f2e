//! The apalis queue. A task carries only `{job_id}`; the runner loads the job.
//!
//! apalis 1.0 traps this module avoids, each verified against its source:
//! - an idle worker picks up new tasks only on its 30 s heartbeat unless it is
//!   woken: [`Queue::push`] wakes it through a stream poll strategy, and a 1 s
//!   interval backs that up for tasks pushed by anyone else;
//! - task ids must be ULIDs: ours is the job's UUID as a ULID (same 128 bits);
//! - the storage re-runs failed tasks up to 25 times unless each task sets
//!   `max_attempts`: ours set 1, because herald counts attempts itself (the
//!   runner retries inside one task, and the reconciler re-pushes what a crash
//!   left behind);
//! - its lock and ack queries scan the whole task table, so herald turns them
//!   off and deletes a task's row itself once the job is done with it.
//!
//! On PostgreSQL the queue is apalis-postgres (schema `apalis`), and the
//! worker is named after the node, so a task's `lock_by` says which node holds
//! it (the reconciler uses that to tell a live holder from a dead one). Its
//! wake-ups come from the node's LISTEN connection (`notify.rs`), which hears
//! apalis's insert trigger, so a task pushed by any node wakes every worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::JobId;
use crate::store::group::{Batching, Flush, Group};

/// The queue's message: the job id and nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: Uuid,
}

#[derive(Debug, thiserror::Error)]
#[error("could not push job {job_id} to the queue: {message}")]
pub struct PushError {
    pub job_id: JobId,
    pub message: String,
}

const QUEUE_NAME: &str = "herald";

/// Pushes tasks and wakes the local worker.
#[derive(Clone)]
pub struct Queue {
    storage: Storage,
    pushes: Group<Pusher>,
    wake: QueueWaker,
}

#[derive(Clone)]
enum Storage {
    Sqlite(SqliteStorage<JobMessage>),
    Postgres(PostgresStorage<JobMessage>),
}

/// Wakes the local worker. Wake-ups that arrive while one is pending collapse
/// into it (`Notify` keeps one permit).
#[derive(Clone, Default)]
pub struct QueueWaker(Arc<Notify>);

impl QueueWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The wake-ups as the stream apalis polls on; one per worker run, so a
/// worker restarted after an error gets a fresh one. It is the worker's only
/// poll strategy: it yields on a wake-up, on each of its echoes, and on every
/// tick of the backstop interval.
///
/// Two traps in apalis 1.0's `PollWith`, both met here:
/// - it ignores what the strategy yields and does not poll it again, so a
///   strategy that yields must already have registered for its next event.
///   This stream re-arms everything it waits on before it yields. (Before,
///   a yield consumed the wake-up without re-arming, and when that poll was
///   also the one that found the fetch empty, nothing was left to wake the
///   worker: it slept until apalis's 30 s heartbeat.) For the same reason
///   the interval lives here rather than as a second apalis strategy, which
///   is not polled at all in a round where the first one yields;
/// - a wake-up that lands while a fetch is in flight is absorbed by that
///   fetch, and if the task's push committed after the fetch began, it comes
///   back empty (measured on PostgreSQL: p99 POST → running of 930 ms at 200
///   jobs/s). So every wake-up is echoed twice, 20 ms and 200 ms later: one
///   of them starts a fetch after the one in flight. A newer wake-up restarts
///   the echoes, so a busy queue costs no extra fetches.
struct Wakeups {
    notify: Arc<Notify>,
    waiting: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    echo: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    interval: tokio::time::Interval,
}

const ECHOES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(200)];

impl Wakeups {
    fn new(notify: Arc<Notify>, every: Duration) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Wakeups {
            notify,
            waiting: None,
            echo: None,
            interval,
        }
    }
}

impl Stream for Wakeups {
    type Item = ();
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut fired = false;
        // Each source is polled until it is pending, so it is registered
        // to wake this task again whatever this poll returns.
        loop {
            let notify = self.notify.clone();
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(notify.notified_owned()));
            if waiting.as_mut().poll(cx).is_pending() {
                break;
            }
            self.waiting = None;
            self.echo = Some((Box::pin(tokio::time::sleep(ECHOES[0])), 0));
            fired = true;
        }
        while let Some((sleep, n)) = &mut self.echo {
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            let next = *n + 1;
            self.echo = ECHOES
                .get(next)
                .map(|d| (Box::pin(tokio::time::sleep(*d)), next));
            fired = true;
        }
        while self.interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// apalis only fetches: herald records every outcome in its own tables and
/// deletes the task row when the job no longer needs it (see `Runner::run`).
/// apalis's per-task lock and ack queries join a JSON list against the whole
/// `Jobs` table; with a few thousand rows they took 40 ms each on the single
/// writer and capped throughput at ~200 jobs/s.
fn storage_config(batch_size: usize) -> apalis_sqlite::Config {
    apalis_sqlite::Config::default()
        .queue(QUEUE_NAME)
        .batch_size(batch_size.max(1))
        .persist_results(false)
        .lock_tasks(false)
}

fn postgres_config(batch_size: usize) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(QUEUE_NAME)
        .batch_size(batch_size.max(1))
        .persist_results(false)
        .lock_tasks(false)
}

impl Queue {
    /// Starts the pusher task (so: call it inside a tokio runtime).
    pub fn sqlite(pool: &SqlitePool, batch_size: usize) -> Queue {
        let storage = SqliteStorage::new(pool).with_config(storage_config(batch_size));
        Queue::start(Storage::Sqlite(storage))
    }

    /// Starts the pusher task (so: call it inside a tokio runtime).
    pub fn postgres(pool: &apalis_postgres::PgPool, batch_size: usize) -> Queue {
        let storage = PostgresStorage::new(pool).with_config(postgres_config(batch_size));
        Queue::start(Storage::Postgres(storage))
    }

    fn start(storage: Storage) -> Queue {
        let wake = QueueWaker::default();
        let pushes = Group::start(
            Pusher {
                storage: storage.clone(),
                wake: wake.clone(),
            },
            Batching {
                writers: 1,
                max_batch: MAX_PUSH_BATCH,
                capacity: Some(4 * MAX_PUSH_BATCH),
                linger: None,
            },
        );
        Queue {
            storage,
            pushes,
            wake,
        }
    }

    /// Wakes the local worker (a task was pushed by another node).
    pub fn waker(&self) -> QueueWaker {
        self.wake.clone()
    }

    /// Hands the job to the pusher, which writes the task (batched with other
    /// pushes) and wakes the worker. The job row is already committed, so a
    /// push lost to a crash is repaired by the reconciler.
    pub async fn push(&self, id: JobId) -> Result<(), PushError> {
        self.pushes.send(id).await.map_err(|_| PushError {
            job_id: id,
            message: "the queue pusher has stopped".to_owned(),
        })
    }

    /// Starts the apalis worker, named `name` (on PostgreSQL: the node id); it
    /// stops fetching when `stop` fires and ends once its in-flight jobs have
    /// returned. apalis ends a worker whose backend fails (the database went
    /// away for a moment); this starts it again, after a pause that grows to 5 s.
    pub fn spawn_worker(
        &self,
        name: String,
        runner: Runs,
        concurrency: usize,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                let ran = queue
                    .run_worker(&name, runner.clone(), concurrency, stop.clone())
                    .await;
                if stop.is_cancelled() {
                    return;
                }
                let error = match ran {
                    Ok(()) => "it ended on its own".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(worker = %name, %error, restart_in_ms = pause.as_millis() as u64,
                    "queue worker stopped; starting it again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        })
    }

    async fn run_worker(
        &self,
        name: &str,
        runner: Runs,
        concurrency: usize,
        stop: CancellationToken,
    ) -> Result<(), WorkerError> {
        // The interval is the backstop for a wake-up that apalis absorbed
        // anyway (see `Wakeups`). On PostgreSQL a fetch is a cheap indexed
        // query, so it polls often; on SQLite a fetch is a write that competes
        // with herald's writer, so it polls once a second.
        let every = match self.storage {
            Storage::Sqlite(_) => Duration::from_secs(1),
            Storage::Postgres(_) => Duration::from_millis(100),
        };
        let strategy = Strategy::new().stream(Wakeups::new(self.wake.0.clone(), every));
        let signal = async move {
            stop.cancelled().await;
            Ok::<(), WorkerError>(())
        };
        // The two backends are different types; the worker is built the same way.
        macro_rules! run_worker {
            ($storage:expr) => {{
                let backend = $storage.clone().poll_with_strategy(strategy);
                WorkerBuilder::new(name)
                    .backend(backend)
                    .concurrency(concurrency.max(1))
                    .data(runner)
                    .build(handle_task)
                    .run_until(signal)
                    .await
            }};
        }
        match &self.storage {
            Storage::Sqlite(s) => run_worker!(s),
            Storage::Postgres(s) => {
                // A pool of its own for each run. apalis registers the worker
                // under a session-level advisory lock that its pooled
                // connection keeps; a restarted worker registering on another
                // connection of a shared pool was refused ("worker already
                // exists") until it happened to get the first one back.
                // Closing the run's pool ends those sessions.
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .test_before_acquire(false)
                    .connect_lazy_with((*s.pool().connect_options()).clone());
                let storage = PostgresStorage::<JobMessage>::new(&pool)
                    .with_config(postgres_config(s.config().batch_size));
                let ran = run_worker!(storage);
                if tokio::time::timeout(Duration::from_secs(5), pool.close())
                    .await
                    .is_err()
                {
                    tracing::warn!("the queue worker's connections did not close within 5 s");
                }
                ran
            }
        }
    }
}

const MAX_PUSH_BATCH: usize = 256;

fn task_for(id: JobId) -> Task<JobMessage> {
    TaskBuilder::new(JobMessage { job_id: id.0 })
        .task_id(TaskId::from_ulid(id.task_id()))
        .max_attempts(1)
        .build()
}

/// Writes pushes in batches (see [`Group`]); nobody waits for a push.
struct Pusher {
    storage: Storage,
    wake: QueueWaker,
}

#[async_trait]
impl Flush for Pusher {
    type Op = JobId;
    type Out = ();
    type Error = BoxDynError;

    /// Writes the batch's tasks in one transaction (apalis's sink buffers
    /// what `push_all` feeds it and flushes once), then wakes the worker. One
    /// bad task (say, one pushed twice) fails the whole batch's transaction:
    /// the group then pushes them one by one so the others still go in.
    async fn flush(&self, ops: &[JobId]) -> Result<Vec<()>, BoxDynError> {
        let mut batch = ops.to_vec();
        batch.sort();
        batch.dedup();
        macro_rules! push_all {
            ($storage:expr) => {{
                let mut s = $storage.clone();
                let all = futures::stream::iter(batch.iter().copied().map(task_for));
                s.push_all(all)
                    .await
                    .map_err(|e| Box::new(e) as BoxDynError)
            }};
        }
        let pushed = match &self.storage {
            Storage::Sqlite(s) => push_all!(s),
            Storage::Postgres(s) => push_all!(s),
        };
        self.wake.wake();
        pushed.map(|()| vec![(); ops.len()])
    }

    fn lost(&self, id: &JobId, e: &BoxDynError) {
        tracing::warn!(job_id = %id, error = %e, "queue push failed; the reconciler will retry it");
    }
}

/// What the worker does with a fetched task: run the job to its end (see
/// `worker::runner`). A store error leaves the task to be retried.
pub trait RunJob: Send + Sync + 'static {
    fn run(
        self: Arc<Self>,
        id: JobId,
    ) -> futures::future::BoxFuture<'static, Result<(), crate::store::StoreError>>;
}

/// The runner as the worker's shared data (a named type: apalis's handler
/// must not depend on a trait object's lifetime).
#[derive(Clone)]
pub struct Runs(pub Arc<dyn RunJob>);

async fn handle_task(msg: JobMessage, runner: Data<Runs>) -> Result<(), BoxDynError> {
    let Runs(runner) = (*runner).clone();
    let id = JobId(msg.job_id);
    // The job runs in a task of its own: apalis drives its handlers inside
    // the worker and may drop them when the worker stops, and a runner
    // dropped between deciding an outcome and writing it left the job
    // `running` after a clean shutdown. The application waits for running
    // jobs itself (the cancel registry counts them).
    match tokio::spawn(runner.run(id)).await {
        Ok(ran) => ran.map_err(|e| {
            tracing::error!(job_id = %id, error = %e, "job run stopped by a store error");
            Box::new(e) as BoxDynError
        }),
        Err(e) => {
            tracing::error!(job_id = %id, error = %e, "job run ended abnormally");
            Err(Box::new(e) as BoxDynError)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{waker, ArcWake};

    use super::*;

    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// apalis does not poll a strategy again after it yields, so a yield must
    /// leave the stream armed: a later wake-up has to reach the task without
    /// any poll in between (this is what left workers asleep for 30 s).
    #[tokio::test]
    async fn a_wake_up_after_a_yield_reaches_the_task_without_another_poll() {
        let notify = Arc::new(Notify::new());
        let mut wakeups = Box::pin(Wakeups::new(notify.clone(), Duration::from_secs(3600)));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = waker(count.clone());
        let mut cx = Context::from_waker(&waker);

        // The interval's first tick is due at once; then nothing is.
        tokio::time::sleep(Duration::from_millis(5)).await;
        while wakeups.as_mut().poll_next(&mut cx).is_ready() {}
        let woken = || count.0.load(Ordering::SeqCst);

        let before = woken();
        notify.notify_one();
        assert_eq!(woken(), before + 1, "the first wake-up");
        assert_eq!(wakeups.as_mut().poll_next(&mut cx), Poll::Ready(Some(())));

        // Not polled since it yielded: the next wake-up must still arrive.
        notify.notify_one();
        assert_eq!(woken(), before + 2, "a wake-up after a yield");

        // And so must the echo of a wake-up that was consumed by a yield.
        assert_eq!(wakeups.as_mut().poll_next(&mut cx), Poll::Ready(Some(())));
        let before = woken();
        tokio::time::sleep(ECHOES[0] + Duration::from_millis(30)).await;
        assert!(woken() > before, "the echo woke the task");
    }
}
