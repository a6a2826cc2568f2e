//! `JsonBody<T>`: a JSON request body read with a size limit and kept as a
//! `serde_json::Value`, so validation can name every bad field (422 with JSON
//! pointers) instead of stopping at the first serde error. `T` only describes
//! the body in the OpenAPI document.

use std::marker::PhantomData;

use poem::{Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use super::error::ApiError;

/// Deepest nesting of arrays and objects a body may have.
pub const MAX_DEPTH: usize = 64;

/// How deeply `bytes` nest `[` and `{`, ignoring brackets inside strings. Run
/// before parsing, so a hostile document is refused cheaply, and with a 422
/// rather than the parser's own recursion limit.
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The request body limit, put in the request's data by the app.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct JsonBody<T> {
    pub value: Value,
    _schema: PhantomData<T>,
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    // Any content type is read as JSON: `curl -d` sends form-urlencoded by
    // default, and refusing that would only annoy.
    fn check_content_type(_content_type: &str) -> bool {
        true
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(1024 * 1024);
        let declared = request
            .header(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge { limit }.into());
        }
        let bytes = body
            .take()?
            .into_bytes_limit(limit)
            .await
            .map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => ApiError::PayloadTooLarge { limit },
                other => ApiError::BadRequest {
                    code: "unreadable_body",
                    detail: format!("the request body could not be read: {other}"),
                },
            })?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest {
                code: "malformed_json",
                detail: "the request body is empty; send a JSON object".to_owned(),
            }
            .into());
        }
        if nesting_depth(&bytes) > MAX_DEPTH {
            return Err(ApiError::Invalid {
                code: "too_deeply_nested",
                detail: format!(
                    "the body nests arrays and objects more than {MAX_DEPTH} levels deep"
                ),
                errors: vec![crate::domain::FieldError::new(
                    "",
                    format!("nested more than {MAX_DEPTH} levels deep"),
                )],
            }
            .into());
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
            code: "malformed_json",
            detail: format!("the request body is not valid JSON: {e}"),
        })?;
        Ok(JsonBody {
            value,
            _schema: PhantomData,
        })
    }
}

impl<'a, T: Type> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        <Self as ParsePayload>::from_request(request, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(nesting_depth(br#"{"a": [1, {"b": 2}]}"#), 3);
        assert_eq!(nesting_depth(br#"{"a": "[[[[{{{{\"]]"}"#), 1);
        assert_eq!(nesting_depth(b"1"), 0);
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(nesting_depth(deep.as_bytes()), 65);
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::super::{nesting_depth, MAX_DEPTH};

        /// Text that tries to confuse a scanner: brackets, quotes and
        /// backslashes inside strings, and some non-ASCII.
        fn tricky_text() -> impl Strategy<Value = String> {
            r#"[\\\[\]{}":,a\x{e9}\x{1F600} \n\t]{0,12}"#
        }

        /// Any JSON value, up to ~70 levels deep (past `MAX_DEPTH`).
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                tricky_text().prop_map(Value::String),
            ];
            leaf.prop_recursive(72, 200, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((tricky_text(), inner), 0..4)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        /// Arrays and objects nested in each other, as the tree says.
        fn depth(v: &Value) -> usize {
            match v {
                Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }

        /// `depth` levels, each an array or an object holding the next.
        fn nested(shape: &[bool], inner: Value) -> Value {
            shape.iter().rev().fold(inner, |v, &object| {
                if object {
                    serde_json::json!({ "[{\"": v })
                } else {
                    Value::Array(vec![Value::String("]}\\".to_owned()), v])
                }
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// The guard counts exactly what a parser would nest, however
            /// the document is written.
            #[test]
            fn the_guard_measures_the_depth_of_any_json(v in json(), pretty in any::<bool>()) {
                let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
                prop_assert_eq!(nesting_depth(&text), depth(&v));
            }

            /// Around the limit, whatever mix of arrays and objects: the
            /// guard lets through exactly `MAX_DEPTH` levels.
            #[test]
            fn the_guard_refuses_exactly_what_nests_too_deep(
                shape in prop::collection::vec(any::<bool>(), MAX_DEPTH - 2..MAX_DEPTH + 3),
                inner in prop_oneof![Just(Value::Null), tricky_text().prop_map(Value::String)],
            ) {
                let v = nested(&shape, inner);
                let text = serde_json::to_vec(&v).unwrap();
                prop_assert_eq!(nesting_depth(&text) > MAX_DEPTH, shape.len() > MAX_DEPTH);
            }

            /// Nothing that passes the guard makes the parser recurse past
            /// it: whatever the bytes, a document that parses is no deeper
            /// than the guard says.
            #[test]
            fn no_document_parses_deeper_than_the_guard_says(bytes in prop::collection::vec(
                prop::sample::select(b"[]{}\"\\:,1 ".to_vec()), 0..200)
            ) {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    prop_assert_eq!(nesting_depth(&bytes), depth(&v));
                }
            }
        }
    }
}
