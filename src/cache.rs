//! Values resolved on demand under a request's labels, cached by (key, labels, revision).
//!
//! Nothing is ever invalidated: a new revision is a new cache key, and entries of old
//! revisions age out. The cache is bounded in bytes (its weigher counts the encoded
//! entries), so a flood of distinct contexts evicts rather than grows.

use std::sync::{Arc, atomic::Ordering};

use crate::{
    metrics::Metrics,
    model::{Key, Revision},
    resolve::{Labels, OnDemand, SchemaCache},
    store::{Entry, Snapshot},
};

/// A module under some labels: `None` when there is no such module, an error when it
/// does not resolve.
pub type ContextEntry = Option<Result<Arc<Entry>, Arc<str>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    key: Key,
    labels: Arc<Labels>,
    revision: Revision,
}

pub struct ContextCache {
    entries: moka::sync::Cache<CacheKey, ContextEntry>,
    schemas: SchemaCache,
    metrics: Arc<Metrics>,
}

/// What an entry costs beyond its encoded bytes: keys, labels, bookkeeping.
const ENTRY_OVERHEAD: usize = 256;

impl ContextCache {
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> ContextCache {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &ContextEntry| {
                let labels: usize = key.labels.iter().map(|(name, value)| name.len() + value.len()).sum();
                let bytes = match entry {
                    Some(Ok(entry)) => entry.encoded_json.len() + entry.encoded_proto.len(),
                    Some(Err(reason)) => reason.len(),
                    None => 0,
                };
                u32::try_from(ENTRY_OVERHEAD + key.key.as_str().len() + labels + bytes).unwrap_or(u32::MAX)
            })
            .build();
        ContextCache { entries, schemas: SchemaCache::default(), metrics }
    }

    /// Entries held, after evictions still pending are done, so that the figure is exact.
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Resolves modules of one snapshot under `labels`, sharing work between them.
    pub fn session<'a>(&'a self, snapshot: &'a Snapshot, labels: &'a Arc<Labels>) -> Session<'a> {
        Session { cache: self, snapshot, labels, on_demand: OnDemand::new(&snapshot.modules, labels, &self.schemas) }
    }
}

pub struct Session<'a> {
    cache: &'a ContextCache,
    snapshot: &'a Snapshot,
    labels: &'a Arc<Labels>,
    on_demand: OnDemand<'a>,
}

impl Session<'_> {
    pub fn get(&mut self, key: &Key) -> ContextEntry {
        let cache_key = CacheKey { key: key.clone(), labels: self.labels.clone(), revision: self.snapshot.revision };
        if let Some(entry) = self.cache.entries.get(&cache_key) {
            self.cache.metrics.context_cache_hits.fetch_add(1, Ordering::Relaxed);
            return entry;
        }
        self.cache.metrics.context_cache_misses.fetch_add(1, Ordering::Relaxed);
        let entry = self.on_demand.resolve(key).map(|outcome| {
            outcome.map(|value| Arc::new(Entry::new(key.clone(), value, self.snapshot.revision))).map_err(Arc::from)
        });
        self.cache.entries.insert(cache_key, entry.clone());
        entry
    }
}
