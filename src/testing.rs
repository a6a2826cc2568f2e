//! Starting a real herald inside a test, on port 0: what herald's own tests
//! use, and what a test of your own kinds can use.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use herald::testing::TestServer;
//!
//! // The built-in kinds (add your own with `.with(..)`), on a fresh SQLite
//! // file in the temp directory.
//! let server = TestServer::start(herald::Kinds::builtin(), |_config| {}).await?;
//! let job: serde_json::Value = reqwest::Client::new()
//!     .post(format!("{}/v1/jobs", server.base_url()))
//!     .json(&serde_json::json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(job["status"], "queued");
//! server.stop().await?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{AppState, Application, Config, Kinds};

/// A herald running in this process: HTTP on a loopback port of its own,
/// its queue workers, its store. Dropping it starts a graceful shutdown;
/// [`TestServer::stop`] also waits for it.
pub struct TestServer {
    addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The SQLite file [`TestServer::start`] made, deleted at drop.
    file: Option<PathBuf>,
}

impl TestServer {
    /// herald with `kinds` on a fresh SQLite file in the temp directory,
    /// listening on a free port of 127.0.0.1; `configure` may change any
    /// setting (downstreams, limits…) first.
    pub async fn start(
        kinds: Kinds,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestServer> {
        let file = std::env::temp_dir().join(format!("herald-test-{}.db", uuid::Uuid::now_v7()));
        let mut config = Config::from_env();
        config.listen = "127.0.0.1:0".parse().expect("a socket address");
        config.database_url = format!("sqlite://{}", file.display());
        configure(&mut config);
        let mut server = TestServer::start_with(config, kinds).await?;
        server.file = Some(file);
        Ok(server)
    }

    /// herald with `config` as it is (any database: SQLite or PostgreSQL;
    /// set `listen` to `127.0.0.1:0` for a free port, or to a port an
    /// earlier server used, to restart it there).
    pub async fn start_with(config: Config, kinds: Kinds) -> anyhow::Result<TestServer> {
        let app = Application::build_with(config, kinds)
            .await
            .context("starting herald for a test")?;
        Ok(TestServer {
            addr: app.local_addr(),
            state: app.state().clone(),
            shutdown: app.shutdown_token(),
            handle: Some(tokio::spawn(app.run())),
            file: None,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelled, it shuts the server down (as SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The running application's state (its store, jobs service…).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Shuts down as SIGTERM does and waits (at most 30 s) until it has
    /// stopped: running jobs finished or back in the queue, nothing writes.
    pub async fn shut_down(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .context("herald did not stop within 30 s")?
                .context("herald's task panicked")??;
        }
        Ok(())
    }

    /// [`TestServer::shut_down`], consuming the server.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down().await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(file) = self.file.take() {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }
}
