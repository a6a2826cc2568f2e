//! A day of work orders as a manager watches it: three fetches, one
//! suggestion per work order in the order received, the result; each rule's
//! edge case in the items; bad inputs refused before any job exists.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::{
    crew, items_in_order, listed_items, permit, spawn, suggestion, work_order, Day, Downstreams,
};
use crate::common::invalid_pointers;
use crate::common::Status::Succeeded;

pub(super) const DAY: &str = "2026-11-30";

/// Six work orders, ids in no particular order, three crews: every kind of
/// answer once.
pub(super) fn a_day() -> Day {
    Day {
        work_orders: vec![
            work_order(42, "electric", 4.0, false),
            work_order(7, "plumbing", 3.0, true),
            work_order(19, "welding", 5.0, false),
            work_order(3, "electric", 4.0, false),
            work_order(11, "roofing", 2.0, false),
            work_order(5, "electric", 2.0, true),
        ],
        crews: vec![
            crew(1, "Ortega", &["electric", "plumbing"], 10.0),
            crew(2, "Baker", &["electric"], 6.0),
            crew(3, "Chen", &["welding"], 8.0),
        ],
        permits: vec![permit(7, "approved"), permit(5, "pending")],
    }
}

/// The stream shows the three fetches (kept progress events, stage `fetch`,
/// one per source), then one item per work order in the order the
/// downstream listed them, progress up to 100 %, and the result; the items
/// endpoint and the snapshot agree. The fetches run side by side.
async fn a_day_streams_its_fetches_then_one_suggestion_per_work_order() {
    let ds = Downstreams::start(DAY, a_day(), Duration::from_millis(300), &[]).await;
    let app = spawn(&ds, |_| {}).await;
    let job = app
        .submit("crew_suggestions", json!({"day": DAY, "compute_ms": 20}))
        .await;
    let events = app.stream_events(job.id).await;

    let fetches: Vec<_> = events
        .iter()
        .filter(|e| e.event == "progress" && e.stage() == Some("fetch"))
        .collect();
    let sources: BTreeSet<&str> = fetches
        .iter()
        .map(|e| e.progress_data()["source"].as_str().unwrap())
        .collect();
    assert_eq!(fetches.len(), 3, "{events:?}");
    assert_eq!(
        sources,
        BTreeSet::from(["crews", "permits", "workorders"]),
        "{fetches:?}"
    );
    let first_item = events.iter().position(|e| e.event == "item").unwrap();
    assert!(
        fetches.iter().all(|f| f.seq < events[first_item].seq),
        "every fetch is reported before the first suggestion: {events:?}"
    );

    let want = vec![
        suggestion(42, Some((1, "Ortega")), "assigned"),
        suggestion(7, Some((1, "Ortega")), "assigned"),
        suggestion(19, Some((3, "Chen")), "assigned"),
        suggestion(3, Some((2, "Baker")), "assigned"),
        suggestion(11, None, "no_crew"),
        suggestion(5, None, "permit_pending"),
    ];
    let items = items_in_order(&events);
    assert_eq!(items, want);
    for item in &items {
        let keys: BTreeSet<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["crew_id", "crew_name", "reason", "work_order_id"])
        );
    }

    // Progress: work orders done / total, rising to 100 (a report may be
    // coalesced into the next, never reordered).
    let percents: Vec<f64> = events
        .iter()
        .filter(|e| e.event == "progress" && e.stage() != Some("fetch"))
        .filter_map(|e| e.percent())
        .collect();
    assert!(!percents.is_empty(), "{events:?}");
    for p in &percents {
        let done = p * 6.0 / 100.0;
        assert!(
            (done - done.round()).abs() < 1e-9,
            "{p} is not k/6: {percents:?}"
        );
    }
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100.0));

    let result = json!({"day": DAY, "suggested": 4, "unassigned": 2, "work_orders": 6});
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), last.result()),
        ("result", Some(&result))
    );

    let done = app.job(job.id).await;
    assert_eq!((done.status, done.items_count), (Succeeded, 6));
    assert_eq!(done.result, Some(result));
    assert_eq!(done.progress.unwrap().percent, Some(100.0));
    assert_eq!(listed_items(&app, job.id).await, want);

    // Each downstream was asked once, for the day, all three at once.
    let mut hits = ds.hits();
    hits.sort();
    assert_eq!(
        hits,
        [
            format!("/crews?day={DAY}"),
            format!("/permits?day={DAY}"),
            format!("/work-orders?day={DAY}"),
        ]
    );
    assert_eq!(ds.most_in_flight(), 3, "the three fetches overlap");
}

