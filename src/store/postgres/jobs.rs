//! Jobs and their events.

use async_trait::async_trait;
use uuid::Uuid;

use super::batch::{Inserted, NewJob};
use super::transitions::{lock_job, write_transition};
use super::PgStore;
use crate::domain::{
    CancelDecision, EventSeq, JobId, JobRecord, StartedAtOnce, Submission, Timestamp, Transition,
};
use crate::store::row::{EventRow, JobRow};
use crate::store::{
    Applied, ApplyError, CancelOutcome, JobStore, ListQuery, StoreError, StoredEvent, Submitted,
};

// The reads below are the ones requests and streams make; each starts from
// an index on what it asks for, whatever the size of the history
// (`plans.rs` checks their query plans). A job by id is read in batches
// (`batch.rs`, [`super::batch::JOBS_BY_IDS`]).

/// The tenant's job with idempotency key `$2` (its unique index).
pub(crate) const JOB_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = $1 AND idempotency_key = $2"
);

/// A page of a tenant's jobs, newest first, before the job `$2` (the max
/// uuid for the first page), at most `$3`; one text per filter, so that each
/// reads the index whose prefix is that filter. With one text of
/// `($4::text IS NULL OR status = $4)` terms, a plan made for no filter
/// served every filter, and a rare status walked the tenant's history.
/// `ORDER BY herald_jobs.id`, not `id`: that name is first the selected
/// `id::text`, and ordering by the text read and sorted all of the tenant's
/// jobs for every page.
pub(crate) const LIST_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = $1 AND id < $2 ORDER BY herald_jobs.id DESC LIMIT $3"
);
/// [`LIST_JOBS`] in status `$4`.
pub(crate) const LIST_JOBS_BY_STATUS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = $1 AND status = $4 AND id < $2 ORDER BY herald_jobs.id DESC LIMIT $3"
);
/// [`LIST_JOBS`] of kind `$4`.
pub(crate) const LIST_JOBS_BY_KIND: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = $1 AND kind = $4 AND id < $2 ORDER BY herald_jobs.id DESC LIMIT $3"
);
/// [`LIST_JOBS`] in status `$4` and of kind `$5`.
pub(crate) const LIST_JOBS_BY_STATUS_KIND: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM herald_jobs WHERE tenant = $1 AND status = $4 AND kind = $5 AND id < $2 \
     ORDER BY herald_jobs.id DESC LIMIT $3"
);

/// The list query for `q`'s filters: bind the tenant, the cursor and the
/// limit, then the status and the kind when `q` has them.
pub(crate) fn list_sql(q: &ListQuery) -> &'static str {
    match (q.status.is_some(), q.kind.is_some()) {
        (false, false) => LIST_JOBS,
        (true, false) => LIST_JOBS_BY_STATUS,
        (false, true) => LIST_JOBS_BY_KIND,
        (true, true) => LIST_JOBS_BY_STATUS_KIND,
    }
}

/// A job's events after seq `$2`, at most `$3` (the (job_id, seq) key).
pub(crate) const EVENTS_AFTER: &str = "SELECT seq, event, data, at FROM herald_job_events \
     WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// A job's items from index `$2`, at most `$3`. The partial index on item
/// events keeps the offset's skipping to this job's items.
pub(crate) const ITEMS: &str = "SELECT data FROM herald_job_events \
     WHERE job_id = $1 AND event = 'item' ORDER BY seq LIMIT $3 OFFSET $2";

/// Which of the jobs `$1` have a cancel request stored (each by its key).
pub(crate) const CANCEL_REQUESTED_AMONG: &str = "SELECT id FROM herald_jobs \
     WHERE id = ANY($1) AND cancel_requested AND status IN ('queued', 'running')";

#[async_trait]
impl JobStore for PgStore {
    /// A node with a worker stores a job started when the worker has a
    /// free slot for it, as SQLite does, unless a due job waits in the
    /// shared queue (`due_job_waits!` in `batch.rs`): the job skips
    /// the claim (its transaction, and the row's second write), and other
    /// nodes never see it queued.
    fn starts_on_submit(&self) -> bool {
        true
    }

