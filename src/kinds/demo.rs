//! `demo`: `{steps, step_ms, fail_at?, ignore_cancel?}`. Reports `steps` progress
//! events `step_ms` apart, fails at step `fail_at` when given, and answers
//! `{"steps": steps}`. For trying the service and for tests.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::domain::{fields, FieldError};
use crate::kinds::{JobContext, JobFailure, JobKind};

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
        let obj = fields::object(input, "", "{\"steps\": 5, \"step_ms\": 200}")?;
        let mut errors = Vec::new();
        fields::unknown_fields(
            obj,
            &["steps", "step_ms", "fail_at", "ignore_cancel"],
            "",
            &mut errors,
        );
        let mut int = |field: &str, max: u64, min: u64| {
            if fields::required(obj, field, "", &mut errors) {
                fields::whole_number(obj, field, min as i64..=max as i64, "", &mut errors)
                    .map(|n| n as u64)
            } else {
                None
            }
        };
        let steps = int("steps", MAX_STEPS, 1);
        let step_ms = int("step_ms", MAX_STEP_MS, 0);
        let fail_at = fields::whole_number(obj, "fail_at", 1..=MAX_STEPS as i64, "", &mut errors)
            .map(|n| n as u64);
        let ignore_cancel = fields::boolean(obj, "ignore_cancel", "", &mut errors).unwrap_or(false);
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
