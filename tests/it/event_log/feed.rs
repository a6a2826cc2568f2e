//! The feed's pages (`GET /v1/events` with `Accept: application/json`).

use std::time::{Duration, Instant};

use serde_json::json;

use super::{get_page, Page};
use crate::common::{Event, TestApp};

async fn feed_pages_continue_from_their_cursor_without_loss_or_repeats() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let start: Page<String> = get_page(&app, "/v1/events").await;
    assert!(start.events.is_empty() && !start.terminal);

    // Pages of 2 from the opening cursor until a page comes back empty.
    let drain = |after: String| {
        let app = &app;
        async move {
            let (mut out, mut after) = (Vec::new(), after);
            loop {
                let page: Page<String> =
                    get_page(app, &format!("/v1/events?after={after}&limit=2")).await;
                assert!(!page.terminal && page.events.len() <= 2);
                after = page.last_event_id.clone();
                if page.events.is_empty() {
                    return (out, after);
                }
                out.extend(page.events);
            }
        }
    };
    let a = app
        .submit("demo", json!({"steps": 3, "step_ms": 0}))
        .await
        .id;
    app.wait_terminal(a).await;
    let (first, cursor) = drain(start.last_event_id.clone()).await;
    let b = app
        .submit("demo", json!({"steps": 4, "step_ms": 0}))
        .await
        .id;
    app.wait_terminal(b).await;
    let (second, _) = drain(cursor).await;

    // Each job's events in full, once, as its own stream has them plus job_id and seq.
    for (entries, job) in [(&first, a), (&second, b)] {
        let mine: Vec<Event> = entries
            .iter()
            .map(|e| {
                assert_eq!(e.data["job_id"], job.to_string(), "{e:?}");
                let mut data = e.data.clone();
                let seq = data.as_object_mut().unwrap().remove("seq").unwrap();
                data.as_object_mut().unwrap().remove("job_id");
                Event {
                    seq: seq.as_i64().unwrap(),
                    event: e.event.clone(),
                    data,
                }
            })
            .collect();
        assert_eq!(mine, app.stream_events(job).await, "job {job}");
    }
    let cursors: Vec<&String> = first.iter().chain(&second).map(|e| &e.id).collect();
    let unique: std::collections::HashSet<_> = cursors.iter().collect();
    assert_eq!(unique.len(), cursors.len(), "each cursor once: {cursors:?}");

    // A filter selects jobs; a long-poll answers with the first new event.
    let only_b: Page<String> = get_page(
        &app,
        &format!(
            "/v1/events?after={}&job={b}&limit=1000",
            start.last_event_id
        ),
    )
    .await;
    assert_eq!(only_b.events.len(), second.len());
    let head: Page<String> = get_page(&app, "/v1/events").await;
    let api = app.api.clone();
    let path = format!("/v1/events?after={}&wait=10", head.last_event_id);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (get_page::<String>(&api, &path).await, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    let (page, took) = waiting.await.unwrap();
    assert_eq!(
        page.events.first().map(|e| &e.data["job_id"]),
        Some(&json!(c.to_string()))
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    app.stop().await;
}

backend_tests!(feed_pages_continue_from_their_cursor_without_loss_or_repeats);
