//! The per-job SSE stream, read with a real SSE parser.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::common::Status::{Queued, Running, Succeeded};
use crate::common::{names, read_to_end, seqs, Event, TestApp, WAIT};

/// Opens the job's stream resuming after the `Last-Event-ID` header, the
/// `last_event_id` query parameter, or both.
async fn resume(
    app: &TestApp,
    id: impl std::fmt::Display,
    header: Option<&str>,
    query: Option<&str>,
) -> reqwest::Response {
    let mut path = format!("/v1/jobs/{id}/events");
    if let Some(q) = query {
        path.push_str(&format!("?last_event_id={q}"));
    }
    let mut req = app.get(&path);
    if let Some(h) = header {
        req = req.header("Last-Event-ID", h);
    }
    req.send().await.expect("stream request sent")
}

async fn the_stream_delivers_every_event_then_ends_after_the_result() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let id = app
        .submit("demo", json!({"steps": 5, "step_ms": 30}))
        .await
        .id;
    let resp = app.open_stream(id, None).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(resp.headers().get("content-encoding").is_none());
    let events = read_to_end(resp).await;
    let n = events.len() as i64;
    assert_eq!(seqs(&events), (1..=n).collect::<Vec<_>>());
    assert_eq!(
        names(&events),
        [
            "status", "status", "progress", "progress", "progress", "progress", "progress",
            "result"
        ]
    );
    assert_eq!(events[0].status(), Some(Queued));
    assert_eq!(events[1].status(), Some(Running));
    assert_eq!(events[6].percent(), Some(100.0));
    assert_eq!(events[7].result(), Some(&json!({"steps": 5})));
    for e in &events {
        assert!(e.data["at"].as_str().unwrap().ends_with('Z'));
    }
    // Matches the store exactly.
    let stored = app.stored_events(id).await;
    assert_eq!(stored.len() as i64, n);
    app.wait_open_streams(0).await;
    app.stop().await;
}

async fn the_raw_stream_opens_with_retry() {
    let app = TestApp::spawn_with(|c| c.retry_ms = 1234).await;
    let id = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    let body = app.open_stream(id, None).await.text().await.unwrap();
    assert!(body.starts_with("retry: 1234\n\n"), "{body}");
    assert!(body.contains("id: 1\nevent: status\ndata: {"), "{body}");
    assert!(body.ends_with("\n\n"));
    assert!(!body.contains("event: error"));
    app.stop().await;
}

async fn resume_by_header_or_query_loses_and_repeats_nothing() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let id = app
        .submit("demo", json!({"steps": 6, "step_ms": 20}))
        .await
        .id;
    let all = app.stream_events(id).await;
    let n = all.len() as i64;
    assert_eq!(n, 9);

    let by_header = read_to_end(resume(&app, id, Some("3"), None).await).await;
    assert_eq!(seqs(&by_header), (4..=n).collect::<Vec<_>>());
    assert_eq!(by_header, all[3..].to_vec());

    let by_query = read_to_end(resume(&app, id, None, Some("3")).await).await;
    assert_eq!(by_query, all[3..].to_vec());

    // A browser reconnecting sends the header while its URL still says 2.
    let both = read_to_end(resume(&app, id, Some("5"), Some("2")).await).await;
    assert_eq!(seqs(&both), (6..=n).collect::<Vec<_>>());

    // Nothing left after the terminal event: 204, so EventSource stops.
    for last in [n.to_string(), (n + 5).to_string()] {
        let resp = app.open_stream(id, Some(&last)).await;
        assert_eq!(resp.status(), 204, "Last-Event-ID {last}");
        assert!(resp.text().await.unwrap().is_empty());
    }
    app.stop().await;
}

