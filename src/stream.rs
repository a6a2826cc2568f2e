//! A job's event stream: the bytes of `GET /v1/jobs/{id}/events`.
//!
//! The store is the source of truth and the hub only says "look again":
//! the stream subscribes to the hub first, then replays `seq > last` from the
//! store, then reads again after every wake-up. So nothing appended between
//! subscribing and reading is missed, a late subscriber gets the whole history,
//! and a slow reader falls behind in the store, not in memory: what a stream
//! holds is one chunk of events at most ([`CHUNK_BYTES`]), and only while it
//! writes them.
//!
//! Backpressure: hyper asks the stream for its next chunk only while its
//! write buffer has room (a few KiB, see `http::server`). A client that stops
//! reading fills the socket, then that buffer, and then the stream is not
//! polled: it reads nothing more from the store or the hub and holds no
//! events of its own, only its cursor. When the client reads again, the
//! stream goes on from the cursor; nothing is lost, and nothing piles up.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{EventSeq, JobId, Timestamp};
use crate::frame::Frame;
use crate::hub::{Hub, Subscription};
use crate::limits::StreamSlot;
use crate::store::Store;

/// The most events one store read fetches.
const PAGE: i64 = 256;

/// The most bytes of events one chunk carries (one event bigger than this
/// goes out alone). It bounds what a stream holds: events are read from the
/// store or the hub only up to it, and only when the previous chunk has been
/// handed to hyper.
pub(crate) const CHUNK_BYTES: usize = 4 * 1024;

/// How many events the next store read asks for: about a chunk's worth, from
/// the size of the events read so far, so a stream catching up on a long
/// history reads what it will send and not a page it would drop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSize(i64);

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize(PAGE)
    }
}

impl ReadSize {
    pub(crate) fn limit(self) -> i64 {
        self.0
    }

    /// Learns from a read of `events` events of `bytes` bytes in all.
    pub(crate) fn learn(&mut self, events: usize, bytes: usize) {
        if let Some(mean) = bytes.checked_div(events) {
            self.0 = ((CHUNK_BYTES / mean.max(1)) as i64).clamp(1, PAGE);
        }
    }
}

/// Whether an event of `len` bytes still fits in a chunk that holds `held`
/// bytes of `count` events (the first always fits).
pub(crate) fn fits(count: usize, held: usize, len: usize) -> bool {
    count == 0 || held + len <= CHUNK_BYTES
}

#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Sent first as `retry:`: how long a browser waits before reconnecting.
    pub retry_ms: u64,
    /// A comment line after this long without anything sent.
    pub heartbeat: Duration,
    /// End the stream after this long (the client resumes with Last-Event-ID).
    pub max_duration: Option<Duration>,
}

impl From<&crate::config::Config> for StreamSettings {
    fn from(c: &crate::config::Config) -> Self {
        StreamSettings {
            retry_ms: c.retry_ms,
            heartbeat: Duration::from_secs(c.heartbeat_secs.max(1)),
            max_duration: c.max_stream_secs.map(Duration::from_secs),
        }
    }
}

/// The number of open streams.
#[derive(Debug, Default)]
pub struct StreamCounter(AtomicUsize);

impl StreamCounter {
    pub fn open(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    pub fn guard(self: &Arc<Self>) -> StreamGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }
}

