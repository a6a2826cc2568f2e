//! The job kinds: the [`JobKind`] trait each kind implements, [`Kinds`] (the
//! set a herald runs: the built-in ones and a library user's own), the
//! [`Registry`] they become, and what a handler gets ([`JobContext`]).
//!
//! The built-in kinds, one module each: `demo` (for trying herald),
//! `aggregate` (several downstreams fanned in) and `import` (an uploaded
//! file's rows sent to a downstream in batches).

pub mod aggregate;
mod context;
pub mod demo;
pub mod import;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use context::{JobContext, ReportProgress};

use crate::domain::{FieldError, JobError};

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

/// A kind of job. herald's own live in this module, one each; all are
/// registered in [`registry`].
#[async_trait]
pub trait JobKind: Send + Sync + 'static {
    /// The name clients submit as `kind`.
    fn name(&self) -> &'static str;

    /// Checks `input`; pointers in the errors are relative to the input
    /// (`/steps`), the API prefixes them with `/input`.
    fn validate(&self, input: &Value) -> Result<(), Vec<FieldError>>;

    /// Runs one attempt. Stop promptly when `ctx.cancelled()` fires.
    async fn run(&self, ctx: &JobContext) -> Result<Value, JobFailure>;
}

/// Every job kind this build knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn JobKind>>,
}

impl Registry {
    pub fn with(mut self, kind: impl JobKind) -> Self {
        self.kinds.insert(kind.name(), Arc::new(kind));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn JobKind>> {
        self.kinds.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}

/// The job kinds a herald runs: the built-in ones (`demo`, `aggregate`,
/// `import`) and any a library user adds with [`Kinds::with`].
#[derive(Clone, Default)]
pub struct Kinds {
    builtin: bool,
    extra: Vec<Arc<dyn JobKind>>,
}

impl Kinds {
    /// herald's own kinds.
    pub fn builtin() -> Kinds {
        Kinds {
            builtin: true,
            extra: Vec::new(),
        }
    }

    /// Adds a kind of your own. Its name must differ from every other kind's.
    pub fn with(mut self, kind: impl JobKind) -> Kinds {
        self.extra.push(Arc::new(kind));
        self
    }
}

/// The one place where job kinds are registered: the built-in ones (which
/// need the configuration's downstreams and the store), then `kinds`' own.
pub fn registry(
    config: &crate::config::Config,
    store: Arc<dyn crate::store::Store>,
    kinds: Kinds,
) -> anyhow::Result<Registry> {
    let mut registry = Registry::default();
    if kinds.builtin {
        let downstreams = Arc::new(crate::downstream::Downstreams::load(
            &config.downstreams,
            config.downstreams_file.as_deref(),
            config.allow_any_url,
        )?);
        registry = registry
            .with(demo::Demo)
            .with(aggregate::Aggregate::new(
                downstreams.clone(),
                config.downstream_max_body_bytes,
            )?)
            .with(import::Import::new(downstreams, store)?);
    }
    for kind in kinds.extra {
        let name = kind.name();
        if registry.kinds.insert(name, kind).is_some() {
            anyhow::bail!("two job kinds are named `{name}`: give each kind a name of its own");
        }
    }
    Ok(registry)
}
