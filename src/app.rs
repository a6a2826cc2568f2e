//! Builds the application (store, queue, workers, HTTP) and runs it until the
//! shutdown token fires, then drains in the order DESIGN.md gives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthMode};
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::config::Role;
use crate::domain::LeaseTerms;
use crate::downstream::Downstreams;
use crate::http::AppState;
use crate::hub::Hub;
use crate::jobs::{Jobs, RemoteTerms};
use crate::kinds::call::Caller;
use crate::kinds::{registry, Kinds, Limits, Services};
use crate::limits::StreamLimit;
use crate::notify::Wakers;
use crate::queue::Queue;
use crate::remote::{RemoteWorkers, WorkerKeys};
use crate::store::postgres::{self, NodeIdentity, PgStore};
use crate::store::sqlite::{self, SqliteStore};
use crate::store::Store;
use crate::stream::StreamCounter;
use crate::uploads::Uploads;
use crate::worker::reconcile::Reconciler;
use crate::worker::runner::{Runner, RunnerConfig};

/// How often a node that runs jobs checks the store for cancel requests it
/// may have missed (the backup for a lost notification, and for a cancel
/// that came between a job's claim and its handler's start).
const CANCEL_SWEEP: Duration = Duration::from_secs(2);

pub struct Application {
    addr: SocketAddr,
    queue: Queue,
    listener: tokio::net::TcpListener,
    state: AppState,
    runner: Arc<Runner>,
    shutdown: CancellationToken,
    jobs_root: CancellationToken,
    node_id: String,
    /// PostgreSQL: the options of the node's LISTEN connection.
    listen: Option<(PgConnectOptions, String)>,
}

/// What a database URL opens.
struct Backend {
    store: Arc<dyn Store>,
    queue: Queue,
    listen: Option<(PgConnectOptions, String)>,
}

