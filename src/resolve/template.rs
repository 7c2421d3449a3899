//! References inside values: `${key}` or `${key#/json/pointer}`.
//!
//! A string that is exactly one reference becomes the referenced value, with its type.
//! A reference inside a longer string is replaced by the scalar's text. `$${` is a
//! literal `${`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::model::Key;

/// One `${...}` found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub key: Key,
    /// RFC 6901 pointer, empty for the whole value.
    pub pointer: String,
}

impl Reference {
    pub fn text(&self) -> String {
        if self.pointer.is_empty() {
            format!("${{{}}}", self.key)
        } else {
            format!("${{{}#{}}}", self.key, self.pointer)
        }
    }
}

enum Piece<'a> {
    Text(&'a str),
    Reference(Reference),
}

/// Splits a string into text and references; an error names the malformed reference.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            // `$${` stays literal: emit the text up to and including one `$` and `{`.
            pieces.push(Piece::Text(&rest[..at - 1]));
            pieces.push(Piece::Text("${"));
            rest = &rest[at + 2..];
            continue;
        }
        pieces.push(Piece::Text(&rest[..at]));
        let body_start = at + 2;
        let end = rest[body_start..].find('}').ok_or_else(|| format!("unclosed reference in {text:?}"))?;
        let body = &rest[body_start..body_start + end];
        let (key, pointer) = body.split_once('#').unwrap_or((body, ""));
        let key = Key::new(key).map_err(|error| format!("reference ${{{body}}}: {error}"))?;
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(format!("reference ${{{body}}}: a pointer starts with '/'"));
        }
        pieces.push(Piece::Reference(Reference { key, pointer: pointer.to_owned() }));
        rest = &rest[body_start + end + 1..];
    }
    pieces.push(Piece::Text(rest));
    pieces.retain(|piece| !matches!(piece, Piece::Text("")));
    Ok(pieces)
}

/// The keys a value refers to.
pub fn referenced_keys(value: &Value, keys: &mut BTreeSet<Key>) -> Result<(), String> {
    match value {
        Value::String(text) if text.contains("${") => {
            for piece in pieces(text)? {
                if let Piece::Reference(reference) = piece {
                    keys.insert(reference.key);
                }
            }
        }
        Value::Array(items) => items.iter().try_for_each(|item| referenced_keys(item, keys))?,
        Value::Object(fields) => fields.values().try_for_each(|field| referenced_keys(field, keys))?,
        _ => {}
    }
    Ok(())
}

/// Replaces every reference in `value`, looking referenced modules up with `lookup`
/// (`None`: no such module). `followed` collects (JSON path, reference) for Explain.
pub fn substitute(
    value: &mut Value,
    path: &mut String,
    lookup: &dyn Fn(&Key) -> Option<std::sync::Arc<Value>>,
    followed: &mut Vec<(String, String)>,
) -> Result<(), String> {
    match value {
        Value::String(text) if text.contains("${") => {
            let text = std::mem::take(text);
            let pieces = pieces(&text)?;
            let target = |reference: &Reference| -> Result<Value, String> {
                let module = lookup(&reference.key).ok_or_else(|| {
                    format!("reference {} at {}: no module {}", reference.text(), at(path), reference.key)
                })?;
                module.pointer(&reference.pointer).cloned().ok_or_else(|| {
                    format!(
                        "reference {} at {}: {} has nothing at {}",
                        reference.text(),
                        at(path),
                        reference.key,
                        reference.pointer
                    )
                })
            };
            if let [Piece::Reference(reference)] = pieces.as_slice() {
                *value = target(reference)?;
                followed.push((at(path), reference.text()));
                return Ok(());
            }
            let mut out = String::new();
            for piece in &pieces {
                match piece {
                    Piece::Text(text) => out.push_str(text),
                    Piece::Reference(reference) => {
                        match target(reference)? {
                            Value::String(s) => out.push_str(&s),
                            scalar @ (Value::Number(_) | Value::Bool(_) | Value::Null) => {
                                out.push_str(&scalar.to_string())
                            }
                            other => {
                                return Err(format!(
                                    "reference {} at {}: only a scalar can go inside a string, found {}",
                                    reference.text(),
                                    at(path),
                                    super::parse::kind_of(&other)
                                ));
                            }
                        }
                        followed.push((at(path), reference.text()));
                    }
                }
            }
            *value = Value::String(out);
        }
        Value::Array(items) => {
            for (n, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{n}"));
                substitute(item, path, lookup, followed)?;
                path.truncate(len);
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                let len = path.len();
                path.push('/');
                path.push_str(&name.replace('~', "~0").replace('/', "~1"));
                substitute(field, path, lookup, followed)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn at(path: &str) -> String {
    if path.is_empty() { "/".to_owned() } else { path.to_owned() }
}
