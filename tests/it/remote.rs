//! Remote workers over HTTP (DESIGN.md, "Remote workers"): the claim, every
//! report and its lease rules, on both backends, against a real herald. A
//! worker here is a plain HTTP client, as a worker in any language is.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald::config::{AuthMode, Secret};
use herald::domain::JobId;
use serde_json::{json, Value};

use crate::common::*;

const KIND: &str = "crew_plan";

/// Remote kinds `crew_plan` and `render`, short leases for the tests that
/// wait them out.
fn remote(c: &mut herald::config::Config) {
    c.remote_kinds = vec![KIND.into(), "render".into()];
    c.remote_lease_secs = 30;
}

/// A remote worker: nothing but an HTTP client.
struct Worker {
    api: Api,
    id: String,
}

impl Worker {
    fn new(api: &Api, id: &str) -> Worker {
        Worker {
            api: api.clone(),
            id: id.to_owned(),
        }
    }

    async fn claim_raw(&self, body: Value) -> reqwest::Response {
        self.api
            .post("/v1/worker/claim")
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// Claims up to `max` `kinds` jobs, waiting up to `wait` seconds.
    async fn claim(&self, kinds: &[&str], max: u32, wait: u32) -> Vec<Value> {
        let resp = self
            .claim_raw(
                json!({"kinds": kinds, "worker_id": self.id, "max_jobs": max, "wait_secs": wait}),
            )
            .await;
        assert_eq!(resp.status(), 200, "claim");
        let body: Value = resp.json().await.unwrap();
        body["jobs"].as_array().unwrap().clone()
    }

    /// Claims exactly one job, waiting for it.
    async fn claim_one(&self) -> Value {
        let jobs = self.claim(&[KIND], 1, 10).await;
        assert_eq!(jobs.len(), 1, "one job claimed: {jobs:?}");
        jobs[0].clone()
    }

    async fn report(&self, job: &Value, name: &str, mut body: Value) -> reqwest::Response {
        if body.get("lease").is_none() {
            body["lease"] = job["lease"].clone();
        }
        self.api
            .post(&format!(
                "/v1/worker/jobs/{}/{name}",
                job["job_id"].as_str().unwrap()
            ))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// A report that must answer 200: its answer.
    async fn ok(&self, job: &Value, name: &str, body: Value) -> Value {
        let resp = self.report(job, name, body).await;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{name}: {answer}");
        answer
    }
}

fn job_id(claimed: &Value) -> JobId {
    claimed["job_id"].as_str().unwrap().parse().unwrap()
}

async fn a_worker_claims_reports_and_completes_a_remote_job() {
    let app = TestApp::spawn_with(remote).await;
    let worker = Worker::new(&app.api, "py-1");
    // The worker waits first; the submit wakes it.
    let waiting = tokio::spawn({
        let api = app.api.clone();
        async move { Worker::new(&api, "py-1").claim(&[KIND], 1, 20).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let submitted = Instant::now();
    let id = app.submit(KIND, json!({"day": "2026-12-01"})).await.id;
    let jobs = waiting.await.unwrap();
    assert!(
        submitted.elapsed() < Duration::from_secs(10),
        "the long poll answered when the job came, not when it timed out"
    );
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job["job_id"], id.to_string());
    assert_eq!(job["kind"], KIND);
    assert_eq!(job["input"], json!({"day": "2026-12-01"}));
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["tenant"], "");
    assert_eq!(job["items_count"], 0);
    assert_eq!(job["checkpoint"], Value::Null);
    assert_eq!(job["cancel_requested"], false);
    assert!(job["lease"].as_str().unwrap().len() >= 32);

    let snapshot = app.job(id).await;
    assert_eq!(snapshot.status, Status::Running);
    assert_eq!(snapshot.worker.as_deref(), Some("py-1"));

    let answer = worker
        .ok(
            job,
            "progress",
            json!({"percent": 10, "stage": "fetch", "keep": true}),
        )
        .await;
    assert_eq!(answer["cancel_requested"], false);
    assert!(answer["lease_expires_at"].is_string());
    let answer = worker
        .ok(
            job,
            "items",
            json!({"offset": 0, "items": [{"wo": 1}, {"wo": 2}]}),
        )
        .await;
    assert_eq!(answer["items_count"], 2);
    // The same request again (the worker timed out waiting), with one more.
    let answer = worker
        .ok(
            job,
            "items",
            json!({"offset": 0, "items": [{"wo": 1}, {"wo": 2}, {"wo": 3}]}),
        )
        .await;
    assert_eq!(
        answer["items_count"], 3,
        "a retried request appends nothing twice"
    );
    worker
        .ok(job, "checkpoint", json!({"checkpoint": {"done": 3}}))
        .await;
    worker.ok(job, "heartbeat", json!({})).await;
    let answer = worker
        .ok(job, "complete", json!({"result": {"suggested": 3}}))
        .await;
    assert_eq!(answer["status"], "succeeded");
    // Repeated with the same lease: 200 again, nothing changes.
    let again = worker
        .ok(job, "complete", json!({"result": {"suggested": 99}}))
        .await;
    assert_eq!(again["status"], "succeeded");
    // Any other report after the end is too late.
    let late = worker.report(job, "heartbeat", json!({})).await;
    problem(late, 409, "lease_lost").await;

    let done = app.wait_status(id, Status::Succeeded).await;
    assert_eq!(done.result, Some(json!({"suggested": 3})));
    assert_eq!(done.worker.as_deref(), Some("py-1"));
    // For clients nothing differs: the stream has every event, in order.
    let events = app.stream_events(id).await;
    assert_gapless(&events);
    assert_eq!(
        names(&events),
        ["status", "status", "progress", "item", "item", "item", "result"]
    );
    assert_eq!(
        items(&events)
            .into_iter()
            .map(|(i, _)| i)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(app.stored_events(id).await.len(), events.len());
    let page = app.get_json(&format!("/v1/jobs/{id}/items")).await;
    assert_eq!(page["items"][2]["item"], json!({"wo": 3}));
    app.stop().await;
}

async fn concurrent_claimers_never_share_a_job() {
    let app = TestApp::spawn_with(remote).await;
    let mut ids = HashSet::new();
    for n in 0..60 {
        ids.insert(app.submit(KIND, json!({"n": n})).await.id);
    }
    let claimers = (0..4).map(|w| {
        let api = app.api.clone();
        tokio::spawn(async move {
            let worker = Worker::new(&api, &format!("w{w}"));
            let mut mine = Vec::new();
            loop {
                let jobs = worker.claim(&[KIND], 3, 1).await;
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.iter().map(job_id));
            }
        })
    });
    let mut claimed: HashMap<JobId, usize> = HashMap::new();
    for c in claimers {
        for id in c.await.unwrap() {
            *claimed.entry(id).or_default() += 1;
        }
    }
    assert_eq!(claimed.keys().copied().collect::<HashSet<_>>(), ids);
    assert!(
        claimed.values().all(|&n| n == 1),
        "a job went to two claimers"
    );
    for id in ids.iter().take(5) {
        assert_eq!(app.job(*id).await.status, Status::Running);
    }
    app.stop().await;
}

async fn items_with_a_gap_or_over_the_cap_change_nothing() {
    let app = TestApp::spawn_with(|c| {
        remote(c);
        c.max_items_per_job = 3;
        c.max_item_bytes = 64;
    })
    .await;
    let worker = Worker::new(&app.api, "py-1");
    let id = app.submit(KIND, json!({})).await.id;
    let job = worker.claim_one().await;
    worker
        .ok(&job, "items", json!({"offset": 0, "items": [1]}))
        .await;
    let gap = worker
        .report(&job, "items", json!({"offset": 2, "items": [3]}))
        .await;
    problem(gap, 409, "item_offset_gap").await;
    let over = worker
        .report(&job, "items", json!({"offset": 1, "items": [2, 3, 4]}))
        .await;
    problem(over, 422, "too_many_items").await;
    let big = worker
        .report(
            &job,
            "items",
            json!({"offset": 1, "items": ["x".repeat(100)]}),
        )
        .await;
    assert_eq!(invalid_pointers(big).await, ["/items/0"]);
    assert_eq!(app.job(id).await.items_count, 1, "nothing was appended");
    assert_eq!(
        names(&app.stored_events(id).await),
        ["status", "status", "item"]
    );
    app.stop().await;
}

async fn a_lapsed_lease_is_lost_and_the_job_runs_again() {
    let app = TestApp::spawn_with(|c| {
        remote(c);
        c.remote_lease_secs = 1;
    })
    .await;
    let id = app.submit(KIND, json!({})).await.id;
    let first = Worker::new(&app.api, "quiet");
    let job = first.claim_one().await;
    first
        .ok(&job, "items", json!({"offset": 0, "items": ["a"]}))
        .await;
    first
        .ok(&job, "checkpoint", json!({"checkpoint": {"next": 1}}))
        .await;
    // The worker goes quiet past its lease.
    let requeued = app
        .wait_for(id, "the lease to run out", |j| j.attempt == 2)
        .await;
    assert_eq!(requeued.status, Status::Queued);
    for report in [
        "heartbeat",
        "progress",
        "complete",
        "fail",
        "cancelled",
        "release",
    ] {
        let body = match report {
            "complete" => json!({"result": 1}),
            "fail" => json!({"error": {"code": "x", "message": "y"}}),
            _ => json!({}),
        };
        let resp = first.report(&job, report, body).await;
        problem(resp, 409, "lease_lost").await;
    }
    // The next attempt resumes where the first left off.
    let second = Worker::new(&app.api, "next");
    let again = second.claim_one().await;
    assert_eq!(again["attempt"], 2);
    assert_eq!(again["items_count"], 1);
    assert_eq!(again["checkpoint"], json!({"next": 1}));
    assert_ne!(again["lease"], job["lease"]);
    second.ok(&again, "complete", json!({"result": "ok"})).await;
    let done = app.wait_status(id, Status::Succeeded).await;
    assert_eq!(done.worker.as_deref(), Some("next"));
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [
            (Status::Queued, 1),
            (Status::Running, 1),
            (Status::Queued, 2),
            (Status::Running, 2)
        ]
    );
    let lost = events
        .iter()
        .find(|e| e.status() == Some(Status::Queued) && e.attempt() == Some(2))
        .unwrap();
    assert_eq!(lost.error_code(), Some("worker_lost"));
    let metrics = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Counters are the process's, shared with tests running beside this one.
    assert!(
        metrics.contains("herald_worker_leases_lost_total "),
        "{metrics}"
    );
    assert!(metrics.contains("herald_worker_claims_total "), "{metrics}");
    assert!(metrics.contains("herald_worker_reports_total"), "{metrics}");
    assert!(metrics.contains("herald_worker_long_polls"), "{metrics}");
    app.stop().await;
}

async fn a_failure_retries_and_a_release_keeps_the_attempt() {
    let app = TestApp::spawn_with(remote).await;
    let worker = Worker::new(&app.api, "py-1");
    let id = app
        .submit_with(KIND, json!({}), json!({"max_attempts": 2}))
        .await
        .id;
    let job = worker.claim_one().await;
    let answer = worker.ok(&job, "release", json!({})).await;
    assert_eq!(answer["status"], "queued");
    worker.ok(&job, "release", json!({})).await; // repeated: 200, no change
    let job = worker.claim_one().await;
    assert_eq!(job["attempt"], 1, "a release spends no attempt");
    let fail = json!({"error": {"code": "downstream_down", "message": "crews API down"}});
    let answer = worker.ok(&job, "fail", fail.clone()).await;
    assert_eq!(
        (answer["status"].as_str(), answer["attempt"].as_i64()),
        (Some("queued"), Some(2))
    );
    worker.ok(&job, "fail", fail.clone()).await; // repeated
    let job = worker.claim_one().await;
    assert_eq!(job["attempt"], 2);
    let answer = worker.ok(&job, "fail", fail).await;
    assert_eq!(answer["status"], "failed", "no attempt left");
    let failed = app.wait_status(id, Status::Failed).await;
    assert_eq!(failed.error_code(), Some("downstream_down"));
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [
            (Status::Queued, 1),
            (Status::Running, 1),
            (Status::Queued, 1),
            (Status::Running, 1),
            (Status::Queued, 2),
            (Status::Running, 2)
        ]
    );
    app.stop().await;
}

async fn a_cancel_reaches_the_worker_and_one_that_ignores_it_is_cut_off() {
    let app = TestApp::spawn_with(|c| {
        remote(c);
        c.remote_lease_secs = 1;
        c.cancel_grace_secs = 1;
    })
    .await;
    let worker = Worker::new(&app.api, "py-1");
    // A worker that confirms.
    let polite = app.submit(KIND, json!({})).await.id;
    let job = worker.claim_one().await;
    assert_eq!(app.cancel(polite).await.status(), 202);
    let answer = worker.ok(&job, "heartbeat", json!({})).await;
    assert_eq!(answer["cancel_requested"], true);
    worker.ok(&job, "cancelled", json!({})).await;
    let cancelled = app.wait_status(polite, Status::Cancelled).await;
    assert!(cancelled.finished_at.is_some());

    // A worker that goes on heartbeating as if nothing happened.
    let stubborn = app.submit(KIND, json!({})).await.id;
    let job = worker.claim_one().await;
    assert_eq!(app.cancel(stubborn).await.status(), 202);
    let ended = loop {
        let resp = worker.report(&job, "heartbeat", json!({})).await;
        if resp.status() == 409 {
            problem(resp, 409, "lease_lost").await;
            // The sweep ends it at its next round.
            break app
                .wait_for(stubborn, "the job's end", |j| j.status.is_terminal())
                .await;
        }
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["cancel_requested"], true);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended.status, Status::Cancelled, "herald ended it itself");
    let events = app.stream_events(stubborn).await;
    assert_eq!(names(&events).last(), Some(&"cancelled"));
    app.stop().await;
}

