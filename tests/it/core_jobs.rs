//! Submit, run, list, idempotency, cancel, retries, timeouts, shutdown.
//!
//! The tests that must see inside a handler (did it stop, did it ever start,
//! how many steps did it run) use the tests' own `steps` kind (`kinds.rs`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Status::{Cancelled, Failed, Queued, Running, Succeeded};
use crate::common::{assert_gapless, names, statuses, Job, TestApp};
use crate::kinds::spawn_with_steps;

async fn a_demo_job_runs_to_its_result() {
    // Every report written, so the event count is exact.
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let resp = app
        .post_job(&json!({"kind": "demo", "input": {"steps": 3, "step_ms": 10}}))
        .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    for field in [
        "result",
        "error",
        "started_at",
        "finished_at",
        "cancel_requested",
        "last_event_id",
    ] {
        assert!(body.get(field).is_some(), "field {field} is always present");
    }
    let job: Job = serde_json::from_value(body).unwrap();
    let id = job.id;
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job.status, Queued);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.progress, None);
    assert_eq!(job.links.events, format!("/v1/jobs/{id}/events"));

    let done = app.wait_status(id, Succeeded).await;
    assert_eq!(done.result, Some(json!({"steps": 3})));
    let progress = done.progress.as_ref().expect("the last report");
    assert_eq!(progress.percent, Some(100.0));
    assert_eq!(progress.message.as_deref(), Some("3/3"));
    assert!(done.finished_at.as_ref().unwrap().ends_with('Z'));

    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(done.last_event_id, events.len() as i64);
    assert_eq!(
        names(&events),
        ["status", "status", "progress", "progress", "progress", "result"]
    );
    assert_eq!(statuses(&events), [(Queued, 1), (Running, 1)]);
    assert_eq!(events[5].result(), Some(&json!({"steps": 3})));
    let at = events[0].data["at"].as_str().unwrap();
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
            .submit("demo", json!({"steps": steps, "step_ms": 0}))
            .await;
        ids.push(job.id);
    }
    let failing = app
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0, "fail_at": 1}),
            json!({"max_attempts": 1}),
        )
        .await
        .id;
    for id in &ids {
        app.wait_status(*id, Succeeded).await;
    }
    app.wait_status(failing, Failed).await;

    // Pages of 2 walk all six jobs newest first, and the last page says so.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = "limit=2".to_owned();
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let page = app.list(&query).await;
        pages += 1;
        seen.extend(page.ids());
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.push(failing);
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each job once");
    assert_eq!(pages, 3);

    let page = app.list("status=failed&kind=demo").await;
    assert_eq!(page.ids(), [failing]);
    assert_eq!(app.list("status=succeeded").await.items.len(), 5);
    let page = app.list("kind=other").await;
    assert!(page.items.is_empty());
    assert!(page.next_cursor.is_none());

    for bad in [
        "status=done",
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=nope",
    ] {
        let resp = app.get(&format!("/v1/jobs?{bad}")).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    app.stop().await;
}

async fn idempotency_key_returns_the_same_job_or_409() {
    let app = TestApp::spawn().await;
    let first = app
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0}),
            json!({"idempotency_key": "order-42"}),
        )
        .await;

    // Same request, keys in another order and 1 written as 1.0: the same job.
    let again = json!({"idempotency_key": "order-42", "input": {"step_ms": 0.0, "steps": 1}, "kind": "demo"});
    let resp = app.post_job(&again).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        format!("/v1/jobs/{}", first.id)
    );
    let second: Job = resp.json().await.unwrap();
    assert_eq!(second.id, first.id);

    // Spelling out the default max_attempts is still the same request.
    let explicit = json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42", "max_attempts": 3});
    assert_eq!(app.post_job(&explicit).await.status(), 200);

    for different in [
        json!({"kind": "demo", "input": {"steps": 2, "step_ms": 0}, "idempotency_key": "order-42"}),
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42", "max_attempts": 5}),
        json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "idempotency_key": "order-42", "timeout_secs": 9}),
    ] {
        let resp = app.post_job(&different).await;
        assert_eq!(resp.status(), 409, "{different}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "idempotency_conflict");
    }

    // A new key is a new job.
    let other = app
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0}),
            json!({"idempotency_key": "order-43"}),
        )
        .await;
    assert_ne!(other.id, first.id);
    assert_eq!(app.list("").await.items.len(), 2);
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
        app.post_job(body)
    });
    let answers = futures::future::join_all(posts).await;
    let mut keyed_ids = HashSet::new();
    let mut plain_ids = HashSet::new();
    let mut created_with_key = 0;
    for (i, resp) in answers.into_iter().enumerate() {
        let status = resp.status().as_u16();
        let job: Job = resp.json().await.expect("a job");
        if i % 2 == 0 {
            assert!(status == 202 || status == 200, "{status} {job:?}");
            created_with_key += usize::from(status == 202);
            keyed_ids.insert(job.id);
        } else {
            assert_eq!(status, 202, "{job:?}");
            plain_ids.insert(job.id);
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
        app.wait_status(*id, Succeeded).await;
    }
    assert_eq!(app.list("limit=100").await.items.len(), 21);
    app.stop().await;
}

