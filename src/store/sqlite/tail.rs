//! The feed's tail: the events the writer committed last, kept in memory so
//! that a caught-up feed takes them from here instead of reading the file.
//!
//! Under load a feed is woken at every commit and read the file each time,
//! on a reader connection: a round trip to that connection's thread, the
//! WAL's fresh pages read again into its own cache, and every row decoded
//! (the feed's reads were about a fifth of herald's CPU with one feed open).
//! The writer already has those pages at hand: while feeds read, it reads
//! back what each batch appended, inside the batch's transaction (one
//! statement), and after the commit adds it here.
//!
//! The tail holds *every* event with an id in `(base, last]`: the writer
//! reads back from `last`, whatever the batch did, so nothing is missed, and
//! a feed whose cursor is at or past `base` gets from here exactly what a
//! read of the file would give (same rows, same order, same cursor). A feed
//! further behind, or any feed while the tail is not kept, reads the file.
//! The retention sweep deletes events, so a batch that ran it starts the
//! tail over from its end. The tail is kept only while feeds read (see
//! [`KEPT_FOR`]), so without a feed the writer does no extra work.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::domain::JobId;
use crate::store::{FeedCursor, FeedEvent, FeedFilter, FeedRead, StoredEvent};

/// The most events the tail keeps; a feed further behind reads the file.
pub(super) const TAIL_EVENTS: usize = 4096;

/// The most bytes of event data the tail keeps.
const TAIL_BYTES: usize = 4 * 1024 * 1024;

/// How long after the last feed read the writer keeps the tail.
const KEPT_FOR: Duration = Duration::from_secs(10);

/// One committed event, with what a feed's filter asks of its job.
#[derive(Debug, Clone)]
pub(super) struct TailEvent {
    pub id: i64,
    pub job_id: JobId,
    /// The job's tenant and kind (`None`: the job's row was not found, so
    /// no feed keeps the event, as with a read of the file).
    pub job: Option<(String, String)>,
    pub event: StoredEvent,
}

#[derive(Debug, Default)]
struct Inner {
    /// While kept: every event with an id in `(base, last]` is in `events`.
    base: Option<i64>,
    events: VecDeque<TailEvent>,
    /// The bytes of the events' data.
    bytes: usize,
}

impl Inner {
    fn last(&self) -> Option<i64> {
        self.events.back().map(|e| e.id).or(self.base)
    }

    fn start_over(&mut self, base: Option<i64>) {
        self.base = base;
        self.events.clear();
        self.bytes = 0;
    }
}

/// What the writer does for the tail in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Nothing: no feed has read lately.
    Off,
    /// Find where the tail starts: the newest event's id after the batch.
    Start,
    /// Read back the events after this id.
    After(i64),
}

/// Feeds read it at once (a read lock each); only the writer changes it.
#[derive(Debug)]
pub(crate) struct Tail {
    inner: RwLock<Inner>,
    /// When it was made, and the last feed read: milliseconds after that
    /// (0: none yet).
    made: Instant,
    read_at: AtomicU64,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            inner: RwLock::default(),
            made: Instant::now(),
            read_at: AtomicU64::new(0),
        }
    }
}

