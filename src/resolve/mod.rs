//! The configuration layer: upstream documents in, resolved module values and
//! rejections out.
//!
//! - `$extends: [key, ...]` deep-merges bases underneath a module (maps merge key by
//!   key, other values replace; later bases win);
//! - `${key#/json/pointer}` references take the referenced module's resolved value;
//! - overlays (`key@label=value.yaml`) merge on top when the labels match, least
//!   specific first;
//! - `$schema: key` validates the resolved value against a JSON Schema module.
//!
//! Pure and total: no IO, no async, no clock. A cycle, a dangling reference or a schema
//! failure rejects the modules involved and those depending on them, and nothing else.

mod graph;
mod merge;
mod module;
mod name;
mod parse;
mod resolver;
mod template;

pub use graph::dot;
pub use module::{EXTENDS, Explanation, Failure, ModuleDocs, SCHEMA, SchemaCache};
pub use name::{Labels, ModuleName, NameError, is_label_word, parse_module_name};
pub use parse::{Format, ParseError, document_module, line_of_offset, parse_document};
pub use resolver::{Modules, OnDemand, Outcome, Resolver};

#[cfg(test)]
mod tests;
