//! The built-in job kinds, one file each.

pub mod aggregate;
pub mod demo;
pub mod import;
