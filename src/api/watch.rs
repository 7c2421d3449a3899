//! Watch streams: the selection's state, then every accepted change-set in revision order.
//!
//! Each stream is a task that follows the store's event feed and feeds a small channel
//! that tonic drains as the client reads. A client that reads slowly stops the task at
//! that channel; meanwhile the feed moves on, and once the task has fallen a whole
//! backlog behind it gets `Lagged` and sends one RESYNC of the latest state instead of
//! the change-sets it missed. Memory per stream stays bounded and nobody else waits.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{broadcast::error::RecvError, mpsc},
    time::MissedTickBehavior,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{encoded, proto, proto::ValueFormat, rejection_to_proto, wire::WatchReply};
use crate::{
    cache::ContextCache,
    model::{Key, Revision},
    resolve::Labels,
    store::{ChangeSet, Entry, Event, Snapshot, Store},
};
use proto::watch_response::Kind;

pub type WatchStream = ReceiverStream<Result<WatchReply, Status>>;

/// Messages ready for tonic to send; small, because the store's feed is the real backlog.
const STREAM_BUFFER: usize = 4;

/// Which keys a stream follows. No keys and no prefixes follows everything.
pub struct Selection {
    keys: BTreeSet<String>,
    prefixes: Vec<String>,
}

impl Selection {
    pub fn new(keys: Vec<String>, prefixes: Vec<String>) -> Selection {
        Selection { keys: keys.into_iter().collect(), prefixes }
    }

    fn matches(&self, key: &str) -> bool {
        (self.keys.is_empty() && self.prefixes.is_empty())
            || self.keys.contains(key)
            || self.prefixes.iter().any(|prefix| key.starts_with(prefix.as_str()))
    }

    fn state(&self, snapshot: &Snapshot, kind: Kind, format: ValueFormat) -> WatchReply {
        let entries: Vec<Bytes> = snapshot
            .entries
            .values()
            .filter(|entry| self.matches(entry.key.as_str()))
            .map(|entry| encoded(entry, format))
            .collect();
        WatchReply { kind: kind.into(), revision: snapshot.revision, entries, ..Default::default() }
    }

    /// The part of a change-set this stream follows, or `None` when it follows none of it.
    fn change(&self, change: &ChangeSet, format: ValueFormat) -> Option<WatchReply> {
        let entries: Vec<Bytes> = change
            .upserts
            .iter()
            .filter(|entry| self.matches(entry.key.as_str()))
            .map(|entry| encoded(entry, format))
            .collect();
        let deleted: Vec<String> =
            change.deletes.iter().filter(|key| self.matches(key.as_str())).map(|key| key.to_string()).collect();
        if entries.is_empty() && deleted.is_empty() {
            return None;
        }
        Some(WatchReply {
            kind: Kind::Change.into(),
            revision: change.revision,
            entries,
            deleted,
            ..Default::default()
        })
    }
}

/// A stream's own labels. Its values are resolved under them (through the context
/// cache), and what changed is found by comparing with what the stream last sent, since
/// the store's change-sets are about the instance's labels.
pub struct Context {
    labels: Arc<Labels>,
    cache: Arc<ContextCache>,
    sent: BTreeMap<Key, Arc<Entry>>,
}

impl Context {
    pub fn new(labels: Arc<Labels>, cache: Arc<ContextCache>) -> Context {
        Context { labels, cache, sent: BTreeMap::new() }
    }

    /// The selection under these labels. A module that does not resolve under them keeps
    /// the value last sent, as a rejected module keeps its last good value.
    fn current(&self, selection: &Selection, snapshot: &Snapshot) -> BTreeMap<Key, Arc<Entry>> {
        let mut session = self.cache.session(snapshot, &self.labels);
        snapshot
            .modules
            .keys()
            .filter(|key| selection.matches(key.as_str()))
            .filter_map(|key| match session.get(key) {
                Some(Ok(entry)) => Some((key.clone(), entry)),
                Some(Err(_)) => self.sent.get(key).map(|entry| (key.clone(), entry.clone())),
                None => None,
            })
            .collect()
    }

    fn state(&mut self, selection: &Selection, snapshot: &Snapshot, kind: Kind, format: ValueFormat) -> WatchReply {
        self.sent = self.current(selection, snapshot);
        let entries = self.sent.values().map(|entry| encoded(entry, format)).collect();
        WatchReply { kind: kind.into(), revision: snapshot.revision, entries, ..Default::default() }
    }

    fn change(&mut self, selection: &Selection, snapshot: &Snapshot, format: ValueFormat) -> Option<WatchReply> {
        let current = self.current(selection, snapshot);
        let entries: Vec<Bytes> = current
            .iter()
            .filter(|(key, entry)| self.sent.get(*key).is_none_or(|sent| sent.value != entry.value))
            .map(|(_, entry)| encoded(entry, format))
            .collect();
        let deleted: Vec<String> =
            self.sent.keys().filter(|key| !current.contains_key(*key)).map(|key| key.to_string()).collect();
        self.sent = current;
        if entries.is_empty() && deleted.is_empty() {
            return None;
        }
        Some(WatchReply {
            kind: Kind::Change.into(),
            revision: snapshot.revision,
            entries,
            deleted,
            ..Default::default()
        })
    }
}

/// Where a stream starts: after `revision` of the history `epoch` (0: any).
pub struct Start {
    pub revision: Revision,
    pub epoch: u64,
}

