//! The OpenAPI document, completed: what poem-openapi cannot generate from
//! the handlers' types is patched into its JSON here.
//!
//! - Each kind's input schema: poem-openapi builds the document from types
//!   known at compile time, and a library user's kinds are not; so the
//!   generated `SubmitJob` becomes a `oneOf` keyed on `kind`, one
//!   `SubmitJob_<kind>` per kind, each with that kind's input schema.
//! - `POST /v1/uploads`: a plain poem route (it streams its body, which
//!   poem-openapi's payloads would buffer), described here by hand.
//! - The streams' events: a `text/event-stream` schema describes one event
//!   as an EventSource parses it (`id`, `event`, `data`), and its `data` is a
//!   string of JSON, described with `contentMediaType` and `contentSchema`,
//!   which poem-openapi's schema type has no fields for.
//! - The security schemes: the authentication middleware, not the handlers,
//!   checks credentials, so poem-openapi does not know them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `generated` (poem-openapi's JSON) completed: the kinds' input schemas,
/// the uploads route and the security schemes.
pub(crate) fn complete(generated: &str, kinds: &BTreeMap<&'static str, Value>) -> String {
    let mut doc: Value = serde_json::from_str(generated).expect("poem-openapi writes JSON");
    with_kinds(&mut doc, kinds);
    if doc["paths"].get("/v1/jobs").is_some() {
        with_stream_events(&mut doc);
        with_uploads(&mut doc);
        with_security(&mut doc);
    }
    serde_json::to_string_pretty(&doc).expect("JSON serializes")
}

/// The generated `SubmitJob` becomes one variant per kind.
fn with_kinds(doc: &mut Value, kinds: &BTreeMap<&'static str, Value>) {
    let schemas = &mut doc["components"]["schemas"];
    let Some(base) = schemas.get("SubmitJob").cloned() else {
        return;
    };
    let mut variants = Vec::new();
    let mut mapping = serde_json::Map::new();
    for (name, input) in kinds {
        let mut variant = base.clone();
        variant["title"] = json!(format!("SubmitJob_{name}"));
        // `Submission::parse` refuses unknown fields (422).
        variant["additionalProperties"] = json!(false);
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
}

/// The events of a job's stream, by name, with the schema of each one's data.
const EVENTS: [(&str, &str); 6] = [
    ("status", "StatusEvent"),
    ("progress", "ProgressEvent"),
    ("item", "ItemEvent"),
    ("result", "ResultEvent"),
    ("failed", "FailedEvent"),
    ("cancelled", "CancelledEvent"),
];

/// `JobStreamEvent` and `FeedStreamEvent`: one event of a job's stream and
/// of the feed, each the `text/event-stream` schema of its operation.
fn with_stream_events(doc: &mut Value) {
    let stream_event = |description: &str, id: Value, data: &dyn Fn(&str) -> Value| {
        let by_name: Vec<Value> = EVENTS
            .iter()
            .map(|(name, schema)| {
                json!({"properties": {
                    "event": {"enum": [name]},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": data(schema),
                    },
                }})
            })
            .collect();
        json!({
            "description": description,
            "type": "object",
            "required": ["id", "event", "data"],
            "properties": {
                "id": id,
                "event": {
                    "type": "string",
                    "enum": EVENTS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
                },
                "data": {
                    "type": "string",
                    "description": "One line of JSON, whose schema the event's name selects.",
                },
                "retry": {"type": "integer", "description": "How long to wait before reconnecting, in ms."},
            },
            "oneOf": by_name,
        })
    };
    let schemas = &mut doc["components"]["schemas"];
    schemas["JobStreamEvent"] = stream_event(
        "One event of a job's stream, as an EventSource delivers it: `id` (the job's gapless sequence number), `event` (its name) and `data`.",
        json!({"type": "string", "pattern": "^[0-9]+$"}),
        &|schema| json!({"$ref": format!("#/components/schemas/{schema}")}),
    );
    schemas["FeedStreamEvent"] = stream_event(
        "One event of the feed, as an EventSource delivers it: `id` (the feed cursor), `event` (the job event's name) and `data` (the job event's, plus `job_id` and `seq`).",
        json!({"type": "string", "pattern": super::params::FEED_CURSOR_PATTERN}),
        &|schema| {
            json!({"allOf": [
                {"$ref": format!("#/components/schemas/{schema}")},
                {"$ref": "#/components/schemas/FeedEventData"},
            ]})
        },
    );
    for (path, schema) in [
        ("/v1/jobs/{id}/events", "JobStreamEvent"),
        ("/v1/events", "FeedStreamEvent"),
    ] {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"] =
            json!({"$ref": format!("#/components/schemas/{schema}")});
    }
}

/// A problem+json response.
fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}
        }},
    })
}

