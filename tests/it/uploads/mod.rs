//! Upload and import: `POST /v1/uploads` → an `import` job that sends the
//! file's rows to a local downstream which records every batch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use poem::web::{Data, Json};
use poem::{handler, http::StatusCode, EndpointExt, Response, Route, Server};
use serde_json::Value;

use herald::domain::JobId;

use crate::common::Status::{Cancelled, Succeeded};
use crate::common::{Job, TestApp, WAIT};

/// What the downstream should do with a batch that holds a given row `id`.
#[derive(Default)]
pub(super) struct Script {
    /// Answer 503 this many times to a batch holding the id.
    unavailable: BTreeMap<String, usize>,
    /// Answer 400 to a batch holding the id.
    refuse: Vec<String>,
}

#[derive(Default)]
pub(super) struct Recorder {
    /// Every batch acknowledged with 2xx, in arrival order, with its key.
    accepted: Mutex<Vec<Vec<Value>>>,
    keys: Mutex<Vec<String>>,
    /// Every request, whatever the answer.
    requests: Mutex<usize>,
    /// The `Idempotency-Key` of every request, as it arrives.
    arrived: Mutex<Vec<String>>,
    script: Mutex<Script>,
    /// How long each answer takes.
    delay: Mutex<std::time::Duration>,
}

#[handler]
pub(super) async fn rows(
    req: &poem::Request,
    Json(batch): Json<Vec<Value>>,
    rec: Data<&Arc<Recorder>>,
) -> Response {
    *rec.requests.lock().unwrap() += 1;
    let key = req.header("idempotency-key").unwrap_or_default().to_owned();
    rec.arrived.lock().unwrap().push(key.clone());
    let delay = *rec.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let ids: Vec<String> = batch
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| r["id"].to_string())
        })
        .collect();
    {
        let mut script = rec.script.lock().unwrap();
        if ids.iter().any(|id| script.refuse.contains(id)) {
            return Response::builder().status(StatusCode::BAD_REQUEST).finish();
        }
        for id in &ids {
            if let Some(left) = script.unavailable.get_mut(id) {
                if *left > 0 {
                    *left -= 1;
                    return Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .finish();
                }
            }
        }
    }
    rec.accepted.lock().unwrap().push(batch);
    rec.keys.lock().unwrap().push(key);
    Response::builder().status(StatusCode::OK).finish()
}

pub(super) async fn recorder() -> (String, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let app = Route::new().at("/rows", poem::post(rows)).data(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    (base, rec)
}

/// A CSV of `n` rows (`id,name,amount`) with the listed rows malformed
/// (an extra field); returns the text and the malformed rows' line numbers.
pub(super) fn csv(n: usize, malformed: &[usize]) -> (String, Vec<u64>) {
    let mut s = String::from("id,name,amount\n");
    let mut lines = Vec::new();
    for i in 1..=n {
        if malformed.contains(&i) {
            s.push_str(&format!("{i},broken,1,extra\n"));
            lines.push(i as u64 + 1);
        } else {
            s.push_str(&format!("{i},name {i},{}\n", i * 3));
        }
    }
    (s, lines)
}

pub(super) async fn app_with(base: &str) -> TestApp {
    let downstream = format!("sink={base}");
    TestApp::spawn_with(move |c| {
        c.downstreams = vec![downstream];
        c.max_upload_bytes = 8 * 1024 * 1024;
    })
    .await
}

pub(super) async fn upload(
    app: &TestApp,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/uploads?{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Every accepted row's id, with how many times it arrived.
pub(super) fn arrivals(rec: &Recorder) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for batch in rec.accepted.lock().unwrap().iter() {
        for row in batch {
            *m.entry(row["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    m
}

/// The job's result; a failure names the job when it has none.
pub(super) fn result(job: &Job) -> &Value {
    job.result
        .as_ref()
        .unwrap_or_else(|| panic!("no result: {job:?}"))
}

/// The batches of job `id` that reached the downstream, answered or not.
pub(super) fn batches_sent(rec: &Recorder, id: JobId) -> usize {
    let prefix = format!("{id}:");
    let arrived = rec.arrived.lock().unwrap();
    arrived.iter().filter(|k| k.starts_with(&prefix)).count()
}

mod import;
mod storage;
