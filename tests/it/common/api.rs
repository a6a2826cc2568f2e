//! herald's HTTP API as a client sees it: typed jobs and events, and the
//! requests the tests make, in one place.

use std::fmt::Display;
use std::str::FromStr;
use std::time::{Duration, Instant};

use herald::domain::JobId;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::WAIT;

/// A job's status on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// A job as `GET /v1/jobs/{id}`, a submission and a cancel answer it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Job {
    #[serde(deserialize_with = "parsed")]
    pub id: JobId,
    pub kind: String,
    pub status: Status,
    pub input: Value,
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    pub error: Option<JobError>,
    pub attempt: i64,
    pub max_attempts: i64,
    pub timeout_secs: Option<i64>,
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_event_id: i64,
    /// How many items the job has appended.
    pub items_count: i64,
    /// The remote worker that claimed it last.
    #[serde(default)]
    pub worker: Option<String>,
    pub links: Links,
}

impl Job {
    pub fn error_code(&self) -> Option<&str> {
        self.error.as_ref().map(|e| e.code.as_str())
    }

    /// The `step` a `demo` or `steps` job last reported (0 before the first).
    pub fn step(&self) -> i64 {
        self.progress
            .as_ref()
            .and_then(|p| p.data["step"].as_i64())
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Progress {
    pub percent: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    /// The kind's own figures; null when it reported none.
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub events: String,
}

/// A page of `GET /v1/jobs`.
#[derive(Debug, Clone, Deserialize)]
pub struct JobList {
    pub items: Vec<Job>,
    pub next_cursor: Option<String>,
}

impl JobList {
    pub fn ids(&self) -> Vec<JobId> {
        self.items.iter().map(|j| j.id).collect()
    }
}

/// A stream or feed token (`POST …/stream-token`).
#[derive(Debug, Clone, Deserialize)]
pub struct StreamToken {
    pub token: String,
    /// The path that opens the stream with it (`…?token=`).
    pub events_url: String,
    pub expires_at: String,
}

/// Parses a string field with the type's `FromStr` (a job id).
fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// One event of a job: from its stream (`id:` is the seq) or from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    /// `status`, `progress`, `result`, `failed` or `cancelled`.
    pub event: String,
    pub data: Value,
}

impl Event {
    /// The status a `status` event announces.
    pub fn status(&self) -> Option<Status> {
        if self.event != "status" {
            return None;
        }
        serde_json::from_value(self.data["status"].clone()).ok()
    }

    pub fn attempt(&self) -> Option<i64> {
        self.data["attempt"].as_i64()
    }

    /// The error code a retry's `status` event or a `failed` event carries.
    pub fn error_code(&self) -> Option<&str> {
        self.data["error"]["code"].as_str()
    }

    /// A `result` event's result.
    pub fn result(&self) -> Option<&Value> {
        self.data.get("result")
    }

    pub fn stage(&self) -> Option<&str> {
        self.data["stage"].as_str()
    }

    pub fn percent(&self) -> Option<f64> {
        self.data["percent"].as_f64()
    }

    pub fn message(&self) -> Option<&str> {
        self.data["message"].as_str()
    }

    /// An `item` event's item.
    pub fn item(&self) -> Option<&Value> {
        (self.event == "item").then(|| &self.data["item"])
    }

    /// A `progress` event's kind-specific `data`.
    pub fn progress_data(&self) -> &Value {
        &self.data["data"]
    }
}

/// The items among `events`, in order, with their indexes.
pub fn items(events: &[Event]) -> Vec<(i64, Value)> {
    events
        .iter()
        .filter_map(|e| Some((e.data["index"].as_i64()?, e.item()?.clone())))
        .collect()
}

/// The seqs, in order.
pub fn seqs(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

/// The event names, in order.
pub fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

/// The (status, attempt) of each `status` event.
pub fn statuses(events: &[Event]) -> Vec<(Status, i64)> {
    events
        .iter()
        .filter_map(|e| Some((e.status()?, e.attempt().expect("a status event's attempt"))))
        .collect()
}

/// Asserts the seqs are exactly 1, 2, 3 … n.
pub fn assert_gapless(events: &[Event]) {
    let want: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs(events), want, "event ids must be 1..n without gaps");
}

/// Reads a job's SSE stream with a real parser until the server ends it.
pub async fn read_to_end(resp: reqwest::Response) -> Vec<Event> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    assert_eq!(resp.status(), 200, "stream opens");
    let mut events = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.next()).await {
            Ok(Some(Ok(ev))) => out.push(Event {
                seq: ev.id.parse().expect("numeric id"),
                event: ev.event,
                data: serde_json::from_str(&ev.data).expect("data is one line of JSON"),
            }),
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => return out,
            Err(_) => panic!("stream did not end within {WAIT:?}; got {out:?}"),
        }
    }
}

