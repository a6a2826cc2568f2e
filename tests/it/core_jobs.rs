//! Submit, run, list, idempotency, cancel, retries, timeouts, shutdown.

use std::time::Duration;

use herald::kinds::demo;
use serde_json::json;

use crate::common::legacy::{assert_gapless, named, statuses, LegacyApp};
use crate::common::TestApp;

fn job_id(job: &serde_json::Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

async fn a_demo_job_runs_to_its_result() {
    // Every report written, so the event count is exact.
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let resp = app
        .post_json(
            "/v1/jobs",
            &json!({"kind": "demo", "input": {"steps": 3, "step_ms": 10}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: serde_json::Value = resp.json().await.unwrap();
    let id = job_id(&job);
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["max_attempts"], 3);
    assert_eq!(job["progress"], serde_json::Value::Null);
    assert_eq!(job["links"]["events"], format!("/v1/jobs/{id}/events"));
    for field in [
        "result",
        "error",
        "started_at",
        "finished_at",
        "cancel_requested",
        "last_event_id",
    ] {
        assert!(job.get(field).is_some(), "field {field} is always present");
    }

    let done = app.wait_status(&id, "succeeded").await;
    assert_eq!(done["result"], json!({"steps": 3}));
    assert_eq!(done["progress"]["percent"], 100.0);
    assert_eq!(done["progress"]["message"], "3/3");
    assert!(done["finished_at"].as_str().unwrap().ends_with('Z'));

    let events = app.events(&id).await;
    assert_gapless(&events);
    assert_eq!(done["last_event_id"], events.len() as i64);
    let names: Vec<_> = named(&events).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["status", "status", "progress", "progress", "progress", "result"]
    );
    assert_eq!(
        statuses(&events),
        [("queued".into(), 1), ("running".into(), 1)]
    );
    let data = named(&events);
    assert_eq!(data[5].1["result"], json!({"steps": 3}));
    let at = data[0].1["at"].as_str().unwrap();
    assert_eq!(
        at.len(),
        "2026-11-21T10:00:00.123456Z".len(),
        "microseconds: {at}"
    );
    app.stop().await;
}

async fn list_filters_and_pages_newest_first() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let steps = if i == 2 { 1 } else { 2 };
        let job = app
            .submit(json!({"kind": "demo", "input": {"steps": steps, "step_ms": 0}}))
            .await;
        ids.push(job_id(&job));
    }
    let failing = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0, "fail_at": 1}, "max_attempts": 1}))
            .await,
    );
    for id in &ids {
        app.wait_status(id, "succeeded").await;
    }
    app.wait_status(&failing, "failed").await;

    // Pages of 2 walk all six jobs newest first, and the last page says so.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url("/v1/jobs?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = app
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(job_id(item));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.push(failing.clone());
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each job once");
    assert_eq!(pages, 3);

    let page: serde_json::Value = app.get_json("/v1/jobs?status=failed&kind=demo").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(job_id(&items[0]), failing);
    let page: serde_json::Value = app.get_json("/v1/jobs?status=succeeded").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    let page: serde_json::Value = app.get_json("/v1/jobs?kind=other").await;
    assert!(page["items"].as_array().unwrap().is_empty());
    assert!(page["next_cursor"].is_null());

    for bad in [
        "status=done",
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=nope",
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/v1/jobs?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    app.stop().await;
}

async fn idempotency_key_returns_the_same_job_or_409() {
    let app = TestApp::spawn().await;
    let body =
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42"});
    let first = app.submit(body.clone()).await;

    // Same request, keys in another order and 1 written as 1.0: the same job.
    let again = json!({"idempotency_key": "order-42", "input": {"step_ms": 0.0, "steps": 1}, "kind": "demo"});
    let resp = app.post_json("/v1/jobs", &again).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        format!("/v1/jobs/{}", job_id(&first))
    );
    let second: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(second["id"], first["id"]);

    // Spelling out the default max_attempts is still the same request.
    let explicit = json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42", "max_attempts": 3});
    assert_eq!(app.post_json("/v1/jobs", &explicit).await.status(), 200);

    for different in [
        json!({"kind": "demo", "input": {"steps": 2, "step_ms": 0}, "idempotency_key": "order-42"}),
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42", "max_attempts": 5}),
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42", "timeout_secs": 9}),
    ] {
        let resp = app.post_json("/v1/jobs", &different).await;
        assert_eq!(resp.status(), 409, "{different}");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "idempotency_conflict");
    }

    // A new key is a new job.
    let other = app
        .submit(json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-43"}))
        .await;
    assert_ne!(other["id"], first["id"]);
    let list: serde_json::Value = app.get_json("/v1/jobs").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    app.stop().await;
}