async fn cancelling_a_queued_job_ends_it_at_once() {
    // One worker slot, held by a long job, keeps the second job queued.
    let (app, log) = spawn_with_steps(|c| c.worker_concurrency = 1).await;
    let blocker = app
        .submit("steps", json!({"steps": 100, "step_ms": 50}))
        .await
        .id;
    app.wait_status(blocker, Running).await;
    let queued = app
        .submit("steps", json!({"steps": 2, "step_ms": 0}))
        .await
        .id;

    let resp = app.cancel(queued).await;
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    assert_eq!(job.status, Cancelled);
    assert!(job.finished_at.is_some());

    let events = app.stored_events(queued).await;
    assert_gapless(&events);
    assert_eq!(names(&events), ["status", "cancelled"]);

    // Cancelling the blocker frees the slot. The one worker takes tasks
    // oldest first, so once a job submitted after the cancelled one has run,
    // the cancelled one's task has come up too: it did not start it.
    assert_eq!(app.cancel(blocker).await.status(), 202);
    app.wait_status(blocker, Cancelled).await;
    let later = app
        .submit("steps", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    app.wait_status(later, Succeeded).await;
    let job = app.job(queued).await;
    assert_eq!(job.status, Cancelled);
    assert!(job.started_at.is_none());
    assert_eq!(log.attempts(queued), 0, "its handler never started");
    assert_eq!(log.steps(queued), 0);
    assert_eq!(app.stored_events(queued).await.len(), 2);

    // A terminal job cannot be cancelled again.
    let resp = app.cancel(queued).await;
    assert_eq!(resp.status(), 409);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "job_terminal");
    app.stop().await;
}

async fn cancelling_a_running_job_stops_its_handler() {
    let (mut app, log) = spawn_with_steps(|_| {}).await;
    let id = app
        .submit("steps", json!({"steps": 1000, "step_ms": 20}))
        .await
        .id;
    app.wait_for(id, "two progress reports", |j| j.step() >= 2)
        .await;

    let resp = app.cancel(id).await;
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    assert!(job.cancel_requested);
    // Asking again while it stops is fine.
    let again = app.cancel(id).await.status();
    assert!(again == 202 || again == 409, "{again}");

    let done = app.wait_status(id, Cancelled).await;
    assert!(done.cancel_requested);
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    let last = events.last().unwrap();
    assert_eq!(last.event, "cancelled");
    assert!(last.data["reason"].is_string());

    // The handler really stopped: herald records `cancelled` once the
    // handler has returned, so its step count is final.
    assert!(!log.is_running(id), "the handler returned");
    let steps = log.steps(id);
    assert!((2..1000).contains(&steps), "{steps}");
    assert_eq!(app.cancel(id).await.status(), 409);
    // Nor did anything move later: once herald has stopped, the same steps
    // and the same events.
    app.shut_down().await;
    assert_eq!(log.steps(id), steps);
    assert_eq!(app.stored_events(id).await.len(), events.len());
}

async fn a_handler_that_ignores_its_token_is_stopped_after_the_cancel_grace() {
    let (mut app, log) = spawn_with_steps(|c| c.cancel_grace_secs = 1).await;
    let id = app
        .submit(
            "steps",
            json!({"steps": 1000, "step_ms": 20, "ignore_cancel": true}),
        )
        .await
        .id;
    app.wait_for(id, "a progress report", |j| j.progress.is_some())
        .await;
    assert_eq!(app.cancel(id).await.status(), 202);
    let started = Instant::now();
    app.wait_status(id, Cancelled).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it ran on through the grace"
    );
    // Dropped at the end of the grace, before `cancelled` was recorded.
    assert!(!log.is_running(id), "stopped after the grace");
    let steps = log.steps(id);
    app.shut_down().await;
    assert_eq!(log.steps(id), steps, "stopped after the grace");
}

