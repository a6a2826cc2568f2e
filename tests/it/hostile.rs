//! Hostile clients and a hostile environment: a client that stops reading
//! its stream, malformed and oversized requests, slow partial requests, no
//! file descriptors left, the database going away. herald answers 4xx or
//! 503, cuts what it must, and loses nothing it acknowledged.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::{JobContext, JobFailure, JobKind, Kinds};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Status::{Running, Succeeded};
use crate::common::{
    assert_gapless, backend, problem, Api, Backend, HeraldProcess, Job, TestApp, TestDb, WAIT,
};
use crate::operability::DbProxy;

/// `bulky`: appends `items` items of about `bytes` bytes each, as fast as
/// they are written: more than any socket buffers.
struct Bulky;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct BulkyInput {
    items: u64,
    bytes: usize,
}

#[async_trait]
impl JobKind for Bulky {
    type Input = BulkyInput;
    type Output = Value;

    fn name(&self) -> &'static str {
        "bulky"
    }

    async fn run(&self, input: BulkyInput, ctx: &JobContext) -> Result<Value, JobFailure> {
        let filler = "x".repeat(input.bytes);
        for i in 0..input.items {
            ctx.item(json!({"i": i, "filler": filler})).await?;
        }
        Ok(json!({"items": input.items}))
    }
}

/// The server's address, from an `http://host:port` base URL.
fn addr(api: &Api) -> String {
    api.base.trim_start_matches("http://").to_owned()
}

/// Sends `request` as raw bytes and reads what comes back until the server
/// closes the connection (or `WAIT` passes); the answer's status code.
async fn raw_status(api: &Api, request: &[u8]) -> u16 {
    let mut sock = TcpStream::connect(addr(api)).await.expect("connect");
    // The server may answer and close before it has read everything.
    let _ = sock.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    status.unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// Reads a raw stream response to its end; the `id:` of each event, in
/// order. Every event sits whole in one HTTP chunk, so chunk-size lines never
/// split an `id:` line.
async fn read_ids(sock: &mut TcpStream) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::new();
    loop {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("the stream goes on")
            .expect("read");
        if n == 0 {
            return ids;
        }
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if let Some(id) = line.strip_prefix(b"id: ") {
                ids.push(std::str::from_utf8(id).unwrap().trim().parse().unwrap());
            }
            line.clear();
        }
    }
}

/// A client with a small receive buffer that sends a stream request to
/// `path` and reads nothing yet.
async fn stalled_reader(api: &Api, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sock = socket.connect(addr(api).parse().unwrap()).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(request.as_bytes()).await.unwrap();
    sock
}

/// A client opens a job's stream with a small receive buffer and reads
/// nothing while the job appends megabytes: the socket, then hyper's buffer
/// fill up and the stream waits. Once the job has ended the client reads,
/// and gets every event, in order, once.
async fn a_stalled_reader_that_reads_again_gets_every_event_in_order() {
    let app = TestApp::spawn_with_kinds(Kinds::builtin().with(Bulky), |_| {}).await;
    let job = app
        .submit("bulky", json!({"items": 1000, "bytes": 4000}))
        .await;
    let mut sock = stalled_reader(&app, &format!("/v1/jobs/{}/events", job.id)).await;
    app.wait_open_streams(1).await;
    let ended = app.wait_terminal(job.id).await;
    assert_eq!(ended.status, Succeeded);
    // ~4 MB of events went nowhere yet: the stream is still open, waiting.
    assert_eq!(app.open_streams(), 1);

    let ids = read_ids(&mut sock).await;
    let want: Vec<i64> = (1..=ended.last_event_id).collect();
    assert_eq!(ids, want, "every event, in order, once");
    app.wait_open_streams(0).await;
    app.stop().await;
}