/// `POST /v1/uploads` (see `super::uploads`).
fn with_uploads(doc: &mut Value) {
    let query = |name: &str, required: bool, description: &str, schema: Value| {
        json!({
            "name": name, "in": "query", "required": required,
            "description": description, "schema": schema,
            "deprecated": false, "explode": true,
        })
    };
    let text =
        |description: &str| json!({"schema": {"type": "string", "description": description}});
    doc["paths"]["/v1/uploads"] = json!({"post": {
        "tags": ["Jobs"],
        "operationId": "upload",
        "summary": "Upload a file to import",
        "description": "Stores the file (streamed, never held whole in memory) and creates an `import` job that sends its rows, in batches, to a configured downstream. The parameters are checked before a byte is stored; a file over HERALD_MAX_UPLOAD_BYTES, or one cut off, is not kept.",
        "parameters": [
            query("downstream", true, "The downstream the rows go to: a name in HERALD_DOWNSTREAMS.",
                json!({"type": "string", "minLength": 1})),
            query("path", false, "The path under the downstream's base URL that each batch is POSTed to (default `/`).",
                json!({"type": "string"})),
            query("format", true, "How the file is written.",
                json!({"type": "string", "enum": ["csv", "ndjson"]})),
            query("batch_size", false, "Rows per batch, 1 to 10000 (default 500).",
                json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 10000})),
        ],
        "requestBody": {
            "required": true,
            "description": "The file: the raw body, or a form's field `file`.",
            "content": {
                "text/csv": text("CSV, with a header row."),
                "application/x-ndjson": text("One JSON object per line."),
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }},
            },
        },
        "responses": {
            "202": {
                "description": "Stored: the import job is queued.",
                "content": {"application/json; charset=utf-8": {
                    "schema": {"$ref": "#/components/schemas/Job"}
                }},
                "headers": {"LOCATION": {"required": true, "deprecated": false, "schema": {"type": "string"}}},
            },
            "400": problem("The multipart body cannot be read, or the upload stopped before its end."),
            "401": problem("No valid credentials (see WWW-Authenticate)."),
            "413": problem("The file is over HERALD_MAX_UPLOAD_BYTES."),
            "415": problem("The body is not text/csv, application/x-ndjson, application/octet-stream or multipart/form-data."),
            "422": problem("A parameter is invalid (an unknown downstream, say); `errors` points at each."),
            "429": problem("Over HERALD_SUBMIT_RATE_PER_SEC; retry after Retry-After seconds."),
            "500": problem("Internal error; the cause is logged."),
            "503": problem("This node cannot serve now; retry, or use another."),
        },
    }});
}

/// The streams: they also take a stream token as `?token=`.
const STREAMS: [&str; 2] = ["/v1/jobs/{id}/events", "/v1/events"];

/// Declares how clients authenticate, and which operations need it: every
/// `/v1` one (the probes, `/openapi.json`, `/docs` and the dashboard are open).
fn with_security(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <key>`: an API key (HERALD_AUTH=api-keys) or a JWT (HERALD_AUTH=jwt). Not needed when HERALD_AUTH=none.",
        },
        "workerKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <worker key>`: a remote worker's key (HERALD_WORKER_KEYS). It opens only `/v1/worker/*`, which tenants' credentials never open. Not needed when HERALD_AUTH=none.",
        },
        "streamToken": {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "A stream token, for clients (browsers' EventSource) that cannot send `Authorization`: from `links.events`, `POST /v1/jobs/{id}/stream-token` or `POST /v1/events/stream-token`. It opens only the stream it was made for, until it expires.",
        },
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, ops) in paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let worker = path.starts_with("/v1/worker/");
        let security = if STREAMS.contains(&path.as_str()) {
            json!([{"bearer": []}, {"streamToken": []}])
        } else if worker {
            json!([{"workerKey": []}])
        } else {
            json!([{"bearer": []}])
        };
        for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            op["security"] = security.clone();
            let responses = &mut op["responses"];
            if responses.get("401").is_none() {
                responses["401"] = problem("No valid credentials (see WWW-Authenticate).");
            }
            if responses.get("403").is_none() {
                responses["403"] = problem(if worker {
                    "Tenant credentials, or a worker key not allowed this kind (`forbidden`)."
                } else {
                    "A worker key: it opens only /v1/worker/* (`forbidden`)."
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        serde_json::from_str(&crate::http::openapi_json(&crate::Kinds::builtin())).unwrap()
    }

    #[test]
    fn every_field_herald_may_send_as_null_is_nullable() {
        let doc = document();
        let s = &doc["components"]["schemas"];
        for (schema, fields) in [
            (
                "Job",
                &[
                    "progress",
                    "result",
                    "error",
                    "timeout_secs",
                    "started_at",
                    "finished_at",
                ][..],
            ),
            ("Progress", &["percent", "stage", "message", "data"]),
            ("ProgressEvent", &["percent", "stage", "message", "data"]),
            ("JobList", &["next_cursor"]),
            ("ItemPage", &["next_offset"]),
        ] {
            for field in fields {
                let property = &s[schema]["properties"][field];
                assert_eq!(property["nullable"], true, "{schema}.{field}: {property}");
            }
        }
    }

    #[test]
    fn every_v1_operation_needs_credentials_and_the_probes_do_not() {
        let doc = document();
        assert_eq!(
            doc["components"]["securitySchemes"]["streamToken"]["in"],
            "query"
        );
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let security = &op["security"];
                if path.starts_with("/v1/") {
                    let schemes: Vec<&str> = security
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|s| s.as_object().unwrap().keys())
                        .map(String::as_str)
                        .collect();
                    let want = if STREAMS.contains(&path.as_str()) {
                        vec!["bearer", "streamToken"]
                    } else if path.starts_with("/v1/worker/") {
                        vec!["workerKey"]
                    } else {
                        vec!["bearer"]
                    };
                    assert_eq!(schemes, want, "{method} {path}");
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                } else {
                    assert!(security.is_null(), "{method} {path} is open");
                }
            }
        }
        let upload = &doc["paths"]["/v1/uploads"]["post"];
        assert!(upload["requestBody"]["content"]["multipart/form-data"].is_object());
        assert!(upload["responses"]["202"].is_object());
    }

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
        let doc: Value = serde_json::from_str(&complete(&generated, &kinds)).unwrap();
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
