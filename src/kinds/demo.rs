//! `demo`: `{steps, step_ms, fail_at?, panic_at?, emit_items?, ignore_cancel?}`.
//! Reports `steps` progress events `step_ms` apart, on a fixed schedule
//! (step k is due k × `step_ms` after the attempt starts, however long the
//! reports take, so jobs started apart stay apart); fails at step `fail_at`
//! and panics at step `panic_at` when given; with `emit_items` each step
//! also appends the item `{"step": k}`. Answers `{"steps": steps}`. For
//! trying the service and for tests.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::domain::FieldError;
use crate::kinds::{JobContext, JobFailure, JobKind};

pub const MAX_STEPS: u64 = 10_000;
pub const MAX_STEP_MS: u64 = 60_000;

pub struct Demo;

/// The demo's input.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoInput {
    /// Progress events to report, 1 to 10000.
    #[serde(deserialize_with = "whole")]
    #[schemars(range(min = 1, max = 10000), example = 5)]
    pub steps: u64,
    /// The pause before each step, 0 to 60000 ms.
    #[serde(deserialize_with = "whole")]
    #[schemars(range(max = 60000), example = 200)]
    pub step_ms: u64,
    /// Fail the attempt at this step (1 to `steps`).
    #[serde(default, deserialize_with = "some_whole")]
    #[schemars(range(min = 1, max = 10000))]
    pub fail_at: Option<u64>,
    /// Panic at this step (1 to `steps`), to see a panic contained.
    #[serde(default, deserialize_with = "some_whole")]
    #[schemars(range(min = 1, max = 10000))]
    pub panic_at: Option<u64>,
    /// Append the item `{"step": k}` at each step.
    #[serde(default)]
    pub emit_items: bool,
    /// Keep stepping after a cancel (to see `cancel_grace` stop a handler that
    /// ignores its token).
    #[serde(default)]
    pub ignore_cancel: bool,
}

/// A whole number, also when written `2.0` (JSON does not tell them apart).
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = f64::deserialize(d)?;
    if n.fract() != 0.0 || n < 0.0 || n > u64::MAX as f64 {
        return Err(serde::de::Error::custom(format!(
            "must be a whole number of at least 0, got {n}"
        )));
    }
    Ok(n as u64)
}

fn some_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d).map(Some)
}

