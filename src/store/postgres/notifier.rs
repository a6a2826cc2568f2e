//! The notifier: `herald_events` notifications for committed events, and
//! `herald_queue` ones for newly queued jobs, sent outside the events'
//! transactions (`mod.rs` says why). Each carries the sending process's
//! origin mark (`herald_events`: `<job id> <origin>`; `herald_queue`:
//! `<origin>`), so that its own listener skips what it already woke locally.
//! An event notice may carry the event itself, when it fits in a
//! notification: `<job id> <origin> <seq> <kind> <at>` and a newline, then
//! its data. Other nodes' caught-up streams of the job send it without
//! reading the store (see `Hub::publish`); anything else reads as before.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPool;

use super::{EVENTS_CHANNEL, QUEUE_CHANNEL};
use crate::domain::{JobId, NewEvent};
use crate::store::group::{Batching, Flush, Group};

/// Sends `herald_events` notifications for committed events, batched: all
/// the ids waiting when it gets to run go out in one notify-only transaction
/// (one notify per distinct job).
#[derive(Clone, Debug)]
pub(super) struct Notifier(Group<Notify>);

/// The most ids one notify transaction carries.
const NOTIFY_BATCH: usize = 512;
/// How long the notifier gathers ids before it sends them: what a stream on
/// another node may wait beyond the commit.
const NOTIFY_LINGER: Duration = Duration::from_millis(1);

impl Notifier {
    pub(super) fn start(pool: PgPool, origin: String) -> Notifier {
        Notifier(Group::start(
            Notify { pool, origin },
            Batching {
                max_batch: NOTIFY_BATCH,
                // A moment more to gather: sending as soon as one id was
                // there made it one notify transaction per event under load.
                linger: Some(NOTIFY_LINGER),
                ..Batching::default()
            },
        ))
    }

    /// The job has a new committed event. Nobody waits for the notification.
    pub(super) async fn committed(&self, id: JobId) {
        let _ = self.0.send(Notice::Event(id)).await;
    }

    /// The job's committed event `ev`, carried in the notification when it
    /// fits, else as [`Notifier::committed`].
    pub(super) async fn committed_event(&self, id: JobId, ev: &NewEvent) {
        let notice = if ev.data.len() <= CARRIED_DATA {
            Notice::Carried(id, ev.seq.0, ev.kind.as_str(), ev.at.0, ev.data.clone())
        } else {
            Notice::Event(id)
        };
        let _ = self.0.send(notice).await;
    }

    /// A job became queued: other nodes' workers may claim it.
    pub(super) async fn queued(&self) {
        let _ = self.0.send(Notice::Queued).await;
    }
}

/// The most event data a notification carries: PostgreSQL's payloads stop
/// at 8000 bytes, and the rest of the line takes about 100.
const CARRIED_DATA: usize = 7_800;

/// One thing to tell the other nodes. Sorted, a batch's events of one job
/// go out in their order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Notice {
    Event(JobId),
    /// An event with its seq, kind, time and data.
    Carried(JobId, i64, &'static str, i64, String),
    Queued,
}

struct Notify {
    pool: PgPool,
    origin: String,
}

#[async_trait]
impl Flush for Notify {
    type Op = Notice;
    type Out = ();
    type Error = sqlx::Error;

    /// Never fails as a batch: notifying the jobs one by one after a failed
    /// notify would only fail again, and nothing is lost meanwhile.
    async fn flush(&self, ops: &[Notice]) -> Result<Vec<()>, sqlx::Error> {
        let mut batch = ops.to_vec();
        batch.sort();
        batch.dedup();
        let (channels, payloads): (Vec<&str>, Vec<String>) = batch
            .iter()
            .map(|n| match n {
                Notice::Event(id) => (EVENTS_CHANNEL, format!("{id} {}", self.origin)),
                Notice::Carried(id, seq, kind, at, data) => (
                    EVENTS_CHANNEL,
                    format!("{id} {} {seq} {kind} {at}\n{data}", self.origin),
                ),
                Notice::Queued => (QUEUE_CHANNEL, self.origin.clone()),
            })
            .unzip();
        let sent =
            sqlx::query("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)")
                .bind(&channels)
                .bind(&payloads)
                .execute(&self.pool)
                .await;
        if let Err(e) = sent {
            // Other nodes catch up at the listener's periodic wake-up.
            tracing::warn!(error = %e, notices = payloads.len(), "notification failed");
        }
        Ok(vec![(); ops.len()])
    }
}
