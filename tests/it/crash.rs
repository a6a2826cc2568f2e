//! A killed process loses nothing: the next start runs the interrupted job
//! again (next attempt) and its events continue the same gapless sequence.

use std::time::{Duration, Instant};

use herald::domain::{EventSeq, JobId};
use herald::store::sqlite::{self, SqliteStore};
use herald::store::JobStore;
use serde_json::{json, Value};

use crate::common::legacy::{assert_gapless, statuses};
use crate::common::HeraldProcess;

async fn job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn kill_9_mid_job_then_restart_resumes_with_gapless_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let client = reqwest::Client::new();

    let first = HeraldProcess::start(&db, "info", &[]);
    let base = first.base.clone();
    let resp = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "demo", "input": {"steps": 30, "step_ms": 50}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = job(&client, &base, &id).await;
        if j["progress"]["data"]["step"].as_i64() >= Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "job never progressed: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill(); // kill -9: no shutdown code runs

    let second = HeraldProcess::start(&db, "info", &[]);
    let base = second.base.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let j = job(&client, &base, &id).await;
        if j["status"] == "succeeded" {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "job did not finish after restart: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        done["attempt"], 2,
        "a re-run after a crash counts the next attempt"
    );
    assert_eq!(done["result"], json!({"steps": 30}));
    second.kill();

    let store = SqliteStore::new(
        sqlite::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap(),
    );
    let job_id: JobId = id.parse().unwrap();
    let events = store
        .events_after(job_id, EventSeq(0), 10_000)
        .await
        .unwrap();
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [
            ("queued".into(), 1),
            ("running".into(), 1),
            ("queued".into(), 2),
            ("running".into(), 2),
        ]
    );
    let retry: Value = serde_json::from_str(
        &events
            .iter()
            .find(|e| e.data.contains("\"attempt\":2"))
            .unwrap()
            .data,
    )
    .unwrap();
    assert_eq!(retry["error"]["code"], "worker_lost");
    assert_eq!(events.last().unwrap().kind.as_str(), "result");
    assert_eq!(done["last_event_id"], events.len() as i64);
}
