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
}
