//! The example under trouble: a cancel mid-day, a downstream that keeps
//! failing, and a restart or a timed-out attempt halfway through the work
//! orders, after which no work order has two items and the crews' hours
//! still count the earlier assignments.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    crew, items_in_order, listed_items, respawn, spawn, suggestion, work_order, Day, Downstreams,
};
use crate::common::Status::{Cancelled, Failed, Queued, Running, Succeeded};
use crate::common::{assert_gapless, read_to_end, statuses};

const DAY: &str = "2026-12-01";

/// Nine work orders of 2 hours and three crews with 18 hours between them:
/// the crews take turns by hours left (ties: the lowest id) until the last
/// work order finds nobody with 2 hours. An attempt that forgot the hours
/// earlier ones took would find a crew for it; one that repeated a work
/// order would append a tenth item.
fn eighteen_hours() -> Day {
    Day {
        work_orders: (201..=209)
            .map(|id| work_order(id, "electric", 2.0, false))
            .collect(),
        crews: vec![
            crew(1, "Ortega", &["electric"], 7.0),
            crew(2, "Baker", &["electric"], 6.0),
            crew(3, "Chen", &["electric"], 5.0),
        ],
        permits: vec![],
    }
}

fn eighteen_hours_suggested() -> Vec<Value> {
    let crews = [1, 2, 1, 3, 2, 1, 3, 2];
    let name = |id| ["", "Ortega", "Baker", "Chen"][id as usize];
    let mut want: Vec<Value> = crews
        .iter()
        .zip(201..)
        .map(|(&c, wo)| suggestion(wo, Some((c, name(c))), "assigned"))
        .collect();
    want.push(suggestion(209, None, "no_crew"));
    want
}

fn many_work_orders(n: u64) -> Day {
    Day {
        work_orders: (1..=n)
            .map(|id| work_order(id, "electric", 1.0, false))
            .collect(),
        crews: vec![crew(1, "Ortega", &["electric"], 100.0)],
        permits: vec![],
    }
}

/// A cancel stops the job between work orders: it ends `cancelled` with at
/// most the work order in progress still suggested, and its stream ends.
async fn a_cancel_stops_between_work_orders() {
    let ds = Downstreams::start(DAY, many_work_orders(10), Duration::ZERO, &[]).await;
    let app = spawn(&ds, |_| {}).await;
    let job = app
        .submit("crew_suggestions", json!({"day": DAY, "compute_ms": 300}))
        .await;
    let stream = app.open_stream(job.id, None).await;
    let reader = tokio::spawn(read_to_end(stream));
    app.wait_for(job.id, "two items", |j| j.items_count >= 2)
        .await;
    let resp = app.cancel(job.id).await;
    assert_eq!(resp.status(), 202);
    let at_cancel = resp.json::<Value>().await.unwrap()["items_count"]
        .as_i64()
        .unwrap();
    assert!(at_cancel >= 2);

    let events = reader.await.unwrap(); // ends by itself
    assert_eq!(events.last().unwrap().event, "cancelled", "{events:?}");
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.status, Cancelled);
    assert!(
        done.items_count <= at_cancel + 1,
        "{} items at the cancel, {} at the end",
        at_cancel,
        done.items_count
    );
    assert_eq!(items_in_order(&events).len() as i64, done.items_count);
    // Nothing moves after the end.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.job(job.id).await.items_count, done.items_count);
}

/// A downstream answering 500 every time: each attempt tries it three times
/// (two retries), then the job fails with the last answer's code after
/// `max_attempts` attempts, with no item.
async fn a_downstream_that_keeps_failing_fails_the_job() {
    let ds = Downstreams::start(DAY, eighteen_hours(), Duration::ZERO, &["/crews"]).await;
    let app = spawn(&ds, |_| {}).await;
    let job = app
        .submit_with(
            "crew_suggestions",
            json!({"day": DAY, "compute_ms": 0}),
            json!({"max_attempts": 2}),
        )
        .await;
    let events = app.stream_events(job.id).await;
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.status, Failed);
    assert_eq!(done.error_code(), Some("http_500"), "{done:?}");
    assert_eq!((done.attempt, done.items_count), (2, 0));
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), last.error_code()),
        ("failed", Some("http_500"))
    );
    assert_eq!(
        statuses(&events),
        [(Queued, 1), (Running, 1), (Queued, 2), (Running, 2)]
    );
    let crews_asked = ds.hits().iter().filter(|h| h.starts_with("/crews")).count();
    assert_eq!(crews_asked, 6, "3 tries in each of 2 attempts");
}