impl DemoInput {
    /// The checks serde does not make: ranges, and steps named within `steps`.
    pub fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(1..=MAX_STEPS).contains(&self.steps) {
            errors.push(FieldError::new(
                "/steps",
                format!("must be 1 to {MAX_STEPS}"),
            ));
        }
        if self.step_ms > MAX_STEP_MS {
            errors.push(FieldError::new(
                "/step_ms",
                format!("must be 0 to {MAX_STEP_MS}"),
            ));
        }
        for (field, at) in [("fail_at", self.fail_at), ("panic_at", self.panic_at)] {
            match at {
                Some(0) => errors.push(FieldError::new(format!("/{field}"), "must be at least 1")),
                Some(at) if at > self.steps => errors.push(FieldError::new(
                    format!("/{field}"),
                    format!("must be at most steps ({})", self.steps),
                )),
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[async_trait]
impl JobKind for Demo {
    type Input = DemoInput;
    type Output = Value;

    fn name(&self) -> &'static str {
        "demo"
    }

    fn validate(&self, input: &DemoInput) -> Result<(), Vec<FieldError>> {
        input.check()
    }

    async fn run(&self, input: DemoInput, ctx: &JobContext) -> Result<Value, JobFailure> {
        let schedule = Schedule::start(input.step_ms);
        for step in 1..=input.steps {
            if input.step_ms == 0 {
                // No pause: a zero sleep would still wait for the timer's
                // next 1 ms tick. Yield, so other tasks run between steps.
                tokio::task::yield_now().await;
                if ctx.is_cancelled() && !input.ignore_cancel {
                    return Err(JobFailure::cancelled());
                }
            } else if input.ignore_cancel {
                schedule.step(step).await;
            } else {
                let pause = schedule.step(step);
                tokio::select! {
                    _ = pause => {}
                    _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
                }
            }
            if input.fail_at == Some(step) {
                return Err(JobFailure::retryable(
                    "demo_failure",
                    format!("demo failed at step {step} as asked by fail_at"),
                ));
            }
            if input.panic_at == Some(step) {
                panic!("demo panicked at step {step} as asked by panic_at");
            }
            // An attempt after a retry resumes after the items earlier ones appended.
            if input.emit_items && ctx.items_count() < step as i64 {
                ctx.item(json!({"step": step})).await?;
            }
            let percent = step as f64 * 100.0 / input.steps as f64;
            ctx.progress(
                Some(percent),
                Some("step"),
                Some(&format!("{step}/{}", input.steps)),
                Some(json!({"step": step})),
            )
            .await?;
        }
        Ok(json!({"steps": input.steps}))
    }
}

/// When each step is due: `step_ms` apart from the start, not from the end
/// of the step before (a report's own time would push every later step back,
/// and jobs started apart would drift into each other).
struct Schedule {
    start: Instant,
    every: Duration,
}

impl Schedule {
    fn start(step_ms: u64) -> Schedule {
        Schedule {
            start: Instant::now(),
            every: Duration::from_millis(step_ms),
        }
    }

    /// Waits until step `step` (from 1) is due; at once when it is overdue.
    fn step(&self, step: u64) -> tokio::time::Sleep {
        let due = self
            .every
            .saturating_mul(u32::try_from(step).unwrap_or(u32::MAX));
        tokio::time::sleep_until(self.start + due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::typed::from_value;

    /// Steps keep their times when the work between them takes a while.
    #[tokio::test(start_paused = true)]
    async fn steps_are_due_on_a_fixed_schedule() {
        let schedule = Schedule::start(100);
        let start = Instant::now();
        let mut at = Vec::new();
        for step in 1..=3 {
            schedule.step(step).await;
            at.push(start.elapsed().as_millis());
            // A report that takes 30 ms.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(at, [100, 200, 300]);
        // Overdue: at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = Instant::now();
        schedule.step(4).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    fn parse(v: Value) -> Result<DemoInput, Vec<FieldError>> {
        let input: DemoInput = from_value(&v)?;
        input.check().map(|_| input)
    }

    fn pointers(v: Value) -> Vec<String> {
        parse(v)
            .unwrap_err()
            .into_iter()
            .map(|e| e.pointer)
            .collect()
    }

    #[test]
    fn valid_input() {
        let d = parse(json!({"steps": 3, "step_ms": 0, "fail_at": 2, "emit_items": true})).unwrap();
        assert_eq!(d.steps, 3);
        assert_eq!(d.fail_at, Some(2));
        assert!(d.emit_items);
        assert!(!d.ignore_cancel);
    }

    #[test]
    fn out_of_range_and_missing_values_are_named() {
        assert_eq!(
            pointers(json!({"steps": 0, "step_ms": 60001})),
            ["/steps", "/step_ms"]
        );
        assert_eq!(pointers(json!({"steps": 10001})), ["/step_ms"]);
        assert_eq!(pointers(json!({})), ["/steps", "/step_ms"]);
        assert_eq!(
            pointers(json!({"steps": 2, "step_ms": 1, "fail_at": 3})),
            ["/fail_at"]
        );
        assert_eq!(
            pointers(json!({"steps": 2, "step_ms": 1, "panic_at": 0})),
            ["/panic_at"]
        );
        assert_eq!(pointers(json!({"steps": "5", "step_ms": 1})), ["/steps"]);
        assert_eq!(pointers(json!({"steps": 1.5, "step_ms": 1})), ["/steps"]);
        assert_eq!(
            pointers(json!({"steps": 1, "step_ms": 1, "stpes": 1})),
            ["/stpes"]
        );
        assert_eq!(pointers(json!([])), [""]);
        assert_eq!(parse(json!({"steps": 2.0, "step_ms": 0})).unwrap().steps, 2);
    }
}
