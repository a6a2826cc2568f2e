//! One stored event in SSE framing, ready to be written to any number of
//! streams: the job stream frames each event once, and the hub keeps the
//! latest frames of a watched job for all of its caught-up subscribers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::domain::{EventKind, EventSeq, NewEvent, Timestamp};
use crate::store::StoredEvent;

/// An event as the job stream sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub seq: EventSeq,
    /// A terminal event (`result`, `failed`, `cancelled`): the stream ends after it.
    pub terminal: bool,
    /// When the event was appended (for the delivery-lag metric).
    pub at: Timestamp,
    /// `id: …\nevent: …\ndata: …\n\n`.
    pub bytes: Bytes,
}

impl Frame {
    /// `id`, `event`, `data` (one line of JSON).
    pub fn of(ev: &StoredEvent) -> Frame {
        Frame::new(ev.seq, ev.kind, &ev.data, ev.at)
    }

    /// The frame of an event just committed (the jobs service publishes it).
    pub fn of_new(ev: &NewEvent) -> Frame {
        Frame::new(ev.seq, ev.kind, &ev.data, ev.at)
    }

    /// An event from its parts (one carried in another node's notice, say).
    pub fn new(seq: EventSeq, kind: EventKind, data: &str, at: Timestamp) -> Frame {
        let mut buf = BytesMut::with_capacity(data.len() + 48);
        buf.put_slice(b"id: ");
        buf.put_slice(seq.0.to_string().as_bytes());
        buf.put_slice(b"\nevent: ");
        buf.put_slice(kind.as_str().as_bytes());
        buf.put_slice(b"\ndata: ");
        buf.put_slice(data.as_bytes());
        buf.put_slice(b"\n\n");
        Frame {
            seq,
            terminal: kind.is_terminal(),
            at,
            bytes: buf.freeze(),
        }
    }
}
