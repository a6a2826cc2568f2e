//! A filtered feed among other jobs' events: each read examines a bounded
//! number of events after its cursor and moves past the ones its filter
//! leaves out, so a quiet job's feed neither re-reads the others at every
//! wake-up nor stalls behind more than a page of them.

use serde_json::{json, Value};

use super::Feed;
use crate::common::TestApp;

/// A JSON page of the feed (`Accept: application/json`).
async fn page(app: &TestApp, path: &str) -> Value {
    let resp = app
        .get(path)
        .header("Accept", "application/json")
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.expect("a JSON page")
}

fn cursor(page: &Value) -> String {
    page["last_event_id"].as_str().expect("a cursor").to_owned()
}

/// More events than one store read examines (256).
const NOISE_STEPS: u64 = 300;

async fn a_filtered_feed_reaches_its_job_past_pages_of_other_events() {
    let app = TestApp::spawn_with(|c| {
        c.progress_min_interval_ms = 0;
        // No heartbeat within the test's wait: a feed that stopped after a
        // read of left-out events would wait for a wake-up that never comes.
        c.heartbeat_secs = 60;
    })
    .await;
    let start = cursor(&page(&app, "/v1/events").await);
    let noise = |steps: u64| {
        let app = &app;
        async move {
            let id = app
                .submit("demo", json!({"steps": steps, "step_ms": 0}))
                .await
                .id;
            app.wait_terminal(id).await;
        }
    };
    noise(NOISE_STEPS).await;
    let mine = app
        .submit("demo", json!({"steps": 2, "step_ms": 0}))
        .await
        .id;
    app.wait_terminal(mine).await;
    noise(NOISE_STEPS).await;
    let stored = app.stored_events(mine).await;
    let seqs: Vec<i64> = stored.iter().map(|e| e.seq).collect();

    // The stream: every event of the job, though the first reads after the
    // cursor find only the other job's.
    let mut feed = Feed::open(&app, &format!("?job={mine}"), Some(&start)).await;
    let mut seen = Vec::new();
    for _ in &stored {
        let ev = feed.next().await;
        assert_eq!(ev.job, mine);
        seen.push(ev.seq);
    }
    assert_eq!(seen, seqs);

    // Pages of 5: the job's events once each, in order, then an empty page
    // whose cursor is the feed's head, past the other job's events, so the
    // next request starts there rather than examining them again.
    let (mut paged, mut after) = (Vec::new(), start);
    loop {
        let p = page(
            &app,
            &format!("/v1/events?job={mine}&after={after}&limit=5"),
        )
        .await;
        let events = p["events"].as_array().expect("events");
        assert!(events.len() <= 5, "{p}");
        after = cursor(&p);
        if events.is_empty() {
            break;
        }
        paged.extend(events.iter().map(|e| e["data"]["seq"].as_i64().unwrap()));
    }
    assert_eq!(paged, seqs);
    let head = cursor(&page(&app, "/v1/events").await);
    assert_eq!(after, head, "the empty page's cursor is the feed's head");
    app.stop().await;
}

backend_tests!(a_filtered_feed_reaches_its_job_past_pages_of_other_events);
