//! Stream benchmark: N concurrent SSE streams on one herald, jobs emitting at a
//! set rate. Prints server RSS per idle stream, delivery latency (event
//! appended → client parsed) p50/p99/max, events/s delivered, server CPU per
//! delivered event, and lost/duplicated events (must be 0).
//!
//! ```sh
//! cargo build --release --bins --examples
//! ulimit -n 20000
//! taskset -c 1 target/release/examples/bench_streams --server-cpu 0 --streams 10000
//! ```
//!
//! Idle phase: `--jobs` jobs that stay silent; `--streams` streams spread over
//! them; RSS growth / streams once all are open. Active phase: new jobs,
//! submitted evenly over one step so their events are spread in time, each
//! emitting one progress event per step; `--rate` is the total deliveries/s.
//! The client is a lean raw-TCP reader so that it does not eat the server's CPU.

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
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Deliveries per second in the active phase (all streams together).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the active phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// How long the idle streams stay open before RSS is read (allocators give
    /// back the memory of the connection storm over some seconds).
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    #[arg(long)]
    herald: Option<String>,
    /// Pin the server to this CPU (run the benchmark under `taskset -c <other>`).
    #[arg(long)]
    server_cpu: Option<usize>,
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

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// User + system CPU time of the server, in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

fn start(args: &Args) -> Server {
    let bin = args.herald.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/herald").to_owned()
    });
    let dir = tempfile::tempdir().unwrap();
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
    cmd.env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "HERALD_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        )
        .env("HERALD_WORKER_CONCURRENCY", (args.jobs * 2 + 8).to_string())
        // All streams belong to one tenant here; lift its stream limit.
        .env(
            "HERALD_MAX_STREAMS_PER_TENANT",
            (args.streams * 2).to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for kv in &args.server_env {
        let (k, v) = kv.split_once('=').expect("--server-env KEY=VALUE");
        cmd.env(k, v);
    }
    Server {
        child: cmd
            .spawn()
            .expect("start herald (cargo build --release first)"),
        port,
        _dir: dir,
    }
}

