//! Group commit: concurrent writes of one shape go to the database together,
//! as one statement (or one transaction) and one commit. Every batched write
//! of herald goes through here: SQLite's writer, PostgreSQL's new jobs,
//! transitions, reads by id and event notifications, and the queue's pushes.
//!
//! On PostgreSQL most of a small write's cost is not the rows: it is the
//! round trip, the two context switches, the statement's set-up and the
//! commit's WAL flush (measured with no-op jobs: two thirds of the machine's
//! CPU in PostgreSQL, a third of that in the kernel, and backends queueing on
//! `WALWrite`). On SQLite it is the commit. A job makes the same few writes as
//! every other job, so the writes of the jobs running at one moment are
//! gathered here and flushed together.
//!
//! Nothing waits to fill a batch (unless the group is told to linger): a
//! writer takes whatever is queued when it gets free, so a lone write goes
//! out at once (one channel hop later), and under load the batches grow while
//! the previous ones commit. A group may run a few writers at once, so one
//! batch's commit does not hold up the next.
//!
//! A caller that waits ([`Group::run`]) gets its own answer on its own
//! channel once its batch has committed; a caller that does not
//! ([`Group::send`]: a notification, a queue push) pays for no channel, and
//! a failure of its op is logged by [`Flush::lost`]. Two ops with the same
//! key never share a batch (the later one goes in the next), and when a batch
//! fails as a whole its ops are written one by one, so one bad op cannot fail
//! the others.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};

/// One kind of write that can be flushed in batches.
#[async_trait]
pub(crate) trait Flush: Send + Sync + 'static {
    type Op: Send + Sync + 'static;
    type Out: Send + 'static;
    type Error: BatchError;

    /// Writes every op in one go; one output per op, in order.
    async fn flush(&self, ops: &[Self::Op]) -> Result<Vec<Self::Out>, Self::Error>;

    /// Ops with the same key are written in different batches, in order.
    fn key(_op: &Self::Op) -> Option<String> {
        None
    }

    /// An op that nobody waits for failed, on its own too.
    fn lost(&self, _op: &Self::Op, error: &Self::Error) {
        tracing::warn!(%error, "a batched write that nobody waits for failed");
    }
}

/// A flush's error. The group makes one when it cannot answer an op.
pub(crate) trait BatchError: std::fmt::Display + From<Unanswered> + Send + 'static {
    /// The batch met a broken pooled connection: one more try, on a fresh
    /// one, may well succeed.
    fn broken_connection(&self) -> bool {
        false
    }
}

/// Why the group could not answer an op.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unanswered {
    #[error("the batch writer has stopped")]
    Stopped,
    #[error("a batch of {ops} writes answered {outs}")]
    Miscounted { ops: usize, outs: usize },
}

impl From<Unanswered> for sqlx::Error {
    fn from(e: Unanswered) -> Self {
        match e {
            Unanswered::Stopped => sqlx::Error::PoolClosed,
            Unanswered::Miscounted { .. } => sqlx::Error::Protocol(e.to_string()),
        }
    }
}

/// The pools do not test a connection before handing it out (that was a
/// round trip per statement), so after the database went away for a moment,
/// every pooled connection fails once with an I/O error; a request should
/// not.
impl BatchError for sqlx::Error {
    fn broken_connection(&self) -> bool {
        matches!(self, sqlx::Error::Io(_))
    }
}

impl BatchError for Box<dyn std::error::Error + Send + Sync> {}

/// How a group gathers its batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Batches in flight at once.
    pub writers: usize,
    /// The most ops in one batch.
    pub max_batch: usize,
    /// Ops that may wait to be taken before a sender waits for room
    /// (`None`: no bound; a sender never waits).
    pub capacity: Option<usize>,
    /// How long a writer that found some ops waits for more before it
    /// flushes (`None`: it flushes what it found at once).
    pub linger: Option<Duration>,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            writers: 1,
            max_batch: 256,
            capacity: None,
            linger: None,
        }
    }
}

