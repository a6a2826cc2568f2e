//! Spawning herald for a test, and small HTTP helpers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::domain::{EventSeq, JobId};
use herald::store::StoredEvent;
use herald::{AppState, Application, Config};
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub state: AppState,
    pub db: TestDb,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

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

/// A test's database: a SQLite file in a temp dir, or a fresh PostgreSQL
/// database (apalis-postgres fixes its schema name, so a schema per test would
/// not isolate), dropped when the last clone goes. Clone it to restart an app
/// on the same data.
#[derive(Clone)]
pub struct TestDb(Arc<DbInner>);

struct DbInner {
    dir: TempDir,
    url: String,
    /// PostgreSQL: (admin URL, database name) to drop at the end.
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::on(backend()).await
    }

    pub async fn on(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                TestDb(Arc::new(DbInner { dir, url, pg: None }))
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = postgres_url().expect("HERALD_TEST_POSTGRES_URL is set");
                let name = format!("herald_t_{}", uuid::Uuid::now_v7().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to HERALD_TEST_POSTGRES_URL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                let mut url = url::Url::parse(&admin).expect("a URL");
                url.set_path(&name);
                TestDb(Arc::new(DbInner {
                    dir,
                    url: url.to_string(),
                    pg: Some((admin, name)),
                }))
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop is not async: a thread with its own runtime. FORCE ends the
        // connections of an app that is still shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
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
        // RUST_LOG=debug cargo test … shows the server's logs.
        if std::env::var_os("RUST_LOG").is_some() {
            herald::init_logging(herald::config::LogFormat::Text);
        }
        let mut config = test_config(&db.0.dir);
        config.database_url = db.url().to_owned();
        f(&mut config);
        let app = Application::build(config)
            .await
            .expect("application builds");
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let state = app.state().clone();
        let handle = tokio::spawn(app.run());
        TestApp {
            base,
            client: reqwest::Client::new(),
            shutdown,
            state,
            db,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Submits a job and expects 202.
    pub async fn submit(&self, body: Value) -> Value {
        let resp = self.post_json("/v1/jobs", &body).await;
        assert_eq!(resp.status(), 202, "submit {body}");
        resp.json().await.unwrap()
    }

    /// GET `path` and parse the JSON answer (whatever the status).
    pub async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    pub async fn get_job(&self, id: &str) -> Value {
        let resp = self
            .client
            .get(self.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/jobs/{id}/cancel")))
            .send()
            .await
            .unwrap()
    }

    /// Polls the job until `pred` holds or the deadline passes.
    pub async fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let job = self.get_job(id).await;
            if pred(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(id, status, |j| j["status"] == status).await
    }

    /// The job's persisted events, read from the store.
    pub async fn events(&self, id: &str) -> Vec<StoredEvent> {
        let id: JobId = id.parse().unwrap();
        self.state
            .store
            .events_after(id, EventSeq(0), 100_000)
            .await
            .unwrap()
    }

    /// Graceful shutdown, as SIGTERM does it; waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("app stops within 30 s")
                .expect("app task joins")
                .expect("app run ends cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Each event as (name, data JSON).
pub fn named(events: &[StoredEvent]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind.as_str().to_owned(),
                serde_json::from_str(&e.data).unwrap(),
            )
        })
        .collect()
}

/// Asserts the sequence numbers are exactly 1, 2, 3 … n.
pub fn assert_gapless(events: &[StoredEvent]) {
    let seqs: Vec<i64> = events.iter().map(|e| e.seq.0).collect();
    let want: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs, want, "event ids must be 1..n without gaps");
}

/// The (status, attempt) of each `status` event.
pub fn statuses(events: &[StoredEvent]) -> Vec<(String, i64)> {
    named(events)
        .into_iter()
        .filter(|(name, _)| name == "status")
        .map(|(_, d)| {
            (
                d["status"].as_str().unwrap().to_owned(),
                d["attempt"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

/// Opens a job's event stream on the server at `base`.
pub async fn open_stream_at(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut req = client.get(format!("{base}/v1/jobs/{id}/events"));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    req.send().await.expect("stream request sent")
}

/// Opens a job's event stream; `last` goes in the Last-Event-ID header.
pub async fn open_stream(
    app: &TestApp,
    id: &str,
    last: Option<&str>,
    query: Option<&str>,
) -> reqwest::Response {
    let mut url = app.url(&format!("/v1/jobs/{id}/events"));
    if let Some(q) = query {
        url.push_str(&format!("?last_event_id={q}"));
    }
    let mut req = app.client.get(url);
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    req.send().await.expect("stream request sent")
}

/// Reads SSE events with a real parser until the server ends the stream.
pub async fn read_to_end(resp: reqwest::Response) -> Vec<Sse> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    assert_eq!(resp.status(), 200, "stream opens");
    let mut events = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.next()).await {
            Ok(Some(Ok(ev))) => out.push(Sse {
                id: ev.id.parse().expect("numeric id"),
                event: ev.event,
                data: serde_json::from_str(&ev.data).expect("data is one line of JSON"),
            }),
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => return out,
            Err(_) => panic!("stream did not end within {WAIT:?}; got {out:?}"),
        }
    }
}

pub fn ids(events: &[Sse]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

/// The real `herald` binary, started with JSON logs on a port of its own.
/// Its stderr lines arrive through a channel; every line read is kept in `seen`.
pub struct HeraldProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub base: String,
    pub seen: Vec<String>,
}

impl HeraldProcess {
    /// Starts it on the SQLite file `db` with `RUST_LOG=log` and `env`, and
    /// waits for the "herald listening" line.
    pub fn start(db: &std::path::Path, log: &str, env: &[(&str, &str)]) -> HeraldProcess {
        Self::start_url(&format!("sqlite://{}", db.display()), log, env)
    }

    /// Starts it on the database at `url`.
    pub fn start_url(url: &str, log: &str, env: &[(&str, &str)]) -> HeraldProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATABASE_URL", url)
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = HeraldProcess {
            child,
            lines,
            base: String::new(),
            seen: Vec::new(),
        };
        let listening = p
            .next_json(Duration::from_secs(30), |v| {
                v["message"] == "herald listening"
            })
            .expect("herald logs its address");
        p.base = format!("http://{}", listening["addr"].as_str().expect("addr field"));
        p
    }

    /// The next log line (parsed) for which `pred` holds, within `timeout`.
    pub fn next_json(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            self.seen.push(line);
            if pred(&v) {
                return Some(v);
            }
        }
    }

    /// SIGKILL (no shutdown code runs), then every line it wrote, in order.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("herald exits");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for HeraldProcess {
    /// A failing test must not leave herald processes behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
