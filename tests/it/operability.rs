//! Metrics and structured logs.

use std::collections::HashMap;
use std::time::Duration;

use herald::config::Secret;
use serde_json::json;

use crate::common::Status::{Failed, Running, Succeeded};
use crate::common::{postgres_url, Backend, HeraldProcess, TestApp, TestDb};

/// The scrape as (metric name + sorted labels) → value.
async fn scrape(app: &TestApp, token: Option<&str>) -> (HashMap<String, f64>, String) {
    let mut req = app.get("/metrics");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as Prometheus text");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    (out, text)
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

async fn metrics_parse_and_move_as_jobs_run_and_streams_deliver() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let (before, _) = scrape(&app, None).await;
    let id = app
        .submit("demo", json!({"steps": 3, "step_ms": 20}))
        .await
        .id;
    let events = app.stream_events(id).await;
    assert_eq!(events.last().unwrap().event, "result");
    let (after, text) = scrape(&app, None).await;

    let moved = |key: &str| get(&after, key) - get(&before, key);
    assert!(
        moved("herald_jobs_submitted_total{kind=demo}") >= 1.0,
        "{text}"
    );
    assert!(
        moved("herald_jobs_finished_total{kind=demo,status=succeeded}") >= 1.0,
        "{text}"
    );
    assert!(moved("herald_events_appended_total{event=result}") >= 1.0);
    assert!(moved("herald_events_appended_total{event=progress}") >= 3.0);
    assert!(moved("herald_http_requests_total{method=POST,route=/v1/jobs,status=202}") >= 1.0);
    assert!(after.contains_key("herald_streams_open{type=job}"));
    assert!(after.contains_key("herald_queue_depth{}"));
    assert!(after.contains_key("herald_jobs_running{}"));
    assert!(
        text.contains("herald_event_delivery_lag_seconds_bucket"),
        "lag histogram: {text}"
    );
    assert!(text.contains("herald_job_run_seconds_bucket"));
    assert!(text.contains("herald_http_request_duration_seconds_bucket"));
    // Bounded cardinality: no job id in any label.
    assert!(
        !text.contains(&id.to_string()),
        "a job id leaked into the labels"
    );
    assert!(text.contains("route=\"/v1/jobs/{id}/events\""));
    app.stop().await;
}

async fn the_metrics_token_protects_the_scrape() {
    let app =
        TestApp::spawn_with(|c| c.metrics_token = Some(Secret("scrape-token-0123456789".into())))
            .await;
    let resp = app.get("/metrics").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let resp = app
        .get("/metrics")
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    scrape(&app, Some("scrape-token-0123456789")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_json_log_line_of_a_job_run_carries_job_id_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    // `next_json` panics on any line that is not JSON.
    let mut herald = HeraldProcess::start(&dir.path().join("h.db"), "info", &[]);
    let id = herald
        .api()
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id
        .to_string();
    let line = herald
        .next_json(Duration::from_secs(20), |v| v["message"] == "job succeeded")
        .expect("the job run is logged");
    herald.kill();
    assert_eq!(line["span"]["job_id"], id, "{line}");
    assert_eq!(line["span"]["kind"], "demo");
    assert_eq!(line["span"]["attempt"], 1);
    assert!(line["elapsed_ms"].is_number());
    assert_eq!(line["level"], "INFO");
}

async fn retention_deletes_only_old_terminal_jobs() {
    let app = TestApp::spawn_with(|c| {
        c.retention_hours = 1.0 / 3600.0; // one second
        c.retention_sweep_secs = 1;
    })
    .await;
    let done = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    let failed = app
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0, "fail_at": 1}),
            json!({"max_attempts": 1}),
        )
        .await
        .id;
    let running = app
        .submit("demo", json!({"steps": 200, "step_ms": 100}))
        .await
        .id;
    app.wait_status(done, Succeeded).await;
    app.wait_status(failed, Failed).await;
    app.wait_status(running, Running).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let a = app
            .get(&format!("/v1/jobs/{done}"))
            .send()
            .await
            .unwrap()
            .status();
        let b = app
            .get(&format!("/v1/jobs/{failed}"))
            .send()
            .await
            .unwrap()
            .status();
        if a == 404 && b == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "finished jobs were not purged ({a}, {b})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its history is gone too: a client resuming it learns so.
    assert_eq!(app.open_stream(done, Some("1")).await.status(), 404);
    assert!(app.stored_events(done).await.is_empty());
    // The running job, older than the horizon, survives.
    assert_eq!(app.job(running).await.status, Running);
    assert!(!app.stored_events(running).await.is_empty());
    app.stop().await;
}

/// A TCP proxy in front of PostgreSQL that the test can cut: while it is
/// down it ends every open connection and refuses new ones (accepts and
/// closes), which is what herald sees when the database goes away.
pub(crate) struct DbProxy {
    pub(crate) addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl DbProxy {
    pub(crate) async fn start(upstream: String) -> DbProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut down = watch.subscribe();
                if !*down.borrow() {
                    continue; // dropped: the connection closes at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        DbProxy { addr, up }
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// PostgreSQL only: a SQLite file cannot go away from under an open connection.
#[tokio::test]
async fn readiness_is_503_while_the_database_is_away_and_200_when_it_returns() {
    let Some(_) = postgres_url() else {
        eprintln!("skipped: needs HERALD_TEST_POSTGRES_URL");
        return;
    };
    let db = TestDb::on(Backend::Postgres).await;
    let mut url = url::Url::parse(db.url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = DbProxy::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let proxied = url.to_string();
    let app = TestApp::spawn_in(db, |c| c.database_url = proxied).await;

    app.wait_readyz(200).await;
    proxy.set_up(false);
    let problem = app.wait_readyz(503).await;
    assert_eq!(problem["code"], "store_unavailable", "{problem}");
    proxy.set_up(true);
    let ok = app.wait_readyz(200).await;
    assert_eq!(ok["status"], "ready");

    // And the node works again: a job runs to its end.
    let job = app.submit("demo", json!({"steps": 2, "step_ms": 10})).await;
    app.wait_status(job.id, Succeeded).await;
    app.stop().await;
}

backend_tests!(
    metrics_parse_and_move_as_jobs_run_and_streams_deliver,
    the_metrics_token_protects_the_scrape,
    retention_deletes_only_old_terminal_jobs,
);
