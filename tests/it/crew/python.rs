//! `examples/workers/python/`: the `crew_plan` worker, a real Python process
//! (standard library only), working for a real herald process for which
//! `crew_plan` is a remote kind. A client follows the job's stream as for
//! any kind; the suggestions are the ones `crew_suggestions` makes in Rust.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::rules::{a_day, DAY};
use super::{items_in_order, suggestion, Downstreams};
use crate::common::*;

/// The suggestions for [`a_day`], in the order its work orders come.
fn want() -> Vec<Value> {
    vec![
        suggestion(42, Some((1, "Ortega")), "assigned"),
        suggestion(7, Some((1, "Ortega")), "assigned"),
        suggestion(19, Some((3, "Chen")), "assigned"),
        suggestion(3, Some((2, "Baker")), "assigned"),
        suggestion(11, None, "no_crew"),
        suggestion(5, None, "permit_pending"),
    ]
}

/// `python3`, or `None` (then the test says it skipped; in CI it fails).
fn python() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is needed for the Python worker's tests"
        );
        eprintln!("skipped: python3 is not installed");
        return None;
    }
    Some("python3")
}

/// The example worker, as its README starts it, for herald at `herald`.
struct PythonWorker(Child);

impl PythonWorker {
    fn start(python: &str, herald: &str, ds: &Downstreams, id: &str) -> PythonWorker {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/workers/python/crew_plan.py"
        );
        let child = Command::new(python)
            .arg(script)
            .env("HERALD_URL", herald)
            .env("HERALD_WORKER_ID", id)
            .env("HERALD_WORKER_WAIT_SECS", "5")
            .env("CREW_WORKORDERS_URL", &ds.base)
            .env("CREW_CREWS_URL", &ds.base)
            .env("CREW_PERMITS_URL", &ds.base)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("RUST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("the Python worker starts");
        PythonWorker(child)
    }

    /// `kill -9`: it reports nothing more.
    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("the worker exits");
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// herald as a process, `crew_plan` remote, leases of `lease_secs`.
fn herald(db: &TestDb, lease_secs: &str) -> HeraldProcess {
    HeraldProcess::start_url(
        db.url(),
        "info",
        &[
            ("HERALD_REMOTE_KINDS", "crew_plan"),
            ("HERALD_REMOTE_LEASE_SECS", lease_secs),
        ],
    )
}

async fn the_python_worker_runs_a_crew_plan_to_its_result() {
    let Some(python) = python() else { return };
    let ds = Downstreams::start(DAY, a_day(), Duration::from_millis(50), &[]).await;
    let db = TestDb::new().await;
    let herald = herald(&db, "30");
    let _worker = PythonWorker::start(python, &herald.base, &ds, "py-1");
    let api = herald.api();
    let job = api
        .submit("crew_plan", json!({"day": DAY, "compute_ms": 20}))
        .await;
    let events = api.stream_events(job.id).await;
    assert_gapless(&events);
    assert_eq!(items_in_order(&events), want());
    let fetches = events
        .iter()
        .filter(|e| e.event == "progress" && e.stage() == Some("fetch"))
        .count();
    assert_eq!(fetches, 3, "a kept progress event per source: {events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.event, "result");
    assert_eq!(
        last.result(),
        Some(&json!({"day": DAY, "suggested": 4, "unassigned": 2, "work_orders": 6}))
    );
    let done = api.job(job.id).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.worker.as_deref(), Some("py-1"));
}

/// The worker is killed (-9) in the middle of the work orders: its lease
/// runs out, the job goes back to the queue as attempt 2, and a second
/// worker resumes after the items already there. One stream, open
/// throughout, sees every event once and in order.
async fn a_killed_worker_loses_its_lease_and_another_finishes_the_job() {
    let Some(python) = python() else { return };
    let ds = Downstreams::start(DAY, a_day(), Duration::ZERO, &[]).await;
    let db = TestDb::new().await;
    let herald = herald(&db, "2");
    let api = herald.api();
    let mut first = PythonWorker::start(python, &herald.base, &ds, "py-first");
    let job = api
        .submit("crew_plan", json!({"day": DAY, "compute_ms": 400}))
        .await;
    let stream = api.open_stream(job.id, None).await;
    assert_eq!(stream.status(), 200);
    let reader = tokio::spawn(read_to_end(stream));

    let deadline = Instant::now() + WAIT;
    while api.job(job.id).await.items_count < 2 {
        assert!(
            Instant::now() < deadline,
            "the first worker appended two items"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    let _second = PythonWorker::start(python, &herald.base, &ds, "py-second");

    let events = tokio::time::timeout(WAIT * 2, reader)
        .await
        .expect("the job ends")
        .unwrap();
    assert_gapless(&events);
    assert_eq!(
        items_in_order(&events),
        want(),
        "no work order twice, none missing"
    );
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
    assert_eq!(events.last().unwrap().event, "result");
    let done = api.job(job.id).await;
    assert_eq!((done.status, done.attempt), (Status::Succeeded, 2));
    assert_eq!(done.worker.as_deref(), Some("py-second"));
    // The items endpoint agrees with the stream.
    let stored: Vec<Value> = api
        .get_json(&format!("/v1/jobs/{}/items?limit=500", job.id))
        .await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].clone())
        .collect();
    assert_eq!(stored, want());
}

backend_tests!(
    the_python_worker_runs_a_crew_plan_to_its_result,
    a_killed_worker_loses_its_lease_and_another_finishes_the_job,
);
