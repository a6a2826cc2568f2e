//! Per-job wake-ups. The hub carries no payload: it only says "look again", and
//! the store decides what is delivered. A burst of wake-ups while a subscriber
//! is busy collapses into one (a `watch` channel keeps only the latest version).
//!
//! Each watched job also has a [`Recent`] slot: the last events read from the
//! store for it, already framed, so that after a wake-up the store is read once
//! for all of a job's caught-up subscribers on this node rather than once each
//! (see `stream`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use crate::domain::{EventSeq, JobId};
use crate::frame::Frame;

/// The most events a job's [`Recent`] keeps.
pub const RECENT_EVENTS: usize = 64;

/// The latest events of one job, as read from the store, contiguous by seq.
#[derive(Debug, Default)]
pub struct Recent {
    /// The wake-up version this was last brought up to date at.
    pub checked: Option<u64>,
    /// Framed events (see [`Frame`]), oldest first, without gaps.
    pub frames: VecDeque<Frame>,
}

impl Recent {
    pub fn last_seq(&self) -> Option<EventSeq> {
        self.frames.back().map(|f| f.seq)
    }

    pub fn first_seq(&self) -> Option<EventSeq> {
        self.frames.front().map(|f| f.seq)
    }

    /// Appends frames that continue the range; trims the oldest past the limit.
    pub fn extend(&mut self, frames: impl IntoIterator<Item = Frame>) {
        for f in frames {
            if self.last_seq().is_some_and(|last| f.seq != last.next()) {
                // Not contiguous (a subscriber read from further back): start over.
                self.frames.clear();
            }
            self.frames.push_back(f);
        }
        while self.frames.len() > RECENT_EVENTS {
            self.frames.pop_front();
        }
    }
}

#[derive(Debug)]
struct Signal {
    tx: watch::Sender<u64>,
    recent: tokio::sync::Mutex<Recent>,
}

