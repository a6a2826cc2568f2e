//! Several nodes on one PostgreSQL database, as separate processes: the
//! layout of docker-compose.yml. A is an `api` node; B and C are `worker`
//! nodes. Skipped (with a note) without `HERALD_TEST_POSTGRES_URL`.

use std::time::Duration;

use herald::domain::JobId;
use serde_json::json;

use crate::common::Status::{Queued, Running, Succeeded};
use crate::common::{postgres_url, read_to_end, seqs, Api, Backend, Event, HeraldProcess, TestDb};

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

/// Which node ran (or runs) the job's current attempt, from the database.
async fn running_node(pool: &sqlx::PgPool, id: JobId) -> Option<String> {
    sqlx::query_scalar("SELECT node_id FROM herald_jobs WHERE id = $1::uuid")
        .bind(id.to_string())
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The stream carried every stored event of the job, once each, in order.
async fn assert_exactly_once(pool: &sqlx::PgPool, id: JobId, events: &[Event]) {
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM herald_job_events WHERE job_id = $1::uuid")
            .bind(id.to_string())
            .fetch_one(pool)
            .await
            .unwrap();
    let want: Vec<i64> = (1..=stored).collect();
    assert_eq!(
        seqs(events),
        want,
        "every stored event once, in order, no gaps"
    );
}

/// The events but progress, a status as `queued#1` (status and attempt).
fn milestones(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event != "progress")
        .map(|e| match e.status() {
            Some(status) => format!("{}#{}", status.as_str(), e.attempt().unwrap()),
            None => e.event.clone(),
        })
        .collect()
}

/// Waits until the job runs and has reported progress.
async fn wait_running(api: &Api, id: JobId) {
    api.wait_for(id, "the job to run", |j| {
        j.status == Running && j.progress.is_some()
    })
    .await;
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
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();

    // Roles: the worker answers probes but not the API.
    let probe = b.api().get("/readyz").send().await.unwrap();
    assert_eq!(probe.status(), 200);
    let api = b.api().get("/v1/jobs").send().await.unwrap();
    assert_eq!(api.status(), 404, "worker nodes do not serve /v1");

    // 1. A job run on B, streamed from A: every event, once, in order.
    let api = a.api();
    let id = api
        .submit("demo", json!({"steps": 10, "step_ms": 50}))
        .await
        .id;
    let events = api.stream_events(id).await;
    assert_exactly_once(&pool, id, &events).await;
    assert_eq!(
        events.len(),
        2 + 10 + 1,
        "queued, running, 10 progress, result"
    );
    assert_eq!(events.last().unwrap().event, "result");
    assert_eq!(running_node(&pool, id).await.as_deref(), Some("node-b"));

    // 2. A cancel sent to A stops the job on B, and A's stream ends with it.
    let id = api
        .submit("demo", json!({"steps": 600, "step_ms": 50}))
        .await
        .id;
    let stream = api.open_stream(id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    wait_running(&api, id).await;
    let cancelled_at = std::time::Instant::now();
    assert_eq!(api.cancel(id).await.status(), 202);
    let events = reader.await.unwrap();
    assert_exactly_once(&pool, id, &events).await;
    assert_eq!(events.last().unwrap().event, "cancelled");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "the job on B stopped at its next await point, not after the cancel grace"
    );

    // 3. A's LISTEN connection is killed mid-job: the stream loses nothing.
    let id = api
        .submit("demo", json!({"steps": 40, "step_ms": 50}))
        .await
        .id;
    let stream = api.open_stream(id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    wait_running(&api, id).await;
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
    assert_exactly_once(&pool, id, &events).await;
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
    let id = api
        .submit("demo", json!({"steps": 30, "step_ms": 100}))
        .await
        .id;
    let stream = api.open_stream(id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    wait_running(&api, id).await;
    assert_eq!(running_node(&pool, id).await.as_deref(), Some("node-b"));
    let c = node(&db, "worker", "node-c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.kill();
    let events = reader.await.unwrap();
    assert_exactly_once(&pool, id, &events).await;
    assert_eq!(
        milestones(&events),
        ["queued#1", "running#1", "queued#2", "running#2", "result"],
        "the retry after the lost worker is visible"
    );
    let job = api.job(id).await;
    assert_eq!(job.status, Succeeded);
    assert_eq!(job.attempt, 2);
    assert_eq!(running_node(&pool, id).await.as_deref(), Some("node-c"));
    let lost = events
        .iter()
        .find(|e| e.status() == Some(Queued) && e.attempt() == Some(2))
        .unwrap();
    assert_eq!(lost.error_code(), Some("worker_lost"), "{:?}", lost.data);

    drop((a, c));
    pool.close().await;
}

/// The `environment` of each herald service in docker-compose.yml, with the
/// YAML merge keys applied.
fn compose_services() -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().unwrap();
    let mut out = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap().to_owned();
        if !name.starts_with("herald") {
            continue;
        }
        let mut env_map = svc["environment"].clone();
        env_map.apply_merge().unwrap();
        let env = env_map
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), v)
            })
            .collect();
        out.push((name, env));
    }
    out
}

/// docker-compose.yml's layout, run as processes with its own settings (only
/// the database URL points at the test's database): two `all` nodes and a
/// `worker`, API keys on, one stream-token secret. A job submitted to one node
/// streams from the other with the token the first one minted.
#[tokio::test]
async fn the_docker_compose_layout_runs_as_processes() {
    if postgres_url().is_none() {
        eprintln!("skipped: the compose layout test needs HERALD_TEST_POSTGRES_URL");
        return;
    }
    let services = compose_services();
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["herald-1", "herald-2", "herald-worker"]);
    let db = TestDb::on(Backend::Postgres).await;
    let mut nodes = Vec::new();
    for (name, env) in &services {
        let role = env.iter().find(|(k, _)| k == "HERALD_ROLE").unwrap();
        assert!(role.1 == "all" || role.1 == "worker", "{name}: {role:?}");
        let env: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| k != "HERALD_DATABASE_URL")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        nodes.push(HeraldProcess::start_url(db.url(), "info", &env));
    }
    // The compose health check: /readyz on every node.
    for n in &nodes {
        let r = n.api().get("/readyz").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let key = services[0]
        .1
        .iter()
        .find(|(k, _)| k == "HERALD_API_KEYS")
        .map(|(_, v)| v.split_once(':').unwrap().1.to_owned())
        .unwrap();
    let (one, two, worker) = (&nodes[0], &nodes[1], &nodes[2]);
    let unauthenticated = one
        .api()
        .post_job(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}}))
        .await;
    assert_eq!(unauthenticated.status(), 401);
    let job = one
        .api()
        .with_bearer(&key)
        .submit("demo", json!({"steps": 5, "step_ms": 50}))
        .await;
    let events_url = &job.links.events;
    assert!(events_url.contains("token="), "{events_url}");
    let stream = two.api().get(events_url).send().await.unwrap();
    let events = read_to_end(stream).await;
    let want: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs(&events), want);
    assert_eq!(events.last().unwrap().event, "result");
    let api = worker
        .api()
        .with_bearer(&key)
        .get("/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404, "the worker node serves no API");
}
