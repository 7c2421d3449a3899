//! The relay role: one upstream watch fanned out to many sidecars.
//!
//! A relay keeps the upstream's documents as they are (each sidecar resolves them with
//! its own labels) in a [`Hub`]: the current documents, the recent change-sets and the
//! epoch and revision they belong to, published as one immutable [`HubState`] through a
//! `watch` channel. A client stream (gRPC Watch, or an HTTP long-poll) remembers only the
//! position it sent last and, whenever the state moves, asks the state what to send
//! from there: the changes merged from history, or the whole state when history no
//! longer reaches back. Nobody queues per client, so a slow sidecar costs its own
//! stream a RESYNC and never holds up the hub or the other streams.

mod gate;
mod http;
mod service;

pub use gate::{Gate, Token};
pub use service::RelayApi;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::watch;
use tracing::warn;

use crate::source::{Document, Update};

/// The relay API as generated from `proto/veltrix/relay/v1/relay.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("veltrix.relay.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("relay_descriptor");
}

/// The name health checks and reflection use for the relay service.
pub const RELAY_SERVICE_NAME: &str = "veltrix.relay.v1.RelayService";

/// What a client has applied: a revision, meaningful only within its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The whole state, for a client that starts from nothing.
    Snapshot,
    /// What changed after the client's revision.
    Changes,
    /// The whole state, replacing what the client has.
    Resync,
    /// Nothing under the client's prefix changed; it is now at `revision`.
    NoChange,
}

/// One answer to a client, whatever the transport.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: ReplyKind,
    pub epoch: Arc<str>,
    pub revision: i64,
    /// `None`: the document went away.
    pub documents: Vec<(String, Option<Document>)>,
}

impl Reply {
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch.clone(), revision: self.revision }
    }
}

/// One upstream revision's changed documents.
#[derive(Debug)]
struct HubChange {
    revision: i64,
    changes: BTreeMap<String, Option<Document>>,
}

/// The documents at one revision, and the change-sets that led there.
#[derive(Debug, Clone)]
pub struct HubState {
    pub epoch: Arc<str>,
    pub revision: i64,
    /// False until the upstream was read once.
    pub ready: bool,
    documents: Arc<BTreeMap<String, Document>>,
    /// Change-sets in revision order; each one after `base`.
    history: VecDeque<Arc<HubChange>>,
    /// The revision just before the oldest change-set kept.
    base: i64,
}

impl HubState {
    pub fn n_documents(&self) -> usize {
        self.documents.len()
    }

    /// What a client at `at` (or at nothing) that follows `prefix` is sent next.
    pub fn reply(&self, prefix: &str, at: Option<&Position>) -> Reply {
        let Some(at) = at else { return self.whole(ReplyKind::Snapshot, prefix) };
        if at.epoch != self.epoch {
            return self.whole(ReplyKind::Resync, prefix);
        }
        if at.revision >= self.revision {
            // Up to date, or ahead: it came from a relay further along the same upstream,
            // and waits here until this relay has caught up.
            return self.no_change(at.revision);
        }
        if at.revision < self.base {
            return self.whole(ReplyKind::Resync, prefix);
        }
        let first = self.history.partition_point(|change| change.revision <= at.revision);
        let mut merged = BTreeMap::new();
        for change in self.history.range(first..) {
            for (name, document) in under(&change.changes, prefix) {
                merged.insert(name.clone(), document.clone());
            }
        }
        if merged.is_empty() {
            return self.no_change(self.revision);
        }
        Reply {
            kind: ReplyKind::Changes,
            epoch: self.epoch.clone(),
            revision: self.revision,
            documents: merged.into_iter().collect(),
        }
    }

    fn whole(&self, kind: ReplyKind, prefix: &str) -> Reply {
        let documents =
            under(&self.documents, prefix).map(|(name, document)| (name.clone(), Some(document.clone()))).collect();
        Reply { kind, epoch: self.epoch.clone(), revision: self.revision, documents }
    }