/// The URL with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Application {
    /// Opens the database (running migrations), recovers what a previous
    /// process left behind, and binds the listening socket.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with(config, Kinds::builtin()).await
    }

    /// [`Application::build`] with these job kinds (the built-in ones and
    /// your own, see [`Kinds`]).
    pub async fn build_with(config: Config, kinds: Kinds) -> anyhow::Result<Application> {
        if config.auth == AuthMode::None && !config.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve {} without authentication: HERALD_AUTH=none is only allowed on a loopback address. \
                 Set HERALD_AUTH=api-keys with HERALD_API_KEYS=tenant:key (or HERALD_AUTH=jwt), or listen on 127.0.0.1",
                config.listen
            );
        }
        let auth =
            Arc::new(Auth::from_settings((&config).into()).context("configuring authentication")?);
        // Install the metrics recorder before anything records.
        crate::telemetry::prometheus();
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let url = config.database_url.clone();
        let backend = if url.starts_with("sqlite:") {
            if config.role != Role::All {
                anyhow::bail!(
                    "HERALD_ROLE={} needs PostgreSQL: separate processes on one SQLite file cannot wake each other. \
                     Use HERALD_ROLE=all, or HERALD_DATABASE_URL=postgres://…",
                    config.role.as_str()
                );
            }
            let pools = sqlite::connect(&url)
                .await
                .with_context(|| format!("opening the SQLite database {url}"))?;
            sqlite::migrate(&pools.writer)
                .await
                .context("running database migrations")?;
            // One process: every queued job wakes this worker itself, so
            // the poll is only the backstop.
            let queue = Queue::new(Duration::from_secs(1));
            let store: Arc<dyn Store> = Arc::new(SqliteStore::new(pools));
            Backend {
                store,
                queue,
                listen: None,
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pools = postgres::connect(&url, config.database_pool, &node_id)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {}", redact_url(&url)))?;
            postgres::migrate(&pools.main)
                .await
                .context("running database migrations")?;
            // Jobs queued by other nodes wake this one through LISTEN; the
            // poll covers a notification lost with its connection.
            let queue = Queue::new(Duration::from_millis(500));
            let node = NodeIdentity {
                id: node_id.clone(),
                role: config.role.as_str(),
                lease: Duration::from_secs(config.worker_lease_secs.max(1)),
            };
            let listen = Some((pools.listen.clone(), pools.origin.clone()));
            Backend {
                store: Arc::new(PgStore::new(pools, node)),
                queue,
                listen,
            }
        } else {
            anyhow::bail!(
                "HERALD_DATABASE_URL={:?} is not supported: use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
                redact_url(&url)
            );
        };
        let Backend {
            store,
            queue,
            listen,
        } = backend;

        let jobs_root = CancellationToken::new();
        let cancels = CancelRegistry::new(jobs_root.clone());
        let hub = Hub::new();
        let downstreams = Downstreams::load(
            &config.downstreams,
            config.downstreams_file.as_deref(),
            config.allow_any_url,
        )
        .context("configuring downstreams")?;
        let caller = Arc::new(
            Caller::new(Arc::new(downstreams), config.downstream_max_body_bytes)
                .context("configuring the downstreams' HTTP client")?,
        );
        let kinds = Arc::new(
            registry(caller.clone(), store.clone(), kinds, &config.remote_kinds)
                .context("configuring job kinds")?,
        );
        let services = Arc::new(Services {
            store: store.clone(),
            caller,
            limits: Limits {
                max_item_bytes: config.max_item_bytes,
                max_items: config.max_items_per_job,
            },
        });
        if config.allow_any_url {
            tracing::warn!("HERALD_ALLOW_ANY_URL is on: aggregate jobs may call any URL; never run this in production");
        }
        let jobs = Jobs::new(
            store.clone(),
            queue.clone(),
            hub.clone(),
            cancels.clone(),
            kinds.clone(),
            config.submit_rate_per_sec,
            // Never as long as retention keeps a finished job.
            Duration::from_secs_f64((config.retention_hours * 3600.0 / 2.0).clamp(0.0, 30.0)),
            RemoteTerms {
                lease: LeaseTerms {
                    lease_for: config.remote_lease(),
                    retry_backoff: Duration::from_millis(config.retry_backoff_ms),
                    max_items: config.max_items_per_job,
                },
                cancel_grace: config.cancel_grace().max(config.remote_lease()),
            },
        );
        let remote_kinds: Vec<String> = config
            .remote_kinds
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        let worker_keys = WorkerKeys::load(
            &config.worker_keys,
            config.worker_keys_file.as_deref(),
            &remote_kinds,
        )
        .context("configuring worker keys")?;
        let serving_stop = CancellationToken::new();
        {
            // Streams and feeds wait for events, not for the stop (a waiter
            // on the token per idle stream costs a lock per event): the
            // stop wakes them all, and they end at their next look.
            let (stop, hub) = (serving_stop.clone(), hub.clone());
            tokio::spawn(async move {
                stop.cancelled().await;
                hub.notify_all();
            });
        }
        let remote = Arc::new(RemoteWorkers::new(
            jobs.clone(),
            queue.waker(),
            remote_kinds,
            Duration::from_millis(config.progress_min_interval_ms),
            serving_stop.clone(),
        ));
        let uploads = Uploads::new(
            jobs.clone(),
            store.clone(),
            config.max_upload_bytes,
            config.default_max_attempts,
        );
        let runner = Arc::new(Runner {
            jobs: jobs.clone(),
            kinds: (*kinds).clone(),
            services,
            cancels: cancels.clone(),
            config: RunnerConfig {
                cancel_grace: config.cancel_grace(),
                max_result_bytes: config.max_result_bytes,
                retry_backoff: Duration::from_millis(config.retry_backoff_ms),
                progress_interval: Duration::from_millis(config.progress_min_interval_ms),
            },
        });

        if config.role.runs_jobs() {
            store
                .heartbeat()
                .await
                .context("registering this node in the database")?;
            Reconciler { jobs: jobs.clone() }
                .at_startup()
                .await
                .context("recovering jobs at start-up")?;
        }

        let listener = bind_listener(config.listen, config.listen_backlog)
            .with_context(|| format!("binding HERALD_LISTEN={}", config.listen))?;
        let addr = listener.local_addr()?;

        let state = AppState {
            jobs,
            uploads,
            store,
            hub,
            cancels,
            draining: Arc::new(AtomicBool::new(false)),
            serving_stop,
            remote,
            worker_keys: Arc::new(worker_keys),
            stream_settings: (&config).into(),
            streams: Arc::new(StreamCounter::default()),
            feeds: Arc::new(StreamCounter::default()),
            auth,
            stream_limit: StreamLimit::new(config.max_streams_per_tenant),
            long_polls: StreamLimit::new(config.max_streams_per_tenant),
            config: Arc::new(config),
        };
        Ok(Application {
            addr,
            queue,
            listener,
            state,
            runner,
            shutdown: CancellationToken::new(),
            jobs_root,
            node_id,
            listen,
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
            queue,
            listener,
            state,
            runner,
            shutdown,
            jobs_root,
            node_id,
            listen,
        } = self;
        let config = state.config.clone();
        let worker_stop = CancellationToken::new();
        // Stops what must outlive the jobs (the listener: a cancel may still
        // arrive during the shutdown grace).
        let background_stop = CancellationToken::new();
        let runs_jobs = config.role.runs_jobs();
        if let Some((opts, origin)) = listen {
            let wakers = Wakers {
                hub: state.hub.clone(),
                cancels: state.cancels.clone(),
                queue: Some(queue.waker()),
                origin,
            };
            tokio::spawn(crate::notify::listen(opts, wakers, background_stop.clone()));
        }
        if runs_jobs {
            // On SQLite too: a cancel that lands after a job was claimed and
            // before its handler registered reaches no token; the sweep
            // fires it within CANCEL_SWEEP.
            tokio::spawn(crate::notify::sweep_cancels(
                state.store.clone(),
                state.cancels.clone(),
                CANCEL_SWEEP,
                background_stop.clone(),
            ));
        }
        let mut background = Vec::new();
        let worker = runs_jobs.then(|| {
            queue.spawn_worker(
                node_id.clone(),
                state.jobs.clone(),
                runner,
                config.worker_concurrency,
                worker_stop.clone(),
            )
        });
        if runs_jobs {
            let lease = Duration::from_secs(config.worker_lease_secs.max(1));
            background.push(tokio::spawn(crate::worker::reconcile::heartbeat(
                state.store.clone(),
                lease / 3,
                background_stop.clone(),
            )));
            background.push(tokio::spawn(
                Reconciler {
                    jobs: state.jobs.clone(),
                }
                .run_periodically(
                    Duration::from_secs(config.reconcile_secs.max(1)),
                    worker_stop.clone(),
                ),
            ));
            background.push(tokio::spawn(crate::retention::run(
                state.store.clone(),
                Duration::from_secs_f64(config.retention_hours.max(0.0) * 3600.0),
                Duration::from_secs(config.retention_sweep_secs.max(1)),
                worker_stop.clone(),
            )));
        }
        if config.role.serves_api() && !state.remote.kinds().is_empty() {
            // Any node may take a job back from a quiet worker; several
            // sweeping at once decide on the locked row.
            let every = (config.remote_lease() / 5)
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            background.push(tokio::spawn(
                state.remote.clone().sweep(every, background_stop.clone()),
            ));
        }
        tracing::info!(%addr, database = %redact_url(&config.database_url), node = %node_id,
            role = config.role.as_str(), "herald listening");

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
        let app = crate::http::routes(state.clone());
        let stop_serving = state.serving_stop.clone();
        tokio::spawn(signal);
        crate::http::server::serve(listener, app, stop_serving, config.header_timeout()).await;

        // Serving has stopped. Stop taking new jobs, then give running ones the grace.
        worker_stop.cancel();
        if let Some(worker) = &worker {
            worker.close_claims().await;
        }
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
        if let Some(worker) = worker {
            if tokio::time::timeout(Duration::from_secs(5), worker.task)
                .await
                .is_err()
            {
                tracing::warn!("queue worker did not stop in time");
            }
        }
        background_stop.cancel();
        background.iter().for_each(|t| t.abort());
        if runs_jobs {
            // Whatever is still marked running here is taken over at once.
            if let Err(e) = state.store.leave().await {
                tracing::warn!(error = %e, "could not remove this node's liveness record");
            }
        }
        tracing::info!("herald stopped");
        Ok(())
    }
}

/// A listener on `addr` whose kernel queue holds `backlog` connections not
/// yet accepted. (`TcpListener::bind` asks for 128: 10,000 streams opening
/// 256 at a time overflowed it, 1,201 connections waited a second for their
/// SYN to be sent again, and opening them took 9–11 s instead of 1–2.)
fn bind_listener(
    addr: std::net::SocketAddr,
    backlog: u32,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart may bind while the old
    // process's connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
