//! Chaos, the long run (the CI form is `tests/it/chaos.rs`): clients cut
//! their connections at random byte offsets and moments, mid-event included,
//! and resume by `Last-Event-ID` or by query (`last_event_id`, `after`), on
//! job streams and on the feed, while jobs succeed, fail, panic and are
//! cancelled, until at least `--reconnects` reconnects (10,000). Every event
//! each client got is checked against the stored log: none lost, repeated,
//! reordered or altered, and every job must end.
//!
//! ```sh
//! cargo run --release --example chaos
//! cargo run --release --example chaos -- --postgres postgres://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! Without `--postgres`: one herald node on a fresh SQLite file. With it: a
//! fresh database, two `api` nodes (each reconnect goes to either) and two
//! `worker` nodes; every `--kill-every` seconds a worker is killed -9 mid-job
//! and restarted a moment later (under its own node id, which takes its jobs
//! back at once, or a new one, whose jobs wait out the lease), and every
//! `--listeners-every` seconds the LISTEN connection of every node is
//! terminated (`pg_terminate_backend`).
//!
//! The nodes are this program run again as herald (`herald::cli::main` with
//! the built-in kinds, as the `herald` binary is), so nothing else needs
//! building; `--herald <path>` runs another binary. It prints the seed
//! (`--seed` repeats a run's choices: cut points, resume styles, nodes, jobs,
//! kills; not the machine's timing) and exits 1 when anything was lost,
//! repeated, reordered or altered, or a job did not end.

#[path = "../tests/it/chaos/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use harness::{Cuts, Plan, SqlLog};

// As the `herald` binary does (see src/main.rs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Set in the environment of the nodes this program starts: run as herald.
const NODE: &str = "HERALD_CHAOS_NODE";

#[derive(Parser)]
struct Args {
    /// Run on PostgreSQL: a server URL on which a fresh database is created
    /// (and dropped after); two API nodes, two worker nodes, kills and
    /// terminated LISTEN connections. Without it: one node on SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// The seed of the run's choices (random when not given; printed).
    #[arg(long, env = "HERALD_CHAOS_SEED")]
    seed: Option<u64>,
    /// Keep submitting jobs until the clients have reconnected this many times.
    #[arg(long, default_value_t = 10_000)]
    reconnects: u64,
    /// Submit at least this many jobs.
    #[arg(long, default_value_t = 20)]
    jobs: usize,
    /// Jobs watched at once.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Clients following each job's stream, each from a random moment.
    #[arg(long, default_value_t = 2)]
    job_clients: usize,
    /// Clients following the feed, opened before the first job.
    #[arg(long, default_value_t = 4)]
    feed_clients: usize,
    /// Connections are cut after 0 to this many bytes (a tenth after 0 to
    /// 300 ms instead, a twentieth read whole).
    #[arg(long, default_value_t = 1500)]
    max_cut_bytes: usize,
    /// PostgreSQL: kill -9 a worker node this often (seconds).
    #[arg(long, default_value_t = 5.0)]
    kill_every: f64,
    /// PostgreSQL: terminate every node's LISTEN connection this often (seconds).
    #[arg(long, default_value_t = 2.0)]
    listeners_every: f64,
    /// `RUST_LOG` of the nodes (their logs are in the temp dir printed at start).
    #[arg(long, default_value = "warn")]
    node_log: String,
    /// Run this herald binary as the nodes instead of this program.
    #[arg(long)]
    herald: Option<PathBuf>,
}

