use super::*;
use serde_json::json;

pub(crate) fn job(status: JobStatus) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        tenant: String::new(),
        kind: "demo".into(),
        status,
        input: json!({}),
        progress: None,
        result: None,
        error: None,
        attempt: 1,
        max_attempts: 3,
        timeout_secs: None,
        cancel_requested: false,
        idempotency_key: None,
        created_at: Timestamp(1),
        started_at: None,
        finished_at: None,
        last_seq: EventSeq(1),
        items_count: 0,
        run_at: Timestamp(0),
        remote: false,
        worker: None,
        lease: None,
        lease_expires_at: None,
    }
}

fn data(ev: &NewEvent) -> Value {
    serde_json::from_str(&ev.data).unwrap()
}

#[test]
fn start_appends_running_with_the_next_seq() {
    let (j, ev) = job(JobStatus::Queued)
        .apply(&Transition::Start, Timestamp(5))
        .unwrap();
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.started_at, Some(Timestamp(5)));
    assert_eq!(ev.seq, EventSeq(2));
    assert_eq!(j.last_seq, EventSeq(2));
    assert_eq!(ev.kind, EventKind::Status);
    assert_eq!(data(&ev)["status"], "running");
    assert_eq!(data(&ev)["attempt"], 1);
    assert!(!ev.data.contains('\n'));
}

#[test]
fn apply_all_steps_in_turn_and_refuses_as_a_whole() {
    let running = job(JobStatus::Running);
    let steps = running
        .apply_all(
            &[Transition::Item("{}".into()), Transition::Succeed(json!(1))],
            Timestamp(3),
        )
        .unwrap();
    let seqs: Vec<i64> = steps.iter().map(|(_, ev)| ev.seq.0).collect();
    assert_eq!(seqs, [2, 3]);
    let (last, _) = steps.last().unwrap();
    assert_eq!(
        (last.status, last.last_seq, last.items_count),
        (JobStatus::Succeeded, EventSeq(3), 1)
    );
    // An item after the outcome: refused, so nothing of it is written.
    let refused = running.apply_all(
        &[Transition::Succeed(json!(1)), Transition::Item("{}".into())],
        Timestamp(3),
    );
    assert!(refused.is_err());
}

#[test]
fn retry_counts_the_next_attempt_and_requeue_does_not() {
    let running = job(JobStatus::Running);
    let (j, ev) = running
        .apply(
            &Transition::Retry(JobError::new("x", "y"), std::time::Duration::ZERO),
            Timestamp(2),
        )
        .unwrap();
    assert_eq!((j.status, j.attempt), (JobStatus::Queued, 2));
    assert_eq!(data(&ev)["attempt"], 2);
    assert_eq!(data(&ev)["error"]["code"], "x");
    let (j, _) = running.apply(&Transition::Requeue, Timestamp(2)).unwrap();
    assert_eq!((j.status, j.attempt), (JobStatus::Queued, 1));
}

#[test]
fn outcomes_set_their_fields() {
    let running = job(JobStatus::Running);
    let (j, ev) = running
        .apply(&Transition::Succeed(json!({"steps": 3})), Timestamp(9))
        .unwrap();
    assert_eq!(j.status, JobStatus::Succeeded);
    assert_eq!(j.result, Some(json!({"steps": 3})));
    assert_eq!(j.finished_at, Some(Timestamp(9)));
    assert_eq!(ev.kind, EventKind::Result);
    assert_eq!(data(&ev)["result"]["steps"], 3);

    let (j, ev) = running
        .apply(
            &Transition::Fail(JobError::new("boom", "it broke")),
            Timestamp(9),
        )
        .unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(ev.kind, EventKind::Failed);
    assert_eq!(data(&ev)["error"]["code"], "boom");

    let (j, ev) = running
        .apply(
            &Transition::Cancel {
                reason: "asked".into(),
            },
            Timestamp(9),
        )
        .unwrap();
    assert_eq!(j.status, JobStatus::Cancelled);
    assert_eq!(ev.kind, EventKind::Cancelled);
    assert_eq!(data(&ev)["reason"], "asked");
}

