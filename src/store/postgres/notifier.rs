//! The notifier: `herald_event_batch` notifications for committed events,
//! and `herald_queue` ones for newly queued jobs, sent outside the events'
//! transactions (`mod.rs` says why). Each carries the sending process's
//! origin mark, so that its own listener skips what it already woke
//! locally. The events committed while the notifier gathered go out packed,
//! many to a notification ([`EventBatch`]), each with its data when it fits:
//! other nodes' caught-up streams of the job send it without reading the
//! store (see `Hub::publish`); anything else reads as before.
//!
//! One notification per event (the earlier `herald_events` form) cost
//! PostgreSQL a queue entry, and every listening node a message to read and
//! parse, for every event: in the harness (one node, 20,000 jobs) 24,000
//! notifications that the node's own listener then skipped.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPool;

use super::{EVENT_BATCH_CHANNEL, QUEUE_CHANNEL};
use crate::domain::{EventKind, JobId, NewEvent};
use crate::store::group::{Batching, Flush, Group};

/// Sends `herald_event_batch` notifications for committed events, batched:
/// all the events waiting when it gets to run go out in one notify-only
/// transaction, packed into as few notifications as their size allows.
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
/// at 8000 bytes, and the rest of the record takes about 100.
const CARRIED_DATA: usize = 7_800;

/// The longest payload PostgreSQL takes (it must be shorter than 8000 bytes).
const MAX_PAYLOAD: usize = 7_999;

/// One thing to tell the other nodes. Sorted, a batch's events of one job
/// go out in their order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Notice {
    Event(JobId),
    /// An event with its seq, kind, time and data.
    Carried(JobId, i64, &'static str, i64, String),
    Queued,
}

/// A `herald_event_batch` notification's payload: the sender's origin mark
/// and a newline, then one record per event, in the order of the notices:
///
/// - `<job id>` and a newline: an event not carried (too big); the job's
///   streams read the store;
/// - `<job id> <seq> <kind> <at> <length>` and a newline, then `length`
///   bytes of event data: an event carried.
///
/// The length makes any data safe to carry, newlines included.
pub struct EventBatch;

/// An event as a notification carried it.
#[derive(Debug, PartialEq, Eq)]
pub struct CarriedEvent<'a> {
    pub seq: i64,
    pub kind: EventKind,
    pub at: i64,
    pub data: &'a str,
}

impl EventBatch {
    /// The payloads that carry `notices` (their `Queued` ones aside), each
    /// within PostgreSQL's limit, in order.
    pub fn pack(origin: &str, notices: &[Notice]) -> Vec<String> {
        let mut out = Vec::new();
        let mut payload = String::new();
        for notice in notices {
            let record = match notice {
                Notice::Event(id) => format!("{id}\n"),
                Notice::Carried(id, seq, kind, at, data) => {
                    let record = format!("{id} {seq} {kind} {at} {}\n{data}", data.len());
                    if origin.len() + 1 + record.len() <= MAX_PAYLOAD {
                        record
                    } else {
                        format!("{id}\n")
                    }
                }
                Notice::Queued => continue,
            };
            if !payload.is_empty() && payload.len() + record.len() > MAX_PAYLOAD {
                out.push(std::mem::take(&mut payload));
            }
            if payload.is_empty() {
                payload.push_str(origin);
                payload.push('\n');
            }
            payload.push_str(&record);
        }
        if !payload.is_empty() {
            out.push(payload);
        }
        out
    }

    /// The origin mark of the node that sent `payload`, and its records.
    pub fn unpack(payload: &str) -> (&str, Records<'_>) {
        let (origin, rest) = payload.split_once('\n').unwrap_or((payload, ""));
        (origin, Records(rest))
    }
}

/// The records of a `herald_event_batch` payload, in order: each job id, and
/// its event when carried. A record that does not parse ends them with an
/// error (the payload came from something other than a herald node).
pub struct Records<'a>(&'a str);

