//! The dashboard in a real browser: `e2e/dashboard.mjs` drives headless
//! Debian chromium (playwright-core) against a herald started here. Skipped,
//! with the reason, when node, chromium or the npm package is missing
//! (`.ci/run` installs all three). Alone: `cargo test --test it browser`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::TestApp;

fn missing() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no chromium at {chromium} (apt-get install -y chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".into());
    }
    if !root.join("e2e/node_modules/playwright-core").exists() {
        return Some("no e2e/node_modules/playwright-core (cd e2e && npm ci)".into());
    }
    None
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    if let Some(why) = missing() {
        let _ = writeln!(
            std::io::stderr(),
            "note: the browser test is skipped: {why}"
        );
        return;
    }
    // A downstream for the upload form's import: takes every batch.
    let sink = {
        use poem::{EndpointExt, Route, Server};
        #[poem::handler]
        fn rows(_batch: poem::web::Json<Vec<serde_json::Value>>) -> &'static str {
            "ok"
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        tokio::spawn(
            Server::new_with_acceptor(acceptor)
                .run(Route::new().at("/rows", poem::post(rows)).boxed()),
        );
        base
    };
    let downstreams = vec![format!("sink={sink}")];
    let app = TestApp::spawn_with({
        let downstreams = downstreams.clone();
        move |c| {
            c.shutdown_grace_secs = 0;
            c.downstreams = downstreams;
        }
    })
    .await;
    let addr = app.state.config.listen;
    let base = app.base.clone();
    let bound: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    assert_eq!(addr.ip(), bound.ip());
    let db = app.db.clone();

    let mut node = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/dashboard.mjs"))
        .arg(&base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut stdin = node.stdin.take().unwrap();
    let stdout = node.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut app = Some(app);
    let mut output = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        println!("{line}");
        if line == "RESTART" {
            // Stop herald (its streams end) and start it again on the same
            // port and database, as a deploy would.
            app.take().unwrap().stop().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let downstreams = downstreams.clone();
            app = Some(
                TestApp::spawn_in(db.clone(), move |c| {
                    c.listen = bound;
                    c.downstreams = downstreams;
                })
                .await,
            );
            writeln!(stdin, "RESTARTED").unwrap();
        }
        output.push(line);
    }
    let status = node.wait().unwrap();
    assert!(
        status.success() && output.iter().any(|l| l == "DONE"),
        "the browser checks failed (a screenshot is at /tmp/herald-e2e-failure.png):\n{}",
        output.join("\n")
    );
    if let Some(app) = app {
        app.stop().await;
    }
}

#[tokio::test]
async fn the_dashboard_asks_for_an_api_key_once_and_streams_with_feed_tokens() {
    use herald::config::AuthMode;
    use herald::config::Secret;
    if let Some(why) = missing() {
        let _ = writeln!(
            std::io::stderr(),
            "note: the browser test is skipped: {why}"
        );
        return;
    }
    const KEY: &str = "acme-key-0123456789abcdef";
    let app = TestApp::spawn_with(|c| {
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![Secret(format!("acme:{KEY}"))];
        c.stream_token_secret = Some(Secret("stream-secret-for-tests-0123".into()));
    })
    .await;
    let out = tokio::task::spawn_blocking({
        let base = app.base.clone();
        move || {
            Command::new("node")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/dashboard.mjs"))
                .arg(&base)
                .arg("--api-key")
                .arg(KEY)
                .stdin(Stdio::null())
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "DONE"),
        "the browser checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}
