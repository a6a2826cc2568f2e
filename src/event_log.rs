//! The event log read a page at a time, for clients that cannot hold a
//! stream: `GET /v1/jobs/{id}/events` and `GET /v1/events` with
//! `Accept: application/json`.
//!
//! A page is what the stream would send next, read from the same store, so a
//! client can switch between the two without losing or repeating anything.
//! A long-poll (`wait`) follows the stream's rule: subscribe to the hub
//! first, then read the store, then read again after every wake-up, so an
//! event appended between the read and the wait still ends the wait. It ends
//! with an empty page when the time is up or the server stops serving.

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{EventSeq, JobRecord};
use crate::hub::Hub;
use crate::store::{FeedCursor, FeedEvent, FeedFilter, Store, StoreError, StoredEvent};

/// What a page request reads from: the store, the hub for long-polls, and
/// the token that ends a wait when the server stops serving.
pub struct LogReader<'a> {
    pub store: &'a Arc<dyn Store>,
    pub hub: &'a Arc<Hub>,
    pub stop: &'a CancellationToken,
}

/// How much a page request reads and how long it may wait for it.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<C> {
    /// Events after this one.
    pub after: C,
    /// At most this many events.
    pub limit: i64,
    /// Wait until then for a first event, when there is none yet.
    pub until: Option<Instant>,
}

/// One page of a job's log.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub events: Vec<StoredEvent>,
    /// The last event's id, or the request's `after` when there are none:
    /// the next request's `after`.
    pub last: EventSeq,
    /// The job has ended and nothing follows this page.
    pub terminal: bool,
}

impl LogReader<'_> {
    /// The events of `job` after `req.after`. `job` was read (and its owner
    /// checked) before this is called; that is enough to tell whether an
    /// empty page is the end, because a job that has ended stays ended, and
    /// one that ends later appends its terminal event, which the reads below
    /// (all after subscribing) see.
    pub async fn job_page(
        &self,
        job: &JobRecord,
        req: PageRequest<EventSeq>,
    ) -> Result<JobPage, StoreError> {
        // Subscribe before the first read (see the module doc); only a
        // long-poll waits, so only a long-poll subscribes.
        let mut sub = req.until.map(|until| (self.hub.subscribe(job.id), until));
        loop {
            if let Some((sub, _)) = sub.as_mut() {
                sub.version();
            }
            let events = self
                .store
                .events_after(job.id, req.after, req.limit)
                .await?;
            if let Some(last) = events.last() {
                // The stream closes right after the terminal event: nothing follows it.
                return Ok(JobPage {
                    last: last.seq,
                    terminal: last.kind.is_terminal(),
                    events,
                });
            }
            let ended = job.status.is_terminal();
            let woken = match sub.as_mut() {
                Some((sub, until)) if !ended => self.woken(sub.changed(), *until).await,
                _ => false,
            };
            if !woken {
                return Ok(JobPage {
                    events,
                    last: req.after,
                    terminal: ended,
                });
            }
        }
    }

    /// The feed's events after `req.after` (feed order, the filter's jobs),
    /// and the cursor to continue from: after the last event read, which may
    /// be one the filter left out (so the next request does not examine it
    /// again). Empty only when nothing the filter keeps follows yet.
    pub async fn feed_page(
        &self,
        filter: &FeedFilter,
        req: PageRequest<FeedCursor>,
    ) -> Result<(Vec<FeedEvent>, FeedCursor), StoreError> {
        // Subscribe before the first read (see the module doc).
        let mut wake = req.until.map(|until| (self.hub.subscribe_feed(), until));
        let mut after = req.after;
        loop {
            if let Some((wake, _)) = wake.as_mut() {
                // Marked seen before the read: a wake-up during the read reads again.
                wake.borrow_and_update();
            }
            let read = self.store.feed_after(filter, after, req.limit).await?;
            after = read.next;
            if !read.events.is_empty() {
                return Ok((read.events, after));
            }
            if read.full {
                // Only events the filter leaves out so far: read on.
                continue;
            }
            let woken = match wake.as_mut() {
                Some((wake, until)) => self.woken(wake.changed(), *until).await,
                None => false,
            };
            if !woken {
                return Ok((read.events, after));
            }
        }
    }

    /// Waits for `wake` until `until`: true when woken, false when the time
    /// is up or the server stops serving.
    async fn woken(&self, wake: impl Future, until: Instant) -> bool {
        // Biased: a wake-up that is already there is read even at the deadline.
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = wake => true,
            _ = tokio::time::sleep_until(until) => false,
        }
    }
}
