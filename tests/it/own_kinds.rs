//! A kind of the tests' own (`steps`, see `kinds`), added through the public
//! API only: its typed input is checked at submit (422 with pointers into
//! `input`, nothing stored), and `GET /v1/kinds` and the OpenAPI document
//! describe it beside the built-in kinds.

use serde_json::{json, Value};

use crate::kinds::spawn_with_steps;

async fn pointers(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
            e["pointer"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// serde's errors point at their field (missing, wrong type, unknown), the
/// kind's own `validate` at the fields it names; no job is made.
async fn a_typed_input_that_does_not_fit_is_a_422_with_pointers() {
    let (app, _log) = spawn_with_steps(|_| {}).await;
    for (input, want) in [
        (json!({"step_ms": 1}), "/input/steps"),
        (json!({"steps": "two", "step_ms": 1}), "/input/steps"),
        (json!({"steps": -1, "step_ms": 1}), "/input/steps"),
        (
            json!({"steps": 2, "step_ms": 1, "stpes": 1}),
            "/input/stpes",
        ),
        (
            json!({"steps": 2, "step_ms": 1, "fail_at": 3}),
            "/input/fail_at",
        ),
        (json!([2, 1]), "/input"),
    ] {
        let resp = app
            .post_job(&json!({"kind": "steps", "input": input}))
            .await;
        assert_eq!(pointers(resp).await, [want], "{input}");
    }
    assert!(app.list("").await.items.is_empty(), "nothing was stored");
    let ok = app.submit("steps", json!({"steps": 1, "step_ms": 0})).await;
    assert_eq!(ok.kind, "steps");
}

/// `GET /v1/kinds` lists every kind this herald runs, with its input's
/// JSON Schema; the OpenAPI document has a submission variant per kind.
async fn kinds_and_their_schemas_are_listed() {
    let (app, _log) = spawn_with_steps(|_| {}).await;
    let listed = app.get_json("/v1/kinds").await;
    let kinds = listed["kinds"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["aggregate", "demo", "import", "steps"]);
    let steps = &kinds[3];
    assert_eq!(steps["remote"], false);
    let schema = &steps["input_schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["properties"]["steps"]["type"], "integer");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        required.contains(&"steps") && required.contains(&"step_ms"),
        "{schema}"
    );
    let demo = &kinds[1]["input_schema"];
    assert!(demo["properties"]["emit_items"].is_object(), "{demo}");
    assert!(demo["properties"]["panic_at"].is_object(), "{demo}");

    let doc = app.get_json("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["SubmitJob_steps"]["properties"]["input"]["properties"]["steps"]["type"],
        "integer"
    );
    assert_eq!(
        schemas["SubmitJob_steps"]["properties"]["kind"]["enum"],
        json!(["steps"])
    );
    let variants = schemas["SubmitJob"]["oneOf"].as_array().unwrap();
    assert_eq!(variants.len(), 4);
    assert_eq!(
        schemas["SubmitJob"]["discriminator"]["propertyName"],
        "kind"
    );
    assert!(doc["paths"]["/v1/kinds"]["get"].is_object());
    assert!(doc["paths"]["/v1/jobs/{id}/items"]["get"].is_object());
}

backend_tests!(
    a_typed_input_that_does_not_fit_is_a_422_with_pointers,
    kinds_and_their_schemas_are_listed,
);
