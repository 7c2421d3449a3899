//! The upstream's documents as last reported, and which of them were accepted.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde_json::Value;

use crate::{
    model::{Key, Rejection},
    resolve::{Format, ModuleName, document_module, parse_document},
    source::{Document, Update},
};

/// Document texts by name, the module each belongs to, and the documents rejected.
#[derive(Default)]
pub struct Documents {
    /// By document name, as the source last reported them.
    texts: BTreeMap<String, Document>,
    /// Which document names define each module; more than one is a conflict.
    names_by_module: BTreeMap<ModuleName, BTreeSet<String>>,
    /// Names that are not valid module names, kept so that they can be reported and cleared.
    bad_names: BTreeMap<String, String>,
    /// By document name.
    rejections: BTreeMap<String, Rejection>,
}

/// What one update did to the documents.
pub struct Accepted {
    /// Module documents that were accepted (`Some`) or went away (`None`). A document
    /// that was rejected is not here: its module keeps its last accepted document.
    pub modules: BTreeMap<ModuleName, Option<Arc<Value>>>,
}

impl Documents {
    /// Applies a source update. `is_served` says whether a key has a good value being
    /// served, for a rejection's `serving_previous`.
    pub fn apply(&mut self, update: Update, is_served: &dyn Fn(&Key) -> bool) -> Accepted {
        let mut touched_names: BTreeSet<String> = update.changes.keys().cloned().collect();
        if update.full {
            touched_names.extend(self.texts.keys().cloned());
            self.texts.clear();
        }
        for (name, document) in update.changes {
            match document {
                Some(document) => self.texts.insert(name, document),
                None => self.texts.remove(&name),
            };
        }

        let mut touched_modules = BTreeSet::new();
        for name in touched_names {
            self.bad_names.remove(&name);
            self.rejections.remove(&name);
            match document_module(&name) {
                Some(Ok(module)) => {
                    let names = self.names_by_module.entry(module.clone()).or_default();
                    if self.texts.contains_key(&name) {
                        names.insert(name);
                    } else {
                        names.remove(&name);
                    }
                    touched_modules.insert(module);
                }
                Some(Err(error)) if self.texts.contains_key(&name) => {
                    self.bad_names.insert(name, format!("file name is not a valid module name: {error}"));
                }
                _ => {}
            }
        }

        let mut modules = BTreeMap::new();
        for module in touched_modules {
            self.rejections.retain(|_, rejection| !rejection_is_for(rejection, &module));
            let names = self.names_by_module.get(&module).cloned().unwrap_or_default();
            let mut names_iter = names.iter();
            let (Some(name), None) = (names_iter.next(), names_iter.next()) else {
                if names.is_empty() {
                    self.names_by_module.remove(&module);
                    modules.insert(module, None);
                } else {
                    let listed = names.iter().cloned().collect::<Vec<_>>().join(" and ");
                    for name in &names {
                        let reason = format!("module {module} is defined by both {listed}");
                        self.reject(&module, name, None, reason, is_served);
                    }
                }
                continue;
            };
            match self.parse(name) {
                Ok(value) => {
                    modules.insert(module, Some(Arc::new(value)));
                }
                Err((line, reason)) => self.reject(&module, name, line, reason, is_served),
            }
        }
        Accepted { modules }
    }

    /// The document rejections in force, in name order.
    pub fn rejections(&self) -> impl Iterator<Item = Rejection> + '_ {
        let bad_names = self.bad_names.iter().map(|(name, reason)| Rejection {
            key: name.clone(),
            origin: name.clone(),
            line: None,
            reason: reason.clone(),
            serving_previous: false,
        });
        self.rejections.values().cloned().chain(bad_names)
    }

    /// The document that defines a module, for messages about it.
    pub fn origin(&self, module: &ModuleName) -> String {
        self.names_by_module
            .get(module)
            .and_then(|names| names.iter().next().cloned())
            .unwrap_or_else(|| module.to_string())
    }

    fn parse(&self, name: &str) -> Result<Value, (Option<u32>, String)> {
        let format = Format::from_name(name).ok_or((None, "unknown format".to_owned()))?;
        match self.texts.get(name) {
            Some(Ok(bytes)) => parse_document(format, bytes).map_err(|error| (error.line, error.reason)),
            Some(Err(reason)) => Err((None, reason.clone())),
            None => Err((None, "document vanished".to_owned())),
        }
    }

    fn reject(
        &mut self,
        module: &ModuleName,
        name: &str,
        line: Option<u32>,
        reason: String,
        is_served: &dyn Fn(&Key) -> bool,
    ) {
        let rejection = Rejection {
            key: module.key.to_string(),
            origin: name.to_owned(),
            line,
            reason,
            serving_previous: is_served(&module.key),
        };
        self.rejections.insert(name.to_owned(), rejection);
    }
}

fn rejection_is_for(rejection: &Rejection, module: &ModuleName) -> bool {
    document_module(&rejection.origin).and_then(Result::ok).as_ref() == Some(module)
}
