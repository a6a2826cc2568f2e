//! Item benchmark: one job appends `--items` small items as fast as it can
//! while `--streams` SSE streams watch it. Prints items appended per second,
//! delivery latency (item appended → client parsed) p50/p99/max over every
//! delivery, lost/duplicated/out-of-order items per stream (must be 0), wall
//! times and server CPU per delivered item. Against the release `herald` on a
//! fresh SQLite file, or a fresh PostgreSQL database with `--postgres`.
//!
//! ```sh
//! cargo build --release --bins --examples
//! taskset -c 1 target/release/examples/bench_items --server-cpu 0
//! taskset -c 1 target/release/examples/bench_items --server-cpu 0 \
//!     --postgres 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'
//! ```
//!
//! The job is `demo` with `{"steps": N, "step_ms": 0, "emit_items": true}`:
//! each step appends the item `{"step": k}` and waits until it is persisted,
//! then reports progress. herald runs one job at a time here
//! (`HERALD_WORKER_CONCURRENCY=1`) and a blocker job runs first, so every
//! stream is open before the first item is appended.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Items the job appends (at most demo's 10,000 steps).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    items: u64,
    /// SSE streams watching the job.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Run on PostgreSQL: a server URL on which a fresh database is created
    /// for the run (and dropped after).
    #[arg(long)]
    postgres: Option<String>,
    /// Pin the server to this CPU (run the benchmark under `taskset -c <other>`).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// The herald binary (default: target/release/herald).
    #[arg(long)]
    herald: Option<String>,
    /// Extra environment for the server, KEY=VALUE.
    #[arg(long)]
    server_env: Vec<String>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn parse_ts(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_micros()
}

/// User + system CPU time of a process, in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

struct Server {
    child: Child,
    base: String,
    /// PostgreSQL: (admin URL, database) to drop at the end.
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((admin, name)) = self.pg.take() {
            let _ = Command::new("psql")
                .arg(admin)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .status();
        }
    }
}

async fn fresh_postgres(admin: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("herald_bench_items_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&name);
    (url.to_string(), name)
}

async fn start(args: &Args) -> Server {
    let bin = args.herald.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/herald").to_owned()
    });
    let dir = tempfile::tempdir().unwrap();
    let (db_url, pg) = match &args.postgres {
        None => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        Some(admin) => {
            let (url, name) = fresh_postgres(admin).await;
            (url, Some((admin.clone(), name)))
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = match args.server_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    // One job at a time: the item job waits behind the blocker.
    cmd.env("HERALD_WORKER_CONCURRENCY", "1")
        .env(
            "HERALD_MAX_STREAMS_PER_TENANT",
            (args.streams * 2 + 16).to_string(),
        )
        .env("RUST_LOG", "warn");
    for kv in &args.server_env {
        let (k, v) = kv.split_once('=').expect("--server-env KEY=VALUE");
        cmd.env(k, v);
    }
    let child = cmd
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_DATABASE_URL", &db_url)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald (did you `cargo build --release --bins`?)");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        pg,
        _dir: dir,
    }
}

