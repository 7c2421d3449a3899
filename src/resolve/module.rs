//! Resolving one module, given the resolved values of what it depends on.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use serde_json::Value;

use super::{
    Labels, ModuleName,
    merge::Layered,
    name::overlay_applies,
    template::{referenced_keys, substitute},
};
use crate::model::Key;

/// Names a module's bases, merged underneath it in order (later bases win).
pub const EXTENDS: &str = "$extends";
/// Names the schema module a module's value must satisfy. A value with a ':' (a JSON
/// Schema meta-schema URI) is not a module name and is left alone.
pub const SCHEMA: &str = "$schema";

/// Every accepted document of one module: its own, and its overlays.
#[derive(Debug, Clone, Default)]
pub struct ModuleDocs {
    pub base: Option<Arc<Value>>,
    /// By overlay labels.
    pub overlays: BTreeMap<Labels, Arc<Value>>,
}

/// A module's own layers under some labels, its directives and its dependencies:
/// everything about it that does not depend on other modules.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Bottom to top.
    layers: Vec<Layer>,
    extends: Vec<Key>,
    schema: Option<Key>,
    pub deps: BTreeSet<Key>,
}

/// Why a module was not resolved: a message for Status, or a dependency that was rejected.
pub type Failure = String;

/// What Explain shows for a resolved value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    /// Bottom to top: bases (`extends KEY`), the module itself, matching overlays.
    pub layers: Vec<String>,
    /// Top-level field → the layer that supplied its final value.
    pub fields: BTreeMap<String, String>,
    /// (JSON path, reference) for every reference followed.
    pub references: Vec<(String, String)>,
    pub schema: Option<Key>,
}

/// Overlays that apply to `labels`, least specific first; ties broken by name.
fn applicable_overlays<'a>(docs: &'a ModuleDocs, labels: &Labels) -> Vec<(&'a Labels, &'a Arc<Value>)> {
    let mut overlays: Vec<_> = docs.overlays.iter().filter(|(overlay, _)| overlay_applies(overlay, labels)).collect();
    overlays.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    overlays
}

/// Collects a module's layers and directives. `None` when the module has no document of
/// its own (overlays alone make no module).
pub fn prepare(key: &Key, docs: &ModuleDocs, labels: &Labels) -> Option<Result<Prepared, Failure>> {
    let base = docs.base.as_ref()?;
    let mut documents = vec![(key.to_string(), base)];
    for (overlay, document) in applicable_overlays(docs, labels) {
        documents.push((ModuleName { key: key.clone(), overlay: overlay.clone() }.to_string(), document));
    }
    Some(prepare_layers(documents))
}

impl Prepared {
    /// Each dependency with what makes it one: `extends`, `schema` or `reference`.
    pub fn edges(&self) -> Vec<(&Key, &'static str)> {
        self.deps
            .iter()
            .map(|dep| {
                let kind = if self.extends.contains(dep) {
                    "extends"
                } else if self.schema.as_ref() == Some(dep) {
                    "schema"
                } else {
                    "reference"
                };
                (dep, kind)
            })
            .collect()
    }
}

/// One document of a module, shared with the accepted documents rather than copied: the
/// resolver keeps a `Prepared` for every module, and copies would double the memory the
/// configuration takes.
#[derive(Debug, Clone)]
struct Layer {
    name: String,
    /// A map: `prepare_layers` refuses anything else.
    document: Arc<Value>,
    /// Whether the document's `$schema` names a schema module, a directive rather than a
    /// field of the value.
    schema_directive: bool,
}

impl Layer {
    /// The document's fields without its directives.
    fn fields(&self) -> impl Iterator<Item = (&String, &Value)> {
        let fields = match &*self.document {
            Value::Object(fields) => Some(fields.iter()),
            _ => None,
        };
        fields.into_iter().flatten().filter(|(name, _)| *name != EXTENDS && !(self.schema_directive && *name == SCHEMA))
    }
}