    fn no_change(&self, revision: i64) -> Reply {
        Reply { kind: ReplyKind::NoChange, epoch: self.epoch.clone(), revision, documents: Vec::new() }
    }
}

fn under<'a, V>(map: &'a BTreeMap<String, V>, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |(name, _)| name.starts_with(prefix))
}

/// The relay's documents, written by the sync loop's tee and read by every client stream.
pub struct Hub {
    state: watch::Sender<Arc<HubState>>,
    history_limit: usize,
    /// The epoch of updates that do not name one: the upstream's address for sources with
    /// revisions of their own (relays that follow the same etcd agree on revisions), a
    /// random one for a directory of files.
    default_epoch: Arc<str>,
    /// gRPC streams and long-polls open.
    pub clients: AtomicUsize,
    pub resyncs_sent: AtomicU64,
    pub long_polls: AtomicU64,
}

impl Hub {
    pub fn new(default_epoch: Option<String>, history_limit: usize) -> Arc<Hub> {
        let default_epoch: Arc<str> = match default_epoch {
            Some(epoch) => epoch.into(),
            None => format!("{:016x}", crate::store::new_epoch()).into(),
        };
        let initial = HubState {
            epoch: default_epoch.clone(),
            revision: 0,
            ready: false,
            documents: Arc::default(),
            history: VecDeque::new(),
            base: 0,
        };
        Arc::new(Hub {
            state: watch::Sender::new(Arc::new(initial)),
            history_limit: history_limit.max(1),
            default_epoch,
            clients: AtomicUsize::new(0),
            resyncs_sent: AtomicU64::new(0),
            long_polls: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> Arc<HubState> {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<HubState>> {
        self.state.subscribe()
    }

    /// Takes one source update; an update that changes no document publishes nothing.
    pub fn apply(&self, update: &Update) {
        let current = self.state();
        let epoch = update.epoch.clone().unwrap_or_else(|| self.default_epoch.clone());
        let same_epoch = current.ready && epoch == current.epoch;

        let mut changes = BTreeMap::new();
        if update.full {
            for name in current.documents.keys().filter(|name| !update.changes.contains_key(*name)) {
                changes.insert(name.clone(), None);
            }
        }
        for (name, document) in &update.changes {
            if current.documents.get(name) != document.as_ref() {
                changes.insert(name.clone(), document.clone());
            }
        }
        if same_epoch && changes.is_empty() {
            return;
        }

        let next = if same_epoch { current.revision + 1 } else { 1 };
        let mut revision = update.upstream_revision.unwrap_or(next);
        if same_epoch && revision <= current.revision {
            warn!(
                revision,
                current = current.revision,
                "the upstream's revision went backwards; counting on from ours"
            );
            revision = next;
        }
        let mut documents = (*current.documents).clone();
        for (name, document) in &changes {
            match document {
                Some(document) => documents.insert(name.clone(), document.clone()),
                None => documents.remove(name),
            };
        }
        let (mut history, mut base) =
            if same_epoch { (current.history.clone(), current.base) } else { (VecDeque::new(), revision) };
        if same_epoch {
            history.push_back(Arc::new(HubChange { revision, changes }));
            while history.len() > self.history_limit {
                if let Some(oldest) = history.pop_front() {
                    base = oldest.revision;
                }
            }
        }
        self.state.send_replace(Arc::new(HubState {
            epoch,
            revision,
            ready: true,
            documents: Arc::new(documents),
            history,
            base,
        }));
    }

    fn count(&self, reply: &Reply) {
        if reply.kind == ReplyKind::Resync {
            self.resyncs_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts an open client for as long as it lives.
struct ClientGuard(Arc<Hub>);

impl ClientGuard {
    fn new(hub: Arc<Hub>) -> ClientGuard {
        hub.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(hub)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
