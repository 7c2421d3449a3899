//! `file://DIR`: a directory of JSON, YAML and TOML documents.
//!
//! Filesystem notifications are only a doorbell: after a burst of them settles, the
//! directory is walked again and files whose size, times or inode changed are read. This
//! handles every way editors save (in place, by rename, by delete and create) and an
//! overflowed notification queue the same way. A periodic walk covers lost notifications.
//!
//! Invariant: nothing outside the directory is read; a symlink whose target lies outside
//! it is reported, not followed. Hidden entries (leading '.') and files without a config
//! suffix are ignored, which also skips editor swap files and Kubernetes' `..data` links.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use notify::{
    RecursiveMode, Watcher,
    event::{AccessKind, AccessMode, EventKind},
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Document, SourceEvent, Update};
use crate::resolve::Format;

#[derive(Debug, Clone)]
pub struct FileSourceSettings {
    pub root: PathBuf,
    /// Quiet time after the last notification before the directory is walked.
    pub debounce: Duration,
    /// Walk the directory this often even without notifications.
    pub rescan_interval: Duration,
    /// Larger files are rejected without being read.
    pub max_document_bytes: u64,
}

/// What decides whether a file must be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(metadata: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// What a walk saw of one file; a change in it means the file is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File(Fingerprint),
    Refused(String),
}

/// A file found by a walk, and where to read it (the symlink target for a link).
struct Found {
    seen: Seen,
    path: PathBuf,
}

pub struct FileSource {
    settings: FileSourceSettings,
    known: BTreeMap<String, Seen>,
}

impl FileSource {
    /// A directory that is missing or unreadable is an upstream outage: reported, and
    /// retried at every rescan.
    pub fn new(settings: FileSourceSettings) -> FileSource {
        FileSource { settings, known: BTreeMap::new() }
    }

    /// Follows the directory until `drain` fires.
    pub async fn run(mut self, events: mpsc::Sender<SourceEvent>, drain: CancellationToken) {
        let doorbell = Arc::new(Notify::new());
        // Dropping the watcher stops it. It is made again after a failed walk, since the
        // directory may have been replaced.
        let mut watcher = None;
        // The first walk, and the first after a failed one, report the whole directory:
        // what vanished in between must not linger.
        let mut full = true;
        loop {
            if watcher.is_none() {
                watcher = self.watch(doorbell.clone());
            }
            let event = match self.rescan(full).await {
                Ok(Some(update)) => {
                    full = false;
                    Some(SourceEvent::Update(update))
                }
                Ok(None) => None,
                Err(error) => {
                    full = true;
                    watcher = None;
                    Some(SourceEvent::Unhealthy(format!("{}: {error}", self.settings.root.display())))
                }
            };
            if let Some(event) = event {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = drain.cancelled() => return,
                _ = doorbell.notified() => self.settle(&doorbell, &drain).await,
                _ = tokio::time::sleep(self.settings.rescan_interval) => {}
            }
        }
    }

    /// `None` when the directory cannot be watched (yet); periodic rescans still run.
    fn watch(&self, doorbell: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
        let root = &self.settings.root;
        let watched = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Err(error) = &event {
                debug!(%error, "file notification error; rescanning");
            }
            // notify reports opens, and every walk opens the directories it walks: ringing
            // for reads made each walk schedule the next, 20 times a second.
            if !event.as_ref().is_ok_and(|event| is_read(&event.kind)) {
                doorbell.notify_one();
            }
        })
        .and_then(|mut watcher| watcher.watch(root, RecursiveMode::Recursive).map(|()| watcher));
        match watched {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                debug!(root = %root.display(), %error, "cannot watch the config directory; relying on rescans");
                None
            }
        }
    }

    /// Waits for a burst of notifications to go quiet, bounded so that a directory that
    /// never stops changing is still picked up.
    async fn settle(&self, doorbell: &Notify, drain: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + self.settings.debounce * 10;
        loop {
            tokio::select! {
                _ = drain.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tokio::time::sleep(self.settings.debounce) => return,
                _ = doorbell.notified() => {}
            }
        }
    }

    /// Walks the directory and reads what changed, or with `full` every document.
    /// `Ok(None)` when nothing changed; a full walk is always reported, so that an empty
    /// directory is still a state.
    async fn rescan(&mut self, full: bool) -> io::Result<Option<Update>> {
        let root = self.settings.root.clone();
        let max = self.settings.max_document_bytes;
        // Emptied for a full walk, and left empty if the walk fails, so that the next
        // successful one reads everything.
        let known = std::mem::take(&mut self.known);
        let known = if full { Known::new() } else { known };
        let (known, update) = tokio::task::spawn_blocking(move || {
            // Canonical, so that symlink targets can be checked against it.
            let root = fs::canonicalize(&root)?;
            let mut found = BTreeMap::new();
            walk(&root, &root, "", &mut found)?;
            Ok::<_, io::Error>(diff_and_read(known, found, max))
        })
        .await
        .map_err(io::Error::other)??;
        self.known = known;
        Ok((full || !update.changes.is_empty()).then_some(Update { full, ..update }))
    }
}

