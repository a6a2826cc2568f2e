//! herald-client (`clients/js`) against a real herald: Node's test runner for
//! the client (`clients/js/tests/*.test.mjs`), and its React hooks in headless
//! Debian chromium on a page bundled with esbuild (`clients/js/tests/browser/`).
//! The package is built with `tsc` first, so the tests run what `dist/` ships.
//! Skipped, with the reason, when node (20 or later), the package's
//! node_modules or chromium is missing; `.ci/run` installs all of them, so CI
//! never skips (with `CI=true` a missing piece fails the test). Alone:
//! `cargo test --test it js_client`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use herald::config::{AuthMode, Secret};

use crate::common::TestApp;

const KEY: &str = "acme-key-0123456789abcdef";

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// Why the client's tests cannot run here, if they cannot.
fn missing_node() -> Option<String> {
    let version = match Command::new("node").arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => return Some("no node on PATH (Node 20 or later)".into()),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Some(format!("node {version} is older than 20"));
    }
    if !package().join("node_modules/typescript").exists() {
        return Some("no clients/js/node_modules (cd clients/js && npm ci)".into());
    }
    None
}

fn missing_browser() -> Option<String> {
    if let Some(why) = missing_node() {
        return Some(why);
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no chromium at {chromium} (apt-get install -y chromium)"
        ));
    }
    None
}

fn skip(why: &str) {
    // CI installs everything (.ci/run): there, a skip would hide a failure.
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the JavaScript client's tests cannot run in CI: {why}");
    }
    // Past the test harness's capture, so `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "note: the JavaScript client's tests are skipped: {why}"
    );
}

/// Builds `dist/` with tsc, and type-checks the browser test's page against
/// it, once for all the tests of this run.
async fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| {
                for project in ["tsconfig.json", "tests/browser/tsconfig.json"] {
                    let out = Command::new("node")
                        .args(["node_modules/typescript/bin/tsc", "-p", project])
                        .current_dir(package())
                        .output()
                        .map_err(|e| format!("node does not start: {e}"))?;
                    if !out.status.success() {
                        return Err(format!(
                            "tsc -p {project}:\n{}{}",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                }
                Ok(())
            })
            .clone()
    })
    .await
    .unwrap();
    if let Err(e) = built {
        panic!("clients/js does not build:\n{e}");
    }
}

async fn the_client_against_a_real_herald() {
    if let Some(why) = missing_node() {
        return skip(&why);
    }
    build().await;
    let plain = TestApp::spawn_with(|c| c.retry_ms = 200).await;
    // Streams end every second, and stream tokens live one second: every
    // test on this one resumes, and the token tests refresh.
    let capped = TestApp::spawn_with(|c| {
        c.retry_ms = 200;
        c.max_stream_secs = Some(1);
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![Secret(format!("acme:{KEY}"))];
        c.stream_token_secret = Some(Secret("stream-secret-for-tests-0123".into()));
        c.stream_token_ttl_secs = 1;
    })
    .await;
    let out = tokio::task::spawn_blocking({
        let (plain, capped) = (plain.base.clone(), capped.base.clone());
        move || {
            Command::new("node")
                .args([
                    "--test",
                    "--test-concurrency=4",
                    "--test-timeout=60000",
                    "tests/",
                ])
                .current_dir(package())
                .env("HERALD_URL", plain)
                .env("HERALD_CAPPED_URL", capped)
                .env("HERALD_API_KEY", KEY)
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
        out.status.success(),
        "the client's tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plain.stop().await;
    capped.stop().await;
}

backend_tests!(the_client_against_a_real_herald);

#[tokio::test]
async fn the_react_hooks_work_in_a_real_browser() {
    if let Some(why) = missing_browser() {
        return skip(&why);
    }
    build().await;
    let app = TestApp::spawn().await;
    let mut node = Command::new("node")
        .arg("tests/browser/run.mjs")
        .arg(&app.base)
        .current_dir(package())
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
    let mut output = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) if line == "FEEDS" => {
                // What no page can see: the feeds herald holds open.
                writeln!(stdin, "{}", app.state.feeds.open()).unwrap();
            }
            Ok(Some(line)) => {
                println!("{line}");
                output.push(line);
            }
            Ok(None) => break,
            Err(_) => {
                output.push("(timed out after 120 s)".into());
                let _ = node.kill();
                break;
            }
        }
    }
    let status = tokio::task::spawn_blocking(move || node.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success() && output.iter().any(|l| l == "DONE"),
        "the React hooks' browser checks failed:\n{}",
        output.join("\n")
    );
    app.stop().await;
}
