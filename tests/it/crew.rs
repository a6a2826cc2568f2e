//! The worked example, `examples/crew_suggestions.rs`, as its users see it:
//! herald started with the example's kind beside the built-in ones, against
//! three local downstreams (`GET /work-orders`, `/crews`, `/permits`) that
//! serve each test's own day, slowly or failing when asked.
//!
//! - [`rules`]: the stream of a day (fetches, one item per work order,
//!   the result), the suggestion rules' edge cases, bad inputs.
//! - [`resilience`]: cancel, a failing downstream, a restart and a retry
//!   that resume without repeating a work order.

mod python;
mod resilience;
mod rules;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Json, Query};
use poem::{handler, EndpointExt, IntoResponse, Request, Response, Route, Server};
use serde::Deserialize;
use serde_json::{json, Value};

use herald::Kinds;

use crate::common::{Event, TestApp, TestDb};

#[path = "../../examples/crew_suggestions.rs"]
#[allow(dead_code)] // The tests use the kind; the binary's `main` and the planner stay idle.
mod example;

/// What the three downstreams serve for one day (any other day: empty lists).
#[derive(Clone, Default)]
pub(super) struct Day {
    pub work_orders: Vec<Value>,
    pub crews: Vec<Value>,
    pub permits: Vec<Value>,
}

pub(super) fn work_order(id: u64, skill: &str, hours: f64, needs_permit: bool) -> Value {
    json!({"id": id, "site": format!("site {id}"), "skill": skill, "hours": hours,
           "needs_permit": needs_permit})
}

pub(super) fn crew(id: u64, name: &str, skills: &[&str], available_hours: f64) -> Value {
    json!({"id": id, "name": name, "skills": skills, "available_hours": available_hours})
}

pub(super) fn permit(work_order_id: u64, status: &str) -> Value {
    json!({"work_order_id": work_order_id, "status": status})
}

/// The item the spec promises for a work order: a crew, or none and why.
pub(super) fn suggestion(work_order_id: u64, crew: Option<(u64, &str)>, reason: &str) -> Value {
    json!({
        "work_order_id": work_order_id,
        "crew_id": crew.map(|c| c.0),
        "crew_name": crew.map(|c| c.1),
        "reason": reason,
    })
}

struct State {
    days: BTreeMap<String, Day>,
    delay: Duration,
    /// Paths that answer 500, every time.
    failing: Vec<&'static str>,
    /// Every request, as `path?day=D`, in arrival order.
    hits: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

#[derive(Deserialize)]
struct DayQuery {
    day: String,
}

#[handler]
async fn serve(req: &Request, Query(q): Query<DayQuery>, s: Data<&Arc<State>>) -> Response {
    let path = req.uri().path().to_owned();
    s.hits.lock().unwrap().push(format!("{path}?day={}", q.day));
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.most_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(s.delay).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    if s.failing.contains(&path.as_str()) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let day = s.days.get(&q.day).cloned().unwrap_or_default();
    let list = match path.as_str() {
        "/work-orders" => day.work_orders,
        "/crews" => day.crews,
        _ => day.permits,
    };
    Json(list).into_response()
}

/// The three downstreams, on one local server.
pub(super) struct Downstreams {
    pub base: String,
    state: Arc<State>,
}

impl Downstreams {
    /// Serves `data` for `day`, each answer after `delay`; `failing` paths
    /// (`/crews`) answer 500.
    pub async fn start(
        day: &str,
        data: Day,
        delay: Duration,
        failing: &[&'static str],
    ) -> Downstreams {
        let state = Arc::new(State {
            days: BTreeMap::from([(day.to_owned(), data)]),
            delay,
            failing: failing.to_vec(),
            hits: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let app = Route::new()
            .at("/work-orders", poem::get(serve))
            .at("/crews", poem::get(serve))
            .at("/permits", poem::get(serve))
            .data(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Downstreams { base, state }
    }

    /// Every request so far, as `path?day=D`.
    pub fn hits(&self) -> Vec<String> {
        self.state.hits.lock().unwrap().clone()
    }

    /// The most requests that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.state.most_in_flight.load(Ordering::SeqCst)
    }

    fn configure(&self, c: &mut herald::Config) {
        let base = &self.base;
        c.downstreams = vec![
            format!("workorders={base}"),
            format!("crews={base}"),
            format!("permits={base}"),
        ];
    }
}

fn kinds() -> Kinds {
    Kinds::builtin().with(example::CrewSuggestions)
}

/// herald with `crew_suggestions`, its three downstreams on `ds`.
pub(super) async fn spawn(ds: &Downstreams, f: impl FnOnce(&mut herald::Config)) -> TestApp {
    TestApp::spawn_with_kinds(kinds(), |c| {
        ds.configure(c);
        f(c);
    })
    .await
}

/// The same herald again on `db` (a restart).
pub(super) async fn respawn(
    db: TestDb,
    ds: &Downstreams,
    f: impl FnOnce(&mut herald::Config),
) -> TestApp {
    TestApp::spawn_in_with_kinds(db, kinds(), |c| {
        ds.configure(c);
        f(c);
    })
    .await
}

/// The items among `events`, asserting their indexes are 0, 1, 2 … gapless.
pub(super) fn items_in_order(events: &[Event]) -> Vec<Value> {
    let items = crate::common::items(events);
    let indexes: Vec<i64> = items.iter().map(|(i, _)| *i).collect();
    let want: Vec<i64> = (0..items.len() as i64).collect();
    assert_eq!(indexes, want, "item indexes are 0..n without gaps");
    items.into_iter().map(|(_, item)| item).collect()
}

/// Every item of the job, as `GET /v1/jobs/{id}/items` pages them.
pub(super) async fn listed_items(app: &TestApp, id: herald::domain::JobId) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset = Some(0);
    while let Some(o) = offset {
        let page = app
            .get_json(&format!("/v1/jobs/{id}/items?offset={o}&limit=4"))
            .await;
        for entry in page["items"].as_array().expect("a page of items") {
            assert_eq!(entry["index"], json!(out.len()), "{page}");
            out.push(entry["item"].clone());
        }
        offset = page["next_offset"].as_i64();
    }
    out
}