async fn timeout_secs_applies_to_a_remote_attempt() {
    let app = TestApp::spawn_with(remote).await;
    let worker = Worker::new(&app.api, "slow");
    let id = app
        .submit_with(
            KIND,
            json!({}),
            json!({"timeout_secs": 1, "max_attempts": 1}),
        )
        .await
        .id;
    let job = worker.claim_one().await;
    let failed = app.wait_status(id, Status::Failed).await;
    assert_eq!(failed.error_code(), Some("timeout"));
    let late = worker.report(&job, "complete", json!({"result": 1})).await;
    problem(late, 409, "lease_lost").await;
    app.stop().await;
}

async fn a_restart_leaves_a_remote_job_to_its_lease() {
    let mut app = TestApp::spawn_with(remote).await;
    let id = app.submit(KIND, json!({})).await.id;
    let job = Worker::new(&app.api, "py-1").claim_one().await;
    app.shut_down().await;
    let db = app.db.clone();
    drop(app);
    let app = TestApp::spawn_in(db, remote).await;
    let snapshot = app.job(id).await;
    assert_eq!((snapshot.status, snapshot.attempt), (Status::Running, 1));
    let worker = Worker::new(&app.api, "py-1");
    worker.ok(&job, "heartbeat", json!({})).await;
    worker.ok(&job, "complete", json!({"result": null})).await;
    app.wait_status(id, Status::Succeeded).await;
    app.stop().await;
}