async fn submit(http: &reqwest::Client, base: &str, input: Value) -> String {
    let resp = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "demo", "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn job(http: &reqwest::Client, base: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What one stream saw.
#[derive(Default)]
struct Seen {
    /// (index, appended at, received at) of every item, in µs.
    items: Vec<(i64, i64, i64)>,
    progress: usize,
    ended: bool,
    closed_at: i64,
}

/// Opens a stream over raw TCP and scans its lines: `event:` says what the
/// next `data:` is (chunk-size lines of the chunked body fall in between
/// events and are skipped).
async fn follow(addr: String, job: String, connected: Arc<AtomicUsize>) -> Seen {
    let mut sock = TcpStream::connect(&addr).await.expect("connect");
    let req = format!("GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::with_capacity(256);
    let mut counted = false;
    let mut kind = Vec::new();
    loop {
        let n = sock.read(&mut buf).await.unwrap_or(0);
        let now = now_micros();
        if n == 0 {
            seen.closed_at = now;
            return seen;
        }
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if !counted && line.starts_with(b"retry:") {
                counted = true;
                connected.fetch_add(1, Ordering::SeqCst);
            } else if let Some(k) = line.strip_prefix(b"event: ") {
                kind = k.to_vec();
            } else if let Some(data) = line.strip_prefix(b"data: ") {
                match kind.as_slice() {
                    b"item" => {
                        // {"item":…,"index":N,"at":"<27 chars>"}
                        let text = std::str::from_utf8(data).unwrap();
                        let i = text.rfind(",\"index\":").unwrap() + 9;
                        let j = text.rfind(",\"at\":\"").unwrap();
                        let index = text[i..j].parse().unwrap();
                        let at = parse_ts(&text[j + 7..j + 7 + 27]);
                        seen.items.push((index, at, now));
                    }
                    b"progress" => seen.progress += 1,
                    b"result" | b"failed" | b"cancelled" => seen.ended = true,
                    _ => {}
                }
                kind.clear();
            }
            line.clear();
        }
    }
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Lost, duplicated and out-of-order items of one stream.
fn check(seen: &Seen, items: u64) -> (usize, usize, usize) {
    let mut got = vec![false; items as usize];
    let (mut dup, mut disorder) = (0, 0);
    let mut prev = -1;
    for &(index, _, _) in &seen.items {
        match got.get_mut(index as usize) {
            Some(g) if !*g => *g = true,
            _ => dup += 1,
        }
        if index != prev + 1 {
            disorder += 1;
        }
        prev = index;
    }
    let lost = got.iter().filter(|g| !**g).count();
    (lost, dup, disorder)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let server = start(&args).await;
    let pid = server.child.id().to_string();
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "herald did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The blocker holds the only worker slot while the streams open.
    let blocker = submit(&http, &base, json!({"steps": 1, "step_ms": 2000})).await;
    while job(&http, &base, &blocker).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let input = json!({"steps": args.items, "step_ms": 0, "emit_items": true});
    let id = submit(&http, &base, input).await;
    let connected = Arc::new(AtomicUsize::new(0));
    let addr = base.trim_start_matches("http://").to_owned();
    let followers: Vec<_> = (0..args.streams)
        .map(|_| tokio::spawn(follow(addr.clone(), id.clone(), connected.clone())))
        .collect();
    while connected.load(Ordering::SeqCst) < args.streams {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        job(&http, &base, &id).await["status"],
        "queued",
        "the item job started before all {} streams were open",
        args.streams
    );
    let cpu0 = cpu_secs(&pid);
    let me0 = cpu_secs("self");
    let mut all = Vec::new();
    for f in followers {
        all.push(f.await.unwrap());
    }
    let server_cpu = cpu_secs(&pid) - cpu0;
    let client_cpu = cpu_secs("self") - me0;
    let done = job(&http, &base, &id).await;
    assert_eq!(done["status"], "succeeded", "the item job: {done}");
    assert_eq!(done["items_count"], args.items);

    let (mut lost, mut dup, mut disorder, mut unfinished, mut progress) = (0, 0, 0, 0, 0);
    let mut lat = Vec::with_capacity(all.len() * args.items as usize);
    let (mut first_at, mut last_at, mut last_close) = (i64::MAX, i64::MIN, i64::MIN);
    for seen in &all {
        let (l, d, o) = check(seen, args.items);
        lost += l;
        dup += d;
        disorder += o;
        unfinished += usize::from(!seen.ended);
        progress += seen.progress;
        last_close = last_close.max(seen.closed_at);
        for &(_, at, got) in &seen.items {
            first_at = first_at.min(at);
            last_at = last_at.max(at);
            lat.push(got - at);
        }
    }
    lat.sort_unstable();
    let started = parse_ts(done["started_at"].as_str().unwrap());
    let finished = parse_ts(done["finished_at"].as_str().unwrap());
    let span = (last_at - first_at) as f64 / 1e6;
    println!(
        "appended {} items in {:.2} s (first to last item's `at`): {:.0} items/s",
        args.items,
        span,
        args.items as f64 / span
    );
    println!(
        "delivery (appended -> parsed) over {} deliveries to {} streams: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        args.streams,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "job ran {:.2} s (started_at -> finished_at); last stream closed {:.2} s after the job started",
        (finished - started) as f64 / 1e6,
        (last_close - started) as f64 / 1e6
    );
    println!(
        "server CPU {:.2} s = {:.1} us per delivered item (appends and progress events included); client CPU {:.2} s",
        server_cpu,
        server_cpu * 1e6 / lat.len() as f64,
        client_cpu
    );
    println!(
        "progress events per stream: {:.0}",
        progress as f64 / args.streams as f64
    );
    println!(
        "lost {lost}, duplicated {dup}, out of order {disorder}, streams that did not reach the result {unfinished}"
    );
}
