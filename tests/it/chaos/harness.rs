//! The chaos harness, shared by the CI form (`tests/it/chaos.rs`) and the full
//! run (`examples/chaos.rs`, which includes this file by path): jobs, clients
//! that cut their connections at random byte offsets and moments (mid-event
//! included) and resume by header or query, and the check of what each
//! client saw against the stored event log.
//!
//! Only herald's HTTP API and its database tables are used here, so the same
//! code drives a server in the test's process or herald processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// One event as an EventSource dispatches it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// Server-Sent Events parsed as the WHATWG spec has a browser parse them, fed
/// whatever bytes a connection delivered before it was cut. An event counts
/// once its blank line has arrived; what a cut leaves unfinished is dropped,
/// as a browser drops it. The last event id outlives the connection (the next
/// one resumes from it), and an `id:` without `data:` sets it too (the feed's
/// opening frame).
#[derive(Debug, Default)]
pub struct SseParser {
    /// The id a reconnect sends: set when an event (with data or not) is
    /// dispatched.
    pub last_id: Option<String>,
    /// The spec's "last event ID buffer".
    id: Option<String>,
    event: String,
    data: String,
    line: Vec<u8>,
    /// A field of the current event has been read (or half a line of one).
    in_event: bool,
    after_cr: bool,
}

impl SseParser {
    /// Parses `bytes`, appending the events they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out);
                }
                _ => self.line.push(b),
            }
        }
    }

    /// The connection is gone: an unfinished event is dropped.
    pub fn cut(&mut self) {
        self.id = self.last_id.clone();
        self.event.clear();
        self.data.clear();
        self.line.clear();
        self.in_event = false;
        self.after_cr = false;
    }

    /// Bytes of an event have arrived whose blank line has not.
    pub fn inside_event(&self) -> bool {
        self.in_event || self.line.first().is_some_and(|&b| b != b':')
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // a comment (`: keep-alive`)
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            _ => return, // `retry:` and unknown fields
        }
        self.in_event = true;
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        self.in_event = false;
        self.last_id = self.id.clone();
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push(SseEvent {
            id: self.id.clone().unwrap_or_default(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        });
    }
}

/// How a reconnecting client names the last event it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// `Last-Event-ID: <id>`, as an EventSource does.
    Header,
    /// `?last_event_id=<id>`, for clients that cannot set headers.
    LastEventIdQuery,
    /// `?after=<id>`, as the JSON pages do.
    AfterQuery,
    /// The header, with the URL still naming the first id the client had
    /// (a browser's EventSource keeps its URL): the header wins.
    HeaderOverStaleQuery,
}

pub const RESUMES: [Resume; 4] = [
    Resume::Header,
    Resume::LastEventIdQuery,
    Resume::AfterQuery,
    Resume::HeaderOverStaleQuery,
];

impl Resume {
    fn name(self) -> &'static str {
        match self {
            Resume::Header => "Last-Event-ID header",
            Resume::LastEventIdQuery => "?last_event_id=",
            Resume::AfterQuery => "?after=",
            Resume::HeaderOverStaleQuery => "header over a stale query",
        }
    }
}

/// Where connections are cut.
#[derive(Debug, Clone)]
pub struct Cuts {
    /// A connection is dropped after a random number of body bytes, 0 to this.
    pub max_bytes: usize,
    /// Percent of connections dropped after a random time instead, 0 to
    /// `max_ms`, whatever they have read by then.
    pub timed_percent: u32,
    pub max_ms: u64,
    /// Percent of connections read until the server ends them (a job's
    /// stream after its terminal event) or the client has all it wants.
    pub whole_percent: u32,
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// At least this many jobs …
    pub jobs: usize,
    /// … and more until the clients have reconnected this many times.
    pub min_reconnects: u64,
    /// Jobs being watched at once.
    pub in_flight: usize,
    /// `demo` steps and milliseconds between them, each drawn from the range.
    pub steps: (u32, u32),
    pub step_ms: (u32, u32),
    /// Attempts per job (failing and panicking jobs use them all).
    pub max_attempts: u32,
    /// Clients per job following its stream, each from a random moment.
    pub job_clients: usize,
    /// Clients following the feed, opened before the first job.
    pub feed_clients: usize,
    pub cuts: Cuts,
    /// No event for this long on a client that still waits for one fails it.
    pub stall: Duration,
}

/// A job's stored event (the source of truth the clients are checked against).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: i64,
    pub event: String,
    pub data: Value,
}

