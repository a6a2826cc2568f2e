//! The store: `herald_jobs` and `herald_job_events`, the source of truth.
//!
//! Every change to a job and the event that records it are written in one
//! transaction (see [`Store::apply`]), so a job's row and its event log never
//! disagree, and a crash loses nothing that was acknowledged.

mod group;
mod pg_batch;
pub mod postgres;
mod row;
pub mod sqlite;

use async_trait::async_trait;

use crate::domain::{
    EventKind, EventSeq, JobId, JobRecord, JobStatus, Refused, Submission, Timestamp, Transition,
};

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
}

/// What a submission did.
#[derive(Debug)]
pub enum Submitted {
    Created(JobRecord),
    /// The same idempotency key with the same request: the earlier job.
    Existing(JobRecord),
    /// The same idempotency key with a different request.
    Conflict(JobRecord),
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
        let tx: i64 = tx.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        if tx < 0 || id < 0 {
            return Err(bad());
        }
        Ok(FeedCursor { tx, id })
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

/// What start-up recovery did with the jobs a previous process left running.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    /// Back to `queued` with the next attempt.
    pub requeued: Vec<JobId>,
    /// Their last attempt was the one interrupted: `failed` with `worker_lost`.
    pub failed: Vec<JobId>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts the job and its first event (`queued`), or finds the earlier job
    /// with the same idempotency key.
    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError>;

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;

    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError>;

    /// Applies one transition and appends its event, in one transaction.
    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError>;

    /// Like [`Store::apply`], starting from `known`, the job as the caller last
    /// saw it (a runner knows its running job). The write is conditional on the
    /// job not having changed since; if it has, the store reads it afresh.
    async fn apply_known(&self, known: &JobRecord, t: &Transition)
        -> Result<JobRecord, ApplyError>;

    /// [`Store::apply_known`] for a runner's last write of a job (its outcome,
    /// or its return to the queue at shutdown), which also deletes the job's
    /// spent queue task once the write has landed. A store may do both in one
    /// commit.
    async fn apply_final(
        &self,
        known: &JobRecord,
        t: &Transition,
    ) -> Result<JobRecord, ApplyError> {
        let job = self.apply_known(known, t).await?;
        self.delete_task(known.id).await?;
        Ok(job)
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

    /// At start-up: jobs left `running` by a process that is gone go back to
    /// `queued` with the next attempt, or fail when that was their last.
    async fn recover_interrupted(&self) -> Result<Recovered, StoreError>;

    /// Queued jobs whose queue task is missing or finished, so the reconciler can
    /// push them again. With `startup`, a task still marked as fetched or running
    /// counts as stale too (the process that held it is gone).
    async fn queued_without_task(
        &self,
        startup: bool,
        older_than: Timestamp,
        limit: i64,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Removes the job's queue task: a stale one before pushing it again under the
    /// same id, or a spent one once the runner is done with the job.
    async fn delete_task(&self, id: JobId) -> Result<(), StoreError>;

    /// Deletes up to `limit` terminal jobs that finished before `before`, with
    /// their events and any queue task left; returns how many.
    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError>;

    /// How many jobs are queued, and when the oldest of them was created.
    async fn queue_stats(&self) -> Result<(i64, Option<Timestamp>), StoreError>;

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

    /// Jobs running on nodes whose lease ran out: the next attempt, or failed
    /// after their last. On SQLite one process runs everything, and start-up
    /// recovery covers it.
    async fn recover_expired(&self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }

    /// Which of these jobs have a cancel request stored (the periodic backup
    /// for a cancel notification that another node sent and this one missed).
    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError>;

    /// The feed's events after `after`, in feed order, at most `limit`.
    async fn feed_after(
        &self,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: i64,
    ) -> Result<Vec<FeedEvent>, StoreError>;

    /// The feed's current end: a feed that starts "from now" starts after it.
    async fn feed_head(&self) -> Result<FeedCursor, StoreError>;

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