async fn submit(http: &reqwest::Client, port: u16, input: Value) -> String {
    let resp = http
        .post(format!("http://127.0.0.1:{port}/v1/jobs"))
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

async fn job(http: &reqwest::Client, port: u16, id: &str) -> Value {
    http.get(format!("http://127.0.0.1:{port}/v1/jobs/{id}"))
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
    ids: Vec<i64>,
    /// (appended at, latency) of every event, in µs.
    latencies_us: Vec<(i64, i64)>,
    ended: bool,
}

/// Opens a stream over raw TCP and scans it for `id:` and `data:` lines (each
/// event arrives inside one HTTP chunk, so chunk-size lines sit between events).
async fn follow(
    port: u16,
    job: String,
    connected: Arc<AtomicUsize>,
    hold: Option<Arc<tokio::sync::Notify>>,
) -> Seen {
    let mut sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut line = Vec::with_capacity(256);
    let mut counted = false;
    let mut pending_id = None;
    let wait_hold = async {
        match &hold {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(wait_hold);
    loop {
        let n = tokio::select! {
            r = sock.read(&mut buf) => r.unwrap_or(0),
            _ = &mut wait_hold => return seen,
        };
        if n == 0 {
            return seen;
        }
        let now = now_micros();
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if !counted && line.starts_with(b"retry:") {
                counted = true;
                connected.fetch_add(1, Ordering::SeqCst);
            } else if let Some(v) = line.strip_prefix(b"id: ") {
                pending_id = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            } else if let Some(data) = line.strip_prefix(b"data: ") {
                if let Some(id) = pending_id.take() {
                    seen.ids.push(id);
                }
                let text = String::from_utf8_lossy(data);
                if let Some(i) = text.find("\"at\":\"") {
                    let at = &text[i + 6..i + 6 + 27];
                    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
                        let at = t.timestamp_micros();
                        seen.latencies_us.push((at, now - at));
                    }
                }
                if text.contains("\"result\":") {
                    seen.ended = true;
                }
            }
            line.clear();
        }
    }
}

/// The cumulative buckets of herald_event_delivery_lag_seconds: (le, count).
async fn lag_buckets(http: &reqwest::Client, port: u16) -> Vec<(f64, f64)> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("herald_event_delivery_lag_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    out
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn wait_connected(connected: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} streams opened",
            connected.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let server = start(&args);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("http://127.0.0.1:{}/readyz", server.port))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per_job = args.streams.div_ceil(args.jobs);

    // Idle phase: silent jobs, streams on them, RSS growth per stream.
    let mut idle_jobs = Vec::new();
    for _ in 0..args.jobs {
        idle_jobs.push(submit(&http, server.port, json!({"steps": 1, "step_ms": 60000})).await);
    }
    for id in &idle_jobs {
        while job(&http, server.port, id).await["status"] != "running" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = server.rss_kib();
    let connected = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let mut idle = Vec::new();
    for i in 0..args.streams {
        let job = idle_jobs[i / per_job].clone();
        idle.push(tokio::spawn(follow(
            server.port,
            job,
            connected.clone(),
            Some(release.clone()),
        )));
    }
    wait_connected(&connected, args.streams).await;
    let rss_open = server.rss_kib();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let rss1 = server.rss_kib();
    println!(
        "idle: RSS right after the last stream opened: {:.1} KiB per stream",
        (rss_open - rss0) as f64 / args.streams as f64
    );
    println!(
        "idle: {} streams held {} s, server RSS {} KiB -> {} KiB: {:.1} KiB per stream",
        args.streams,
        args.idle_secs,
        rss0,
        rss1,
        (rss1 - rss0) as f64 / args.streams as f64
    );
    release.notify_waiters();
    for h in idle {
        let _ = h.await;
    }

    // Active phase.
    let step_ms = (args.streams as u64 * 1000 / args.rate.max(1)).clamp(1, 60_000);
    let steps = (args.seconds * 1000 / step_ms).max(1);
    let gap = Duration::from_millis(step_ms) / args.jobs as u32;
    println!(
        "active: {} jobs x {} steps of {} ms, {} streams each, jobs started {:?} apart",
        args.jobs, steps, step_ms, per_job, gap
    );
    let connected = Arc::new(AtomicUsize::new(0));
    let mut followers = Vec::new();
    let mut active_jobs = Vec::new();
    for _ in 0..args.jobs {
        let id = submit(
            &http,
            server.port,
            json!({"steps": steps, "step_ms": step_ms}),
        )
        .await;
        for _ in 0..per_job {
            followers.push(tokio::spawn(follow(
                server.port,
                id.clone(),
                connected.clone(),
                None,
            )));
        }
        active_jobs.push(id);
        tokio::time::sleep(gap).await;
    }
    // Measure from the moment every stream is open: connecting is not delivering.
    wait_connected(&connected, per_job * args.jobs).await;
    let lag_before = lag_buckets(&http, server.port).await;
    let cpu0 = server.cpu_secs();
    let t0 = Instant::now();
    let live_from = now_micros();
    let mut all = Vec::new();
    for f in followers {
        all.push(f.await.unwrap());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = server.cpu_secs() - cpu0;
    let lag_after = lag_buckets(&http, server.port).await;

    let mut lost = 0usize;
    let mut dup = 0usize;
    let mut unfinished = 0usize;
    let mut lat = Vec::new();
    let mut delivered = 0usize;
    for (i, seen) in all.iter().enumerate() {
        let last = job(&http, server.port, &active_jobs[i / per_job]).await["last_event_id"]
            .as_i64()
            .unwrap();
        let mut expect = 1;
        for &id in &seen.ids {
            if id < expect {
                dup += 1;
            } else {
                lost += (id - expect) as usize;
                expect = id + 1;
            }
        }
        lost += (last + 1 - expect).max(0) as usize;
        if !seen.ended {
            unfinished += 1;
        }
        for &(at, l) in &seen.latencies_us {
            if at >= live_from {
                delivered += 1;
                lat.push(l);
            }
        }
    }
    lat.sort_unstable();
    println!(
        "delivery latency (appended -> parsed) over {} live events: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "delivered {} live events in {:.1} s: {:.0} events/s; server CPU {:.2} s = {:.1} us per delivered event",
        delivered,
        elapsed,
        delivered as f64 / elapsed,
        cpu,
        cpu * 1e6 / delivered as f64
    );
    // The server's own view: /metrics' lag histogram over the same window.
    let window: Vec<(f64, f64)> = lag_after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - lag_before
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = window.last().map_or(0.0, |b| b.1);
    let p99 = window
        .iter()
        .find(|(_, n)| *n >= total * 0.99)
        .map_or(f64::NAN, |b| b.0);
    let p50 = window
        .iter()
        .find(|(_, n)| *n >= total * 0.5)
        .map_or(f64::NAN, |b| b.0);
    println!(
        "server-side lag from /metrics over {total:.0} deliveries: p50 <= {:.1} ms, p99 <= {:.1} ms (histogram bucket bounds)",
        p50 * 1000.0,
        p99 * 1000.0
    );
    println!("lost {lost}, duplicated {dup}, streams that did not reach the result {unfinished}");
}