/// Reads a job's stored events, in seq order.
pub trait EventLog {
    fn events(&self, job: &str) -> impl Future<Output = Vec<Stored>>;
}

/// herald's tables read with SQL, on either backend.
pub enum SqlLog {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl SqlLog {
    pub async fn connect(url: &str) -> SqlLog {
        if url.starts_with("sqlite:") {
            SqlLog::Sqlite(sqlx::SqlitePool::connect(url).await.expect("open SQLite"))
        } else {
            SqlLog::Postgres(
                sqlx::PgPool::connect(url)
                    .await
                    .expect("connect to PostgreSQL"),
            )
        }
    }
}

impl EventLog for SqlLog {
    async fn events(&self, job: &str) -> Vec<Stored> {
        let rows: Vec<(i64, String, String)> = match self {
            SqlLog::Sqlite(p) => sqlx::query_as(
                "SELECT seq, event, data FROM herald_job_events WHERE job_id = ? ORDER BY seq",
            )
            .bind(job)
            .fetch_all(p)
            .await
            .expect("read events"),
            SqlLog::Postgres(p) => sqlx::query_as(
                "SELECT seq, event, data FROM herald_job_events WHERE job_id = $1::uuid ORDER BY seq",
            )
            .bind(job)
            .fetch_all(p)
            .await
            .expect("read events"),
        };
        rows.into_iter()
            .map(|(seq, event, data)| Stored {
                seq,
                event,
                data: serde_json::from_str(&data).expect("stored data is JSON"),
            })
            .collect()
    }
}

/// What a run measured and found. `lost`, `duplicated`, `reordered` and
/// `mismatched` count events: stored events a client never got, events it got
/// twice, events that came after a later one, and events whose name or data
/// differ from the stored ones (or that are not in the log at all).
#[derive(Debug, Default)]
pub struct Figures {
    pub seed: u64,
    pub jobs: usize,
    /// Terminal status → jobs.
    pub ended: BTreeMap<String, usize>,
    pub not_ended: Vec<String>,
    /// The error codes of the failed jobs.
    pub failures: BTreeMap<String, usize>,
    /// Attempts re-run because their worker was lost (kill -9).
    pub worker_lost_retries: usize,
    /// Clients of job streams, and of the feed.
    pub job_clients: usize,
    pub feed_clients: usize,
    pub connections: u64,
    pub reconnects: u64,
    pub cuts_by_bytes: u64,
    pub cuts_by_time: u64,
    pub cuts_mid_event: u64,
    pub resumes: BTreeMap<&'static str, u64>,
    /// Reconnects after the terminal event, answered 204.
    pub nothing_left: u64,
    pub events_checked: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub mismatched: u64,
    /// Requests that failed, stalls, answers other than expected.
    pub errors: Vec<String>,
    pub duration: Duration,
}

impl Figures {
    /// Nothing lost, repeated, reordered or altered; every job ended; no error.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.mismatched == 0
            && self.not_ended.is_empty()
            && self.errors.is_empty()
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed                 {}", self.seed)?;
        writeln!(
            f,
            "duration             {:.1} s",
            self.duration.as_secs_f64()
        )?;
        let ended: usize = self.ended.values().sum();
        let statuses: Vec<String> = self.ended.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(
            f,
            "jobs                 {} submitted, {ended} ended ({}), {} not ended",
            self.jobs,
            statuses.join(", "),
            self.not_ended.len()
        )?;
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        writeln!(f, "failed with          {}", failures.join(", "))?;
        writeln!(f, "worker-lost retries  {}", self.worker_lost_retries)?;
        writeln!(
            f,
            "clients              {} on job streams, {} on the feed ({} connections)",
            self.job_clients, self.feed_clients, self.connections
        )?;
        writeln!(
            f,
            "reconnects           {} (cut by bytes {}, by time {}, mid-event {}; 204 after the end {})",
            self.reconnects, self.cuts_by_bytes, self.cuts_by_time, self.cuts_mid_event, self.nothing_left
        )?;
        let resumes: Vec<String> = self
            .resumes
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        writeln!(f, "resumed by           {}", resumes.join(", "))?;
        writeln!(f, "events checked       {}", self.events_checked)?;
        writeln!(
            f,
            "lost {}, duplicated {}, reordered {}, mismatched {}",
            self.lost, self.duplicated, self.reordered, self.mismatched
        )?;
        write!(f, "errors               {}", self.errors.len())?;
        for e in self.errors.iter().take(20) {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// What the clients share: where to connect, and the running counts.
struct Ctx {
    http: reqwest::Client,
    bases: Vec<String>,
    plan: Plan,
    connections: AtomicU64,
    reconnects: AtomicU64,
    cuts_by_bytes: AtomicU64,
    cuts_by_time: AtomicU64,
    cuts_mid_event: AtomicU64,
    nothing_left: AtomicU64,
    resumes: [AtomicU64; 4],
    /// How many jobs the feed clients wait for: unknown (`usize::MAX`) until
    /// the last one is submitted.
    total_jobs: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Ctx {
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }

    fn pick_base<'a>(&'a self, rng: &mut StdRng) -> &'a str {
        &self.bases[rng.random_range(0..self.bases.len())]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Watch {
    Job(String),
    Feed,
}

/// What one client saw, for the check.
struct Followed {
    watch: Watch,
    seen: Vec<SseEvent>,
    /// The feed's opening cursor (the first id it got).
    start: Option<String>,
}

fn terminal(event: &str) -> bool {
    matches!(event, "result" | "failed" | "cancelled")
}

/// How a connection ended.
enum Ended {
    /// The client cut it.
    Cut,
    /// The server ended it, or the client had all it wanted.
    Closed,
    /// The client gives up (the error is recorded).
    Failed,
}

/// One client: a job's stream or the feed, followed until it has everything
/// (a job's terminal event, then one more reconnect, which must answer 204;
/// or the feed's terminal events of every job). Each connection goes to a
/// random node and is cut after a random number of bytes or a random time,
/// or read whole; each reconnect resumes in a random style.
struct Client {
    ctx: Arc<Ctx>,
    watch: Watch,
    what: String,
    rng: StdRng,
    parser: SseParser,
    seen: Vec<SseEvent>,
    /// The first id this client got (the feed: its opening cursor).
    first_id: Option<String>,
    /// The feed: jobs whose terminal event came.
    ended_jobs: HashSet<String>,
    /// When the last event came: a client that waits longer than the
    /// plan's `stall` fails.
    last_event: Instant,
    /// The feed's first connection: told the opening cursor, and not cut
    /// before it.
    opened: Option<oneshot::Sender<String>>,
}

impl Client {
    fn new(
        ctx: Arc<Ctx>,
        watch: Watch,
        rng: StdRng,
        opened: Option<oneshot::Sender<String>>,
    ) -> Self {
        let what = match &watch {
            Watch::Job(id) => format!("job {id}"),
            Watch::Feed => "the feed".to_owned(),
        };
        Client {
            ctx,
            watch,
            what,
            rng,
            parser: SseParser::default(),
            seen: Vec::new(),
            first_id: None,
            ended_jobs: HashSet::new(),
            last_event: Instant::now(),
            opened,
        }
    }

    async fn follow(mut self) -> Followed {
        self.last_event = Instant::now();
        let mut connections = 0u64;
        loop {
            if self.watch == Watch::Feed && self.done() {
                break;
            }
            if connections > 0 {
                self.ctx.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            connections += 1;
            self.ctx.connections.fetch_add(1, Ordering::Relaxed);
            let Some(resp) = self.open().await else {
                break;
            };
            let ended = self.read(resp).await;
            // An unfinished event is dropped with the connection.
            self.parser.cut();
            if matches!(ended, Ended::Failed) {
                break;
            }
        }
        Followed {
            watch: self.watch,
            seen: self.seen,
            start: self.first_id,
        }
    }

    fn done(&self) -> bool {
        match &self.watch {
            Watch::Job(_) => self.seen.last().is_some_and(|e| terminal(&e.event)),
            Watch::Feed => self.ended_jobs.len() >= self.ctx.total_jobs.load(Ordering::SeqCst),
        }
    }

    fn stall_left(&self) -> Duration {
        self.ctx
            .plan
            .stall
            .saturating_sub(self.last_event.elapsed())
    }

    fn fail(&self, e: String) {
        self.ctx.error(format!("{}: {e}", self.what));
    }

    /// Connects to a random node, resuming in a random style; the response
    /// to read, or None when this client is done (a 204 after its terminal
    /// event) or has failed.
    async fn open(&mut self) -> Option<reqwest::Response> {
        let path = match &self.watch {
            Watch::Job(id) => format!("/v1/jobs/{id}/events"),
            Watch::Feed => "/v1/events".to_owned(),
        };
        let base = self.ctx.pick_base(&mut self.rng).to_owned();
        let mut url = format!("{base}{path}");
        let mut header = None;
        if let Some(last) = self.parser.last_id.clone() {
            let resume = RESUMES[self.rng.random_range(0..RESUMES.len())];
            self.ctx.resumes[resume as usize].fetch_add(1, Ordering::Relaxed);
            match resume {
                Resume::Header => header = Some(last),
                Resume::LastEventIdQuery => url.push_str(&format!("?last_event_id={last}")),
                Resume::AfterQuery => url.push_str(&format!("?after={last}")),
                Resume::HeaderOverStaleQuery => {
                    let stale = self.first_id.clone().unwrap_or_else(|| last.clone());
                    let name = if self.rng.random_bool(0.5) {
                        "last_event_id"
                    } else {
                        "after"
                    };
                    url.push_str(&format!("?{name}={stale}"));
                    header = Some(last);
                }
            }
        }
        let mut req = self.ctx.http.get(&url);
        if let Some(h) = &header {
            req = req.header("Last-Event-ID", h);
        }
        let resp = match tokio::time::timeout(self.stall_left(), req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.fail(format!("GET {url} failed: {e}"));
                return None;
            }
            Err(_) => {
                self.fail(format!("GET {url} did not answer within the stall limit"));
                return None;
            }
        };
        match resp.status().as_u16() {
            200 if !self.done() => Some(resp),
            200 => {
                self.fail(format!(
                    "GET {url} after the terminal event answered 200, not 204"
                ));
                None
            }
            204 if self.done() => {
                self.ctx.nothing_left.fetch_add(1, Ordering::Relaxed);
                None
            }
            status => {
                let body = resp.text().await.unwrap_or_default();
                self.fail(format!(
                    "GET {url} (Last-Event-ID {header:?}) answered {status}: {body}"
                ));
                None
            }
        }
    }

    /// Reads `resp` until the server ends it, the client has all it
    /// wants, or the cut drawn for this connection.
    async fn read(&mut self, mut resp: reqwest::Response) -> Ended {
        let cuts = self.ctx.plan.cuts.clone();
        let roll = self.rng.random_range(0..100);
        let (budget, cut_at) = if roll < cuts.whole_percent {
            (usize::MAX, None)
        } else if roll < cuts.whole_percent + cuts.timed_percent {
            let ms = self.rng.random_range(0..=cuts.max_ms);
            (usize::MAX, Some(Instant::now() + Duration::from_millis(ms)))
        } else {
            (self.rng.random_range(0..=cuts.max_bytes), None)
        };
        let mut read = 0usize;
        let mut fresh = Vec::new();
        loop {
            let opening = self.opened.is_some();
            if !opening && read >= budget {
                return self.cut(&self.ctx.cuts_by_bytes);
            }
            let wait = match cut_at.filter(|_| !opening) {
                Some(at) => self
                    .stall_left()
                    .min(at.saturating_duration_since(Instant::now())),
                None => self.stall_left(),
            };
            let chunk = match tokio::time::timeout(wait, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ended::Closed,
                Ok(Err(e)) => {
                    self.fail(format!("reading failed: {e}"));
                    return Ended::Closed;
                }
                Err(_) if cut_at.is_some_and(|at| Instant::now() >= at) => {
                    return self.cut(&self.ctx.cuts_by_time);
                }
                Err(_) => {
                    self.fail(format!(
                        "no event for {:?} (a lost wake-up?); last id {:?}",
                        self.ctx.plan.stall, self.parser.last_id
                    ));
                    return Ended::Failed;
                }
            };
            let take = if opening {
                chunk.len()
            } else {
                chunk.len().min(budget - read)
            };
            read += take;
            self.parser.feed(&chunk[..take], &mut fresh);
            if let Some(start) = self.parser.last_id.clone().filter(|_| opening) {
                // The feed's opening frame: an id, no data (no job exists
                // yet, so no event can have come with it).
                self.first_id = Some(start.clone());
                let _ = self.opened.take().expect("opening").send(start);
                read = 0;
            }
            if !fresh.is_empty() {
                self.last_event = Instant::now();
                if self.first_id.is_none() {
                    self.first_id = self.parser.last_id.clone();
                }
            }
            for ev in fresh.drain(..) {
                if self.watch == Watch::Feed && terminal(&ev.event) {
                    let data: Option<Value> = serde_json::from_str(&ev.data).ok();
                    if let Some(job) = data.as_ref().and_then(|d| d["job_id"].as_str()) {
                        self.ended_jobs.insert(job.to_owned());
                    }
                }
                self.seen.push(ev);
            }
            if self.watch == Watch::Feed && self.done() {
                return Ended::Closed;
            }
        }
    }

    /// The client cuts the connection here (counted by `counter`).
    fn cut(&self, counter: &AtomicU64) -> Ended {
        counter.fetch_add(1, Ordering::Relaxed);
        if self.parser.inside_event() {
            self.ctx.cuts_mid_event.fetch_add(1, Ordering::Relaxed);
        }
        Ended::Cut
    }
}

/// One job of the run: its `demo` input, and whether (when) a client cancels it.
struct JobSpec {
    input: Value,
    cancel_after: Option<Duration>,
    /// About how long it runs.
    length: Duration,
}

impl JobSpec {
    /// Most succeed (a third of them with items), some fail at a step or
    /// panic there (every attempt, so they end `failed`), some are cancelled
    /// at a random moment.
    fn random(rng: &mut StdRng, plan: &Plan) -> JobSpec {
        let steps = rng.random_range(plan.steps.0..=plan.steps.1);
        let step_ms = rng.random_range(plan.step_ms.0..=plan.step_ms.1);
        let mut input = json!({"steps": steps, "step_ms": step_ms});
        if rng.random_bool(0.3) {
            input["emit_items"] = json!(true);
        }
        let length = Duration::from_millis(u64::from(steps * step_ms));
        let mut cancel_after = None;
        match rng.random_range(0..100) {
            0..15 => input["fail_at"] = json!(rng.random_range(1..=steps)),
            15..20 => input["panic_at"] = json!(rng.random_range(1..=steps)),
            20..40 => {
                let ms = rng.random_range(0..=length.as_millis() as u64);
                cancel_after = Some(Duration::from_millis(ms));
            }
            _ => {}
        }
        JobSpec {
            input,
            cancel_after,
            length,
        }
    }
}

/// Submits a job to a random node; its id, or None after an error.
async fn submit(ctx: &Ctx, rng: &mut StdRng, spec: &JobSpec) -> Option<String> {
    let body = json!({"kind": "demo", "input": spec.input, "max_attempts": ctx.plan.max_attempts});
    for _ in 0..20 {
        let base = ctx.pick_base(rng);
        let resp = match ctx
            .http
            .post(format!("{base}/v1/jobs"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                ctx.error(format!("POST {base}/v1/jobs failed: {e}"));
                return None;
            }
        };
        match resp.status().as_u16() {
            202 => {
                let job: Value = resp.json().await.ok()?;
                return job["id"].as_str().map(str::to_owned);
            }
            429 => tokio::time::sleep(Duration::from_millis(100)).await,
            status => {
                let text = resp.text().await.unwrap_or_default();
                ctx.error(format!("POST {base}/v1/jobs answered {status}: {text}"));
                return None;
            }
        }
    }
    ctx.error("POST /v1/jobs: still rate limited after 20 tries".to_owned());
    None
}

async fn cancel(ctx: Arc<Ctx>, id: String, after: Duration, base: String) {
    tokio::time::sleep(after).await;
    match ctx
        .http
        .post(format!("{base}/v1/jobs/{id}/cancel"))
        .send()
        .await
    {
        // 409: it ended first.
        Ok(r) if r.status() == 202 || r.status() == 409 => {}
        Ok(r) => ctx.error(format!("cancel {id} answered {}", r.status())),
        Err(e) => ctx.error(format!("cancel {id} failed: {e}")),
    }
}

/// A client's own random numbers: from the run's seed and its number, so a
/// seed repeats every client's choices (the timing of a run is the
/// machine's).
fn client_rng(seed: u64, n: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Runs `plan` against the herald nodes at `bases` (all serving the API) and
/// checks every client against `log`.
pub async fn run(bases: Vec<String>, plan: Plan, log: &impl EventLog) -> Figures {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::new(),
        bases,
        plan: plan.clone(),
        connections: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        cuts_by_bytes: AtomicU64::new(0),
        cuts_by_time: AtomicU64::new(0),
        cuts_mid_event: AtomicU64::new(0),
        nothing_left: AtomicU64::new(0),
        resumes: Default::default(),
        total_jobs: AtomicUsize::new(usize::MAX),
        errors: Mutex::new(Vec::new()),
    });
    let mut clients = Vec::new();
    let mut n = 0u64;

    // The feed's clients open first, each past its opening cursor before the
    // first job exists: everything after it is theirs to get.
    for _ in 0..plan.feed_clients {
        let (tx, rx) = oneshot::channel();
        n += 1;
        let client = Client::new(ctx.clone(), Watch::Feed, client_rng(plan.seed, n), Some(tx));
        clients.push(tokio::spawn(client.follow()));
        if rx.await.is_err() {
            ctx.error("a feed client never got its opening cursor".to_owned());
        }
    }

    let slots = Arc::new(Semaphore::new(plan.in_flight));
    let mut jobs = Vec::new();
    let mut cancels = Vec::new();
    while jobs.len() < plan.jobs || ctx.reconnects.load(Ordering::Relaxed) < plan.min_reconnects {
        // A slot is free again once every client of a job is done with it.
        let slot: Arc<OwnedSemaphorePermit> =
            Arc::new(slots.clone().acquire_owned().await.unwrap());
        let spec = JobSpec::random(&mut rng, &plan);
        let Some(id) = submit(&ctx, &mut rng, &spec).await else {
            break;
        };
        jobs.push(id.clone());
        if let Some(after) = spec.cancel_after {
            let base = ctx.pick_base(&mut rng).to_owned();
            cancels.push(tokio::spawn(cancel(ctx.clone(), id.clone(), after, base)));
        }
        for _ in 0..plan.job_clients {
            n += 1;
            let mut rng = client_rng(plan.seed, n);
            // From the submission to after the job's end: live, and late.
            let max = spec.length.as_millis() as u64 * 3 / 2;
            let delay = Duration::from_millis(rng.random_range(0..=max));
            let client = Client::new(ctx.clone(), Watch::Job(id.clone()), rng, None);
            let slot = slot.clone();
            clients.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let followed = client.follow().await;
                drop(slot);
                followed
            }));
        }
    }
    ctx.total_jobs.store(jobs.len(), Ordering::SeqCst);

    for c in cancels {
        let _ = c.await;
    }
    let mut followed = Vec::new();
    for c in clients {
        match c.await {
            Ok(f) => followed.push(f),
            Err(e) => ctx.error(format!("a client panicked: {e}")),
        }
    }
    let mut figures = check(&ctx, &jobs, &followed, log).await;
    figures.seed = plan.seed;
    figures.feed_clients = plan.feed_clients;
    figures.job_clients = followed.len() - plan.feed_clients.min(followed.len());
    figures.connections = ctx.connections.load(Ordering::Relaxed);
    figures.reconnects = ctx.reconnects.load(Ordering::Relaxed);
    figures.cuts_by_bytes = ctx.cuts_by_bytes.load(Ordering::Relaxed);
    figures.cuts_by_time = ctx.cuts_by_time.load(Ordering::Relaxed);
    figures.cuts_mid_event = ctx.cuts_mid_event.load(Ordering::Relaxed);
    figures.nothing_left = ctx.nothing_left.load(Ordering::Relaxed);
    for r in RESUMES {
        figures
            .resumes
            .insert(r.name(), ctx.resumes[r as usize].load(Ordering::Relaxed));
    }
    figures.errors = std::mem::take(&mut *ctx.errors.lock().unwrap());
    figures.duration = started.elapsed();
    figures
}

