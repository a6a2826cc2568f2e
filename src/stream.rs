//! A job's event stream: the bytes of `GET /v1/jobs/{id}/events`.
//!
//! The store is the source of truth and the hub only says "look again":
//! the stream subscribes to the hub first, then replays `seq > last` from the
//! store, then reads again after every wake-up. So nothing appended between
//! subscribing and reading is missed, a late subscriber gets the whole history,
//! and a slow reader falls behind in the store, not in memory: what a stream
//! holds is one page of events at most, and only while it writes them.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{EventSeq, JobId};
use crate::hub::{Hub, Subscription};
use crate::store::{Store, StoredEvent};

/// How many events one store read fetches.
const PAGE: i64 = 256;

#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Sent first as `retry:`: how long a browser waits before reconnecting.
    pub retry_ms: u64,
    /// A comment line after this long without anything sent.
    pub heartbeat: Duration,
    /// End the stream after this long (the client resumes with Last-Event-ID).
    pub max_duration: Option<Duration>,
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

/// Appends one event in SSE framing: `id`, `event`, `data` (one line of JSON).
pub fn write_event(buf: &mut BytesMut, ev: &StoredEvent) {
    buf.reserve(ev.data.len() + 40);
    buf.put_slice(b"id: ");
    buf.put_slice(ev.seq.0.to_string().as_bytes());
    buf.put_slice(b"\nevent: ");
    buf.put_slice(ev.kind.as_str().as_bytes());
    buf.put_slice(b"\ndata: ");
    buf.put_slice(ev.data.as_bytes());
    buf.put_slice(b"\n\n");
}

struct State {
    store: Arc<dyn Store>,
    sub: Subscription,
    id: JobId,
    last: EventSeq,
    pending: VecDeque<StoredEvent>,
    settings: StreamSettings,
    deadline: Option<Instant>,
    stop: CancellationToken,
    started: bool,
    done: bool,
    _guard: StreamGuard,
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
    guard: StreamGuard,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    // Subscribe before the first read (see the module doc).
    let sub = hub.subscribe(id);
    let state = State {
        store,
        sub,
        id,
        last: after,
        pending: VecDeque::new(),
        deadline: settings.max_duration.map(|d| Instant::now() + d),
        settings,
        stop,
        started: false,
        done: false,
        _guard: guard,
    };
    futures::stream::unfold(state, |mut st| async move {
        let chunk = next_chunk(&mut st).await?;
        Some((Ok(chunk), st))
    })
}

async fn next_chunk(st: &mut State) -> Option<Bytes> {
    if st.done {
        return None;
    }
    if !st.started {
        st.started = true;
        return Some(Bytes::from(format!("retry: {}\n\n", st.settings.retry_ms)));
    }
    loop {
        if st.stop.is_cancelled() || st.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        if !st.pending.is_empty() {
            let mut buf = BytesMut::new();
            while let Some(ev) = st.pending.pop_front() {
                write_event(&mut buf, &ev);
                st.last = ev.seq;
                if ev.kind.is_terminal() {
                    st.done = true;
                    break;
                }
            }
            return Some(buf.freeze());
        }
        match st.store.events_after(st.id, st.last, PAGE).await {
            Ok(events) if !events.is_empty() => {
                st.pending.extend(events);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                // End the stream; the client resumes with Last-Event-ID.
                tracing::warn!(job_id = %st.id, error = %e, "event stream ends: store read failed");
                return None;
            }
        }
        let deadline = async {
            match st.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = st.sub.changed() => continue,
            _ = tokio::time::sleep(st.settings.heartbeat) => {
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
            _ = st.stop.cancelled() => return None,
            _ = deadline => return None,
        }
    }
}
