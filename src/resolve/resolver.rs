//! Resolution of a whole configuration, kept up to date change by change, and resolution
//! of single modules on demand under other labels.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use serde_json::Value;

use super::{
    Labels, ModuleName,
    graph::{components, cycle_path},
    module::{Explanation, Failure, ModuleDocs, Prepared, SchemaCache, finish, prepare},
};
use crate::model::Key;

/// A module's resolved value, or why it has none.
pub type Outcome = Result<Arc<Value>, Failure>;

/// Every accepted document, by module key. Clones share the documents.
#[derive(Debug, Clone, Default)]
pub struct Modules {
    by_key: BTreeMap<Key, Arc<ModuleDocs>>,
}

impl Modules {
    /// Sets (`Some`) or removes (`None`) one document.
    pub fn set(&mut self, name: &ModuleName, document: Option<Arc<Value>>) {
        let docs = Arc::make_mut(self.by_key.entry(name.key.clone()).or_default());
        match (name.is_overlay(), document) {
            (false, document) => docs.base = document,
            (true, Some(document)) => {
                docs.overlays.insert(name.overlay.clone(), document);
            }
            (true, None) => {
                docs.overlays.remove(&name.overlay);
            }
        }
        if docs.base.is_none() && docs.overlays.is_empty() {
            self.by_key.remove(&name.key);
        }
    }

    pub fn get(&self, key: &Key) -> Option<&ModuleDocs> {
        self.by_key.get(key).map(|docs| &**docs)
    }

    /// Every document with the name of the module it belongs to.
    pub fn documents(&self) -> impl Iterator<Item = (ModuleName, Arc<Value>)> + '_ {
        self.by_key.iter().flat_map(|(key, docs)| {
            let base = docs.base.iter().map(move |document| (ModuleName::base(key.clone()), document.clone()));
            let overlays = docs.overlays.iter().map(move |(overlay, document)| {
                (ModuleName { key: key.clone(), overlay: overlay.clone() }, document.clone())
            });
            base.chain(overlays)
        })
    }

    /// Every module key that has a document of its own.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.by_key.iter().filter(|(_, docs)| docs.base.is_some()).map(|(key, _)| key)
    }
}

struct Node {
    prepared: Result<Prepared, Failure>,
    outcome: Outcome,
}