/// The same for the multiplexed feed, which never ends on its own: it is
/// read until the job's last event.
async fn a_stalled_feed_that_reads_again_gets_every_event_in_order() {
    let app = TestApp::spawn_with_kinds(Kinds::builtin().with(Bulky), |_| {}).await;
    let mut sock = stalled_reader(&app, "/v1/events").await;
    // The feed opened "from now" has named its cursor once this arrives.
    let mut opening = [0u8; 1];
    sock.read_exact(&mut opening).await.unwrap();
    let job = app
        .submit("bulky", json!({"items": 1000, "bytes": 4000}))
        .await;
    let ended = app.wait_terminal(job.id).await;
    assert_eq!(ended.status, Succeeded);

    let mut seqs = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::new();
    while seqs.last() != Some(&ended.last_event_id) {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("the feed goes on")
            .expect("read");
        assert!(n > 0, "the feed ended early, after {seqs:?}");
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if let Some(data) = line.strip_prefix(b"data: ") {
                let data: Value = serde_json::from_slice(data).unwrap();
                if data["job_id"] == job.id.to_string() {
                    seqs.push(data["seq"].as_i64().unwrap());
                }
            }
            line.clear();
        }
    }
    let want: Vec<i64> = (1..=ended.last_event_id).collect();
    assert_eq!(seqs, want, "every event of the job, in order, once");
    app.stop().await;
}

/// Malformed and oversized request lines and headers get 4xx from hyper,
/// and herald goes on serving.
#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx() {
    let app = TestApp::spawn().await;
    let big = "a".repeat(20 * 1024);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a 20 KiB header",
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            431,
        ),
        (
            "a 20 KiB request line",
            format!("GET /healthz?{big} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
            431,
        ),
        (
            "200 headers",
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n").into_bytes(),
            431,
        ),
        (
            "a request line that is not one",
            b"THIS IS NOT HTTP\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a space in the method",
            b"GE T /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a control byte in a header value",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a header name with a space",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "an unknown HTTP version",
            b"GET /healthz HTTP/7.3\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two content lengths that differ",
            b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                .to_vec(),
            400,
        ),
        (
            "a chunk size that is not hex",
            b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
    ];
    for (what, request, want) in cases {
        assert_eq!(raw_status(&app, &request).await, want, "{what}");
    }
    // A request at the limit's edge is still served.
    let fine = "a".repeat(8 * 1024);
    let resp = app
        .get("/healthz")
        .header("X-Fine", fine)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

/// Slowloris: a client that sends its request a byte at a time, never
/// finishing its headers, is disconnected after the header timeout; so is one
/// that connects and sends nothing. Others are served meanwhile.
#[tokio::test]
async fn slow_partial_requests_are_cut_by_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.header_timeout_secs = 1).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // One header byte every 100 ms, for up to WAIT: far longer than the
    // timeout. The server closes the connection: a write then fails, or a
    // read sees the end.
    let trickle = async {
        let header = b"X-Slow: abcdefghijklmnopqrstuvwxyz0123456789".repeat(20);
        for b in header {
            if slow.write_all(&[b]).await.is_err() {
                return true;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => panic!("the server answered a request it never got whole"),
                Err(_) => {}
            }
            if started.elapsed() > WAIT {
                return false;
            }
        }
        false
    };
    assert!(trickle.await, "the slow client was not disconnected");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "the silent client was not disconnected"
    );
    assert!(
        rest.is_empty(),
        "nothing is answered to a request never sent"
    );
    // The server itself is fine.
    let resp = app.get("/healthz").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

/// With few file descriptors (`ulimit -n 64`), clients that hold connections
/// open make accepts fail. herald says so in a few log lines, not one per
/// try; once the connections close it accepts again, serves, and runs jobs.
#[tokio::test]
async fn out_of_file_descriptors_herald_waits_and_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut herald = HeraldProcess::start_with_fd_limit(&dir.path().join("h.db"), 64, "info", &[]);
    let api = herald.api();
    let job = api.submit("demo", json!({"steps": 1, "step_ms": 0})).await;
    api.wait_status(job.id, Succeeded).await;

    // More connections than herald has descriptors left: it accepts some,
    // the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(addr(&api)).await.unwrap());
    }
    let failed = herald.next_json(WAIT, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("accept failed"))
    });
    let failed = failed.expect("herald logs that accepts fail");
    assert!(herald.is_alive());
    // Let it fail for a while: at one try every 50 ms, a line per failure
    // would be a couple of dozen lines.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    let recovered = herald
        .next_json(WAIT, |v| v["message"] == "accepting connections again")
        .expect("herald logs that it accepts again");
    let failures = recovered["failed"].as_u64().expect("a count of failures");
    let lines = herald
        .seen
        .iter()
        .filter(|l| l.contains("\"accept failed") || l.contains("\"accept still failing"))
        .count() as u64;
    assert!(
        failures > lines,
        "{failures} failed accepts, logged in {lines} lines: {failed}"
    );

    // It serves again, and runs jobs.
    assert!(herald.is_alive(), "herald exited");
    let job = api.submit("demo", json!({"steps": 2, "step_ms": 0})).await;
    api.wait_status(job.id, Succeeded).await;
    assert!(herald.is_alive());
}

