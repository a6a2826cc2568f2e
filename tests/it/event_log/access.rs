//! Who may read the pages: tenants, stream tokens, and the per-tenant counts
//! (pages take no stream slot; waiting long-polls have a count of their own).

use std::time::Duration;

use herald::config::{AuthMode, Secret};
use serde_json::json;

use super::{get_page, get_page_response, Page};
use crate::common::Status::Running;
use crate::common::{Api, TestApp};

const ACME: &str = "acme-key-0123456789abcdef";
const GLOBEX: &str = "globex-key-0123456789abcdef";

async fn tenants_tokens_and_stream_slots() {
    let app = TestApp::spawn_with(|c| {
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![
            Secret(format!("acme:{ACME}")),
            Secret(format!("globex:{GLOBEX}")),
        ];
        c.stream_token_secret = Some(Secret("stream-secret-for-tests-0123".into()));
        c.max_streams_per_tenant = 1;
    })
    .await;
    let (acme, globex) = (app.with_bearer(ACME), app.with_bearer(GLOBEX));
    let job = acme
        .submit("demo", json!({"steps": 1, "step_ms": 60000}))
        .await;
    acme.wait_status(job.id, Running).await;
    let path = format!("/v1/jobs/{}/events", job.id);

    // Another tenant's job looks exactly like a missing one; its feed is empty.
    let resp = get_page_response(&globex, &path).await;
    assert_eq!(resp.status(), 404);
    let feed: Page<String> = get_page(&globex, "/v1/events?after=0-0").await;
    assert!(feed.events.is_empty(), "{feed:?}");

    // The job's `links.events` (with its stream token) and a feed token open pages.
    let anonymous = Api::new(app.base.clone());
    let page: Page<i64> = get_page(&anonymous, &job.links.events).await;
    assert_eq!(
        page.events.first().map(|e| e.event.as_str()),
        Some("status")
    );
    let token = acme.stream_token("/v1/events/stream-token").await;
    let url = format!("{}&after=0-0", token.events_url);
    let feed: Page<String> = get_page(&anonymous, &url).await;
    assert!(feed
        .events
        .iter()
        .any(|e| e.data["job_id"] == job.id.to_string()));

    // The one stream slot is taken: another stream is 429, pages are not.
    let stream = acme.get(&path).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    app.wait_open_streams(1).await;
    assert_eq!(acme.get(&path).send().await.unwrap().status(), 429);
    let _: Page<i64> = get_page(&acme, &path).await;
    // A waiting long-poll takes the one long-poll slot: a second is 429.
    let n = page.last_event_id;
    let waiting = {
        let (acme, path) = (acme.clone(), format!("{path}?after={n}&wait=3"));
        tokio::spawn(async move { get_page::<i64>(&acme, &path).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = get_page_response(&acme, &format!("{path}?after={n}&wait=3")).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let other = get_page_response(&globex, "/v1/events?wait=1").await;
    assert_eq!(other.status(), 200, "another tenant has its own count");
    assert!(waiting.await.unwrap().events.is_empty());
    drop(stream);
    app.stop().await;
}

backend_tests!(tenants_tokens_and_stream_slots);
