//! The sync loop: the only path from an upstream source to the store.
//!
//! It keeps the upstream's documents as last seen, turns each source update into one
//! change-set (parsing the documents that changed and resolving the modules they touch),
//! and records upstream health for Status. A rejected document never replaces a served
//! value, and a source error never clears what is served.

pub mod backoff;
mod documents;
pub mod last_known_good;
mod pipeline;

pub use pipeline::{Outcome, Pipeline};

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::SystemTime,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    metrics::Metrics,
    relay::Hub,
    resolve::Labels,
    source::{SourceEvent, Update},
    store::Publisher,
    sync::last_known_good::{SavedState, StateFile},
};

/// What Status reports about the upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamState {
    pub healthy: bool,
    pub last_sync: Option<SystemTime>,
    pub error: Option<String>,
    /// Serving what an earlier run saved; cleared by the first update from the upstream.
    pub serving_from_last_known_good: bool,
    /// The upstream's own revision after the last update applied.
    pub revision: Option<i64>,
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

    pub fn update(&self, change: impl FnOnce(&mut UpstreamState)) {
        change(&mut self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

/// What turns a source update into a publication: owned by the loop, lent to a blocking
/// thread for each update so that resolving never occupies a thread serving requests.
struct Applier {
    pipeline: Pipeline,
    publisher: Publisher,
    upstream: Arc<Upstream>,
    last_known_good: Option<LastKnownGood>,
}

/// Where accepted states are saved, the source they belong to, and the counters of
/// writes.
pub struct LastKnownGood {
    pub file: StateFile,
    pub source: String,
    pub metrics: Arc<Metrics>,
}

impl Applier {
    fn apply(&mut self, update: Update) {
        let snapshot = self.publisher.store().snapshot();
        let full = update.full;
        let upstream_revision = update.upstream_revision;
        let mut outcome = self.pipeline.apply(update, &|key| snapshot.get(key.as_str()).is_some());
        if full {
            // A full update is the whole upstream: whatever is served without a module
            // behind it any more (kept from a last-known-good state, say) goes.
            let modules = self.pipeline.resolver().modules();
            for key in snapshot.entries.keys() {
                if modules.get(key).is_none_or(|docs| docs.base.is_none()) {
                    outcome.changes.insert(key.clone(), None);
                }
            }
        }
        drop(snapshot);
        // Upstream state and rejections first: a client that sees the change-set and then
        // asks Status must find what came with it.
        self.upstream.update(|state| {
            state.healthy = true;
            state.last_sync = Some(SystemTime::now());
            state.error = None;
            state.serving_from_last_known_good = false;
            state.revision = upstream_revision.or(state.revision);
        });
        for rejection in self.publisher.set_rejections(outcome.rejections).iter() {
            warn!(key = %rejection.key, serving_previous = rejection.serving_previous, "config rejected: {rejection}");
        }
        let n_changes = outcome.changes.len();
        let Some(pending) = self.publisher.prepare(outcome.changes, outcome.modules) else { return };
        // Saved before it is published: a revision a client has seen is never lost in a
        // crash, and never issued again with other contents after a restart.
        if let Some(last_known_good) = &self.last_known_good {
            let snapshot = pending.snapshot();
            let entries = snapshot.entries.iter().map(|(key, entry)| (key.to_string(), entry.value.clone()));
            let epoch = self.publisher.store().epoch();
            let state = SavedState::new(&last_known_good.source, epoch, snapshot.revision, entries, &snapshot.modules);
            match last_known_good.file.save(&state) {
                Ok(()) => last_known_good.metrics.last_known_good_writes.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    warn!(%error, "cannot save the last-known-good state; the previous one stays");
                    last_known_good.metrics.last_known_good_failures.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        let revision = self.publisher.publish(pending);
        info!(revision, n_changes, "published");
    }
}

/// Runs until the source stops or `drain` fires.
pub async fn run(
    mut events: mpsc::Receiver<SourceEvent>,
    publisher: Publisher,
    upstream: Arc<Upstream>,
    labels: Labels,
    last_known_good: Option<LastKnownGood>,
    relay: Option<Arc<Hub>>,
    drain: CancellationToken,
) {
    let mut applier =
        Applier { pipeline: Pipeline::new(labels), publisher, upstream: upstream.clone(), last_known_good };
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
                let relay = relay.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    // Sidecars get every document as the upstream has it, whatever this
                    // process makes of it with its own labels.
                    if let Some(relay) = relay {
                        relay.apply(&update);
                    }
                    applier.apply(update);
                    applier
                });
                applier = match applied.await {
                    Ok(applier) => applier,
                    Err(error) => {
                        error!(%error, "applying an update failed; serving the last published config from now on");
                        return;
                    }
                };
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
