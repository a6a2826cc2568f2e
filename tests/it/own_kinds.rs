//! A kind of the tests' own (`steps`, see `kinds`), added through the public
//! API only: its typed input is checked at submit (422 with pointers into
//! `input`, nothing stored), and `GET /v1/kinds` and the OpenAPI document
//! describe it beside the built-in kinds.

use serde_json::{json, Value};

use crate::common::invalid_pointers;
use crate::kinds::spawn_with_steps;

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
        assert_eq!(invalid_pointers(resp).await, [want], "{input}");
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

/// `Echo`: a kind written against the public API only, for the test below.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct EchoInput {
    words: Vec<String>,
}

struct Echo;

#[async_trait::async_trait]
impl herald::JobKind for Echo {
    type Input = EchoInput;
    type Output = Value;

    fn name(&self) -> &'static str {
        "echo"
    }

    async fn run(
        &self,
        input: EchoInput,
        ctx: &herald::JobContext,
    ) -> Result<Value, herald::JobFailure> {
        ctx.items(input.words.iter().map(|w| json!({"word": w})))
            .await?;
        Ok(json!({"echoed": input.words.len()}))
    }
}

/// `herald::testing::TestServer`, as the README shows it: a herald with only
/// a kind of one's own, on port 0 and a temporary SQLite file.
#[tokio::test]
async fn the_public_test_server_runs_a_kind_of_ones_own() {
    let server = herald::testing::TestServer::start(herald::Kinds::none().with(Echo), |_| {})
        .await
        .unwrap();
    let api = crate::common::Api::new(server.base_url());
    let kinds = api.get_json("/v1/kinds").await;
    assert_eq!(kinds["kinds"].as_array().unwrap().len(), 1);
    let job = api.submit("echo", json!({"words": ["a", "b"]})).await;
    let done = api.wait_terminal(job.id).await;
    assert_eq!(done.result, Some(json!({"echoed": 2})));
    assert_eq!(done.items_count, 2);
    let page = api.get_json(&format!("/v1/jobs/{}/items", job.id)).await;
    assert_eq!(page["items"][1]["item"], json!({"word": "b"}));
    let unknown = api.post_job(&json!({"kind": "demo", "input": {}})).await;
    assert_eq!(unknown.status(), 422, "only the kinds it was given");
    server.stop().await.unwrap();
}
