//! The sync loop: the only path from an upstream source to the store.
//!
//! It keeps the upstream's documents as last seen, turns each source update into one
//! change-set (parsing only the documents that changed), and records upstream health for
//! Status. A rejected document never replaces a served value, and a source error never
//! clears what is served.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    model::{Key, Rejection},
    resolve::{Format, document_key, parse_document},
    source::{Document, SourceEvent, Update},
    store::Publisher,
};

/// What Status reports about the upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamState {
    pub healthy: bool,
    pub last_sync: Option<SystemTime>,
    pub error: Option<String>,
}

/// Shared between the sync loop (writer) and Status (reader); held only to copy.
#[derive(Debug)]
pub struct Upstream {
    /// "file", "etcd", ...
    pub kind: &'static str,
    pub uri: String,
    state: Mutex<UpstreamState>,
}

impl Upstream {
    pub fn new(kind: &'static str, uri: String) -> Upstream {
        Upstream { kind, uri, state: Mutex::new(UpstreamState::default()) }
    }

    pub fn state(&self) -> UpstreamState {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut UpstreamState)) {
        change(&mut self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

/// The upstream's documents and what they became.
#[derive(Default)]
pub struct Documents {
    /// By document name, as the source last reported them.
    texts: BTreeMap<String, Document>,
    /// Which document names define each key; more than one is a conflict.
    names_by_key: BTreeMap<Key, BTreeSet<String>>,
    /// Names that are not valid keys, kept so that they can be reported and cleared.
    bad_names: BTreeMap<String, String>,
    rejections: BTreeMap<String, Rejection>,
}

/// One update's effect: values to publish (`None` = delete) and the rejections now in force.
pub struct Outcome {
    pub changes: BTreeMap<Key, Option<Arc<Value>>>,
    pub rejections: Vec<Rejection>,
}

impl Documents {
    /// Applies a source update and works out what to publish. `is_served` says whether a
    /// key has a good value being served, for the rejection's `serving_previous`.
    pub fn apply(&mut self, update: Update, is_served: impl Fn(&Key) -> bool) -> Outcome {
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

        let mut touched_keys = BTreeSet::new();
        for name in touched_names {
            self.bad_names.remove(&name);
            self.rejections.remove(&name);
            match document_key(&name) {
                Some(Ok(key)) => {
                    let names = self.names_by_key.entry(key.clone()).or_default();
                    if self.texts.contains_key(&name) {
                        names.insert(name);
                    } else {
                        names.remove(&name);
                    }
                    touched_keys.insert(key);
                }
                Some(Err(error)) if self.texts.contains_key(&name) => {
                    self.bad_names.insert(name, format!("file name is not a valid key: {error}"));
                }
                _ => {}
            }
        }

        let mut changes = BTreeMap::new();
        for key in touched_keys {
            self.rejections.retain(|_, rejection| rejection.key != key.as_str());
            let names = self.names_by_key.get(&key).cloned().unwrap_or_default();
            let mut names_iter = names.iter();
            let (Some(name), None) = (names_iter.next(), names_iter.next()) else {
                if names.is_empty() {
                    self.names_by_key.remove(&key);
                    changes.insert(key, None);
                } else {
                    let listed = names.iter().cloned().collect::<Vec<_>>().join(" and ");
                    for name in &names {
                        self.reject(&key, name, None, format!("key {key} is defined by both {listed}"), &is_served);
                    }
                }
                continue;
            };
            match self.parse(name) {
                Ok(value) => {
                    changes.insert(key, Some(Arc::new(value)));
                }
                Err((line, reason)) => self.reject(&key, name, line, reason, &is_served),
            }
        }
        let mut rejections: Vec<Rejection> = self.rejections.values().cloned().collect();
        rejections.extend(self.bad_names.iter().map(|(name, reason)| Rejection {
            key: name.clone(),
            origin: name.clone(),
            line: None,
            reason: reason.clone(),
            serving_previous: false,
        }));
        Outcome { changes, rejections }
    }

    fn parse(&self, name: &str) -> Result<Value, (Option<u32>, String)> {
        let format = Format::from_name(name).ok_or((None, "unknown format".to_owned()))?;
        match self.texts.get(name) {
            Some(Ok(bytes)) => parse_document(format, bytes).map_err(|error| (error.line, error.reason)),
            Some(Err(reason)) => Err((None, reason.clone())),
            None => Err((None, "document vanished".to_owned())),
        }
    }

    fn reject(&mut self, key: &Key, name: &str, line: Option<u32>, reason: String, is_served: &impl Fn(&Key) -> bool) {
        let rejection =
            Rejection { key: key.to_string(), origin: name.to_owned(), line, reason, serving_previous: is_served(key) };
        self.rejections.insert(name.to_owned(), rejection);
    }
}

/// Runs until the source stops or `drain` fires.
pub async fn run(
    mut events: mpsc::Receiver<SourceEvent>,
    mut publisher: Publisher,
    upstream: Arc<Upstream>,
    drain: CancellationToken,
) {
    let mut documents = Documents::default();
    loop {
        let event = tokio::select! {
            _ = drain.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            SourceEvent::Update(update) => {
                let snapshot = publisher.store().snapshot();
                let outcome = documents.apply(update, |key| snapshot.get(key.as_str()).is_some());
                drop(snapshot);
                let n_changes = outcome.changes.len();
                if let Some(revision) = publisher.apply(outcome.changes) {
                    info!(revision, n_changes, "published");
                }
                for rejection in publisher.set_rejections(outcome.rejections).iter() {
                    warn!(key = %rejection.key, serving_previous = rejection.serving_previous, "config rejected: {rejection}");
                }
                upstream.update(|state| {
                    state.healthy = true;
                    state.last_sync = Some(SystemTime::now());
                    state.error = None;
                });
            }
            SourceEvent::Unhealthy(error) => {
                warn!(upstream = %upstream.uri, %error, "upstream unavailable; serving the last good config");
                upstream.update(|state| {
                    state.healthy = false;
                    state.error = Some(error);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
