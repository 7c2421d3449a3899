//! Upstream sources of truth. A source only reads upstream and reports what changed, as
//! named documents; parsing, resolution and publishing happen in the sync loop.

pub mod file;

use std::collections::BTreeMap;

use bytes::Bytes;

/// A document's text, or why the source could not hand it over (too large, unreadable,
/// outside the config directory). Either way the sync loop decides what is served.
pub type Document = Result<Bytes, String>;

/// What a source tells the sync loop.
#[derive(Debug)]
pub enum SourceEvent {
    Update(Update),
    /// The upstream could not be read; what is served stays as it is.
    Unhealthy(String),
}

#[derive(Debug, Default)]
pub struct Update {
    /// By document name (a path with its format suffix): `Some` appeared or changed,
    /// `None` went away.
    pub changes: BTreeMap<String, Option<Document>>,
    /// When set, `changes` lists every upstream document and any other is gone.
    pub full: bool,
}
