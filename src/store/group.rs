//! Group commit: concurrent writes of one shape go to the database together,
//! as one statement and one commit.
//!
//! On PostgreSQL most of a small write's cost is not the rows: it is the
//! round trip, the two context switches, the statement's set-up and the
//! commit's WAL flush (measured with no-op jobs: two thirds of the machine's
//! CPU in PostgreSQL, a third of that in the kernel, and backends queueing on
//! `WALWrite`). A job makes the same few writes as every other job, so the
//! writes of the jobs running at one moment are gathered here and flushed as
//! one statement over arrays.
//!
//! Nothing waits to fill a batch: a writer takes whatever is queued when it
//! gets free, so a lone write goes out at once (one channel hop later), and
//! under load the batches grow while the previous ones commit. A few writers
//! run at once, so one batch's commit does not hold up the next.
//!
//! A caller still gets its own answer: each op's result comes back on its own
//! channel once its batch has committed. Two ops with the same key never share
//! a batch (the later one goes in the next), and when a batch fails as a whole
//! its ops are written one by one, so one bad op cannot fail the others.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};

/// One kind of write that can be flushed in batches.
#[async_trait]
pub(super) trait Flush: Send + Sync + 'static {
    type Op: Send + Sync + 'static;
    type Out: Send + 'static;
    /// Writes every op in one statement; one output per op, in order.
    async fn flush(&self, ops: &[Self::Op]) -> Result<Vec<Self::Out>, sqlx::Error>;
    /// Ops with the same key are written in different batches, in order.
    fn key(op: &Self::Op) -> Option<String>;
}

type Reply<Out> = oneshot::Sender<Result<Out, sqlx::Error>>;
/// An op and where its answer goes.
type Item<F> = (<F as Flush>::Op, Reply<<F as Flush>::Out>);

/// The most ops in one statement.
const MAX_BATCH: usize = 256;

pub(super) struct Group<F: Flush> {
    tx: mpsc::UnboundedSender<Item<F>>,
}

impl<F: Flush> Clone for Group<F> {
    fn clone(&self) -> Self {
        Group {
            tx: self.tx.clone(),
        }
    }
}

impl<F: Flush> std::fmt::Debug for Group<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl<F: Flush> Group<F> {
    /// Starts `writers` writer tasks (so: call it inside a tokio runtime).
    /// They end when the last handle is dropped.
    pub(super) fn start(flush: F, writers: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let flush = Arc::new(flush);
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(flush.clone(), rx.clone()));
        }
        Group { tx }
    }

    /// Runs `op` with whatever else is waiting, and answers once its batch
    /// has committed (or failed).
    pub(super) async fn run(&self, op: F::Op) -> Result<F::Out, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((op, reply))
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn write_batches<F: Flush>(flush: Arc<F>, rx: Arc<Mutex<mpsc::UnboundedReceiver<Item<F>>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // The receiver is held only while taking a batch, so the other
        // writers gather the next batches while this one is written.
        let taken = rx.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if taken == 0 {
            return;
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

/// Flushes `ops`, once more on a fresh connection if the first one turned out
/// to be broken. The pools do not test a connection before handing it out
/// (that was a round trip per statement), so after the database went away
/// for a moment, every pooled connection fails once; a request should not.
/// Safe to repeat: a transition is conditional on `last_seq`, a read is a
/// read, and a new job's id is its primary key.
async fn flush_retrying<F: Flush>(flush: &F, ops: &[F::Op]) -> Result<Vec<F::Out>, sqlx::Error> {
    match flush.flush(ops).await {
        Err(e @ sqlx::Error::Io(_)) => {
            tracing::debug!(error = %e, "a pooled connection was broken; trying a fresh one");
            flush.flush(ops).await
        }
        other => other,
    }
}

async fn write_batch<F: Flush>(flush: &F, batch: Vec<Item<F>>) {
    let (ops, replies): (Vec<F::Op>, Vec<Reply<F::Out>>) = batch.into_iter().unzip();
    let written = flush_retrying(flush, &ops).await;
    match written {
        Ok(outs) if outs.len() == ops.len() => {
            for (reply, out) in replies.into_iter().zip(outs) {
                let _ = reply.send(Ok(out));
            }
        }
        Ok(outs) => {
            let message = format!("a batch of {} writes answered {}", ops.len(), outs.len());
            for reply in replies {
                let _ = reply.send(Err(sqlx::Error::Protocol(message.clone())));
            }
        }
        Err(e) if ops.len() == 1 => {
            let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
        }
        Err(e) => {
            tracing::debug!(error = %e, writes = ops.len(), "batched write failed; writing one by one");
            for (op, reply) in ops.into_iter().zip(replies) {
                let one = flush_retrying(flush, std::slice::from_ref(&op))
                    .await
                    .and_then(|mut outs| {
                        outs.pop().ok_or_else(|| {
                            sqlx::Error::Protocol("a write answered nothing".to_owned())
                        })
                    });
                let _ = reply.send(one);
            }
        }
    }
}