    async fn submit(&self, tenant: &str, sub: &Submission) -> Result<Submitted, StoreError> {
        let now = Timestamp::now();
        let job = sub.new_job(tenant, now);
        let first = job.created_event();
        // The job and its first event (and, started, its start), group-
        // committed with other new jobs, or nothing at all when the
        // idempotency key is taken (then the earlier job answers).
        let (new, started) = if sub.start && !sub.remote {
            let (running, start) = job.apply(&Transition::Start, now).map_err(|refused| {
                StoreError::Corrupt(format!("a new job {} cannot start: {refused}", job.id))
            })?;
            let new = NewJob::started(&job, first, &running, start.clone());
            (new, Some((running, start)))
        } else {
            (NewJob::new(&job, first), None)
        };
        match (self.submits.run(new).await?, started) {
            (Inserted::Started, Some((running, start))) => {
                return Ok(Submitted::Started(Box::new(StartedAtOnce {
                    queued: job,
                    running,
                    start,
                })));
            }
            (Inserted::Started, None) => {
                return Err(StoreError::WriteFailed(format!(
                    "job {} was stored started without being asked to",
                    job.id
                )));
            }
            (Inserted::Queued, _) => return Ok(Submitted::Created(job)),
            (Inserted::No, _) => {}
        }
        let key = sub.idempotency_key.as_deref().ok_or_else(|| {
            StoreError::WriteFailed("the job insert wrote nothing without a conflict".to_owned())
        })?;
        let row: JobRow = sqlx::query_as(JOB_BY_IDEMPOTENCY_KEY)
            .bind(tenant)
            .bind(key)
            .fetch_one(&self.pools.main)
            .await?;
        Ok(sub.resubmitted(JobRecord::try_from(row)?))
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = self.reads.run(id).await?;
        row.map(JobRecord::try_from).transpose()
    }

    /// Not a prepared statement: planned for its values at every run. A
    /// generic plan, which PostgreSQL may settle on for a prepared statement
    /// after five runs, cannot know whether the tenant (or status, or kind)
    /// is rare: it walked the primary key backwards and filtered by tenant,
    /// which for a small tenant reads everyone's history.
    async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        let mut query = sqlx::query_as(list_sql(q))
            .persistent(false)
            .bind(&q.tenant)
            .bind(q.before.map_or(Uuid::max(), |id| id.0))
            .bind(q.limit);
        if let Some(status) = q.status {
            query = query.bind(status.as_str());
        }
        if let Some(kind) = &q.kind {
            query = query.bind(kind);
        }
        let rows: Vec<JobRow> = query.fetch_all(&self.pools.main).await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn apply(&self, id: JobId, t: &Transition) -> Result<JobRecord, ApplyError> {
        let job = self.apply_optimistic(id, t).await?;
        Ok(job)
    }

    async fn apply_known(&self, known: &JobRecord, t: &Transition) -> Result<Applied, ApplyError> {
        self.apply_known_then(known, t).await
    }

    /// One write, all or none, while the job is as known (a runner's last
    /// reports and its outcome cost one row update and one commit). If it
    /// moved on, or one of them does not apply to it, each in turn as
    /// [`JobStore::apply_known`] (which then reads it afresh).
    async fn apply_known_all(
        &self,
        known: &JobRecord,
        ts: &[Transition],
    ) -> Result<Vec<Applied>, ApplyError> {
        if ts.len() > 1 {
            if let Some(applied) = self.apply_known_at_once(known, ts).await? {
                return Ok(applied);
            }
        }
        crate::store::traits::apply_known_in_turn(self, known, ts).await
    }

