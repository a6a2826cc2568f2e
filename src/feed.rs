//! The multiplexed feed: the bytes of `GET /v1/events`, one stream with the
//! events of many jobs, so a page that watches twenty jobs holds one
//! connection instead of twenty (a browser allows six per host over HTTP/1.1).
//!
//! The same rule as a job's stream: subscribe to the hub first (the feed
//! wakes on any job's wake-up), then read the store after the cursor, then
//! read again after every wake-up. The cursor is the store's
//! ([`FeedCursor`]): the store guarantees that nothing can appear behind a
//! cursor it handed out, on PostgreSQL too (see `PgStore::feed_after`).
//! Unlike a job's stream the feed does not end on its own: only at shutdown,
//! at `HERALD_MAX_STREAM_SECS`, or when the client goes.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::Timestamp;
use crate::hub::Hub;
use crate::limits::StreamSlot;
use crate::store::{FeedCursor, FeedEvent, FeedFilter, FeedRead, Store};
use crate::stream::{
    fits, idle, record_lag, Heartbeat, Idle, ReadSize, StreamGuard, StreamSettings, HEARTBEAT,
};

/// One feed event in SSE framing: `id` is the feed cursor, `event` the job
/// event's name, `data` the job event's JSON with `job_id` and `seq` added.
pub fn frame(ev: &FeedEvent) -> Bytes {
    let data = ev.event.data.as_str();
    let mut buf = BytesMut::with_capacity(data.len() + 128);
    buf.put_slice(b"id: ");
    buf.put_slice(ev.cursor.to_string().as_bytes());
    buf.put_slice(b"\nevent: ");
    buf.put_slice(ev.event.kind.as_str().as_bytes());
    buf.put_slice(b"\ndata: {\"job_id\":\"");
    buf.put_slice(ev.job_id.to_string().as_bytes());
    buf.put_slice(b"\",\"seq\":");
    buf.put_slice(ev.event.seq.0.to_string().as_bytes());
    // The stored data is a JSON object: splice its members in after ours.
    let members = data.strip_prefix('{').unwrap_or("}").trim_start();
    if !members.starts_with('}') {
        buf.put_u8(b',');
    }
    buf.put_slice(members.as_bytes());
    buf.put_slice(b"\n\n");
    buf.freeze()
}

struct State {
    store: Arc<dyn Store>,
    wake: watch::Receiver<u64>,
    filter: FeedFilter,
    cursor: FeedCursor,
    /// The next chunk's frames (see `stream::CHUNK_BYTES`), and their bytes.
    pending: VecDeque<(Timestamp, Bytes)>,
    pending_bytes: usize,
    /// The cursor of the last frame in `pending`.
    pending_cursor: FeedCursor,
    read_size: ReadSize,
    /// Sent first, as `retry:`.
    retry_ms: u64,
    /// The heartbeat and the max duration.
    heartbeat: Heartbeat,
    stop: CancellationToken,
    started: bool,
    /// The last read found everything there was (it was not full): read
    /// again only after a wake-up. Before, every read that found events was
    /// followed by one more that found none, and on PostgreSQL a feed read
    /// has a fixed cost (the horizon, a plan to start) that doubled with it.
    caught_up: bool,
    /// The last read that moved kept every event it examined: the next one
    /// examines no more than it may keep (see `FeedStore::feed_after_window`).
    narrow: bool,
    /// Opened "from now": the first frame names that moment as a cursor.
    announce: bool,
    /// Released with the stream: the open-feed count and the tenant's slot.
    _guards: (StreamGuard, StreamSlot),
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After the client's cursor.
    After(FeedCursor),
    /// "From now" (no cursor given): after the feed's current end. The first
    /// frame after `retry:` is that cursor as an `id:` without data: an
    /// EventSource keeps it without dispatching anything, so a connection
    /// that drops before the first event resumes from the moment it opened,
    /// losing nothing.
    Now(FeedCursor),
}

/// The feed's SSE chunks from `start`, until `stop` fires or the max duration.
pub fn feed_events(
    store: Arc<dyn Store>,
    hub: &Hub,
    filter: FeedFilter,
    start: Start,
    settings: StreamSettings,
    stop: CancellationToken,
    guards: (StreamGuard, StreamSlot),
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    // Subscribe before the first read (see the module doc).
    let wake = hub.subscribe_feed();
    let (cursor, announce) = match start {
        Start::After(c) => (c, false),
        Start::Now(c) => (c, true),
    };
    let state = State {
        store,
        wake,
        filter,
        cursor,
        pending: VecDeque::new(),
        pending_bytes: 0,
        pending_cursor: cursor,
        read_size: ReadSize::default(),
        retry_ms: settings.retry_ms,
        heartbeat: Heartbeat::new(&settings),
        stop,
        started: false,
        caught_up: false,
        narrow: false,
        announce,
        _guards: guards,
    };
    futures::stream::unfold(state, |mut st| async move {
        let chunk = next_chunk(&mut st).await?;
        st.heartbeat.sent();
        Some((Ok(chunk), st))
    })
}