/// Each rule, in the order the spec checks them, visible in the items: a
/// permit missing or pending means no crew and no hours taken; no crew with
/// the skill, or with enough hours left, is `no_crew`; hours go down as a
/// crew is assigned; among crews with as many hours left, the lowest id.
async fn each_rule_shows_in_the_items() {
    let day = Day {
        work_orders: vec![
            work_order(101, "electric", 8.0, true), // no permit record
            work_order(102, "electric", 8.0, true), // permit pending
            work_order(103, "electric", 5.0, true), // permit approved
            work_order(104, "electric", 5.0, false),
            work_order(105, "electric", 3.0, false),
            work_order(106, "electric", 3.0, false),
            work_order(107, "electric", 1.0, false),
            work_order(108, "welding", 4.0, false),
            work_order(109, "roofing", 1.0, false),
            work_order(110, "welding", 3.0, false),
        ],
        // Listed with the higher id first, so "lowest id" is not "first listed".
        crews: vec![
            crew(7, "Ortega", &["electric"], 8.0),
            crew(3, "Baker", &["electric", "plumbing"], 8.0),
            crew(5, "Chen", &["welding"], 3.0),
        ],
        permits: vec![permit(102, "pending"), permit(103, "approved")],
    };
    let ds = Downstreams::start(DAY, day, Duration::ZERO, &[]).await;
    let app = spawn(&ds, |_| {}).await;
    let job = app
        .submit("crew_suggestions", json!({"day": DAY, "compute_ms": 0}))
        .await;
    let events = app.stream_events(job.id).await;
    let baker = Some((3, "Baker"));
    let ortega = Some((7, "Ortega"));
    assert_eq!(
        items_in_order(&events),
        [
            // No permit record, then a pending one: no crew; the 8 hours
            // they would have needed stay with the crews.
            suggestion(101, None, "permit_pending"),
            suggestion(102, None, "permit_pending"),
            // Both crews have 8 hours left: the lowest id.
            suggestion(103, baker, "assigned"),
            // Baker has 3 left now: the other crew.
            suggestion(104, ortega, "assigned"),
            // 3 and 3 left: the lowest id again; then the other.
            suggestion(105, baker, "assigned"),
            suggestion(106, ortega, "assigned"),
            // Both crews are out of hours.
            suggestion(107, None, "no_crew"),
            // The welder has 3 hours, not 4.
            suggestion(108, None, "no_crew"),
            // Nobody roofs.
            suggestion(109, None, "no_crew"),
            // Exactly 3 hours left is enough.
            suggestion(110, Some((5, "Chen")), "assigned"),
        ]
    );
    assert_eq!(
        events.last().unwrap().result(),
        Some(&json!({"day": DAY, "suggested": 5, "unassigned": 5, "work_orders": 10}))
    );
}

/// A missing or bad field is a 422 pointing at it, and no job is made;
/// `GET /v1/kinds` lists the kind with its input's schema.
async fn a_bad_input_is_a_422_pointing_at_its_field() {
    let ds = Downstreams::start(DAY, Day::default(), Duration::ZERO, &[]).await;
    let app = spawn(&ds, |_| {}).await;
    for (input, want) in [
        (json!({}), "/input/day"),
        (json!({"compute_ms": 10}), "/input/day"),
        (json!({"day": "30-11-2026"}), "/input/day"),
        (json!({"day": "2026-02-30"}), "/input/day"),
        (json!({"day": "2026-1-5"}), "/input/day"),
        (json!({"day": 20261130}), "/input/day"),
        (
            json!({"day": DAY, "compute_ms": 10001}),
            "/input/compute_ms",
        ),
        (json!({"day": DAY, "compute_ms": -1}), "/input/compute_ms"),
        (json!({"day": DAY, "crew": 7}), "/input/crew"),
        (json!("2026-11-30"), "/input"),
    ] {
        let resp = app
            .post_job(&json!({"kind": "crew_suggestions", "input": input}))
            .await;
        assert_eq!(invalid_pointers(resp).await, [want], "{input}");
    }
    assert!(app.list("").await.items.is_empty(), "no job was made");

    let kinds = app.get_json("/v1/kinds").await;
    let crew = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "crew_suggestions")
        .expect("crew_suggestions is listed");
    assert_eq!(crew["remote"], false);
    let schema = &crew["input_schema"];
    assert_eq!(schema["required"], json!(["day"]), "{schema}");
    assert_eq!(
        schema["properties"]["compute_ms"]["maximum"], 10000,
        "{schema}"
    );

    // The edges are fine: 0 and 10000 ms, and compute_ms may be left out.
    for input in [
        json!({"day": DAY}),
        json!({"day": DAY, "compute_ms": 0}),
        json!({"day": DAY, "compute_ms": 10000}),
    ] {
        app.submit("crew_suggestions", input).await;
    }
}

backend_tests!(
    a_day_streams_its_fetches_then_one_suggestion_per_work_order,
    each_rule_shows_in_the_items,
    a_bad_input_is_a_422_pointing_at_its_field,
);