impl Signal {
    /// Bumps the version: the job's subscribers look again.
    fn wake(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

#[derive(Debug)]
pub struct Hub {
    // Weak: a job's signal lives as long as some subscription holds it.
    jobs: Mutex<HashMap<JobId, Weak<Signal>>>,
    /// Bumped by every wake-up of any job: the feeds look again.
    feed: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            jobs: Mutex::default(),
            feed: watch::channel(0).0,
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Wakes on any job's wake-up (the multiplexed feed). Subscribe before
    /// reading the store, as for a job.
    pub fn subscribe_feed(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }

    fn bump_feed(&self) {
        self.feed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Registers interest in `id`. Subscribe before reading the store, so that an
    /// event appended in between still wakes the subscriber.
    pub fn subscribe(self: &Arc<Self>, id: JobId) -> Subscription {
        let mut jobs = self.jobs.lock().expect("hub poisoned");
        let signal = match jobs.get(&id).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Arc::new(Signal {
                    tx: watch::channel(0).0,
                    recent: tokio::sync::Mutex::new(Recent::default()),
                });
                jobs.insert(id, Arc::downgrade(&s));
                s
            }
        };
        let rx = signal.tx.subscribe();
        Subscription {
            id,
            signal: Some(signal),
            rx,
            hub: self.clone(),
        }
    }

    /// Wakes every local subscriber of `id`, and the feeds.
    pub fn notify(&self, id: JobId) {
        self.bump_feed();
        if let Some(s) = self.signal(id) {
            s.wake();
        }
    }

    /// The job's signal, while some subscription holds it.
    fn signal(&self, id: JobId) -> Option<Arc<Signal>> {
        self.jobs
            .lock()
            .expect("hub poisoned")
            .get(&id)
            .and_then(Weak::upgrade)
    }

    /// Wakes every local subscriber of `id`, and the feeds, for the event in
    /// `frame`, just committed. When the job's shared [`Recent`] slot was up
    /// to date and the frame continues it, the frame joins the slot and the
    /// slot stays up to date, so the job's caught-up subscribers send it
    /// without reading the store. Otherwise (the slot is being read, behind,
    /// or frames were published out of order) this is a plain wake-up and the
    /// next subscriber reads the store, as after [`Hub::notify`].
    pub fn publish(&self, id: JobId, frame: Frame) {
        self.bump_feed();
        let Some(s) = self.signal(id) else { return };
        // The slot's lock is held across the version bump, so no subscriber
        // can take the new version and find the slot without the frame.
        let Ok(mut recent) = s.recent.try_lock() else {
            s.wake();
            return;
        };
        let before = *s.tx.borrow();
        let continues = recent.checked == Some(before)
            && recent
                .last_seq()
                .is_some_and(|last| frame.seq == last.next());
        s.wake();
        if continues {
            recent.extend([frame]);
            recent.checked = Some(before.wrapping_add(1));
        }
    }

    /// Wakes every subscriber of every job (after a lost cross-node listener, say).
    pub fn notify_all(&self) {
        self.bump_feed();
        let signals: Vec<_> = self
            .jobs
            .lock()
            .expect("hub poisoned")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for s in signals {
            s.wake();
        }
    }

    /// How many jobs have at least one subscriber.
    pub fn watched_jobs(&self) -> usize {
        self.jobs
            .lock()
            .expect("hub poisoned")
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One subscriber's interest in one job; dropping it releases the interest.
#[derive(Debug)]
pub struct Subscription {
    id: JobId,
    signal: Option<Arc<Signal>>,
    rx: watch::Receiver<u64>,
    hub: Arc<Hub>,
}

impl Subscription {
    /// Waits for the next wake-up (returns at once if one arrived since the
    /// last call or the last [`Self::version`]).
    pub async fn changed(&mut self) {
        // The sender lives as long as `self.signal`, so this cannot fail.
        let _ = self.rx.changed().await;
    }

    /// The current wake-up version, marking it seen.
    pub fn version(&mut self) -> u64 {
        *self.rx.borrow_and_update()
    }

    /// The job's shared slot of recent events.
    pub fn recent(&self) -> &tokio::sync::Mutex<Recent> {
        &self.signal.as_ref().expect("live subscription").recent
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = self
            .signal
            .take()
            .is_some_and(|s| Arc::strong_count(&s) == 1);
        if last {
            if let Ok(mut jobs) = self.hub.jobs.lock() {
                if jobs.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
                    jobs.remove(&self.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn notify_wakes_subscribers_and_bursts_collapse() {
        let hub = Hub::new();
        let id = JobId::new();
        let mut sub = hub.subscribe(id);
        hub.notify(id);
        hub.notify(id);
        tokio::time::timeout(Duration::from_secs(1), sub.changed())
            .await
            .expect("woken");
        // Both notifications were seen by the one wake-up.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sub.changed())
                .await
                .is_err()
        );
    }

    #[test]
    fn recent_stays_contiguous_and_bounded() {
        let frame = |n: i64| Frame {
            seq: EventSeq(n),
            terminal: false,
            at: crate::domain::Timestamp(0),
            bytes: bytes::Bytes::new(),
        };
        let mut r = Recent::default();
        r.extend((1..=3).map(frame));
        assert_eq!(
            (r.first_seq(), r.last_seq()),
            (Some(EventSeq(1)), Some(EventSeq(3)))
        );
        r.extend([frame(7)]);
        assert_eq!(
            (r.first_seq(), r.last_seq()),
            (Some(EventSeq(7)), Some(EventSeq(7)))
        );
        r.extend((8..=200).map(frame));
        assert_eq!(r.frames.len(), RECENT_EVENTS);
        assert_eq!(r.last_seq(), Some(EventSeq(200)));
    }

    fn frame(n: i64) -> Frame {
        Frame {
            seq: EventSeq(n),
            terminal: false,
            at: crate::domain::Timestamp(0),
            bytes: bytes::Bytes::new(),
        }
    }

    /// A published frame that continues an up-to-date slot joins it, and the
    /// slot stays up to date: caught-up subscribers need no store read. One
    /// that does not continue it (out of order) only wakes them, and the
    /// slot is then out of date, so the next subscriber reads the store.
    #[tokio::test]
    async fn publish_extends_an_up_to_date_slot_and_only_wakes_otherwise() {
        let hub = Hub::new();
        let id = JobId::new();
        let mut sub = hub.subscribe(id);
        {
            // As a subscriber's read leaves it: events 1..=3, read at the
            // current version.
            let version = sub.version();
            let mut recent = sub.recent().lock().await;
            recent.extend((1..=3).map(frame));
            recent.checked = Some(version);
        }
        hub.publish(id, frame(4));
        let version = sub.version();
        {
            let recent = sub.recent().lock().await;
            assert_eq!(recent.last_seq(), Some(EventSeq(4)));
            assert_eq!(recent.checked, Some(version), "still up to date");
        }
        hub.publish(id, frame(6));
        let version = sub.version();
        let recent = sub.recent().lock().await;
        assert_eq!(recent.last_seq(), Some(EventSeq(4)), "a gap is not bridged");
        assert!(
            recent.checked < Some(version),
            "the next reader reads the store"
        );
    }

    #[tokio::test]
    async fn dropping_the_last_subscription_forgets_the_job() {
        let hub = Hub::new();
        let id = JobId::new();
        let a = hub.subscribe(id);
        let b = hub.subscribe(id);
        assert_eq!(hub.watched_jobs(), 1);
        drop(a);
        assert_eq!(hub.watched_jobs(), 1);
        drop(b);
        assert_eq!(hub.watched_jobs(), 0);
        assert!(hub.jobs.lock().unwrap().is_empty());
        hub.notify(id); // nobody listening: a no-op
    }
}
