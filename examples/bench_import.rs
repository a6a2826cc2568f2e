//! Import benchmark: upload a generated CSV to the release `herald` binary (on
//! a fresh SQLite file) and import it into a local downstream that answers
//! every batch at once. Prints the upload time, import throughput (rows/s and
//! MiB/s of file) and the server's peak RSS, for each file size, so it shows
//! whether memory grows with the file.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/bench_import --mib 10 --mib 100
//! ```

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use poem::web::{Data, Json};
use poem::{handler, EndpointExt, Route, Server};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// File sizes to import, in MiB (repeat).
    #[arg(long, default_values_t = [10u64, 100])]
    mib: Vec<u64>,
    /// Rows per batch.
    #[arg(long, default_value_t = 500)]
    batch_size: u64,
    /// The herald binary (default: target/release/herald).
    #[arg(long)]
    herald: Option<String>,
}

#[handler]
fn sink(Json(batch): Json<Vec<Value>>, rows: Data<&Arc<AtomicU64>>) -> &'static str {
    rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
    "ok"
}

/// VmHWM (peak resident set) and VmRSS of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin = args.herald.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/herald").to_owned()
    });
    let rows = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_base = format!("http://{}", listener.local_addr().unwrap());
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(
        Server::new_with_acceptor(acceptor).run(
            Route::new()
                .at("/rows", poem::post(sink))
                .data(rows.clone()),
        ),
    );
    let client = reqwest::Client::new();

    for mib in &args.mib {
        let dir = tempfile::tempdir().unwrap();
        // The file: `id,name,amount,note` rows until the size is reached.
        let path = dir.path().join("rows.csv");
        let target = mib * 1024 * 1024;
        let mut text = String::from("id,name,amount,note\n");
        let mut n = 0u64;
        while (text.len() as u64) < target {
            n += 1;
            text.push_str(&format!(
                "{n},customer {n},{}.{:02},imported by the herald benchmark\n",
                n * 7 % 10_000,
                n % 100
            ));
        }
        std::fs::write(&path, &text).unwrap();
        let size = text.len() as u64;
        drop(text);

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(&bin)
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "HERALD_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("h.db").display()),
            )
            .env("HERALD_DOWNSTREAMS", format!("sink={sink_base}"))
            .env("HERALD_MAX_UPLOAD_BYTES", (size + 1).to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start herald (cargo build --release --bins)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/readyz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "herald did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, idle_rss) = memory(child.id());
        rows.store(0, Ordering::Relaxed);

        let started = Instant::now();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let job: Value = client
            .post(format!(
                "{base}/v1/uploads?downstream=sink&path=/rows&format=csv&batch_size={}",
                args.batch_size
            ))
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let uploaded = started.elapsed();
        let id = job["id"]
            .as_str()
            .expect("the upload answered a job")
            .to_owned();
        let done = loop {
            let job: Value = client
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "succeeded" || job["status"] == "failed" {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (peak, _) = memory(child.id());
        let ts = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(done[k].as_str().unwrap())
                .unwrap()
                .timestamp_micros()
        };
        let import_secs = (ts("finished_at") - ts("started_at")) as f64 / 1e6;
        let sent = rows.load(Ordering::Relaxed);
        println!(
            "{mib} MiB ({n} rows): upload {:.1} s ({:.0} MiB/s); import {} ({} rows in {:.1} s: {:.0} rows/s, {:.1} MiB/s); server RSS idle {} KiB, peak {} KiB",
            uploaded.as_secs_f64(),
            size as f64 / 1048576.0 / uploaded.as_secs_f64(),
            done["status"],
            sent,
            import_secs,
            sent as f64 / import_secs,
            size as f64 / 1048576.0 / import_secs,
            idle_rss,
            peak
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
