//! Remote workers: kinds run by processes outside herald, in any language,
//! over HTTP (DESIGN.md, "Remote workers"). For clients nothing changes; a
//! worker claims jobs with a long poll and reports under a lease.
//!
//! - `keys`: worker keys, apart from tenants' credentials
//! - `requests`: the worker API's bodies, checked field by field
//! - [`RemoteWorkers`]: the long-polling claim, reports (with progress
//!   coalesced as a handler's is), and the lease sweep that takes back jobs
//!   whose worker went quiet, outlived `timeout_secs`, or ignored a cancel
//!
//! Remote jobs live in the job table like every job: submitted, queued,
//! streamed and cancelled the same way; only a worker's claim takes them
//! (`herald_jobs_ready_remote`), and while they run their lease alone
//! decides what happens to them (no node's restart or shutdown requeues
//! them). Every change goes through the jobs service, so streams, feeds,
//! other nodes and metrics hear of it as of any job's.

pub mod keys;
pub mod requests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::domain::{JobId, JobRecord, LeaseOp, LeaseRefused, Progress, Report};
use crate::jobs::Jobs;
use crate::queue::QueueWaker;
use crate::store::{LeaseError, Leased, RemoteClaim, StoreError};
pub use keys::{WorkerKeys, WorkerPrincipal};
pub use requests::{parse_report, ClaimRequest};

/// See the module doc.
pub struct RemoteWorkers {
    jobs: Arc<Jobs>,
    waker: QueueWaker,
    kinds: Vec<String>,
    /// Non-kept progress reports per job, at most one write per interval.
    progress: Coalescer,
    /// Long polls end early when the server stops.
    stopping: CancellationToken,
}

/// Why a claim took nothing.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The worker's key is limited to other kinds.
    #[error("this worker key may not claim kind `{0}`; ask for the kinds it is limited to")]
    KindNotAllowed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A long poll that is open, counted for the metrics.
struct OpenPoll;

impl OpenPoll {
    fn open() -> OpenPoll {
        metrics::gauge!("herald_worker_long_polls").increment(1.0);
        OpenPoll
    }
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        metrics::gauge!("herald_worker_long_polls").decrement(1.0);
    }
}

/// How often a waiting claim looks again without a wake-up: a retry's
/// backoff that ends on another node wakes nobody here.
const BACKSTOP: Duration = Duration::from_secs(1);

impl RemoteWorkers {
    pub fn new(
        jobs: Arc<Jobs>,
        waker: QueueWaker,
        kinds: Vec<String>,
        progress_interval: Duration,
        stopping: CancellationToken,
    ) -> RemoteWorkers {
        RemoteWorkers {
            jobs,
            waker,
            kinds,
            progress: Coalescer::new(progress_interval),
            stopping,
        }
    }

    /// The kinds remote workers run (`HERALD_REMOTE_KINDS`).
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Claims up to `req.max_jobs` jobs for `worker`, waiting up to
    /// `req.wait_secs` for one to come (answering as soon as one is there).
    #[tracing::instrument(skip_all, fields(worker = %worker.name, worker_id = %req.worker_id))]
    pub async fn claim(
        &self,
        worker: &WorkerPrincipal,
        req: &ClaimRequest,
    ) -> Result<Vec<JobRecord>, ClaimError> {
        if let Some(allowed) = &worker.kinds {
            if let Some(k) = req.kinds.iter().find(|k| !allowed.contains(*k)) {
                return Err(ClaimError::KindNotAllowed(k.clone()));
            }
        }
        let claim = RemoteClaim {
            kinds: req.kinds.clone(),
            tenants: worker.tenants.clone(),
            worker: req.worker_id.clone(),
            limit: req.max_jobs,
            lease_for: self.jobs.remote_terms().lease.lease_for,
        };
        let _open = OpenPoll::open();
        let deadline = Instant::now() + Duration::from_secs(req.wait_secs);
        loop {
            // Registered before the claim: a job queued while it runs wakes
            // the wait below.
            let woken = self.waker.remote().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let jobs = self.jobs.claim_remote(&claim).await?;
            if !jobs.is_empty() {
                metrics::counter!("herald_worker_claims_total").increment(jobs.len() as u64);
                for job in &jobs {
                    tracing::info!(job_id = %job.id, kind = %job.kind, attempt = job.attempt,
                        "remote worker claimed a job");
                }
                return Ok(jobs);
            }
            let now = Instant::now();
            if now >= deadline || self.stopping.is_cancelled() {
                return Ok(jobs);
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep((deadline - now).min(BACKSTOP)) => {}
                _ = self.stopping.cancelled() => {}
            }
        }
    }

    /// A worker's report on job `id` under `lease`. A progress report that
    /// is not `keep` is coalesced: at most one is written per interval (the
    /// last one wins), and one that waits only extends the lease now.
    #[tracing::instrument(skip_all, fields(job_id = %id, report = report.name()))]
    pub async fn report(
        &self,
        id: JobId,
        lease: String,
        report: Report,
        keep: bool,
    ) -> Result<Leased, LeaseError> {
        metrics::counter!("herald_worker_reports_total", "report" => report.name()).increment(1);
        let result = match report {
            Report::Progress(p) if !keep => self.progress(id, lease, p).await,
            Report::Complete(_) | Report::Fail { .. } | Report::Cancelled | Report::Release => {
                // What waits goes before the outcome, as a handler's does.
                if let Some((lease, p)) = self.progress.take(id) {
                    let op = LeaseOp::Report {
                        lease,
                        report: Report::Progress(p),
                    };
                    if let Err(e) = self.jobs.lease_op(id, &op).await {
                        tracing::debug!(error = %e, "a coalesced progress report was not written");
                    }
                }
                self.op(id, lease, report).await
            }
            other => self.op(id, lease, other).await,
        };
        if let Err(LeaseError::Refused(LeaseRefused::LeaseLost)) = &result {
            self.progress.take(id);
            tracing::info!("a report came with a lease that is not the job's");
        }
        result
    }

