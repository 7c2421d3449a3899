//! The last known good state on disk: what was served, and the documents it was resolved
//! from, so that a restarted sidecar serves at once, before the upstream answers.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync of the directory)
//! after every accepted change-set. It starts with a header line
//! `veltrix-state <format> <crc32 of the body> <body length>`; a file whose header, length
//! or checksum does not match is reported and ignored, never trusted.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    model::{Key, Revision},
    resolve::{Modules, parse_module_name},
};

const MAGIC: &str = "veltrix-state";
const FORMAT: u32 = 1;
const FILE_NAME: &str = "last-known-good";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} was saved from source {saved}, not {configured}")]
    OtherSource { path: PathBuf, saved: String, configured: String },
}

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// The source URI the state came from; a state from another source is not used.
    pub source: String,
    /// The revision history the revision belongs to, restored with it. States saved
    /// before epochs existed read as 0, which starts a new history.
    #[serde(default)]
    pub epoch: u64,
    pub revision: Revision,
    /// Resolved values served at `revision`, by key. Shared with the snapshot rather than
    /// copied: a state is saved for every change-set, and deep copies would double the
    /// configuration's memory at each save, much of which the allocator keeps resident
    /// afterwards (3 MiB of RSS for 1,000 modules).
    pub entries: BTreeMap<String, Arc<Value>>,
    /// Accepted documents, by module name (`key` or `key@label=value`), shared likewise.
    pub documents: BTreeMap<String, Arc<Value>>,
}

impl SavedState {
    pub fn new(
        source: &str,
        epoch: u64,
        revision: Revision,
        entries: impl Iterator<Item = (String, Arc<Value>)>,
        modules: &Modules,
    ) -> SavedState {
        let documents = modules.documents().map(|(name, document)| (name.to_string(), document)).collect();
        SavedState { source: source.to_owned(), epoch, revision, entries: entries.collect(), documents }
    }

    /// The entries as store changes, and the documents as resolution inputs. Names that
    /// do not parse (a state written by a newer version) are skipped.
    pub fn restore(&self) -> (BTreeMap<Key, Option<Arc<Value>>>, Modules) {
        let entries =
            self.entries.iter().filter_map(|(key, value)| Some((Key::new(key).ok()?, Some(value.clone())))).collect();
        let mut modules = Modules::default();
        for (name, document) in &self.documents {
            if let Ok(name) = parse_module_name(name) {
                modules.set(&name, Some(document.clone()));
            }
        }
        (entries, modules)
    }
}

/// The state file in a state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(dir: &Path) -> StateFile {
        StateFile { path: dir.join(FILE_NAME) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok(None)` when there is no state yet.
    pub fn load(&self, configured_source: &str) -> Result<Option<SavedState>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let corrupt = |reason: &str| StateError::Corrupt { path: self.path.clone(), reason: reason.to_owned() };
        let newline = bytes.iter().position(|&byte| byte == b'\n').ok_or_else(|| corrupt("no header line"))?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| corrupt("header is not text"))?;
        let body = &bytes[newline + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        let [MAGIC, format, checksum, length] = fields.as_slice() else {
            return Err(corrupt("not a state file"));
        };
        if *format != FORMAT.to_string() {
            return Err(corrupt(&format!("format {format}, this version reads {FORMAT}")));
        }
        if length.parse::<usize>().ok() != Some(body.len()) {
            return Err(corrupt(&format!("body is {} bytes, the header says {length} (truncated?)", body.len())));
        }
        if u32::from_str_radix(checksum, 16).ok() != Some(crc32fast::hash(body)) {
            return Err(corrupt("checksum mismatch"));
        }
        let state: SavedState =
            serde_json::from_slice(body).map_err(|error| corrupt(&format!("body does not parse: {error}")))?;
        if state.source != configured_source {
            return Err(StateError::OtherSource {
                path: self.path.clone(),
                saved: state.source,
                configured: configured_source.to_owned(),
            });
        }
        Ok(Some(state))
    }

    /// Replaces the file atomically: a crash leaves the old state or the new, never a mix.
    pub fn save(&self, state: &SavedState) -> Result<(), StateError> {
        let write_error = |source| StateError::Write { path: self.path.clone(), source };
        let body = serde_json::to_vec(state).map_err(|error| write_error(io::Error::other(error)))?;
        let header = format!("{MAGIC} {FORMAT} {:08x} {}\n", crc32fast::hash(&body), body.len());
        let temp = self.path.with_extension("tmp");
        let mut file = fs::File::create(&temp).map_err(write_error)?;
        file.write_all(header.as_bytes()).map_err(write_error)?;
        file.write_all(&body).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        drop(file);
        fs::rename(&temp, &self.path).map_err(write_error)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(write_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
