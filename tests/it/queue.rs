//! The job table is the queue: claims start each job once, in order (a job
//! started at its submission too), and a retry waits out its backoff in the
//! queue, where a cancel ends it at once.

use std::collections::HashSet;
use std::time::Duration;

use chrono::DateTime;
use serde_json::json;

use crate::common::Status::{self, Cancelled, Failed, Queued, Running, Succeeded};
use crate::common::{assert_gapless, statuses, Event, Job, TestApp};
use crate::kinds::spawn_with_steps;

/// The `at` of the first `status` event announcing `status` at `attempt`.
fn status_at(events: &[Event], status: Status, attempt: i64) -> DateTime<chrono::Utc> {
    let e = events
        .iter()
        .find(|e| e.status() == Some(status) && e.attempt() == Some(attempt))
        .unwrap_or_else(|| panic!("no {status:?} event for attempt {attempt} in {events:?}"));
    e.data["at"].as_str().unwrap().parse().unwrap()
}

async fn a_retry_waits_out_its_backoff_in_the_queue() {
    let app = TestApp::spawn_with(|c| c.retry_backoff_ms = 1500).await;
    let id = app
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0, "fail_at": 1}),
            json!({"max_attempts": 2}),
        )
        .await
        .id;
    let waiting = app
        .wait_for(id, "queued for attempt 2", |j| {
            j.status == Queued && j.attempt == 2
        })
        .await;
    assert_eq!(waiting.error_code(), None, "a waiting retry is not failed");

    let job = app.wait_status(id, Failed).await;
    assert_eq!(job.attempt, 2);
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(
        statuses(&events),
        [(Queued, 1), (Running, 1), (Queued, 2), (Running, 2)]
    );
    let waited = status_at(&events, Running, 2) - status_at(&events, Queued, 2);
    assert!(
        waited >= chrono::Duration::milliseconds(1500),
        "attempt 2 started {waited} after the retry was queued, before its 1.5 s backoff"
    );
    app.stop().await;
}

async fn cancelling_a_retry_that_waits_in_the_queue_ends_it_at_once() {
    let app = TestApp::spawn_with(|c| c.retry_backoff_ms = 60_000).await;
    let id = app
        .submit_with(
            "demo",
            json!({"steps": 1, "step_ms": 0, "fail_at": 1}),
            json!({"max_attempts": 3}),
        )
        .await
        .id;
    app.wait_for(id, "queued for attempt 2", |j| {
        j.status == Queued && j.attempt == 2
    })
    .await;
    let resp = app.cancel(id).await;
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    assert_eq!(job.status, Cancelled, "a queued job is cancelled at once");
    assert!(job.finished_at.is_some());
    assert_eq!(job.attempt, 2);
    let events = app.stored_events(id).await;
    assert_gapless(&events);
    assert_eq!(events.last().unwrap().event, "cancelled");
    app.stop().await;
}

/// Many more jobs than worker slots, submitted at once: each runs exactly
/// once (one `running` event), and every one finishes.
async fn every_job_is_claimed_exactly_once() {
    let app = TestApp::spawn_with(|c| {
        c.worker_concurrency = 4;
        c.submit_rate_per_sec = 10_000;
    })
    .await;
    let submits = (0..120).map(|_| app.submit("demo", json!({"steps": 1, "step_ms": 0})));
    let ids: Vec<_> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 120);
    for &id in &ids {
        let job = app.wait_status(id, Succeeded).await;
        assert_eq!(job.attempt, 1);
        let events = app.stored_events(id).await;
        assert_gapless(&events);
        assert_eq!(statuses(&events), [(Queued, 1), (Running, 1)], "job {id}");
    }
    app.stop().await;
}

/// A job queued while the worker is idle starts without waiting for the
/// queue's backstop poll (1 s on SQLite).
async fn an_idle_worker_starts_a_new_job_at_once() {
    let app = TestApp::spawn().await;
    // Let the worker settle into waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let id = app
            .submit("demo", json!({"steps": 1, "step_ms": 0}))
            .await
            .id;
        app.wait_status(id, Succeeded).await;
        let events = app.stored_events(id).await;
        let pickup = status_at(&events, Running, 1) - status_at(&events, Queued, 1);
        assert!(
            pickup < chrono::Duration::milliseconds(500),
            "job {id} waited {pickup} in the queue of an idle worker"
        );
    }
    app.stop().await;
}

/// Jobs start in the order they were submitted, whether a job took a free
/// slot at its submission (stored started) or waited in the queue: one
/// submitted while older ones wait never passes them, even when a slot is
/// free the moment it arrives.
async fn jobs_start_in_the_order_they_were_submitted() {
    let app = TestApp::spawn_with(|c| c.worker_concurrency = 1).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = app
            .submit("demo", json!({"steps": 2, "step_ms": 40}))
            .await
            .id;
        ids.push(id);
        // Some arrive while the one before runs, some as it ends.
        tokio::time::sleep(Duration::from_millis(35)).await;
    }
    let mut starts = Vec::new();
    for id in &ids {
        app.wait_status(*id, Succeeded).await;
        let events = app.stored_events(*id).await;
        assert_gapless(&events);
        starts.push(status_at(&events, Running, 1));
    }
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(
        starts, sorted,
        "start times, in submission order: {starts:?}"
    );
    app.stop().await;
}

/// A worker runs at most its concurrency of handlers at once, and reaches
/// it: a slot goes to the next job once a handler is done, while its outcome
/// is written, and never twice.
async fn the_worker_runs_as_many_handlers_at_once_as_its_concurrency() {
    let (app, log) = spawn_with_steps(|c| {
        c.worker_concurrency = 3;
        c.submit_rate_per_sec = 10_000;
    })
    .await;
    let submits = (0..40).map(|_| app.submit("steps", json!({"steps": 2, "step_ms": 15})));
    let ids: Vec<_> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    for &id in &ids {
        app.wait_status(id, Succeeded).await;
        assert_eq!(log.attempts(id), 1, "job {id}");
        assert_gapless(&app.stored_events(id).await);
    }
    assert_eq!(log.peak_at_once(), 3, "the most handlers that ran at once");
    app.stop().await;
}

backend_tests!(
    the_worker_runs_as_many_handlers_at_once_as_its_concurrency,
    jobs_start_in_the_order_they_were_submitted,
    a_retry_waits_out_its_backoff_in_the_queue,
    cancelling_a_retry_that_waits_in_the_queue_ends_it_at_once,
    every_job_is_claimed_exactly_once,
    an_idle_worker_starts_a_new_job_at_once,
);
