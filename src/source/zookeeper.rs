//! `zk://HOST:PORT[,HOST:PORT...]/PATH`: documents in a ZooKeeper subtree, named by
//! their path below `PATH` (`PATH/matchmaking/queues.yaml`). Nodes without a config
//! suffix only hold the tree together.
//!
//! A session sets a persistent recursive watch on the subtree (ZooKeeper 3.6+), then
//! lists it; each event is one update, re-reading the node it names. Setting the watch
//! first means nothing changed during the listing goes unseen; re-reading a node twice is
//! harmless. An expired session ends the session: the next one lists again, and the sync
//! loop publishes the difference.

use std::{collections::BTreeMap, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use zookeeper_client::{AddWatchMode, Client, EventType, SessionState};

use super::{Document, Reporter, Source, SourceError, Update, sized_document};
use crate::resolve::Format;

#[derive(Debug, Clone)]
pub struct ZooKeeperSettings {
    /// `HOST:PORT,HOST:PORT`, as ZooKeeper clients take it.
    pub servers: String,
    /// The subtree's root, without a trailing '/'.
    pub root: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_document_bytes: u64,
}

pub struct ZooKeeperSource {
    settings: ZooKeeperSettings,
}

fn failed(context: &str) -> impl Fn(zookeeper_client::Error) -> SourceError + '_ {
    move |error| SourceError::new(context, error)
}

impl ZooKeeperSource {
    pub fn new(settings: ZooKeeperSettings) -> ZooKeeperSource {
        ZooKeeperSource { settings }
    }

    /// The document name of a node path, or `None` for the root and for nodes that are
    /// not documents.
    fn name_of(&self, path: &str) -> Option<String> {
        let rest = path.strip_prefix(&self.settings.root)?.strip_prefix('/')?;
        Format::from_name(rest).map(|_| rest.to_owned())
    }

    fn document(&self, value: Vec<u8>) -> Document {
        sized_document(value, self.settings.max_document_bytes)
    }

    /// Every document of the subtree, and the highest zxid among them.
    async fn list(&self, client: &Client) -> Result<(BTreeMap<String, Option<Document>>, i64), SourceError> {
        let mut documents = BTreeMap::new();
        let mut zxid = 0;
        let mut pending = vec![self.settings.root.clone()];
        while let Some(path) = pending.pop() {
            let children = match client.list_children(&path).await {
                Ok(children) => children,
                // Deleted while listing: its events follow.
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(error) => return Err(SourceError::new("zookeeper list", error)),
            };
            for child in children {
                let child_path = if path == "/" { format!("/{child}") } else { format!("{path}/{child}") };
                if let Some(name) = self.name_of(&child_path) {
                    match client.get_data(&child_path).await {
                        Ok((data, stat)) => {
                            zxid = zxid.max(stat.mzxid);
                            documents.insert(name, Some(self.document(data)));
                        }
                        Err(zookeeper_client::Error::NoNode) => {}
                        Err(error) => return Err(SourceError::new("zookeeper read", error)),
                    }
                }
                pending.push(child_path);
            }
        }
        Ok((documents, zxid))
    }
}

impl Source for ZooKeeperSource {
    fn describe(&self) -> String {
        format!("zk://{}{}", self.settings.servers, self.settings.root)
    }

    async fn session(&mut self, reporter: &mut Reporter, drain: &CancellationToken) -> Result<(), SourceError> {
        let client = Client::connector()
            .with_session_timeout(self.settings.session_timeout)
            .with_connection_timeout(self.settings.connect_timeout)
            .connect(&self.settings.servers)
            .await
            .map_err(failed("zookeeper connect"))?;
        let mut watcher = client
            .watch(&self.settings.root, AddWatchMode::PersistentRecursive)
            .await
            .map_err(failed("zookeeper watch"))?;
        let (documents, zxid) = self.list(&client).await?;
        info!(zxid, n_documents = documents.len(), root = %self.settings.root, "listed zookeeper subtree");
        reporter.update(Update { changes: documents, full: true, upstream_revision: Some(zxid), epoch: None }).await?;
        loop {
            let event = tokio::select! {
                _ = drain.cancelled() => return Ok(()),
                event = watcher.changed() => event,
            };
            let change = match event.event_type {
                EventType::Session => match event.session_state {
                    SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                        return Err(SourceError(format!("zookeeper session ended: {:?}", event.session_state)));
                    }
                    state => {
                        debug!(?state, "zookeeper connection state");
                        continue;
                    }
                },
                EventType::NodeChildrenChanged => continue,
                EventType::NodeDeleted => None,
                EventType::NodeCreated | EventType::NodeDataChanged => match client.get_data(&event.path).await {
                    Ok((data, _)) => Some(self.document(data)),
                    // Gone again: its own delete event follows, and this counts as one.
                    Err(zookeeper_client::Error::NoNode) => None,
                    Err(error) => return Err(SourceError::new("zookeeper read", error)),
                },
            };
            let Some(name) = self.name_of(&event.path) else { continue };
            let upstream_revision = (event.zxid > 0).then_some(event.zxid);
            reporter
                .update(Update { changes: [(name, change)].into(), full: false, upstream_revision, epoch: None })
                .await?;
        }
    }
}
