//! The `aggregate` kind against real local downstreams.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use herald::domain::JobId;

use crate::common::Status::{Cancelled, Failed, Succeeded};
use crate::common::{read_to_end, seqs, Event, TestApp, WAIT};
use crate::downstream::{FakeDownstream, SilentDownstream};

async fn app_with(ds: &FakeDownstream, f: impl FnOnce(&mut herald::Config)) -> TestApp {
    let base = ds.base.clone();
    TestApp::spawn_with(move |c| {
        c.downstreams = vec![format!("local={base}")];
        f(c)
    })
    .await
}

fn src(name: &str, path: &str) -> Value {
    json!({"name": name, "downstream": "local", "path": path})
}

/// Submits an `aggregate` job with one attempt.
async fn submit(app: &TestApp, input: Value) -> JobId {
    app.submit_with("aggregate", input, json!({"max_attempts": 1}))
        .await
        .id
}

fn fetch_progress(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.event == "progress").collect()
}

async fn sources_run_concurrently_and_report_in_completion_order() {
    let ds = FakeDownstream::start().await;
    let app = app_with(&ds, |_| {}).await;
    let started = Instant::now();
    let id = submit(
        &app,
        json!({"sources": [src("three", "/slow/3000"), src("one", "/slow/1000"), src("two", "/slow/2000")]}),
    )
    .await;
    let events = app.stream_events(id).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(4500),
        "concurrent, not 6 s: {elapsed:?}"
    );
    assert!(elapsed >= Duration::from_millis(2900));
    let progress = fetch_progress(&events);
    let order: Vec<&str> = progress
        .iter()
        .map(|p| p.progress_data()["source"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["one", "two", "three"]);
    let percents: Vec<f64> = progress.iter().map(|p| p.percent().unwrap()).collect();
    assert!((percents[0] - 33.33).abs() < 0.1 && (percents[1] - 66.67).abs() < 0.1);
    assert_eq!(percents[2], 100.0);
    for p in &progress {
        let data = p.progress_data();
        assert_eq!(p.stage(), Some("fetch"));
        assert_eq!(data["status"], "ok");
        assert_eq!(data["attempt"], 1);
        assert!(data["bytes"].as_u64().unwrap() > 0);
        assert!(data["elapsed_ms"].as_u64().unwrap() >= 900);
    }
    let result = events.last().unwrap().result().unwrap();
    assert_eq!(result["sources"]["one"], json!({"slept": 1000}));
    assert_eq!(result["sources"]["three"], json!({"slept": 3000}));
    assert_eq!(result["failed"], json!({}));
    assert!(result["elapsed_ms"].as_u64().unwrap() >= 2900);
    app.stop().await;
}

async fn a_5xx_is_retried_and_a_404_is_not() {
    let ds = FakeDownstream::start().await;
    let app = app_with(&ds, |_| {}).await;
    let id = submit(
        &app,
        json!({"sources": [src("flaky", "/flaky/a"), src("gone", "/missing")], "allow_partial": true}),
    )
    .await;
    let events = app.stream_events(id).await;
    assert_eq!(events.last().unwrap().event, "result");
    let result = events.last().unwrap().result().unwrap();
    assert_eq!(
        result["sources"]["flaky"]["calls"], 3,
        "succeeded on attempt 3"
    );
    assert_eq!(result["failed"]["gone"]["code"], "http_404");
    assert_eq!(ds.counters.hits("flaky/a"), 3);
    assert_eq!(ds.counters.hits("missing"), 1, "a 4xx is not retried");

    let flaky: Vec<&Value> = fetch_progress(&events)
        .into_iter()
        .map(Event::progress_data)
        .filter(|d| d["source"] == "flaky")
        .collect();
    let seen: Vec<(String, i64)> = flaky
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_owned(),
                d["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("retrying".into(), 1),
            ("retrying".into(), 2),
            ("ok".into(), 3)
        ]
    );
    assert_eq!(flaky[0]["error"]["code"], "http_503");
    app.stop().await;
}

