//! Checks both stores must pass alike, each run by the store's own tests
//! (`sqlite/queue.rs`; `postgres/jobs.rs`, which needs
//! `HERALD_TEST_POSTGRES_URL`).

use crate::domain::{EventSeq, JobRecord, JobStatus, Submission, Submitted};
use crate::store::{JobStore, QueueStore};

/// A one-step `demo` submission; `start` as a worker's free slot would set.
pub(crate) fn demo(start: bool) -> Submission {
    let body = serde_json::json!({"kind": "demo", "input": {"steps": 1}});
    let mut sub = Submission::parse(&body, 3).expect("a valid submission");
    sub.start = start;
    sub
}

/// On an empty store: a submission asked to start its job stores it
/// `running`, with its `queued` and `running` events, while no due job
/// waits; its idempotent resubmission answers that job. Once a job waits
/// in the queue, a submission asked to start stores its job queued behind
/// it, as any submission. Answers the job started at once.
pub(crate) async fn submission_starts_only_while_no_due_job_waits<S>(store: &S) -> JobRecord
where
    S: JobStore + QueueStore,
{
    let mut keyed = demo(true);
    keyed.idempotency_key = Some("once".to_owned());
    let started = match store.submit("", &keyed).await.expect("submit") {
        Submitted::Started(s) => {
            assert_eq!(s.queued.status, JobStatus::Queued, "the job as accepted");
            assert_eq!(s.running.status, JobStatus::Running);
            assert_eq!(s.running.id, s.queued.id);
            assert_eq!(
                (s.start.seq, s.running.last_seq),
                (EventSeq(2), EventSeq(2))
            );
            s.running
        }
        other => panic!("expected the job started at once, got {other:?}"),
    };
    let stored = store.get(started.id).await.expect("get").expect("the job");
    assert_eq!(stored, started, "the row is the job as answered");
    let events = store
        .events_after(started.id, EventSeq(0), 10)
        .await
        .expect("events");
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.len(), 2, "queued and running: {data:?}");
    assert!(data[0].contains(r#""status":"queued""#), "{data:?}");
    assert!(data[1].contains(r#""status":"running""#), "{data:?}");
    assert_eq!(store.queue_stats().await.expect("stats").0, 0);
    match store.submit("", &keyed).await.expect("resubmit") {
        Submitted::Existing(job) => assert_eq!(job, started, "the earlier job"),
        other => panic!("expected the earlier job, got {other:?}"),
    }

    // A job queued the usual way waits: the next one may not pass it.
    let waiting = match store.submit("", &demo(false)).await.expect("submit") {
        Submitted::Created(job) => job,
        other => panic!("expected a queued job, got {other:?}"),
    };
    match store.submit("", &demo(true)).await.expect("submit") {
        Submitted::Created(job) => {
            assert_eq!(job.status, JobStatus::Queued);
            let stored = store.get(job.id).await.expect("get").expect("the job");
            assert_eq!(stored.status, JobStatus::Queued);
            assert_eq!(stored.last_seq, EventSeq(1), "its `queued` event only");
        }
        other => panic!(
            "expected the job queued behind {}, got {other:?}",
            waiting.id
        ),
    }
    assert_eq!(store.queue_stats().await.expect("stats").0, 2);
    started
}

/// On an empty store: a claim starts at most what it is asked for, oldest
/// first, and says whether a due job is left (the worker gives no seat
/// while one is).
pub(crate) async fn a_claim_says_whether_due_jobs_are_left<S>(store: &S)
where
    S: JobStore + QueueStore,
{
    let mut queued = Vec::new();
    for _ in 0..3 {
        match store.submit("", &demo(false)).await.expect("submit") {
            Submitted::Created(job) => queued.push(job.id),
            other => panic!("expected a queued job, got {other:?}"),
        }
    }
    let first = store.claim(2).await.expect("claim");
    let ids: Vec<_> = first.started.iter().map(|a| a.job.id).collect();
    assert_eq!(ids, queued[..2], "the two oldest");
    assert!(first.more, "a third waits");
    let second = store.claim(2).await.expect("claim");
    let ids: Vec<_> = second.started.iter().map(|a| a.job.id).collect();
    assert_eq!(ids, queued[2..]);
    assert!(!second.more, "the queue is empty");
    assert_eq!(second.next_due, None);
    assert_eq!(store.queue_stats().await.expect("stats").0, 0);
}

/// On an empty store: a runner's last reports and its outcome land
/// together, in order, with gapless seqs; from a job as known that has
/// moved on since, they still land, after what moved it; and on a job that
/// has ended they are refused and write nothing.
pub(crate) async fn last_reports_and_outcome_land_in_order<S>(store: &S)
where
    S: JobStore + QueueStore,
{
    use crate::domain::{EventKind, Progress, Transition};
    use crate::store::ApplyError;
    let running = |s| match s {
        Submitted::Started(s) => s.running,
        other => panic!("expected the job started at once, got {other:?}"),
    };
    let progress = |percent: f64| {
        Transition::Progress(Progress {
            percent: Some(percent),
            stage: None,
            message: None,
            data: None,
        })
    };
    let kinds = |events: &[crate::store::StoredEvent]| -> Vec<(i64, EventKind)> {
        events.iter().map(|e| (e.seq.0, e.kind)).collect()
    };

    let job = running(store.submit("", &demo(true)).await.expect("submit"));
    let ts = [
        progress(50.0),
        progress(90.0),
        Transition::Succeed(serde_json::json!({"n": 1})),
    ];
    let applied = store.apply_known_all(&job, &ts).await.expect("apply all");
    let seqs: Vec<i64> = applied.iter().map(|a| a.event.seq.0).collect();
    assert_eq!(seqs, [3, 4, 5]);
    let stored = store.get(job.id).await.expect("get").expect("the job");
    assert_eq!(stored, applied[2].job, "the row is the job as answered");
    assert_eq!(stored.status, JobStatus::Succeeded);
    assert_eq!(stored.progress.as_ref().and_then(|p| p.percent), Some(90.0));
    let events = store
        .events_after(job.id, EventSeq(2), 10)
        .await
        .expect("events");
    assert_eq!(
        kinds(&events),
        [
            (3, EventKind::Progress),
            (4, EventKind::Progress),
            (5, EventKind::Result)
        ]
    );
    assert!(events[1].data.contains("90"), "{:?}", events[1].data);

    // Ended: nothing more is written, from the job as it was known.
    match store.apply_known_all(&job, &ts[1..]).await {
        Err(ApplyError::Refused(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    let after = store
        .events_after(job.id, EventSeq(0), 10)
        .await
        .expect("events");
    assert_eq!(
        after.len(),
        5,
        "a refused write added events: {:?}",
        kinds(&after)
    );

    // Moved on since the runner last saw it (a report of its own landed).
    let job = running(store.submit("", &demo(true)).await.expect("submit"));
    store
        .apply_known(&job, &progress(10.0))
        .await
        .expect("progress");
    let applied = store.apply_known_all(&job, &ts).await.expect("apply all");
    let seqs: Vec<i64> = applied.iter().map(|a| a.event.seq.0).collect();
    assert_eq!(seqs, [4, 5, 6], "after the report that moved it on");
    let events = store
        .events_after(job.id, EventSeq(0), 10)
        .await
        .expect("events");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "gapless, each once");
    assert_eq!(events[5].kind, EventKind::Result);
}
