//! Cross-node wake-ups on PostgreSQL: one dedicated LISTEN connection per node.
//!
//! Four channels, each carrying ids and marks, and maybe events:
//! - `herald_event_batch` (the sender's origin mark, then the events it
//!   committed, each as its job id and maybe the event; see
//!   [`EventBatch`]): another node appended events; publish each to this
//!   node's subscribers of that job, or wake them and they read the store;
//! - `herald_events` (job id, then the sender's origin mark, then maybe the
//!   event): the same, one event to a notification, from a node of an
//!   earlier version;
//! - `herald_cancel` (job id): a cancel was requested; fire the job's token if
//!   it runs here;
//! - `herald_queue` (the sender's origin mark): a job became queued on
//!   another node; wake this node's queue worker so it claims now rather
//!   than on its interval.
//!
//! An event notice may carry the event (see the PostgreSQL notifier):
//! then it is published to the job's streams here as a local one is, and
//! caught-up streams send it without reading the store.
//!
//! A node hears its own notifications too. It woke its own streams, feeds
//! and worker when it committed (`Jobs`), so for its own event it wakes only
//! the feeds again: a feed read may have been held back by a transaction in
//! flight at the time (see the PostgreSQL feed's horizon), and the echo
//! comes after that transaction. Its job streams read nothing for it (they
//! would have read the store once more per event for nothing).
//!
//! Notifications sent while the connection is down are lost. So after every
//! (re)connect, once LISTEN is in place again, the node wakes every local
//! subscriber and its worker once: they look at the store, which has
//! everything. LISTEN comes first, then the wake-up: the same
//! subscribe-before-read rule as the streams.
//!
//! A notification that was never sent (the node that committed the event was
//! killed before its notifier ran) is covered by a wake-up of everything every
//! 10 s. A lost cancel notification is covered by [`sweep_cancels`], which
//! asks the store about the jobs running here every few seconds.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::domain::{EventKind, EventSeq, JobId, Timestamp};
use crate::frame::Frame;
use crate::hub::Hub;
use crate::queue::QueueWaker;
use crate::store::postgres::{
    EventBatch, CANCEL_CHANNEL, EVENTS_CHANNEL, EVENT_BATCH_CHANNEL, QUEUE_CHANNEL,
};
use crate::store::Store;

/// How often every local stream and the worker look at the store anyway.
const BACKSTOP: Duration = Duration::from_secs(10);

/// What the listener wakes on this node.
#[derive(Clone)]
pub struct Wakers {
    pub hub: Arc<Hub>,
    pub cancels: Arc<CancelRegistry>,
    /// The queue's wake-up: the local worker (on nodes that run jobs) and
    /// remote workers' long polls (on nodes that serve the API).
    pub queue: Option<QueueWaker>,
    /// This node's origin mark (see the store's `Pools::origin`).
    pub origin: String,
}

impl Wakers {
    fn everything(&self) {
        self.hub.notify_all();
        if let Some(q) = &self.queue {
            q.wake();
        }
    }
}

/// Listens until `stop` fires, reconnecting with a growing pause (up to 5 s).
pub async fn listen(opts: PgConnectOptions, wakers: Wakers, stop: CancellationToken) {
    // A pool of one, used only to (re)open the listener's connection.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(opts);
    let mut pause = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([
                EVENT_BATCH_CHANNEL,
                EVENTS_CHANNEL,
                CANCEL_CHANNEL,
                QUEUE_CHANNEL,
            ])
            .await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            r = connected => match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64,
                        "cannot open the LISTEN connection; streams fed by other nodes wait until it is back");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        };
        pause = Duration::from_millis(100);
        if !first {
            tracing::info!("LISTEN connection back; waking every local stream to catch up");
        }
        first = false;
        wakers.everything();
        let mut backstop =
            tokio::time::interval_at(tokio::time::Instant::now() + BACKSTOP, BACKSTOP);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                _ = backstop.tick() => {
                    // A notification that was never sent (its node died right
                    // after the commit) must not leave a stream waiting forever.
                    wakers.everything();
                    continue;
                }
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => dispatch(&wakers, n.channel(), n.payload()),
                // The connection dropped (try_recv says so once before it would
                // reconnect by itself); reconnect here so the catch-up wake-up
                // comes after LISTEN is in place.
                Ok(None) => {
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    metrics::counter!("herald_listener_reconnects_total").increment(1);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    metrics::counter!("herald_listener_reconnects_total").increment(1);
                    break;
                }
            }
        }
    }
}

