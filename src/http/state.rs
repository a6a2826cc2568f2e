//! What request handlers share. It lives with the web layer, the only code
//! that uses it; handlers take from it what they need.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::limits::StreamLimit;
use crate::remote::{RemoteWorkers, WorkerKeys};
use crate::store::Store;
use crate::stream::{StreamCounter, StreamSettings};
use crate::uploads::Uploads;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Every change to a job goes through here.
    pub jobs: Arc<Jobs>,
    pub uploads: Arc<Uploads>,
    /// Reads of events and the feed (streams), readiness.
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub cancels: Arc<CancelRegistry>,
    pub config: Arc<Config>,
    /// Set at the start of shutdown: /readyz answers 503.
    pub draining: Arc<AtomicBool>,
    /// Fires when serving stops (after the drain delay): streams end.
    pub serving_stop: CancellationToken,
    pub stream_settings: StreamSettings,
    /// Open event streams.
    pub streams: Arc<StreamCounter>,
    /// Open multiplexed feeds.
    pub feeds: Arc<StreamCounter>,
    pub auth: Arc<Auth>,
    pub stream_limit: Arc<StreamLimit>,
    /// Waiting long-polls of the event log's JSON pages, per tenant (a count
    /// of their own, with the streams' maximum).
    pub long_polls: Arc<StreamLimit>,
    /// The worker API's claims, reports and lease sweep.
    pub remote: Arc<RemoteWorkers>,
    pub worker_keys: Arc<WorkerKeys>,
}
