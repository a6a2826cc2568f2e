//! `herald watch` and `herald submit --follow`, run as the real binary.

use std::process::Output;

use serde_json::json;

use crate::common::Status::Running;
use crate::common::TestApp;

async fn herald(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(&args)
        .env_remove("HERALD_URL")
        .env_remove("HERALD_TOKEN")
        .output()
        .await
        .expect("herald runs")
}

#[tokio::test]
async fn watch_follows_through_reconnects_and_exits_with_the_outcome() {
    // Streams last 1 s, the job about 2.5 s: watch must resume with Last-Event-ID.
    let app = TestApp::spawn_with(|c| c.max_stream_secs = Some(1)).await;
    let id = app
        .submit("demo", json!({"steps": 5, "step_ms": 500}))
        .await
        .id
        .to_string();
    let out = herald(&["watch", &id, "--url", &app.base]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let result: serde_json::Value =
        serde_json::from_str(&stdout).expect("prints the result as JSON");
    assert_eq!(result, json!({"steps": 5}));
    assert!(stderr.contains("running (attempt 1)"), "{stderr}");

    // Watching a finished job: 204 from the stream, outcome from the snapshot.
    let again = herald(&["watch", &id, "--url", &app.base]).await;
    assert_eq!(again.status.code(), Some(0));
    app.stop().await;
}

#[tokio::test]
async fn watch_exit_codes_for_failed_cancelled_and_missing_jobs() {
    let app = TestApp::spawn().await;
    let failing = app
        .submit_with(
            "demo",
            json!({"steps": 2, "step_ms": 0, "fail_at": 1}),
            json!({"max_attempts": 1}),
        )
        .await
        .id
        .to_string();
    let out = herald(&["watch", &failing, "--url", &app.base]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("demo_failure"));

    let long = app
        .submit("demo", json!({"steps": 1000, "step_ms": 20}))
        .await
        .id;
    let base = app.base.clone();
    let watcher =
        tokio::spawn(async move { herald(&["watch", &long.to_string(), "--url", &base]).await });
    app.wait_status(long, Running).await;
    // Cancelled while watch follows its stream.
    app.wait_open_streams(1).await;
    assert_eq!(app.cancel(long).await.status(), 202);
    let out = watcher.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = uuid::Uuid::now_v7().to_string();
    let out = herald(&["watch", &missing, "--url", &app.base]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job"));
    app.stop().await;
}

#[tokio::test]
async fn submit_follow_runs_a_job_to_its_result() {
    let app = TestApp::spawn().await;
    let out = herald(&[
        "submit",
        "demo",
        r#"{"steps": 3, "step_ms": 50}"#,
        "--follow",
        "--url",
        &app.base,
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result, json!({"steps": 3}));

    let out = herald(&["submit", "demo", r#"{"step_ms": 0}"#, "--url", &app.base]).await;
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/input/steps"),
        "names the bad field: {stderr}"
    );
    app.stop().await;
}

#[tokio::test]
async fn watch_prints_each_item_as_a_json_line_before_the_result() {
    // Streams last 1 s, the job about 2 s: items must not repeat across reconnects.
    let app = TestApp::spawn_with(|c| c.max_stream_secs = Some(1)).await;
    let id = app
        .submit(
            "demo",
            json!({"steps": 4, "step_ms": 500, "emit_items": true}),
        )
        .await
        .id
        .to_string();
    let out = herald(&["watch", &id, "--url", &app.base]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        &lines[..4],
        [
            r#"{"step":1}"#,
            r#"{"step":2}"#,
            r#"{"step":3}"#,
            r#"{"step":4}"#
        ],
        "{stdout}"
    );
    let result: serde_json::Value = serde_json::from_str(&lines[4..].join("\n")).unwrap();
    assert_eq!(result, json!({"steps": 4}));
    app.stop().await;
}
