//! Builds the application (store, queue, workers, HTTP) and runs it until the
//! shutdown token fires, then drains in the order DESIGN.md gives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use poem::EndpointExt;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthMode};
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{StreamLimit, SubmitRate};
use crate::store::sqlite::{self, SqliteStore};
use crate::store::Store;
use crate::stream::{StreamCounter, StreamSettings};
use crate::worker::queue::{Queue, Wakeups};
use crate::worker::reconcile::Reconciler;
use crate::worker::runner::{Runner, RunnerConfig};
use crate::worker::{registry, Registry};

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub hub: Arc<Hub>,
    pub kinds: Arc<Registry>,
    pub cancels: Arc<CancelRegistry>,
    pub config: Arc<Config>,
    /// Set at the start of shutdown: /readyz answers 503.
    pub draining: Arc<AtomicBool>,
    /// Fires when serving stops (after the drain delay): streams end.
    pub serving_stop: CancellationToken,
    pub stream_settings: StreamSettings,
    /// Open event streams.
    pub streams: Arc<StreamCounter>,
    pub auth: Arc<Auth>,
    pub stream_limit: Arc<StreamLimit>,
    pub submit_rate: Arc<SubmitRate>,
}

pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    state: AppState,
    runner: Arc<Runner>,
    wakeups: Wakeups,
    shutdown: CancellationToken,
    jobs_root: CancellationToken,
}

impl Application {
    /// Opens the database (running migrations), recovers what a previous
    /// process left behind, and binds the listening socket.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        if config.auth == AuthMode::None && !config.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve {} without authentication: HERALD_AUTH=none is only allowed on a loopback address. \
                 Set HERALD_AUTH=api-keys with HERALD_API_KEYS=tenant:key (or HERALD_AUTH=jwt), or listen on 127.0.0.1",
                config.listen
            );
        }
        let auth = Arc::new(
            Auth::from_settings(config.auth_settings()).context("configuring authentication")?,
        );
        // Install the metrics recorder before anything records.
        crate::telemetry::prometheus();
        let url = config.database_url.clone();
        if !url.starts_with("sqlite:") {
            anyhow::bail!(
                "HERALD_DATABASE_URL={url:?} is not supported: use sqlite://PATH (PostgreSQL support is not in this build yet)"
            );
        }
        let pools = sqlite::connect(&url)
            .await
            .with_context(|| format!("opening the SQLite database {url}"))?;
        sqlite::migrate(&pools.writer)
            .await
            .context("running database migrations")?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::new(pools.clone()));
        let (queue, wakeups) = Queue::sqlite(&pools.queue, config.worker_concurrency);

        let jobs_root = CancellationToken::new();
        let cancels = CancelRegistry::new(jobs_root.clone());
        let hub = Hub::new();
        let kinds = Arc::new(registry(&config).context("configuring job kinds")?);
        if config.allow_any_url {
            tracing::warn!("HERALD_ALLOW_ANY_URL is on: aggregate jobs may call any URL; never run this in production");
        }
        let runner = Arc::new(Runner {
            store: store.clone(),
            hub: hub.clone(),
            kinds: (*kinds).clone(),
            cancels: cancels.clone(),
            config: RunnerConfig {
                cancel_grace: config.cancel_grace(),
                max_result_bytes: config.max_result_bytes,
                retry_backoff: Duration::from_millis(config.retry_backoff_ms),
                progress_interval: Duration::from_millis(config.progress_min_interval_ms),
            },
        });

        let pushed = Reconciler {
            store: store.clone(),
            queue: queue.clone(),
            cancels: cancels.clone(),
        }
        .at_startup()
        .await
        .context("recovering jobs at start-up")?;
        if pushed > 0 {
            tracing::info!(pushed, "queued jobs given a fresh queue task at start-up");
        }

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding HERALD_LISTEN={}", config.listen))?;
        let addr = listener.local_addr()?;

        let state = AppState {
            store,
            queue,
            hub,
            kinds,
            cancels,
            draining: Arc::new(AtomicBool::new(false)),
            serving_stop: CancellationToken::new(),
            stream_settings: config.stream_settings(),
            streams: Arc::new(StreamCounter::default()),
            auth,
            stream_limit: StreamLimit::new(config.max_streams_per_tenant),
            submit_rate: Arc::new(SubmitRate::new(config.submit_rate_per_sec)),
            config: Arc::new(config),
        };
        Ok(Application {
            addr,
            listener,
            state,
            runner,
            wakeups,
            shutdown: CancellationToken::new(),
            jobs_root,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cancel it to start a graceful shutdown (what SIGTERM and Ctrl-C do).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves and runs jobs until the shutdown token fires, then: /readyz 503,
    /// keep serving for the drain delay, stop accepting and end streams, let
    /// running jobs finish within the shutdown grace, and put the rest back in
    /// the queue.
    pub async fn run(self) -> anyhow::Result<()> {
        let Application {
            addr,
            listener,
            state,
            runner,
            wakeups,
            shutdown,
            jobs_root,
        } = self;
        let config = state.config.clone();
        let worker_stop = CancellationToken::new();
        let worker = state.queue.spawn_worker(
            wakeups,
            runner,
            config.worker_concurrency,
            worker_stop.clone(),
        );
        let reconciler = tokio::spawn(
            Reconciler {
                store: state.store.clone(),
                queue: state.queue.clone(),
                cancels: state.cancels.clone(),
            }
            .run_periodically(
                Duration::from_secs(config.reconcile_secs.max(1)),
                worker_stop.clone(),
            ),
        );
        let retention = tokio::spawn(crate::retention::run(
            state.store.clone(),
            Duration::from_secs_f64(config.retention_hours.max(0.0) * 3600.0),
            Duration::from_secs(config.retention_sweep_secs.max(1)),
            worker_stop.clone(),
        ));
        tracing::info!(%addr, database = %config.database_url, "herald listening");

        let signal = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            let config = config.clone();
            async move {
                shutdown.cancelled().await;
                state.draining.store(true, Ordering::SeqCst);
                tracing::info!(
                    drain_delay_secs = config.drain_delay_secs,
                    "shutting down: readiness is now 503"
                );
                tokio::time::sleep(config.drain_delay()).await;
                state.serving_stop.cancel();
            }
        };
        let app = crate::api::routes(state.clone()).map_to_response().boxed();
        let stop_serving = state.serving_stop.clone();
        tokio::spawn(signal);
        crate::server::serve(listener, app, stop_serving, Duration::from_secs(5)).await;

        // Serving has stopped. Stop taking new jobs, then give running ones the grace.
        worker_stop.cancel();
        let grace_end = Instant::now() + config.shutdown_grace();
        while state.cancels.running_count() > 0 && Instant::now() < grace_end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let still_running = state.cancels.running_count();
        if still_running > 0 {
            tracing::warn!(
                still_running,
                "shutdown grace over: stopping running jobs and putting them back in the queue"
            );
            jobs_root.cancel();
            let stop_end = Instant::now() + config.cancel_grace() + Duration::from_secs(1);
            while state.cancels.running_count() > 0 && Instant::now() < stop_end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .is_err()
        {
            tracing::warn!("queue worker did not stop in time");
        }
        reconciler.abort();
        retention.abort();
        tracing::info!("herald stopped");
        Ok(())
    }
}