type Reply<F> = oneshot::Sender<Result<<F as Flush>::Out, <F as Flush>::Error>>;
/// An op and where its answer goes, if anyone waits for it.
type Item<F> = (<F as Flush>::Op, Option<Reply<F>>);

pub(crate) struct Group<F: Flush> {
    tx: Sender<Item<F>>,
}

enum Sender<T> {
    Bounded(mpsc::Sender<T>),
    Unbounded(mpsc::UnboundedSender<T>),
}

enum Receiver<T> {
    Bounded(mpsc::Receiver<T>),
    Unbounded(mpsc::UnboundedReceiver<T>),
}

impl<T> Receiver<T> {
    async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> usize {
        match self {
            Receiver::Bounded(rx) => rx.recv_many(buf, limit).await,
            Receiver::Unbounded(rx) => rx.recv_many(buf, limit).await,
        }
    }

    fn try_recv(&mut self) -> Option<T> {
        match self {
            Receiver::Bounded(rx) => rx.try_recv().ok(),
            Receiver::Unbounded(rx) => rx.try_recv().ok(),
        }
    }
}

impl<F: Flush> Clone for Group<F> {
    fn clone(&self) -> Self {
        let tx = match &self.tx {
            Sender::Bounded(tx) => Sender::Bounded(tx.clone()),
            Sender::Unbounded(tx) => Sender::Unbounded(tx.clone()),
        };
        Group { tx }
    }
}

impl<F: Flush> std::fmt::Debug for Group<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl<F: Flush> Group<F> {
    /// Starts the group's writer tasks (so: call it inside a tokio runtime).
    /// They end when the last handle is dropped, once what was sent is written.
    pub(crate) fn start(flush: F, batching: Batching) -> Self {
        let (tx, rx) = match batching.capacity {
            Some(n) => {
                let (tx, rx) = mpsc::channel(n.max(1));
                (Sender::Bounded(tx), Receiver::Bounded(rx))
            }
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Sender::Unbounded(tx), Receiver::Unbounded(rx))
            }
        };
        let rx = Arc::new(Mutex::new(rx));
        let flush = Arc::new(flush);
        for _ in 0..batching.writers.max(1) {
            tokio::spawn(write_batches(flush.clone(), rx.clone(), batching));
        }
        Group { tx }
    }

    /// Runs `op` with whatever else is waiting, and answers once its batch
    /// has committed (or failed).
    pub(crate) async fn run(&self, op: F::Op) -> Result<F::Out, F::Error> {
        let (reply, answer) = oneshot::channel();
        self.enqueue((op, Some(reply))).await?;
        answer.await.map_err(|_| Unanswered::Stopped)?
    }

    /// Hands `op` to the writers and returns: nobody waits for its answer
    /// (a failure goes to [`Flush::lost`]). On a bounded group it waits for
    /// room; on an unbounded one it never waits.
    pub(crate) async fn send(&self, op: F::Op) -> Result<(), Unanswered> {
        self.enqueue((op, None)).await
    }

    async fn enqueue(&self, item: Item<F>) -> Result<(), Unanswered> {
        match &self.tx {
            Sender::Bounded(tx) => tx.send(item).await.map_err(|_| Unanswered::Stopped),
            Sender::Unbounded(tx) => tx.send(item).map_err(|_| Unanswered::Stopped),
        }
    }
}

async fn write_batches<F: Flush>(
    flush: Arc<F>,
    rx: Arc<Mutex<Receiver<Item<F>>>>,
    batching: Batching,
) {
    let max = batching.max_batch.max(1);
    let mut batch = Vec::with_capacity(max);
    loop {
        // The receiver is held only while taking a batch, so the other
        // writers gather the next batches while this one is written.
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, max).await == 0 {
                return;
            }
            if let Some(linger) = batching.linger.filter(|_| batch.len() < max) {
                tokio::time::sleep(linger).await;
                while batch.len() < max {
                    match rx.try_recv() {
                        Some(item) => batch.push(item),
                        None => break,
                    }
                }
            }
        }
        while !batch.is_empty() {
            let later = split_same_keys::<F>(&mut batch);
            write_batch(&*flush, std::mem::take(&mut batch)).await;
            batch = later;
        }
    }
}

