//! What the store does, one trait per concept. [`Store`] is their sum, so an
//! `Arc<dyn Store>` serves every caller, and its methods need no import (a
//! trait object has its supertraits' methods); code that holds a concrete
//! store imports the traits it calls (`crate::store::prelude`).

use async_trait::async_trait;

use super::{
    Applied, ApplyError, CancelOutcome, Claim, FeedCursor, FeedFilter, FeedRead, LeaseError,
    Leased, ListQuery, Recovered, RemoteClaim, StoreError, StoredEvent, Submitted,
};
use crate::domain::{
    EventSeq, JobId, JobRecord, LeaseOp, LeaseTerms, NewEvent, Submission, Timestamp, Transition,
};

/// Jobs and their events: every change to a job and the event that records
/// it are written in one transaction, so a job's row and its event log never
/// disagree.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts the job and its first event (`queued`), or finds the earlier job
    /// with the same idempotency key. With [`Submission::start`], a store that
    /// [`starts_on_submit`](Self::starts_on_submit) stores it started instead.
    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError>;

    /// Whether [`submit`](Self::submit) can store a job started. Both
    /// databases can: a job starts at its submission only while no due job
    /// waits in the queue, so jobs still start in `run_at` order (on
    /// PostgreSQL, as nearly as nodes claiming at once allow).
    fn starts_on_submit(&self) -> bool {
        false
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError>;

    /// Applies one transition and appends its event, in one transaction.
    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError>;

    /// Like [`JobStore::apply`], starting from `known`, the job as the caller
    /// last saw it (a runner knows its running job). The write is conditional
    /// on the job not having changed since; if it has, the store reads it
    /// afresh.
    async fn apply_known(&self, known: &JobRecord, t: &Transition) -> Result<Applied, ApplyError>;

    /// [`JobStore::apply_known`] for several transitions in turn (a runner's
    /// last reports and its outcome), each with its event. Where the store
    /// can, they are one write, all or none; by default each is its own, and
    /// an error leaves the ones before it written (a later write that starts
    /// from `known` then finds the job moved on and reads it afresh).
    async fn apply_known_all(
        &self,
        known: &JobRecord,
        ts: &[Transition],
    ) -> Result<Vec<Applied>, ApplyError> {
        apply_known_in_turn(self, known, ts).await
    }

    /// Cancels a queued job at once, or marks a running one `cancel_requested`.
    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError>;

    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(
        &self,
        id: JobId,
        after: EventSeq,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The job's items from index `offset` on, at most `limit`, each as the
    /// data of its `item` event (`{"item":…,"index":n,"at":…}`), as stored.
    async fn items(&self, id: JobId, offset: i64, limit: i64) -> Result<Vec<String>, StoreError>;

    /// Which of these jobs have a cancel request stored (the periodic backup
    /// for a cancel notification that another node sent and this one missed).
    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError>;

    /// Deletes up to `limit` terminal jobs that finished before `before`, with
    /// their events and upload chunks; returns how many.
    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError>;
}

/// [`JobStore::apply_known_all`] one transition at a time, each as
/// [`JobStore::apply_known`] from where the one before left the job.
pub(crate) async fn apply_known_in_turn<S: JobStore + ?Sized>(
    store: &S,
    known: &JobRecord,
    ts: &[Transition],
) -> Result<Vec<Applied>, ApplyError> {
    let mut applied: Vec<Applied> = Vec::with_capacity(ts.len());
    for t in ts {
        let from = applied.last().map_or(known, |a| &a.job);
        applied.push(store.apply_known(from, t).await?);
    }
    Ok(applied)
}

/// The multiplexed feed: every job's events in one order, for
/// `GET /v1/events`.
#[async_trait]
pub trait FeedStore: Send + Sync + 'static {
    /// The feed's events after `after` that the filter keeps, in feed order,
    /// at most `limit`, from a bounded number examined, and where the next
    /// read starts (see [`FeedRead`]).
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<FeedRead, StoreError>;

    /// [`FeedStore::feed_after`] examining at most `window` events (at least
    /// `limit`): a feed whose filter keeps what it examines asks for no more
    /// than it will keep. By default, the store's own window.
    async fn feed_after_window(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
        window: i64,
    ) -> Result<FeedRead, StoreError> {
        let _ = window;
        self.feed_after(filter, after, limit).await
    }

    /// The feed's current end: a feed that starts "from now" starts after it.
    async fn feed_head(&self) -> Result<FeedCursor, StoreError>;
}

