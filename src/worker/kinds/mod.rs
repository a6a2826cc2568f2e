//! The built-in job kinds, one file each: `demo` (for trying herald),
//! `aggregate` (several downstreams fanned in) and `import` (an uploaded file's
//! rows sent to a downstream in batches).

pub mod aggregate;
pub mod demo;
pub mod import;
