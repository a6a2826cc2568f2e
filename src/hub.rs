//! Per-job wake-ups. The hub carries no payload: it only says "look again", and
//! the store decides what is delivered. A burst of wake-ups while a subscriber
//! is busy collapses into one (a `watch` channel keeps only the latest version).
//!
//! Each watched job also has a [`Recent`] slot: the last events read from the
//! store for it, already framed, so that after a wake-up the store is read once
//! for all of a job's caught-up subscribers on this node rather than once each
//! (see `stream`). A job this node creates has its slot opened before it is
//! stored ([`Hub::prime`]), so the stream its client opens right after the
//! submit usually needs no read at all.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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
    fn new(recent: Recent) -> Arc<Signal> {
        Arc::new(Signal {
            tx: watch::channel(0).0,
            recent: tokio::sync::Mutex::new(recent),
        })
    }

    /// Bumps the version: the job's subscribers look again.
    fn wake(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

#[derive(Debug)]
pub struct Hub {
    // Weak: a job's signal lives as long as some subscription holds it, or
    // for a moment after [`Hub::prime`].
    jobs: Mutex<HashMap<JobId, Weak<Signal>>>,
    /// Slots opened by [`Hub::prime`] before anyone watches, oldest first.
    primed: Mutex<VecDeque<(Instant, JobId, Arc<Signal>)>>,
    /// Bumped by every wake-up of any job: the feeds look again.
    feed: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            jobs: Mutex::default(),
            primed: Mutex::default(),
            feed: watch::channel(0).0,
        }
    }
}

/// How long a primed slot is kept for a stream to come.
const PRIMED_FOR: Duration = Duration::from_secs(2);

/// The most primed slots kept at once.
const PRIMED_MAX: usize = 1024;