fn prepare_layers(documents: Vec<(String, &Arc<Value>)>) -> Result<Prepared, Failure> {
    let mut extends = None;
    let mut schema = None;
    let mut layers = Vec::new();
    for (name, document) in documents {
        let Value::Object(fields) = &**document else {
            return Err(format!("{name}: top level must be a map"));
        };
        if let Some(value) = fields.get(EXTENDS) {
            extends = Some(parse_extends(value).map_err(|error| format!("{name}: {error}"))?);
        }
        let schema_directive = match fields.get(SCHEMA) {
            Some(Value::String(text)) if !text.contains(':') => {
                schema = Some(Key::new(text).map_err(|error| format!("{name}: {SCHEMA} {text:?}: {error}"))?);
                true
            }
            Some(Value::String(_)) | None => false,
            Some(_) => return Err(format!("{name}: {SCHEMA} must name a schema module")),
        };
        layers.push(Layer { name, document: document.clone(), schema_directive });
    }
    let extends = extends.unwrap_or_default();
    let mut deps: BTreeSet<Key> = extends.iter().cloned().collect();
    deps.extend(schema.iter().cloned());
    for layer in &layers {
        for (_, field) in layer.fields() {
            referenced_keys(field, &mut deps)?;
        }
    }
    Ok(Prepared { layers, extends, schema, deps })
}

fn parse_extends(value: &Value) -> Result<Vec<Key>, String> {
    let names: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) => items.iter().collect(),
        _ => return Err(format!("{EXTENDS} must be a key or a list of keys")),
    };
    names
        .into_iter()
        .map(|name| match name {
            Value::String(text) => Key::new(text).map_err(|error| format!("{EXTENDS} {text:?}: {error}")),
            _ => Err(format!("{EXTENDS} must be a key or a list of keys")),
        })
        .collect()
}

/// A compiled schema and the value it was compiled from; holding the value keeps its
/// address, the cache key, from being reused by another value.
type Compiled = (Arc<Value>, Arc<jsonschema::Validator>);

/// Compiled schemas, by the address of the schema value they were compiled from.
#[derive(Default)]
pub struct SchemaCache {
    compiled: Mutex<HashMap<usize, Compiled>>,
}

/// Compiled schemas kept at most; the cache is cleared past this.
const MAX_SCHEMAS: usize = 256;

impl SchemaCache {
    fn validator(&self, key: &Key, schema: &Arc<Value>) -> Result<Arc<jsonschema::Validator>, Failure> {
        let id = Arc::as_ptr(schema) as usize;
        let mut compiled = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, validator)) = compiled.get(&id) {
            return Ok(validator.clone());
        }
        let validator = Arc::new(
            jsonschema::validator_for(schema)
                .map_err(|error| format!("schema {key} is not a valid JSON Schema: {error}"))?,
        );
        if compiled.len() >= MAX_SCHEMAS {
            compiled.clear();
        }
        compiled.insert(id, (schema.clone(), validator.clone()));
        Ok(validator)
    }
}

/// Most schema violations listed in one rejection.
const MAX_SCHEMA_ERRORS: usize = 3;

/// Resolves a prepared module. `lookup` gives the resolved value of a dependency, or
/// `None` when no such module exists.
pub fn finish(
    prepared: &Prepared,
    lookup: &dyn Fn(&Key) -> Option<Arc<Value>>,
    schemas: &SchemaCache,
) -> Result<(Value, Explanation), Failure> {
    let mut layered = Layered::default();
    let mut explanation = Explanation { schema: prepared.schema.clone(), ..Default::default() };
    for base in &prepared.extends {
        let value = lookup(base).ok_or_else(|| format!("{EXTENDS} {base}: no module {base}"))?;
        let layer = format!("extends {base}");
        if let Value::Object(fields) = &*value {
            layered.add(&layer, fields.iter());
        }
        explanation.layers.push(layer);
    }
    for layer in &prepared.layers {
        layered.add(&layer.name, layer.fields());
        explanation.layers.push(layer.name.clone());
    }
    explanation.fields = layered.suppliers;
    let mut value = Value::Object(layered.value);
    substitute(&mut value, &mut String::new(), lookup, &mut explanation.references)?;
    if let Some(schema_key) = &prepared.schema {
        let schema = lookup(schema_key).ok_or_else(|| format!("{SCHEMA} {schema_key}: no module {schema_key}"))?;
        let validator = schemas.validator(schema_key, &schema)?;
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .take(MAX_SCHEMA_ERRORS)
            .map(|error| {
                let path = error.instance_path().to_string();
                format!("at {}: {error}", if path.is_empty() { "/" } else { &path })
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!("fails schema {schema_key}: {}", errors.join("; ")));
        }
    }
    Ok((value, explanation))
}
