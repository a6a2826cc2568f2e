//! The JSON pages of the event log (`Accept: application/json` on
//! `GET /v1/jobs/{id}/events` and `GET /v1/events`): their DTOs, and the
//! event data as stored, described by the same schemas as the streams' `data:`.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::Object;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::events::JobEventDto;
use crate::store::{FeedEvent, StoredEvent};

/// A page of a job's event log.
#[derive(Debug, Clone, Object)]
#[oai(rename = "JobEventPage")]
pub struct JobEventPageDto {
    /// The events after the given id, oldest first, at most `limit`: the
    /// same ids, names and data as the stream's.
    pub events: Vec<JobLogEventDto>,
    /// The last event's id, or the given id when `events` is empty: send it
    /// as `after` for the next page.
    pub last_event_id: i64,
    /// The job has ended and nothing follows this page: stop asking.
    pub terminal: bool,
}

/// One event of a job's log, as the stream sends it (`id:`, `event:`, `data:`).
#[derive(Debug, Clone, Object)]
#[oai(rename = "JobLogEvent")]
pub struct JobLogEventDto {
    /// The job's gapless sequence number.
    pub id: i64,
    /// status, progress, item, result, failed or cancelled.
    pub event: String,
    pub data: EventData,
}

/// A page of the multiplexed feed.
#[derive(Debug, Clone, Object)]
#[oai(rename = "FeedEventPage")]
pub struct FeedEventPageDto {
    /// The feed's events after the given cursor, in feed order, at most `limit`.
    pub events: Vec<FeedLogEventDto>,
    /// Where this page ends: after its last event, or after later events
    /// that the filters leave out; when `events` is empty, the given cursor
    /// (or the feed's "now" when none was given) or past the left-out events
    /// read since. Send it as `after` next.
    pub last_event_id: String,
    /// Always false: the feed does not end.
    pub terminal: bool,
}

/// One feed event, as the feed's stream sends it.
#[derive(Debug, Clone, Object)]
#[oai(rename = "FeedLogEvent")]
pub struct FeedLogEventDto {
    /// The feed cursor (opaque).
    pub id: String,
    /// The job event's name.
    pub event: String,
    pub data: FeedEventData,
}

impl TryFrom<&StoredEvent> for JobLogEventDto {
    type Error = ApiError;
    fn try_from(ev: &StoredEvent) -> Result<Self, ApiError> {
        Ok(JobLogEventDto {
            id: ev.seq.0,
            event: ev.kind.as_str().to_owned(),
            data: EventData(stored_object(ev)?.into()),
        })
    }
}

impl TryFrom<&FeedEvent> for FeedLogEventDto {
    type Error = ApiError;
    /// The data is the job event's with `job_id` and `seq` added, as in the
    /// feed's stream (`crate::feed::frame`).
    fn try_from(ev: &FeedEvent) -> Result<Self, ApiError> {
        let mut data = Map::new();
        data.insert("job_id".into(), ev.job_id.to_string().into());
        data.insert("seq".into(), ev.event.seq.0.into());
        data.extend(stored_object(&ev.event)?);
        Ok(FeedLogEventDto {
            id: ev.cursor.to_string(),
            event: ev.event.kind.as_str().to_owned(),
            data: FeedEventData(data.into()),
        })
    }
}

/// A stored event's data: always a JSON object, written by herald itself.
fn stored_object(ev: &StoredEvent) -> Result<Map<String, Value>, ApiError> {
    serde_json::from_str(&ev.data).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "stored data of event {} is not a JSON object: {e}",
            ev.seq
        ))
    })
}

/// Implements poem-openapi's traits for a wrapper of a JSON value whose
/// schema is `$schema` (registered by `$register`): the value is written as
/// it is, so a page carries exactly what the store holds.
macro_rules! json_with_schema {
    ($ty:ident, $schema:expr, $register:expr) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Value;
            type RawElementValueType = Value;

            fn name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn schema_ref() -> MetaSchemaRef {
                $schema
            }

            fn register(registry: &mut Registry) {
                $register(registry)
            }

            fn as_raw_value(&self) -> Option<&Value> {
                Some(&self.0)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                Some(self.0.clone())
            }
        }

        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                Ok($ty(value.unwrap_or_default()))
            }
        }
    };
}

/// A job event's data, as the stream's `data:` carries it (see JobEvent).
#[derive(Debug, Clone, PartialEq)]
pub struct EventData(pub Value);

json_with_schema!(EventData, JobEventDto::schema_ref(), JobEventDto::register);

/// A feed event's data: the job event's (see JobEvent) plus `job_id` and `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEventData(pub Value);

json_with_schema!(
    FeedEventData,
    MetaSchemaRef::Reference("FeedEventData".into()),
    register_feed_data
);

/// The `FeedEventData` schema: `allOf: [JobEvent, {job_id, seq}]`.
fn register_feed_data(registry: &mut Registry) {
    JobEventDto::register(registry);
    registry.create_schema::<FeedEventData, _>("FeedEventData".into(), |_| {
        let field = |ty, format, description| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                description: Some(description),
                ..MetaSchema::new_with_format(ty, format)
            }))
        };
        let ids = MetaSchema {
            required: vec!["job_id", "seq"],
            properties: vec![
                (
                    "job_id",
                    field("string", "uuid", "The job the event belongs to."),
                ),
                (
                    "seq",
                    field(
                        "integer",
                        "int64",
                        "The event's id in the job's own stream.",
                    ),
                ),
            ],
            ..MetaSchema::new("object")
        };
        MetaSchema {
            description: Some("A feed event's data: the job event's data plus `job_id` and `seq`."),
            all_of: vec![
                JobEventDto::schema_ref(),
                MetaSchemaRef::Inline(Box::new(ids)),
            ],
            ..MetaSchema::ANY
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, EventSeq, JobId, Timestamp};
    use crate::store::FeedCursor;

    #[test]
    fn a_page_carries_the_stored_numbers_exactly() {
        // The stream sends the stored text; a page parses and writes it
        // again, and must not move a float by one unit in the last place.
        let ev = StoredEvent {
            seq: EventSeq(1),
            kind: EventKind::Progress,
            data: r#"{"percent":91.66666666666667,"at":"x"}"#.to_owned(),
            at: Timestamp(0),
        };
        let page = JobLogEventDto::try_from(&ev).unwrap();
        assert_eq!(page.data.0["percent"].to_string(), "91.66666666666667");
    }

    #[test]
    fn feed_data_is_the_job_events_plus_job_id_and_seq() {
        let ev = FeedEvent {
            cursor: FeedCursor { tx: 0, id: 9 },
            job_id: JobId(uuid::Uuid::nil()),
            event: StoredEvent {
                seq: EventSeq(3),
                kind: EventKind::Progress,
                data: r#"{"percent":50.0,"at":"x"}"#.to_owned(),
                at: Timestamp(0),
            },
        };
        let dto = FeedLogEventDto::try_from(&ev).unwrap();
        assert_eq!(dto.id, "0-9");
        assert_eq!(dto.event, "progress");
        assert_eq!(
            dto.data.0,
            serde_json::json!({"job_id": "00000000-0000-0000-0000-000000000000",
                "seq": 3, "percent": 50.0, "at": "x"})
        );
        let job = JobLogEventDto::try_from(&ev.event).unwrap();
        assert_eq!(
            (job.id, job.data.0),
            (3, serde_json::json!({"percent": 50.0, "at": "x"}))
        );
    }
}