    async fn request_cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.pools.main.begin().await?;
        let Some(job) = lock_job(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(CancelOutcome::NotFound);
        };
        let outcome = match job.cancel(reason, Timestamp::now()) {
            CancelDecision::Terminal => {
                // Ended explicitly: a dropped transaction that holds a row lock
                // stays open on its pooled connection, and an open transaction
                // holds the feed back (see `feed_after`).
                tx.rollback().await?;
                return Ok(CancelOutcome::Terminal(job));
            }
            CancelDecision::CancelNow(next, ev) => {
                write_transition(&mut *tx, &self.node.id, &next, &ev).await?;
                tx.commit().await?;
                return Ok(CancelOutcome::CancelledNow(next));
            }
            CancelDecision::Request(requested) => {
                // The node running the job hears the notify and fires its token.
                sqlx::query(
                    "UPDATE herald_jobs SET cancel_requested = true, updated_at = $2 WHERE id = $1",
                )
                .bind(id.0)
                .bind(Timestamp::now().0)
                .execute(&mut *tx)
                .await?;
                sqlx::query("SELECT pg_notify('herald_cancel', $1)")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Requested(requested)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn events_after(
        &self,
        id: JobId,
        after: EventSeq,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(EVENTS_AFTER)
            .bind(id.0)
            .bind(after.0)
            .bind(limit)
            .fetch_all(&self.pools.main)
            .await?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn items(&self, id: JobId, offset: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(ITEMS)
            .bind(id.0)
            .bind(offset)
            .bind(limit)
            .fetch_all(&self.pools.main)
            .await?)
    }

    async fn cancel_requested_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let found: Vec<Uuid> = sqlx::query_scalar(CANCEL_REQUESTED_AMONG)
            .bind(&ids)
            .fetch_all(&self.pools.main)
            .await?;
        Ok(found.into_iter().map(JobId).collect())
    }

    async fn purge_finished(&self, before: Timestamp, limit: i64) -> Result<usize, StoreError> {
        // SKIP LOCKED: two nodes sweeping at once take different rows.
        let mut tx = self.pools.main.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM herald_jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
             AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(before.0)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        sqlx::query("DELETE FROM herald_job_events WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM herald_upload_chunks WHERE job_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM herald_jobs WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::plans::TestDatabase;
    use super::super::{connect, migrate, NodeIdentity, PgStore};
    use crate::store::conformance;

    /// A store on a fresh database, as node `node-a`; None (skipped) without
    /// `HERALD_TEST_POSTGRES_URL`.
    async fn store() -> Option<(TestDatabase, PgStore)> {
        let db = TestDatabase::create().await?;
        let pools = connect(&db.url, 4, "node-a").await.expect("connect");
        migrate(&pools.main).await.expect("migrate");
        let node = NodeIdentity {
            id: "node-a".to_owned(),
            role: "all",
            lease: Duration::from_secs(30),
        };
        Some((db, PgStore::new(pools, node)))
    }

    /// As on SQLite; and the job started at its submission is recorded as
    /// this node's, which is how recovery finds it if the node dies.
    #[tokio::test]
    async fn a_submission_starts_its_job_only_while_no_due_job_waits() {
        let Some((_db, store)) = store().await else {
            return;
        };
        let started = conformance::submission_starts_only_while_no_due_job_waits(&store).await;
        let node_id: Option<String> =
            sqlx::query_scalar("SELECT node_id FROM herald_jobs WHERE id = $1")
                .bind(started.id.0)
                .fetch_one(&store.pools().main)
                .await
                .expect("the job's node");
        assert_eq!(node_id.as_deref(), Some("node-a"));
    }

    #[tokio::test]
    async fn a_claim_says_whether_due_jobs_are_left() {
        let Some((_db, store)) = store().await else {
            return;
        };
        conformance::a_claim_says_whether_due_jobs_are_left(&store).await;
    }

    /// Several transitions are one write here (one row update, their
    /// events in order); the outcome is the same as one by one.
    #[tokio::test]
    async fn last_reports_and_outcome_land_in_order() {
        let Some((_db, store)) = store().await else {
            return;
        };
        conformance::last_reports_and_outcome_land_in_order(&store).await;
    }
}