/// Counts, for one client, how `seen` (keys in the order they came) differs
/// from `expected` (the log's keys, in order): keys never seen, keys seen
/// again, keys that came after a later one, keys the log does not have.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    lost: u64,
    duplicated: u64,
    reordered: u64,
    unknown: u64,
}

fn tally<K: std::hash::Hash + Eq + Clone>(expected: &[K], seen: &[K]) -> Tally {
    let position: HashMap<&K, usize> = expected.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut t = Tally::default();
    let mut got = HashSet::new();
    let mut furthest = None;
    for k in seen {
        if !got.insert(k) {
            t.duplicated += 1;
            continue;
        }
        match position.get(k) {
            None => t.unknown += 1,
            Some(&p) if furthest.is_some_and(|f| p < f) => t.reordered += 1,
            Some(&p) => furthest = Some(p),
        }
    }
    t.lost = expected.iter().filter(|k| !got.contains(k)).count() as u64;
    t
}

/// A feed event's data without the two members the feed adds.
fn job_event_data(mut data: Value) -> Value {
    if let Some(o) = data.as_object_mut() {
        o.remove("job_id");
        o.remove("seq");
    }
    data
}

/// One entry of a JSON page of the feed.
#[derive(serde::Deserialize)]
struct FeedEntry {
    id: String,
    event: String,
    data: Value,
}

