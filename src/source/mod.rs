//! Upstream sources of truth. A source only reads upstream and reports what changed, as
//! named documents; parsing, resolution and publishing happen in the sync loop.
//!
//! The file source follows its directory by itself. Network sources implement
//! [`Source`]: one session at a time, which reports the upstream state and then every
//! change; [`follow`] runs sessions back to back with backoff between failures.

pub mod etcd;
pub mod file;
pub mod relay;
pub mod zookeeper;

use std::{collections::BTreeMap, future::Future, sync::Arc};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::sync::backoff::Backoff;

/// A document's text, or why the source could not hand it over (too large, unreadable,
/// outside the config directory). Either way the sync loop decides what is served.
pub type Document = Result<Bytes, String>;

/// An upstream value as a document, refused unread when it is larger than `max_bytes`.
pub fn sized_document(value: impl Into<Bytes>, max_bytes: u64) -> Document {
    let value = value.into();
    if value.len() as u64 > max_bytes {
        return Err(format!("value is {} bytes, over the limit of {max_bytes}", value.len()));
    }
    Ok(value)
}

/// What a source tells the sync loop.
#[derive(Debug)]
pub enum SourceEvent {
    Update(Update),
    /// The upstream could not be read; what is served stays as it is.
    Unhealthy(String),
}

#[derive(Debug, Default)]
pub struct Update {
    /// By document name (a path with its format suffix): `Some` appeared or changed,
    /// `None` went away.
    pub changes: BTreeMap<String, Option<Document>>,
    /// When set, `changes` lists every upstream document and any other is gone.
    pub full: bool,
    /// The upstream's own revision after this update, where it has one (etcd's
    /// revision, ZooKeeper's zxid).
    pub upstream_revision: Option<i64>,
    /// The revision space `upstream_revision` belongs to, where the upstream names one (a
    /// relay does): revisions compare only within one epoch.
    pub epoch: Option<Arc<str>>,
}

/// Why a session with the upstream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    pub fn new(context: &str, error: impl std::fmt::Display) -> SourceError {
        SourceError(format!("{context}: {error}"))
    }
}

/// Hands a session's updates to the sync loop, and notes that the session got somewhere.
pub struct Reporter {
    events: mpsc::Sender<SourceEvent>,
    delivered: bool,
}

impl Reporter {
    /// `Err` when the sync loop is gone, which ends the session.
    pub async fn update(&mut self, update: Update) -> Result<(), SourceError> {
        self.delivered = true;
        self.events.send(SourceEvent::Update(update)).await.map_err(|_| SourceError("shutting down".to_owned()))
    }
}

pub trait Source: Send {
    /// The upstream, for logs.
    fn describe(&self) -> String;

    /// One session: report the upstream's state (or resume after the last update
    /// reported), then every change, until the session fails. Returns `Ok` only when
    /// `drain` fired.
    fn session(
        &mut self,
        reporter: &mut Reporter,
        drain: &CancellationToken,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// Runs sessions until `drain` fires. After a failure the upstream is reported
/// unhealthy, and the next session starts after a jittered backoff, which a session that
/// delivered anything resets.
pub async fn follow<S: Source>(
    mut source: S,
    events: mpsc::Sender<SourceEvent>,
    mut backoff: Backoff,
    drain: CancellationToken,
) {
    loop {
        let mut reporter = Reporter { events: events.clone(), delivered: false };
        let ended = tokio::select! {
            _ = drain.cancelled() => return,
            ended = source.session(&mut reporter, &drain) => ended,
        };
        let Err(error) = ended else { return };
        if reporter.delivered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(upstream = %source.describe(), %error, retry_in = ?delay, "upstream session ended");
        if events.send(SourceEvent::Unhealthy(error.to_string())).await.is_err() {
            return;
        }
        tokio::select! {
            _ = drain.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::time::Instant;

    use super::*;

    /// Fails every session; delivers an update first in the sessions listed in `deliver_in`.
    struct Flaky {
        sessions: Arc<Mutex<Vec<Instant>>>,
        deliver_in: Vec<usize>,
    }

    impl Source for Flaky {
        fn describe(&self) -> String {
            "flaky".to_owned()
        }

        async fn session(&mut self, reporter: &mut Reporter, _: &CancellationToken) -> Result<(), SourceError> {
            let n = {
                let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                sessions.push(Instant::now());
                sessions.len() - 1
            };
            if self.deliver_in.contains(&n) {
                reporter.update(Update::default()).await?;
            }
            Err(SourceError("connection refused".to_owned()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_sessions_back_off_exponentially_and_a_delivering_session_resets_it() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let source = Flaky { sessions: sessions.clone(), deliver_in: vec![6] };
        let (events, mut received) = mpsc::channel(64);
        let drain = CancellationToken::new();
        let backoff = Backoff::new(min, max).expect("valid");
        let following = tokio::spawn(follow(source, events, backoff, drain.clone()));
        let mut n_unhealthy = 0;
        while sessions.lock().map(|sessions| sessions.len()).unwrap_or(0) < 9 {
            if let Some(SourceEvent::Unhealthy(error)) = received.recv().await {
                assert_eq!(error, "connection refused");
                n_unhealthy += 1;
            }
        }
        drain.cancel();
        following.await.expect("follow ends on drain");
        assert!(n_unhealthy >= 8);

        let starts = sessions.lock().map(|sessions| sessions.clone()).unwrap_or_default();
        let waits: Vec<Duration> = starts.windows(2).map(|pair| pair[1] - pair[0]).collect();
        // Wait n is at most min * 2^n, capped at max.
        for (n, wait) in waits.iter().enumerate().take(6) {
            let ceiling = (min * 2u32.pow(n as u32)).min(max);
            assert!(*wait <= ceiling, "wait {n}: {wait:?} over {ceiling:?}");
        }
        // Session 6 delivered, so the wait after it starts from the minimum again.
        assert!(waits[6] <= min, "after a delivering session: {:?}", waits[6]);
    }
}
