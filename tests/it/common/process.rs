//! The real `herald` binary as a child process, for tests of what only a
//! process shows: its logs, a kill -9, several nodes.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Api;

/// The real `herald` binary, started with JSON logs on a port of its own.
/// Its stderr lines arrive through a channel; every line read is kept in `seen`.
pub struct HeraldProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub base: String,
    pub seen: Vec<String>,
}

impl HeraldProcess {
    /// Starts it on the SQLite file `db` with `RUST_LOG=log` and `env`, and
    /// waits for the "herald listening" line.
    pub fn start(db: &std::path::Path, log: &str, env: &[(&str, &str)]) -> HeraldProcess {
        Self::start_url(&format!("sqlite://{}", db.display()), log, env)
    }

    /// Starts it on the database at `url`.
    pub fn start_url(url: &str, log: &str, env: &[(&str, &str)]) -> HeraldProcess {
        Self::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_herald")),
            url,
            log,
            env,
        )
    }

    /// Starts it on the SQLite file `db` with at most `fds` open file
    /// descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(
        db: &std::path::Path,
        fds: u32,
        log: &str,
        env: &[(&str, &str)],
    ) -> HeraldProcess {
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\""))
            .arg(env!("CARGO_BIN_EXE_herald"));
        Self::spawn(sh, &format!("sqlite://{}", db.display()), log, env)
    }

    fn spawn(
        mut cmd: std::process::Command,
        url: &str,
        log: &str,
        env: &[(&str, &str)],
    ) -> HeraldProcess {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = cmd
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATABASE_URL", url)
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = HeraldProcess {
            child,
            lines,
            base: String::new(),
            seen: Vec::new(),
        };
        let listening = p
            .next_json(Duration::from_secs(30), |v| {
                v["message"] == "herald listening"
            })
            .expect("herald logs its address");
        p.base = format!("http://{}", listening["addr"].as_str().expect("addr field"));
        p
    }

    /// A client of its API.
    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }

    /// The next log line (parsed) for which `pred` holds, within `timeout`.
    pub fn next_json(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            self.seen.push(line);
            if pred(&v) {
                return Some(v);
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (no shutdown code runs), then every line it wrote, in order.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("herald exits");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for HeraldProcess {
    /// A failing test must not leave herald processes behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
