//! A typed input, from JSON and to JSON Schema: serde's errors become field
//! errors with JSON pointers, and the schema is what `GET /v1/kinds` lists
//! and the OpenAPI document embeds.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use crate::domain::FieldError;

/// Reads `input` as a `T`. serde stops at the first error; its pointer names
/// the field: the one that is missing, unknown, or of the wrong type.
pub(crate) fn from_value<T: DeserializeOwned + JsonSchema>(
    input: &Value,
) -> Result<T, Vec<FieldError>> {
    // serde reads a struct from an array too (its fields in order): an
    // input described as an object must be one.
    if !input.is_object() && schema_of::<T>()["type"] == "object" {
        let hint = "must be a JSON object; see GET /v1/kinds for its fields";
        return Err(vec![FieldError::new("", hint)]);
    }
    serde_path_to_error::deserialize(input).map_err(|e| {
        let mut pointer = String::new();
        for segment in e.path().iter() {
            match segment {
                Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                Segment::Map { key } => push_key(&mut pointer, key),
                Segment::Enum { .. } | Segment::Unknown => {}
            }
        }
        let message = e.inner().to_string();
        // A missing field is reported at the object that lacks it; point at
        // the field itself, as a form would.
        if let Some(field) = quoted_after(&message, "missing field `") {
            push_key(&mut pointer, field);
        } else if let Some(field) = quoted_after(&message, "unknown field `") {
            let mut own = String::new();
            push_key(&mut own, field);
            if !pointer.ends_with(&own) {
                pointer.push_str(&own);
            }
        }
        vec![FieldError::new(pointer, message)]
    })
}

fn push_key(pointer: &mut String, key: &str) {
    pointer.push('/');
    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

/// The text between `prefix` and the next backtick, if `message` starts so.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// `T`'s JSON Schema, OpenAPI 3.0 flavour (so it can sit inside the OpenAPI
/// document as it is), every subschema inlined.
pub(crate) fn schema_of<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.meta_schema = None;
            s.inline_subschemas = true;
        })
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Field errors as one sentence, for a stored input that no longer fits.
pub(crate) fn describe(kind: &str, errors: &[FieldError]) -> String {
    let list: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.pointer, e.detail))
        .collect();
    format!("the {kind} input is invalid: {}", list.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        day: String,
        crews: Vec<Inner>,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        hours: u32,
    }

    fn pointer(v: Value) -> String {
        from_value::<Outer>(&v).unwrap_err()[0].pointer.clone()
    }

    #[test]
    fn serde_errors_point_at_their_field() {
        assert_eq!(pointer(json!({"crews": []})), "/day");
        assert_eq!(pointer(json!({"day": 5, "crews": []})), "/day");
        assert_eq!(
            pointer(json!({"day": "d", "crews": [{"hours": 1}, {"hours": "x"}]})),
            "/crews/1/hours"
        );
        assert_eq!(
            pointer(json!({"day": "d", "crews": [{}]})),
            "/crews/0/hours"
        );
        assert_eq!(pointer(json!({"day": "d", "crews": [], "a/b": 1})), "/a~1b");
        assert_eq!(pointer(json!([1])), "");
        assert!(from_value::<Outer>(&json!({"day": "d", "crews": [{"hours": 2}]})).is_ok());
    }

    #[test]
    fn the_schema_is_inlined_openapi() {
        let s = schema_of::<Outer>();
        assert_eq!(s["type"], "object");
        assert_eq!(
            s["properties"]["crews"]["items"]["properties"]["hours"]["type"],
            "integer"
        );
        assert!(s.get("$schema").is_none());
        assert!(!s.to_string().contains("$ref"), "{s}");
    }
}