    async fn op(&self, id: JobId, lease: String, report: Report) -> Result<Leased, LeaseError> {
        self.jobs
            .lease_op(id, &LeaseOp::Report { lease, report })
            .await
    }

    async fn progress(&self, id: JobId, lease: String, p: Progress) -> Result<Leased, LeaseError> {
        match self.progress.offer(id, &lease, p) {
            Offer::WriteNow(p) => self.op(id, lease, Report::Progress(p)).await,
            Offer::Wait { flush_at } => {
                if let Some(at) = flush_at {
                    self.flush_later(id, at);
                }
                self.op(id, lease, Report::Heartbeat).await
            }
        }
    }

    /// Writes the job's waiting progress report at `at`.
    fn flush_later(&self, id: JobId, at: Instant) {
        let jobs = self.jobs.clone();
        let progress = self.progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            if let Some((lease, p)) = progress.flushed(id) {
                let op = LeaseOp::Report {
                    lease,
                    report: Report::Progress(p),
                };
                if let Err(e) = jobs.lease_op(id, &op).await {
                    tracing::debug!(job_id = %id, error = %e,
                        "a coalesced progress report was not written");
                }
            }
        });
    }

    /// The lease sweep, every `every` until `stop`: running remote jobs
    /// whose lease ran out go back to the queue as their next attempt
    /// (`worker_lost`), those past `timeout_secs` fail the attempt
    /// (`timeout`), and those whose cancel went unanswered end `cancelled`.
    /// Any node may sweep: each take-back is decided on the locked row.
    pub async fn sweep(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep_once().await {
                crate::telemetry::store_error();
                tracing::warn!(error = %e, "the remote lease sweep failed; trying again at its next round");
            }
            self.progress.prune();
        }
    }

    /// One round of [`RemoteWorkers::sweep`]; answers how many jobs it took back.
    pub async fn sweep_once(&self) -> Result<usize, StoreError> {
        let mut taken = 0;
        for id in self.jobs.leases_over(500).await? {
            match self.jobs.lease_op(id, &LeaseOp::TakeBack).await {
                Ok(leased) if !leased.applied.is_empty() => {
                    taken += 1;
                    self.progress.take(id);
                    metrics::counter!("herald_worker_leases_lost_total").increment(1);
                    tracing::warn!(job_id = %id, status = %leased.job.status,
                        attempt = leased.job.attempt,
                        error = leased.job.error.as_ref().map(|e| e.code.as_str()).unwrap_or("cancelled"),
                        "took a job back from its remote worker");
                }
                Ok(_) | Err(LeaseError::NotFound) | Err(LeaseError::Refused(_)) => {}
                Err(LeaseError::Store(e)) => return Err(e),
            }
        }
        Ok(taken)
    }
}

/// What the coalescer says about a progress report.
enum Offer {
    /// No report was written in the last interval: write this one.
    WriteNow(Progress),
    /// It waits (replacing any that waited); `flush_at`: when to write it,
    /// if no write is scheduled yet.
    Wait { flush_at: Option<Instant> },
}

/// Per job: when its last progress report was written, and the one waiting.
#[derive(Clone)]
struct Coalescer {
    interval: Duration,
    jobs: Arc<Mutex<HashMap<JobId, Coalesced>>>,
}

struct Coalesced {
    written_at: Instant,
    waiting: Option<(String, Progress)>,
    scheduled: bool,
}

impl Coalescer {
    fn new(interval: Duration) -> Coalescer {
        Coalescer {
            interval,
            jobs: Arc::default(),
        }
    }

    fn offer(&self, id: JobId, lease: &str, p: Progress) -> Offer {
        let now = Instant::now();
        let mut jobs = self.jobs.lock().expect("coalescer poisoned");
        let entry = jobs.entry(id).or_insert(Coalesced {
            written_at: now - self.interval,
            waiting: None,
            scheduled: false,
        });
        if entry.waiting.is_none() && now >= entry.written_at + self.interval {
            entry.written_at = now;
            return Offer::WriteNow(p);
        }
        entry.waiting = Some((lease.to_owned(), p));
        let flush_at = (!entry.scheduled).then(|| entry.written_at + self.interval);
        entry.scheduled = true;
        Offer::Wait { flush_at }
    }

    /// The report that waited, now that its time has come.
    fn flushed(&self, id: JobId) -> Option<(String, Progress)> {
        let mut jobs = self.jobs.lock().expect("coalescer poisoned");
        let entry = jobs.get_mut(&id)?;
        entry.scheduled = false;
        entry.written_at = Instant::now();
        entry.waiting.take()
    }

    /// The report that waits, taken out (an outcome goes after it), and the
    /// job forgotten.
    fn take(&self, id: JobId) -> Option<(String, Progress)> {
        let mut jobs = self.jobs.lock().expect("coalescer poisoned");
        jobs.remove(&id).and_then(|e| e.waiting)
    }

    /// Forgets jobs that have reported nothing for a minute.
    fn prune(&self) {
        let now = Instant::now();
        let mut jobs = self.jobs.lock().expect("coalescer poisoned");
        jobs.retain(|_, e| {
            e.scheduled || now.duration_since(e.written_at) < Duration::from_secs(60)
        });
    }
}