fn dispatch(wakers: &Wakers, channel: &str, payload: &str) {
    match channel {
        EVENT_BATCH_CHANNEL => {
            let (origin, records) = EventBatch::unpack(payload);
            if origin == wakers.origin {
                // Its own events: one wake-up of the feeds for them all.
                wakers.hub.notify_feeds();
                return;
            }
            for record in records {
                match record {
                    Ok((id, Some(ev))) => wakers.hub.publish(
                        id,
                        Frame::new(EventSeq(ev.seq), ev.kind, ev.data, Timestamp(ev.at)),
                    ),
                    Ok((id, None)) => wakers.hub.notify(id),
                    Err(error) => {
                        // What came before it was published; the rest is
                        // woken for every stream, which reads the store.
                        tracing::warn!(channel, %error, "notification record ignored; waking every stream");
                        wakers.hub.notify_all();
                    }
                }
            }
        }
        EVENTS_CHANNEL => {
            // `<id> <origin>`, then maybe ` <seq> <kind> <at>\n<data>`; a
            // node of an older version sends the bare id.
            let (head, data) = payload.split_once('\n').unwrap_or((payload, ""));
            let mut fields = head.split(' ');
            let id = fields.next().unwrap_or_default();
            let origin = fields.next().unwrap_or_default();
            match id.parse::<JobId>() {
                Ok(_) if origin == wakers.origin => wakers.hub.notify_feeds(),
                Ok(id) => match carried(fields, data) {
                    Some(frame) => wakers.hub.publish(id, frame),
                    None => wakers.hub.notify(id),
                },
                Err(_) => {
                    tracing::warn!(channel, payload, "notification without a job id ignored")
                }
            }
        }
        CANCEL_CHANNEL => match payload.parse::<JobId>() {
            Ok(id) => {
                if wakers.cancels.cancel(id) {
                    tracing::info!(job_id = %id, "cancel requested on another node; stopping the job here");
                }
            }
            Err(_) => tracing::warn!(channel, payload, "notification without a job id ignored"),
        },
        QUEUE_CHANNEL if payload == wakers.origin => {}
        QUEUE_CHANNEL => {
            if let Some(q) = &wakers.queue {
                q.wake();
            }
        }
        _ => {}
    }
}

/// The event a notice carries (`<seq> <kind> <at>`, and its data), framed;
/// none when it carries none, or one this node cannot read.
fn carried<'a>(mut fields: impl Iterator<Item = &'a str>, data: &str) -> Option<Frame> {
    let seq = fields.next()?.parse().ok()?;
    let kind = EventKind::parse(fields.next()?)?;
    let at = fields.next()?.parse().ok()?;
    Some(Frame::new(EventSeq(seq), kind, data, Timestamp(at)))
}