async fn bad_requests_are_refused_and_change_nothing() {
    let app = TestApp::spawn_with(remote).await;
    let worker = Worker::new(&app.api, "py-1");
    let resp = worker
        .claim_raw(
            json!({"kinds": ["demo", "nope"], "worker_id": "py-1", "max_jobs": 0, "wait_secs": 61}),
        )
        .await;
    assert_eq!(
        invalid_pointers(resp).await,
        ["/kinds/0", "/kinds/1", "/max_jobs", "/wait_secs"]
    );
    let resp = worker.claim_raw(json!({"kinds": [KIND]})).await;
    assert_eq!(invalid_pointers(resp).await, ["/worker_id"]);
    // A remote kind's input is any object.
    let resp = app.post_job(&json!({"kind": KIND, "input": [1]})).await;
    assert_eq!(invalid_pointers(resp).await, ["/input"]);

    let id = app.submit(KIND, json!({})).await.id;
    let job = worker.claim_one().await;
    let unknown = json!({"job_id": JobId::new().to_string(), "lease": job["lease"]});
    problem(
        worker.report(&unknown, "heartbeat", json!({})).await,
        404,
        "not_found",
    )
    .await;
    let wrong = json!({"job_id": job["job_id"], "lease": "not-the-lease"});
    problem(
        worker
            .report(&wrong, "complete", json!({"result": 1}))
            .await,
        409,
        "lease_lost",
    )
    .await;
    let resp = worker
        .report(&job, "progress", json!({"percent": 101}))
        .await;
    assert_eq!(invalid_pointers(resp).await, ["/percent"]);
    let resp = worker.report(&job, "fail", json!({"error": "boom"})).await;
    assert_eq!(invalid_pointers(resp).await, ["/error"]);
    let resp = worker
        .api
        .post(&format!("/v1/worker/jobs/{id}/heartbeat"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(resp, 400, "malformed_json").await;
    assert_eq!(app.job(id).await.status, Status::Running);
    assert_eq!(app.stored_events(id).await.len(), 2, "nothing was written");
    // The kinds list says which kinds are remote; the document has the API.
    let kinds = app.get_json("/v1/kinds").await;
    let remote: Vec<&str> = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["remote"] == true)
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(remote, [KIND, "render"]);
    let doc = app.get_json("/openapi.json").await;
    for path in [
        "/v1/worker/claim",
        "/v1/worker/jobs/{id}/items",
        "/v1/worker/jobs/{id}/release",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
    app.stop().await;
}

async fn a_result_as_large_as_the_result_limit_is_taken() {
    let app = TestApp::spawn_with(|c| {
        remote(c);
        c.max_body_bytes = 1024;
        c.max_result_bytes = 64 * 1024;
    })
    .await;
    let worker = Worker::new(&app.api, "py-1");
    let id = app.submit(KIND, json!({})).await.id;
    let job = worker.claim_one().await;
    let result = json!({"text": "x".repeat(32 * 1024)});
    worker.ok(&job, "complete", json!({"result": result})).await;
    assert_eq!(
        app.wait_status(id, Status::Succeeded).await.result,
        Some(result)
    );
    app.stop().await;
}

/// For clients nothing changes: `herald watch` (the real binary) follows a
/// remote job's stream to its result, items first, as for a built-in kind.
async fn herald_watch_follows_a_remote_job() {
    let app = TestApp::spawn_with(remote).await;
    let id = app.submit(KIND, json!({})).await.id.to_string();
    let watcher = {
        let (id, base) = (id.clone(), app.base.clone());
        tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["watch", &id, "--url", &base])
                .env_remove("HERALD_URL")
                .env_remove("HERALD_TOKEN")
                .output()
                .await
                .expect("herald runs")
        })
    };
    let worker = Worker::new(&app.api, "py-1");
    let job = worker.claim_one().await;
    worker
        .ok(
            &job,
            "items",
            json!({"offset": 0, "items": [{"wo": 1}, {"wo": 2}]}),
        )
        .await;
    worker
        .ok(&job, "complete", json!({"result": {"suggested": 2}}))
        .await;
    let out = watcher.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], [r#"{"wo":1}"#, r#"{"wo":2}"#], "{stdout}");
    let result: Value = serde_json::from_str(&lines[2..].join("\n")).unwrap();
    assert_eq!(result, json!({"suggested": 2}));
    app.stop().await;
}

