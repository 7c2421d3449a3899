//! Turns one upstream document (a file or an upstream value named with a suffix) into a
//! JSON-compatible tree, with the line of the first error when the text is bad.

use serde_json::Value;

use super::name::{ModuleName, NameError, parse_module_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// The format a document name's suffix says, or `None` for names that are not config.
    pub fn from_name(name: &str) -> Option<Format> {
        let (_, suffix) = name.rsplit_once('.')?;
        match suffix {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// Why a document's text was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// 1-based, when the parser says where.
    pub line: Option<u32>,
    pub reason: String,
}

impl ParseError {
    fn new(line: Option<u32>, reason: impl Into<String>) -> ParseError {
        ParseError { line, reason: reason.into() }
    }
}

/// The module a document belongs to: its name without the format suffix, which may
/// end in overlay labels (`key@region=eu`). `None` when the name has no config suffix.
pub fn document_module(name: &str) -> Option<Result<ModuleName, NameError>> {
    Format::from_name(name)?;
    let (stem, _) = name.rsplit_once('.')?;
    Some(parse_module_name(stem))
}

/// Parses a document; its top level must be a map, so every module can be extended and
/// overlaid the same way.
pub fn parse_document(format: Format, bytes: &[u8]) -> Result<Value, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|error| {
        let line = line_of_offset(&bytes[..error.valid_up_to()], error.valid_up_to());
        ParseError::new(Some(line), "text is not valid UTF-8")
    })?;
    if text.trim().is_empty() {
        return Err(ParseError::new(None, "document is empty"));
    }
    let value = match format {
        Format::Json => serde_json::from_str::<Value>(text)
            .map_err(|error| ParseError::new(Some(saturating_u32(error.line())), strip_location(&error.to_string())))?,
        Format::Yaml => serde_norway::from_str::<Value>(text).map_err(|error| {
            let line = error.location().map(|location| saturating_u32(location.line()));
            ParseError::new(line, strip_location(&error.to_string()))
        })?,
        Format::Toml => {
            let table = toml::from_str::<toml::Table>(text).map_err(|error| {
                let line = error.span().map(|span| line_of_offset(text.as_bytes(), span.start));
                ParseError::new(line, error.message().to_owned())
            })?;
            serde_json::to_value(table)
                .map_err(|error| ParseError::new(None, format!("unsupported TOML value: {error}")))?
        }
    };
    if !value.is_object() {
        return Err(ParseError::new(Some(1), format!("top level must be a map, found {}", kind_of(&value))));
    }
    Ok(value)
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The 1-based line that byte `offset` of `text` is on.
pub fn line_of_offset(text: &[u8], offset: usize) -> u32 {
    let end = offset.min(text.len());
    saturating_u32(text[..end].iter().filter(|&&byte| byte == b'\n').count() + 1)
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parsers append " at line L column C" to their messages; the line is reported apart.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
