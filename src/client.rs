//! The client commands: `herald submit` and `herald watch`.
//!
//! `watch` follows a job's event stream with a progress bar, reconnects with
//! `Last-Event-ID` when the connection drops (or the server ends the stream at
//! its max duration), and exits with the job's outcome:
//! 0 succeeded, 1 failed, 3 cancelled, 4 could not follow (not found, unreachable).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::ClientArgs;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CANCELLED: u8 = 3;
pub const EXIT_ERROR: u8 = 4;

/// Consecutive failed connection attempts before `watch` gives up.
const MAX_RECONNECTS: u32 = 30;

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        Ok(Client {
            // No overall timeout: a stream may legitimately last for hours.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            base: args.url.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.http.get(format!("{}{path}", self.base)))
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }
}

/// `herald submit <kind> <input-json> [--follow]`.
pub async fn submit(args: &ClientArgs, kind: &str, input: &str, follow: bool) -> ExitCode {
    match submit_inner(args, kind, input).await {
        Ok(job) => {
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            if follow {
                eprintln!("submitted job {id}");
                watch(args, &id).await
            } else {
                println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("herald submit: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn submit_inner(args: &ClientArgs, kind: &str, input: &str) -> anyhow::Result<Value> {
    let input: Value = serde_json::from_str(input).context(
        "the input is not valid JSON (quote it for the shell: '{\"steps\": 5, \"step_ms\": 200}')",
    )?;
    let client = Client::new(args)?;
    let resp = client
        .auth(client.http.post(format!("{}/v1/jobs", client.base)))
        .json(&serde_json::json!({"kind": kind, "input": input}))
        .send()
        .await
        .with_context(|| format!("could not reach herald at {}", client.base))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!("{status}: {}", describe_problem(&body));
    }
    Ok(body)
}

fn describe_problem(body: &Value) -> String {
    let mut s = body["detail"]
        .as_str()
        .unwrap_or("request failed")
        .to_owned();
    if let Some(errors) = body["errors"].as_array() {
        for e in errors {
            s.push_str(&format!(
                "\n  {}: {}",
                e["pointer"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            ));
        }
    }
    s
}

/// `herald watch <job-id>`.
pub async fn watch(args: &ClientArgs, id: &str) -> ExitCode {
    match watch_inner(args, id).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald watch: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Prints a line above the bar, or plainly when there is no terminal.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

async fn watch_inner(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let bar = bar();
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut req = client.get(&format!("/v1/jobs/{id}/events"));
        if let Some(l) = &last_id {
            req = req.header("Last-Event-ID", l);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(e).context(format!("could not reach herald at {}", client.base));
                }
                say(&bar, format!("connection failed ({e}); retrying"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            // Nothing left to send: the job has ended; its snapshot says how.
            bar.finish_and_clear();
            let job: Value = client
                .get(&format!("/v1/jobs/{id}"))
                .send()
                .await?
                .json()
                .await?;
            return Ok(outcome_of_snapshot(&job));
        }
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_server_error() && failures < MAX_RECONNECTS {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            bar.finish_and_clear();
            anyhow::bail!("{status}: {}", describe_problem(&body));
        }
        failures = 0;
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    say(&bar, format!("stream interrupted ({e}); resuming"));
                    break;
                }
            };
            if !ev.id.is_empty() {
                last_id = Some(ev.id.clone());
            }
            let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            match ev.event.as_str() {
                "status" => {
                    let status = data["status"].as_str().unwrap_or("?");
                    let attempt = data["attempt"].as_i64().unwrap_or(1);
                    let why = data["error"]["message"]
                        .as_str()
                        .map(|m| format!(" after: {m}"))
                        .unwrap_or_default();
                    say(&bar, format!("{status} (attempt {attempt}){why}"));
                    bar.set_message(status.to_owned());
                }
                "progress" => {
                    if let Some(p) = data["percent"].as_f64() {
                        bar.set_position(p.round() as u64);
                    }
                    let text: Vec<&str> = [data["stage"].as_str(), data["message"].as_str()]
                        .into_iter()
                        .flatten()
                        .collect();
                    bar.set_message(text.join(": "));
                }
                "item" => {
                    // One JSON line per item on stdout, above the bar, so a
                    // pipe gets exactly the items and the result.
                    let line = serde_json::to_string(&data["item"]).unwrap_or_default();
                    bar.suspend(|| println!("{line}"));
                }
                "result" => {
                    bar.set_position(100);
                    bar.finish_and_clear();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&data["result"]).unwrap_or_default()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                "failed" => {
                    bar.abandon();
                    eprintln!(
                        "job failed: {} ({})",
                        data["error"]["message"].as_str().unwrap_or("?"),
                        data["error"]["code"].as_str().unwrap_or("?")
                    );
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                "cancelled" => {
                    bar.abandon();
                    eprintln!("job cancelled: {}", data["reason"].as_str().unwrap_or(""));
                    return Ok(ExitCode::from(EXIT_CANCELLED));
                }
                _ => {}
            }
        }
        // The server ended the stream before the job did (max stream duration,
        // shutdown, a dropped connection): resume where we are.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn outcome_of_snapshot(job: &Value) -> ExitCode {
    match job["status"].as_str() {
        Some("succeeded") => {
            println!(
                "{}",
                serde_json::to_string_pretty(&job["result"]).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Some("failed") => {
            eprintln!(
                "job failed: {}",
                job["error"]["message"].as_str().unwrap_or("?")
            );
            ExitCode::from(EXIT_FAILED)
        }
        Some("cancelled") => {
            eprintln!("job cancelled");
            ExitCode::from(EXIT_CANCELLED)
        }
        other => {
            eprintln!("job is {other:?}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
