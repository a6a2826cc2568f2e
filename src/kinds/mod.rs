//! The job kinds: the [`JobKind`] trait each kind implements, [`Kinds`] (the
//! set a herald runs: the built-in ones and a library user's own), the
//! [`Registry`] they become, and what a handler gets ([`JobContext`]).
//!
//! The built-in kinds, one module each: `demo` (for trying herald),
//! `aggregate` (several downstreams fanned in) and `import` (an uploaded
//! file's rows sent to a downstream in batches).

pub mod aggregate;
pub(crate) mod call;
mod context;
pub mod demo;
pub mod import;
mod typed;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use crate::domain::FieldError;
pub use call::Downstream;
pub use context::JobContext;
pub(crate) use context::{Limits, Report, Services};

use call::Caller;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::domain::JobError;

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub error: JobError,
    /// No further attempt runs (bad input the handler discovers, a downstream's 4xx).
    pub permanent: bool,
}

impl JobFailure {
    /// A failure worth another attempt.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobFailure {
            error: JobError::new(code, message),
            permanent: false,
        }
    }

    /// A failure that no retry can fix.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobFailure {
            error: JobError::new(code, message),
            permanent: true,
        }
    }

    /// What a handler returns when it stops because its token fired.
    pub fn cancelled() -> Self {
        JobFailure::permanent("cancelled", "the job was told to stop")
    }
}

impl From<anyhow::Error> for JobFailure {
    fn from(e: anyhow::Error) -> Self {
        JobFailure::retryable("handler_error", format!("{e:#}"))
    }
}

/// A kind of job: its name, its typed input, and what one attempt does.
///
/// The input is what clients submit under `input`, read with serde: a body
/// that does not fit is a 422 with a JSON pointer into `input` (a missing or
/// unknown field, a wrong type), before any job exists. Checks serde cannot
/// express (ranges, fields that depend on each other) go in
/// [`JobKind::validate`]. The input's JSON Schema (from `schemars`) is listed
/// by `GET /v1/kinds` and in the OpenAPI document.
///
/// ```
/// use herald::{JobContext, JobFailure, JobKind};
/// use serde::Deserialize;
///
/// #[derive(Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct Input {
///     /// How many greetings.
///     times: u32,
/// }
///
/// struct Greet;
///
/// #[async_trait::async_trait]
/// impl JobKind for Greet {
///     type Input = Input;
///     type Output = serde_json::Value;
///
///     fn name(&self) -> &'static str {
///         "greet"
///     }
///
///     async fn run(&self, input: Input, ctx: &JobContext) -> Result<serde_json::Value, JobFailure> {
///         for n in 0..input.times {
///             ctx.item(serde_json::json!({"hello": n})).await?;
///         }
///         Ok(serde_json::json!({"greeted": input.times}))
///     }
/// }
/// ```
#[async_trait]
pub trait JobKind: Send + Sync + 'static {
    /// The input clients submit (`#[serde(deny_unknown_fields)]` makes a
    /// misspelt field an error rather than a silently ignored one).
    type Input: DeserializeOwned + JsonSchema + Send + 'static;
    /// The job's result.
    type Output: Serialize + Send;

    /// The name clients submit as `kind`: unique among this herald's kinds.
    fn name(&self) -> &'static str;

    /// Checks beyond what serde checks. Pointers are relative to the input
    /// (`/steps`); the API prefixes them with `/input`.
    fn validate(&self, _input: &Self::Input) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// Runs one attempt. Stop promptly when `ctx.cancelled()` fires.
    async fn run(&self, input: Self::Input, ctx: &JobContext) -> Result<Self::Output, JobFailure>;
}

/// A kind as herald runs it, whatever its input type: what the registry
/// holds. Every [`JobKind`] is one (through [`Typed`]); `aggregate` and
/// `import` implement it directly, keeping their own input checks, which
/// report every field error at once.
#[async_trait]
pub(crate) trait Kind: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The input's JSON Schema (OpenAPI 3.0 flavour, subschemas inlined).
    fn input_schema(&self) -> Value;

    /// Checks an input; pointers relative to the input.
    fn check(&self, input: &Value) -> Result<(), Vec<FieldError>>;

    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure>;

    /// Run by remote workers over the worker API, not here.
    fn remote(&self) -> bool {
        false
    }
}

/// A kind named in `HERALD_REMOTE_KINDS`: remote workers run it; herald
/// only checks that its input is a JSON object.
struct RemoteKind(&'static str);

#[async_trait]
impl Kind for RemoteKind {
    fn name(&self) -> &'static str {
        self.0
    }

    fn input_schema(&self) -> Value {
        serde_json::json!({
            "type": "object",
            "description": "Any JSON object: a remote worker (HERALD_REMOTE_KINDS) reads it.",
            "additionalProperties": true
        })
    }

    fn check(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        if input.is_object() {
            Ok(())
        } else {
            Err(vec![FieldError::new("", "must be a JSON object")])
        }
    }

    async fn run(&self, _ctx: &JobContext) -> Result<Value, JobFailure> {
        // Never claimed here: the local claim reads local kinds' jobs only.
        Err(JobFailure::permanent(
            "remote_kind",
            format!(
                "`{}` is run by remote workers, not by herald itself",
                self.0
            ),
        ))
    }

    fn remote(&self) -> bool {
        true
    }
}

