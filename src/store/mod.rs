//! The store: the resolved configuration as immutable snapshots, the history of recent
//! change-sets, and the event feed that Watch streams follow.
//!
//! Readers load the current `Arc<Snapshot>` without taking a lock and never wait for a
//! change being applied. There is exactly one writer, the [`Publisher`], owned by the sync
//! loop. A published snapshot is never mutated; revisions strictly increase.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::{
    api::wire,
    model::{Key, Rejection, Revision},
    resolve::Modules,
};

/// One module's resolved value, with the response bytes encoded once when it changed.
#[derive(Debug)]
pub struct Entry {
    pub key: Key,
    pub value: Arc<Value>,
    /// The revision of the change-set that last changed this value.
    pub mod_revision: Revision,
    /// The `Entry` message with the value as JSON text.
    pub encoded_json: Bytes,
    /// The `Entry` message with the value as a `google.protobuf.Value`.
    pub encoded_proto: Bytes,
}

impl Entry {
    pub fn new(key: Key, value: Arc<Value>, mod_revision: Revision) -> Entry {
        let (encoded_json, encoded_proto) = wire::encode_entry(&key, &value, mod_revision);
        Entry { key, value, mod_revision, encoded_json, encoded_proto }
    }
}

/// Everything served at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// 0 until the first change-set is published.
    pub revision: Revision,
    pub entries: BTreeMap<Key, Arc<Entry>>,
    /// The accepted documents the entries were resolved from, for resolving under other
    /// labels and for Explain.
    pub modules: Arc<Modules>,
}

impl Snapshot {
    pub fn is_ready(&self) -> bool {
        self.revision > 0
    }

    pub fn get(&self, key: &str) -> Option<&Arc<Entry>> {
        self.entries.get(key)
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        self.entries
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(key, _)| key.as_str().starts_with(prefix))
            .map(|(_, entry)| entry)
    }
}

/// One accepted change: what appeared or changed, and what went away.
#[derive(Debug)]
pub struct ChangeSet {
    pub revision: Revision,
    /// In key order.
    pub upserts: Vec<Arc<Entry>>,
    /// In key order.
    pub deletes: Vec<Key>,
}

/// What Watch streams hear about, in publication order.
#[derive(Debug, Clone)]
pub enum Event {
    Change(Arc<ChangeSet>),
    /// Upstream text was rejected at this revision; nothing served changed.
    Rejected {
        revision: Revision,
        rejections: Arc<[Rejection]>,
    },
}

/// Sizes chosen by the settings.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Change-sets kept for Watch resumes from an older revision.
    pub history: usize,
    /// Events a Watch stream may fall behind before it is collapsed into a RESYNC.
    pub watch_backlog: usize,
}

pub struct Store {
    /// What readers see; swapped whole by the publisher.
    current: ArcSwap<Snapshot>,
    /// Recent change-sets, oldest first, for resumes. Locked briefly by the publisher and
    /// by a Watch that starts from an old revision; never by Get.
    history: Mutex<VecDeque<Arc<ChangeSet>>>,
    history_len: usize,
    /// The live feed. A receiver that falls `watch_backlog` events behind gets `Lagged`
    /// and resynchronises from the current snapshot, so memory stays bounded.
    events: broadcast::Sender<Event>,
    /// The modules currently rejected, for Status and metrics.
    rejections: ArcSwap<Vec<Rejection>>,
    /// Latch released at the first published snapshot, for health and readiness.
    ready: watch::Sender<bool>,
    /// Watch streams open right now.
    pub watchers: AtomicUsize,
    /// Watch streams collapsed into a RESYNC because they fell behind.
    pub lagged_resyncs: AtomicU64,
    /// RESYNC messages sent, for any reason.
    pub resyncs_sent: AtomicU64,
    /// Identifies this revision history: new at each start, unless a saved state is
    /// restored, so that revisions of another history are never taken for these.
    epoch: AtomicU64,
}

