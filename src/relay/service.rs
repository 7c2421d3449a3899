//! The relay's gRPC Watch: one task per stream, following the hub's state.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    ClientGuard, Hub, Position, Reply, ReplyKind,
    proto::{
        self, WatchRequest, WatchResponse,
        document::State,
        relay_service_server::{RelayService, RelayServiceServer},
        watch_response::Kind,
    },
};

/// Replies ready for tonic to send. The hub's history is the backlog, not this channel.
const STREAM_BUFFER: usize = 4;

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
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

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
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let stream = Stream {
            guard: ClientGuard::new(self.hub.clone()),
            hub: self.hub.clone(),
            prefix: request.prefix,
            at,
            sender,
        };
        tokio::spawn(stream.run(self.progress_interval, self.drain.clone()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

struct Stream {
    guard: ClientGuard,
    hub: Arc<Hub>,
    prefix: String,
    at: Option<Position>,
    sender: mpsc::Sender<Result<WatchResponse, Status>>,
}

impl Stream {
    async fn run(mut self, progress_interval: Duration, drain: CancellationToken) {
        let mut states = self.hub.subscribe();
        let mut progress = tokio::time::interval(progress_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.reset();
        loop {
            let state = states.borrow_and_update().clone();
            if state.ready {
                let reply = state.reply(&self.prefix, self.at.as_ref());
                drop(state);
                if reply.kind == ReplyKind::NoChange {
                    self.at = Some(reply.position());
                } else {
                    self.guard.0.count(&reply);
                    self.at = Some(reply.position());
                    // Waiting here is this stream's own business: the hub moves on, and
                    // the next turn of the loop sends what was missed, or a RESYNC.
                    if self.sender.send(Ok(to_proto(reply))).await.is_err() {
                        return;
                    }
                    progress.reset();
                }
            }
            tokio::select! {
                _ = drain.cancelled() => return,
                _ = self.sender.closed() => return,
                changed = states.changed() => if changed.is_err() { return },
                _ = progress.tick() => {
                    let Some(at) = &self.at else { continue };
                    let heartbeat = WatchResponse {
                        kind: Kind::Progress.into(),
                        epoch: at.epoch.to_string(),
                        revision: at.revision,
                        documents: Vec::new(),
                    };
                    if self.sender.send(Ok(heartbeat)).await.is_err() {
                        return;
                    }
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