impl Node {
    fn deps(&self) -> Vec<&Key> {
        match &self.prepared {
            Ok(prepared) => prepared.deps.iter().collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The resolved configuration for one set of labels (the instance's), updated
/// incrementally: a change resolves again only the changed modules and their transitive
/// dependents.
pub struct Resolver {
    labels: Labels,
    modules: Modules,
    nodes: BTreeMap<Key, Node>,
    /// Reverse edges: who depends on a key, including keys that do not exist (yet), so
    /// that a dangling reference is resolved again when its target appears.
    dependents: BTreeMap<Key, BTreeSet<Key>>,
    schemas: SchemaCache,
}

impl Resolver {
    pub fn new(labels: Labels) -> Resolver {
        Resolver {
            labels,
            modules: Modules::default(),
            nodes: BTreeMap::new(),
            dependents: BTreeMap::new(),
            schemas: SchemaCache::default(),
        }
    }

    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    pub fn outcome(&self, key: &Key) -> Option<&Outcome> {
        self.nodes.get(key).map(|node| &node.outcome)
    }

    /// Every module's dependencies and their kinds, for the graph view.
    pub fn edges(&self) -> impl Iterator<Item = (&Key, Vec<(&Key, &'static str)>)> {
        self.nodes.iter().map(|(key, node)| (key, node.prepared.as_ref().map(Prepared::edges).unwrap_or_default()))
    }

    /// Applies document changes (`None` removes a document) and returns the new outcome
    /// of every module resolved again; `None` for a module that no longer exists.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = (ModuleName, Option<Arc<Value>>)>,
    ) -> BTreeMap<Key, Option<Outcome>> {
        let mut changed = BTreeSet::new();
        for (name, document) in changes {
            self.modules.set(&name, document);
            changed.insert(name.key);
        }
        for key in &changed {
            if let Some(node) = self.nodes.remove(key) {
                for dep in node.deps() {
                    if let Some(dependents) = self.dependents.get_mut(dep) {
                        dependents.remove(key);
                        if dependents.is_empty() {
                            self.dependents.remove(dep);
                        }
                    }
                }
            }
            let Some(prepared) = self.modules.get(key).and_then(|docs| prepare(key, docs, &self.labels)) else {
                continue;
            };
            let node = Node { prepared, outcome: Err("not resolved yet".to_owned()) };
            for dep in node.deps() {
                self.dependents.entry(dep.clone()).or_default().insert(key.clone());
            }
            self.nodes.insert(key.clone(), node);
        }

        let mut dirty = BTreeSet::new();
        let mut queue: Vec<Key> = changed.into_iter().collect();
        while let Some(key) = queue.pop() {
            if let Some(dependents) = self.dependents.get(&key) {
                queue.extend(dependents.iter().filter(|dependent| !dirty.contains(*dependent)).cloned());
            }
            dirty.insert(key);
        }
        let live: BTreeSet<Key> = dirty.iter().filter(|key| self.nodes.contains_key(*key)).cloned().collect();
        let deps_of = |key: &Key| self.nodes.get(key).map(Node::deps).unwrap_or_default();
        let order = components(&live, deps_of);

        for component in order {
            let cyclic = component.len() > 1 || deps_of_owned(&self.nodes, &component[0]).contains(&component[0]);
            if cyclic {
                let path = cycle_path(&component, |key| self.nodes.get(key).map(Node::deps).unwrap_or_default());
                for key in &component {
                    if let Some(node) = self.nodes.get_mut(key) {
                        node.outcome = Err(format!("cycle: {path}"));
                    }
                }
                continue;
            }
            let key = &component[0];
            let outcome = self.resolve_one(key);
            if let Some(node) = self.nodes.get_mut(key) {
                node.outcome = outcome;
            }
        }
        dirty
            .into_iter()
            .map(|key| {
                let outcome = self.nodes.get(&key).map(|node| node.outcome.clone());
                (key, outcome)
            })
            .collect()
    }

    fn resolve_one(&self, key: &Key) -> Outcome {
        let node = &self.nodes[key];
        let prepared = node.prepared.as_ref().map_err(Clone::clone)?;
        for dep in &prepared.deps {
            if let Some(Node { outcome: Err(_), .. }) = self.nodes.get(dep) {
                return Err(format!("depends on {dep}, which is rejected"));
            }
        }
        let lookup = |dep: &Key| self.nodes.get(dep).and_then(|node| node.outcome.as_ref().ok().cloned());
        finish(prepared, &lookup, &self.schemas).map(|(value, _)| Arc::new(value))
    }
}

fn deps_of_owned(nodes: &BTreeMap<Key, Node>, key: &Key) -> Vec<Key> {
    nodes.get(key).map(|node| node.deps().into_iter().cloned().collect()).unwrap_or_default()
}

/// Longest chain of dependencies followed on demand.
const MAX_DEPTH: usize = 64;

/// Resolves single modules under some labels, with their dependencies, on demand. One
/// instance memoises what it resolved, so several keys of one request share the work.
pub struct OnDemand<'a> {
    modules: &'a Modules,
    labels: &'a Labels,
    schemas: &'a SchemaCache,
    memo: HashMap<Key, Outcome>,
    visiting: Vec<Key>,
}

impl<'a> OnDemand<'a> {
    pub fn new(modules: &'a Modules, labels: &'a Labels, schemas: &'a SchemaCache) -> OnDemand<'a> {
        OnDemand { modules, labels, schemas, memo: HashMap::new(), visiting: Vec::new() }
    }

    /// The module's value, or `None` when there is no such module.
    pub fn resolve(&mut self, key: &Key) -> Option<Outcome> {
        self.explain(key).map(|outcome| outcome.map(|(value, _)| value))
    }

    /// The module's value and where each part came from.
    pub fn explain(&mut self, key: &Key) -> Option<Result<(Arc<Value>, Explanation), Failure>> {
        let prepared = match prepare(key, self.modules.get(key)?, self.labels)? {
            Ok(prepared) => prepared,
            Err(failure) => return Some(Err(failure)),
        };
        self.visiting.push(key.clone());
        let mut failed = None;
        for dep in &prepared.deps {
            if let Some(position) = self.visiting.iter().position(|visiting| visiting == dep) {
                let mut path: Vec<&str> = self.visiting[position..].iter().map(Key::as_str).collect();
                path.push(dep.as_str());
                failed = Some(format!("cycle: {}", path.join(" → ")));
                break;
            }
            if self.visiting.len() > MAX_DEPTH {
                failed = Some(format!("dependency chain longer than {MAX_DEPTH} at {dep}"));
                break;
            }
            let outcome = match self.memo.get(dep) {
                Some(outcome) => Some(outcome.clone()),
                None => self.resolve(dep),
            };
            if let Some(outcome) = &outcome {
                self.memo.insert(dep.clone(), outcome.clone());
            }
            if let Some(Err(failure)) = outcome {
                failed = Some(if failure.starts_with("cycle: ") {
                    failure
                } else {
                    format!("depends on {dep}, which is rejected")
                });
                break;
            }
        }
        self.visiting.pop();
        if let Some(failure) = failed {
            return Some(Err(failure));
        }
        let memo = &self.memo;
        let lookup = |dep: &Key| memo.get(dep).and_then(|outcome| outcome.as_ref().ok().cloned());
        Some(finish(&prepared, &lookup, self.schemas).map(|(value, explanation)| (Arc::new(value), explanation)))
    }
}