/// Counts one open stream; dropped with the stream, however it ends (a client
/// that vanishes makes hyper drop the body, and this with it).
#[derive(Debug)]
pub struct StreamGuard(Arc<StreamCounter>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records each frame's append → hand-over lag. The handle is looked up once:
/// this runs for every frame of every stream.
pub(crate) fn record_lag(at: Timestamp) {
    static LAG: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    let lag = (Timestamp::now().0 - at.0).max(0) as f64 / 1e6;
    LAG.get_or_init(|| {
        // Bind to our recorder, never to the no-op one.
        crate::telemetry::prometheus();
        metrics::histogram!("herald_event_delivery_lag_seconds")
    })
    .record(lag);
}

struct State {
    store: Arc<dyn Store>,
    sub: Subscription,
    id: JobId,
    last: EventSeq,
    pending: VecDeque<Frame>,
    /// The bytes of `pending`.
    pending_bytes: usize,
    read_size: ReadSize,
    /// Sent first, as `retry:`.
    retry_ms: u64,
    /// The heartbeat and the max duration.
    heartbeat: Heartbeat,
    stop: CancellationToken,
    started: bool,
    done: bool,
    /// The last look at the job's slot queued everything in it, and the slot
    /// was up to date at the wake-up version then seen: until the next
    /// wake-up there is nothing new to look for.
    caught_up: bool,
    /// Released with the stream: the open-stream count and the tenant's slot.
    _guards: (StreamGuard, StreamSlot),
}

/// The stream of SSE chunks for job `id`, after event `after`. It ends after
/// the terminal event, when `stop` fires (shutdown), or at the max duration.
#[allow(clippy::too_many_arguments)]
pub fn job_events(
    store: Arc<dyn Store>,
    hub: &Arc<Hub>,
    id: JobId,
    after: EventSeq,
    settings: StreamSettings,
    stop: CancellationToken,
    guards: (StreamGuard, StreamSlot),
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    // Subscribe before the first read (see the module doc).
    let sub = hub.subscribe(id);
    let state = State {
        store,
        sub,
        id,
        last: after,
        pending: VecDeque::new(),
        pending_bytes: 0,
        read_size: ReadSize::default(),
        retry_ms: settings.retry_ms,
        heartbeat: Heartbeat::new(&settings),
        stop,
        started: false,
        done: false,
        caught_up: false,
        _guards: guards,
    };
    futures::stream::unfold(state, |mut st| async move {
        let chunk = next_chunk(&mut st).await?;
        st.heartbeat.sent();
        Some((Ok(chunk), st))
    })
}

async fn next_chunk(st: &mut State) -> Option<Bytes> {
    if st.done {
        return None;
    }
    if !st.started {
        st.started = true;
        // The history so far goes out with the `retry:` line, in one write.
        let retry = format!("retry: {}\n\n", st.retry_ms);
        if matches!(fill(st).await, Ok(true)) {
            let mut first = BytesMut::with_capacity(retry.len() + st.pending_bytes);
            first.put_slice(retry.as_bytes());
            first.put_slice(&take_pending(st));
            return Some(first.freeze());
        }
        return Some(Bytes::from(retry));
    }
    loop {
        if st.stop.is_cancelled() || st.heartbeat.expired() {
            return None;
        }
        if !st.pending.is_empty() {
            return Some(take_pending(st));
        }
        // The chunk just sent held all there was: wait for the next wake-up
        // rather than look at the slot again for nothing (its lock and the
        // look cost as much as the send, once per event per stream).
        let look = !st.caught_up || st.sub.woken();
        match if look { fill(st).await } else { Ok(false) } {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                // End the stream; the client resumes with Last-Event-ID.
                crate::telemetry::store_error();
                tracing::warn!(job_id = %st.id, error = %e, "event stream ends: store read failed");
                return None;
            }
        }
        // An idle stream keeps no queue: its allocation outlives the
        // frames, and streams mostly wait.
        st.pending = VecDeque::new();
        match idle(st.sub.changed(), &mut st.heartbeat).await {
            Idle::Woken => {
                // `changed` marked the wake-up seen.
                st.caught_up = false;
                continue;
            }
            Idle::Heartbeat => return Some(Bytes::from_static(HEARTBEAT)),
            Idle::End => return None,
        }
    }
}

/// The comment line an idle stream sends.
pub(crate) const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// How an idle stream's wait ended.
pub(crate) enum Idle {
    /// A wake-up: read the store again.
    Woken,
    /// Nothing for a heartbeat interval: send a comment line.
    Heartbeat,
    /// The max duration: end the stream.
    End,
}

/// When an idle stream sends its comment line, [`StreamSettings::heartbeat`]
/// after the last chunk it sent, and when it ends at its max duration. One
/// timer per stream for both, set again only when it fires (a stream that
/// sends often finds it not yet due and sets it for later), not at every
/// chunk: setting a timer takes the timer wheel's lock, and a job's events
/// reach every subscriber. Streams mostly wait, so what they keep for it
/// counts: one boxed timer, not a second one for the deadline inside every
/// wait.
pub(crate) struct Heartbeat {
    every: Duration,
    last_sent: Instant,
    deadline: Option<Instant>,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The waker the timer holds: it was polled with it since it was last
    /// set, and has not fired.
    armed: Option<std::task::Waker>,
}