async fn next_chunk(st: &mut State) -> Option<Bytes> {
    if !st.started {
        st.started = true;
        let retry = st.retry_ms;
        return Some(Bytes::from(if st.announce {
            format!("retry: {retry}\n\nid: {}\n\n", st.cursor)
        } else {
            format!("retry: {retry}\n\n")
        }));
    }
    loop {
        if st.stop.is_cancelled() || st.heartbeat.expired() {
            return None;
        }
        if !st.pending.is_empty() {
            let mut buf = BytesMut::with_capacity(std::mem::take(&mut st.pending_bytes));
            for (at, bytes) in st.pending.drain(..) {
                record_lag(at);
                buf.put_slice(&bytes);
            }
            return Some(buf.freeze());
        }
        if st.caught_up {
            match idle(st.wake.changed(), &mut st.heartbeat).await {
                Idle::Woken => st.caught_up = false,
                Idle::Heartbeat => return Some(Bytes::from_static(HEARTBEAT)),
                Idle::End => return None,
            }
        }
        // Marked seen before the read: a wake-up during the read (or after
        // it) reads again.
        st.wake.borrow_and_update();
        let limit = st.read_size.limit();
        let window = if st.narrow {
            limit
        } else {
            FeedRead::window(limit)
        };
        match st
            .store
            .feed_after_window(&st.filter, st.cursor, limit, window)
            .await
        {
            Ok(read) => {
                if read.next != st.cursor {
                    st.narrow = read.events.last().map(|e| e.cursor) == Some(read.next);
                }
                // Sized by the frames, not the events' data: a feed frame
                // adds its cursor, job id and seq (about 90 bytes, as much
                // as a small event's data), and a read sized by the data
                // filled the chunk halfway through and read the rest again.
                let frames: Vec<Bytes> = read.events.iter().map(frame).collect();
                st.read_size
                    .learn(frames.len(), frames.iter().map(Bytes::len).sum());
                // Past the events the filter left out too: a feed of a quiet
                // job examines each other event once, not at every wake-up.
                st.cursor = read.next;
                for (e, f) in read.events.iter().zip(frames) {
                    if !fits(st.pending.len(), st.pending_bytes, f.len()) {
                        // The chunk is full: the rest is read again, from
                        // the last event it carries.
                        st.cursor = st.pending_cursor;
                        break;
                    }
                    st.pending_bytes += f.len();
                    st.pending_cursor = e.cursor;
                    st.pending.push_back((e.event.at, f));
                }
                // A full read sends what it found and reads on at once; any
                // other waits for a wake-up once its events are sent (a chunk
                // that was full reads the rest again at once).
                st.caught_up = !read.full && st.cursor == read.next;
            }
            Err(e) => {
                // End the stream; the client resumes from its last cursor.
                crate::telemetry::store_error();
                tracing::warn!(error = %e, "feed ends: store read failed");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, EventSeq, JobId};
    use crate::store::StoredEvent;

    fn event(data: &str) -> FeedEvent {
        FeedEvent {
            cursor: FeedCursor { tx: 7, id: 42 },
            job_id: JobId(uuid::Uuid::nil()),
            event: StoredEvent {
                seq: EventSeq(3),
                kind: EventKind::Progress,
                data: data.to_owned(),
                at: Timestamp(0),
            },
        }
    }

    #[test]
    fn a_feed_frame_adds_job_id_and_seq_to_the_data() {
        let f = frame(&event(r#"{"at":"x","percent":50.0}"#));
        let text = std::str::from_utf8(&f).unwrap();
        assert_eq!(
            text,
            "id: 7-42\nevent: progress\ndata: {\"job_id\":\"00000000-0000-0000-0000-000000000000\",\"seq\":3,\"at\":\"x\",\"percent\":50.0}\n\n"
        );
        let data: serde_json::Value =
            serde_json::from_str(text.lines().nth(2).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["seq"], 3);
        let empty = frame(&event("{}"));
        assert!(std::str::from_utf8(&empty)
            .unwrap()
            .contains("\"seq\":3}\n\n"));
    }
}
