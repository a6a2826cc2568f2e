//! `crew_suggestions`: a herald binary with one kind of its own, for the
//! managers of a work-scheduling app. For a day, it fetches the work orders,
//! the crews and the permits from three slow downstreams, then suggests a
//! crew for each work order, one item per work order, as it goes.
//!
//! Run it against three downstreams (the README walks through it):
//!
//! ```text
//! HERALD_DOWNSTREAMS='workorders=http://127.0.0.1:9001,crews=http://127.0.0.1:9002,permits=http://127.0.0.1:9003' \
//!   cargo run --release --example crew_suggestions
//! ```
//!
//! The rules, checked in this order for each work order, in the order the
//! downstream lists them:
//! 1. It needs a permit whose record is missing or not `approved`:
//!    `permit_pending`, no crew, no hours taken.
//! 2. A crew is eligible when it has the skill and at least the work order's
//!    hours left (its hours go down as it is assigned). None: `no_crew`.
//! 3. Else the eligible crew with the most hours left (ties: the lowest id):
//!    `assigned`.
//!
//! A retry or a re-run after a crash resumes after the work orders that
//! already have an item, with the hours they took, so no work order ever
//! gets two items.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herald::{FieldError, JobContext, JobFailure, JobKind, Kinds};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The kind's input: `{"day": "2026-11-30", "compute_ms": 200}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The day to plan, `YYYY-MM-DD`.
    #[schemars(example = &"2026-11-30", regex(pattern = r"^\d{4}-\d{2}-\d{2}$"))]
    pub day: String,
    /// Time spent computing each suggestion, 0 to 10000 ms (default 200).
    #[serde(default = "default_compute_ms")]
    #[schemars(range(max = 10000), extend("default" = 200))]
    pub compute_ms: u64,
}

fn default_compute_ms() -> u64 {
    200
}

/// `GET /work-orders?day=D` on `workorders`.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkOrder {
    pub id: u64,
    pub site: String,
    pub skill: String,
    pub hours: f64,
    pub needs_permit: bool,
}

/// `GET /crews?day=D` on `crews`.
#[derive(Debug, Clone, Deserialize)]
pub struct Crew {
    pub id: u64,
    pub name: String,
    pub skills: Vec<String>,
    pub available_hours: f64,
}

/// `GET /permits?day=D` on `permits`.
#[derive(Debug, Clone, Deserialize)]
pub struct Permit {
    pub work_order_id: u64,
    pub status: String,
}

/// One item: the suggestion for one work order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub work_order_id: u64,
    pub crew_id: Option<u64>,
    pub crew_name: Option<String>,
    /// `assigned`, `permit_pending` or `no_crew`.
    pub reason: String,
}

/// What the work orders with an item took, saved before each item is
/// appended: a later attempt takes the first `items_count` of them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Per work order in order: the crew assigned and the hours it took.
    taken: Vec<Option<(u64, f64)>>,
}

/// The planner: crews' hours left, and the rules.
pub struct Planner<'a> {
    crews: &'a [Crew],
    permits: HashMap<u64, &'a str>,
    left: BTreeMap<u64, f64>,
}

impl<'a> Planner<'a> {
    pub fn new(crews: &'a [Crew], permits: &'a [Permit]) -> Planner<'a> {
        Planner {
            crews,
            permits: permits
                .iter()
                .map(|p| (p.work_order_id, p.status.as_str()))
                .collect(),
            left: crews.iter().map(|c| (c.id, c.available_hours)).collect(),
        }
    }

    /// Counts hours an earlier attempt gave `crew_id`.
    fn take(&mut self, crew_id: u64, hours: f64) {
        if let Some(left) = self.left.get_mut(&crew_id) {
            *left -= hours;
        }
    }

    /// The suggestion for `wo`, taking the assigned crew's hours.
    pub fn suggest(&mut self, wo: &WorkOrder) -> Suggestion {
        let none = |reason: &str| Suggestion {
            work_order_id: wo.id,
            crew_id: None,
            crew_name: None,
            reason: reason.to_owned(),
        };
        if wo.needs_permit && self.permits.get(&wo.id) != Some(&"approved") {
            return none("permit_pending");
        }
        let best = self
            .crews
            .iter()
            .filter(|c| c.skills.contains(&wo.skill) && self.left[&c.id] >= wo.hours)
            // Most hours left; among equals the lowest id.
            .max_by(|a, b| {
                self.left[&a.id]
                    .total_cmp(&self.left[&b.id])
                    .then(b.id.cmp(&a.id))
            });
        match best {
            None => none("no_crew"),
            Some(crew) => {
                self.take(crew.id, wo.hours);
                Suggestion {
                    work_order_id: wo.id,
                    crew_id: Some(crew.id),
                    crew_name: Some(crew.name.clone()),
                    reason: "assigned".to_owned(),
                }
            }
        }
    }
}