fn main() -> ExitCode {
    if std::env::var_os(NODE).is_some() {
        return herald::cli::main(herald::Kinds::builtin());
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(chaos(args))
}

/// One herald process.
struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node and waits until it is ready; its log goes to `logs/<id>.log`.
async fn start_node(args: &Args, db_url: &str, dir: &Path, role: &str, id: &str) -> Node {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = match &args.herald {
        Some(path) => path.clone(),
        None => std::env::current_exe().expect("this program's path"),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))
        .unwrap();
    let child = Command::new(exe)
        .env(NODE, "1")
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_DATABASE_URL", db_url)
        .env("HERALD_ROLE", role)
        .env("HERALD_NODE_ID", id)
        .env("HERALD_WORKER_LEASE_SECS", "3")
        .env("HERALD_RECONCILE_SECS", "1")
        .env("HERALD_RETRY_BACKOFF_MS", "10")
        .env("HERALD_PROGRESS_MIN_INTERVAL_MS", "0")
        .env("HERALD_SUBMIT_RATE_PER_SEC", "100000")
        .env("HERALD_MAX_STREAMS_PER_TENANT", "100000")
        // Four nodes and this program on one server of 100 connections.
        .env("HERALD_DATABASE_POOL", "4")
        .env("RUST_LOG", &args.node_log)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a herald node");
    // Killed on drop, also when it never becomes ready.
    let node = Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", node.base)).send().await {
            if r.status() == 200 {
                return node;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not become ready; see {}",
            dir.join(format!("{id}.log")).display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh PostgreSQL database on `admin`'s server: its URL and name.
async fn create_database(admin: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("herald_chaos_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to --postgres");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("create the chaos database");
    }
    let mut url = url::Url::parse(admin).expect("a URL");
    url.set_path(&name);
    (url.to_string(), name)
}

async fn drop_database(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
}

/// A worker node: its name, the node id it runs under now, its process.
struct Worker {
    name: &'static str,
    id: String,
    node: Node,
}

/// What the PostgreSQL chaos did.
#[derive(Default)]
struct Done {
    kills: u64,
    same_id_restarts: u64,
    new_id_restarts: u64,
    listener_rounds: u64,
    listeners_terminated: i64,
}

/// Kills and restarts workers, and terminates LISTEN connections, until `stop`.
async fn chaos_loop(
    args: &Args,
    db_url: &str,
    dir: &Path,
    workers: &mut [Worker],
    pool: &sqlx::PgPool,
    mut rng: StdRng,
    stop: &tokio_util::sync::CancellationToken,
) -> Done {
    let mut done = Done::default();
    let kill_every = Duration::from_secs_f64(args.kill_every);
    let listeners_every = Duration::from_secs_f64(args.listeners_every);
    let mut next_kill = Instant::now() + kill_every;
    let mut next_listeners = Instant::now() + listeners_every;
    loop {
        let next = next_kill.min(next_listeners);
        tokio::select! {
            _ = stop.cancelled() => return done,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        if Instant::now() >= next_listeners {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'herald-listener %'",
            )
            .fetch_one(pool)
            .await
            .unwrap_or(0);
            done.listener_rounds += 1;
            done.listeners_terminated += n;
            next_listeners = Instant::now() + listeners_every;
        }
        if Instant::now() >= next_kill {
            let i = rng.random_range(0..workers.len());
            let w = &mut workers[i];
            let _ = w.node.child.kill(); // SIGKILL
            let _ = w.node.child.wait();
            done.kills += 1;
            let down = Duration::from_millis(rng.random_range(0..=2000));
            tokio::select! {
                _ = stop.cancelled() => return done,
                _ = tokio::time::sleep(down) => {}
            }
            if rng.random_bool(0.5) {
                done.same_id_restarts += 1;
            } else {
                done.new_id_restarts += 1;
                w.id = format!("{}-{}", w.name, done.kills);
            }
            w.node = start_node(args, db_url, dir, "worker", &w.id).await;
            next_kill = Instant::now() + kill_every;
        }
    }
}

async fn chaos(args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = tempfile::tempdir().expect("a temp dir");
    let plan = Plan {
        seed,
        jobs: args.jobs,
        min_reconnects: args.reconnects,
        in_flight: args.in_flight,
        steps: (30, 80),
        step_ms: (10, 30),
        // Room for a few kills of the same job.
        max_attempts: 5,
        job_clients: args.job_clients,
        feed_clients: args.feed_clients,
        cuts: Cuts {
            max_bytes: args.max_cut_bytes,
            timed_percent: 10,
            max_ms: 300,
            whole_percent: 5,
        },
        stall: Duration::from_secs(60),
    };
    println!(
        "chaos: seed {seed} (--seed {seed} repeats its choices), at least {} reconnects, on {}",
        args.reconnects,
        if args.postgres.is_some() {
            "PostgreSQL: two api nodes, two worker nodes"
        } else {
            "SQLite: one node"
        }
    );
    println!("node logs in {}", dir.path().display());

    let (figures, done) = match &args.postgres {
        None => {
            let url = format!("sqlite://{}", dir.path().join("chaos.db").display());
            let node = start_node(&args, &url, dir.path(), "all", "chaos").await;
            let log = SqlLog::connect(&url).await;
            let figures = harness::run(vec![node.base.clone()], plan, &log).await;
            (figures, None)
        }
        Some(admin) => {
            let (url, name) = create_database(admin).await;
            // The first node runs the migrations before the others start.
            let a = start_node(&args, &url, dir.path(), "api", "chaos-a").await;
            let d = start_node(&args, &url, dir.path(), "api", "chaos-d").await;
            let mut workers = Vec::new();
            for name in ["chaos-b", "chaos-c"] {
                let node = start_node(&args, &url, dir.path(), "worker", name).await;
                workers.push(Worker {
                    name,
                    id: name.to_owned(),
                    node,
                });
            }
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            let log = SqlLog::Postgres(pool.clone());
            let stop = tokio_util::sync::CancellationToken::new();
            let rng = StdRng::seed_from_u64(seed ^ 0xC4A0_5C4A_05C4_A05C);
            let run = async {
                let figures = harness::run(vec![a.base.clone(), d.base.clone()], plan, &log).await;
                stop.cancel();
                figures
            };
            let (figures, done) = tokio::join!(
                run,
                chaos_loop(&args, &url, dir.path(), &mut workers, &pool, rng, &stop)
            );
            pool.close().await;
            drop((a, d, workers));
            drop_database(admin, &name).await;
            (figures, Some(done))
        }
    };

    println!("{figures}");
    if let Some(done) = done {
        println!(
            "worker kills         {} (restarted under the same id {}, a new id {})",
            done.kills, done.same_id_restarts, done.new_id_restarts
        );
        println!(
            "LISTEN terminated    {} connections in {} rounds",
            done.listeners_terminated, done.listener_rounds
        );
    }
    if figures.clean() {
        println!("result               clean: nothing lost, repeated, reordered or altered; every job ended");
        ExitCode::SUCCESS
    } else {
        let kept = dir.keep();
        println!(
            "result               NOT clean; node logs kept in {}",
            kept.display()
        );
        ExitCode::FAILURE
    }
}