backend_tests!(
    herald_watch_follows_a_remote_job,
    a_worker_claims_reports_and_completes_a_remote_job,
    concurrent_claimers_never_share_a_job,
    items_with_a_gap_or_over_the_cap_change_nothing,
    a_lapsed_lease_is_lost_and_the_job_runs_again,
    a_failure_retries_and_a_release_keeps_the_attempt,
    a_cancel_reaches_the_worker_and_one_that_ignores_it_is_cut_off,
    timeout_secs_applies_to_a_remote_attempt,
    a_restart_leaves_a_remote_job_to_its_lease,
    bad_requests_are_refused_and_change_nothing,
    a_result_as_large_as_the_result_limit_is_taken,
    worker_keys_and_tenant_keys_are_kept_apart,
);

const ACME: &str = "acme-key-0123456789abcdef";
const WORKER_KEY: &str = "worker-key-0123456789abcdef";
const ACME_ONLY: &str = "acme-worker-key-0123456789";

/// Worker keys and tenant keys open different doors, and a worker key
/// limited to a kind and a tenant claims nothing else.
async fn worker_keys_and_tenant_keys_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker-keys.json");
    std::fs::write(
        &file,
        json!([{"name": "acme-crews", "key": ACME_ONLY, "kinds": [KIND], "tenants": ["acme"]}])
            .to_string(),
    )
    .unwrap();
    let app = TestApp::spawn_with(|c| {
        remote(c);
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![
            Secret(format!("acme:{ACME}")),
            Secret("globex:globex-key-0123456789abc".into()),
        ];
        c.worker_keys = vec![Secret(format!("all:{WORKER_KEY}"))];
        c.worker_keys_file = Some(file.clone());
    })
    .await;
    let acme = app.with_bearer(ACME);
    let globex = app.with_bearer("globex-key-0123456789abc");
    let worker_api = app.with_bearer(WORKER_KEY);

    // A tenant's key cannot claim; a worker key cannot submit or read jobs.
    let resp = Worker::new(&acme, "x")
        .claim_raw(json!({"kinds": [KIND], "worker_id": "x", "wait_secs": 0}))
        .await;
    problem(resp, 403, "forbidden").await;
    problem(
        worker_api
            .post_job(&json!({"kind": KIND, "input": {}}))
            .await,
        403,
        "forbidden",
    )
    .await;
    problem(
        worker_api.get("/v1/jobs").send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let resp = app
        .post("/v1/worker/claim")
        .json(&json!({"kinds": [KIND], "worker_id": "x"}))
        .send()
        .await
        .unwrap();
    problem(resp, 401, "unauthorized").await;

    // The limited key sees acme's crew_plan jobs only.
    let theirs = globex.submit(KIND, json!({})).await.id;
    let render = acme.submit("render", json!({})).await.id;
    let ours = acme.submit(KIND, json!({})).await.id;
    let limited = Worker::new(&app.with_bearer(ACME_ONLY), "acme-1");
    let resp = limited
        .claim_raw(json!({"kinds": ["render"], "worker_id": "acme-1", "wait_secs": 0}))
        .await;
    problem(resp, 403, "forbidden").await;
    let jobs = limited.claim(&[KIND], 10, 0).await;
    assert_eq!(jobs.iter().map(job_id).collect::<Vec<_>>(), [ours]);
    assert_eq!(jobs[0]["tenant"], "acme");
    // The unlimited key takes the rest.
    let mut rest: Vec<JobId> = Worker::new(&worker_api, "all-1")
        .claim(&[KIND, "render"], 10, 0)
        .await
        .iter()
        .map(job_id)
        .collect();
    rest.sort();
    let mut want = vec![theirs, render];
    want.sort();
    assert_eq!(rest, want);
    // Clients see the job as any other, worker included.
    let snapshot: Value = acme.get_json(&format!("/v1/jobs/{ours}")).await;
    assert_eq!(snapshot["worker"], "acme-1");
    app.stop().await;
}