impl<'a> Iterator for Records<'a> {
    type Item = Result<(JobId, Option<CarriedEvent<'a>>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let bad = |rest: &mut &str, what: &str| {
            let err = format!("{what} in {:?}", &rest[..rest.len().min(80)]);
            *rest = "";
            Some(Err(err))
        };
        let Some((head, rest)) = self.0.split_once('\n') else {
            return bad(&mut self.0, "a record without its newline");
        };
        let mut fields = head.split(' ');
        let Some(Ok(id)) = fields.next().map(str::parse::<JobId>) else {
            return bad(&mut self.0, "a record without a job id");
        };
        let Some(seq) = fields.next() else {
            self.0 = rest;
            return Some(Ok((id, None)));
        };
        let event = (|| {
            let seq = seq.parse().ok()?;
            let kind = EventKind::parse(fields.next()?)?;
            let at = fields.next()?.parse().ok()?;
            let len: usize = fields.next()?.parse().ok()?;
            let data = rest.get(..len)?;
            Some((
                CarriedEvent {
                    seq,
                    kind,
                    at,
                    data,
                },
                &rest[len..],
            ))
        })();
        match event {
            Some((event, rest)) => {
                self.0 = rest;
                Some(Ok((id, Some(event))))
            }
            None => bad(&mut self.0, "an event record that does not parse"),
        }
    }
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
        let mut payloads = EventBatch::pack(&self.origin, &batch);
        let mut channels = vec![EVENT_BATCH_CHANNEL; payloads.len()];
        if batch.contains(&Notice::Queued) {
            channels.push(QUEUE_CHANNEL);
            payloads.push(self.origin.clone());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "00000000000000aa";

    fn id(n: u128) -> JobId {
        JobId(uuid::Uuid::from_u128(n))
    }

    /// A record as the tests compare it: the job, and its event's seq,
    /// kind, time and data when carried.
    type Record = (JobId, Option<(i64, EventKind, i64, String)>);

    fn unpacked(payload: &str) -> Vec<Record> {
        let (origin, records) = EventBatch::unpack(payload);
        assert_eq!(origin, ORIGIN);
        records
            .map(|r| {
                let (id, ev) = r.expect("a record that parses");
                (id, ev.map(|e| (e.seq, e.kind, e.at, e.data.to_owned())))
            })
            .collect()
    }

    #[test]
    fn a_batch_carries_its_events_in_order_with_any_data() {
        let notices = vec![
            Notice::Carried(id(1), 2, "status", 20, r#"{"status":"running"}"#.into()),
            Notice::Event(id(2)),
            // Data with a newline and multi-byte characters: the length
            // counts bytes, so the next record still starts where it should.
            Notice::Carried(id(1), 3, "progress", 30, "{\"note\":\"a\nb é\"}".into()),
            Notice::Queued,
            Notice::Carried(id(3), 1, "status", 40, String::new()),
        ];
        let payloads = EventBatch::pack(ORIGIN, &notices);
        assert_eq!(
            payloads.len(),
            1,
            "a few small events go in one notification"
        );
        assert_eq!(
            unpacked(&payloads[0]),
            vec![
                (
                    id(1),
                    Some((2, EventKind::Status, 20, r#"{"status":"running"}"#.into()))
                ),
                (id(2), None),
                (
                    id(1),
                    Some((3, EventKind::Progress, 30, "{\"note\":\"a\nb é\"}".into()))
                ),
                (id(3), Some((1, EventKind::Status, 40, String::new()))),
            ]
        );
    }

    #[test]
    fn a_batch_splits_where_a_payload_would_pass_postgres_limit() {
        let data = "x".repeat(3_000);
        let notices: Vec<Notice> = (1..=7)
            .map(|n| Notice::Carried(id(n), 1, "result", 5, data.clone()))
            .collect();
        let payloads = EventBatch::pack(ORIGIN, &notices);
        assert_eq!(payloads.len(), 4, "two 3,000-byte events to a notification");
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let all: Vec<JobId> = payloads
            .iter()
            .flat_map(|p| {
                unpacked(p).into_iter().map(|(id, ev)| {
                    assert_eq!(ev.expect("carried").3, data);
                    id
                })
            })
            .collect();
        assert_eq!(all, (1..=7).map(id).collect::<Vec<_>>());
    }

    #[test]
    fn an_event_too_big_to_carry_goes_as_its_job_id() {
        let notices = vec![Notice::Carried(id(1), 4, "result", 5, "y".repeat(7_990))];
        let payloads = EventBatch::pack(ORIGIN, &notices);
        assert_eq!(payloads.len(), 1);
        assert_eq!(unpacked(&payloads[0]), vec![(id(1), None)]);
    }

    #[test]
    fn a_record_that_does_not_parse_ends_the_records_with_an_error() {
        for bad in [
            format!("{ORIGIN}\nnot-a-job-id\n"),
            format!("{ORIGIN}\n{} 2 status 20 99\nshort", id(1)),
            format!("{ORIGIN}\n{} 2 no-such-kind 20 2\n{{}}", id(1)),
            format!("{ORIGIN}\n{}", id(1)),
        ] {
            let (_, mut records) = EventBatch::unpack(&bad);
            assert!(records.next().expect("a record").is_err(), "{bad:?}");
            assert!(records.next().is_none(), "{bad:?}: records after the error");
        }
    }
}
