//! The data of herald's own events (status, progress, result, failed,
//! cancelled), written straight from the job's fields.

use serde::Serialize;
use serde_json::Value;

use super::{JobError, JobStatus, Timestamp};

pub(super) fn status_data(
    status: JobStatus,
    attempt: i32,
    at: Timestamp,
    error: Option<&JobError>,
) -> String {
    event_data(&StatusData {
        at: at.to_rfc3339(),
        attempt,
        // A retry says why the previous attempt failed, so a watcher need not guess.
        error,
        status: status.as_str(),
    })
}

/// The data of herald's own events, written straight from the job's fields
/// (a `json!` map copied the result and built a tree for every event).
/// Fields go in key order, as JSON maps write them, so the bytes are the
/// ones stored before.
pub(super) fn event_data(data: &impl Serialize) -> String {
    serde_json::to_string(data).expect("event data serializes")
}

#[derive(Serialize)]
pub(super) struct StatusData<'a> {
    pub(super) at: String,
    pub(super) attempt: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<&'a JobError>,
    pub(super) status: &'a str,
}

#[derive(Serialize)]
pub(super) struct ProgressData<'a> {
    pub(super) at: String,
    pub(super) data: &'a Option<Value>,
    pub(super) message: &'a Option<String>,
    pub(super) percent: Option<f64>,
    pub(super) stage: &'a Option<String>,
}

#[derive(Serialize)]
pub(super) struct ResultData<'a> {
    pub(super) at: String,
    pub(super) result: &'a Value,
}

#[derive(Serialize)]
pub(super) struct FailedData<'a> {
    pub(super) at: String,
    pub(super) attempt: i32,
    pub(super) error: &'a JobError,
}

#[derive(Serialize)]
pub(super) struct CancelledData<'a> {
    pub(super) at: String,
    pub(super) reason: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Progress;
    use serde_json::json;

    /// The event data is byte for byte what a `json!` map of the same
    /// fields writes (what herald stored before it wrote them directly).
    #[test]
    fn event_data_is_the_json_map_of_its_fields() {
        let at = Timestamp(1_795_255_200_123_456);
        let err = JobError::new("boom", "it \"broke\"");
        let map = |v: Value| v.to_string();
        assert_eq!(
            status_data(JobStatus::Queued, 2, at, Some(&err)),
            map(json!({"status": "queued", "attempt": 2, "at": at.to_rfc3339(), "error": err}))
        );
        assert_eq!(
            status_data(JobStatus::Running, 1, at, None),
            map(json!({"status": "running", "attempt": 1, "at": at.to_rfc3339()}))
        );
        for p in [
            Progress {
                percent: Some(12.5),
                stage: Some("fetch".into()),
                message: Some("ünïcode \n".into()),
                data: Some(json!({"z": [1, {"b": null, "a": 0.1}], "a": "x"})),
            },
            Progress {
                percent: None,
                stage: None,
                message: None,
                data: None,
            },
        ] {
            let data = event_data(&ProgressData {
                at: at.to_rfc3339(),
                data: &p.data,
                message: &p.message,
                percent: p.percent,
                stage: &p.stage,
            });
            let old = json!({"percent": p.percent, "stage": p.stage, "message": p.message,
                "data": p.data, "at": at.to_rfc3339()});
            assert_eq!(data, map(old));
        }
        let result = json!({"rows": [3, 2, 1], "nested": {"y": true, "x": null}});
        assert_eq!(
            event_data(&ResultData {
                at: at.to_rfc3339(),
                result: &result
            }),
            map(json!({"result": result, "at": at.to_rfc3339()}))
        );
        assert_eq!(
            event_data(&FailedData {
                at: at.to_rfc3339(),
                attempt: 3,
                error: &err
            }),
            map(json!({"error": err, "attempt": 3, "at": at.to_rfc3339()}))
        );
        assert_eq!(
            event_data(&CancelledData {
                at: at.to_rfc3339(),
                reason: "asked"
            }),
            map(json!({"reason": "asked", "at": at.to_rfc3339()}))
        );
    }
}
