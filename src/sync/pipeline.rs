//! From a source update to what the store publishes: accept documents, resolve the
//! modules they touch, and keep track of every rejection.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

use super::documents::Documents;
use crate::{
    model::{Key, Rejection},
    resolve::{Labels, ModuleName, Modules, Resolver},
    source::Update,
};

pub struct Pipeline {
    documents: Documents,
    resolver: Resolver,
    /// Modules whose documents were accepted but that did not resolve, by key.
    unresolved: BTreeMap<Key, Rejection>,
}

/// One update's effect on what is served.
pub struct Outcome {
    /// Resolved values to publish (`None` = delete). Rejected modules are absent: their
    /// last good values stay.
    pub changes: BTreeMap<Key, Option<Arc<Value>>>,
    /// Set when an accepted document changed: the new inputs of resolution.
    pub modules: Option<Arc<Modules>>,
    /// Every rejection in force after the update.
    pub rejections: Vec<Rejection>,
}

impl Pipeline {
    pub fn new(labels: Labels) -> Pipeline {
        Pipeline { documents: Documents::default(), resolver: Resolver::new(labels), unresolved: BTreeMap::new() }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn apply(&mut self, update: Update, is_served: &dyn Fn(&Key) -> bool) -> Outcome {
        let accepted = self.documents.apply(update, is_served);
        let modules = self.resolver.modules();
        let changed: Vec<(ModuleName, Option<Arc<Value>>)> = accepted
            .modules
            .into_iter()
            .filter(|(name, document)| current_document(modules, name) != document.as_deref())
            .collect();
        let documents_changed = !changed.is_empty();

        let mut changes = BTreeMap::new();
        for (key, outcome) in self.resolver.apply(changed) {
            self.unresolved.remove(&key);
            match outcome {
                None => {
                    changes.insert(key, None);
                }
                Some(Ok(value)) => {
                    changes.insert(key, Some(value));
                }
                Some(Err(reason)) => {
                    let rejection = Rejection {
                        key: key.to_string(),
                        origin: self.documents.origin(&ModuleName::base(key.clone())),
                        line: None,
                        reason,
                        serving_previous: is_served(&key),
                    };
                    self.unresolved.insert(key, rejection);
                }
            }
        }
        let mut rejections: Vec<Rejection> = self.documents.rejections().collect();
        rejections.extend(self.unresolved.values().cloned());
        rejections.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.origin.cmp(&b.origin)));
        Outcome { changes, modules: documents_changed.then(|| Arc::new(self.resolver.modules().clone())), rejections }
    }
}

fn current_document<'a>(modules: &'a Modules, name: &ModuleName) -> Option<&'a Value> {
    let docs = modules.get(&name.key)?;
    if name.is_overlay() { docs.overlays.get(&name.overlay).map(|doc| &**doc) } else { docs.base.as_deref() }
}