/// Counts the stream in `Store::watchers` for as long as it lives.
struct WatcherGuard(Arc<Store>);

impl WatcherGuard {
    fn new(store: Arc<Store>) -> WatcherGuard {
        store.watchers.fetch_add(1, Ordering::Relaxed);
        WatcherGuard(store)
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn spawn(
    store: Arc<Store>,
    selection: Selection,
    context: Option<Context>,
    start: Start,
    format: ValueFormat,
    progress_interval: Duration,
    drain: CancellationToken,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let stream = Stream { store, selection, context, format, tx, drain };
    tokio::spawn(stream.run(start, progress_interval));
    ReceiverStream::new(rx)
}

struct Stream {
    store: Arc<Store>,
    selection: Selection,
    context: Option<Context>,
    format: ValueFormat,
    tx: mpsc::Sender<Result<WatchReply, Status>>,
    drain: CancellationToken,
}

/// Why a stream stopped: the client left or the sidecar is shutting down.
struct Stopped;

impl Stream {
    async fn run(mut self, start: Start, progress_interval: Duration) {
        let _guard = WatcherGuard::new(self.store.clone());
        // Subscribe before reading the snapshot so that no change falls between the two.
        let mut events = self.store.subscribe();
        tokio::select! {
            _ = self.drain.cancelled() => return,
            _ = self.tx.closed() => return,
            _ = self.store.wait_ready() => {}
        }
        let Ok(mut sent) = self.start(start).await else { return };

        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + progress_interval, progress_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let reply = tokio::select! {
                _ = self.drain.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = progress.tick() => {
                    let reply = WatchReply { kind: Kind::Progress.into(), revision: sent, ..Default::default() };
                    // A stream whose buffer is full is not idle; it needs no heartbeat.
                    let _ = self.tx.try_send(Ok(self.stamped(reply)));
                    continue;
                }
                event = events.recv() => match event {
                    Ok(Event::Change(change)) if change.revision <= sent => continue,
                    Ok(Event::Change(change)) => {
                        let reply = match &mut self.context {
                            None => {
                                sent = change.revision;
                                self.selection.change(&change, self.format)
                            }
                            Some(context) => {
                                // The newest snapshot covers this change-set and any queued behind it.
                                let snapshot = self.store.snapshot();
                                sent = snapshot.revision;
                                context.change(&self.selection, &snapshot, self.format)
                            }
                        };
                        match reply {
                            Some(reply) => reply,
                            None => continue,
                        }
                    }
                    Ok(Event::Rejected { revision, rejections }) => {
                        let rejections: Vec<proto::Rejection> = rejections
                            .iter()
                            .filter(|rejection| self.selection.matches(&rejection.key))
                            .map(rejection_to_proto)
                            .collect();
                        if rejections.is_empty() {
                            continue;
                        }
                        WatchReply { kind: Kind::Rejected.into(), revision, rejections, ..Default::default() }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.store.lagged_resyncs.fetch_add(1, Ordering::Relaxed);
                        let snapshot = self.store.snapshot();
                        sent = snapshot.revision;
                        self.state(&snapshot, Kind::Resync)
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if self.send(reply).await.is_err() {
                return;
            }
            progress.reset();
        }
    }

    /// The full state of the selection.
    fn state(&mut self, snapshot: &Snapshot, kind: Kind) -> WatchReply {
        if kind == Kind::Resync {
            self.store.resyncs_sent.fetch_add(1, Ordering::Relaxed);
        }
        match &mut self.context {
            None => self.selection.state(snapshot, kind, self.format),
            Some(context) => context.state(&self.selection, snapshot, kind, self.format),
        }
    }

    /// Sends what the client needs to be current, and returns the revision it is at.
    async fn start(&mut self, start: Start) -> Result<Revision, Stopped> {
        let snapshot = self.store.snapshot();
        let current = snapshot.revision;
        let start_revision = start.revision;
        // A revision of another history (a sidecar that restarted without its saved
        // state) says nothing about this one, whatever its number.
        let same_history = start.epoch == 0 || start.epoch == self.store.epoch();
        if start_revision == 0 {
            let reply = self.state(&snapshot, Kind::Snapshot);
            self.send(reply).await?;
            return Ok(current);
        }
        if start_revision == current && same_history {
            // What the client holds is what comparisons start from.
            let _ = self.state(&snapshot, Kind::Snapshot);
            return Ok(current);
        }
        // A revision from the future was not issued by this store, and the history holds
        // change-sets for the instance's labels only: both start over explicitly.
        let missed = if same_history && start_revision < current && self.context.is_none() {
            self.store.changes_since(start_revision, current)
        } else {
            None
        };
        match missed {
            Some(changes) => {
                for change in changes {
                    if let Some(reply) = self.selection.change(&change, self.format) {
                        self.send(reply).await?;
                    }
                }
            }
            None => {
                let reply = self.state(&snapshot, Kind::Resync);
                self.send(reply).await?;
            }
        }
        Ok(current)
    }

    /// Every message says which revision history its revision belongs to.
    fn stamped(&self, mut reply: WatchReply) -> WatchReply {
        reply.epoch = self.store.epoch();
        reply
    }

    async fn send(&self, reply: WatchReply) -> Result<(), Stopped> {
        tokio::select! {
            sent = self.tx.send(Ok(self.stamped(reply))) => sent.map_err(|_| Stopped),
            _ = self.drain.cancelled() => Err(Stopped),
        }
    }
}