async fn bad_last_event_ids_and_unknown_jobs() {
    let app = TestApp::spawn().await;
    let id = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    for (header, query) in [
        (Some("abc"), None),
        (Some("-1"), None),
        (None, Some("1.5")),
        (Some("1 2"), None),
    ] {
        let resp = resume(&app, id, header, query).await;
        assert_eq!(resp.status(), 400, "{header:?} {query:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let p: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(p["code"], "bad_last_event_id");
    }
    // An empty Last-Event-ID is no id (an EventSource whose last id is
    // empty sends none): the whole stream.
    let all = app.stream_events(id).await;
    assert_eq!(
        read_to_end(resume(&app, id, Some(""), None).await).await,
        all
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let resp = app.open_stream(missing, None).await;
    assert_eq!(resp.status(), 404);
    let resp = app.open_stream("nope", None).await;
    assert_eq!(resp.status(), 400);
    app.stop().await;
}

async fn a_late_subscriber_gets_the_whole_history() {
    let app = TestApp::spawn().await;
    let id = app
        .submit("demo", json!({"steps": 3, "step_ms": 0}))
        .await
        .id;
    app.wait_status(id, Succeeded).await;
    let events = app.stream_events(id).await;
    let stored = app.stored_events(id).await;
    assert_eq!(seqs(&events), seqs(&stored));
    assert_eq!(events.first().unwrap().status(), Some(Queued));
    assert_eq!(events.last().unwrap().event, "result");
    app.stop().await;
}

async fn a_hundred_subscribers_see_identical_sequences() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let id = app
        .submit("demo", json!({"steps": 20, "step_ms": 25}))
        .await
        .id;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let resp = app.open_stream(id, None).await;
        readers.push(tokio::spawn(read_to_end(resp)));
    }
    let mut all = Vec::new();
    for r in readers {
        all.push(r.await.unwrap());
    }
    let first = &all[0];
    assert_eq!(first.len(), 23, "queued, running, 20 progress, result");
    assert_eq!(seqs(first), (1..=23).collect::<Vec<_>>());
    for other in &all[1..] {
        assert_eq!(other, first);
    }
    app.wait_open_streams(0).await;
    assert_eq!(app.watched_jobs(), 0, "subscriptions released");
    app.stop().await;
}

async fn a_slow_reader_still_gets_everything_in_order() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let id = app
        .submit("demo", json!({"steps": 60, "step_ms": 10}))
        .await
        .id;
    let resp = app.open_stream(id, None).await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"retry:"));
    // Stop reading while the job runs to the end.
    app.wait_status(id, Succeeded).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut body = Vec::from(&first[..]);
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("stream ends")
    {
        body.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(body).unwrap();
    let got: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(got, (1..=63).collect::<Vec<_>>());
    app.stop().await;
}

async fn cancel_ends_every_stream_with_cancelled() {
    let app = TestApp::spawn().await;
    let id = app
        .submit("demo", json!({"steps": 1000, "step_ms": 20}))
        .await
        .id;
    app.wait_status(id, Running).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let resp = app.open_stream(id, None).await;
        readers.push(tokio::spawn(read_to_end(resp)));
    }
    app.wait_open_streams(3).await;
    assert_eq!(app.cancel(id).await.status(), 202);
    for r in readers {
        let events: Vec<Event> = r.await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.event, "cancelled");
        assert_eq!(seqs(&events), (1..=last.seq).collect::<Vec<_>>());
    }
    app.wait_open_streams(0).await;
    app.stop().await;
}

async fn shutdown_ends_open_streams() {
    let app = TestApp::spawn_with(|c| c.shutdown_grace_secs = 0).await;
    let id = app
        .submit("demo", json!({"steps": 1000, "step_ms": 50}))
        .await
        .id;
    let resp = app.open_stream(id, None).await;
    let reader = tokio::spawn(async move {
        let mut s = resp.bytes_stream();
        while let Some(c) = s.next().await {
            if c.is_err() {
                break;
            }
        }
    });
    app.wait_open_streams(1).await;
    let streams = app.state.streams.clone();
    // What matters is how soon the stream ends once shutdown begins, not how
    // long the rest of the process takes to wind down.
    app.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream ended within 5 s of the shutdown signal")
        .unwrap();
    assert_eq!(streams.open(), 0);
    app.stop().await;
}