/// The most event bytes a primed slot holds while nobody watches it; past
/// that it lets them go, and a stream that comes reads the store.
const PRIMED_BYTES: usize = 16 * 1024;

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Wakes on any job's wake-up (the multiplexed feed). Subscribe before
    /// reading the store, as for a job.
    pub fn subscribe_feed(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }

    /// Wakes the feeds only.
    pub fn notify_feeds(&self) {
        self.feed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Registers interest in `id`. Subscribe before reading the store, so that an
    /// event appended in between still wakes the subscriber.
    pub fn subscribe(self: &Arc<Self>, id: JobId) -> Subscription {
        let mut jobs = self.jobs.lock().expect("hub poisoned");
        let signal = match jobs.get(&id).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Signal::new(Recent::default());
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

    /// Opens the slot of job `id` before the job is stored (so before any
    /// of its events can be published), empty and up to date, and keeps it
    /// for a moment though nobody watches yet. The events this node
    /// publishes for the job from its first on join it (see
    /// [`Hub::publish`]), so a client that opens the job's stream right
    /// after submitting, the common case, is sent the history without a
    /// store read. An event published out of turn, or a plain wake-up (a
    /// change on another node), makes the slot stale as for any job, and the
    /// next subscriber reads the store.
    pub fn prime(&self, id: JobId) {
        let signal = Signal::new(Recent {
            checked: Some(0),
            frames: VecDeque::new(),
        });
        {
            let mut jobs = self.jobs.lock().expect("hub poisoned");
            if jobs.get(&id).is_some_and(|w| w.strong_count() > 0) {
                return;
            }
            jobs.insert(id, Arc::downgrade(&signal));
        }
        let now = Instant::now();
        let mut primed = self.primed.lock().expect("hub poisoned");
        while primed.front().is_some_and(|(at, _, _)| {
            now.duration_since(*at) > PRIMED_FOR || primed.len() >= PRIMED_MAX
        }) {
            let (_, old, s) = primed.pop_front().expect("a front");
            self.release(old, s);
        }
        primed.push_back((now, id, signal));
    }

    /// Lets go of a hold on job `id`'s signal; the job is forgotten when
    /// that was the last one.
    fn release(&self, id: JobId, signal: Arc<Signal>) {
        if Arc::strong_count(&signal) > 1 {
            return;
        }
        drop(signal);
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.get(&id).is_some_and(|w| w.strong_count() == 0) {
                jobs.remove(&id);
            }
        }
    }

    /// Wakes every local subscriber of `id`, and the feeds.
    pub fn notify(&self, id: JobId) {
        self.notify_feeds();
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
        self.notify_feeds();
        self.deliver(id, frame);
    }

    /// A new job's first event, just committed, for its primed slot (see
    /// [`Hub::prime`]): its streams on this node get it as any event; the
    /// feeds are not woken for it (they see it with their next wake-up).
    pub fn publish_created(&self, id: JobId, frame: Frame) {
        self.deliver(id, frame);
    }

    /// [`Hub::publish`] without the feeds.
    fn deliver(&self, id: JobId, frame: Frame) {
        let Some(s) = self.signal(id) else { return };
        // The slot's lock is held across the version bump, so no subscriber
        // can take the new version and find the slot without the frame.
        let Ok(mut recent) = s.recent.try_lock() else {
            s.wake();
            return;
        };
        let before = *s.tx.borrow();
        // A primed slot (empty) takes the job's first event.
        let continues = recent.checked == Some(before)
            && recent
                .last_seq()
                .map_or(frame.seq == EventSeq(1), |last| frame.seq == last.next());
        s.wake();
        if continues && s.tx.receiver_count() == 0 {
            // A primed slot nobody watches yet keeps a few KiB at most.
            let held: usize = recent.frames.iter().map(|f| f.bytes.len()).sum();
            if held + frame.bytes.len() > PRIMED_BYTES {
                recent.frames.clear();
                recent.checked = None;
                return;
            }
        }
        if continues {
            recent.extend([frame]);
            recent.checked = Some(before.wrapping_add(1));
        }
    }

    /// Wakes every subscriber of every job (after a lost cross-node listener, say).
    pub fn notify_all(&self) {
        self.notify_feeds();
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
            .filter_map(Weak::upgrade)
            .filter(|s| s.tx.receiver_count() > 0)
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

    /// Whether a wake-up arrived since the last [`Self::version`] (without
    /// marking it seen).
    pub fn woken(&self) -> bool {
        self.rx.has_changed().unwrap_or(true)
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
        if let Some(s) = self.signal.take() {
            self.hub.release(self.id, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A primed slot, watched by nobody yet, takes the job's events from its
    /// first, so a stream opened after them finds it up to date (no read).
    #[tokio::test]
    async fn a_primed_slot_collects_the_first_events_for_a_later_stream() {
        let hub = Hub::new();
        let id = JobId::new();
        hub.prime(id);
        assert_eq!(hub.watched_jobs(), 0, "primed is not watched");
        hub.publish_created(id, frame(1));
        hub.publish(id, frame(2));
        let mut sub = hub.subscribe(id);
        assert_eq!(hub.watched_jobs(), 1);
        let version = sub.version();
        let recent = sub.recent().lock().await;
        assert_eq!(recent.checked, Some(version), "up to date: no store read");
        let seqs: Vec<i64> = recent.frames.iter().map(|f| f.seq.0).collect();
        assert_eq!(seqs, [1, 2]);
    }

    /// An event published before the first (a claim that beat the submit's
    /// own publish) leaves the slot out of date: the stream reads the store.
    #[tokio::test]
    async fn a_primed_slot_that_missed_the_first_event_is_read_again() {
        let hub = Hub::new();
        let id = JobId::new();
        hub.prime(id);
        hub.publish(id, frame(2));
        hub.publish_created(id, frame(1));
        let mut sub = hub.subscribe(id);
        let version = sub.version();
        let recent = sub.recent().lock().await;
        assert!(
            recent.checked < Some(version),
            "out of date: read the store"
        );
        // A plain wake-up (another node's change) does the same.
        let other = JobId::new();
        hub.prime(other);
        hub.notify(other);
        let mut sub = hub.subscribe(other);
        let version = sub.version();
        assert!(sub.recent().lock().await.checked < Some(version));
    }

    /// Primed slots nobody came for are let go: the map does not grow.
    #[test]
    fn primed_slots_are_bounded() {
        let hub = Hub::new();
        for _ in 0..PRIMED_MAX + 10 {
            hub.prime(JobId::new());
        }
        assert_eq!(hub.primed.lock().unwrap().len(), PRIMED_MAX);
        assert_eq!(hub.jobs.lock().unwrap().len(), PRIMED_MAX);
    }

    /// A primed slot nobody watches holds a few KiB at most: a big event
    /// empties it, and the stream that comes reads the store.
    #[tokio::test]
    async fn an_unwatched_primed_slot_lets_big_events_go() {
        let hub = Hub::new();
        let id = JobId::new();
        hub.prime(id);
        hub.publish_created(id, frame(1));
        let mut big = frame(2);
        big.bytes = bytes::Bytes::from(vec![b'x'; PRIMED_BYTES + 1]);
        hub.publish(id, big);
        let mut sub = hub.subscribe(id);
        let version = sub.version();
        let recent = sub.recent().lock().await;
        assert!(recent.frames.is_empty());
        assert!(
            recent.checked < Some(version),
            "out of date: read the store"
        );
    }
}
