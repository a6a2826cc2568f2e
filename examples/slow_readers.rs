//! Hostile readers: what clients that open a job's event stream and never
//! read it cost herald. N such clients watch one job that appends many events;
//! herald's RSS is read before they connect, once their streams are open, and
//! after the job has ended. Then a few of them start reading and must get
//! every event, in order (a stalled stream waits; it loses nothing).
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/slow_readers --clients 1000
//! ```
//!
//! Needs `ulimit -n` above twice `--clients` (both ends run on this machine).
//!
//! Measured on a 2-core VM (1,000 clients, 20,003 events): herald's RSS grows
//! by 35–38 KiB a client, 13 KiB of it what any open stream costs. Before
//! streams bounded their chunks and hyper its buffer (~400 KiB by default), it
//! grew by ~530 KiB a client.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Clients that open the stream and never read it.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// The job's steps; each appends an item and a progress event. The
    /// default makes ~2.7 MB of events: more than the kernel buffers for one
    /// connection, so every stream stalls in herald.
    #[arg(long, default_value_t = 10_000)]
    steps: u64,
    /// The pause before each step.
    #[arg(long, default_value_t = 1)]
    step_ms: u64,
    /// The clients' receive buffer (SO_RCVBUF), in bytes; 0 leaves the
    /// system's default. Small, the kernel holds little of each stream, and
    /// herald's own buffering shows.
    #[arg(long, default_value_t = 4096)]
    rcvbuf: u32,
    /// How many of the stalled clients read to the end afterwards.
    #[arg(long, default_value_t = 10)]
    drain: usize,
    /// How long to wait after the job ends before RSS is read (the allocator
    /// gives memory back over some seconds).
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// The herald binary (default: target/release/herald).
    #[arg(long)]
    herald: Option<String>,
    /// Extra environment for the server, KEY=VALUE.
    #[arg(long)]
    server_env: Vec<String>,
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
        let mut cmd = Command::new(&bin);
        cmd.env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "HERALD_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("s.db").display()),
            )
            // All clients are one tenant here; lift its stream limit.
            .env(
                "HERALD_MAX_STREAMS_PER_TENANT",
                (args.clients * 2 + 10).to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for kv in &args.server_env {
            let (k, v) = kv.split_once('=').expect("--server-env KEY=VALUE");
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .expect("start herald (cargo build --release first)");
        Server {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(self.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "herald did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn submit(&self, http: &reqwest::Client, input: Value) -> String {
        let resp = http
            .post(self.url("/v1/jobs"))
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

    async fn job(&self, http: &reqwest::Client, id: &str) -> Value {
        http.get(self.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `herald_streams_open{type="job"}` from the scrape.
    async fn open_streams(&self, http: &reqwest::Client) -> usize {
        let text = http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("herald_streams_open{type=\"job\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as usize
    }
}

/// Opens the job's stream and sends the request; reads nothing.
async fn open(port: u16, job: &str, rcvbuf: u32) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if rcvbuf > 0 {
        socket.set_recv_buffer_size(rcvbuf).unwrap();
    }
    let mut sock = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let req = format!(
        "GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: slow\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    sock
}

/// Reads the stream to its end; the `id:` of every event, in order. Each
/// event sits whole inside one HTTP chunk, so `id:` lines are never split by
/// chunk-size lines.
async fn read_ids(mut sock: TcpStream) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::with_capacity(256);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), sock.read(&mut buf))
            .await
            .expect("the stream goes on")
            .unwrap_or(0);
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

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let server = Server::start(&args);
    let http = reqwest::Client::new();
    server.wait_ready(&http).await;
    // Warm up: pools, the first job, the first stream.
    let warm = server
        .submit(&http, json!({"steps": 3, "step_ms": 0, "emit_items": true}))
        .await;
    let body = http
        .get(server.url(&format!("/v1/jobs/{warm}/events")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: result"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();

    let id = server
        .submit(
            &http,
            json!({"steps": args.steps, "step_ms": args.step_ms, "emit_items": true}),
        )
        .await;
    let started = Instant::now();
    let mut socks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        socks.push(open(server.port, &id, args.rcvbuf).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.open_streams(&http).await < args.clients {
        assert!(Instant::now() < deadline, "the streams did not all open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = server.rss_kib();

    let mut peak = open;
    let job = loop {
        peak = peak.max(server.rss_kib());
        let job = server.job(&http, &id).await;
        if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ran = started.elapsed();
    let last = job["last_event_id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = server.rss_kib();
    let still_open = server.open_streams(&http).await;

    let per = |kib: u64| (kib.saturating_sub(before) as f64) / args.clients as f64;
    println!(
        "{} clients that never read, on one job that appended {last} events in {:.1} s",
        args.clients,
        ran.as_secs_f64()
    );
    println!("herald RSS before the clients:   {:8.1} MiB", mib(before));
    println!(
        "  with their streams open:       {:8.1} MiB  (+{:.1} KiB a client)",
        mib(open),
        per(open)
    );
    println!(
        "  peak while the job ran:        {:8.1} MiB  (+{:.1} KiB a client)",
        mib(peak),
        per(peak)
    );
    println!(
        "  {}s after the job ended:        {:8.1} MiB  (+{:.1} KiB a client)",
        args.settle_secs,
        mib(after),
        per(after)
    );
    println!("streams still open (stalled):    {still_open}");

    // The stalled clients start reading: every event, in order, once.
    let want: Vec<i64> = (1..=last).collect();
    let drained = socks.split_off(args.clients - args.drain.min(args.clients));
    drop(socks);
    let t = Instant::now();
    let reads: Vec<_> = drained
        .into_iter()
        .map(|s| tokio::spawn(read_ids(s)))
        .collect();
    let mut complete = 0;
    for r in reads {
        let ids = r.await.unwrap();
        if ids == want {
            complete += 1;
        } else {
            let missing = want.len().saturating_sub(ids.len());
            println!(
                "LOST: a drained client got {} events (want {}; {missing} short)",
                ids.len(),
                want.len()
            );
        }
    }
    println!(
        "drained {} stalled clients in {:.1} s: {complete} got all {last} events in order",
        args.drain.min(args.clients),
        t.elapsed().as_secs_f64()
    );
}
