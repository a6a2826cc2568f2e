//! The dashboard page, served from the binary.

use std::collections::BTreeSet;

use herald::config::AuthMode;
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

/// The module paths a script imports (`import … from './x.js';`), resolved
/// against the script's own path, as the browser resolves them.
fn imports(script_path: &str, source: &str) -> Vec<String> {
    source
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("import ") || l.starts_with("} from "))
        .filter_map(|l| l.split(" from '").nth(1)?.split('\'').next())
        .map(|spec| {
            let mut parts: Vec<&str> = script_path.split('/').collect();
            parts.pop(); // the file itself
            for seg in spec.split('/') {
                match seg {
                    "." => {}
                    ".." => {
                        parts.pop();
                    }
                    seg => parts.push(seg),
                }
            }
            parts.join("/")
        })
        .collect()
}

#[tokio::test]
async fn every_module_the_page_imports_is_served_as_javascript_without_credentials() {
    let app = spawn_with_keys().await;
    let mut todo = vec!["/js/main.js".to_string()];
    let mut served = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !served.insert(path.clone()) {
            continue;
        }
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} is served without a key");
        assert_eq!(
            r.headers()["content-type"],
            "text/javascript; charset=utf-8",
            "{path}"
        );
        todo.extend(imports(&path, &r.text().await.unwrap()));
    }
    assert!(
        served.contains("/js/model.js") && served.contains("/js/views/table.js"),
        "main.js imports the other modules: {served:?}"
    );
    app.stop().await;
}
