//! The `aggregate` input's JSON Schema, for `GET /v1/kinds` and the OpenAPI
//! document. `plan` checks the input itself (every error at once); these
//! types only describe it, so the two must agree field for field.

use serde_json::Value;

use super::{DEFAULT_CONCURRENCY, DEFAULT_RETRIES, MAX_CONCURRENCY, MAX_RETRIES, MAX_SOURCES};

#[allow(dead_code)] // Read by schemars only.
#[derive(schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct AggregateInput {
    /// The sources to call side by side, each naming a configured downstream.
    #[schemars(length(min = 1, max = MAX_SOURCES))]
    sources: Vec<SourceInput>,
    /// How many sources are called at once.
    #[schemars(range(min = 1, max = MAX_CONCURRENCY), extend("default" = DEFAULT_CONCURRENCY))]
    concurrency: Option<u32>,
    /// Succeed with the sources that answered when others failed.
    #[schemars(extend("default" = false))]
    allow_partial: Option<bool>,
}

#[allow(dead_code)] // Read by schemars only.
#[derive(schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct SourceInput {
    /// Unique among the sources: the key of its answer in the result.
    #[schemars(length(min = 1, max = 100), example = &"crews")]
    name: String,
    /// A downstream named in HERALD_DOWNSTREAMS.
    #[schemars(example = &"crews")]
    downstream: String,
    /// The path (and query) under the downstream's base URL.
    #[schemars(example = &"/crews?day=2026-11-30")]
    path: String,
    /// GET (default) or POST.
    #[schemars(extend("default" = "GET"))]
    method: Option<Method>,
    /// A JSON body to send: only with POST.
    body: Option<Value>,
    /// One try's limit; default: the downstream's timeout, else 30000.
    #[schemars(range(min = 1, max = super::MAX_TIMEOUT_MS))]
    timeout_ms: Option<u64>,
    /// Retries after a connect error, timeout or 5xx.
    #[schemars(range(max = MAX_RETRIES), extend("default" = DEFAULT_RETRIES))]
    retries: Option<u32>,
}

#[allow(dead_code, clippy::upper_case_acronyms)] // Read by schemars only.
#[derive(schemars::JsonSchema)]
enum Method {
    GET,
    POST,
}

pub(crate) fn input_schema() -> Value {
    crate::kinds::typed::schema_of::<AggregateInput>()
}
