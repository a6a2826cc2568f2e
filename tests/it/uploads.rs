//! Upload and import: `POST /v1/uploads` → an `import` job that sends the
//! file's rows to a local downstream which records every batch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use poem::web::{Data, Json};
use poem::{handler, http::StatusCode, EndpointExt, Response, Route, Server};
use serde_json::{json, Value};

use herald::domain::JobId;

use crate::common::Status::{Cancelled, Succeeded};
use crate::common::{Job, TestApp, WAIT};

/// What the downstream should do with a batch that holds a given row `id`.
#[derive(Default)]
struct Script {
    /// Answer 503 this many times to a batch holding the id.
    unavailable: BTreeMap<String, usize>,
    /// Answer 400 to a batch holding the id.
    refuse: Vec<String>,
}

#[derive(Default)]
struct Recorder {
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
async fn rows(
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

async fn recorder() -> (String, Arc<Recorder>) {
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
fn csv(n: usize, malformed: &[usize]) -> (String, Vec<u64>) {
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

async fn app_with(base: &str) -> TestApp {
    let downstream = format!("sink={base}");
    TestApp::spawn_with(move |c| {
        c.downstreams = vec![downstream];
        c.max_upload_bytes = 8 * 1024 * 1024;
    })
    .await
}

async fn upload(
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
fn arrivals(rec: &Recorder) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for batch in rec.accepted.lock().unwrap().iter() {
        for row in batch {
            *m.entry(row["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    m
}

/// The job's result; a failure names the job when it has none.
fn result(job: &Job) -> &Value {
    job.result
        .as_ref()
        .unwrap_or_else(|| panic!("no result: {job:?}"))
}

/// The batches of job `id` that reached the downstream, answered or not.
fn batches_sent(rec: &Recorder, id: JobId) -> usize {
    let prefix = format!("{id}:");
    let arrived = rec.arrived.lock().unwrap();
    arrived.iter().filter(|k| k.starts_with(&prefix)).count()
}

async fn a_large_csv_arrives_exactly_once_in_bounded_batches_and_names_its_bad_lines() {
    let (base, rec) = recorder().await;
    let app = app_with(&base).await;
    let (text, bad_lines) = csv(50_000, &[10, 25_000, 49_999]);
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=csv&batch_size=700",
        "text/csv",
        text.into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    assert_eq!(job.kind, "import");
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.status, Succeeded, "{done:?}");
    let result = result(&done);
    assert_eq!(result["rows_ok"], 49_997);
    assert_eq!(result["rows_failed"], 3);
    let lines: Vec<u64> = result["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, bad_lines);
    let got = arrivals(&rec);
    assert_eq!(got.len(), 49_997);
    assert!(got.values().all(|n| *n == 1), "every row exactly once");
    let batches = rec.accepted.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| b.len() <= 700),
        "no batch over batch_size"
    );
    assert_eq!(result["batches"], batches.len());
    // Rows arrive as objects keyed by the header.
    assert_eq!(
        batches[0][0],
        json!({"id": "1", "name": "name 1", "amount": "3"})
    );
    // The progress events carry the import's counts and reach 100 %.
    let events = app.stored_events(done.id).await;
    let last_progress = events.iter().rev().find(|e| e.event == "progress").unwrap();
    assert_eq!(last_progress.stage(), Some("import"));
    assert_eq!(last_progress.percent(), Some(100.0));
    assert_eq!(last_progress.progress_data()["rows_ok"], 49_997);
    app.stop().await;
}

async fn ndjson_with_bad_lines_and_a_multipart_form_both_work() {
    let (base, rec) = recorder().await;
    let app = app_with(&base).await;
    let mut text = String::new();
    for i in 1..=50_000 {
        match i {
            100 => text.push_str("{not json\n"),
            25_000 => text.push_str("[1, 2]\n"),
            49_999 => text.push_str("\"just a string\"\n"),
            _ => text.push_str(&format!("{{\"id\":\"{i}\",\"n\":{i}}}\n")),
        }
    }
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=ndjson&batch_size=600",
        "application/x-ndjson",
        text.clone().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    let done = app.wait_terminal(job.id).await;
    assert_eq!(result(&done)["rows_ok"], 49_997, "{done:?}");
    let lines: Vec<u64> = result(&done)["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![100, 25_000, 49_999]);
    assert_eq!(arrivals(&rec).len(), 49_997);
    assert!(arrivals(&rec).values().all(|n| *n == 1));
    assert!(rec.accepted.lock().unwrap().iter().all(|b| b.len() <= 600));

    // The same file from a browser form.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(text.into_bytes()).file_name("rows.ndjson"),
    );
    let resp = app
        .post("/v1/uploads?downstream=sink&path=/rows&format=ndjson")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    let done = app.wait_terminal(job.id).await;
    assert_eq!(result(&done)["rows_ok"], 49_997, "{done:?}");
    assert!(
        arrivals(&rec).values().all(|n| *n == 2),
        "each row once per upload"
    );
    app.stop().await;
}

async fn a_503_twice_is_retried_and_a_400_fails_exactly_that_batch() {
    let (base, rec) = recorder().await;
    {
        let mut s = rec.script.lock().unwrap();
        s.unavailable.insert("150".into(), 2);
        s.refuse.push("420".into());
    }
    let app = app_with(&base).await;
    let (text, _) = csv(1_000, &[]);
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=csv&batch_size=100",
        "text/csv",
        text.into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let job: Job = resp.json().await.unwrap();
    let done = app.wait_terminal(job.id).await;
    assert_eq!(done.status, Succeeded, "{done:?}");
    // Rows 401..=500 were in the refused batch; every other row arrived once.
    let result = result(&done);
    assert_eq!(result["rows_ok"], 900);
    assert_eq!(result["rows_failed"], 100);
    let failed_lines: Vec<u64> = result["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(failed_lines, (402..=501).collect::<Vec<u64>>());
    let got = arrivals(&rec);
    assert_eq!(got.len(), 900);
    assert!(got.values().all(|n| *n == 1));
    assert!(
        got.contains_key("150"),
        "the batch answered 503 twice got through"
    );
    assert_eq!(
        *rec.requests.lock().unwrap(),
        10 + 2,
        "10 batches, 2 retries"
    );
    app.stop().await;
}

async fn bad_parameters_and_an_oversized_body_store_nothing() {
    let (base, _rec) = recorder().await;
    let app = app_with(&base).await;
    let cases = [
        ("downstream=nope&path=/rows&format=csv", "/downstream"),
        ("downstream=sink&path=/rows&format=xml", "/format"),
        (
            "downstream=sink&path=//evil.example/rows&format=csv",
            "/downstream",
        ),
        (
            "downstream=sink&path=/rows&format=csv&batch_size=0",
            "/batch_size",
        ),
    ];
    for (query, pointer) in cases {
        let resp = upload(&app, query, "text/csv", b"id\n1\n".to_vec()).await;
        assert_eq!(resp.status(), 422, "{query}");
        let problem: Value = resp.json().await.unwrap();
        assert!(
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["pointer"] == pointer),
            "{query}: {problem}"
        );
    }
    let big = vec![b'x'; 8 * 1024 * 1024 + 1];
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=csv",
        "text/csv",
        big,
    )
    .await;
    assert_eq!(resp.status(), 413);
    // Nothing was kept: no job, no stored chunk.
    let jobs = app.list("").await;
    assert_eq!(jobs.items.len(), 0, "{jobs:?}");
    assert_eq!(chunks_stored(&app).await, 0);
    app.stop().await;
}

/// Stored upload chunks, counted in the test's database.
async fn chunks_stored(app: &TestApp) -> i64 {
    let url = app.db.url().to_owned();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM herald_upload_chunks")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM herald_upload_chunks")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }
}

async fn cancel_stops_the_batches() {
    let (base, rec) = recorder().await;
    *rec.delay.lock().unwrap() = std::time::Duration::from_millis(50);
    let app = app_with(&base).await;
    let (text, _) = csv(5_000, &[]);
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=csv&batch_size=50",
        "text/csv",
        text.into_bytes(),
    )
    .await;
    let id = resp.json::<Job>().await.unwrap().id;
    let deadline = std::time::Instant::now() + WAIT;
    while rec.accepted.lock().unwrap().len() < 5 {
        assert!(std::time::Instant::now() < deadline, "no batches arrived");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(app.cancel(id).await.status(), 202);
    let done = app.wait_terminal(id).await;
    assert_eq!(done.status, Cancelled, "{done:?}");
    // herald records `cancelled` once the import's handler has stopped.
    let at_cancel = batches_sent(&rec, id);
    // Another import then runs to its end on the same herald and downstream,
    // ten batches of at least 50 ms each; meanwhile the cancelled one sent
    // nothing more.
    let (text, _) = csv(10, &[]);
    let next = upload(
        &app,
        "downstream=sink&path=/rows&format=csv&batch_size=1",
        "text/csv",
        text.into_bytes(),
    )
    .await
    .json::<Job>()
    .await
    .unwrap()
    .id;
    assert_eq!(app.wait_terminal(next).await.status, Succeeded);
    assert_eq!(batches_sent(&rec, next), 10);
    let later = batches_sent(&rec, id);
    assert_eq!(later, at_cancel, "no batch after the cancel");
    assert!(
        later < 100,
        "stopped long before the end: {later} of 100 batches"
    );
    app.stop().await;
}

async fn the_stored_file_is_deleted_with_its_job() {
    let (base, _rec) = recorder().await;
    let downstream = format!("sink={base}");
    let app = TestApp::spawn_with(move |c| {
        c.downstreams = vec![downstream];
        // Finished jobs go at once, swept every second.
        c.retention_hours = 0.0;
        c.retention_sweep_secs = 1;
    })
    .await;
    let (text, _) = csv(100, &[]);
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=csv",
        "text/csv",
        text.into_bytes(),
    )
    .await;
    let id = resp.json::<Job>().await.unwrap().id;
    assert!(chunks_stored(&app).await > 0, "the file is stored");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let resp = app.get(&format!("/v1/jobs/{id}")).send().await.unwrap();
        if resp.status() == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job was never purged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(chunks_stored(&app).await, 0, "its file went with it");
    app.stop().await;
}

async fn chunks_of_an_upload_that_never_got_its_job_are_swept() {
    use herald::domain::Timestamp;
    let (base, _rec) = recorder().await;
    let app = app_with(&base).await;
    let (text, _) = csv(10, &[]);
    let resp = upload(
        &app,
        "downstream=sink&path=/rows&format=csv",
        "text/csv",
        text.into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let kept = chunks_stored(&app).await;
    // A process that stopped mid-upload left this chunk without a job.
    let store = app.state.store.clone();
    store
        .put_upload_chunk(JobId::new(), 0, b"id\n1\n")
        .await
        .unwrap();
    assert_eq!(chunks_stored(&app).await, kept + 1);
    // Not yet old enough: kept; older than the cut-off: only the orphan goes.
    store.purge_orphan_uploads(Timestamp(0)).await.unwrap();
    assert_eq!(chunks_stored(&app).await, kept + 1);
    let later = Timestamp(Timestamp::now().0 + 1_000_000);
    store.purge_orphan_uploads(later).await.unwrap();
    assert_eq!(chunks_stored(&app).await, kept, "the job's own file stays");
    app.stop().await;
}

backend_tests!(
    chunks_of_an_upload_that_never_got_its_job_are_swept,
    the_stored_file_is_deleted_with_its_job,
    cancel_stops_the_batches,
    a_large_csv_arrives_exactly_once_in_bounded_batches_and_names_its_bad_lines,
    ndjson_with_bad_lines_and_a_multipart_form_both_work,
    a_503_twice_is_retried_and_a_400_fails_exactly_that_batch,
    bad_parameters_and_an_oversized_body_store_nothing,
);

/// kill -9 in the middle of an import, then a restart on the same database:
/// the next attempt resumes after the last recorded batch. Every row arrives;
/// a batch repeats only if the kill fell between the downstream's answer and
/// the checkpoint, and then with the same `Idempotency-Key`, so a downstream
/// that honours the key sees every row exactly once.
#[tokio::test]
async fn kill_9_during_an_import_then_restart_delivers_every_row_once() {
    use crate::common::HeraldProcess;
    let (base, rec) = recorder().await;
    *rec.delay.lock().unwrap() = std::time::Duration::from_millis(20);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let downstreams = format!("sink={base}");
    let env = [
        ("HERALD_DOWNSTREAMS", downstreams.as_str()),
        ("HERALD_RETRY_BACKOFF_MS", "10"),
    ];
    let herald = HeraldProcess::start(&db, "info", &env);
    let (text, _) = csv(20_000, &[]);
    let job: Job = herald
        .api()
        .post("/v1/uploads?downstream=sink&path=/rows&format=csv&batch_size=200")
        .header("content-type", "text/csv")
        .body(text)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while rec.accepted.lock().unwrap().len() < 20 {
        assert!(std::time::Instant::now() < deadline, "no batches arrived");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    herald.kill();
    let before_restart = rec.accepted.lock().unwrap().len();
    assert!(
        before_restart < 100,
        "killed mid-import ({before_restart} of 100 batches)"
    );

    let herald = HeraldProcess::start(&db, "info", &env);
    let done = herald.api().wait_terminal(job.id).await;
    assert_eq!(done.status, Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2, "the restart ran the next attempt");
    assert_eq!(result(&done)["rows_ok"], 20_000, "{done:?}");
    let keys = rec.keys.lock().unwrap().clone();
    let batches = rec.accepted.lock().unwrap().clone();
    let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut repeats = 0;
    for (k, b) in keys.into_iter().zip(batches) {
        match by_key.get(&k) {
            Some(first) => {
                assert_eq!(first, &b, "a repeated key carries the same rows");
                repeats += 1;
            }
            None => {
                by_key.insert(k, b);
            }
        }
    }
    assert!(
        repeats <= 1,
        "at most the one batch in flight at the kill repeats: {repeats}"
    );
    let mut seen = BTreeMap::new();
    for row in by_key.values().flatten() {
        *seen
            .entry(row["id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 20_000, "every row arrived");
    assert!(seen.values().all(|n| *n == 1), "no row twice under its key");
}
