//! The OpenAPI document with each kind's input schema patched in.
//!
//! poem-openapi builds the document from types known at compile time, and a
//! library user's kinds are not; so the generated document's `SubmitJob`
//! becomes a `oneOf` keyed on `kind`, one `SubmitJob_<kind>` per kind, each
//! with that kind's input schema (from its input type).

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `generated` (poem-openapi's JSON) with `kinds`' input schemas patched in.
pub(crate) fn with_kinds(generated: &str, kinds: &BTreeMap<&'static str, Value>) -> String {
    let mut doc: Value = serde_json::from_str(generated).expect("poem-openapi writes JSON");
    let schemas = &mut doc["components"]["schemas"];
    let Some(base) = schemas.get("SubmitJob").cloned() else {
        return generated.to_owned();
    };
    let mut variants = Vec::new();
    let mut mapping = serde_json::Map::new();
    for (name, input) in kinds {
        let mut variant = base.clone();
        variant["title"] = json!(format!("SubmitJob_{name}"));
        variant["properties"]["kind"] = json!({
            "type": "string",
            "enum": [name],
            "description": format!("`{name}`"),
        });
        let mut input = input.clone();
        if let Some(obj) = input.as_object_mut() {
            obj.remove("title");
            obj.entry("description")
                .or_insert_with(|| json!(format!("The `{name}` kind's input.")));
        }
        variant["properties"]["input"] = input;
        let key = format!("SubmitJob_{name}");
        let reference = format!("#/components/schemas/{key}");
        variants.push(json!({"$ref": reference}));
        mapping.insert(name.to_string(), json!(reference));
        schemas[key] = variant;
    }
    schemas["SubmitJob"] = json!({
        "description": "A job submission: `kind` names one of this herald's kinds, and `input` follows that kind's schema (`GET /v1/kinds` lists them).",
        "oneOf": variants,
        "discriminator": {"propertyName": "kind", "mapping": mapping},
    });
    serde_json::to_string_pretty(&doc).expect("JSON serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_becomes_a_variant_keyed_on_kind() {
        let generated = json!({"components": {"schemas": {"SubmitJob": {
            "type": "object", "required": ["kind", "input"],
            "properties": {"kind": {"type": "string"}, "input": {}}
        }}}})
        .to_string();
        let kinds = BTreeMap::from([
            (
                "a",
                json!({"type": "object", "title": "AInput", "properties": {"x": {"type": "integer"}}}),
            ),
            ("b", json!({"type": "object"})),
        ]);
        let doc: Value = serde_json::from_str(&with_kinds(&generated, &kinds)).unwrap();
        let s = &doc["components"]["schemas"];
        assert_eq!(s["SubmitJob"]["oneOf"].as_array().unwrap().len(), 2);
        assert_eq!(
            s["SubmitJob"]["discriminator"]["mapping"]["a"],
            "#/components/schemas/SubmitJob_a"
        );
        assert_eq!(s["SubmitJob_a"]["properties"]["kind"]["enum"], json!(["a"]));
        assert_eq!(
            s["SubmitJob_a"]["properties"]["input"]["properties"]["x"]["type"],
            "integer"
        );
        assert_eq!(s["SubmitJob_a"]["required"], json!(["kind", "input"]));
    }
}
