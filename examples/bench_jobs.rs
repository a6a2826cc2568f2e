//! Job benchmark: POST → `running` latency and end-to-end throughput of no-op
//! `demo` jobs (steps 1, step_ms 0), against the release `herald` binary on a
//! fresh SQLite file, or a fresh PostgreSQL database with one `all` node or one
//! `api` node and `--worker-nodes` worker nodes.
//!
//! ```sh
//! cargo build --release --bins --examples
//! taskset -c 1 target/release/examples/bench_jobs --server-cpu 0
//! target/release/examples/bench_jobs --postgres postgres://postgres@127.0.0.1:5432/postgres
//! target/release/examples/bench_jobs --postgres postgres://postgres@127.0.0.1:5432/postgres --worker-nodes 2
//! ```
//!
//! The nodes use the URL's query as given: add `?sslmode=disable` to measure
//! without TLS to a database on the same host (sqlx's default, `prefer`,
//! encrypts when the server offers it).
//!
//! Latency phase: jobs are submitted one at a time at `--rate` per second and
//! each job's `started_at` (the moment its `running` event was appended) is
//! compared with the moment the client sent its POST.
//! Throughput phase: `--throughput-jobs` are submitted by `--clients`
//! concurrent clients; jobs/s = jobs / (last finished_at − first POST).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePool;

#[derive(Parser)]
struct Args {
    /// Jobs in the latency phase.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Submissions per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Jobs in the throughput phase.
    #[arg(long, default_value_t = 10_000)]
    throughput_jobs: usize,
    /// Concurrent submitting clients in the throughput phase.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// The herald binary (default: target/release/herald).
    #[arg(long)]
    herald: Option<String>,
    /// Pin the server to this CPU with `taskset` (run the benchmark itself
    /// under `taskset -c <other cpu>` so client and server do not share a core).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Extra environment for the server, KEY=VALUE.
    #[arg(long)]
    server_env: Vec<String>,
    /// Run on PostgreSQL: a server URL on which a fresh database is created
    /// for each phase (and dropped after).
    #[arg(long)]
    postgres: Option<String>,
    /// PostgreSQL only: 0 runs one `all` node; N runs one `api` node (which
    /// takes the submissions) and N `worker` nodes.
    #[arg(long, default_value_t = 0)]
    worker_nodes: usize,
}

/// The benchmark's own view of the database, to count finished jobs.
enum Db {
    Sqlite(SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    async fn connect(url: &str) -> Db {
        if url.starts_with("sqlite:") {
            Db::Sqlite(SqlitePool::connect(url).await.unwrap())
        } else {
            Db::Postgres(sqlx::PgPool::connect(url).await.unwrap())
        }
    }

    async fn succeeded(&self) -> i64 {
        let q = "SELECT count(*) FROM herald_jobs WHERE status = 'succeeded'";
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
            Db::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
        }
    }

    async fn last_finish(&self) -> i64 {
        let q = "SELECT max(finished_at) FROM herald_jobs";
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
            Db::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
        }
    }
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The herald processes of one phase, and the database they share.
struct Server {
    children: Vec<Child>,
    /// Where submissions go (the `all` or `api` node).
    base: String,
    db_url: String,
    /// PostgreSQL: (admin URL, database) to drop at the end.
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((admin, name)) = self.pg.take() {
            let _ = Command::new("psql")
                .arg(admin)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_node(
    bin: &str,
    cpu: Option<usize>,
    extra_env: &[String],
    db_url: &str,
    port: u16,
    role: &str,
) -> Child {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    // The benchmark is one tenant submitting as fast as it can.
    cmd.env("HERALD_SUBMIT_RATE_PER_SEC", "1000000")
        .env("RUST_LOG", "warn");
    for kv in extra_env {
        let (k, v) = kv.split_once('=').expect("--server-env KEY=VALUE");
        cmd.env(k, v);
    }
    cmd.env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_DATABASE_URL", db_url)
        .env("HERALD_ROLE", role)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald (did you `cargo build --release --bins`?)")
}

async fn start(args: &Args, bin: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (db_url, pg) = match &args.postgres {
        None => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        Some(admin) => {
            use sqlx::Connection;
            let name = format!("herald_bench_{}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
            let mut url = url::Url::parse(admin).unwrap();
            url.set_path(&name);
            (url.to_string(), Some((admin.clone(), name)))
        }
    };
    let port = free_port();
    let front_role = if args.worker_nodes > 0 { "api" } else { "all" };
    let mut children = vec![spawn_node(
        bin,
        args.server_cpu,
        &args.server_env,
        &db_url,
        port,
        front_role,
    )];
    let base = format!("http://127.0.0.1:{port}");
    // Workers start once the first node has run the migrations.
    wait_ready(&reqwest::Client::new(), &base).await;
    for _ in 0..args.worker_nodes {
        let port = free_port();
        children.push(spawn_node(
            bin,
            args.server_cpu,
            &args.server_env,
            &db_url,
            port,
            "worker",
        ));
        wait_ready(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    }
    Server {
        children,
        base,
        db_url,
        pg,
        _dir: dir,
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("herald did not become ready");
}

async fn submit(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_all_done(db: &Db, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = db.succeeded().await;
        if done as usize >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} jobs finished"
        );
        // Counting is a scan of the status index: often enough, it took a
        // sixth of the database's CPU from the jobs it measures. The result
        // does not depend on it (jobs/s uses the last `finished_at`).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin = args.herald.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/herald").to_owned()
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // Latency phase.
    let server = start(&args, &bin).await;
    let pool = Db::connect(&server.db_url).await;
    let gap = Duration::from_micros(1_000_000 / args.rate.max(1));
    let mut sent = Vec::with_capacity(args.jobs);
    let mut tick = tokio::time::interval(gap);
    for _ in 0..args.jobs {
        tick.tick().await;
        let t = now_micros();
        let id = submit(&client, &server.base).await;
        sent.push((id, t));
    }
    wait_all_done(&pool, args.jobs).await;
    let mut lat = Vec::with_capacity(sent.len());
    for (id, t) in &sent {
        let job: Value = client
            .get(format!("{}/v1/jobs/{id}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let started = parse_ts(job["started_at"].as_str().unwrap());
        lat.push((started - t) as f64 / 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "POST -> running over {} jobs at {}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        args.rate,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    drop(pool);
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Throughput phase, on a fresh database.
    let server = Arc::new(start(&args, &bin).await);
    let pool = Db::connect(&server.db_url).await;
    let first_post = now_micros();
    let started = Instant::now();
    let per_client = args.throughput_jobs / args.clients;
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let client = client.clone();
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                submit(&client, &server.base).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let submitted = per_client * args.clients;
    let submit_secs = started.elapsed().as_secs_f64();
    wait_all_done(&pool, submitted).await;
    let last_finish = pool.last_finish().await;
    let secs = (last_finish - first_post) as f64 / 1e6;
    println!(
        "throughput: {submitted} no-op demo jobs by {} clients: {:.0} jobs/s end to end ({:.1} s; submissions alone {:.0}/s)",
        args.clients,
        submitted as f64 / secs,
        secs,
        submitted as f64 / submit_secs
    );
}