/// Every `every`, fires the token of each job running here whose cancel
/// request is stored: the backup for a lost `herald_cancel` notification.
pub async fn sweep_cancels(
    store: Arc<dyn Store>,
    cancels: Arc<CancelRegistry>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let running = cancels.running_not_cancelled();
        if running.is_empty() {
            continue;
        }
        match store.cancel_requested_among(&running).await {
            Ok(ids) => {
                for id in ids {
                    if cancels.cancel(id) {
                        tracing::info!(job_id = %id, "stored cancel request found by the periodic check; stopping the job");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cancel check failed; will try again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewEvent;

    fn wakers() -> Wakers {
        Wakers {
            hub: Hub::new(),
            cancels: CancelRegistry::new(CancellationToken::new()),
            queue: None,
            origin: "00000000000000aa".into(),
        }
    }

    #[test]
    fn a_node_wakes_only_its_feeds_for_its_own_events() {
        let w = wakers();
        let id = JobId(uuid::Uuid::from_u128(7));
        let mut stream = w.hub.subscribe(id);
        let mut feed = w.hub.subscribe_feed();
        let stream_at = stream.version();
        feed.borrow_and_update();

        dispatch(&w, EVENTS_CHANNEL, &format!("{id} 00000000000000aa"));
        assert_eq!(
            stream.version(),
            stream_at,
            "its own event woke a job stream"
        );
        assert!(
            feed.has_changed().unwrap(),
            "its own event did not wake the feeds"
        );
        feed.borrow_and_update();

        // Another node's event, and one from a node of an older version
        // (the bare id), wake both.
        for payload in [format!("{id} 00000000000000bb"), id.to_string()] {
            dispatch(&w, EVENTS_CHANNEL, &payload);
            assert_ne!(
                stream.version(),
                stream_at,
                "{payload:?} did not wake the stream"
            );
            assert!(
                feed.has_changed().unwrap(),
                "{payload:?} did not wake the feeds"
            );
            feed.borrow_and_update();
        }
    }

    #[test]
    fn a_batch_of_its_own_wakes_only_the_feeds_and_another_nodes_reaches_each_job() {
        use crate::store::postgres::Notice;
        let w = wakers();
        let (a, b) = (
            JobId(uuid::Uuid::from_u128(9)),
            JobId(uuid::Uuid::from_u128(10)),
        );
        w.hub.prime(a);
        let mut stream_a = w.hub.subscribe(a);
        let mut stream_b = w.hub.subscribe(b);
        // The job's first event, so that the carried second one follows it.
        w.hub.publish_created(
            a,
            Frame::of_new(&NewEvent {
                seq: EventSeq(1),
                kind: EventKind::Status,
                data: r#"{"at":"2026-11-30T10:00:00.000000Z","attempt":1,"status":"queued"}"#
                    .into(),
                at: Timestamp(1),
            }),
        );
        let mut feed = w.hub.subscribe_feed();
        feed.borrow_and_update();
        let (at_a, at_b) = (stream_a.version(), stream_b.version());
        let running = r#"{"at":"2026-11-30T10:00:00.000002Z","attempt":1,"status":"running"}"#;
        let notices = [
            Notice::Carried(a, 2, "status", 2, running.into()),
            Notice::Event(b),
        ];

        for payload in EventBatch::pack("00000000000000aa", &notices) {
            dispatch(&w, EVENT_BATCH_CHANNEL, &payload);
        }
        assert_eq!(stream_a.version(), at_a, "its own event woke a job stream");
        assert_eq!(stream_b.version(), at_b, "its own event woke a job stream");
        assert!(
            feed.has_changed().unwrap(),
            "its own events did not wake the feeds"
        );
        feed.borrow_and_update();

        for payload in EventBatch::pack("00000000000000bb", &notices) {
            dispatch(&w, EVENT_BATCH_CHANNEL, &payload);
        }
        assert_ne!(
            stream_b.version(),
            at_b,
            "the uncarried event did not wake its stream"
        );
        assert!(
            feed.has_changed().unwrap(),
            "another node's events did not wake the feeds"
        );
        let recent = stream_a.recent().try_lock().expect("the slot is free");
        let last = recent
            .frames
            .back()
            .expect("the carried event joined the recent frames");
        assert_eq!(last.seq, EventSeq(2));
        assert_eq!(
            std::str::from_utf8(&last.bytes).unwrap(),
            format!("id: 2\nevent: status\ndata: {running}\n\n")
        );
    }

    /// Another node's event, carried in its notice, joins the job's slot of
    /// recent frames here, so its caught-up streams send it without a read.
    #[test]
    fn a_carried_event_of_another_node_joins_the_jobs_recent_frames() {
        let w = wakers();
        let id = JobId(uuid::Uuid::from_u128(8));
        w.hub.prime(id);
        let mut stream = w.hub.subscribe(id);
        let queued = r#"{"at":"2026-11-30T10:00:00.000000Z","attempt":1,"status":"queued"}"#;
        w.hub.publish_created(
            id,
            Frame::of_new(&NewEvent {
                seq: EventSeq(1),
                kind: EventKind::Status,
                data: queued.into(),
                at: Timestamp(1),
            }),
        );
        let running = r#"{"at":"2026-11-30T10:00:00.000002Z","attempt":1,"status":"running"}"#;
        dispatch(
            &w,
            EVENTS_CHANNEL,
            &format!("{id} 00000000000000bb 2 status 2\n{running}"),
        );
        let version = stream.version();
        let recent = stream.recent().try_lock().expect("the slot is free");
        assert_eq!(recent.checked, Some(version), "the slot is up to date");
        let last = recent.frames.back().expect("a frame");
        assert_eq!(last.seq, EventSeq(2));
        assert_eq!(
            std::str::from_utf8(&last.bytes).unwrap(),
            format!("id: 2\nevent: status\ndata: {running}\n\n")
        );
    }
}
