//! Deep merge: maps merge key by key, anything else replaces. Records which layer set
//! each top-level field, for Explain.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Merges `top` onto `bottom`.
pub fn deep_merge(bottom: &mut Value, top: &Value) {
    match (bottom, top) {
        (Value::Object(bottom), Value::Object(top)) => merge_maps(bottom, top),
        (bottom, top) => *bottom = top.clone(),
    }
}

fn merge_maps(bottom: &mut Map<String, Value>, top: &Map<String, Value>) {
    for (name, value) in top {
        merge_field(bottom, name, value);
    }
}

fn merge_field(bottom: &mut Map<String, Value>, name: &str, value: &Value) {
    match bottom.get_mut(name) {
        Some(existing) => deep_merge(existing, value),
        None => {
            bottom.insert(name.to_owned(), value.clone());
        }
    }
}

/// Layers merged bottom to top, remembering the last layer that touched each top-level field.
#[derive(Debug, Default)]
pub struct Layered {
    pub value: Map<String, Value>,
    pub suppliers: BTreeMap<String, String>,
}

impl Layered {
    /// Merges the fields of one layer onto what is below it.
    pub fn add<'a>(&mut self, layer: &str, top: impl Iterator<Item = (&'a String, &'a Value)>) {
        for (name, value) in top {
            self.suppliers.insert(name.clone(), layer.to_owned());
            merge_field(&mut self.value, name, value);
        }
    }
}
