//! Chaos, the CI form (`examples/chaos.rs` is the long run): clients cut
//! their connections at random byte offsets and moments, mid-event included,
//! and resume by `Last-Event-ID` or by query (`last_event_id`, `after`), on
//! job streams and on the feed, while jobs succeed, fail, panic and are
//! cancelled. On one node of each backend; on PostgreSQL also across two API
//! nodes and two worker nodes while a worker is killed -9 mid-job and every
//! LISTEN connection is terminated. Each client must have seen exactly the
//! stored log, in order, and every job must end.
//!
//! The seed is printed; `HERALD_CHAOS_SEED=<seed>` repeats its choices (cut
//! points, resume styles, nodes, jobs; not the machine's timing).

mod harness;

use std::time::{Duration, Instant};

use harness::{Cuts, EventLog, Figures, Plan, SqlLog, Stored};

use crate::common::{postgres_url, Backend, HeraldProcess, TestApp, TestDb, WAIT};

const MIN_RECONNECTS: u64 = 400;

fn seed() -> u64 {
    let seed = std::env::var("HERALD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (HERALD_CHAOS_SEED={seed} repeats its choices)");
    seed
}

/// Hundreds of reconnects in a few seconds: connections cut after 0 to
/// 1,200 bytes (a few events), a tenth after 0 to 300 ms, a twentieth read
/// whole; jobs are submitted until there have been 400.
fn plan(seed: u64) -> Plan {
    Plan {
        seed,
        jobs: 16,
        min_reconnects: MIN_RECONNECTS,
        in_flight: 8,
        steps: (20, 40),
        step_ms: (10, 25),
        max_attempts: 3,
        job_clients: 2,
        feed_clients: 3,
        cuts: Cuts {
            max_bytes: 1200,
            timed_percent: 10,
            max_ms: 300,
            whole_percent: 5,
        },
        stall: WAIT,
    }
}

/// Nothing lost, repeated, reordered or altered, every job ended, and the
/// run did what it claims: enough reconnects, mid-event cuts, every resume
/// style, 204s after the end.
fn assert_clean(figures: &Figures) {
    eprintln!("{figures}");
    assert!(figures.clean(), "{figures}");
    assert!(figures.reconnects >= MIN_RECONNECTS, "{figures}");
    assert!(figures.cuts_mid_event > 0, "{figures}");
    assert!(figures.resumes.values().all(|&n| n > 0), "{figures}");
    assert!(figures.nothing_left > 0, "{figures}");
    assert!(figures.events_checked > 1000, "{figures}");
}

/// The app's stored events, through the test helper.
struct AppLog<'a>(&'a TestApp);

impl EventLog for AppLog<'_> {
    async fn events(&self, job: &str) -> Vec<Stored> {
        let id = job.parse().expect("a job id");
        self.0
            .stored_events(id)
            .await
            .into_iter()
            .map(|e| Stored {
                seq: e.seq,
                event: e.event,
                data: e.data,
            })
            .collect()
    }
}

async fn one_node_with_clients_cutting_anywhere_loses_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.progress_min_interval_ms = 0;
        c.submit_rate_per_sec = 10_000;
    })
    .await;
    let figures = harness::run(vec![app.base.clone()], plan(seed()), &AppLog(&app)).await;
    assert_clean(&figures);
    app.stop().await;
}

backend_tests!(one_node_with_clients_cutting_anywhere_loses_nothing);

/// A node of the multi-node layout: short leases and reconcile passes, so a
/// killed worker's jobs run again within seconds.
fn node(db: &TestDb, role: &str, id: &str) -> HeraldProcess {
    HeraldProcess::start_url(
        db.url(),
        // The start line, and what goes wrong.
        "warn,herald::app=info",
        &[
            ("HERALD_ROLE", role),
            ("HERALD_NODE_ID", id),
            ("HERALD_WORKER_LEASE_SECS", "2"),
            ("HERALD_RECONCILE_SECS", "1"),
            ("HERALD_RETRY_BACKOFF_MS", "10"),
            ("HERALD_DATABASE_POOL", "4"),
            ("HERALD_PROGRESS_MIN_INTERVAL_MS", "0"),
            ("HERALD_SUBMIT_RATE_PER_SEC", "10000"),
        ],
    )
}

/// Starting or killing a process waits on its pipes: off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

async fn running_on(pool: &sqlx::PgPool, node: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM herald_jobs WHERE status = 'running' AND node_id = $1")
        .bind(node)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Terminates the LISTEN connection of every node on this database; how many.
async fn terminate_listeners(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE 'herald-listener %'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// API nodes A and D take the clients' connections, each reconnect on either;
/// worker B runs the first jobs and is killed -9 while it runs at least
/// three, once worker C is up to take them over; then every LISTEN
/// connection is terminated, three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_and_two_worker_nodes_through_kill_9_and_cut_listeners_lose_nothing() {
    if postgres_url().is_none() {
        eprintln!("skipped: the multi-node chaos test needs HERALD_TEST_POSTGRES_URL");
        return;
    }
    let db = TestDb::on(Backend::Postgres).await;
    let a = node(&db, "api", "chaos-a");
    let d = node(&db, "api", "chaos-d");
    let b = node(&db, "worker", "chaos-b");
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let log = SqlLog::connect(db.url()).await;
    let mut plan = plan(seed());
    plan.steps = (30, 60);
    plan.step_ms = (20, 40);

    let chaos = async {
        let deadline = Instant::now() + WAIT;
        while running_on(&pool, "chaos-b").await < 3 {
            assert!(Instant::now() < deadline, "worker B never ran three jobs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c_db = db.clone();
        let c = blocking(move || node(&c_db, "worker", "chaos-c")).await;
        let running = running_on(&pool, "chaos-b").await;
        blocking(move || b.kill()).await;
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(terminate_listeners(&pool).await);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        (c, running, listeners)
    };
    let bases = vec![a.base.clone(), d.base.clone()];
    let (figures, (c, running_at_kill, listeners)) =
        tokio::join!(harness::run(bases, plan, &log), chaos);
    eprintln!("B ran {running_at_kill} jobs when it was killed; LISTEN connections terminated: {listeners:?}");
    assert_clean(&figures);
    assert!(
        figures.worker_lost_retries >= 1,
        "a job B ran came back as worker_lost: {figures}"
    );
    assert!(
        listeners.iter().all(|&n| n >= 2),
        "A's and D's listeners at least, each time: {listeners:?}"
    );
    drop((a, c, d));
    pool.close().await;
}
