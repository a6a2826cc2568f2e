//! Several nodes on one PostgreSQL database, as separate processes: the
//! layout of docker-compose.yml. A is an `api` node; B and C are `worker`
//! nodes. Skipped (with a note) without `HERALD_TEST_POSTGRES_URL`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    ids, open_stream_at, postgres_url, read_to_end, Backend, HeraldProcess, Sse, TestDb,
};

/// Short leases and reconcile passes, so a killed node is noticed quickly.
fn node(db: &TestDb, role: &str, id: &str) -> HeraldProcess {
    HeraldProcess::start_url(
        db.url(),
        "info",
        &[
            ("HERALD_ROLE", role),
            ("HERALD_NODE_ID", id),
            ("HERALD_WORKER_LEASE_SECS", "2"),
            ("HERALD_RECONCILE_SECS", "1"),
            ("HERALD_RETRY_BACKOFF_MS", "10"),
            ("HERALD_DATABASE_POOL", "4"),
            // Every progress report is an event, so the counts below are exact.
            ("HERALD_PROGRESS_MIN_INTERVAL_MS", "0"),
        ],
    )
}

async fn submit(client: &reqwest::Client, base: &str, input: Value) -> String {
    let resp = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "demo", "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

/// Which node ran (or runs) the job's current attempt, from the database.
async fn running_node(pool: &sqlx::PgPool, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT node_id FROM herald_jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The stream carried every stored event of the job, once each, in order.
async fn assert_exactly_once(pool: &sqlx::PgPool, id: &str, events: &[Sse]) {
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM herald_job_events WHERE job_id = $1::uuid")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    let want: Vec<i64> = (1..=stored).collect();
    assert_eq!(
        ids(events),
        want,
        "every stored event once, in order, no gaps"
    );
}

fn names(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.event.as_str() {
            "status" => format!(
                "{}#{}",
                e.data["status"].as_str().unwrap(),
                e.data["attempt"]
            ),
            other => other.to_owned(),
        })
        .filter(|n| n != "progress")
        .collect()
}

#[tokio::test]
async fn an_api_node_streams_and_cancels_jobs_that_worker_nodes_run() {
    if postgres_url().is_none() {
        eprintln!("skipped: the multi-node test needs HERALD_TEST_POSTGRES_URL");
        return;
    }
    let db = TestDb::on(Backend::Postgres).await;
    let mut a = node(&db, "api", "node-a");
    let b = node(&db, "worker", "node-b");
    let client = reqwest::Client::new();
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();

    // Roles: the worker answers probes but not the API.
    let probe = client
        .get(format!("{}/readyz", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    let api = client
        .get(format!("{}/v1/jobs", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404, "worker nodes do not serve /v1");

    // 1. A job run on B, streamed from A: every event, once, in order.
    let id = submit(&client, &a.base, json!({"steps": 10, "step_ms": 50})).await;
    let events = read_to_end(open_stream_at(&client, &a.base, &id, None).await).await;
    assert_exactly_once(&pool, &id, &events).await;
    assert_eq!(
        events.len(),
        2 + 10 + 1,
        "queued, running, 10 progress, result"
    );
    assert_eq!(events.last().unwrap().event, "result");
    assert_eq!(running_node(&pool, &id).await.as_deref(), Some("node-b"));

    // 2. A cancel sent to A stops the job on B, and A's stream ends with it.
    let id = submit(&client, &a.base, json!({"steps": 600, "step_ms": 50})).await;
    let stream = open_stream_at(&client, &a.base, &id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    wait_running(&client, &a.base, &id).await;
    let cancelled_at = std::time::Instant::now();
    let resp = client
        .post(format!("{}/v1/jobs/{id}/cancel", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let events = reader.await.unwrap();
    assert_exactly_once(&pool, &id, &events).await;
    assert_eq!(events.last().unwrap().event, "cancelled");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "the job on B stopped at its next await point, not after the cancel grace"
    );

    // 3. A's LISTEN connection is killed mid-job: the stream loses nothing.
    let id = submit(&client, &a.base, json!({"steps": 40, "step_ms": 50})).await;
    let stream = open_stream_at(&client, &a.base, &id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    wait_running(&client, &a.base, &id).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'herald-listener node-a'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        killed,
        vec![true],
        "A's listener connection was found and ended"
    );
    let events = reader.await.unwrap();
    assert_exactly_once(&pool, &id, &events).await;
    assert_eq!(events.len(), 2 + 40 + 1);
    assert_eq!(events.last().unwrap().event, "result");
    let back = a.next_json(Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("LISTEN connection back"))
    });
    assert!(back.is_some(), "A re-opened its LISTEN connection");

    // 4. B is killed (-9) mid-job; C takes the job over after B's lease and
    //    A's stream shows the retry and the result, seq gapless.
    let id = submit(&client, &a.base, json!({"steps": 30, "step_ms": 100})).await;
    let stream = open_stream_at(&client, &a.base, &id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    wait_running(&client, &a.base, &id).await;
    assert_eq!(running_node(&pool, &id).await.as_deref(), Some("node-b"));
    let c = node(&db, "worker", "node-c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.kill();
    let events = reader.await.unwrap();
    assert_exactly_once(&pool, &id, &events).await;
    assert_eq!(
        names(&events),
        ["queued#1", "running#1", "queued#2", "running#2", "result"],
        "the retry after the lost worker is visible"
    );
    let job: Value = client
        .get(format!("{}/v1/jobs/{id}", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempt"], 2);
    assert_eq!(running_node(&pool, &id).await.as_deref(), Some("node-c"));
    let lost = events
        .iter()
        .find(|e| e.data["status"] == "queued" && e.data["attempt"] == 2)
        .unwrap();
    assert_eq!(lost.data["error"]["code"], "worker_lost", "{:?}", lost.data);

    drop((a, c));
    pool.close().await;
}

async fn wait_running(client: &reqwest::Client, base: &str, id: &str) {
    let deadline = std::time::Instant::now() + crate::common::WAIT;
    loop {
        let job: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "running" && !job["progress"].is_null() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "job never ran: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
