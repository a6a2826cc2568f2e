//! Checking JSON input field by field, so every problem is reported with a
//! JSON pointer (the submission, and each kind's input, use these).

use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use super::{escape_pointer, FieldError};

/// `value` as an object, or an error at `at` that shows an example.
pub fn object<'a>(
    value: &'a Value,
    at: &str,
    example: &str,
) -> Result<&'a Map<String, Value>, Vec<FieldError>> {
    value.as_object().ok_or_else(|| {
        vec![FieldError::new(
            at,
            format!("must be an object such as {example}"),
        )]
    })
}

/// An error for each key of `obj` that is not in `allowed`.
pub fn unknown_fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        errors.push(FieldError::new(
            format!("{at}/{}", escape_pointer(key)),
            format!("unknown field; allowed: {}", allowed.join(", ")),
        ));
    }
}

/// Whether `field` is present (and not null); an error "is required" if not.
pub fn required(
    obj: &Map<String, Value>,
    field: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> bool {
    let present = obj.get(field).is_some_and(|v| !v.is_null());
    if !present {
        errors.push(FieldError::new(format!("{at}/{field}"), "is required"));
    }
    present
}

/// A whole number in `range` (`5.0` counts as 5; JSON does not tell them
/// apart). `None` when absent or null, or when invalid (with an error).
pub fn whole_number(
    obj: &Map<String, Value>,
    field: &str,
    range: RangeInclusive<i64>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    let v = obj.get(field).filter(|v| !v.is_null())?;
    let n = v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    });
    match n {
        Some(n) if range.contains(&n) => Some(n),
        _ => {
            errors.push(FieldError::new(
                format!("{at}/{field}"),
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
            None
        }
    }
}

/// `true` or `false`; `None` when absent or null, or invalid (with an error).
pub fn boolean(
    obj: &Map<String, Value>,
    field: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<bool> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.push(FieldError::new(
                format!("{at}/{field}"),
                "must be true or false",
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_helper_names_its_field() {
        let v = json!({"n": 2.0, "f": 2.5, "b": "yes", "x": 1});
        let obj = v.as_object().unwrap();
        let mut errors = Vec::new();
        assert_eq!(
            whole_number(obj, "n", 1..=3, "/input", &mut errors),
            Some(2)
        );
        assert_eq!(whole_number(obj, "f", 1..=3, "/input", &mut errors), None);
        assert_eq!(
            whole_number(obj, "missing", 1..=3, "/input", &mut errors),
            None
        );
        assert_eq!(boolean(obj, "b", "/input", &mut errors), None);
        assert!(!required(obj, "missing", "/input", &mut errors));
        unknown_fields(obj, &["n", "f", "b"], "/input", &mut errors);
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["/input/f", "/input/b", "/input/missing", "/input/x"]
        );
        assert!(object(&json!([1]), "", "{}").is_err());
    }
}
