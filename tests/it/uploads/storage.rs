//! What an upload stores and what becomes of it: refused uploads store
//! nothing, a cancel stops the batches, files go with their jobs or are swept,
//! and a killed import resumes after a restart.

use super::*;

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