async fn a_failing_job_is_retried_up_to_max_attempts() {
    let (app, log) = spawn_with_steps(|_| {}).await;
    let id = app
        .submit_with(
            "steps",
            json!({"steps": 3, "step_ms": 0, "fail_at": 2}),
            json!({"max_attempts": 3}),
        )
        .await
        .id;
    let job = app.wait_status(id, Failed).await;
    assert_eq!(job.attempt, 3);
    assert_eq!(job.error_code(), Some("steps_failure"));

    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [
            (Queued, 1),
            (Running, 1),
            (Queued, 2),
            (Running, 2),
            (Queued, 3),
            (Running, 3),
        ]
    );
    let retry = events
        .iter()
        .find(|e| e.event == "status" && e.attempt() == Some(2))
        .unwrap();
    assert_eq!(
        retry.error_code(),
        Some("steps_failure"),
        "a retry says why"
    );
    let failed: Vec<_> = events.iter().filter(|e| e.event == "failed").collect();
    assert_eq!(failed.len(), 1, "failed comes once, after the last attempt");
    assert_eq!(failed[0].attempt(), Some(3));
    assert_eq!(events.last().unwrap().event, "failed");
    assert_eq!(log.attempts(id), 3);
    assert_eq!(log.steps(id), 6, "two steps in each of three attempts");
    app.stop().await;
}

async fn timeout_secs_fails_a_slow_attempt() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_with(
            "demo",
            json!({"steps": 100, "step_ms": 100}),
            json!({"timeout_secs": 1, "max_attempts": 2}),
        )
        .await
        .id;
    let job = app.wait_status(id, Failed).await;
    assert_eq!(job.error_code(), Some("timeout"));
    assert_eq!(
        job.attempt, 2,
        "a timeout is a failed attempt and is retried"
    );
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    let progress = events.iter().filter(|e| e.event == "progress").count();
    assert!(
        progress < 30,
        "each attempt stopped after about 1 s: {progress} progress events"
    );
    app.stop().await;
}

async fn shutdown_puts_a_running_job_back_in_the_queue_with_the_same_attempt() {
    let mut app = TestApp::spawn_with(|c| c.shutdown_grace_secs = 0).await;
    let db = app.db.clone();
    let id = app
        .submit("demo", json!({"steps": 20, "step_ms": 50}))
        .await
        .id;
    app.wait_for(id, "a progress report", |j| j.progress.is_some())
        .await;
    app.shut_down().await;

    let job = app.state.store.get(id).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "queued");
    assert_eq!(
        job.attempt, 1,
        "a requeue at shutdown keeps the attempt number"
    );
    drop(app);

    let app = TestApp::spawn_in(db, |_| {}).await;
    let done = app.wait_status(id, Succeeded).await;
    assert_eq!(done.attempt, 1);
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [(Queued, 1), (Running, 1), (Queued, 1), (Running, 1)]
    );
    app.stop().await;
}

async fn readiness_turns_503_while_draining() {
    let app = TestApp::spawn_with(|c| c.drain_delay_secs = 2).await;
    assert_eq!(app.get("/healthz").send().await.unwrap().status(), 200);
    assert_eq!(app.get("/readyz").send().await.unwrap().status(), 200);
    app.shutdown.cancel();
    let problem = app.wait_readyz(503).await;
    assert_eq!(problem["code"], "draining");
    // Still serving during the drain delay.
    assert_eq!(app.get("/healthz").send().await.unwrap().status(), 200);
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
        committed.trim_end() == herald::openapi_json(&herald::Kinds::builtin()).trim_end(),
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`, \
         then the JavaScript client's types with `cd clients/js && npm run generate`"
    );
    let app = TestApp::spawn().await;
    let served: Value = app.get_json("/openapi.json").await;
    assert!(served["paths"]["/v1/jobs"]["post"].is_object());
    let docs = app.get("/docs").send().await.unwrap();
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