/// PostgreSQL, two nodes: a worker claims on one and reports on the other.
#[tokio::test]
async fn a_claim_on_one_node_and_reports_on_another() {
    if postgres_url().is_none() {
        eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
        return;
    }
    on_backend(Backend::Postgres, async {
        let a = TestApp::spawn_with(remote).await;
        let b = TestApp::spawn_in(a.db.clone(), remote).await;
        // Waiting on B; the job is submitted on A.
        let waiting = tokio::spawn({
            let api = b.api.clone();
            async move { Worker::new(&api, "py-1").claim(&[KIND], 1, 20).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = a.submit(KIND, json!({})).await.id;
        let jobs = waiting.await.unwrap();
        assert_eq!(jobs.iter().map(job_id).collect::<Vec<_>>(), [id]);
        let on_a = Worker::new(&a.api, "py-1");
        on_a.ok(&jobs[0], "items", json!({"offset": 0, "items": [1, 2]}))
            .await;
        on_a.ok(&jobs[0], "complete", json!({"result": 2})).await;
        // A stream on B sees everything A wrote.
        let events = b.stream_events(id).await;
        assert_gapless(&events);
        assert_eq!(
            names(&events),
            ["status", "status", "item", "item", "result"]
        );
        b.stop().await;
        a.stop().await;
    })
    .await;
}