impl Heartbeat {
    pub(crate) fn new(settings: &StreamSettings) -> Heartbeat {
        let now = Instant::now();
        let deadline = settings.max_duration.map(|d| now + d);
        let first = next_tick(now + settings.heartbeat, deadline);
        Heartbeat {
            every: settings.heartbeat,
            last_sent: now,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(first)),
            armed: None,
        }
    }

    /// The stream sent a chunk.
    pub(crate) fn sent(&mut self) {
        self.last_sent = Instant::now();
    }

    /// Whether the max duration is over.
    pub(crate) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits until nothing has been sent for a heartbeat interval
    /// ([`Idle::Heartbeat`]) or the max duration is over ([`Idle::End`]).
    async fn due(&mut self) -> Idle {
        loop {
            std::future::poll_fn(|cx| self.poll_timer(cx)).await;
            let now = Instant::now();
            if self.expired() {
                return Idle::End;
            }
            let due_at = self.last_sent + self.every;
            if now >= due_at {
                self.last_sent = now;
                let next = next_tick(now + self.every, self.deadline);
                self.set(next);
                return Idle::Heartbeat;
            }
            self.set(next_tick(due_at, self.deadline));
        }
    }

    fn set(&mut self, at: Instant) {
        self.timer.as_mut().reset(at);
        self.armed = None;
    }

    /// Polls the timer, unless it already holds this task's waker and has
    /// not fired: a stream waits on it once per event it sends, and polling
    /// it again would only hand it the same waker again.
    fn poll_timer(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        if self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !self.timer.is_elapsed()
        {
            return std::task::Poll::Pending;
        }
        let polled = self.timer.as_mut().poll(cx);
        self.armed = polled.is_pending().then(|| cx.waker().clone());
        polled
    }
}

/// The earlier of a heartbeat at `at` and the deadline.
fn next_tick(at: Instant, deadline: Option<Instant>) -> Instant {
    deadline.map_or(at, |d| at.min(d))
}

/// Waits, with nothing to send, for a wake-up, the heartbeat or the
/// deadline (a job's stream and the feed wait alike). The server's stop is
/// not waited for here: it wakes every stream and feed through the hub
/// (see `app`), and they check it before they look again.
pub(crate) async fn idle(wake: impl std::future::Future, heartbeat: &mut Heartbeat) -> Idle {
    tokio::select! {
        _ = wake => Idle::Woken,
        tick = heartbeat.due() => tick,
    }
}

/// The pending frames as one chunk (up to and including a terminal event).
fn take_pending(st: &mut State) -> Bytes {
    let bytes = std::mem::take(&mut st.pending_bytes);
    if st.pending.len() == 1 {
        let f = st.pending.pop_front().expect("one frame");
        st.last = f.seq;
        st.done = f.terminal;
        record_lag(f.at);
        return f.bytes;
    }
    // Sized once: a stalled stream's chunk waits in hyper's buffer as allocated.
    let mut buf = BytesMut::with_capacity(bytes);
    while let Some(f) = st.pending.pop_front() {
        buf.put_slice(&f.bytes);
        record_lag(f.at);
        st.last = f.seq;
        if f.terminal {
            st.done = true;
            st.pending.clear();
            break;
        }
    }
    buf.freeze()
}

/// Queues the frame unless the chunk is full; whether it did.
fn queue(pending: &mut VecDeque<Frame>, bytes: &mut usize, frame: Frame) -> bool {
    if !fits(pending.len(), *bytes, frame.bytes.len()) {
        return false;
    }
    *bytes += frame.bytes.len();
    pending.push_back(frame);
    true
}

