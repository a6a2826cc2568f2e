//! A killed process loses nothing: the next start runs the interrupted job
//! again (next attempt) and its events continue the same gapless sequence.

use serde_json::json;

use crate::common::Status::{Queued, Running, Succeeded};
use crate::common::{assert_gapless, statuses, HeraldProcess};

#[tokio::test]
async fn kill_9_mid_job_then_restart_resumes_with_gapless_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");

    let first = HeraldProcess::start(&db, "info", &[]);
    let api = first.api();
    let id = api
        .submit("demo", json!({"steps": 30, "step_ms": 50}))
        .await
        .id;
    api.wait_for(id, "three steps", |j| j.step() >= 3).await;
    first.kill(); // kill -9: no shutdown code runs

    let second = HeraldProcess::start(&db, "info", &[]);
    let api = second.api();
    let done = api.wait_terminal(id).await;
    assert_eq!(
        done.status, Succeeded,
        "the job finishes after the restart: {done:?}"
    );
    assert_eq!(
        done.attempt, 2,
        "a re-run after a crash counts the next attempt"
    );
    assert_eq!(done.result, Some(json!({"steps": 30})));
    // Its whole history, as the restarted process serves it from the database.
    let events = api.stream_events(id).await;
    second.kill();

    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [(Queued, 1), (Running, 1), (Queued, 2), (Running, 2)]
    );
    let retry = events
        .iter()
        .find(|e| e.status() == Some(Queued) && e.attempt() == Some(2))
        .unwrap();
    assert_eq!(retry.error_code(), Some("worker_lost"));
    assert_eq!(events.last().unwrap().event, "result");
    assert_eq!(done.last_event_id, events.len() as i64);
}