type Known = BTreeMap<String, Seen>;

/// Opening or reading a file or a directory, which changes nothing in it.
fn is_read(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)))
}

/// Reads every document of a directory at once, as the first walk of a source does.
pub fn load_directory(root: &Path, max_document_bytes: u64) -> io::Result<Update> {
    let root = fs::canonicalize(root)?;
    let mut found = BTreeMap::new();
    walk(&root, &root, "", &mut found)?;
    let (_, update) = diff_and_read(Known::new(), found, max_document_bytes);
    Ok(Update { full: true, ..update })
}

fn diff_and_read(mut known: Known, found: BTreeMap<String, Found>, max_bytes: u64) -> (Known, Update) {
    let mut update = Update::default();
    let gone: Vec<String> = known.keys().filter(|name| !found.contains_key(*name)).cloned().collect();
    for name in gone {
        known.remove(&name);
        update.changes.insert(name, None);
    }
    for (name, Found { seen, path }) in found {
        if known.get(&name) == Some(&seen) {
            continue;
        }
        let document = match &seen {
            Seen::Refused(reason) => Err(reason.clone()),
            Seen::File(fingerprint) if fingerprint.len > max_bytes => {
                Err(format!("file is {} bytes, over the limit of {max_bytes}", fingerprint.len))
            }
            Seen::File(_) => read_document(&path),
        };
        known.insert(name.clone(), seen);
        update.changes.insert(name, Some(document));
    }
    (known, update)
}

fn read_document(path: &Path) -> Document {
    fs::read(path).map(Bytes::from).map_err(|error| format!("cannot read: {error}"))
}

/// Collects config files under `dir`, named by their path relative to the root.
fn walk(root: &Path, dir: &Path, relative: &str, found: &mut BTreeMap<String, Found>) -> io::Result<()> {
    for dir_entry in fs::read_dir(dir)? {
        let dir_entry = dir_entry?;
        let Some(file_name) = dir_entry.file_name().to_str().map(str::to_owned) else {
            warn!(path = %dir_entry.path().display(), "skipping a file name that is not UTF-8");
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let name = if relative.is_empty() { file_name } else { format!("{relative}/{file_name}") };
        let path = dir_entry.path();
        let file_type = dir_entry.file_type()?;
        if file_type.is_dir() {
            walk(root, &path, &name, found)?;
            continue;
        }
        if Format::from_name(&name).is_none() {
            continue;
        }
        if file_type.is_symlink() {
            found.insert(name, follow_symlink(root, path));
        } else if file_type.is_file() {
            let seen = match dir_entry.metadata() {
                Ok(metadata) => Seen::File(Fingerprint::of(&metadata)),
                // Deleted between listing and stat: the next walk settles it.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => Seen::Refused(format!("cannot stat: {error}")),
            };
            found.insert(name, Found { seen, path });
        }
    }
    Ok(())
}

fn follow_symlink(root: &Path, link: PathBuf) -> Found {
    let refused = |reason: String| Found { seen: Seen::Refused(reason), path: link.clone() };
    let target = match fs::canonicalize(&link) {
        Ok(target) => target,
        Err(error) => return refused(format!("broken symlink: {error}")),
    };
    if !target.starts_with(root) {
        return refused(format!("symlink to {} points outside the config directory; not followed", target.display()));
    }
    match fs::metadata(&target) {
        Ok(metadata) if metadata.is_file() => Found { seen: Seen::File(Fingerprint::of(&metadata)), path: target },
        Ok(_) => refused("symlink does not point to a file".to_owned()),
        Err(error) => refused(format!("cannot stat symlink target: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind};

    use super::is_read;

    #[test]
    fn reading_does_not_ring_the_doorbell_and_every_change_does() {
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(is_read(&read), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::Any)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(!is_read(&change), "{change:?}");
        }
    }
}
