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
//!   left behind).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::*;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::runner::Runner;
use crate::domain::JobId;

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
    storage: SqliteStorage<JobMessage>,
    wake: mpsc::Sender<()>,
}

/// The receiving half of the wake-up channel, as the stream apalis polls on.
pub struct Wakeups(mpsc::Receiver<()>);

impl Stream for Wakeups {
    type Item = ();
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.0.poll_recv(cx)
    }
}

fn storage_config(batch_size: usize) -> apalis_sqlite::Config {
    apalis_sqlite::Config::default()
        .queue(QUEUE_NAME)
        .batch_size(batch_size.max(1))
}

impl Queue {
    pub fn sqlite(pool: &SqlitePool, batch_size: usize) -> (Queue, Wakeups) {
        // Capacity 1: wake-ups that arrive while one is pending collapse into it.
        let (tx, rx) = mpsc::channel(1);
        let storage = SqliteStorage::new(pool).with_config(storage_config(batch_size));
        (Queue { storage, wake: tx }, Wakeups(rx))
    }

    pub async fn push(&self, id: JobId) -> Result<(), PushError> {
        let task = TaskBuilder::new(JobMessage { job_id: id.0 })
            .task_id(TaskId::from_ulid(id.task_id()))
            .max_attempts(1)
            .build();
        let mut storage = self.storage.clone();
        storage.push_task(task).await.map_err(|e| PushError {
            job_id: id,
            message: e.to_string(),
        })?;
        let _ = self.wake.try_send(());
        Ok(())
    }

    /// Starts the apalis worker; it stops fetching when `stop` fires and ends
    /// once its in-flight jobs have returned.
    pub fn spawn_worker(
        &self,
        wakeups: Wakeups,
        runner: Arc<Runner>,
        concurrency: usize,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let strategy = Strategy::new()
            .stream(wakeups)
            .interval(Duration::from_secs(1));
        let backend = self.storage.clone().poll_with_strategy(strategy);
        let name = format!("herald-{}", Uuid::now_v7().simple());
        let worker = WorkerBuilder::new(name.as_str())
            .backend(backend)
            .concurrency(concurrency.max(1))
            .data(runner)
            .build(handle_task);
        tokio::spawn(async move {
            let signal = async move {
                stop.cancelled().await;
                Ok::<(), WorkerError>(())
            };
            if let Err(e) = worker.run_until(signal).await {
                tracing::error!(worker = %name, error = %e, "queue worker stopped with an error");
            }
        })
    }
}

async fn handle_task(msg: JobMessage, runner: Data<Arc<Runner>>) -> Result<(), BoxDynError> {
    runner.run(JobId(msg.job_id)).await.map_err(|e| {
        tracing::error!(job_id = %msg.job_id, error = %e, "job run stopped by a store error");
        Box::new(e) as BoxDynError
    })
}
