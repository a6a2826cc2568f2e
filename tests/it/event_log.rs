//! The event log as JSON pages (`Accept: application/json` on a job's events
//! and on the feed): the same events as the streams, paged, and long-polled.
//! Here a job's pages; the feed's and who may read them in the submodules.

mod access;
mod feed;

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::Status::Running;
use crate::common::{read_to_end, Api, Event, TestApp, WAIT};

/// A page as a client reads it; `I` is an event id (a job's) or a cursor (the feed's).
#[derive(Debug, Clone, Deserialize)]
struct Page<I> {
    events: Vec<Entry<I>>,
    last_event_id: I,
    terminal: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct Entry<I> {
    id: I,
    event: String,
    data: Value,
}

impl Page<i64> {
    fn events(&self) -> Vec<Event> {
        self.events
            .iter()
            .map(|e| Event {
                seq: e.id,
                event: e.event.clone(),
                data: e.data.clone(),
            })
            .collect()
    }
}

/// `GET path` asking for JSON.
async fn get_page_response(api: &Api, path: &str) -> reqwest::Response {
    api.get(path)
        .header("Accept", "application/json")
        .send()
        .await
        .expect("request sent")
}

/// `GET path` asking for JSON; expects a 200 page.
async fn get_page<I: DeserializeOwned>(api: &Api, path: &str) -> Page<I> {
    let resp = get_page_response(api, path).await;
    assert_eq!(resp.status(), 200, "GET {path}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    resp.json().await.expect("a page")
}

/// A job's pages of `limit` from `after` until one is terminal.
async fn walk(app: &TestApp, id: impl std::fmt::Display, limit: usize) -> Vec<Page<i64>> {
    let mut pages: Vec<Page<i64>> = Vec::new();
    let mut after = 0;
    while pages.last().is_none_or(|p| !p.terminal) {
        assert!(pages.len() < 100, "no terminal page: {pages:?}");
        let path = format!("/v1/jobs/{id}/events?after={after}&limit={limit}");
        let page: Page<i64> = get_page(app, &path).await;
        after = page.last_event_id;
        pages.push(page);
    }
    pages
}

async fn pages_walk_a_finished_job_and_agree_with_the_stream() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let id = app
        .submit(
            "demo",
            json!({"steps": 7, "step_ms": 0, "emit_items": true}),
        )
        .await
        .id;
    app.wait_terminal(id).await;
    let streamed = app.stream_events(id).await;
    let items = streamed.iter().filter(|e| e.event == "item").count();
    assert_eq!(items, 7, "{streamed:?}");
    assert!(
        streamed.len() >= 16,
        "status×2, 7 progress, 7 items, result: {streamed:?}"
    );

    let pages = walk(&app, id, 3).await;
    let paged: Vec<Event> = pages.iter().flat_map(Page::events).collect();
    assert_eq!(
        paged, streamed,
        "the same ids, names and data as the stream"
    );
    for (i, page) in pages.iter().enumerate() {
        let last = i == pages.len() - 1;
        assert_eq!(page.terminal, last, "page {i} of {}", pages.len());
        assert!(page.events.len() <= 3);
        assert_eq!(
            page.last_event_id,
            page.events.last().expect("no empty page before the end").id
        );
    }

    // All in one page, and past the end: an empty terminal page that keeps the id.
    let whole: Page<i64> = get_page(&app, &format!("/v1/jobs/{id}/events")).await;
    assert_eq!((whole.events(), whole.terminal), (streamed.clone(), true));
    let n = streamed.len() as i64;
    for after in [n, n + 5] {
        let past: Page<i64> =
            get_page(&app, &format!("/v1/jobs/{id}/events?after={after}&wait=5")).await;
        assert!(past.events.is_empty() && past.terminal);
        assert_eq!(past.last_event_id, after);
    }

    // Where a page starts: the header, else `after`, else `last_event_id`.
    let from = |api: &Api, query: &str, header: Option<&str>| {
        let mut req = api
            .get(&format!("/v1/jobs/{id}/events?{query}"))
            .header("Accept", "application/json");
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        async move {
            let page: Page<i64> = req.send().await.unwrap().json().await.unwrap();
            page.events.first().map(|e| e.id)
        }
    };
    assert_eq!(
        from(&app, "after=2&last_event_id=6", Some("4")).await,
        Some(5)
    );
    assert_eq!(from(&app, "after=2&last_event_id=6", None).await, Some(3));
    assert_eq!(from(&app, "last_event_id=6", None).await, Some(7));
    app.stop().await;
}

async fn accept_decides_between_the_stream_and_a_page() {
    let app = TestApp::spawn().await;
    let id = app
        .submit("demo", json!({"steps": 2, "step_ms": 0}))
        .await
        .id;
    app.wait_terminal(id).await;
    let path = format!("/v1/jobs/{id}/events");
    let page: Page<i64> = get_page(&app, &path).await;
    for accept in [
        None,
        Some("*/*"),
        Some("text/event-stream"),
        Some("text/event-stream, application/json"),
    ] {
        for path in [&path, "/v1/events"] {
            let mut req = app.get(path);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{accept:?} {path}");
            assert_eq!(
                resp.headers()["content-type"],
                "text/event-stream",
                "{accept:?} {path}"
            );
            if path.starts_with("/v1/jobs") {
                assert_eq!(read_to_end(resp).await, page.events());
            }
        }
    }
    app.stop().await;
}

async fn a_long_poll_answers_with_the_next_event_or_an_empty_page() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let busy = app
        .submit("demo", json!({"steps": 30, "step_ms": 300}))
        .await
        .id;
    app.wait_status(busy, Running).await;
    let now: Page<i64> = get_page(&app, &format!("/v1/jobs/{busy}/events")).await;
    let n = now.last_event_id;
    let started = Instant::now();
    let next: Page<i64> =
        get_page(&app, &format!("/v1/jobs/{busy}/events?after={n}&wait=10")).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(next.events.first().map(|e| e.id), Some(n + 1));
    assert!(!next.terminal);

