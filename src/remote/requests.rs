//! The worker API's request bodies, checked field by field (422 with a JSON
//! pointer per bad field, like a submission).

use serde_json::{Map, Value};

use crate::domain::fields::{boolean, object, required, unknown_fields, whole_number};
use crate::domain::{FieldError, JobError, Progress, Report};

/// `POST /v1/worker/claim`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    pub kinds: Vec<String>,
    pub worker_id: String,
    pub max_jobs: usize,
    pub wait_secs: u64,
}

/// The longest `worker_id`, and the longest error code or message kept.
const MAX_NAME: usize = 200;
const MAX_MESSAGE: usize = 4000;

fn string<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Some(s),
        Some(_) => {
            errors.push(FieldError::new(
                format!("/{field}"),
                format!("must be a non-empty string of at most {max} characters"),
            ));
            None
        }
    }
}

impl ClaimRequest {
    /// Checks the body; `remote_kinds` are the kinds a claim may name.
    pub fn parse(body: &Value, remote_kinds: &[String]) -> Result<ClaimRequest, Vec<FieldError>> {
        let obj = object(
            body,
            "",
            r#"{"kinds": ["crew_plan"], "worker_id": "py-1", "max_jobs": 1, "wait_secs": 25}"#,
        )?;
        let mut errors = Vec::new();
        unknown_fields(
            obj,
            &["kinds", "worker_id", "max_jobs", "wait_secs"],
            "",
            &mut errors,
        );
        let mut kinds = Vec::new();
        if required(obj, "kinds", "", &mut errors) {
            match obj.get("kinds") {
                Some(Value::Array(list)) if !list.is_empty() && list.len() <= 100 => {
                    for (i, k) in list.iter().enumerate() {
                        match k.as_str() {
                            Some(k) if remote_kinds.iter().any(|r| r == k) => {
                                if !kinds.iter().any(|have: &String| have == k) {
                                    kinds.push(k.to_owned());
                                }
                            }
                            Some(k) => errors.push(FieldError::new(
                                format!("/kinds/{i}"),
                                format!(
                                    "`{k}` is not a remote kind; remote kinds (HERALD_REMOTE_KINDS): {}",
                                    if remote_kinds.is_empty() { "none".to_owned() } else { remote_kinds.join(", ") }
                                ),
                            )),
                            None => errors.push(FieldError::new(
                                format!("/kinds/{i}"),
                                "must be a kind's name",
                            )),
                        }
                    }
                }
                _ => errors.push(FieldError::new(
                    "/kinds",
                    "must be a list of 1 to 100 remote kinds' names",
                )),
            }
        }
        let worker_id = if required(obj, "worker_id", "", &mut errors) {
            string(obj, "worker_id", MAX_NAME, &mut errors)
        } else {
            None
        };
        let max_jobs = whole_number(obj, "max_jobs", 1..=100, "", &mut errors).unwrap_or(1);
        let wait_secs = whole_number(obj, "wait_secs", 0..=60, "", &mut errors).unwrap_or(25);
        match worker_id {
            Some(w) if errors.is_empty() => Ok(ClaimRequest {
                kinds,
                worker_id: w.to_owned(),
                max_jobs: max_jobs as usize,
                wait_secs: wait_secs as u64,
            }),
            _ => Err(errors),
        }
    }
}

/// A report's body: its lease, and what it reports. `name` is the report's
/// path segment (`heartbeat`, `progress`, …); `max_item_bytes` bounds one
/// item's JSON.
pub fn parse_report(
    name: &str,
    body: &Value,
    max_item_bytes: usize,
) -> Result<(String, Report, bool), Vec<FieldError>> {
    let obj = object(body, "", r#"{"lease": "…"}"#)?;
    let mut errors = Vec::new();
    let allowed: &[&str] = match name {
        "progress" => &["lease", "percent", "stage", "message", "data", "keep"],
        "items" => &["lease", "offset", "items"],
        "checkpoint" => &["lease", "checkpoint"],
        "complete" => &["lease", "result"],
        "fail" => &["lease", "error", "retryable"],
        _ => &["lease"],
    };
    unknown_fields(obj, allowed, "", &mut errors);
    let lease = if required(obj, "lease", "", &mut errors) {
        string(obj, "lease", MAX_NAME, &mut errors)
    } else {
        None
    };
    let mut keep = false;
    let report = match name {
        "heartbeat" => Some(Report::Heartbeat),
        "cancelled" => Some(Report::Cancelled),
        "release" => Some(Report::Release),
        "progress" => {
            let percent = match obj.get("percent") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_f64().filter(|p| (0.0..=100.0).contains(p)) {
                    Some(p) => Some(p),
                    None => {
                        errors.push(FieldError::new(
                            "/percent",
                            "must be a number from 0 to 100",
                        ));
                        None
                    }
                },
            };
            let stage = string(obj, "stage", MAX_NAME, &mut errors).map(str::to_owned);
            let message = string(obj, "message", MAX_MESSAGE, &mut errors).map(str::to_owned);
            let data = obj.get("data").filter(|v| !v.is_null()).cloned();
            keep = boolean(obj, "keep", "", &mut errors).unwrap_or(false);
            Progress::new(percent, stage, message, data)
                .ok()
                .map(Report::Progress)
        }
        "items" => {
            let offset = if required(obj, "offset", "", &mut errors) {
                whole_number(obj, "offset", 0..=i64::MAX / 2, "", &mut errors)
            } else {
                None
            };
            let mut items = Vec::new();
            if required(obj, "items", "", &mut errors) {
                match obj.get("items") {
                    Some(Value::Array(list)) => {
                        for (i, item) in list.iter().enumerate() {
                            let text = item.to_string();
                            if text.len() > max_item_bytes {
                                errors.push(FieldError::new(
                                    format!("/items/{i}"),
                                    format!(
                                        "the item is {} bytes of JSON, over the limit of {max_item_bytes} (HERALD_MAX_ITEM_BYTES)",
                                        text.len()
                                    ),
                                ));
                            }
                            items.push(text);
                        }
                    }
                    _ => errors.push(FieldError::new("/items", "must be a list of JSON values")),
                }
            }
            offset.map(|offset| Report::Items { offset, items })
        }
        "checkpoint" => {
            if required(obj, "checkpoint", "", &mut errors) {
                obj.get("checkpoint")
                    .map(|c| Report::Checkpoint(c.to_string()))
            } else {
                None
            }
        }
        "complete" => obj
            .get("result")
            .map(|r| Report::Complete(r.clone()))
            .or_else(|| {
                errors.push(FieldError::new("/result", "is required (it may be null)"));
                None
            }),
        "fail" => {
            let error = if required(obj, "error", "", &mut errors) {
                parse_error(obj.get("error").expect("checked"), &mut errors)
            } else {
                None
            };
            let retryable = boolean(obj, "retryable", "", &mut errors).unwrap_or(true);
            error.map(|error| Report::Fail { error, retryable })
        }
        other => {
            errors.push(FieldError::new("", format!("there is no report `{other}`")));
            None
        }
    };
    match (lease, report) {
        (Some(lease), Some(report)) if errors.is_empty() => Ok((lease.to_owned(), report, keep)),
        _ => Err(errors),
    }
}