async fn retry_after_is_honoured() {
    let ds = FakeDownstream::start().await;
    let app = app_with(&ds, |_| {}).await;
    let started = Instant::now();
    let id = submit(&app, json!({"sources": [src("ra", "/retry-after")]})).await;
    let events = app.stream_events(id).await;
    assert_eq!(events.last().unwrap().event, "result");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited the second Retry-After asked for"
    );
    let retry = fetch_progress(&events)
        .into_iter()
        .map(Event::progress_data)
        .find(|d| d["status"] == "retrying")
        .unwrap();
    assert_eq!(retry["retry_in_ms"], 1000);
    app.stop().await;
}

async fn timeouts_body_caps_and_allow_partial() {
    let ds = FakeDownstream::start().await;
    let app = app_with(&ds, |c| c.downstream_max_body_bytes = 64 * 1024).await;

    // Without allow_partial, one failing source fails the job and says which.
    let id = submit(
        &app,
        json!({"sources": [
            src("fast", "/slow/10"),
            {"name": "slow", "downstream": "local", "path": "/slow/3000", "timeout_ms": 300, "retries": 0},
            src("big", "/big/100"),
        ]}),
    )
    .await;
    let job = app.wait_status(id, Failed).await;
    assert_eq!(job.error_code(), Some("sources_failed"));
    let msg = &job.error.as_ref().unwrap().message;
    assert!(
        msg.contains("slow (timeout)") && msg.contains("big (body_too_large)"),
        "{msg}"
    );
    assert_eq!(
        ds.counters.hits("big"),
        1,
        "an oversized body is not retried"
    );

    // With it, the job succeeds with what it got and lists the rest.
    let id = submit(
        &app,
        json!({"allow_partial": true, "sources": [
            src("fast", "/slow/10"),
            {"name": "slow", "downstream": "local", "path": "/slow/3000", "timeout_ms": 300, "retries": 0},
            src("big", "/big/100"),
            src("small", "/big/1"),
            src("text", "/text"),
            {"name": "echo", "downstream": "local", "path": "/echo", "method": "POST", "body": {"a": [1, 2]}},
        ]}),
    )
    .await;
    let job = app.wait_status(id, Succeeded).await;
    let r = job.result.as_ref().unwrap();
    assert_eq!(r["sources"]["fast"], json!({"slept": 10}));
    assert_eq!(
        r["sources"]["small"].as_str().unwrap().len(),
        1024,
        "non-JSON kept as text"
    );
    assert_eq!(r["sources"]["text"], "plain words, not JSON");
    assert_eq!(r["sources"]["echo"], json!({"echo": {"a": [1, 2]}}));
    assert_eq!(r["failed"]["slow"]["code"], "timeout");
    assert_eq!(r["failed"]["big"]["code"], "body_too_large");
    app.stop().await;
}