    // One step takes a minute: nothing comes within a 1 s wait.
    let idle = app
        .submit("demo", json!({"steps": 1, "step_ms": 60000}))
        .await
        .id;
    app.wait_status(idle, Running).await;
    let now: Page<i64> = get_page(&app, &format!("/v1/jobs/{idle}/events")).await;
    let n = now.last_event_id;
    let started = Instant::now();
    let empty: Page<i64> =
        get_page(&app, &format!("/v1/jobs/{idle}/events?after={n}&wait=1")).await;
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&took),
        "an empty page after the 1 s wait, not after {took:?}"
    );
    assert!(empty.events.is_empty() && !empty.terminal);
    assert_eq!(empty.last_event_id, n);

    // Shutdown ends a wait at once, with an empty page.
    let api = app.api.clone();
    let path = format!("/v1/jobs/{idle}/events?after={n}&wait=25");
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let page: Page<i64> = get_page(&api, &path).await;
        (page, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.shutdown.cancel();
    let (page, took) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(page.events.is_empty() && !page.terminal);
    assert!(
        took < Duration::from_secs(10),
        "shutdown ended the wait after {took:?}"
    );
    app.stop().await;
}

async fn bad_parameters_are_problems_and_other_jobs_are_not_found() {
    let app = TestApp::spawn().await;
    let id = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    let problem = |path: String, header: Option<&'static str>| {
        let mut req = app.get(&path).header("Accept", "application/json");
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            let p: Value = resp.json().await.unwrap();
            (status, p["code"].as_str().unwrap().to_owned())
        }
    };
    let bad_id = (400, "bad_last_event_id".to_owned());
    let bad_param = (400, "invalid_parameter".to_owned());
    let events = format!("/v1/jobs/{id}/events");
    for (query, header, want) in [
        ("after=abc", None, &bad_id),
        ("after=-1", None, &bad_id),
        ("after=1.5", None, &bad_id),
        ("last_event_id=x", None, &bad_id),
        ("after=3", Some("x"), &bad_id),
        ("limit=0", None, &bad_param),
        ("limit=1001", None, &bad_param),
        ("limit=many", None, &bad_param),
        ("wait=0", None, &bad_param),
        ("wait=26", None, &bad_param),
    ] {
        assert_eq!(
            &problem(format!("{events}?{query}"), header).await,
            want,
            "{query}"
        );
    }
    for query in ["after=7", "after=1-x", "limit=0", "wait=26"] {
        let got = problem(format!("/v1/events?{query}"), None).await;
        assert_eq!(got.0, 400, "{query}: {got:?}");
    }
    let missing = uuid::Uuid::now_v7();
    let not_found = (404, "not_found".to_owned());
    assert_eq!(
        problem(format!("/v1/jobs/{missing}/events"), None).await,
        not_found
    );
    app.stop().await;
}

backend_tests!(
    pages_walk_a_finished_job_and_agree_with_the_stream,
    accept_decides_between_the_stream_and_a_page,
    a_long_poll_answers_with_the_next_event_or_an_empty_page,
    bad_parameters_are_problems_and_other_jobs_are_not_found,
);