/// The feed's log from `after` to its end, as its JSON pages serve it.
async fn feed_log(ctx: &Ctx, after: &str) -> Result<Vec<FeedEntry>, String> {
    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<FeedEntry>,
        last_event_id: String,
    }
    let mut out = Vec::new();
    let mut after = after.to_owned();
    loop {
        let url = format!("{}/v1/events?after={after}&limit=1000", ctx.bases[0]);
        let page: Page = ctx
            .http
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if page.events.is_empty() {
            return Ok(out);
        }
        after = page.last_event_id;
        out.extend(page.events);
    }
}

async fn check(ctx: &Ctx, jobs: &[String], followed: &[Followed], log: &impl EventLog) -> Figures {
    let mut f = Figures {
        jobs: jobs.len(),
        ..Figures::default()
    };
    // Every job has ended, by its snapshot and by its log.
    let mut stored: HashMap<&str, Vec<Stored>> = HashMap::new();
    for id in jobs {
        let events = log.events(id).await;
        let snapshot: Option<Value> = async {
            let url = format!("{}/v1/jobs/{id}", ctx.bases[0]);
            ctx.http.get(url).send().await.ok()?.json().await.ok()
        }
        .await;
        let status = snapshot
            .as_ref()
            .and_then(|s| s["status"].as_str())
            .unwrap_or("unknown")
            .to_owned();
        let last_is_terminal = events.last().is_some_and(|e| terminal(&e.event));
        if status == "failed" {
            let code = snapshot.as_ref().and_then(|s| s["error"]["code"].as_str());
            *f.failures
                .entry(code.unwrap_or("none").to_owned())
                .or_default() += 1;
        }
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") && last_is_terminal {
            *f.ended.entry(status).or_default() += 1;
        } else {
            f.not_ended.push(format!("{id}: {status}"));
        }
        f.worker_lost_retries += events
            .iter()
            .filter(|e| e.event == "status" && e.data["error"]["code"] == "worker_lost")
            .count();
        stored.insert(id.as_str(), events);
    }

    let mut feed_logs: HashMap<&str, Vec<FeedEntry>> = HashMap::new();
    for client in followed {
        f.events_checked += client.seen.len() as u64;
        let t = match &client.watch {
            Watch::Job(id) => {
                let log = &stored[id.as_str()];
                let seen: Vec<Option<i64>> =
                    client.seen.iter().map(|e| e.id.parse().ok()).collect();
                let expected: Vec<Option<i64>> = log.iter().map(|e| Some(e.seq)).collect();
                let mut t = tally(&expected, &seen);
                let by_seq: HashMap<i64, &Stored> = log.iter().map(|e| (e.seq, e)).collect();
                for e in &client.seen {
                    let Some(s) = e.id.parse().ok().and_then(|seq: i64| by_seq.get(&seq)) else {
                        continue; // counted by `tally`
                    };
                    let data: Option<Value> = serde_json::from_str(&e.data).ok();
                    if s.event != e.event || Some(&s.data) != data.as_ref() {
                        t.unknown += 1;
                    }
                }
                t
            }
            Watch::Feed => {
                let Some(start) = client.start.as_deref() else {
                    ctx.error("a feed client has no opening cursor".to_owned());
                    continue;
                };
                if !feed_logs.contains_key(start) {
                    match feed_log(ctx, start).await {
                        Ok(l) => {
                            check_feed_log(ctx, &l, &stored);
                            feed_logs.insert(start, l);
                        }
                        Err(e) => {
                            ctx.error(format!("reading the feed's log: {e}"));
                            continue;
                        }
                    }
                }
                let log = &feed_logs[start];
                let expected: Vec<&str> = log.iter().map(|e| e.id.as_str()).collect();
                let seen: Vec<&str> = client.seen.iter().map(|e| e.id.as_str()).collect();
                let mut t = tally(&expected, &seen);
                let by_cursor: HashMap<&str, &FeedEntry> =
                    log.iter().map(|e| (e.id.as_str(), e)).collect();
                for e in &client.seen {
                    let Some(l) = by_cursor.get(e.id.as_str()) else {
                        continue; // counted by `tally`
                    };
                    let data: Option<Value> = serde_json::from_str(&e.data).ok();
                    if l.event != e.event || Some(&l.data) != data.as_ref() {
                        t.unknown += 1;
                    }
                }
                t
            }
        };
        f.lost += t.lost;
        f.duplicated += t.duplicated;
        f.reordered += t.reordered;
        f.mismatched += t.unknown;
    }
    f
}

