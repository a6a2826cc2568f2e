//! Spawning herald for a test, and the typed client the tests talk to it with.
//!
//! - [`TestApp`]: herald started in this process on port 0, on a fresh
//!   database of the test's backend ([`backend_tests!`] runs a test on both).
//! - [`Api`]: requests, with the answers as [`Job`]s and [`Event`]s.
//! - [`HeraldProcess`]: the real binary, for logs, kill -9 and several nodes.

mod api;
mod db;
mod process;

use std::time::{Duration, Instant};

use herald::domain::{EventSeq, JobId};
use herald::testing::TestServer;
use herald::{AppState, Config, Kinds};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub use api::{
    assert_gapless, invalid_pointers, items, names, pointers, problem, read_to_end, seqs, statuses,
    Api, Event, Job, Status,
};
pub use db::TestDb;
pub use process::HeraldProcess;

/// How long a test waits for something that should happen before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Which database a test runs on. The test functions are backend-neutral;
/// [`backend_tests!`] runs each on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// The backend of the running test (SQLite outside [`backend_tests!`]).
pub fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

/// The PostgreSQL server tests may create databases on, if any.
pub fn postgres_url() -> Option<String> {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Runs `test` with `backend` as the backend of every app it spawns; on
/// PostgreSQL without `HERALD_TEST_POSTGRES_URL` it prints why and skips.
pub async fn on_backend(backend: Backend, test: impl std::future::Future<Output = ()>) {
    if backend == Backend::Postgres && postgres_url().is_none() {
        // Once, and past the test harness's capture, so `cargo test` shows it.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: the postgres:: tests are skipped: HERALD_TEST_POSTGRES_URL is not set \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
        });
        return;
    }
    BACKEND.scope(backend, test).await
}

/// Generates `sqlite::name` and `postgres::name` tests for each listed
/// `async fn name()` of the calling module.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::common::on_backend($crate::common::Backend::Sqlite, super::$name()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::common::on_backend($crate::common::Backend::Postgres, super::$name()).await
                }
            )*
        }
    };
}

pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::from_env();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = format!("sqlite://{}", dir.path().join("herald.db").display());
    config.retry_backoff_ms = 10;
    config.reconcile_secs = 1;
    // Tests stop apps with long demo jobs still running: do not wait 30 s for them.
    config.shutdown_grace_secs = 1;
    // PostgreSQL: tests run in parallel on one server (100 connections).
    config.database_pool = 4;
    config
}

/// herald running in the test's process. It derefs to its [`Api`], so
/// `app.submit(..)`, `app.job(..)` and `app.get(..)` talk to it over HTTP.
pub struct TestApp {
    pub api: Api,
    pub shutdown: CancellationToken,
    /// For what no client can see: open stream counts, the store, the config.
    pub state: AppState,
    pub db: TestDb,
    /// The herald itself (`herald::testing`, public for tests of other kinds).
    server: TestServer,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// On a fresh database of the test's backend.
    pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_in(TestDb::new().await, f).await
    }

    /// Starts herald on `db` (a restart when one ran there before).
    pub async fn spawn_in(db: TestDb, f: impl FnOnce(&mut Config)) -> TestApp {
        Self::start(db, Kinds::builtin(), f).await
    }

    /// With `kinds` (say, the built-in ones and a test's own) on a fresh
    /// database of the test's backend.
    pub async fn spawn_with_kinds(kinds: Kinds, f: impl FnOnce(&mut Config)) -> TestApp {
        Self::start(TestDb::new().await, kinds, f).await
    }

    /// With `kinds` on `db` (a restart of an app that ran them there).
    pub async fn spawn_in_with_kinds(
        db: TestDb,
        kinds: Kinds,
        f: impl FnOnce(&mut Config),
    ) -> TestApp {
        Self::start(db, kinds, f).await
    }

    async fn start(db: TestDb, kinds: Kinds, f: impl FnOnce(&mut Config)) -> TestApp {
        // RUST_LOG=debug cargo test … shows the server's logs.
        if std::env::var_os("RUST_LOG").is_some() {
            herald::init_logging(herald::config::LogFormat::Text);
        }
        let mut config = test_config(db.dir());
        config.database_url = db.url().to_owned();
        f(&mut config);
        let server = TestServer::start_with(config, kinds)
            .await
            .expect("application builds");
        TestApp {
            api: Api::new(server.base_url()),
            shutdown: server.shutdown_token(),
            state: server.state().clone(),
            db,
            server,
        }
    }

    /// The job's events as the store holds them.
    pub async fn stored_events(&self, id: JobId) -> Vec<Event> {
        self.state
            .store
            .events_after(id, EventSeq(0), 100_000)
            .await
            .expect("events read")
            .into_iter()
            .map(|e| Event {
                seq: e.seq.0,
                event: e.kind.as_str().to_owned(),
                data: serde_json::from_str(&e.data).expect("stored data is JSON"),
            })
            .collect()
    }

    /// Event streams open on this server.
    pub fn open_streams(&self) -> usize {
        self.state.streams.open()
    }

    /// Waits until exactly `n` event streams are open.
    pub async fn wait_open_streams(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.open_streams() != n {
            assert!(
                Instant::now() < deadline,
                "open streams stayed at {}, want {n}",
                self.open_streams()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Jobs that some stream of this server is subscribed to.
    pub fn watched_jobs(&self) -> usize {
        self.state.hub.watched_jobs()
    }

    /// Graceful shutdown, as SIGTERM does it; waits for `run` to return.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    /// Like [`Self::stop`], and the store stays readable: once this returns
    /// the app's jobs and queue worker have stopped, so nothing of it writes
    /// any more.
    pub async fn shut_down(&mut self) {
        self.server
            .shut_down()
            .await
            .expect("app stops cleanly within 30 s");
    }
}
