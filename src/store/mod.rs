//! The store: `herald_jobs` and `herald_job_events`, the source of truth.
//!
//! Every change to a job and the event that records it are written in one
//! transaction (see [`JobStore::apply`]), so a job's row and its event log never
//! disagree, and a crash loses nothing that was acknowledged.
//!
//! The store is split by concept: jobs and their events ([`JobStore`]), the
//! feed ([`FeedStore`]), uploads and checkpoints ([`UploadStore`]), nodes and
//! leases ([`NodeStore`]), the queue's claim ([`QueueStore`]); [`Store`] is
//! their sum. Each backend has a folder with a file per concept. What
//! both backends would otherwise repeat (the new job record, the
//! idempotency, recovery and cancel decisions) lives in `domain`; the
//! backends keep the SQL and the row mapping.

#[cfg(test)]
mod conformance;
pub(crate) mod group;
pub mod postgres;
mod remote;
mod row;
pub mod sqlite;
mod traits;

pub use remote::{LeaseError, Leased, RemoteClaim};
pub use traits::{FeedStore, JobStore, NodeStore, QueueStore, RemoteStore, Store, UploadStore};

pub use crate::domain::Submitted;

use crate::domain::{
    EventKind, EventSeq, JobId, JobRecord, JobStatus, NewEvent, Refused, Timestamp, Transition,
};

/// The store's traits, for code that calls them on a concrete store
/// (`SqliteStore`, `PgStore`); on an `Arc<dyn Store>` they need no import.
pub mod prelude {
    pub use super::{FeedStore, JobStore, NodeStore, QueueStore, RemoteStore, Store, UploadStore};
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row could not be read: {0}")]
    Corrupt(String),
    #[error("the write was not committed: {0}")]
    WriteFailed(String),
    /// The database does not answer, or another process holds its lock:
    /// nothing of the write was committed, and a retry may succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The database is away or locked for now, rather than refusing this
    /// request: the caller may retry (HTTP answers 503, not 500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => unavailable(e),
            _ => false,
        }
    }
}

/// Whether `e` says the database is out of reach or locked by someone else:
/// no connection (refused, reset, cut off mid-message, timed out waiting for
/// the pool), the server shutting down or out of connections (PostgreSQL's
/// classes 08 and 57P, and 53300), the file locked past the busy timeout
/// (SQLite's BUSY and LOCKED, with their extended codes).
pub(crate) fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        // A connection closed in the middle of the wire protocol (while
        // connecting, say) reads as a message that makes no sense.
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            match code.parse::<i32>() {
                // SQLite: the primary code is the low byte.
                Ok(n) => matches!(n & 0xff, 5 | 6),
                Err(_) => code.starts_with("08") || code.starts_with("57P") || code == "53300",
            }
        }
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("job not found")]
    NotFound,
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The batching group could not answer a write (see `group.rs`).
impl From<group::Unanswered> for StoreError {
    fn from(e: group::Unanswered) -> Self {
        match e {
            group::Unanswered::Stopped => {
                StoreError::Corrupt("the store's writer task has stopped".to_owned())
            }
            group::Unanswered::Miscounted { .. } => StoreError::WriteFailed(e.to_string()),
        }
    }
}

impl group::BatchError for StoreError {}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Store(StoreError::Db(e))
    }
}

/// What a cancel request did.
#[derive(Debug)]
pub enum CancelOutcome {
    NotFound,
    /// It was queued and is now `cancelled`.
    CancelledNow(JobRecord),
    /// It is running; `cancel_requested` is stored.
    Requested(JobRecord),
    /// It had already ended.
    Terminal(JobRecord),
}

/// One persisted event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: EventSeq,
    pub kind: EventKind,
    pub data: String,
    pub at: Timestamp,
}

/// A position in the multiplexed feed: after this event. On SQLite the event's
/// id alone orders the feed (`tx` is 0); on PostgreSQL (appending
/// transaction id, event id), see `PgStore::feed_after`. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedCursor {
    pub tx: i64,
    pub id: i64,
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

