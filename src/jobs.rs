//! The jobs service: the only code that changes a job.
//!
//! Submit, the queue's claim (which starts jobs), progress, outcome (succeed,
//! fail, retry, requeue), cancel and recovery all go through [`Jobs`]. Each method does the whole change in one
//! place, the way mini-redis's `Db::set` stores a value and wakes its waiters
//! in the same function:
//!
//! 1. the store write (the job row and its event, in one transaction);
//! 2. the wake-up of this node's streams and feeds (the [`Hub`]);
//! 3. the wake-up of other nodes (the store's `announce`: on PostgreSQL a
//!    batched NOTIFY right after the commit; nobody to tell on SQLite);
//! 4. the cancel registry (a cancel fires the job's token where it runs here);
//! 5. the job metrics;
//! 6. for a job that became queued, the wake-up of the workers (this node's
//!    when the job is due, other nodes' through the store).
//!
//! HTTP handlers, the runner, the progress pump, uploads and the reconciler
//! call this; none of them writes a job or wakes the hub itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::CancelRegistry;
use crate::domain::{
    EventKind, FieldError, JobId, JobRecord, JobStatus, LeaseOp, LeaseTerms, StartedAtOnce,
    Submission, Timestamp, Transition,
};
use crate::frame::Frame;
use crate::hub::Hub;
use crate::kinds::Registry;
use crate::limits::SubmitRate;
use crate::queue::Queue;
use crate::store::{
    Applied, ApplyError, CancelOutcome, Claim, LeaseError, Leased, ListQuery, Recovered,
    RemoteClaim, Store, StoreError, Submitted,
};

/// Why a submission was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The tenant submitted more than `per_sec` jobs in the last second.
    #[error("more than {per_sec} submissions a second for this tenant")]
    RateLimited { per_sec: u32, retry_after: Duration },
    /// No kind of that name runs here.
    #[error("there is no job kind `{kind}`")]
    UnknownKind { kind: String, known: Vec<String> },
    /// The kind refused the input; pointers are relative to `input` (`/steps`).
    #[error("the input is invalid for kind `{kind}`")]
    InvalidInput {
        kind: String,
        errors: Vec<FieldError>,
    },
    /// The idempotency key was used before for a different request: that job.
    #[error("idempotency key already used for job {}", .0.id)]
    Conflict(Box<JobRecord>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a submission made: a new job, or the earlier one with the same
/// idempotency key and the same request.
#[derive(Debug)]
pub enum Accepted {
    Created(JobRecord),
    Existing(JobRecord),
}

/// See the module doc.
pub struct Jobs {
    store: Arc<dyn Store>,
    queue: Queue,
    hub: Arc<Hub>,
    cancels: Arc<CancelRegistry>,
    kinds: Arc<Registry>,
    submit_rate: SubmitRate,
    submit_rate_per_sec: u32,
    created: Created,
    remote: RemoteTerms,
}

/// The rules of remote jobs' leases, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RemoteTerms {
    pub lease: LeaseTerms,
    /// How long a worker has to confirm a cancel before herald ends the job
    /// itself: the larger of `HERALD_CANCEL_GRACE_SECS` and the lease, so a
    /// worker that heartbeats as asked always hears of it.
    pub cancel_grace: Duration,
}

