//! Remote-worker benchmark: claim → `running` latency on an idle system, and
//! end-to-end throughput of no-op remote jobs run by `--workers` concurrent
//! HTTP workers (this program's own, in Rust), against the release `herald`
//! binary on a fresh SQLite file or a fresh PostgreSQL database (one `all`
//! node), with a remote kind `noop`.
//!
//! ```sh
//! cargo build --release --bins --examples
//! taskset -c 1 target/release/examples/bench_remote --server-cpu 0
//! taskset -c 1 target/release/examples/bench_remote --server-cpu 0 --postgres postgres://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! Latency phase: a worker's claim is waiting (long poll); a job is
//! submitted; latency = from sending the POST to the claim's answer (the job
//! is `running` and the worker holds it). One job at a time, each completed.
//! Throughput phase: `--jobs` jobs are submitted by `--submitters`
//! concurrent clients while `--workers` workers claim up to `--max-jobs` at a
//! time and complete each (`POST …/complete`); jobs/s = jobs / (last
//! completion − first POST). Every job must end `succeeded` exactly once.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Jobs in the latency phase.
    #[arg(long, default_value_t = 300)]
    latency_jobs: usize,
    /// Jobs in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent HTTP workers in the throughput phase.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Jobs a worker claims at most at once.
    #[arg(long, default_value_t = 16)]
    max_jobs: usize,
    /// Concurrent submitting clients in the throughput phase.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// The herald binary (default: target/release/herald).
    #[arg(long)]
    herald: Option<String>,
    /// Pin the server to this CPU with `taskset` (run the benchmark itself
    /// under `taskset -c <other cpu>`).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Run on PostgreSQL: a server URL on which a fresh database is created
    /// (and dropped after).
    #[arg(long)]
    postgres: Option<String>,
}

/// herald and its database, removed when this goes.
struct Server {
    child: Child,
    base: String,
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

async fn start(args: &Args) -> Server {
    let bin = args
        .herald
        .clone()
        .unwrap_or_else(|| "target/release/herald".to_owned());
    let dir = tempfile::tempdir().unwrap();
    let (db_url, pg) = match &args.postgres {
        None => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        Some(admin) => {
            let name = format!("herald_bench_remote_{}", std::process::id());
            for sql in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ] {
                let ok = Command::new("psql").arg(admin).arg("-qc").arg(sql).status();
                assert!(ok.is_ok_and(|s| s.success()), "psql {admin}");
            }
            let mut url = url::Url::parse(admin).unwrap();
            url.set_path(&name);
            (url.to_string(), Some((admin.clone(), name)))
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
    let child = cmd
        .env("HERALD_SUBMIT_RATE_PER_SEC", "1000000")
        .env("HERALD_REMOTE_KINDS", "noop")
        .env("RUST_LOG", "warn")
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_DATABASE_URL", &db_url)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald (did you `cargo build --release --bins`?)");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "herald did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        base,
        pg,
        _dir: dir,
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let resp = client.post(url).json(body).send().await.expect("request");
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON answer");
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

async fn submit(client: &reqwest::Client, base: &str) {
    post(
        client,
        &format!("{base}/v1/jobs"),
        &json!({"kind": "noop", "input": {}}),
    )
    .await;
}

async fn claim(
    client: &reqwest::Client,
    base: &str,
    worker: &str,
    max: usize,
    wait: u32,
) -> Vec<Value> {
    let body = json!({"kinds": ["noop"], "worker_id": worker, "max_jobs": max, "wait_secs": wait});
    let answer = post(client, &format!("{base}/v1/worker/claim"), &body).await;
    answer["jobs"].as_array().cloned().unwrap_or_default()
}

async fn complete(client: &reqwest::Client, base: &str, job: &Value) {
    let url = format!(
        "{base}/v1/worker/jobs/{}/complete",
        job["job_id"].as_str().unwrap()
    );
    post(
        client,
        &url,
        &json!({"lease": job["lease"], "result": null}),
    )
    .await;
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Claim → `running` latency, one job at a time on an idle system.
async fn latency(args: &Args, base: &str) -> (f64, f64) {
    let worker = reqwest::Client::new();
    let client = reqwest::Client::new();
    let mut ms = Vec::with_capacity(args.latency_jobs);
    for _ in 0..args.latency_jobs {
        let waiting = {
            let (worker, base) = (worker.clone(), base.to_owned());
            tokio::spawn(async move { claim(&worker, &base, "lat", 1, 10).await })
        };
        // The claim is waiting before the job comes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        submit(&client, base).await;
        let jobs = waiting.await.unwrap();
        ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(jobs.len(), 1, "the waiting claim took the job");
        complete(&worker, base, &jobs[0]).await;
    }
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

/// No-op remote jobs end to end: submitted while the workers run them.
async fn throughput(args: &Args, base: &str) -> f64 {
    let started = Instant::now();
    let left = Arc::new(AtomicUsize::new(args.jobs));
    let mut submitters = Vec::new();
    for _ in 0..args.submitters {
        let (left, base) = (left.clone(), base.to_owned());
        submitters.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                submit(&client, &base).await;
            }
        }));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (done, base, total, max) = (done.clone(), base.to_owned(), args.jobs, args.max_jobs);
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let name = format!("bench-{w}");
            while done.load(Ordering::SeqCst) < total {
                for job in claim(&client, &base, &name, max, 1).await {
                    complete(&client, &base, &job).await;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        done.load(Ordering::SeqCst),
        args.jobs,
        "every job completed once"
    );
    args.jobs as f64 / elapsed
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let server = start(&args).await;
    let (p50, p99) = latency(&args, &server.base).await;
    drop(server);
    let server = start(&args).await;
    let jobs_per_s = throughput(&args, &server.base).await;
    // Every job succeeded (none twice: a second complete would be 200 and
    // change nothing, and `done` counts answers to distinct claims).
    let list = reqwest::Client::new()
        .get(format!("{}/v1/jobs?status=running&limit=1", server.base))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "no job left running"
    );
    println!(
        "{}",
        json!({
            "backend": backend,
            "claim_to_running_ms": {"p50": (p50 * 100.0).round() / 100.0, "p99": (p99 * 100.0).round() / 100.0},
            "workers": args.workers,
            "max_jobs": args.max_jobs,
            "jobs": args.jobs,
            "jobs_per_s": jobs_per_s.round(),
        })
    );
}