async fn cancel_closes_the_downstream_connections() {
    let ds = FakeDownstream::start().await;
    let silent = SilentDownstream::start().await;
    let silent_base = silent.base.clone();
    let app = app_with(&ds, move |c| {
        c.downstreams.push(format!("silent={silent_base}"))
    })
    .await;
    let hang = |name: &str| json!({"name": name, "downstream": "silent", "path": "/report"});
    let id = submit(
        &app,
        json!({"sources": [hang("a"), hang("b"), src("c", "/slow/10")]}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while silent.open.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the downstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_at = Instant::now();
    assert_eq!(app.cancel(id).await.status(), 202);
    app.wait_status(id, Cancelled).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "cancelled within a second"
    );
    while silent.closed_by_client.load(Ordering::SeqCst) < 2 {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "the downstream never saw the connections close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(silent.open.load(Ordering::SeqCst), 0);
    app.stop().await;
}

async fn no_request_leaves_the_configured_downstreams() {
    let ds = FakeDownstream::start().await;
    let app = app_with(&ds, |_| {}).await;
    let cases = [
        (
            json!({"name": "x", "downstream": "elsewhere", "path": "/slow/1"}),
            "/input/sources/0/downstream",
        ),
        (src("x", "//evil.example/"), "/input/sources/0/path"),
        (
            src("x", "http://evil.example/slow/1"),
            "/input/sources/0/path",
        ),
        (src("x", "/../slow/1"), "/input/sources/0/path"),
        (src("x", "/a/%2e%2e/slow/1"), "/input/sources/0/path"),
        (
            json!({"name": "x", "url": "http://127.0.0.1:1/"}),
            "/input/sources/0/url",
        ),
    ];
    for (source, pointer) in cases {
        let resp = app
            .post_job(&json!({"kind": "aggregate", "input": {"sources": [source]}}))
            .await;
        assert_eq!(resp.status(), 422, "{source}");
        let p: Value = resp.json().await.unwrap();
        let pointers: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert!(pointers.contains(&pointer), "{source}: {pointers:?}");
    }
    for (input, pointer) in [
        (json!({"sources": []}), "/input/sources"),
        (
            json!({"sources": [src("a", "/slow/1"), src("a", "/slow/2")]}),
            "/input/sources/1/name",
        ),
        (
            json!({"sources": [src("a", "/slow/1")], "concurrency": 0}),
            "/input/concurrency",
        ),
        (
            json!({"sources": [{"name": "a", "downstream": "local", "path": "/x", "method": "DELETE"}]}),
            "/input/sources/0/method",
        ),
    ] {
        let resp = app
            .post_job(&json!({"kind": "aggregate", "input": input}))
            .await;
        assert_eq!(resp.status(), 422);
        let p: Value = resp.json().await.unwrap();
        assert!(
            p["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["pointer"] == pointer),
            "{p}"
        );
    }
    let many: Vec<Value> = (0..101).map(|i| src(&format!("s{i}"), "/slow/1")).collect();
    let resp = app
        .post_job(&json!({"kind": "aggregate", "input": {"sources": many}}))
        .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(ds.counters.total(), 0, "nothing was requested");
    assert!(app.list("").await.items.is_empty());
    app.stop().await;
}

async fn the_gateway_story_end_to_end() {
    // Downstreams take 12 s in all; the "gateway" cuts every response at 5 s.
    let ds = FakeDownstream::start().await;
    let app = app_with(&ds, |c| c.max_stream_secs = Some(5)).await;
    let id = submit(
        &app,
        json!({"concurrency": 1, "sources": [src("crews", "/slow/4000"), src("permits", "/slow/4000"), src("weather", "/slow/4000")]}),
    )
    .await;
    let mut seen: Vec<Event> = Vec::new();
    let mut longest = Duration::ZERO;
    let mut requests = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(40));
        let last = seen.last().map(|e| e.seq.to_string());
        let opened = Instant::now();
        let resp = app.open_stream(id, last.as_deref()).await;
        requests += 1;
        if resp.status() == 204 {
            break;
        }
        let part = read_to_end(resp).await;
        longest = longest.max(opened.elapsed());
        let done = part.last().is_some_and(|e| e.event == "result");
        seen.extend(part);
        if done {
            break;
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(12));
    assert!(requests >= 3, "the client had to reconnect: {requests}");
    assert!(
        longest <= Duration::from_millis(5500),
        "no response outlived the gateway: {longest:?}"
    );
    let n = seen.len() as i64;
    assert_eq!(
        seqs(&seen),
        (1..=n).collect::<Vec<_>>(),
        "every event exactly once"
    );
    let result = seen.last().unwrap().result().unwrap();
    for name in ["crews", "permits", "weather"] {
        assert_eq!(result["sources"][name], json!({"slept": 4000}));
    }
    let progress: Vec<&str> = seen
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.progress_data()["source"].as_str().unwrap())
        .collect();
    assert_eq!(progress, ["crews", "permits", "weather"]);
    app.stop().await;
}

backend_tests!(
    sources_run_concurrently_and_report_in_completion_order,
    a_5xx_is_retried_and_a_404_is_not,
    retry_after_is_honoured,
    timeouts_body_caps_and_allow_partial,
    cancel_closes_the_downstream_connections,
    no_request_leaves_the_configured_downstreams,
    the_gateway_story_end_to_end,
);