/// Submissions that arrive together are written together (PostgreSQL
/// group-commits them): one key still makes one job, and every other
/// submission its own.
async fn concurrent_submissions_with_one_key_make_one_job() {
    let app = TestApp::spawn().await;
    let keyed =
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "burst"});
    let plain = json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}});
    let posts = (0..40).map(|i| {
        let body = if i % 2 == 0 { &keyed } else { &plain };
        app.post_json("/v1/jobs", body)
    });
    let answers = futures::future::join_all(posts).await;
    let mut keyed_ids = std::collections::HashSet::new();
    let mut plain_ids = std::collections::HashSet::new();
    let mut created_with_key = 0;
    for (i, resp) in answers.into_iter().enumerate() {
        let status = resp.status().as_u16();
        let job: serde_json::Value = resp.json().await.unwrap();
        let id = job["id"].as_str().expect("a job id").to_owned();
        if i % 2 == 0 {
            assert!(status == 202 || status == 200, "{status} {job}");
            created_with_key += usize::from(status == 202);
            keyed_ids.insert(id);
        } else {
            assert_eq!(status, 202, "{job}");
            plain_ids.insert(id);
        }
    }
    assert_eq!(keyed_ids.len(), 1, "one key, one job: {keyed_ids:?}");
    assert_eq!(
        created_with_key, 1,
        "exactly one keyed submission created it"
    );
    assert_eq!(plain_ids.len(), 20, "every plain submission is its own job");
    assert!(keyed_ids.is_disjoint(&plain_ids));
    for id in keyed_ids.iter().chain(&plain_ids) {
        app.wait_status(id, "succeeded").await;
    }
    let list: serde_json::Value = app.get_json("/v1/jobs?limit=100").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 21);
    app.stop().await;
}

async fn cancelling_a_queued_job_ends_it_at_once() {
    // One worker slot, held by a long job, keeps the second job queued.
    let app = TestApp::spawn_with(|c| c.worker_concurrency = 1).await;
    let blocker = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 100, "step_ms": 50}}))
            .await,
    );
    app.wait_status(&blocker, "running").await;
    let queued = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 2, "step_ms": 0}}))
            .await,
    );

    let resp = app.cancel(&queued).await;
    assert_eq!(resp.status(), 202);
    let job: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    assert!(job["finished_at"].is_string());

    let events = app.events(&queued).await;
    assert_gapless(&events);
    let names: Vec<_> = named(&events).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["status", "cancelled"]);

    // Cancelling the blocker frees the slot; the cancelled job never starts.
    assert_eq!(app.cancel(&blocker).await.status(), 202);
    app.wait_status(&blocker, "cancelled").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = app.get_job(&queued).await;
    assert_eq!(job["status"], "cancelled");
    assert!(job["started_at"].is_null());
    assert_eq!(demo::steps_run(queued.parse().unwrap()), 0);
    assert_eq!(app.events(&queued).await.len(), 2);

    // A terminal job cannot be cancelled again.
    let resp = app.cancel(&queued).await;
    assert_eq!(resp.status(), 409);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "job_terminal");
    app.stop().await;
}

async fn cancelling_a_running_job_stops_its_handler() {
    let app = TestApp::spawn().await;
    let id = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 1000, "step_ms": 20}}))
            .await,
    );
    app.wait_for(&id, "two progress reports", |j| {
        j["progress"]["data"]["step"].as_i64() >= Some(2)
    })
    .await;

    let resp = app.cancel(&id).await;
    assert_eq!(resp.status(), 202);
    let job: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(job["cancel_requested"], true);
    // Asking again while it stops is fine.
    let again = app.cancel(&id).await.status();
    assert!(again == 202 || again == 409, "{again}");

    let done = app.wait_status(&id, "cancelled").await;
    assert_eq!(done["cancel_requested"], true);
    let events = app.events(&id).await;
    assert_gapless(&events);
    let (last, data) = named(&events).pop().unwrap();
    assert_eq!(last, "cancelled");
    assert!(data["reason"].is_string());

    // The handler really stopped: its step counter no longer moves.
    let steps = demo::steps_run(id.parse().unwrap());
    assert!((2..1000).contains(&steps), "{steps}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(demo::steps_run(id.parse().unwrap()), steps);
    assert_eq!(app.events(&id).await.len(), events.len());
    assert_eq!(app.cancel(&id).await.status(), 409);
    app.stop().await;
}

async fn a_handler_that_ignores_its_token_is_stopped_after_the_cancel_grace() {
    let app = TestApp::spawn_with(|c| c.cancel_grace_secs = 1).await;
    let id = job_id(
        &app.submit(
            json!({"kind": "demo", "input": {"steps": 1000, "step_ms": 20, "ignore_cancel": true}}),
        )
        .await,
    );
    app.wait_for(&id, "a progress report", |j| !j["progress"].is_null())
        .await;
    assert_eq!(app.cancel(&id).await.status(), 202);
    let started = std::time::Instant::now();
    app.wait_status(&id, "cancelled").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it ran on through the grace"
    );
    let steps = demo::steps_run(id.parse().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        demo::steps_run(id.parse().unwrap()),
        steps,
        "stopped after the grace"
    );
    app.stop().await;
}

