//! [`LiveConfig`]: one module, deserialized once per accepted change, readable from any
//! thread with no call and no lock.

use std::{sync::Arc, time::Duration};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};
use tracing::warn;

use super::{Client, ClientError};
use crate::{
    api::proto::{self, watch_response::Kind},
    sync::backoff::Backoff,
};

/// Reconnection waits of the follower.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The latest accepted value of one module, kept current by a Watch stream in the
/// background. After a lost connection (a sidecar restart, say) the stream is opened again
/// with backoff and resumes after the last revision seen, so no change is missed.
pub struct LiveConfig<T> {
    current: Arc<ArcSwap<T>>,
    revision: watch::Receiver<u64>,
    last_error: Arc<ArcSwapOption<String>>,
    follower: JoinHandle<()>,
}

impl<T> Drop for LiveConfig<T> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> LiveConfig<T> {
    /// Follows `key` through `client`, once its first value has been read (waiting for
    /// the sidecar for at most `deadline`).
    pub async fn subscribe(client: &Client, key: &str, deadline: Duration) -> Result<LiveConfig<T>, ClientError> {
        client.wait_ready(deadline).await?;
        let request = proto::GetRequest { key: key.to_owned(), ..Default::default() };
        let response = client.api().get(request).await?.into_inner();
        let json = response.entry.map(|entry| entry.json).unwrap_or_default();
        let first: T =
            serde_json::from_slice(&json).map_err(|source| ClientError::Shape { key: key.to_owned(), source })?;
        let current = Arc::new(ArcSwap::from_pointee(first));
        let (revisions, revision) = watch::channel(response.revision);
        let last_error = Arc::new(ArcSwapOption::empty());
        let follower = Follower {
            client: client.clone(),
            key: key.to_owned(),
            current: current.clone(),
            revisions,
            last_error: last_error.clone(),
            seen: response.revision,
            epoch: response.epoch,
        };
        let follower = tokio::spawn(follower.run());
        Ok(LiveConfig { current, revision, last_error, follower })
    }

    /// The current value: an atomic load, no call to the sidecar, no lock.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Resolves when a new value has been accepted.
    pub async fn changed(&mut self) {
        // The sender lives in the follower, which only ends when this value is dropped.
        if self.revision.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The sidecar revision of the current value.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Why the latest change was not taken (a value of the wrong shape, a deleted module),
    /// or why the stream is down; `None` once a value is accepted again.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.load_full().map(|error| (*error).clone())
    }
}

struct Follower<T> {
    client: Client,
    key: String,
    current: Arc<ArcSwap<T>>,
    revisions: watch::Sender<u64>,
    last_error: Arc<ArcSwapOption<String>>,
    /// The last sidecar revision seen, to resume after, and the history it belongs to.
    seen: u64,
    epoch: u64,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follower<T> {
    async fn run(mut self) {
        let Ok(mut backoff) = Backoff::new(BACKOFF_MIN, BACKOFF_MAX) else { return };
        loop {
            let error = match self.stream(&mut backoff).await {
                Ok(()) => "the sidecar closed the watch stream".to_owned(),
                Err(status) => format!("watch stream: {}", status.message()),
            };
            self.report(error);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Follows one Watch stream until it ends.
    async fn stream(&mut self, backoff: &mut Backoff) -> Result<(), tonic::Status> {
        let request = proto::WatchRequest {
            keys: vec![self.key.clone()],
            start_revision: self.seen,
            epoch: self.epoch,
            ..Default::default()
        };
        let mut stream = self.client.api().watch(request).await?.into_inner();
        while let Some(message) = stream.message().await? {
            backoff.reset();
            match message.kind() {
                Kind::Progress | Kind::Unspecified => {}
                Kind::Rejected => {
                    if let Some(rejection) = message.rejections.first() {
                        self.report(format!("the sidecar rejected {}: {}", rejection.origin, rejection.reason));
                    }
                }
                Kind::Snapshot | Kind::Resync | Kind::Change => {
                    self.seen = message.revision;
                    self.epoch = message.epoch;
                    match message.entries.iter().find(|entry| entry.key == self.key) {
                        Some(entry) => match serde_json::from_slice::<T>(&entry.json) {
                            Ok(value) => {
                                self.current.store(Arc::new(value));
                                self.last_error.store(None);
                                self.revisions.send_replace(message.revision);
                            }
                            Err(error) => self.report(format!(
                                "{} at revision {} does not have the expected shape, keeping the previous value: {error}",
                                self.key, message.revision
                            )),
                        },
                        None if message.kind() != Kind::Change || message.deleted.contains(&self.key) => {
                            self.report(format!("{} was deleted; keeping the previous value", self.key));
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn report(&self, error: String) {
        warn!(key = %self.key, "{error}");
        self.last_error.store(Some(Arc::new(error)));
    }
}
