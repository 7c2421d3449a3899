//! The vocabulary every layer shares: keys, prefixes, revisions and rejections.
//!
//! Nothing here does IO or knows about protobuf. Keys are validated here, before they
//! touch a path, an upstream or a cache.

use std::{fmt, sync::Arc};

/// Every accepted change-set bumps the revision by one; 0 means "nothing published yet".
pub type Revision = u64;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// A validated module key such as `matchmaking/queues`: slash-separated segments of
/// `[A-Za-z0-9_.-]`, no empty segment, no `.` or `..` segment, at most 512 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes long, over the limit of {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("key must not start with '/'")]
    LeadingSlash,
    #[error("key must not end with '/'")]
    TrailingSlash,
    #[error("key has an empty segment ('//')")]
    EmptySegment,
    #[error("key has a '{0}' segment")]
    DotSegment(&'static str),
    #[error("key has the character {0:?}; allowed are A-Z a-z 0-9 _ . - and '/' between segments")]
    BadCharacter(char),
    #[error("key is not valid UTF-8")]
    NotUtf8,
}

impl Key {
    pub fn new(text: &str) -> Result<Key, KeyError> {
        validate_key(text)?;
        Ok(Key(Arc::from(text)))
    }

    pub fn from_utf8(bytes: &[u8]) -> Result<Key, KeyError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)?;
        Key::new(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Checks a key without allocating one, for lookups.
pub fn validate_key(text: &str) -> Result<(), KeyError> {
    validate_path_like(text, PathKind::Key)
}

/// Validates a key prefix as used by List and Watch: empty (everything), or the start of
/// a key. A prefix may end with '/' ("matchmaking/") or in the middle of a segment.
pub fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_path_like(prefix.strip_suffix('/').unwrap_or(prefix), PathKind::Prefix)
}

#[derive(PartialEq)]
enum PathKind {
    Key,
    Prefix,
}

fn validate_path_like(text: &str, kind: PathKind) -> Result<(), KeyError> {
    // Every Get checks its key, and nearly every key is valid: one pass over the bytes
    // settles those, and only a key that fails it is checked again to say why.
    if is_plain_path(text) { Ok(()) } else { path_error(text, kind) }
}

/// Whether `text` is 1 to `MAX_KEY_LEN` bytes of `[A-Za-z0-9_.-]` segments separated by
/// single '/', none of them `.` or `..`: exactly what [`path_error`] accepts.
fn is_plain_path(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
        return false;
    }
    let mut segment_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if byte == b'/' {
            if matches!(&bytes[segment_start..i], b"" | b"." | b"..") {
                return false;
            }
            segment_start = i + 1;
        } else if !(byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')) {
            return false;
        }
    }
    !matches!(&bytes[segment_start..], b"" | b"." | b"..")
}

/// What is wrong with a key or prefix, in the order a reader would want to hear it.
fn path_error(text: &str, kind: PathKind) -> Result<(), KeyError> {
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if text.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(text.len()));
    }
    if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))) {
        return Err(KeyError::BadCharacter(bad));
    }
    if text.starts_with('/') {
        return Err(KeyError::LeadingSlash);
    }
    if text.ends_with('/') {
        // A prefix had one trailing '/' removed already; a second one is an empty segment.
        return Err(match kind {
            PathKind::Key => KeyError::TrailingSlash,
            PathKind::Prefix => KeyError::EmptySegment,
        });
    }
    for segment in text.split('/') {
        match segment {
            "" => return Err(KeyError::EmptySegment),
            "." => return Err(KeyError::DotSegment(".")),
            ".." => return Err(KeyError::DotSegment("..")),
            _ => {}
        }
    }
    Ok(())
}

/// Why a module's upstream text was not accepted, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub key: String,
    /// A path relative to the config directory, or an upstream key.
    pub origin: String,
    /// 1-based; `None` when the format or the failure gives no line.
    pub line: Option<u32>,
    pub reason: String,
    /// Whether an older good value of this key is still served.
    pub serving_previous: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

#[cfg(test)]
mod tests;
