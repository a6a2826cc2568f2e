//! Items: a job's output piece by piece. The `item` event in the stream, the
//! feed and the stored log; `items_count`; `GET /v1/jobs/{id}/items`; the
//! limits; an attempt resuming after the items earlier ones appended; and
//! what a panicking handler does (and does not) take down.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{items, Status, TestApp};

/// `demo` with `emit_items` appends `{"step": k}` at each step, in order,
/// gapless from index 0; the snapshot counts them; the stored log, the
/// stream and the items endpoint agree.
async fn items_arrive_in_order_in_the_stream_and_the_snapshot() {
    let app = TestApp::spawn().await;
    let job = app
        .submit(
            "demo",
            json!({"steps": 5, "step_ms": 0, "emit_items": true}),
        )
        .await;
    let events = app.stream_events(job.id).await;
    let want: Vec<(i64, Value)> = (0..5).map(|i| (i, json!({"step": i + 1}))).collect();
    assert_eq!(items(&events), want);
    for e in events.iter().filter(|e| e.event == "item") {
        assert!(e.data["at"].as_str().unwrap().ends_with('Z'), "{e:?}");
    }
    assert_eq!(items(&app.stored_events(job.id).await), want);
    let done = app.wait_terminal(job.id).await;
    assert_eq!((done.status, done.items_count), (Status::Succeeded, 5));
    let page = app.get_json(&format!("/v1/jobs/{}/items", job.id)).await;
    let got: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].clone())
        .collect();
    assert_eq!(got, want.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>());
    assert_eq!(page["next_offset"], Value::Null);
}

/// Pages of `limit` from `offset`, `next_offset` until the last one; a bad
/// `limit` or an unknown job is a problem+json error.
async fn the_items_endpoint_pages_with_offsets() {
    let app = TestApp::spawn().await;
    let job = app
        .submit(
            "demo",
            json!({"steps": 7, "step_ms": 0, "emit_items": true}),
        )
        .await;
    app.wait_terminal(job.id).await;
    let mut seen = Vec::new();
    let mut offset = Some(0);
    let mut pages = 0;
    while let Some(o) = offset {
        let page = app
            .get_json(&format!("/v1/jobs/{}/items?offset={o}&limit=3", job.id))
            .await;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["index"], json!(seen.len()));
            seen.push(item["item"]["step"].as_i64().unwrap());
        }
        offset = page["next_offset"].as_i64();
        pages += 1;
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(pages, 3);
    let past = app
        .get_json(&format!("/v1/jobs/{}/items?offset=50", job.id))
        .await;
    assert_eq!(past, json!({"items": [], "next_offset": null}));
    for bad in ["limit=0", "limit=501", "offset=-1", "limit=x"] {
        let resp = app
            .get(&format!("/v1/jobs/{}/items?{bad}", job.id))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let problem: Value = resp.json().await.unwrap();
        assert!(problem["code"].is_string(), "{bad}: {problem}");
    }
    let missing = app
        .get(&format!("/v1/jobs/{}/items", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// An attempt that fails after appending items does not erase them, and the
/// next attempt resumes after them: three attempts, each failing at step 3,
/// leave items 1 and 2 once each.
async fn a_retry_resumes_after_the_items_earlier_attempts_appended() {
    let app = TestApp::spawn().await;
    let job = app
        .submit_with(
            "demo",
            json!({"steps": 4, "step_ms": 0, "fail_at": 3, "emit_items": true}),
            json!({"max_attempts": 3}),
        )
        .await;
    let done = app.wait_terminal(job.id).await;
    assert_eq!((done.status, done.attempt), (Status::Failed, 3));
    assert_eq!(done.items_count, 2);
    let stored = items(&app.stored_events(job.id).await);
    assert_eq!(
        stored,
        vec![(0, json!({"step": 1})), (1, json!({"step": 2}))]
    );
}

/// Past `HERALD_MAX_ITEMS_PER_JOB` the handler's call fails permanently
/// (`too_many_items`, no retry); over `HERALD_MAX_ITEM_BYTES`, `item_too_large`.
async fn item_limits_fail_the_job_permanently() {
    let app = TestApp::spawn_with(|c| {
        c.max_items_per_job = 3;
    })
    .await;
    let job = app
        .submit_with(
            "demo",
            json!({"steps": 5, "step_ms": 0, "emit_items": true}),
            json!({"max_attempts": 3}),
        )
        .await;
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.error_code(), Some("too_many_items"));
    assert_eq!((done.attempt, done.items_count), (1, 3));

    let app = TestApp::spawn_with(|c| {
        c.max_item_bytes = 5;
    })
    .await;
    let job = app
        .submit(
            "demo",
            json!({"steps": 2, "step_ms": 0, "emit_items": true}),
        )
        .await;
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.error_code(), Some("item_too_large"));
    assert_eq!((done.attempt, done.items_count), (1, 0));
}

/// A handler that panics fails that attempt (`panicked`, retried like any
/// retryable failure); a job running beside it succeeds, its stream
/// carries on, and the server keeps answering.
async fn a_panicking_handler_fails_its_attempt_and_nothing_else() {
    let app = TestApp::spawn().await;
    let steady = app
        .submit("demo", json!({"steps": 10, "step_ms": 50}))
        .await;
    let mut stream = app.open_stream(steady.id, None).await;
    let panicky = app
        .submit_with(
            "demo",
            json!({"steps": 3, "step_ms": 10, "panic_at": 2}),
            json!({"max_attempts": 2}),
        )
        .await;
    let failed = app.wait_terminal(panicky.id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error_code(), Some("panicked"));
    assert_eq!(
        failed.attempt, 2,
        "a panic is retried like any retryable failure"
    );
    assert!(failed.error.unwrap().message.contains("panic_at"));
    let events = app.stored_events(panicky.id).await;
    let retry = events
        .iter()
        .find(|e| e.status() == Some(Status::Queued) && e.attempt() == Some(2))
        .expect("a retry");
    assert_eq!(retry.error_code(), Some("panicked"));

    // The other job and its open stream went on to the end.
    let mut body = String::new();
    let read = async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap();
    assert!(body.contains("event: result"), "{body}");
    assert_eq!(app.job(steady.id).await.status, Status::Succeeded);
    let again = app.submit("demo", json!({"steps": 1, "step_ms": 0})).await;
    assert_eq!(app.wait_terminal(again.id).await.status, Status::Succeeded);
}

/// The feed carries items like every other event.
async fn the_feed_carries_items() {
    let app = TestApp::spawn().await;
    let resp = app.get("/v1/events?kind=demo").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let job = app
        .submit(
            "demo",
            json!({"steps": 3, "step_ms": 0, "emit_items": true}),
        )
        .await;
    let mut stream = resp;
    let mut body = String::new();
    let read = async {
        while !body.contains("event: result") {
            let chunk = stream.chunk().await.unwrap().expect("the feed stays open");
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap();
    let items: Vec<Value> = body
        .split("\n\n")
        .filter(|frame| frame.contains("event: item"))
        .map(|frame| {
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert_eq!(items.len(), 3, "{body}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["job_id"], json!(job.id.to_string()), "{item}");
        assert_eq!(item["index"], json!(i), "{item}");
        assert_eq!(item["item"], json!({"step": i + 1}), "{item}");
    }
}

backend_tests!(
    items_arrive_in_order_in_the_stream_and_the_snapshot,
    the_items_endpoint_pages_with_offsets,
    a_retry_resumes_after_the_items_earlier_attempts_appended,
    item_limits_fail_the_job_permanently,
    a_panicking_handler_fails_its_attempt_and_nothing_else,
    the_feed_carries_items,
);