/// Leaves in `batch` the first op of each key and returns the rest, in order.
fn split_same_keys<F: Flush>(batch: &mut Vec<Item<F>>) -> Vec<Item<F>> {
    let mut seen = HashSet::new();
    let mut later = Vec::new();
    let mut now = Vec::with_capacity(batch.len());
    for item in batch.drain(..) {
        let repeated = F::key(&item.0).is_some_and(|k| !seen.insert(k));
        if repeated {
            later.push(item);
        } else {
            now.push(item);
        }
    }
    *batch = now;
    later
}

/// Flushes `ops`, again while a try met a broken connection (see
/// [`BatchError::broken_connection`]), up to [`BROKEN_TRIES`] tries: after
/// the database went away for a moment, each pooled connection fails once,
/// and a batch pool keeps all of its connections open. Safe to repeat: a
/// transition is conditional on `last_seq`, a read is a read, and a new
/// job's id is its primary key.
async fn flush_retrying<F: Flush>(flush: &F, ops: &[F::Op]) -> Result<Vec<F::Out>, F::Error> {
    let mut tries = 1;
    loop {
        match flush.flush(ops).await {
            Err(e) if e.broken_connection() && tries < BROKEN_TRIES => {
                tracing::debug!(error = %e, tries, "a pooled connection was broken; trying another");
                tries += 1;
            }
            other => return other,
        }
    }
}

/// More tries than a batch pool has connections (PostgreSQL's submissions
/// and writes keep 7 open), so one outage costs a batch no error.
const BROKEN_TRIES: usize = 9;

/// Sends `answer` to whoever waits for `op`, or, when nobody does and it
/// failed, tells the flush it was lost. A caller that stopped waiting no
/// longer needs the answer; the write stands.
fn deliver<F: Flush>(
    flush: &F,
    op: &F::Op,
    reply: Option<Reply<F>>,
    answer: Result<F::Out, F::Error>,
) {
    match (reply, answer) {
        (Some(reply), answer) => drop(reply.send(answer)),
        (None, Err(e)) => flush.lost(op, &e),
        (None, Ok(_)) => {}
    }
}

async fn write_batch<F: Flush>(flush: &F, batch: Vec<Item<F>>) {
    let (ops, replies): (Vec<F::Op>, Vec<Option<Reply<F>>>) = batch.into_iter().unzip();
    match flush_retrying(flush, &ops).await {
        Ok(outs) if outs.len() == ops.len() => {
            for ((op, reply), out) in ops.iter().zip(replies).zip(outs) {
                deliver(flush, op, reply, Ok(out));
            }
        }
        Ok(outs) => {
            let (n, m) = (ops.len(), outs.len());
            for (op, reply) in ops.iter().zip(replies) {
                let e = Unanswered::Miscounted { ops: n, outs: m };
                deliver(flush, op, reply, Err(e.into()));
            }
        }
        Err(e) if ops.len() == 1 => {
            let reply = replies.into_iter().next().flatten();
            deliver(flush, &ops[0], reply, Err(e));
        }
        Err(e) => {
            tracing::debug!(error = %e, writes = ops.len(), "batched write failed; writing one by one");
            for (op, reply) in ops.iter().zip(replies) {
                let one = flush_retrying(flush, std::slice::from_ref(op))
                    .await
                    .and_then(|mut outs| match (outs.pop(), outs.is_empty()) {
                        (Some(out), true) => Ok(out),
                        _ => Err(Unanswered::Miscounted {
                            ops: 1,
                            outs: outs.len() + 1,
                        }
                        .into()),
                    });
                deliver(flush, op, reply, one);
            }
        }
    }
}

#[cfg(test)]
mod tests;
