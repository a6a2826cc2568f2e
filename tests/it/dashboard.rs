//! The dashboard page, served from the binary.

use herald::auth::AuthMode;
use herald::config::Secret;

use crate::common::TestApp;

async fn spawn_with_keys() -> TestApp {
    TestApp::spawn_with(|c| {
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![Secret("acme:acme-key-0123456789abcdef".into())];
    })
    .await
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_without_credentials() {
    let app = spawn_with_keys().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "public, like /docs");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    for hook in [
        "id=\"conn-state\"",
        "id=\"submit-form\"",
        "<script type=\"module\" src=\"js/main.js\">",
        "style.css",
    ] {
        assert!(html.contains(hook), "the page has {hook}");
    }
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no external resources"
    );
    for (path, ty) in [
        ("/js/main.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty);
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert!(!r.text().await.unwrap().is_empty());
    }
    let unknown = app.client.get(app.url("/js/nope.js")).send().await;
    assert_eq!(unknown.unwrap().status(), 404, "only the embedded modules");
    // The API itself still wants a key.
    let api = app.client.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    app.stop().await;
}