#[test]
fn terminal_jobs_refuse_everything() {
    let p = Progress::new(Some(1.0), None, None, None).unwrap();
    let all = [
        Transition::Start,
        Transition::Progress(p),
        Transition::Item("1".into()),
        Transition::Retry(JobError::new("a", "b"), std::time::Duration::ZERO),
        Transition::Requeue,
        Transition::Succeed(json!(1)),
        Transition::Fail(JobError::new("a", "b")),
        Transition::Cancel { reason: "r".into() },
    ];
    for st in [
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ] {
        for t in &all {
            assert!(job(st).apply(t, Timestamp(3)).is_err(), "{st} {t:?}");
        }
    }
}

#[test]
fn items_count_from_zero_across_attempts_and_only_while_running() {
    let mut running = job(JobStatus::Running);
    running.items_count = 2;
    let item = Transition::Item(r#"{"a":[1,2]}"#.into());
    let (j, ev) = running.apply(&item, Timestamp(4)).unwrap();
    assert_eq!((j.items_count, ev.seq), (3, EventSeq(2)));
    assert_eq!(ev.kind, EventKind::Item);
    assert_eq!(data(&ev)["index"], 2);
    assert_eq!(data(&ev)["item"], json!({"a": [1, 2]}));
    assert!(!ev.data.contains('\n'));
    let (j, _) = j
        .apply(
            &Transition::Retry(JobError::new("x", "y"), std::time::Duration::ZERO),
            Timestamp(5),
        )
        .unwrap();
    assert_eq!(j.items_count, 3, "a retry keeps the items");
    assert!(
        j.apply(&item, Timestamp(6)).is_err(),
        "a queued job appends nothing"
    );
}

#[test]
fn a_queued_job_only_starts_or_cancels() {
    let q = job(JobStatus::Queued);
    assert!(q
        .apply(&Transition::Succeed(json!(1)), Timestamp(1))
        .is_err());
    assert!(q.apply(&Transition::Requeue, Timestamp(1)).is_err());
    let p = Progress::new(None, None, None, None).unwrap();
    assert!(q.apply(&Transition::Progress(p), Timestamp(1)).is_err());
    assert!(q
        .apply(&Transition::Cancel { reason: "r".into() }, Timestamp(1))
        .is_ok());
}

#[test]
fn percent_must_lie_in_0_to_100() {
    assert!(Progress::new(Some(0.0), None, None, None).is_ok());
    assert!(Progress::new(Some(100.0), None, None, None).is_ok());
    assert!(Progress::new(None, None, None, None).is_ok());
    for bad in [-0.1, 100.01, f64::NAN, f64::INFINITY] {
        assert!(Progress::new(Some(bad), None, None, None).is_err(), "{bad}");
    }
}

#[test]
fn event_names_never_say_error() {
    for k in [
        EventKind::Status,
        EventKind::Progress,
        EventKind::Result,
        EventKind::Failed,
        EventKind::Cancelled,
    ] {
        assert_ne!(k.as_str(), "error");
        assert_eq!(EventKind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn a_retry_waits_in_the_queue_until_its_backoff_has_passed() {
    let running = job(JobStatus::Running);
    let delay = std::time::Duration::from_millis(1500);
    let (next, _) = running
        .apply(
            &Transition::Retry(JobError::new("x", "y"), delay),
            Timestamp(1_000),
        )
        .unwrap();
    assert_eq!(next.status, JobStatus::Queued);
    assert_eq!(next.run_at, Timestamp(1_000 + 1_500_000));
    let (back, _) = running.apply(&Transition::Requeue, Timestamp(7)).unwrap();
    assert_eq!(
        back.run_at,
        Timestamp(7),
        "put back at shutdown: due at once"
    );
}