/// A [`JobKind`] behind the [`Kind`] interface.
pub(crate) struct Typed<K>(pub(crate) K);

impl<K: JobKind> Typed<K> {
    fn parse(&self, input: &Value) -> Result<K::Input, Vec<FieldError>> {
        let typed = typed::from_value::<K::Input>(input)?;
        self.0.validate(&typed)?;
        Ok(typed)
    }
}

#[async_trait]
impl<K: JobKind> Kind for Typed<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn input_schema(&self) -> Value {
        typed::schema_of::<K::Input>()
    }

    fn check(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        self.parse(input).map(|_| ())
    }

    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure> {
        // Checked at submit; a stored input that no longer fits (the kind's
        // input type changed since) is no use retrying.
        let input = self.parse(&ctx.input).map_err(|errors| {
            JobFailure::permanent("bad_input", typed::describe(self.name(), &errors))
        })?;
        let output = self.0.run(input, ctx).await?;
        serde_json::to_value(output).map_err(|e| {
            JobFailure::permanent(
                "bad_result",
                format!("the result cannot be written as JSON: {e}"),
            )
        })
    }
}

/// Every job kind this build knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Kind>>,
}

impl Registry {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn Kind>> {
        self.kinds.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Whether remote workers run `name` (`HERALD_REMOTE_KINDS`).
    pub fn is_remote(&self, name: &str) -> bool {
        self.kinds.get(name).is_some_and(|k| k.remote())
    }

    /// Each kind's name and input schema, by name.
    pub(crate) fn schemas(&self) -> BTreeMap<&'static str, Value> {
        self.kinds
            .iter()
            .map(|(name, kind)| (*name, kind.input_schema()))
            .collect()
    }

    fn add(&mut self, kind: Arc<dyn Kind>) -> anyhow::Result<()> {
        let name = kind.name();
        let remote = kind.remote();
        if self.kinds.insert(name, kind).is_some() {
            if remote {
                anyhow::bail!("HERALD_REMOTE_KINDS names `{name}`, which is also a kind herald runs itself (or is named twice): a kind is either built in or remote");
            }
            anyhow::bail!("two job kinds are named `{name}`: give each kind a name of its own");
        }
        Ok(())
    }
}

/// The job kinds a herald runs: the built-in ones (`demo`, `aggregate`,
/// `import`) and any a library user adds with [`Kinds::with`].
#[derive(Clone, Default)]
pub struct Kinds {
    builtin: bool,
    extra: Vec<Arc<dyn Kind>>,
}

impl Kinds {
    /// herald's own kinds.
    pub fn builtin() -> Kinds {
        Kinds {
            builtin: true,
            extra: Vec::new(),
        }
    }

    /// No kinds at all; add your own with [`Kinds::with`].
    pub fn none() -> Kinds {
        Kinds::default()
    }

    /// Each kind's name and input schema, by name, without building the
    /// kinds (`herald openapi` needs no store or downstreams).
    pub(crate) fn schemas(&self) -> BTreeMap<&'static str, Value> {
        let mut out = BTreeMap::new();
        if self.builtin {
            out.insert("demo", typed::schema_of::<demo::DemoInput>());
            out.insert("aggregate", aggregate::input_schema());
            out.insert("import", typed::schema_of::<import::ImportInput>());
        }
        for kind in &self.extra {
            out.insert(kind.name(), kind.input_schema());
        }
        out
    }

    /// Adds a kind of your own. Its name must differ from every other kind's
    /// (herald refuses to start otherwise).
    pub fn with(mut self, kind: impl JobKind) -> Kinds {
        self.extra.push(Arc::new(Typed(kind)));
        self
    }
}

/// The one place where job kinds are registered: the built-in ones (which
/// need the configuration's downstreams and the store), then `kinds`' own.
pub(crate) fn registry(
    caller: Arc<Caller>,
    store: Arc<dyn crate::store::Store>,
    kinds: Kinds,
    remote_kinds: &[String],
) -> anyhow::Result<Registry> {
    let mut registry = Registry::default();
    if kinds.builtin {
        registry.add(Arc::new(Typed(demo::Demo)))?;
        registry.add(Arc::new(aggregate::Aggregate::new(caller.clone())))?;
        registry.add(Arc::new(Typed(import::Import::new(
            caller.downstreams.clone(),
            store,
        )?)))?;
    }
    for kind in kinds.extra {
        registry.add(kind)?;
    }
    for name in remote_kinds {
        let name = name.trim();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid {
            anyhow::bail!("HERALD_REMOTE_KINDS: `{name}` is not a kind name (1 to 64 of a-z, A-Z, 0-9, _ - .)");
        }
        // Kind names are `&'static str`; these few live as long as herald.
        registry.add(Arc::new(RemoteKind(Box::leak(
            name.to_owned().into_boxed_str(),
        ))))?;
    }
    Ok(registry)
}