impl std::str::FromStr for FeedCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a feed cursor (the `id` of a feed event)");
        let (tx, id) = s.split_once('-').ok_or_else(bad)?;
        // Digits only: `i64`'s parser also takes a sign.
        let number = |n: &str| -> Result<i64, String> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            n.parse().map_err(|_| bad())
        };
        Ok(FeedCursor {
            tx: number(tx)?,
            id: number(id)?,
        })
    }
}

/// Which events the feed carries: the tenant's, of these jobs or this kind.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    pub tenant: String,
    pub jobs: Option<Vec<JobId>>,
    pub kind: Option<String>,
}

/// One event of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub cursor: FeedCursor,
    pub job_id: JobId,
    pub event: StoredEvent,
}

/// One read of the feed: the events the filter keeps, and how far the read
/// got. A read examines a bounded number of events after its cursor
/// (its limit, or a window of `FEED_WINDOW` events if that is more), whether the filter keeps them or not, so its cost
/// is bounded by what it reads, never by how many left-out events lie behind
/// the cursor; `next` moves past the left-out ones, so the next read does not
/// examine them again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeedRead {
    /// The kept events, in feed order, at most the read's limit.
    pub events: Vec<FeedEvent>,
    /// Where the next read starts: after the last kept event when the limit
    /// was reached, else after the last event examined (the given cursor
    /// when there was none).
    pub next: FeedCursor,
    /// It stopped at its limit or its window: more may follow `next` right
    /// away.
    pub full: bool,
}

/// The fewest events one feed read examines: a read for a few events (a
/// small page) still moves a good way past the events its filter leaves out.
const FEED_WINDOW: i64 = 256;

impl FeedRead {
    /// How many events a read for at most `limit` kept events examines.
    pub(crate) fn window(limit: i64) -> i64 {
        limit.max(FEED_WINDOW)
    }

    /// A read for at most `limit` events from the events it examined after
    /// `after` (at most [`FeedRead::window`]), in feed order, each with the
    /// event when the filter keeps it.
    pub(crate) fn from_examined(
        after: FeedCursor,
        limit: i64,
        examined: impl IntoIterator<Item = Result<(FeedCursor, Option<FeedEvent>), StoreError>>,
    ) -> Result<FeedRead, StoreError> {
        Self::from_window(after, limit, Self::window(limit), examined)
    }

    /// [`FeedRead::from_examined`] for a read that examined at most
    /// `window` events (at least `limit`).
    pub(crate) fn from_window(
        after: FeedCursor,
        limit: i64,
        window: i64,
        examined: impl IntoIterator<Item = Result<(FeedCursor, Option<FeedEvent>), StoreError>>,
    ) -> Result<FeedRead, StoreError> {
        let mut read = FeedRead {
            next: after,
            ..FeedRead::default()
        };
        let mut n = 0;
        for row in examined {
            let (cursor, kept) = row?;
            n += 1;
            read.next = cursor;
            read.events.extend(kept);
            if read.events.len() as i64 >= limit {
                read.full = true;
                return Ok(read);
            }
        }
        read.full = n >= window;
        Ok(read)
    }
}

/// Which jobs `list` returns: newest first, after the cursor.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub tenant: String,
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    /// Only jobs older than this one (the previous page's last id).
    pub before: Option<JobId>,
    pub limit: i64,
}

/// A committed transition: the job as it left it, and the event it appended.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub job: JobRecord,
    pub event: NewEvent,
}

/// What a claim took from the queue.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Claim {
    /// The jobs it started (now `running` on this node) with their `status`
    /// events, oldest `run_at` first.
    pub started: Vec<Applied>,
    /// When the earliest queued job that is not due yet becomes due (a
    /// retry waiting out its backoff), if the claim saw one.
    pub next_due: Option<Timestamp>,
    /// A due job still waits: the claim started as many as it was asked
    /// for, and the queue's head had one more.
    pub more: bool,
}

/// A claim's started jobs, each with the `last_seq` it had before.
type Starts = Vec<(EventSeq, Applied)>;