impl Jobs {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        queue: Queue,
        hub: Arc<Hub>,
        cancels: Arc<CancelRegistry>,
        kinds: Arc<Registry>,
        submit_rate_per_sec: u32,
        created_ttl: Duration,
        remote: RemoteTerms,
    ) -> Arc<Jobs> {
        Arc::new(Jobs {
            store,
            queue,
            hub,
            cancels,
            kinds,
            submit_rate: SubmitRate::new(submit_rate_per_sec),
            submit_rate_per_sec,
            created: Created::new(created_ttl),
            remote,
        })
    }

    /// The lease rules of remote jobs.
    pub fn remote_terms(&self) -> &RemoteTerms {
        &self.remote
    }

    /// Takes one of the tenant's submissions for this second, or says how
    /// long to wait; every submission takes one before [`Jobs::submit`].
    pub fn admit(&self, tenant: &str) -> Result<(), SubmitError> {
        self.submit_rate
            .take(tenant)
            .map_err(|retry_after| SubmitError::RateLimited {
                per_sec: self.submit_rate_per_sec,
                retry_after,
            })
    }

    /// The kinds this herald runs.
    pub fn kinds(&self) -> &Registry {
        &self.kinds
    }

    /// Checks `sub`'s input against its kind, without storing anything.
    pub fn check(&self, sub: &Submission) -> Result<(), SubmitError> {
        let Some(kind) = self.kinds.get(&sub.kind) else {
            return Err(SubmitError::UnknownKind {
                kind: sub.kind.clone(),
                known: self.kinds.names().map(str::to_owned).collect(),
            });
        };
        kind.check(&sub.input)
            .map_err(|errors| SubmitError::InvalidInput {
                kind: sub.kind.clone(),
                errors,
            })
    }

    /// Checks and stores a job (its row is its place in the queue), then
    /// wakes the workers. The caller has
    /// taken the tenant's [`Jobs::admit`] first (an upload does so before it
    /// stores its file).
    #[tracing::instrument(skip_all, fields(kind = %sub.kind))]
    pub async fn submit(&self, tenant: &str, mut sub: Submission) -> Result<Accepted, SubmitError> {
        self.check(&sub)?;
        // The remote flag comes from the kind, and the job's id is chosen
        // here, so that its slot in the hub is open before any of its events
        // can be published (see `Hub::prime`).
        sub.remote = self.kinds.is_remote(&sub.kind);
        let id = *sub.job_id.get_or_insert_with(JobId::default);
        // A free slot here: the store writes the job started unless a due
        // job waits ahead of it, and it goes to the worker without a claim
        // (see `crate::queue`).
        let seat = (!sub.remote && self.store.starts_on_submit())
            .then(|| self.queue.seat())
            .flatten();
        sub.start = seat.is_some();
        self.hub.prime(id);
        let (job, started) = match self.store.submit(tenant, &sub).await? {
            Submitted::Created(job) => (job, None),
            Submitted::Started(s) => {
                let StartedAtOnce {
                    queued,
                    running,
                    start,
                } = *s;
                (queued, Some((running, start)))
            }
            Submitted::Existing(job) => return Ok(Accepted::Existing(job)),
            Submitted::Conflict(job) => return Err(SubmitError::Conflict(Box::new(job))),
        };
        metrics::counter!("herald_jobs_submitted_total", "kind" => job.kind.clone()).increment(1);
        self.created.insert(job.id, tenant);
        let created = job.created_event();
        self.hub.publish_created(job.id, Frame::of_new(&created));
        // Other nodes hear of the new job; this node's feeds see its `queued`
        // event with their next wake-up (its start follows as soon as a
        // worker is free). Waking every local feed for each submission as
        // well cost 5–8% of the jobs a feed-watched herald runs a second
        // (the shared harness, `--wait-feed`), each wake-up being a store read.
        self.store.announce_event(job.id, &created).await;
        crate::telemetry::applied(EventKind::Status, &job);
        tracing::info!(job_id = %job.id, kind = %job.kind, started = started.is_some(), "job submitted");
        match (started, seat) {
            // The answer is the job as accepted (queued), its stream goes on
            // with its start.
            (Some((running, start)), Some(seat)) => {
                self.hub.publish(job.id, Frame::of_new(&start));
                self.store.announce_event(job.id, &start).await;
                crate::telemetry::applied(start.kind, &running);
                seat.hand(running);
            }
            // The stored row is the queue entry: workers only need waking.
            _ => self.queued(&job).await,
        }
        Ok(Accepted::Created(job))
    }

    /// Whether this node created job `id` for `tenant` a moment ago: then
    /// the job is there and the tenant's, without a read (a client that
    /// submits and opens the job's stream at once, the common case, needs
    /// none). Only a moment: retention may delete a finished job after that.
    pub fn created_here_by(&self, id: JobId, tenant: &str) -> bool {
        self.created.by(id, tenant)
    }

    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.store.get(id).await
    }

    /// The job's items from `offset`, at most `limit`, as stored (the data
    /// of their `item` events).
    pub async fn items(
        &self,
        id: JobId,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.store.items(id, offset, limit).await
    }

    pub async fn list(&self, q: &ListQuery) -> Result<Vec<JobRecord>, StoreError> {
        self.store.list(q).await
    }

    /// The queue's claim: starts up to `limit` due queued jobs on this node
    /// (`queued` → `running`, each with its event) for the worker to run.
    pub async fn claim(&self, limit: usize) -> Result<Claim, StoreError> {
        let claim = self.store.claim(limit).await?;
        for applied in &claim.started {
            self.published(applied).await;
        }
        Ok(claim)
    }

    /// A remote worker's claim: starts up to `c.limit` due remote jobs for
    /// it, each with a lease (their `running` events go out as any job's).
    pub async fn claim_remote(&self, c: &RemoteClaim) -> Result<Vec<JobRecord>, StoreError> {
        let started = self.store.claim_remote(c).await?;
        for applied in &started {
            self.published(applied).await;
        }
        Ok(started.into_iter().map(|a| a.job).collect())
    }

    /// A change of a remote job under its lease: a worker's report, the
    /// sweep taking a job back, a cancel's deadline.
    pub async fn lease_op(&self, id: JobId, op: &LeaseOp) -> Result<Leased, LeaseError> {
        let leased = self.store.lease_op(id, op, &self.remote.lease).await?;
        for applied in &leased.applied {
            self.published(applied).await;
        }
        Ok(leased)
    }

    /// Running remote jobs over their lease or timeout (the sweep's list).
    pub async fn leases_over(&self, limit: i64) -> Result<Vec<JobId>, StoreError> {
        self.store.leases_over(Timestamp::now(), limit).await
    }

    /// Records a change of a running job, `known` being the job as its runner
    /// last saw it: a progress report, an item, or an attempt's outcome.
    pub async fn record(&self, known: &JobRecord, t: &Transition) -> Result<JobRecord, ApplyError> {
        let applied = self.store.apply_known(known, t).await?;
        self.published(&applied).await;
        Ok(applied.job)
    }

    /// [`Jobs::record`] for several changes in turn (the reports a runner
    /// has queued, and maybe its outcome), written together where the store
    /// can; answers the job as the last one left it.
    pub async fn record_all(
        &self,
        known: &JobRecord,
        ts: &[Transition],
    ) -> Result<JobRecord, ApplyError> {
        let applied = self.store.apply_known_all(known, ts).await?;
        for a in &applied {
            self.published(a).await;
        }
        Ok(applied
            .last()
            .map_or_else(|| known.clone(), |a| a.job.clone()))
    }

    /// A client's cancel: a queued job is `cancelled` at once, a running one
    /// gets `cancel_requested` and its token fires where it runs.
    #[tracing::instrument(skip_all, fields(job_id = %id))]
    pub async fn cancel(&self, id: JobId, reason: &str) -> Result<CancelOutcome, StoreError> {
        let outcome = self.store.request_cancel(id, reason).await?;
        match &outcome {
            CancelOutcome::CancelledNow(job) => {
                self.changed(EventKind::Cancelled, job).await;
                // It may sit in a retry pause on this node: cut that short too.
                self.cancels.cancel(id);
                tracing::info!("queued job cancelled");
            }
            CancelOutcome::Requested(job) if job.remote => {
                // Its worker hears of it in the answer to its next report,
                // and has until the deadline to confirm.
                let at = Timestamp::now().after(self.remote.cancel_grace);
                if let Err(e) = self.lease_op(id, &LeaseOp::CancelDeadline { at }).await {
                    // The lease's own expiry ends it `cancelled` instead.
                    tracing::warn!(error = %e, "could not set the remote worker's cancel deadline");
                }
                tracing::info!(
                    worker = job.worker.as_deref().unwrap_or_default(),
                    "cancel requested for a job a remote worker runs"
                );
            }
            CancelOutcome::Requested(_) => {
                let here = self.cancels.cancel(id);
                tracing::info!(running_here = here, "cancel requested for a running job");
            }
            CancelOutcome::NotFound | CancelOutcome::Terminal(_) => {}
        }
        Ok(outcome)
    }

    /// At start-up: the jobs a stopped process left running go back to the
    /// queue as their next attempt, or fail after their last.
    pub async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let recovered = self.store.recover_interrupted().await?;
        self.recovered(&recovered).await;
        Ok(recovered)
    }

    /// The same for jobs of nodes whose lease ran out.
    pub async fn recover_expired(&self) -> Result<Recovered, StoreError> {
        let recovered = self.store.recover_expired().await?;
        self.recovered(&recovered).await;
        Ok(recovered)
    }

    async fn recovered(&self, recovered: &Recovered) {
        for job in &recovered.requeued {
            self.changed(EventKind::Status, job).await;
        }
        for job in &recovered.failed {
            self.changed(EventKind::Failed, job).await;
        }
    }

    /// After a committed change of `job` that appended an `event`: this
    /// node's streams and feeds look again, other nodes are told, and the
    /// change is counted.
    async fn changed(&self, event: EventKind, job: &JobRecord) {
        self.hub.notify(job.id);
        self.store.announce(job.id).await;
        self.after_notify(event, job).await;
    }

    /// What follows a change once this node's streams are woken and other
    /// nodes told.
    async fn after_notify(&self, event: EventKind, job: &JobRecord) {
        crate::telemetry::applied(event, job);
        if job.status == JobStatus::Queued {
            self.queued(job).await;
        }
    }

    /// [`Jobs::changed`] for a change whose event is known: this node's
    /// caught-up streams of the job get the event without reading the store.
    async fn published(&self, applied: &Applied) {
        self.hub
            .publish(applied.job.id, Frame::of_new(&applied.event));
        self.store
            .announce_event(applied.job.id, &applied.event)
            .await;
        self.after_notify(applied.event.kind, &applied.job).await;
    }

    /// `job` is queued (new, retried, put back): this node's worker claims
    /// it when it is due, and other nodes' workers are told.
    async fn queued(&self, job: &JobRecord) {
        self.queue.wake_at(job.run_at);
        self.store.announce_queued().await;
    }
}