/// Queues the events after `st.last`, up to a chunk's worth; `Ok(false)`
/// when there are none yet. What does not fit is read again next time, from
/// the cursor.
///
/// A caught-up subscriber takes them from the job's shared [`Recent`] slot,
/// which the first subscriber to wake brings up to date with one store read
/// (the others wait on the slot's lock, then find it fresh). The slot records
/// the wake-up version it was read at, taken *before* the read, so a wake-up
/// that lands during the read makes the next subscriber read again. One that
/// is behind the slot (replaying history, or slower than the slot is long)
/// reads the store itself.
///
/// [`Recent`]: crate::hub::Recent
async fn fill(st: &mut State) -> Result<bool, crate::store::StoreError> {
    st.caught_up = false;
    let version = st.sub.version();
    let mut recent = st.sub.recent().lock().await;
    let behind = |r: &crate::hub::Recent, last: EventSeq| {
        r.first_seq().is_some_and(|first| first.0 > last.0 + 1)
    };
    if !behind(&recent, st.last) && recent.checked.is_none_or(|c| c < version) {
        let from = recent.last_seq().unwrap_or(st.last);
        let events = st.store.events_after(st.id, from, PAGE).await?;
        let complete = (events.len() as i64) < PAGE;
        recent.extend(events.iter().map(Frame::of));
        if complete {
            recent.checked = Some(version);
        }
    }
    if !behind(&recent, st.last) {
        let before = st.pending.len();
        // The slot is contiguous by seq: the first frame after `last` is at
        // its distance from the slot's first.
        let skip = recent
            .first_seq()
            .map_or(0, |first| (st.last.0 + 1 - first.0).max(0) as usize);
        let mut all = true;
        for f in recent.frames.iter().skip(skip) {
            if !queue(&mut st.pending, &mut st.pending_bytes, f.clone()) {
                all = false;
                break;
            }
        }
        st.caught_up = all && recent.checked == Some(version);
        return Ok(st.pending.len() > before);
    }
    drop(recent);
    let events = st
        .store
        .events_after(st.id, st.last, st.read_size.limit())
        .await?;
    let before = st.pending.len();
    let bytes = events.iter().map(|e| e.data.len()).sum();
    st.read_size.learn(events.len(), bytes);
    for e in &events {
        if !queue(&mut st.pending, &mut st.pending_bytes, Frame::of(e)) {
            break;
        }
    }
    Ok(st.pending.len() > before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_takes_events_up_to_its_bytes_and_always_one() {
        assert!(fits(0, 0, CHUNK_BYTES * 4), "a big event goes out alone");
        assert!(!fits(1, 10, CHUNK_BYTES));
        assert!(fits(3, CHUNK_BYTES - 100, 100));
        assert!(!fits(3, CHUNK_BYTES - 100, 101));
    }

    /// The heartbeat comes after an interval without anything sent: a
    /// chunk sent meanwhile puts it off, without setting the timer again.
    #[tokio::test]
    async fn the_heartbeat_is_due_an_interval_after_the_last_chunk() {
        let every = Duration::from_millis(300);
        let start = Instant::now();
        let mut hb = Heartbeat::new(&settings(every, None));
        tokio::time::sleep(Duration::from_millis(200)).await;
        hb.sent();
        let sent = Instant::now();
        assert!(matches!(hb.due().await, Idle::Heartbeat));
        assert!(
            sent.elapsed() >= every,
            "not before an interval after the chunk"
        );
        assert!(start.elapsed() >= Duration::from_millis(500));
        let first = Instant::now();
        assert!(matches!(hb.due().await, Idle::Heartbeat));
        assert!(first.elapsed() >= every, "then once an interval");
    }

    fn settings(heartbeat: Duration, max: Option<Duration>) -> StreamSettings {
        StreamSettings {
            retry_ms: 1000,
            heartbeat,
            max_duration: max,
        }
    }

    /// The same timer ends the stream at its max duration, also between
    /// two heartbeats.
    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_timer_also_ends_the_stream_at_its_max_duration() {
        let start = Instant::now();
        let mut hb = Heartbeat::new(&settings(
            Duration::from_secs(15),
            Some(Duration::from_secs(40)),
        ));
        assert!(!hb.expired());
        assert!(matches!(hb.due().await, Idle::Heartbeat));
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        assert!(matches!(hb.due().await, Idle::Heartbeat));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(matches!(hb.due().await, Idle::End));
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        assert!(hb.expired());
    }

    #[test]
    fn reads_ask_for_about_a_chunk_of_events() {
        let mut size = ReadSize::default();
        assert_eq!(size.limit(), PAGE);
        size.learn(0, 0);
        assert_eq!(size.limit(), PAGE, "an empty read teaches nothing");
        size.learn(10, 10 * 128);
        assert_eq!(size.limit(), (CHUNK_BYTES / 128) as i64);
        size.learn(1, 1024 * 1024);
        assert_eq!(size.limit(), 1, "one big event a read");
        size.learn(100, 100);
        assert_eq!(size.limit(), PAGE, "tiny events: a whole page");
    }
}