/// herald stops with the job a few work orders in; the next start on the
/// same database resumes after them: one item per work order, indexes
/// gapless, and the crews' hours count what the first run assigned.
async fn a_restart_resumes_after_the_suggested_work_orders() {
    let ds = Downstreams::start(DAY, eighteen_hours(), Duration::ZERO, &[]).await;
    // No shutdown grace: the job goes back to the queue mid-day.
    let mut app = spawn(&ds, |c| c.shutdown_grace_secs = 0).await;
    let db = app.db.clone();
    let job = app
        .submit("crew_suggestions", json!({"day": DAY, "compute_ms": 200}))
        .await;
    app.wait_for(job.id, "three items", |j| j.items_count >= 3)
        .await;
    app.shut_down().await;
    let stopped = app.state.store.get(job.id).await.unwrap().unwrap();
    // Back in the queue, or (SQLite, now and then: the requeue write can
    // find the database locked at shutdown) still `running`, which the next
    // start takes over as a lost attempt. Either way the job goes on.
    assert!(
        ["queued", "running"].contains(&stopped.status.as_str()),
        "{stopped:?}"
    );
    assert!(
        (3..9).contains(&stopped.items_count),
        "stopped midway: {} items",
        stopped.items_count
    );
    drop(app);

    let app = respawn(db, &ds, |_| {}).await;
    let done = app.wait_terminal(job.id).await;
    assert_eq!((done.status, done.items_count), (Succeeded, 9));
    let events = app.stream_events(job.id).await;
    assert_gapless(&events);
    let requeued = [(Queued, 1), (Running, 1), (Queued, 1), (Running, 1)];
    let taken_over = [(Queued, 1), (Running, 1), (Queued, 2), (Running, 2)];
    let history = statuses(&events);
    assert!(history == requeued || history == taken_over, "{history:?}");
    assert_eq!(items_in_order(&events), eighteen_hours_suggested());
    assert_eq!(listed_items(&app, job.id).await, eighteen_hours_suggested());
    assert_eq!(
        done.result,
        Some(json!({"day": DAY, "suggested": 8, "unassigned": 1, "work_orders": 9}))
    );
    // Each run fetched the day once more.
    let asked = ds.hits().iter().filter(|h| h.starts_with("/crews")).count();
    assert_eq!(asked, 2);
}

/// An attempt that runs out of `timeout_secs` is dropped wherever it is
/// (between saving its checkpoint and appending the item, say); the next
/// attempt resumes after the items that exist, with their hours taken.
async fn a_timed_out_attempt_is_resumed_by_the_next() {
    let ds = Downstreams::start(DAY, eighteen_hours(), Duration::ZERO, &[]).await;
    let app = spawn(&ds, |_| {}).await;
    let job = app
        .submit_with(
            "crew_suggestions",
            json!({"day": DAY, "compute_ms": 150}),
            json!({"timeout_secs": 1, "max_attempts": 5}),
        )
        .await;
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.status, Succeeded, "{done:?}");
    assert!(done.attempt >= 2, "9 × 150 ms do not fit in 1 s: {done:?}");
    let events = app.stream_events(job.id).await;
    assert!(
        events.iter().any(|e| e.error_code() == Some("timeout")),
        "{events:?}"
    );
    assert_eq!(items_in_order(&events), eighteen_hours_suggested());
    assert_eq!(done.items_count, 9);
}

backend_tests!(
    a_cancel_stops_between_work_orders,
    a_downstream_that_keeps_failing_fails_the_job,
    a_restart_resumes_after_the_suggested_work_orders,
    a_timed_out_attempt_is_resumed_by_the_next,
);
