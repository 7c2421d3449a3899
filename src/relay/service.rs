//! The relay's gRPC Watch: each stream follows the hub's state, with no task or queue of
//! its own.

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio::{
    sync::watch,
    time::{Interval, MissedTickBehavior},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};

use super::{
    ClientGuard, Hub, HubState, Position, Reply, ReplyKind,
    proto::{
        self, WatchRequest, WatchResponse,
        document::State,
        relay_service_server::{RelayService, RelayServiceServer},
        watch_response::Kind,
    },
};

pub struct RelayApi {
    hub: Arc<Hub>,
    progress_interval: Duration,
    drain: CancellationToken,
}

impl RelayApi {
    pub fn new(hub: Arc<Hub>, progress_interval: Duration, drain: CancellationToken) -> RelayServiceServer<RelayApi> {
        // Snapshots of a large configuration are one message; sidecars accept up to 256 MiB.
        RelayServiceServer::new(RelayApi { hub, progress_interval, drain }).max_encoding_message_size(256 << 20)
    }
}

#[tonic::async_trait]
impl RelayService for RelayApi {
    type WatchStream = Pin<Box<dyn futures_util::Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        if request.start_revision < 0 {
            return Err(Status::invalid_argument(format!(
                "start_revision must be 0 or more, got {}",
                request.start_revision
            )));
        }
        if !self.hub.state().ready {
            // So that the sidecar moves on to a relay that has something to serve.
            return Err(Status::unavailable("the relay has not read its upstream yet"));
        }
        let at = (request.start_revision > 0)
            .then(|| Position { epoch: request.epoch.into(), revision: request.start_revision });
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.reset();
        let follower = Follower {
            states: self.hub.subscribe(),
            guard: ClientGuard::new(self.hub.clone()),
            prefix: request.prefix,
            at,
            progress,
            drain: Box::pin(self.drain.clone().cancelled_owned()),
        };
        let stream = futures_util::stream::unfold(follower, |mut follower| async move {
            let reply = follower.next().await?;
            Some((Ok(reply), follower))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One stream's state, polled by tonic only when the client can take another message:
/// a client that reads slowly is simply asked for less often, and when it is, gets what
/// changed since it last read (or a RESYNC), computed from the hub's current state.
struct Follower {
    states: watch::Receiver<Arc<HubState>>,
    guard: ClientGuard,
    prefix: String,
    at: Option<Position>,
    progress: Interval,
    /// Made once: a stream is polled once per message, and this is on every poll.
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Follower {
    /// The next message, or `None` when the stream ends.
    async fn next(&mut self) -> Option<WatchResponse> {
        loop {
            let state = self.states.borrow_and_update().clone();
            if state.ready {
                let reply = state.reply(&self.prefix, self.at.as_ref());
                self.at = Some(reply.position());
                if reply.kind != ReplyKind::NoChange {
                    self.guard.0.count(&reply);
                    return Some(to_proto(reply));
                }
            }
            tokio::select! {
                _ = &mut self.drain => return None,
                changed = self.states.changed() => changed.ok()?,
                _ = self.progress.tick() => {
                    let Some(at) = &self.at else { continue };
                    return Some(WatchResponse {
                        kind: Kind::Progress.into(),
                        epoch: at.epoch.to_string(),
                        revision: at.revision,
                        documents: Vec::new(),
                    });
                }
            }
        }
    }
}

fn to_proto(reply: Reply) -> WatchResponse {
    let kind = match reply.kind {
        ReplyKind::Snapshot => Kind::Snapshot,
        ReplyKind::Changes => Kind::Changes,
        ReplyKind::Resync => Kind::Resync,
        ReplyKind::NoChange => Kind::Progress,
    };
    let documents = reply
        .documents
        .into_iter()
        .map(|(name, document)| proto::Document {
            name,
            state: Some(match document {
                Some(Ok(content)) => State::Content(content),
                Some(Err(error)) => State::Error(error),
                None => State::Deleted(true),
            }),
        })
        .collect();
    WatchResponse { kind: kind.into(), epoch: reply.epoch.to_string(), revision: reply.revision, documents }
}