/// The jobs this node created in the last `ttl` (at most [`Created::MAX`]),
/// with their tenants.
struct Created {
    ttl: Duration,
    recent: std::sync::Mutex<CreatedJobs>,
}

#[derive(Default)]
struct CreatedJobs {
    tenants: std::collections::HashMap<JobId, (String, Instant)>,
    /// Oldest first, for eviction.
    order: std::collections::VecDeque<JobId>,
}

impl Created {
    /// Enough for every job a busy node creates in a few seconds.
    const MAX: usize = 8192;

    fn new(ttl: Duration) -> Self {
        Created {
            ttl,
            recent: std::sync::Mutex::new(CreatedJobs::default()),
        }
    }

    fn insert(&self, id: JobId, tenant: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut recent = self.recent.lock().expect("created jobs poisoned");
        while let Some(&oldest) = recent.order.front() {
            let expired = recent
                .tenants
                .get(&oldest)
                .is_none_or(|(_, at)| now.duration_since(*at) >= self.ttl);
            if !expired && recent.order.len() < Self::MAX {
                break;
            }
            recent.order.pop_front();
            recent.tenants.remove(&oldest);
        }
        recent.tenants.insert(id, (tenant.to_owned(), now));
        recent.order.push_back(id);
    }

    fn by(&self, id: JobId, tenant: &str) -> bool {
        let recent = self.recent.lock().expect("created jobs poisoned");
        recent
            .tenants
            .get(&id)
            .is_some_and(|(t, at)| t == tenant && at.elapsed() < self.ttl)
    }
}