/// What [`Claim::plan`] makes of the queue's head.
struct Plan {
    starts: Starts,
    next_due: Option<Timestamp>,
    more: bool,
}

impl Plan {
    /// The claim, once its starts are written.
    fn claim(self) -> Claim {
        Claim {
            started: self.starts.into_iter().map(|(_, a)| a).collect(),
            next_due: self.next_due,
            more: self.more,
        }
    }
}

impl Claim {
    /// The claim of up to `limit` jobs from the queue's head (`head`, in
    /// `run_at` order, read with one row more than `limit` so that the
    /// claim knows whether more wait) at `now`, before it is written: each
    /// due job started, paired with the `last_seq` it had (for a write
    /// conditional on it), up to the first job that is not due, which says
    /// when the next one will be.
    fn plan(head: Vec<row::JobRow>, now: Timestamp, limit: usize) -> Result<Plan, StoreError> {
        let mut starts = Vec::with_capacity(head.len().min(limit));
        for row in head {
            let job = JobRecord::try_from(row)?;
            if job.run_at > now {
                return Ok(Plan {
                    starts,
                    next_due: Some(job.run_at),
                    more: false,
                });
            }
            if starts.len() == limit {
                return Ok(Plan {
                    starts,
                    next_due: None,
                    more: true,
                });
            }
            let (next, event) = job.apply(&Transition::Start, now).map_err(|refused| {
                StoreError::Corrupt(format!("queued job {} cannot start: {refused}", job.id))
            })?;
            starts.push((job.last_seq, Applied { job: next, event }));
        }
        Ok(Plan {
            starts,
            next_due: None,
            more: false,
        })
    }
}

/// What start-up recovery did with the jobs a previous process left running.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    /// Back to `queued` with the next attempt.
    pub requeued: Vec<JobRecord>,
    /// Their last attempt was the one interrupted: `failed` with `worker_lost`.
    pub failed: Vec<JobRecord>,
}

impl Recovered {
    /// Counts `job` as recovered by `t` (see [`JobRecord::interrupted`]).
    pub(crate) fn record(&mut self, job: JobRecord, t: &Transition) {
        match t {
            Transition::Retry(..) => self.requeued.push(job),
            _ => self.failed.push(job),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examined(kept: &[bool]) -> Vec<Result<(FeedCursor, Option<FeedEvent>), StoreError>> {
        kept.iter()
            .enumerate()
            .map(|(i, &k)| {
                let cursor = FeedCursor {
                    tx: 0,
                    id: i as i64 + 1,
                };
                let event = FeedEvent {
                    cursor,
                    job_id: JobId(uuid::Uuid::nil()),
                    event: StoredEvent {
                        seq: EventSeq(1),
                        kind: EventKind::Status,
                        data: "{}".to_owned(),
                        at: Timestamp(0),
                    },
                };
                Ok((cursor, k.then_some(event)))
            })
            .collect()
    }

    #[test]
    fn a_feed_read_moves_past_left_out_events_and_stops_at_its_limit() {
        let after = FeedCursor { tx: 0, id: 0 };
        // Nothing examined: stay.
        let read = FeedRead::from_examined(after, 2, examined(&[])).unwrap();
        assert_eq!((read.events.len(), read.next.id, read.full), (0, 0, false));
        // Only left-out events: past them, and not full below the window.
        let read = FeedRead::from_examined(after, 2, examined(&[false, false, false])).unwrap();
        assert_eq!((read.events.len(), read.next.id, read.full), (0, 3, false));
        // The limit reached: after the last kept event, not past the rest.
        let read =
            FeedRead::from_examined(after, 2, examined(&[false, true, false, true, true])).unwrap();
        let ids: Vec<i64> = read.events.iter().map(|e| e.cursor.id).collect();
        assert_eq!((ids, read.next.id, read.full), (vec![2, 4], 4, true));
        // A whole window examined: full, more may follow.
        let window = FeedRead::window(2) as usize;
        let read = FeedRead::from_examined(after, 2, examined(&vec![false; window])).unwrap();
        assert_eq!((read.next.id, read.full), (window as i64, true));
    }
}