fn parse_error(v: &Value, errors: &mut Vec<FieldError>) -> Option<JobError> {
    let Some(obj) = v.as_object() else {
        errors.push(FieldError::new(
            "/error",
            r#"must be an object such as {"code": "downstream_down", "message": "…"}"#,
        ));
        return None;
    };
    let before = errors.len();
    unknown_fields(obj, &["code", "message"], "/error", errors);
    let code = match obj.get("code") {
        Some(Value::String(c))
            if !c.is_empty()
                && c.len() <= 64
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_') =>
        {
            Some(c.clone())
        }
        _ => {
            errors.push(FieldError::new(
                "/error/code",
                "must be a snake_case code of 1 to 64 characters (a-z, 0-9, _)",
            ));
            None
        }
    };
    let message = match obj.get("message") {
        Some(Value::String(m)) if m.chars().count() <= MAX_MESSAGE => Some(m.clone()),
        _ => {
            errors.push(FieldError::new(
                "/error/message",
                format!("must be a string of at most {MAX_MESSAGE} characters"),
            ));
            None
        }
    };
    match (code, message) {
        (Some(code), Some(message)) if errors.len() == before => Some(JobError { code, message }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pointers(r: Result<impl std::fmt::Debug, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn a_claim_names_remote_kinds_within_its_ranges() {
        let remote = vec!["crew_plan".to_owned()];
        let ok = ClaimRequest::parse(
            &json!({"kinds": ["crew_plan"], "worker_id": "py-1"}),
            &remote,
        )
        .unwrap();
        assert_eq!((ok.max_jobs, ok.wait_secs), (1, 25));
        let bad = ClaimRequest::parse(
            &json!({"kinds": ["crew_plan", "demo"], "worker_id": "py-1", "max_jobs": 101, "wait_secs": 61}),
            &remote,
        );
        assert_eq!(pointers(bad), ["/kinds/1", "/max_jobs", "/wait_secs"]);
        assert_eq!(
            pointers(ClaimRequest::parse(&json!({"kinds": []}), &remote)),
            ["/kinds", "/worker_id"]
        );
    }

    #[test]
    fn reports_check_their_fields() {
        let (lease, r, keep) = parse_report(
            "progress",
            &json!({"lease": "l", "percent": 50, "keep": true}),
            10,
        )
        .unwrap();
        assert_eq!(lease, "l");
        assert!(keep);
        assert!(matches!(r, Report::Progress(p) if p.percent == Some(50.0)));
        assert_eq!(
            pointers(parse_report(
                "progress",
                &json!({"lease": "l", "percent": 101}),
                10
            )),
            ["/percent"]
        );
        assert_eq!(
            pointers(parse_report(
                "items",
                &json!({"lease": "l", "offset": 0, "items": ["0123456789"]}),
                10
            )),
            ["/items/0"]
        );
        assert_eq!(
            pointers(parse_report(
                "fail",
                &json!({"lease": "l", "error": {"code": "Bad Code"}}),
                10
            )),
            ["/error/code", "/error/message"]
        );
        assert_eq!(
            pointers(parse_report("heartbeat", &json!({"lease": ""}), 10)),
            ["/lease"]
        );
        assert!(matches!(
            parse_report("complete", &json!({"lease": "l", "result": null}), 10),
            Ok((_, Report::Complete(Value::Null), _))
        ));
    }
}
