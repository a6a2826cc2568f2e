//! The import itself: rows arrive once, in bounded batches, bad lines named,
//! retries and failed batches.

use serde_json::json;

use super::*;

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

backend_tests!(
    a_large_csv_arrives_exactly_once_in_bounded_batches_and_names_its_bad_lines,
    ndjson_with_bad_lines_and_a_multipart_form_both_work,
    a_503_twice_is_retried_and_a_400_fails_exactly_that_batch,
);
