//! What a job handler gets: its job's id, attempt and input; progress and
//! items; its checkpoint; its cancellation token; the named downstreams.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::call::{Caller, Downstream, DEFAULT_RETRIES};
use super::JobFailure;
use crate::domain::{JobId, JobRecord, Progress};
use crate::store::Store;

/// Where a handler's reports go (the runner's pump, which writes them in
/// call order and coalesces ordinary progress).
pub(crate) trait Report: Send + Sync {
    /// Queues `progress`; a `kept` report resolves once it is persisted.
    fn progress(&self, progress: Progress, kept: bool) -> BoxFuture<'_, Result<(), JobFailure>>;

    /// Appends one item (its JSON); resolves once it is persisted.
    fn item(&self, item: String) -> BoxFuture<'_, Result<(), JobFailure>>;
}

/// The bounds on a job's items (`HERALD_MAX_ITEM_BYTES`, `HERALD_MAX_ITEMS_PER_JOB`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_item_bytes: usize,
    pub(crate) max_items: i64,
}

/// What every handler's context shares: the store (checkpoints), the
/// downstreams, the limits.
pub(crate) struct Services {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) caller: Arc<Caller>,
    pub(crate) limits: Limits,
}

/// One attempt's view of its job. Handed to [`JobKind::run`](super::JobKind::run).
pub struct JobContext {
    pub job_id: JobId,
    /// The input as submitted (the typed one is `run`'s argument).
    pub input: Value,
    /// 1 for the first attempt.
    pub attempt: i32,
    token: CancellationToken,
    report: Arc<dyn Report>,
    services: Arc<Services>,
    items: AtomicI64,
}

impl JobContext {
    pub(crate) fn new(
        job: &JobRecord,
        token: CancellationToken,
        report: Arc<dyn Report>,
        services: Arc<Services>,
    ) -> Self {
        JobContext {
            job_id: job.id,
            input: job.input.clone(),
            attempt: job.attempt,
            token,
            report,
            services,
            items: AtomicI64::new(job.items_count),
        }
    }

    /// Completes when the job is cancelled or the process stops its jobs.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Reports progress: persisted as a `progress` event and pushed to every
    /// stream of the job. `percent` must lie in 0..=100. Reports closer together
    /// than `HERALD_PROGRESS_MIN_INTERVAL_MS` are coalesced: the latest wins.
    pub async fn progress(
        &self,
        percent: Option<f64>,
        stage: Option<&str>,
        message: Option<&str>,
        data: Option<Value>,
    ) -> Result<(), JobFailure> {
        let p = build(percent, stage, message, data)?;
        self.report.progress(p, false).await
    }

    /// Like [`Self::progress`], but this report is never coalesced away or
    /// delayed, and it is persisted when this returns (a per-source completion,
    /// say, that a watcher must see).
    pub async fn progress_kept(
        &self,
        percent: Option<f64>,
        stage: Option<&str>,
        message: Option<&str>,
        data: Option<Value>,
    ) -> Result<(), JobFailure> {
        let p = build(percent, stage, message, data)?;
        self.report.progress(p, true).await
    }

    /// Appends one item to the job's output: an `item` event with the next
    /// index, persisted when this returns, never coalesced. Fails
    /// permanently with `item_too_large` over `HERALD_MAX_ITEM_BYTES`, and
    /// with `too_many_items` past `HERALD_MAX_ITEMS_PER_JOB`.
    pub async fn item(&self, item: impl Serialize) -> Result<(), JobFailure> {
        let json = serialize_item(&item)?;
        self.append(json).await
    }

    /// Appends several items in order, each as [`Self::item`] does. They
    /// are serialized before the first is appended (so the returned future
    /// does not hold `items`).
    pub fn items<T: Serialize>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> impl std::future::Future<Output = Result<(), JobFailure>> + Send + '_ {
        let serialized: Result<Vec<String>, JobFailure> = items
            .into_iter()
            .map(|item| serialize_item(&item))
            .collect();
        async move {
            for json in serialized? {
                self.append(json).await?;
            }
            Ok(())
        }
    }

    async fn append(&self, json: String) -> Result<(), JobFailure> {
        let limits = self.services.limits;
        if json.len() > limits.max_item_bytes {
            return Err(JobFailure::permanent(
                "item_too_large",
                format!(
                    "the item is {} bytes of JSON, over the limit of {} (HERALD_MAX_ITEM_BYTES)",
                    json.len(),
                    limits.max_item_bytes
                ),
            ));
        }
        if self.items_count() >= limits.max_items {
            return Err(JobFailure::permanent(
                "too_many_items",
                format!(
                    "the job already has {} items, the most one job may append (HERALD_MAX_ITEMS_PER_JOB)",
                    limits.max_items
                ),
            ));
        }
        self.report.item(json).await?;
        self.items.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many items the job has: those earlier attempts appended, and
    /// this one's. An attempt resumes after them.
    pub fn items_count(&self) -> i64 {
        self.items.load(Ordering::SeqCst)
    }

    /// The checkpoint an earlier attempt saved (or this one), if any.
    pub async fn checkpoint<T: DeserializeOwned>(&self) -> Result<Option<T>, JobFailure> {
        let Some(text) = self
            .services
            .store
            .checkpoint(self.job_id)
            .await
            .map_err(store_failure)?
        else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            JobFailure::permanent(
                "bad_checkpoint",
                format!("the saved checkpoint does not fit the type asked for: {e}"),
            )
        })
    }

    /// Saves where the work stands, so a later attempt (after a crash or a
    /// retry) resumes from there.
    pub async fn save_checkpoint(&self, checkpoint: &impl Serialize) -> Result<(), JobFailure> {
        let text = serde_json::to_string(checkpoint).map_err(|e| {
            JobFailure::permanent(
                "bad_checkpoint",
                format!("the checkpoint cannot be written as JSON: {e}"),
            )
        })?;
        self.services
            .store
            .set_checkpoint(self.job_id, &text)
            .await
            .map_err(store_failure)
    }

    /// The downstream configured under `name` (`HERALD_DOWNSTREAMS`), to call
    /// with the same guard, timeouts and retries as `aggregate`. An unknown
    /// name is a permanent `unknown_downstream` failure.
    pub fn downstream(&self, name: &str) -> Result<Downstream, JobFailure> {
        let caller = &self.services.caller;
        if caller.downstreams.get(name).is_none() {
            let known: Vec<&str> = caller.downstreams.names().collect();
            return Err(JobFailure::permanent(
                "unknown_downstream",
                format!(
                    "no downstream is named `{name}` (configured: {}); add it to HERALD_DOWNSTREAMS",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            ));
        }
        Ok(Downstream {
            caller: caller.clone(),
            name: name.to_owned(),
            retries: DEFAULT_RETRIES,
            timeout: None,
        })
    }
}

fn serialize_item(item: &impl Serialize) -> Result<String, JobFailure> {
    serde_json::to_string(item).map_err(|e| {
        JobFailure::permanent(
            "bad_item",
            format!("the item cannot be written as JSON: {e}"),
        )
    })
}

fn store_failure(e: crate::store::StoreError) -> JobFailure {
    JobFailure::retryable(
        "store_unavailable",
        format!("the store did not answer: {e}"),
    )
}

fn build(
    percent: Option<f64>,
    stage: Option<&str>,
    message: Option<&str>,
    data: Option<Value>,
) -> Result<Progress, JobFailure> {
    Progress::new(
        percent,
        stage.map(str::to_owned),
        message.map(str::to_owned),
        data,
    )
    .map_err(|e| JobFailure::permanent("bad_progress", e.to_string()))
}
