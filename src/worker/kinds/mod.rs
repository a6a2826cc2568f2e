//! The built-in job kinds, one file each.

pub mod demo;