async fn a_failing_job_is_retried_up_to_max_attempts() {
    let app = TestApp::spawn().await;
    let id = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 3, "step_ms": 0, "fail_at": 2}, "max_attempts": 3}))
            .await,
    );
    let job = app.wait_status(&id, "failed").await;
    assert_eq!(job["attempt"], 3);
    assert_eq!(job["error"]["code"], "demo_failure");

    let events = app.events(&id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [
            ("queued".into(), 1),
            ("running".into(), 1),
            ("queued".into(), 2),
            ("running".into(), 2),
            ("queued".into(), 3),
            ("running".into(), 3),
        ]
    );
    let all = named(&events);
    let retry = all
        .iter()
        .find(|(n, d)| n == "status" && d["attempt"] == 2)
        .unwrap();
    assert_eq!(retry.1["error"]["code"], "demo_failure", "a retry says why");
    let failed: Vec<_> = all.iter().filter(|(n, _)| n == "failed").collect();
    assert_eq!(failed.len(), 1, "failed comes once, after the last attempt");
    assert_eq!(failed[0].1["attempt"], 3);
    assert_eq!(all.last().unwrap().0, "failed");
    assert_eq!(
        demo::steps_run(id.parse().unwrap()),
        6,
        "two steps in each of three attempts"
    );
    app.stop().await;
}

async fn timeout_secs_fails_a_slow_attempt() {
    let app = TestApp::spawn().await;
    let id = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 100, "step_ms": 100}, "timeout_secs": 1, "max_attempts": 2}))
            .await,
    );
    let job = app.wait_status(&id, "failed").await;
    assert_eq!(job["error"]["code"], "timeout");
    assert_eq!(
        job["attempt"], 2,
        "a timeout is a failed attempt and is retried"
    );
    let events = app.events(&id).await;
    assert_gapless(&events);
    let progress = named(&events)
        .iter()
        .filter(|(n, _)| n == "progress")
        .count();
    assert!(
        progress < 30,
        "each attempt stopped after about 1 s: {progress} progress events"
    );
    app.stop().await;
}

async fn shutdown_puts_a_running_job_back_in_the_queue_with_the_same_attempt() {
    let app = TestApp::spawn_with(|c| c.shutdown_grace_secs = 0).await;
    let db = app.db.clone();
    let id = job_id(
        &app.submit(json!({"kind": "demo", "input": {"steps": 20, "step_ms": 50}}))
            .await,
    );
    app.wait_for(&id, "a progress report", |j| !j["progress"].is_null())
        .await;
    let store = app.state.store.clone();
    app.stop().await;

    let job = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "queued");
    assert_eq!(
        job.attempt, 1,
        "a requeue at shutdown keeps the attempt number"
    );

    let app = TestApp::spawn_in(db, |_| {}).await;
    let done = app.wait_status(&id, "succeeded").await;
    assert_eq!(done["attempt"], 1);
    let events = app.events(&id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [
            ("queued".into(), 1),
            ("running".into(), 1),
            ("queued".into(), 1),
            ("running".into(), 1)
        ]
    );
    app.stop().await;
}

async fn readiness_turns_503_while_draining() {
    let app = TestApp::spawn_with(|c| c.drain_delay_secs = 2).await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "draining");
    // Still serving during the drain delay.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn the_committed_openapi_document_is_current() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/openapi/openapi.json"
    ))
    .expect(
        "openapi/openapi.json exists; create it with `cargo run -- openapi > openapi/openapi.json`",
    );
    assert!(
        committed.trim_end() == herald::openapi_json().trim_end(),
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
    let app = TestApp::spawn().await;
    let served: serde_json::Value = app.get_json("/openapi.json").await;
    assert!(served["paths"]["/v1/jobs"]["post"].is_object());
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    app.stop().await;
}

backend_tests!(
    a_demo_job_runs_to_its_result,
    list_filters_and_pages_newest_first,
    idempotency_key_returns_the_same_job_or_409,
    concurrent_submissions_with_one_key_make_one_job,
    cancelling_a_queued_job_ends_it_at_once,
    cancelling_a_running_job_stops_its_handler,
    a_handler_that_ignores_its_token_is_stopped_after_the_cancel_grace,
    a_failing_job_is_retried_up_to_max_attempts,
    timeout_secs_fails_a_slow_attempt,
    shutdown_puts_a_running_job_back_in_the_queue_with_the_same_attempt,
    readiness_turns_503_while_draining,
);
