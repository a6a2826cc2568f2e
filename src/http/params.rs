//! Parameters that the handler parses itself, so a bad one gets an answer
//! that says what to send (`bad_last_event_id`, `bad_cursor`), while the
//! OpenAPI document still says exactly which values are accepted: a client
//! generated from it, or a fuzzer, sends only those.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};

/// Defines a parameter type that keeps the raw string and whose schema is
/// `$schema` (a `fn() -> MetaSchema`).
macro_rules! raw_param {
    ($(#[$doc:meta])* $ty:ident, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty(pub String);

        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = String;
            type RawElementValueType = String;

            fn name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema()))
            }

            fn as_raw_value(&self) -> Option<&String> {
                Some(&self.0)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromParameter for $ty {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                Ok($ty(value.to_owned()))
            }
        }
    };
}

raw_param!(
    /// A job event's id (`Last-Event-ID`, `after`, `last_event_id` on a
    /// job's events): a non-negative integer (`EventSeq`).
    EventIdParam,
    || MetaSchema {
        minimum: Some(0.0),
        maximum: Some(crate::domain::EventSeq::MAX as f64),
        ..MetaSchema::new_with_format("integer", "int64")
    }
);

raw_param!(
    /// A job event's id as `Last-Event-ID` carries it: digits, or empty
    /// (an EventSource whose last event id is empty; the same as none).
    EventIdHeader,
    || MetaSchema {
        pattern: Some(EVENT_ID_HEADER_PATTERN.to_owned()),
        ..MetaSchema::new("string")
    }
);

raw_param!(
    /// A feed cursor as `Last-Event-ID` carries it, or empty (as none).
    FeedCursorHeader,
    || MetaSchema {
        pattern: Some(FEED_CURSOR_HEADER_PATTERN.to_owned()),
        ..MetaSchema::new("string")
    }
);

raw_param!(
    /// A feed cursor (`after`, `last_event_id` on the feed): an event's `id`
    /// there, opaque to clients.
    FeedCursorParam,
    || MetaSchema {
        pattern: Some(FEED_CURSOR_PATTERN.to_owned()),
        ..MetaSchema::new("string")
    }
);

raw_param!(
    /// A list's `cursor`: a page's `next_cursor`, or empty for the first page.
    ListCursorParam,
    || MetaSchema {
        pattern: Some(LIST_CURSOR_PATTERN.to_owned()),
        ..MetaSchema::new("string")
    }
);

/// What a feed cursor looks like (`FeedCursor`'s text: two numbers).
pub const FEED_CURSOR_PATTERN: &str = "^[0-9]{1,18}-[0-9]{1,18}$";

/// A feed cursor in `Last-Event-ID`, or empty.
const FEED_CURSOR_HEADER_PATTERN: &str = "^([0-9]{1,18}-[0-9]{1,18})?$";

/// A job event id in `Last-Event-ID`: at most 15 digits, so at most
/// `EventSeq::MAX`; or empty.
const EVENT_ID_HEADER_PATTERN: &str = "^([0-9]{1,15})?$";

/// What a list cursor looks like: the last job's id, 32 hex digits; or
/// nothing, for the first page.
pub const LIST_CURSOR_PATTERN: &str = "^([0-9a-fA-F]{32})?$";