/// The feed's own log holds each stored event of every job once, in each
/// job's order, with the stored name and data.
fn check_feed_log(ctx: &Ctx, log: &[FeedEntry], stored: &HashMap<&str, Vec<Stored>>) {
    let mut per_job: HashMap<String, Vec<Stored>> = HashMap::new();
    for e in log {
        let job = e.data["job_id"].as_str().unwrap_or_default().to_owned();
        per_job.entry(job).or_default().push(Stored {
            seq: e.data["seq"].as_i64().unwrap_or(-1),
            event: e.event.clone(),
            data: job_event_data(e.data.clone()),
        });
    }
    for (job, events) in stored {
        let fed = per_job.remove(*job).unwrap_or_default();
        if &fed != events {
            ctx.error(format!(
                "the feed's log of job {job} differs from the stored one: seqs {:?}, stored {:?}",
                fed.iter().map(|e| e.seq).collect::<Vec<_>>(),
                events.iter().map(|e| e.seq).collect::<Vec<_>>()
            ));
        }
    }
    for job in per_job.keys() {
        ctx.error(format!(
            "the feed carries job {job}, which no client submitted"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` delivered in pieces ending at each of `ends`.
    fn parse(text: &str, ends: &[usize]) -> (Vec<SseEvent>, SseParser) {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &end in ends.iter().chain([text.len()].iter()) {
            p.feed(&text.as_bytes()[from..end], &mut out);
            from = end;
        }
        (out, p)
    }

    const STREAM: &str = "retry: 2000\n\nid: 1\nevent: status\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 2\nevent: progress\ndata: {\"b\":2}\n\n";

    #[test]
    fn events_are_the_same_whatever_the_chunk_boundaries() {
        let (whole, p) = parse(STREAM, &[]);
        let ids: Vec<&str> = whole.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(whole[1].event, "progress");
        assert_eq!(whole[1].data, "{\"b\":2}");
        assert_eq!(p.last_id.as_deref(), Some("2"));
        for a in 0..STREAM.len() {
            for b in a..STREAM.len() {
                let (pieces, _) = parse(STREAM, &[a, b]);
                let ids: Vec<&str> = pieces.iter().map(|e| e.id.as_str()).collect();
                assert_eq!(ids, ["1", "2"], "split at {a} and {b}");
            }
        }
    }

    #[test]
    fn a_cut_drops_the_unfinished_event_and_keeps_the_last_id() {
        for cut in 0..STREAM.len() {
            let (mut out, mut p) = parse(&STREAM[..cut], &[]);
            let mid = p.inside_event();
            p.cut();
            let want = out.last().map(|e| e.id.clone());
            assert_eq!(p.last_id, want, "cut at {cut}");
            // A complete event is never "inside" at a cut.
            let at_boundary = STREAM[..cut].ends_with("\n\n") || cut == 0;
            assert!(!(mid && at_boundary), "cut at {cut}");
            // The next connection starts clean.
            p.feed(b"id: 9\ndata: {}\n\n", &mut out);
            assert_eq!(out.last().unwrap().id, "9");
            assert_eq!(out.last().unwrap().event, "message");
        }
        // Its id line arrived, its blank line did not: not the last id yet.
        let (_, mut p) = parse("id: 1\ndata: x\n\nid: 2\ndata: y\n", &[]);
        assert!(p.inside_event());
        p.cut();
        assert_eq!(p.last_id.as_deref(), Some("1"));
    }

    #[test]
    fn an_id_without_data_sets_the_last_id_and_dispatches_nothing() {
        let (out, p) = parse("retry: 2000\n\nid: 12-34\n\n", &[]);
        assert!(out.is_empty());
        assert_eq!(p.last_id.as_deref(), Some("12-34"));
        let (out, p) = parse("retry: 2000\r\n\r\nid: 5\r\ndata: z\r\n\r\n", &[14]);
        assert_eq!(out.len(), 1);
        assert_eq!(p.last_id.as_deref(), Some("5"));
    }

    #[test]
    fn the_tally_counts_lost_duplicated_reordered_and_unknown() {
        assert_eq!(tally(&[1, 2, 3], &[1, 2, 3]), Tally::default());
        let t = tally(&[1, 2, 3, 4, 5], &[1, 3, 2, 3, 9]);
        assert_eq!(
            t,
            Tally {
                lost: 2,
                duplicated: 1,
                reordered: 1,
                unknown: 1
            }
        );
    }
}