/// A client of one herald server, with a bearer token or without.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:port`
    pub base: String,
    bearer: Option<String>,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: base.into(),
            bearer: None,
        }
    }

    /// The same server, every request with `Authorization: Bearer {token}`
    /// (an API key or a JWT).
    pub fn with_bearer(&self, token: &str) -> Api {
        Api {
            bearer: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to `path`, with the bearer token if there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, self.url(path));
        match &self.bearer {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    /// GET `path` and parse the JSON answer, whatever its status.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path)
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// `POST /v1/jobs` with `body` as it is, for tests of the answer itself.
    pub async fn post_job(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/jobs")
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Submits a `kind` job with `input` and the defaults; expects 202.
    pub async fn submit(&self, kind: &str, input: Value) -> Job {
        self.submit_with(kind, input, json!({})).await
    }

    /// Submits a `kind` job with `input` and the request's other fields
    /// (`max_attempts`, `timeout_secs`, `idempotency_key`) from `options`;
    /// expects 202.
    pub async fn submit_with(&self, kind: &str, input: Value, options: Value) -> Job {
        let mut body = json!({"kind": kind, "input": input});
        for (k, v) in options.as_object().expect("options are an object") {
            body[k] = v.clone();
        }
        let resp = self.post_job(&body).await;
        assert_eq!(resp.status(), 202, "submit {body}");
        resp.json().await.expect("a job")
    }

    /// `GET /v1/jobs/{id}`; expects 200.
    pub async fn job(&self, id: impl Display) -> Job {
        let resp = self
            .get(&format!("/v1/jobs/{id}"))
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status(), 200, "GET job {id}");
        resp.json().await.expect("a job")
    }

    /// `GET /v1/jobs?{query}`; expects 200.
    pub async fn list(&self, query: &str) -> JobList {
        let resp = self
            .get(&format!("/v1/jobs?{query}"))
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status(), 200, "list ?{query}");
        resp.json().await.expect("a job list")
    }

    pub async fn cancel(&self, id: impl Display) -> reqwest::Response {
        self.post(&format!("/v1/jobs/{id}/cancel"))
            .send()
            .await
            .expect("request sent")
    }

    /// Polls the job until `pred` holds; fails after `WAIT`.
    pub async fn wait_for(&self, id: JobId, what: &str, pred: impl Fn(&Job) -> bool) -> Job {
        self.wait_within(WAIT, id, what, pred).await
    }

    pub async fn wait_status(&self, id: JobId, status: Status) -> Job {
        self.wait_for(id, status.as_str(), |j| j.status == status)
            .await
    }

    /// Polls the job until it has ended; an import of 50,000 rows on a debug
    /// build may take a while, so this waits three times `WAIT`.
    pub async fn wait_terminal(&self, id: JobId) -> Job {
        self.wait_within(WAIT * 3, id, "the job's end", |j| j.status.is_terminal())
            .await
    }

    async fn wait_within(
        &self,
        wait: Duration,
        id: JobId,
        what: &str,
        pred: impl Fn(&Job) -> bool,
    ) -> Job {
        let deadline = Instant::now() + wait;
        loop {
            let job = self.job(id).await;
            if pred(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST {path}` (`/v1/jobs/{id}/stream-token` or
    /// `/v1/events/stream-token`); expects 200.
    pub async fn stream_token(&self, path: &str) -> StreamToken {
        let resp = self.post(path).send().await.expect("request sent");
        assert_eq!(resp.status(), 200, "POST {path}");
        resp.json().await.expect("a stream token")
    }

    /// Polls `/readyz` until it answers `want`; its JSON answer.
    pub async fn wait_readyz(&self, want: u16) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let resp = self.get("/readyz").send().await.expect("request sent");
            if resp.status() == want {
                return resp.json().await.expect("a JSON answer");
            }
            assert!(Instant::now() < deadline, "/readyz never answered {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens a job's event stream; `last` goes in the Last-Event-ID header.
    pub async fn open_stream(&self, id: impl Display, last: Option<&str>) -> reqwest::Response {
        let mut req = self.get(&format!("/v1/jobs/{id}/events"));
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l);
        }
        req.send().await.expect("stream request sent")
    }

    /// A job's events from the first, read until the stream ends.
    pub async fn stream_events(&self, id: JobId) -> Vec<Event> {
        read_to_end(self.open_stream(id, None).await).await
    }
}

/// A problem+json answer with `status` and `code`, checked field by field.
pub async fn problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status(), status, "status for {code}");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], format!("/problems/{code}"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

/// The JSON pointers of a 422's field errors, in order (each with a detail).
pub fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
            e["pointer"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// [`pointers`] of an answer that must be a 422 `validation_failed`.
pub async fn invalid_pointers(resp: reqwest::Response) -> Vec<String> {
    pointers(&problem(resp, 422, "validation_failed").await)
}