async fn a_client_that_disconnects_releases_its_stream() {
    let app = TestApp::spawn().await;
    let id = app
        .submit("demo", json!({"steps": 1000, "step_ms": 50}))
        .await
        .id;
    let resp = app.open_stream(id, None).await;
    app.wait_open_streams(1).await;
    assert_eq!(app.watched_jobs(), 1);
    drop(resp);
    app.wait_open_streams(0).await;
    let deadline = Instant::now() + WAIT;
    while app.watched_jobs() != 0 {
        assert!(Instant::now() < deadline, "hub subscription not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

async fn heartbeats_keep_an_idle_stream_alive() {
    let app = TestApp::spawn_with(|c| c.heartbeat_secs = 1).await;
    let id = app
        .submit("demo", json!({"steps": 1, "step_ms": 5000}))
        .await
        .id;
    let resp = app.open_stream(id, None).await;
    let mut s = resp.bytes_stream();
    let mut body = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        match tokio::time::timeout(
            Duration::from_millis(3600) - started.elapsed().min(Duration::from_millis(3500)),
            s.next(),
        )
        .await
        {
            Ok(Some(Ok(c))) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let text = String::from_utf8(body).unwrap();
    let beats = text.matches(": keep-alive\n\n").count();
    assert!(beats >= 2, "expected a comment every second: {text:?}");
    app.stop().await;
}

async fn max_stream_secs_with_reconnects_delivers_each_event_exactly_once() {
    let app = TestApp::spawn_with(|c| {
        c.max_stream_secs = Some(2);
        c.progress_min_interval_ms = 0;
    })
    .await;
    let id = app
        .submit("demo", json!({"steps": 20, "step_ms": 500}))
        .await
        .id;
    let mut seen: Vec<Event> = Vec::new();
    let mut connections = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "job never ended"
        );
        let last = seen.last().map(|e| e.seq.to_string());
        let resp = app.open_stream(id, last.as_deref()).await;
        if resp.status() == 204 {
            break;
        }
        connections += 1;
        let opened = Instant::now();
        let part = read_to_end(resp).await;
        assert!(
            opened.elapsed() < Duration::from_millis(3000),
            "each response lasts about 2 s"
        );
        let ended = part.last().is_some_and(|e| e.event == "result");
        seen.extend(part);
        if ended {
            break;
        }
    }
    assert!(
        connections >= 4,
        "a 10 s job over 2 s streams needs reconnects: {connections}"
    );
    let n = seen.len() as i64;
    assert_eq!(
        seqs(&seen),
        (1..=n).collect::<Vec<_>>(),
        "every event exactly once"
    );
    assert_eq!(n, 23);
    assert_eq!(seen.last().unwrap().result(), Some(&json!({"steps": 20})));
    app.stop().await;
}

async fn progress_coalescing_keeps_the_latest_and_the_last() {
    let app = TestApp::spawn().await; // default interval: 50 ms
    let id = app
        .submit("demo", json!({"steps": 10000, "step_ms": 0}))
        .await
        .id;
    let events = app.stream_events(id).await;
    let progress: Vec<&Event> = events.iter().filter(|e| e.event == "progress").collect();
    assert!(!progress.is_empty());
    assert!(
        progress.len() < 500,
        "10,000 reports became {} events",
        progress.len()
    );
    let last = progress.last().unwrap();
    assert_eq!(last.percent(), Some(100.0), "the final percent is exact");
    assert_eq!(last.message(), Some("10000/10000"));
    // The reports that were written still rise in order.
    let steps: Vec<i64> = progress
        .iter()
        .map(|e| e.progress_data()["step"].as_i64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(events.last().unwrap().event, "result");
    assert_eq!(seqs(&events), (1..=events.len() as i64).collect::<Vec<_>>());
    app.stop().await;
}

backend_tests!(
    the_stream_delivers_every_event_then_ends_after_the_result,
    the_raw_stream_opens_with_retry,
    resume_by_header_or_query_loses_and_repeats_nothing,
    bad_last_event_ids_and_unknown_jobs,
    a_late_subscriber_gets_the_whole_history,
    a_hundred_subscribers_see_identical_sequences,
    a_slow_reader_still_gets_everything_in_order,
    cancel_ends_every_stream_with_cancelled,
    shutdown_ends_open_streams,
    a_client_that_disconnects_releases_its_stream,
    heartbeats_keep_an_idle_stream_alive,
    max_stream_secs_with_reconnects_delivers_each_event_exactly_once,
    progress_coalescing_keeps_the_latest_and_the_last,
);