/// Submits until one is acknowledged (a client retries a 503): the job.
async fn submit_retrying(api: &Api, input: Value) -> Job {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = api.post_job(&json!({"kind": "demo", "input": input})).await;
        if resp.status() == 202 {
            return resp.json().await.unwrap();
        }
        assert_eq!(resp.status(), 503, "only 503 is worth retrying");
        assert!(Instant::now() < deadline, "the database never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the database away: SQLite, another connection holds `BEGIN
/// EXCLUSIVE` on the file; PostgreSQL, the proxy herald connects through
/// is cut. Gives it back when dropped, or with `back`.
enum Outage {
    Sqlite(Option<sqlx::SqliteConnection>),
    Postgres(DbProxy),
}

impl Outage {
    async fn start(db: &TestDb, proxy: Option<DbProxy>) -> Outage {
        match proxy {
            Some(proxy) => {
                proxy.set_up(false);
                Outage::Postgres(proxy)
            }
            None => {
                use sqlx::Connection;
                let mut conn = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
                sqlx::raw_sql("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Outage::Sqlite(Some(conn))
            }
        }
    }

    async fn back(&mut self) {
        match self {
            Outage::Postgres(proxy) => proxy.set_up(true),
            Outage::Sqlite(conn) => {
                if let Some(mut conn) = conn.take() {
                    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
                }
            }
        }
    }
}

/// While the database is away, a submission answers 503 problem+json
/// `store_unavailable` with `Retry-After`, and herald stays up. Every job
/// acknowledged before the outage (one running through it) and after it
/// runs to its end, with every event.
async fn a_submit_while_the_database_is_away_is_a_503_and_nothing_acknowledged_is_lost() {
    let db = TestDb::new().await;
    let proxy = match backend() {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let mut url = url::Url::parse(db.url()).unwrap();
            let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
            let proxy = DbProxy::start(upstream).await;
            url.set_port(Some(proxy.addr.port())).unwrap();
            Some((proxy, url.to_string()))
        }
    };
    let proxied = proxy.as_ref().map(|(_, url)| url.clone());
    let app = TestApp::spawn_in(db.clone(), |c| {
        if let Some(url) = proxied {
            c.database_url = url;
        }
    })
    .await;
    let done = app.submit("demo", json!({"steps": 1, "step_ms": 0})).await;
    app.wait_status(done.id, Succeeded).await;
    let through = app
        .submit("demo", json!({"steps": 30, "step_ms": 100}))
        .await;
    app.wait_status(through.id, Running).await;

    let mut outage = Outage::start(&db, proxy.map(|(p, _)| p)).await;
    let resp = app
        .post_job(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
        .await;
    let retry_after = resp.headers().get("retry-after").cloned();
    let body = problem(resp, 503, "store_unavailable").await;
    assert!(
        retry_after.is_some_and(|r| r.to_str().unwrap().parse::<u64>().unwrap() > 0),
        "a 503 says when to retry: {body}"
    );
    outage.back().await;

    let after = submit_retrying(&app, json!({"steps": 2, "step_ms": 0})).await;
    for job in [&done, &through, &after] {
        let ended = app.wait_terminal(job.id).await;
        assert_eq!(ended.status, Succeeded, "{ended:?}");
        let events = app.stream_events(job.id).await;
        assert_gapless(&events);
        assert_eq!(events.last().unwrap().event, "result");
    }
    app.stop().await;
}

backend_tests!(
    a_stalled_reader_that_reads_again_gets_every_event_in_order,
    a_stalled_feed_that_reads_again_gets_every_event_in_order,
    a_submit_while_the_database_is_away_is_a_503_and_nothing_acknowledged_is_lost,
);
