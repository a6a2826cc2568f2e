//! The notifier: `herald_events` notifications for committed events, sent
//! outside the events' transactions (`mod.rs` says why).

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::mpsc;

use crate::domain::JobId;

/// Sends `herald_events` notifications for committed events, batched: all
/// the ids waiting when it gets to run go out in one notify-only transaction
/// (one notify per distinct job).
#[derive(Clone, Debug)]
pub(super) struct Notifier(mpsc::UnboundedSender<JobId>);

/// The most ids one notify transaction carries.
const NOTIFY_BATCH: usize = 512;
/// How long the notifier gathers ids before it sends them: what a stream on
/// another node may wait beyond the commit.
const NOTIFY_LINGER: Duration = Duration::from_millis(1);

impl Notifier {
    pub(super) fn start(pool: PgPool) -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<JobId>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(NOTIFY_BATCH);
            while rx.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
                // A moment more to gather: sending as soon as one id was
                // there made it one notify transaction per event under load.
                tokio::time::sleep(NOTIFY_LINGER).await;
                while batch.len() < NOTIFY_BATCH {
                    match rx.try_recv() {
                        Ok(id) => batch.push(id),
                        Err(_) => break,
                    }
                }
                batch.sort();
                batch.dedup();
                let ids: Vec<String> = batch.drain(..).map(|id| id.to_string()).collect();
                let sent = sqlx::query(
                    "SELECT pg_notify('herald_events', id) FROM unnest($1::text[]) AS id",
                )
                .bind(&ids)
                .execute(&pool)
                .await;
                if let Err(e) = sent {
                    // Other nodes' streams catch up at the listener's periodic wake-up.
                    tracing::warn!(error = %e, jobs = ids.len(), "event notification failed");
                }
            }
        });
        Notifier(tx)
    }

    /// The job has a new committed event.
    pub(super) fn committed(&self, id: JobId) {
        let _ = self.0.send(id);
    }
}
