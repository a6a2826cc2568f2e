//! Parameters that the handler parses itself, so a bad one gets an answer
//! that says what to send (`bad_last_event_id`, `bad_cursor`), while the
//! OpenAPI document still says exactly which values are accepted: a client
//! generated from it, or a fuzzer, sends only those.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::JobId;

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

/// A page's `next_cursor`: its last job's id, 32 hex digits.
pub fn next_list_cursor(last: JobId) -> String {
    last.0.simple().to_string()
}

/// The job a list's `cursor` names (the previous page's last one), or none
/// for the first page. Only the form `next_cursor` has (32 hex digits), as
/// documented: a hyphenated or braced id is refused rather than guessed at.
pub fn list_cursor(cursor: Option<&str>) -> Result<Option<JobId>, ApiError> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => Uuid::try_parse(c)
            .ok()
            .filter(|_| c.len() == 32)
            .map(|id| Some(JobId(id)))
            .ok_or_else(|| ApiError::BadRequest {
                code: "bad_cursor",
                detail: "`cursor` is not a cursor from this API; pass a `next_cursor` exactly as returned, or omit it for the first page".to_owned(),
            }),
    }
}

/// Property tests of what a client sends to resume or page: job event ids,
/// feed cursors and list cursors. The OpenAPI patterns above are the
/// oracle for "what a client may send", the formatting the server uses for
/// "what it sends back".
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use regex::Regex;

    use super::super::events::resume_after;
    use super::*;
    use crate::domain::EventSeq;
    use crate::store::FeedCursor;

    /// A pattern above as a generator: proptest's regex strategy takes no anchors.
    fn matching(pattern: &str) -> impl Strategy<Value = String> {
        proptest::string::string_regex(pattern.trim_start_matches('^').trim_end_matches('$'))
            .expect("a pattern proptest can generate from")
    }

    /// Text close to what the parsers accept (digits, signs, separators,
    /// spaces, hex letters), or any text at all.
    fn near_miss() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-fA-F+ .{}_x\u{e9}\u{3000}-]{0,40}",
            "[0-9-]{0,40}",
            any::<String>(),
        ]
    }

    /// One way to spoil a well-formed value: a character that has no place
    /// in it, put anywhere, or a sign or decimal in front or behind.
    #[derive(Debug, Clone)]
    enum Spoil {
        Insert(usize, char),
        Prefix(&'static str),
        Suffix(&'static str),
    }

    fn spoil(forbidden: &'static str) -> impl Strategy<Value = Spoil> {
        let chars: Vec<char> = forbidden.chars().collect();
        prop_oneof![
            (any::<usize>(), proptest::sample::select(chars))
                .prop_map(|(i, c)| Spoil::Insert(i, c)),
            proptest::sample::select(vec!["-", "+", "0x", "\u{e9}", "1e", "{"])
                .prop_map(Spoil::Prefix),
            proptest::sample::select(vec![".0", "e3", "x", "-", "/", "}"]).prop_map(Spoil::Suffix),
        ]
    }

    fn apply(s: &str, how: &Spoil) -> String {
        match how {
            Spoil::Insert(i, c) => {
                // Only character boundaries: the inputs here are ASCII.
                let at = i % (s.len() + 1);
                format!("{}{c}{}", &s[..at], &s[at..])
            }
            Spoil::Prefix(p) => format!("{p}{s}"),
            Spoil::Suffix(x) => format!("{s}{x}"),
        }
    }

    proptest! {
        // --- Job event ids (`Last-Event-ID`, `after`, `last_event_id`).

        #[test]
        fn every_event_id_the_server_sends_parses_back(n in 0..=EventSeq::MAX) {
            prop_assert_eq!(EventSeq(n).to_string().parse::<EventSeq>(), Ok(EventSeq(n)));
        }

        #[test]
        fn every_event_id_the_document_allows_is_accepted(s in matching(EVENT_ID_HEADER_PATTERN)) {
            // Empty is "none" in the header, and a number otherwise.
            let resumed = resume_after::<EventSeq>(Some(s.clone()), None, None, "");
            prop_assert!(resumed.is_ok(), "{:?} refused", s);
            prop_assert_eq!(resumed.unwrap().is_none(), s.is_empty());
        }

        #[test]
        fn a_spoiled_event_id_is_refused(
            n in 0..=EventSeq::MAX,
            how in spoil("-+.,eE x/_a\u{e9}\u{0}"),
        ) {
            let bad = apply(&n.to_string(), &how);
            // A space at either end is trimmed (HTTP strips it from headers anyway).
            prop_assume!(bad.trim() != n.to_string());
            prop_assert!(bad.parse::<EventSeq>().is_err(), "{:?} accepted", bad);
        }

        #[test]
        fn an_event_id_past_the_maximum_is_refused(n in (EventSeq::MAX as u128 + 1)..u128::MAX) {
            prop_assert!(n.to_string().parse::<EventSeq>().is_err());
        }

        #[test]
        fn an_accepted_event_id_is_in_range_and_means_its_digits(s in near_miss()) {
            if let Ok(seq) = s.parse::<EventSeq>() {
                prop_assert!((0..=EventSeq::MAX).contains(&seq.0));
                let digits = s.trim().trim_start_matches('0');
                prop_assert_eq!(digits, if seq.0 == 0 { String::new() } else { seq.0.to_string() });
            }
        }

        /// The header wins over `after`, which wins over `last_event_id`; an
        /// empty header is no header; every value given must parse.
        #[test]
        fn resuming_takes_the_first_given_and_refuses_any_bad_one(
            header in proptest::option::of(prop_oneof![Just(String::new()), Just(" ".to_owned()), "[0-9]{1,3}", "x[0-9]"]),
            after in proptest::option::of(prop_oneof!["[0-9]{1,3}", "x[0-9]", Just(String::new())]),
            query in proptest::option::of(prop_oneof!["[0-9]{1,3}", "x[0-9]", Just(String::new())]),
        ) {
            let given = [header.clone().filter(|h| !h.trim().is_empty()), after.clone(), query.clone()];
            let expected: Result<Option<EventSeq>, ()> =
                if given.iter().flatten().any(|v| v.parse::<u64>().is_err()) {
                    Err(())
                } else {
                    Ok(given.iter().flatten().next().map(|v| EventSeq(v.parse().unwrap())))
                };
            let got = resume_after::<EventSeq>(header, after, query, "hint");
            match (&got, &expected) {
                (Err(ApiError::BadRequest { code, .. }), Err(())) => prop_assert_eq!(*code, "bad_last_event_id"),
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "got {:?}, expected {:?}", got.map_err(|e| e.to_string()), expected),
            }
        }

        // --- Feed cursors (the feed's `id:`, `Last-Event-ID`, `after`, `last_event_id`).

        #[test]
        fn every_feed_cursor_the_server_sends_parses_back(tx in 0..=i64::MAX, id in 0..=i64::MAX) {
            let cursor = FeedCursor { tx, id };
            prop_assert_eq!(cursor.to_string().parse::<FeedCursor>(), Ok(cursor));
        }

        #[test]
        fn a_feed_cursor_below_10_to_the_18_has_the_documented_form(tx in 0..1_000_000_000_000_000_000i64, id in 0..1_000_000_000_000_000_000i64) {
            let text = FeedCursor { tx, id }.to_string();
            prop_assert!(Regex::new(FEED_CURSOR_PATTERN).unwrap().is_match(&text), "{}", text);
        }

        #[test]
        fn every_feed_cursor_the_document_allows_is_accepted(s in matching(FEED_CURSOR_PATTERN)) {
            prop_assert!(s.parse::<FeedCursor>().is_ok(), "{:?} refused", s);
        }

        #[test]
        fn a_spoiled_feed_cursor_is_refused(
            tx in 0..=i64::MAX,
            id in 0..=i64::MAX,
            how in spoil("+-.,eE x/_a\u{e9}\u{0}"),
        ) {
            let good = FeedCursor { tx, id }.to_string();
            let bad = apply(&good, &how);
            prop_assert!(bad.parse::<FeedCursor>().is_err(), "{:?} accepted", bad);
        }

        #[test]
        fn an_accepted_feed_cursor_is_never_negative_and_round_trips(s in near_miss()) {
            if let Ok(cursor) = s.parse::<FeedCursor>() {
                prop_assert!(cursor.tx >= 0 && cursor.id >= 0);
                prop_assert_eq!(cursor.to_string().parse::<FeedCursor>(), Ok(cursor));
            }
        }

        // --- List cursors (`GET /v1/jobs?cursor=`).

        #[test]
        fn every_list_cursor_the_server_sends_parses_back(bits in any::<u128>()) {
            let last = JobId(Uuid::from_u128(bits));
            let sent = next_list_cursor(last);
            prop_assert!(Regex::new(LIST_CURSOR_PATTERN).unwrap().is_match(&sent));
            prop_assert_eq!(list_cursor(Some(&sent)).ok(), Some(Some(last)));
            // Hex digits in either case, as the pattern says.
            prop_assert_eq!(list_cursor(Some(&sent.to_uppercase())).ok(), Some(Some(last)));
        }

        /// Exactly the documented form is accepted: a hyphenated, braced or
        /// URN id, or anything else, is a 400 `bad_cursor`.
        #[test]
        fn a_list_cursor_is_accepted_exactly_when_the_document_allows_it(
            s in prop_oneof![
                near_miss(),
                any::<u128>().prop_map(|b| Uuid::from_u128(b).hyphenated().to_string()),
                any::<u128>().prop_map(|b| Uuid::from_u128(b).braced().to_string()),
                any::<u128>().prop_map(|b| Uuid::from_u128(b).urn().to_string()),
                "[0-9a-fA-F]{31,33}",
            ],
        ) {
            let allowed = Regex::new(LIST_CURSOR_PATTERN).unwrap().is_match(&s);
            match list_cursor(Some(&s)) {
                Ok(_) => prop_assert!(allowed, "{:?} accepted", s),
                Err(ApiError::BadRequest { code, .. }) => {
                    prop_assert!(!allowed, "{:?} refused", s);
                    prop_assert_eq!(code, "bad_cursor");
                }
                Err(e) => prop_assert!(false, "{:?}: {}", s, e),
            }
        }
    }
}