/// The `crew_suggestions` kind.
#[derive(Default)]
pub struct CrewSuggestions;

impl CrewSuggestions {
    async fn fetch<T: serde::de::DeserializeOwned>(
        ctx: &JobContext,
        source: &str,
        path: String,
        done: &std::sync::atomic::AtomicUsize,
    ) -> Result<T, JobFailure> {
        let value = ctx.downstream(source)?.get::<T>(&path).await?;
        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        ctx.progress_kept(
            None,
            Some("fetch"),
            Some(&format!("{source}: ok ({n}/3)")),
            Some(json!({"source": source, "status": "ok"})),
        )
        .await?;
        Ok(value)
    }
}

#[async_trait::async_trait]
impl JobKind for CrewSuggestions {
    type Input = Input;
    type Output = serde_json::Value;

    fn name(&self) -> &'static str {
        "crew_suggestions"
    }

    fn validate(&self, input: &Input) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if chrono::NaiveDate::parse_from_str(&input.day, "%Y-%m-%d").is_err()
            || input.day.len() != 10
        {
            errors.push(FieldError::new("/day", "must be a date, YYYY-MM-DD"));
        }
        if input.compute_ms > 10_000 {
            errors.push(FieldError::new("/compute_ms", "must be 0 to 10000"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn run(&self, input: Input, ctx: &JobContext) -> Result<serde_json::Value, JobFailure> {
        let day = &input.day;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let fetches = async {
            tokio::try_join!(
                Self::fetch::<Vec<WorkOrder>>(
                    ctx,
                    "workorders",
                    format!("/work-orders?day={day}"),
                    &done
                ),
                Self::fetch::<Vec<Crew>>(ctx, "crews", format!("/crews?day={day}"), &done),
                Self::fetch::<Vec<Permit>>(ctx, "permits", format!("/permits?day={day}"), &done),
            )
        };
        let (orders, crews, permits) = tokio::select! {
            fetched = fetches => fetched?,
            _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
        };

        let mut planner = Planner::new(&crews, &permits);
        // Resume: the work orders that already have an item keep it, and
        // their crews' hours stay taken.
        let mut checkpoint: Checkpoint = ctx.checkpoint().await?.unwrap_or_default();
        let resumed = (ctx.items_count().max(0) as usize).min(orders.len());
        checkpoint.taken.truncate(resumed);
        if checkpoint.taken.len() < resumed {
            return Err(JobFailure::permanent(
                "lost_checkpoint",
                format!(
                    "{resumed} work orders have items but the checkpoint records {}",
                    checkpoint.taken.len()
                ),
            ));
        }
        for (crew_id, hours) in checkpoint.taken.iter().flatten() {
            planner.take(*crew_id, *hours);
        }

        let total = orders.len();
        for (n, wo) in orders.iter().enumerate().skip(resumed) {
            // Cancel stops between work orders: checked first (`biased`), so
            // even with `compute_ms: 0` no work order starts after a cancel.
            tokio::select! {
                biased;
                _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
                _ = tokio::time::sleep(Duration::from_millis(input.compute_ms)) => {}
            }
            let suggestion = planner.suggest(wo);
            checkpoint
                .taken
                .push(suggestion.crew_id.map(|crew| (crew, wo.hours)));
            ctx.save_checkpoint(&checkpoint).await?;
            ctx.item(&suggestion).await?;
            ctx.progress(
                Some((n + 1) as f64 * 100.0 / total as f64),
                Some("suggest"),
                Some(&format!("{}/{total} work orders", n + 1)),
                None,
            )
            .await?;
        }
        let suggested = checkpoint.taken.iter().filter(|t| t.is_some()).count();
        Ok(json!({
            "day": day,
            "suggested": suggested,
            "unassigned": total - suggested,
            "work_orders": total,
        }))
    }
}

#[allow(dead_code)] // The tests include this file as a module.
fn main() -> std::process::ExitCode {
    herald::cli::main(Kinds::builtin().with(CrewSuggestions))
}