impl Tail {
    fn lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn peek(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a feed has read within [`KEPT_FOR`].
    fn read_lately(&self) -> bool {
        let at = self.read_at.load(Ordering::Relaxed);
        at > 0 && self.made.elapsed().as_millis() as u64 <= at + KEPT_FOR.as_millis() as u64
    }

    /// What the writer does in its next batch. A tail no feed has read for
    /// [`KEPT_FOR`] is let go.
    pub(super) fn keep(&self) -> Keep {
        let mut t = self.lock();
        if !self.read_lately() {
            if t.base.is_some() {
                t.start_over(None);
            }
            return Keep::Off;
        }
        match t.last() {
            Some(last) => Keep::After(last),
            None => Keep::Start,
        }
    }

    /// After a committed batch read back from `from` (see [`Tail::keep`]):
    /// its events, in id order, or, with `start_over`, only the id the tail
    /// now starts from (the batch ran the retention sweep, or read back more
    /// than the tail keeps).
    pub(super) fn committed(&self, from: Keep, events: Vec<TailEvent>, start_over: Option<i64>) {
        let mut t = self.lock();
        match (from, start_over) {
            (Keep::Off, _) => {}
            (_, Some(base)) => t.start_over(Some(base)),
            (Keep::Start, None) => t.start_over(None),
            (Keep::After(last), None) => {
                if t.last() != Some(last) {
                    // Changed meanwhile (it was let go): the batch's events
                    // do not continue it.
                    t.start_over(None);
                    return;
                }
                for e in events {
                    t.bytes += e.event.data.len();
                    t.events.push_back(e);
                }
                while t.events.len() > TAIL_EVENTS || t.bytes > TAIL_BYTES {
                    let Some(old) = t.events.pop_front() else {
                        break;
                    };
                    t.bytes -= old.event.data.len();
                    t.base = Some(old.id);
                }
            }
        }
    }

    /// The tail no longer follows the file: a failed read-back.
    pub(super) fn let_go(&self) {
        self.lock().start_over(None);
    }

    /// The feed's read after `after`, from the tail, when it holds every
    /// event after `after` (else `None`: read the file). Either way the feed
    /// has read, and the writer keeps the tail.
    pub(super) fn read(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Option<FeedRead> {
        let now = (self.made.elapsed().as_millis() as u64).max(1);
        self.read_at.store(now, Ordering::Relaxed);
        let t = self.peek();
        let base = t.base?;
        if after.id < base {
            return None;
        }
        let from = t.events.partition_point(|e| e.id <= after.id);
        let window = FeedRead::window(limit) as usize;
        let examined = t.events.iter().skip(from).take(window).map(|e| {
            let cursor = FeedCursor { tx: 0, id: e.id };
            let kept = keeps(filter, e).then(|| FeedEvent {
                cursor,
                job_id: e.job_id,
                event: e.event.clone(),
            });
            Ok((cursor, kept))
        });
        FeedRead::from_examined(after, limit, examined).ok()
    }

    /// The newest event's id, when the tail knows it.
    pub(super) fn head(&self) -> Option<FeedCursor> {
        let t = self.peek();
        t.base?;
        t.last().map(|id| FeedCursor { tx: 0, id })
    }
}

/// Whether the feed's filter keeps the event (as the file's read decides).
fn keeps(filter: &FeedFilter, e: &TailEvent) -> bool {
    let Some((tenant, kind)) = &e.job else {
        return false;
    };
    *tenant == filter.tenant
        && filter.kind.as_ref().is_none_or(|k| k == kind)
        && filter
            .jobs
            .as_ref()
            .is_none_or(|ids| ids.contains(&e.job_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, EventSeq, Timestamp};

    fn event(id: i64, tenant: &str, kind: &str) -> TailEvent {
        TailEvent {
            id,
            job_id: JobId(uuid::Uuid::from_u128(id as u128 % 3)),
            job: Some((tenant.to_owned(), kind.to_owned())),
            event: StoredEvent {
                seq: EventSeq(id),
                kind: EventKind::Status,
                data: format!("{{\"n\":{id}}}"),
                at: Timestamp(id),
            },
        }
    }

    fn filter(tenant: &str, kind: Option<&str>) -> FeedFilter {
        FeedFilter {
            tenant: tenant.to_owned(),
            jobs: None,
            kind: kind.map(str::to_owned),
        }
    }

    fn after(id: i64) -> FeedCursor {
        FeedCursor { tx: 0, id }
    }

    fn ids(read: &FeedRead) -> Vec<i64> {
        read.events.iter().map(|e| e.cursor.id).collect()
    }

    /// A tail that starts at 10 and holds 11..=15.
    fn kept() -> Tail {
        let tail = Tail::default();
        assert!(tail.read(&filter("a", None), after(0), 10).is_none());
        assert_eq!(tail.keep(), Keep::Start, "a feed read: the writer keeps it");
        tail.committed(Keep::Start, vec![], Some(10));
        assert_eq!(tail.keep(), Keep::After(10));
        let events = (11..=15)
            .map(|id| event(id, if id == 13 { "b" } else { "a" }, "demo"))
            .collect();
        tail.committed(Keep::After(10), events, None);
        tail
    }

    #[test]
    fn nothing_is_kept_until_a_feed_reads() {
        let tail = Tail::default();
        assert_eq!(tail.keep(), Keep::Off);
        tail.committed(Keep::Off, vec![event(1, "a", "demo")], None);
        assert!(tail.head().is_none());
    }

    #[test]
    fn a_feed_at_or_past_the_base_reads_the_tail_as_it_would_the_file() {
        let tail = kept();
        let read = tail.read(&filter("a", None), after(10), 10).unwrap();
        assert_eq!(
            ids(&read),
            vec![11, 12, 14, 15],
            "the other tenant's left out"
        );
        assert_eq!((read.next, read.full), (after(15), false));
        let read = tail.read(&filter("a", None), after(12), 1).unwrap();
        assert_eq!(ids(&read), vec![14]);
        assert!(read.full, "stopped at its limit");
        let read = tail
            .read(&filter("a", Some("other")), after(10), 10)
            .unwrap();
        assert!(read.events.is_empty());
        assert_eq!(read.next, after(15), "past what it examined");
        let mut of_job = filter("a", None);
        of_job.jobs = Some(vec![JobId(uuid::Uuid::from_u128(2))]);
        let read = tail.read(&of_job, after(10), 10).unwrap();
        assert_eq!(ids(&read), vec![11, 14], "job 2's events only");
        let read = tail.read(&filter("a", None), after(15), 10).unwrap();
        assert_eq!((read.events.len(), read.next), (0, after(15)));
        assert_eq!(tail.head(), Some(after(15)));
    }

    #[test]
    fn a_feed_behind_the_base_reads_the_file() {
        let tail = kept();
        assert!(tail.read(&filter("a", None), after(9), 10).is_none());
    }

    #[test]
    fn the_retention_sweep_starts_the_tail_over_from_the_end() {
        let tail = kept();
        tail.committed(Keep::After(15), vec![event(16, "a", "demo")], Some(16));
        assert!(tail.read(&filter("a", None), after(14), 10).is_none());
        let read = tail.read(&filter("a", None), after(16), 10).unwrap();
        assert!(read.events.is_empty());
        assert_eq!(tail.keep(), Keep::After(16));
    }

    #[test]
    fn events_that_do_not_continue_the_tail_start_it_over() {
        let tail = kept();
        tail.committed(Keep::After(12), vec![event(16, "a", "demo")], None);
        assert!(tail.head().is_none());
        assert_eq!(tail.keep(), Keep::Start);
    }

    #[test]
    fn the_oldest_events_go_past_the_limit_and_the_base_follows() {
        let tail = kept();
        let many = (16..16 + TAIL_EVENTS as i64)
            .map(|id| event(id, "a", "demo"))
            .collect();
        tail.committed(Keep::After(15), many, None);
        let last = 15 + TAIL_EVENTS as i64;
        assert_eq!(tail.head(), Some(after(last)));
        assert!(tail.read(&filter("a", None), after(14), 10).is_none());
        let read = tail.read(&filter("a", None), after(15), 3).unwrap();
        assert_eq!(ids(&read), vec![16, 17, 18]);
    }

    /// On a real file: once a feed has read, every read the tail answers is
    /// the file's read, for each cursor and filter, across two tenants and
    /// kinds, jobs that start, report, succeed and fail, and a retention
    /// sweep that deletes some of them.
    #[tokio::test]
    async fn the_tail_answers_as_the_file_does() {
        use crate::domain::{JobError, Progress, Submission, Transition};
        use crate::store::sqlite::{connect, migrate, SqliteStore};
        use crate::store::{FeedStore, JobStore};

        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pools = connect(&url).await.expect("open the test file");
        migrate(&pools.writer).await.expect("migrate");
        let store = SqliteStore::new(pools);

        let mut jobs = Vec::new();
        let run = |round: usize| {
            let store = &store;
            async move {
                let mut ids = Vec::new();
                for i in 0..12 {
                    let tenant = if i % 3 == 0 { "globex" } else { "acme" };
                    let kind = if i % 2 == 0 { "demo" } else { "import" };
                    let body = serde_json::json!({"kind": kind, "input": {"i": i}});
                    let mut sub = Submission::parse(&body, 3).expect("a valid submission");
                    sub.start = i % 4 == 1;
                    let id = match store.submit(tenant, &sub).await.expect("submit") {
                        crate::domain::Submitted::Created(job) => job.id,
                        crate::domain::Submitted::Started(s) => s.running.id,
                        other => panic!("a new job, not {other:?}"),
                    };
                    ids.push(id);
                }
                for (i, id) in ids.iter().enumerate() {
                    let half = Progress::new(Some(50.0), None, None, None).expect("progress");
                    let mut ts = vec![Transition::Progress(half)];
                    if (i + round) % 5 == 0 {
                        ts.push(Transition::Fail(JobError::new("boom", "it broke")));
                    } else {
                        ts.push(Transition::Succeed(serde_json::json!({"ok": i})));
                    }
                    let job = store.get(*id).await.expect("get").expect("the job");
                    if job.started_at.is_none() {
                        store.apply(*id, &Transition::Start).await.expect("start");
                    }
                    for t in &ts {
                        store.apply(*id, t).await.expect("apply");
                    }
                }
                ids
            }
        };
        let filters = {
            let mut of_jobs = filter("acme", None);
            of_jobs.jobs = Some(Vec::new());
            vec![
                filter("acme", None),
                filter("acme", Some("demo")),
                filter("globex", None),
                filter("nobody", None),
                of_jobs,
            ]
        };
        let check = |jobs: &[JobId]| {
            let store = &store;
            let mut filters = filters.clone();
            filters[4].jobs = Some(jobs.iter().step_by(4).copied().collect());
            async move {
                let head = store.feed_head().await.expect("head").id;
                let mut answered = 0;
                for f in &filters {
                    for cursor in 0..=head + 1 {
                        for limit in [1, 3, 256] {
                            let Some(read) = store.tail.read(f, after(cursor), limit) else {
                                continue;
                            };
                            let file = store.feed_from_file(f, after(cursor), limit).await;
                            assert_eq!(read, file.expect("read the file"), "{f:?} after {cursor}");
                            answered += 1;
                        }
                    }
                }
                answered
            }
        };

        // Not kept before a feed reads: the file answers.
        store
            .feed_after(&filters[0], after(0), 10)
            .await
            .expect("read");
        jobs.extend(run(0).await);
        assert!(check(&jobs).await > 0, "the tail answered some reads");
        let base = store.tail.lock().base.expect("kept");
        assert!(
            base < 10,
            "kept from the first batch after the read: {base}"
        );

        // The sweep deletes the finished jobs' events: the tail starts over.
        let before_sweep = store.feed_head().await.expect("head").id;
        let swept = store
            .purge_finished(crate::domain::Timestamp::now(), 1000)
            .await
            .expect("purge");
        assert!(swept > 0);
        jobs.clear();
        jobs.extend(run(1).await);
        assert!(check(&jobs).await > 0);
        let oldest = store.tail.lock().events.front().map(|e| e.id);
        assert!(
            oldest.is_some_and(|id| id > before_sweep),
            "no swept event is kept: {oldest:?} after {before_sweep}"
        );
    }
}
