//! Every bad input answers problem+json with the right status and writes nothing.

use serde_json::json;

use crate::common::{pointers, problem, TestApp};

async fn assert_nothing_written(app: &TestApp) {
    let list = app.list("").await;
    assert!(list.items.is_empty(), "no job was stored: {list:?}");
}

async fn bad_submissions_are_refused_and_write_nothing() {
    let app = TestApp::spawn().await;

    let p = problem(
        app.post_job(&json!({"kind": "nope", "input": {}})).await,
        422,
        "unknown_kind",
    )
    .await;
    assert_eq!(pointers(&p), ["/kind"]);
    assert!(
        p["detail"].as_str().unwrap().contains("demo"),
        "names the known kinds"
    );

    let malformed = app
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body("{\"kind\": \"demo\", ")
        .send()
        .await
        .unwrap();
    problem(malformed, 400, "malformed_json").await;

    let p = problem(
        app.post_job(&json!({"input": {"steps": 1, "step_ms": 0}}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/kind"]);
    let p = problem(
        app.post_job(&json!({"kind": "demo"})).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/input"]);
    let p = problem(
        app.post_job(&json!({"kind": "demo", "input": {"steps": 3}}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/input/step_ms"]);

    let p = problem(
        app.post_job(&json!({"kind": "demo", "input": {"steps": 0, "step_ms": 60001}}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/input/steps", "/input/step_ms"]);
    let p = problem(
        app.post_job(&json!({"kind": "demo", "input": {"steps": 10001, "step_ms": 0}}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/input/steps"]);
    let p = problem(
        app.post_job(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0}, "max_attempts": 21, "timeout_secs": 0})).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/max_attempts", "/timeout_secs"]);
    problem(app.post_job(&json!([1, 2])).await, 422, "validation_failed").await;

    assert_nothing_written(&app).await;
    app.stop().await;
}

async fn a_body_over_the_limit_is_413_chunked_or_not() {
    let app = TestApp::spawn().await;
    let big = format!(
        "{{\"kind\": \"demo\", \"input\": {{\"steps\": 1, \"step_ms\": 0, \"pad\": \"{}\"}}}}",
        "x".repeat(1024 * 1024)
    );
    let resp = app
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let p = problem(resp, 413, "payload_too_large").await;
    assert!(p["detail"].as_str().unwrap().contains("1048576"));

    // Chunked: no Content-Length, so the limit must hold while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = app
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    problem(resp, 413, "payload_too_large").await;
    assert_nothing_written(&app).await;
    app.stop().await;
}

async fn bad_ids_and_unknown_jobs() {
    let app = TestApp::spawn().await;
    for path in ["/v1/jobs/not-a-uuid", "/v1/jobs/123"] {
        let resp = app.get(path).send().await.unwrap();
        problem(resp, 400, "invalid_parameter").await;
    }
    let resp = app.cancel("not-a-uuid").await;
    problem(resp, 400, "invalid_parameter").await;

    let missing = uuid::Uuid::now_v7();
    let resp = app
        .get(&format!("/v1/jobs/{missing}"))
        .send()
        .await
        .unwrap();
    problem(resp, 404, "not_found").await;
    problem(app.cancel(missing).await, 404, "not_found").await;

    let resp = app.get("/v2/nothing").send().await.unwrap();
    problem(resp, 404, "not_found").await;
    let resp = app
        .request(reqwest::Method::DELETE, "/v1/jobs")
        .send()
        .await
        .unwrap();
    // RFC 9110: a 405 says which methods the route takes.
    assert_eq!(resp.headers()["allow"], "GET, POST, HEAD");
    problem(resp, 405, "method_not_allowed").await;
    let resp = app.get("/v1/jobs/x/cancel").send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    problem(resp, 405, "method_not_allowed").await;
    app.stop().await;
}

/// PostgreSQL's text cannot hold NUL: an idempotency key with one is
/// refused like any bad key, and a `kind` filter with one matches no job
/// (no kind's name has one), on both backends alike.
async fn nul_in_text_is_refused_or_matches_nothing() {
    let app = TestApp::spawn().await;
    app.submit("demo", json!({"steps": 1, "step_ms": 0})).await;
    let p = problem(
        app.post_job(&json!({"kind": "demo", "input": {"steps": 1, "step_ms": 0},
            "idempotency_key": "a\u{0}b"}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(pointers(&p), ["/idempotency_key"]);
    assert!(app.list("kind=de%00mo").await.items.is_empty());
    assert_eq!(app.list("kind=demo").await.items.len(), 1);
    let page = app
        .get("/v1/events?kind=de%00mo&after=0-0")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page: serde_json::Value = page.json().await.unwrap();
    assert_eq!(page["events"], json!([]));
    app.stop().await;
}

backend_tests!(
    bad_submissions_are_refused_and_write_nothing,
    a_body_over_the_limit_is_413_chunked_or_not,
    bad_ids_and_unknown_jobs,
    nul_in_text_is_refused_or_matches_nothing,
);