impl Store {
    /// A store with nothing published yet, and its only writer.
    pub fn new(limits: StoreLimits) -> (Arc<Store>, Publisher) {
        let (events, _) = broadcast::channel(limits.watch_backlog.max(1));
        let store = Arc::new(Store {
            current: ArcSwap::from_pointee(Snapshot::default()),
            history: Mutex::new(VecDeque::with_capacity(limits.history)),
            history_len: limits.history,
            events,
            rejections: ArcSwap::from_pointee(Vec::new()),
            ready: watch::Sender::new(false),
            watchers: AtomicUsize::new(0),
            lagged_resyncs: AtomicU64::new(0),
            resyncs_sent: AtomicU64::new(0),
            epoch: AtomicU64::new(new_epoch()),
        });
        (store.clone(), Publisher { store })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn rejections(&self) -> Arc<Vec<Rejection>> {
        self.rejections.load_full()
    }

    /// The live feed. Subscribe before loading the snapshot the stream starts from, so
    /// that no change can fall between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The change-sets after `revision` up to `until`, or `None` when the history no longer
    /// reaches back that far.
    pub fn changes_since(&self, revision: Revision, until: Revision) -> Option<Vec<Arc<ChangeSet>>> {
        let history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let oldest = history.front().map_or(until + 1, |change| change.revision);
        if revision + 1 < oldest && revision < until {
            return None;
        }
        Some(history.iter().filter(|change| change.revision > revision && change.revision <= until).cloned().collect())
    }

    /// Resolves once a snapshot has been published.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as the store, so this cannot fail while we hold `self`.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

/// A fresh, non-zero epoch: random per start.
pub(crate) fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// A change-set ready to publish, and the snapshot it makes.
pub struct Pending {
    snapshot: Arc<Snapshot>,
    change: Arc<ChangeSet>,
}

impl Pending {
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// The one writer of a [`Store`].
pub struct Publisher {
    store: Arc<Store>,
}

impl Publisher {
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Applies one change-set: `Some(value)` sets a key, `None` removes it. Values equal to
    /// what is served are not changes. `modules`, when the accepted documents changed, is
    /// their new state; that alone makes a new revision, since values resolved under other
    /// labels may differ. Returns the new revision, or `None` when nothing changed. The
    /// first call publishes revision 1 even when it changes nothing, so that an empty
    /// configuration is still a snapshot.
    pub fn apply(
        &mut self,
        changes: BTreeMap<Key, Option<Arc<Value>>>,
        modules: Option<Arc<Modules>>,
    ) -> Option<Revision> {
        let pending = self.prepare(changes, modules)?;
        Some(self.publish(pending))
    }

    /// The next snapshot and change-set, not yet visible to anyone, so that they can be
    /// made durable first; `None` when nothing changed (see [`Publisher::apply`]).
    pub fn prepare(
        &self,
        changes: BTreeMap<Key, Option<Arc<Value>>>,
        modules: Option<Arc<Modules>>,
    ) -> Option<Pending> {
        let previous = self.store.snapshot();
        let revision = previous.revision + 1;
        let mut entries = previous.entries.clone();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, change) in changes {
            match change {
                Some(value) => {
                    if entries.get(&key).is_some_and(|entry| entry.value == value) {
                        continue;
                    }
                    let entry = Arc::new(Entry::new(key.clone(), value, revision));
                    entries.insert(key, entry.clone());
                    upserts.push(entry);
                }
                None => {
                    if entries.remove(&key).is_some() {
                        deletes.push(key);
                    }
                }
            }
        }
        if upserts.is_empty() && deletes.is_empty() && modules.is_none() && previous.is_ready() {
            return None;
        }
        let modules = modules.unwrap_or_else(|| previous.modules.clone());
        let change = Arc::new(ChangeSet { revision, upserts, deletes });
        Some(Pending { snapshot: Arc::new(Snapshot { revision, entries, modules }), change })
    }

    /// Makes a prepared change visible: history, snapshot, then the event feed.
    pub fn publish(&mut self, pending: Pending) -> Revision {
        let Pending { snapshot, change } = pending;
        let revision = snapshot.revision;
        {
            let mut history = self.store.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if history.len() == self.store.history_len {
                history.pop_front();
            }
            if self.store.history_len > 0 {
                history.push_back(change.clone());
            }
        }
        self.store.current.store(snapshot);
        // No receivers is not an error: nobody is watching right now.
        let _ = self.store.events.send(Event::Change(change));
        self.store.ready.send_replace(true);
        revision
    }

    /// Publishes a state saved by an earlier run, at the revision it had then, so that
    /// revisions keep increasing across restarts. Only before anything else is published.
    pub fn restore(
        &mut self,
        epoch: u64,
        revision: Revision,
        entries: BTreeMap<Key, Option<Arc<Value>>>,
        modules: Modules,
    ) -> bool {
        if self.store.snapshot().is_ready() || revision == 0 || epoch == 0 {
            return false;
        }
        self.store.epoch.store(epoch, Ordering::Relaxed);
        let entries = entries
            .into_iter()
            .filter_map(|(key, value)| Some((key.clone(), Arc::new(Entry::new(key, value?, revision)))))
            .collect();
        self.store.current.store(Arc::new(Snapshot { revision, entries, modules: Arc::new(modules) }));
        self.store.ready.send_replace(true);
        true
    }

    /// Replaces the set of rejected modules. Rejections that are new (or whose reason
    /// changed) are announced to watchers, and returned.
    pub fn set_rejections(&mut self, rejections: Vec<Rejection>) -> Arc<[Rejection]> {
        let previous = self.store.rejections.load();
        let fresh: Arc<[Rejection]> =
            rejections.iter().filter(|rejection| !previous.contains(rejection)).cloned().collect();
        self.store.rejections.store(Arc::new(rejections));
        if !fresh.is_empty() {
            let revision = self.store.snapshot().revision;
            let _ = self.store.events.send(Event::Rejected { revision, rejections: fresh.clone() });
        }
        fresh
    }
}

#[cfg(test)]
mod tests;
