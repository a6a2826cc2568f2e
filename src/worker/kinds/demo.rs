//! `demo`: `{steps, step_ms, fail_at?, ignore_cancel?}`. Reports `steps` progress
//! events `step_ms` apart, fails at step `fail_at` when given, and answers
//! `{"steps": steps}`. For trying the service and for tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::domain::{FieldError, JobId};
use crate::worker::{JobContext, JobFailure, JobKind};

pub const MAX_STEPS: u64 = 10_000;
pub const MAX_STEP_MS: u64 = 60_000;

pub struct Demo;

#[derive(Debug, Clone, PartialEq)]
pub struct DemoInput {
    pub steps: u64,
    pub step_ms: u64,
    pub fail_at: Option<u64>,
    /// Keep stepping after a cancel (to see `cancel_grace` stop a handler that
    /// ignores its token).
    pub ignore_cancel: bool,
}

impl DemoInput {
    pub fn parse(input: &Value) -> Result<DemoInput, Vec<FieldError>> {
        let Some(obj) = input.as_object() else {
            return Err(vec![FieldError::new(
                "",
                "must be an object such as {\"steps\": 5, \"step_ms\": 200}",
            )]);
        };
        let mut errors = Vec::new();
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "steps" | "step_ms" | "fail_at" | "ignore_cancel"
            ) {
                errors.push(FieldError::new(
                    format!("/{}", crate::domain::escape_pointer(key)),
                    "unknown field; allowed: steps, step_ms, fail_at, ignore_cancel",
                ));
            }
        }
        let mut int = |field: &str, min: u64, max: u64, required: bool| -> Option<u64> {
            match obj.get(field) {
                None | Some(Value::Null) if !required => None,
                None => {
                    errors.push(FieldError::new(format!("/{field}"), "is required"));
                    None
                }
                // 5.0 is a whole number too (JSON does not tell them apart).
                Some(v) => match v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                        .map(|f| f as u64)
                }) {
                    Some(n) if (min..=max).contains(&n) => Some(n),
                    _ => {
                        errors.push(FieldError::new(
                            format!("/{field}"),
                            format!("must be a whole number from {min} to {max}"),
                        ));
                        None
                    }
                },
            }
        };
        let steps = int("steps", 1, MAX_STEPS, true);
        let step_ms = int("step_ms", 0, MAX_STEP_MS, true);
        let fail_at = int("fail_at", 1, MAX_STEPS, false);
        let ignore_cancel = match obj.get("ignore_cancel") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(FieldError::new("/ignore_cancel", "must be true or false"));
                false
            }
        };
        if let (Some(steps), Some(at)) = (steps, fail_at) {
            if at > steps {
                errors.push(FieldError::new(
                    "/fail_at",
                    format!("must be at most steps ({steps})"),
                ));
            }
        }
        match (steps, step_ms) {
            (Some(steps), Some(step_ms)) if errors.is_empty() => Ok(DemoInput {
                steps,
                step_ms,
                fail_at,
                ignore_cancel,
            }),
            _ => Err(errors),
        }
    }
}

// How many steps each demo job has run in this process, so a test (or a curious
// operator with a debugger) can see that a cancelled handler really stopped.
// Bounded: cleared when it grows past STEP_LOG_LIMIT jobs.
static STEPS_RUN: Mutex<Option<HashMap<JobId, u64>>> = Mutex::new(None);
const STEP_LOG_LIMIT: usize = 10_000;

/// Steps the demo handler has run for `id` in this process, over all attempts.
pub fn steps_run(id: JobId) -> u64 {
    STEPS_RUN
        .lock()
        .expect("steps log poisoned")
        .as_ref()
        .and_then(|m| m.get(&id).copied())
        .unwrap_or(0)
}

fn count_step(id: JobId) {
    let mut guard = STEPS_RUN.lock().expect("steps log poisoned");
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= STEP_LOG_LIMIT && !map.contains_key(&id) {
        map.clear();
    }
    *map.entry(id).or_insert(0) += 1;
}

#[async_trait]
impl JobKind for Demo {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn validate(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        DemoInput::parse(input).map(|_| ())
    }

    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        let input = DemoInput::parse(&ctx.input).map_err(|errs| {
            JobFailure::permanent("bad_input", format!("demo input is invalid: {errs:?}"))
        })?;
        for step in 1..=input.steps {
            let pause = tokio::time::sleep(Duration::from_millis(input.step_ms));
            if input.ignore_cancel {
                pause.await;
            } else {
                tokio::select! {
                    _ = pause => {}
                    _ = ctx.cancelled() => return Err(JobFailure::cancelled()),
                }
            }
            count_step(ctx.job_id);
            if input.fail_at == Some(step) {
                return Err(JobFailure::retryable(
                    "demo_failure",
                    format!("demo failed at step {step} as asked by fail_at"),
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_input() {
        let d = DemoInput::parse(&json!({"steps": 3, "step_ms": 0, "fail_at": 2})).unwrap();
        assert_eq!(d.steps, 3);
        assert_eq!(d.fail_at, Some(2));
        assert!(!d.ignore_cancel);
    }

    #[test]
    fn out_of_range_and_missing_values_are_named() {
        let errs = DemoInput::parse(&json!({"steps": 0, "step_ms": 60001})).unwrap_err();
        let p: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(p, ["/steps", "/step_ms"]);
        let errs = DemoInput::parse(&json!({"steps": 10001})).unwrap_err();
        let p: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(p, ["/steps", "/step_ms"]);
        let errs = DemoInput::parse(&json!({"steps": 2, "step_ms": 1, "fail_at": 3})).unwrap_err();
        assert_eq!(errs[0].pointer, "/fail_at");
        assert!(DemoInput::parse(&json!({"steps": "5", "step_ms": 1})).is_err());
        assert!(DemoInput::parse(&json!({"steps": 1.5, "step_ms": 1})).is_err());
        assert_eq!(
            DemoInput::parse(&json!({"steps": 2.0, "step_ms": 0}))
                .unwrap()
                .steps,
            2
        );
        assert!(DemoInput::parse(&json!([])).is_err());
    }
}