/// What a job keeps beside its row for its handler: the file uploaded with
/// it (stored in chunks before the job exists), and its checkpoint (where
/// its work stands, for a later attempt to resume).
#[async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// Stores chunk `n` of the file uploaded for job `id` (not yet created).
    async fn put_upload_chunk(&self, id: JobId, n: i64, data: &[u8]) -> Result<(), StoreError>;

    /// Chunk `n` of job `id`'s upload, if there is one.
    async fn upload_chunk(&self, id: JobId, n: i64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes job `id`'s upload (a refused or failed upload).
    async fn delete_upload(&self, id: JobId) -> Result<(), StoreError>;

    /// Deletes the chunks stored before `before` whose job does not exist
    /// (an upload cut off by a stopped process).
    async fn purge_orphan_uploads(&self, before: Timestamp) -> Result<(), StoreError>;

    /// Records where the job's work stands, for a later attempt to resume.
    async fn set_checkpoint(&self, id: JobId, checkpoint: &str) -> Result<(), StoreError>;

    async fn checkpoint(&self, id: JobId) -> Result<Option<String>, StoreError>;
}

/// Nodes and their leases: which node is alive, and what becomes of the jobs
/// a node left running when it stopped.
#[async_trait]
pub trait NodeStore: Send + Sync + 'static {
    /// Readiness: can the store answer a trivial query?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records that this node is alive; nodes that run jobs call it every
    /// third of the lease. On SQLite (one process) there is nothing to record.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes this node's liveness record at a clean shutdown, so what it
    /// leaves running is taken over at once rather than after the lease.
    async fn leave(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// At start-up: jobs left `running` by a process that is gone go back to
    /// `queued` with the next attempt, or fail when that was their last.
    async fn recover_interrupted(&self) -> Result<Recovered, StoreError>;

    /// Jobs running on nodes whose lease ran out: the next attempt, or failed
    /// after their last. On SQLite one process runs everything, and start-up
    /// recovery covers it.
    async fn recover_expired(&self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }

    /// Tells the other nodes that job `id` has new committed events, so their
    /// streams and feeds look again (the jobs service calls it after each
    /// write). One process on SQLite: there is nobody to tell.
    async fn announce(&self, _id: JobId) {}

    /// [`announce`](Self::announce) of one committed event, `ev`: a store
    /// that can carries it to the other nodes, whose caught-up streams of
    /// the job then send it without reading the store.
    async fn announce_event(&self, id: JobId, _ev: &NewEvent) {
        self.announce(id).await
    }

    /// Tells the other nodes' workers that a job became queued (submitted,
    /// retried or put back), so they claim now rather than at their next
    /// poll. One process on SQLite: there is nobody to tell.
    async fn announce_queued(&self) {}
}

/// The queue, which is the job table itself: queued jobs wait in
/// `herald_jobs`, oldest `run_at` first, and a worker takes them with a claim.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Starts up to `limit` queued jobs whose `run_at` has come, oldest
    /// first, on this node: each goes `queued` → `running` with its `status`
    /// event, all in one commit. Concurrent claims (other nodes) never start
    /// the same job twice.
    async fn claim(&self, limit: usize) -> Result<Claim, StoreError>;

    /// How many jobs are queued, and when the oldest was submitted.
    async fn queue_stats(&self) -> Result<(i64, Option<Timestamp>), StoreError>;
}

/// Remote workers: their claims, and the changes of a remote job under its
/// lease (see `domain::lease`).
#[async_trait]
pub trait RemoteStore: Send + Sync + 'static {
    /// Starts up to `c.limit` due queued remote jobs of `c.kinds` (and of
    /// `c.tenants`, when given), oldest `run_at` first, for worker
    /// `c.worker`, each with a lease of its own, in one commit. Concurrent
    /// claims (other workers, other nodes) never start the same job twice.
    async fn claim_remote(&self, c: &RemoteClaim) -> Result<Vec<Applied>, StoreError>;

    /// Decides `op` on job `id` as it is stored and writes what it decided
    /// (events, lease, checkpoint), in one transaction with that read, so a
    /// report never lands on an attempt that is not its own.
    async fn lease_op(
        &self,
        id: JobId,
        op: &LeaseOp,
        terms: &LeaseTerms,
    ) -> Result<Leased, LeaseError>;

    /// Running remote jobs whose lease has run out at `now`, or that may
    /// have outlived their `timeout_secs` (the sweep decides), at most `limit`.
    async fn leases_over(&self, now: Timestamp, limit: i64) -> Result<Vec<JobId>, StoreError>;
}

/// Everything the store does: what `Arc<dyn Store>` offers. Each backend
/// implements the six traits; this one comes with them.
pub trait Store: JobStore + FeedStore + UploadStore + NodeStore + QueueStore + RemoteStore {}

impl<T> Store for T where
    T: JobStore + FeedStore + UploadStore + NodeStore + QueueStore + RemoteStore
{
}
