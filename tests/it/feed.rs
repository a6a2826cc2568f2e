//! The multiplexed feed, `GET /v1/events`.

mod left_out;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald::config::AuthMode;
use herald::config::Secret;
use herald::domain::JobId;
use serde_json::{json, Value};

use crate::common::Status::{Running, Succeeded};
use crate::common::{postgres_url, Backend, TestApp, TestDb, WAIT};
use crate::downstream::FakeDownstream;

/// One feed event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct FeedEv {
    cursor: String,
    event: String,
    job: JobId,
    seq: i64,
    data: Value,
}

/// A feed connection read event by event.
struct Feed {
    events: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<reqwest::Error>,
                    >,
                > + Send,
        >,
    >,
}

impl Feed {
    async fn open(app: &TestApp, query: &str, cursor: Option<&str>) -> Feed {
        Self::open_with(&app.client, &app.url(&format!("/v1/events{query}")), cursor).await
    }

    async fn open_with(client: &reqwest::Client, url: &str, cursor: Option<&str>) -> Feed {
        use eventsource_stream::Eventsource;
        let mut req = client.get(url);
        if let Some(c) = cursor {
            req = req.header("Last-Event-ID", c);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Feed {
            events: Box::pin(resp.bytes_stream().eventsource()),
        }
    }

    /// The next event within `wait`, or None.
    async fn next_within(&mut self, wait: Duration) -> Option<FeedEv> {
        use futures::StreamExt;
        let ev = tokio::time::timeout(wait, self.events.next())
            .await
            .ok()??
            .expect("a well-formed event");
        let data: Value = serde_json::from_str(&ev.data).expect("data is one line of JSON");
        Some(FeedEv {
            cursor: ev.id,
            event: ev.event,
            job: data["job_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("job_id"),
            seq: data["seq"].as_i64().expect("seq"),
            data,
        })
    }

    async fn next(&mut self) -> FeedEv {
        self.next_within(WAIT).await.expect("a feed event in time")
    }
}

fn terminal(name: &str) -> bool {
    matches!(name, "result" | "failed" | "cancelled")
}

/// Reads until every job in `jobs` has sent its terminal event.
async fn read_until_done(feed: &mut Feed, jobs: &BTreeSet<JobId>) -> Vec<FeedEv> {
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    while &done != jobs {
        let ev = feed.next().await;
        if terminal(&ev.event) {
            done.insert(ev.job);
        }
        out.push(ev);
    }
    out
}

/// Per job: the seqs seen, in order.
fn seqs(events: &[FeedEv]) -> BTreeMap<JobId, Vec<i64>> {
    let mut m: BTreeMap<JobId, Vec<i64>> = BTreeMap::new();
    for e in events {
        m.entry(e.job).or_default().push(e.seq);
    }
    m
}

async fn one_connection_carries_every_job_and_resumes_without_loss() {
    let app = TestApp::spawn_with(|c| c.progress_min_interval_ms = 0).await;
    let mut feed = Feed::open(&app, "", None).await;
    let mut jobs = BTreeSet::new();
    for steps in [3, 5, 4] {
        let job = app
            .submit("demo", json!({"steps": steps, "step_ms": 20}))
            .await;
        jobs.insert(job.id);
    }
    let events = read_until_done(&mut feed, &jobs).await;
    // Every job's whole stream, in order: the same events as its own stream.
    for (job, seen) in seqs(&events) {
        let stored = app.stored_events(job).await;
        assert_eq!(seen, crate::common::seqs(&stored), "job {job}");
        for (e, s) in events.iter().filter(|e| e.job == job).zip(&stored) {
            assert_eq!(e.event, s.event);
            let mut own = s.data.clone();
            own["job_id"] = json!(job.to_string());
            own["seq"] = json!(s.seq);
            assert_eq!(e.data, own, "the job's event data plus job_id and seq");
        }
    }
    // Resume from every cursor: exactly what followed it, and after that
    // nothing but what comes next, a job submitted now.
    let mut resumed = Vec::new();
    for cut in [0, 1, events.len() / 2, events.len() - 2] {
        let mut again = Feed::open(&app, "", Some(&events[cut].cursor)).await;
        let mut rest = Vec::new();
        for _ in cut + 1..events.len() {
            rest.push(again.next().await);
        }
        assert_eq!(rest, events[cut + 1..].to_vec(), "resumed after #{cut}");
        resumed.push((cut, again));
    }
    let next = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    for (cut, mut again) in resumed {
        let ev = again.next().await;
        assert_eq!(
            (ev.job, ev.seq),
            (next, 1),
            "nothing more after the end (resumed after #{cut})"
        );
    }
    // The query parameter works like the header.
    let q = format!("?last_event_id={}", events[1].cursor);
    let mut by_query = Feed::open(&app, &q, None).await;
    assert_eq!(by_query.next().await, events[2]);
    app.stop().await;
}

async fn filters_select_jobs_by_id_kind_and_status() {
    let ds = FakeDownstream::start().await;
    let downstream = format!("local={}", ds.base);
    let app = TestApp::spawn_with(|c| {
        c.progress_min_interval_ms = 0;
        c.downstreams = vec![downstream];
    })
    .await;
    let slow = app
        .submit("demo", json!({"steps": 100, "step_ms": 50}))
        .await
        .id;
    app.wait_status(slow, Running).await;
    let mut by_status = Feed::open(&app, "?status=running", None).await;
    let other = app
        .submit("demo", json!({"steps": 10, "step_ms": 60}))
        .await
        .id;
    let mut by_job = Feed::open(&app, &format!("?job={other}"), None).await;
    let mut by_kind = Feed::open(&app, "?kind=aggregate", None).await;
    app.wait_status(other, Succeeded).await;
    app.cancel(slow).await;
    // status=running picked the job running when it opened, not the later one.
    loop {
        let ev = by_status.next().await;
        assert_eq!(ev.job, slow);
        if ev.event == "cancelled" {
            break;
        }
    }
    // job= is exactly that job (opened while it runs: from then on) to its
    // terminal event.
    let mut seen = Vec::new();
    loop {
        let ev = by_job.next().await;
        assert_eq!(ev.job, other);
        seen.push(ev.event.clone());
        if terminal(&ev.event) {
            break;
        }
    }
    assert_eq!(seen.last().unwrap(), "result");
    // kind=aggregate let none of the demo jobs' events through: the first it
    // carries is the first of an aggregate job submitted now.
    let aggregate = app
        .submit(
            "aggregate",
            json!({"sources": [{"name": "a", "downstream": "local", "path": "/slow/1"}]}),
        )
        .await
        .id;
    let ev = by_kind.next().await;
    assert_eq!(
        (ev.job, ev.seq),
        (aggregate, 1),
        "no demo job's event came through"
    );
    let bad = app
        .get("/v1/events")
        .header("Last-Event-ID", "not-a-cursor")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["code"], "bad_last_event_id");
    app.stop().await;
}

async fn a_feed_token_opens_the_feed_of_its_tenant_only() {
    const ACME: &str = "acme-key-0123456789abcdef";
    const GLOBEX: &str = "globex-key-0123456789abcdef";
    let app = TestApp::spawn_with(|c| {
        c.auth = AuthMode::ApiKeys;
        c.api_keys = vec![
            Secret(format!("acme:{ACME}")),
            Secret(format!("globex:{GLOBEX}")),
        ];
        c.stream_token_secret = Some(Secret("stream-secret-for-tests-0123".into()));
    })
    .await;
    let no_key = app.get("/v1/events").send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let acme = app.with_bearer(ACME);
    let token = acme.stream_token("/v1/events/stream-token").await;
    let events_url = &token.events_url;
    assert!(events_url.starts_with("/v1/events?token="), "{events_url}");
    let mut feed = Feed::open_with(&app.client, &app.url(events_url), None).await;
    // Another tenant's job stays out of acme's feed; acme's own comes in.
    app.with_bearer(GLOBEX)
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await;
    let acme_id = acme
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    let events = read_until_done(&mut feed, &BTreeSet::from([acme_id])).await;
    assert!(events.iter().all(|e| e.job == acme_id), "{events:?}");
    // A job's stream token does not open the feed.
    let job_token = acme
        .stream_token(&format!("/v1/jobs/{acme_id}/stream-token"))
        .await;
    let wrong = app
        .get(&format!("/v1/events?token={}", job_token.token))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    app.stop().await;
}

/// DESIGN.md: a feed opened without a cursor starts "from now" and names that
/// moment in its first frame, so a connection cut before the first event
/// resumes from when it opened and loses what was appended in between.
async fn a_feed_cut_before_its_first_event_resumes_from_when_it_opened() {
    let app = TestApp::spawn().await;
    // A job that ran before the feed opened is not part of "from now".
    let before = app
        .submit("demo", json!({"steps": 1, "step_ms": 0}))
        .await
        .id;
    app.wait_status(before, Succeeded).await;

    // The opening frames, read as they arrive, then the connection is cut.
    let mut resp = app.get("/v1/events").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut head = String::new();
    while head.matches("\n\n").count() < 2 {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("the opening frames in time")
            .unwrap()
            .expect("the feed stays open");
        head.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(resp);
    let mut blocks = head.split("\n\n");
    assert!(blocks.next().unwrap().starts_with("retry: "), "{head:?}");
    let opening = blocks.next().unwrap();
    let cursor = opening
        .strip_prefix("id: ")
        .unwrap_or_else(|| panic!("the frame after retry: is the cursor alone: {head:?}"));
    assert!(
        !cursor.is_empty() && !cursor.contains('\n'),
        "an id line and nothing else (no event, no data): {opening:?}"
    );

    // Appended while no connection is open.
    let job = app
        .submit("demo", json!({"steps": 2, "step_ms": 0}))
        .await
        .id;
    app.wait_status(job, Succeeded).await;

    // Resumed with the id an EventSource kept: all of the new job, nothing older.
    let mut feed = Feed::open(&app, "", Some(cursor)).await;
    let events = read_until_done(&mut feed, &BTreeSet::from([job])).await;
    assert!(
        events.iter().all(|e| e.job == job),
        "nothing from before the feed opened: {events:?}"
    );
    let stored = app.stored_events(job).await;
    assert_eq!(seqs(&events)[&job], crate::common::seqs(&stored));
    app.stop().await;
}

backend_tests!(
    one_connection_carries_every_job_and_resumes_without_loss,
    a_feed_cut_before_its_first_event_resumes_from_when_it_opened,
    filters_select_jobs_by_id_kind_and_status,
    a_feed_token_opens_the_feed_of_its_tenant_only,
);

/// PostgreSQL hands out event ids when rows are inserted but transactions
/// commit in any order, so an event with a smaller id can become visible after
/// a larger one was read. Eight writers append events in transactions that
/// stay open for a random moment after the insert, so commits land out of id
/// order, while a reader keeps dropping the connection and resuming from the
/// last cursor it got, and now and then re-reads from a random earlier
/// cursor. What it read must be exactly what was written, once each.
#[tokio::test]
async fn concurrent_writers_and_a_resuming_reader_lose_and_repeat_nothing() {
    use rand::Rng;
    if postgres_url().is_none() {
        eprintln!("skipped: the concurrent feed test needs HERALD_TEST_POSTGRES_URL");
        return;
    }
    let db = TestDb::on(Backend::Postgres).await;
    let app = TestApp::spawn_in(db.clone(), |_| {}).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    const WRITERS: usize = 8;
    const PER_WRITER: i64 = 100;
    let mut jobs = Vec::new();
    for _ in 0..WRITERS {
        // Finished jobs whose event logs the writers then extend directly.
        let id = app
            .submit("demo", json!({"steps": 1, "step_ms": 0}))
            .await
            .id;
        app.wait_status(id, Succeeded).await;
        jobs.push(id);
    }
    // Opened from now, before anything is written: the reader's first session.
    let mut first = Some(Feed::open(&app, "", None).await);

    let mut writers = Vec::new();
    for job in jobs.clone() {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let id = job.to_string();
            let base: i64 =
                sqlx::query_scalar("SELECT last_seq FROM herald_jobs WHERE id = $1::uuid")
                    .bind(&id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            for n in 1..=PER_WRITER {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO herald_job_events (job_id, seq, event, data, at) \
                     VALUES ($1::uuid, $2, 'progress', $3, 0)",
                )
                .bind(&id)
                .bind(base + n)
                .bind(format!(r#"{{"n":{n}}}"#))
                .execute(&mut *tx)
                .await
                .unwrap();
                // Held open after the insert: other writers' later ids commit first.
                let hold = rand::rng().random_range(0..25);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                tx.commit().await.unwrap();
                // As herald does after a commit: wake the feeds, so the reader
                // reads often, while other transactions are still open.
                sqlx::query("SELECT pg_notify('herald_events', $1)")
                    .bind(&id)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            (job, base)
        }));
    }

    // The reader: short sessions resumed from the last cursor.
    let mut read: Vec<FeedEv> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut resumes = 0;
    let mut rereads = 0;
    let mut quiet_rounds = 0;
    while quiet_rounds < 3 {
        let (mut feed, wait) = match first.take() {
            Some(f) => (f, WAIT),
            None => (
                Feed::open(&app, "", cursor.as_deref()).await,
                Duration::from_millis(100),
            ),
        };
        let take = rand::rng().random_range(1..60);
        let mut got = 0;
        while got < take {
            match feed
                .next_within(if got == 0 {
                    wait
                } else {
                    Duration::from_millis(100)
                })
                .await
            {
                Some(ev) => {
                    cursor = Some(ev.cursor.clone());
                    read.push(ev);
                    got += 1;
                }
                None => break,
            }
        }
        resumes += 1;
        let writing = writers.iter().any(|w| !w.is_finished());
        quiet_rounds = if got == 0 && !writing {
            quiet_rounds + 1
        } else {
            0
        };
        // Now and then: a fresh read from a random earlier cursor must
        // give back exactly what followed it.
        if read.len() > 10 && rand::rng().random_ratio(1, 8) {
            let from = rand::rng().random_range(0..read.len() - 5);
            let mut again = Feed::open(&app, "", Some(&read[from].cursor)).await;
            for want in &read[from + 1..from + 5] {
                assert_eq!(&again.next().await, want, "re-read after #{from}");
            }
            rereads += 1;
        }
    }
    let mut written = BTreeSet::new();
    for w in writers {
        let (job, base) = w.await.unwrap();
        for n in 1..=PER_WRITER {
            written.insert((job, base + n));
        }
    }
    let got: Vec<(JobId, i64)> = read.iter().map(|e| (e.job, e.seq)).collect();
    let unique: BTreeSet<(JobId, i64)> = got.iter().cloned().collect();
    assert_eq!(got.len(), unique.len(), "no event was read twice");
    let missing: Vec<_> = written.difference(&unique).take(5).collect();
    let extra: Vec<_> = unique.difference(&written).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "read {} of {} written; missing (first 5) {missing:?}, not written {extra:?}",
        unique.len(),
        written.len()
    );
    for (job, s) in seqs(&read) {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "job {job} in order");
    }
    eprintln!(
        "read {} events in {resumes} sessions, {rereads} re-reads",
        read.len()
    );
    app.stop().await;
    pool.close().await;
}

/// A transaction left open in another database on the same PostgreSQL server
/// (another application, another herald) must not hold this feed back.
#[tokio::test]
async fn an_open_transaction_in_another_database_does_not_hold_the_feed_back() {
    if postgres_url().is_none() {
        eprintln!("skipped: needs HERALD_TEST_POSTGRES_URL");
        return;
    }
    let other = TestDb::on(Backend::Postgres).await;
    let other_pool = sqlx::PgPool::connect(other.url()).await.unwrap();
    let mut open = other_pool.begin().await.unwrap();
    for sql in [
        "CREATE TABLE elsewhere (x int)",
        "INSERT INTO elsewhere VALUES (1)",
    ] {
        sqlx::query(sql).execute(&mut *open).await.unwrap();
    }
    let app = TestApp::spawn_in(TestDb::on(Backend::Postgres).await, |_| {}).await;
    let mut feed = Feed::open(&app, "", None).await;
    let id = app
        .submit("demo", json!({"steps": 2, "step_ms": 10}))
        .await
        .id;
    let events = read_until_done(&mut feed, &BTreeSet::from([id])).await;
    assert!(events.len() >= 3, "{events:?}");
    open.rollback().await.unwrap();
    other_pool.close().await;
    app.stop().await;
}
