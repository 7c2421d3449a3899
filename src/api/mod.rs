//! The local gRPC API: `veltrix.config.v1.ConfigService`, plus the one table that turns
//! errors into gRPC statuses.
//!
//! Handlers read the current snapshot and copy out bytes the store encoded when the
//! value changed; they never resolve, parse or wait for the upstream.

pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("veltrix.config.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("veltrix_descriptor");
}

mod server {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/veltrix.config.v1.ConfigService.rs"));
}

mod watch;
pub mod wire;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use server::config_service_server::{ConfigService, ConfigServiceServer};

use crate::{
    model::{KeyError, Rejection, validate_key, validate_prefix},
    store::{Entry, Snapshot, Store},
    sync::Upstream,
};
use proto::ValueFormat;

/// Request limits and stream timing, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Keys in one BatchGet, and keys plus prefixes in one Watch.
    pub max_keys_per_request: usize,
    /// An idle Watch stream gets a PROGRESS message this often.
    pub progress_interval: Duration,
}

/// Everything that can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid key {key:?}: {source}")]
    BadKey {
        key: String,
        #[source]
        source: KeyError,
    },
    #[error("invalid prefix {prefix:?}: {source}")]
    BadPrefix {
        prefix: String,
        #[source]
        source: KeyError,
    },
    #[error("{n} keys in one request, over the limit of {max}")]
    TooManyKeys { n: usize, max: usize },
    #[error("key {0} not found")]
    NotFound(String),
    #[error("no configuration loaded yet")]
    NotReady,
}

/// The one table from errors to gRPC codes.
impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let message = error.to_string();
        match error {
            ApiError::BadKey { .. } | ApiError::BadPrefix { .. } | ApiError::TooManyKeys { .. } => {
                Status::invalid_argument(message)
            }
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::NotReady => Status::unavailable(message),
        }
    }
}

pub struct ConfigApi {
    store: Arc<Store>,
    upstream: Arc<Upstream>,
    limits: ApiLimits,
    /// This instance's labels, reported by Status.
    labels: BTreeMap<String, String>,
    /// Ends every Watch stream at shutdown.
    drain: CancellationToken,
}

impl ConfigApi {
    pub fn new(
        store: Arc<Store>,
        upstream: Arc<Upstream>,
        limits: ApiLimits,
        labels: BTreeMap<String, String>,
        drain: CancellationToken,
    ) -> ConfigApi {
        ConfigApi { store, upstream, limits, labels, drain }
    }

    fn ready_snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        let snapshot = self.store.snapshot();
        if snapshot.is_ready() { Ok(snapshot) } else { Err(ApiError::NotReady) }
    }

    fn check_count(&self, n: usize) -> Result<(), ApiError> {
        let max = self.limits.max_keys_per_request;
        if n > max { Err(ApiError::TooManyKeys { n, max }) } else { Ok(()) }
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    validate_key(key).map_err(|source| ApiError::BadKey { key: key.to_owned(), source })
}

fn check_prefix(prefix: &str) -> Result<(), ApiError> {
    validate_prefix(prefix).map_err(|source| ApiError::BadPrefix { prefix: prefix.to_owned(), source })
}

/// The entry as encoded for the format the request asked for.
fn encoded(entry: &Entry, format: ValueFormat) -> Bytes {
    match format {
        ValueFormat::Proto => entry.encoded_proto.clone(),
        ValueFormat::Json | ValueFormat::Unspecified => entry.encoded_json.clone(),
    }
}

fn format_of(raw: i32) -> ValueFormat {
    ValueFormat::try_from(raw).unwrap_or(ValueFormat::Unspecified)
}

pub(crate) fn rejection_to_proto(rejection: &Rejection) -> proto::Rejection {
    proto::Rejection {
        key: rejection.key.clone(),
        origin: rejection.origin.clone(),
        line: rejection.line.unwrap_or(0),
        reason: rejection.reason.clone(),
        serving_previous: rejection.serving_previous,
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<wire::GetReply>, Status> {
        let request = request.get_ref();
        check_key(&request.key)?;
        let snapshot = self.ready_snapshot()?;
        let entry = snapshot.get(&request.key).ok_or_else(|| ApiError::NotFound(request.key.clone()))?;
        Ok(Response::new(wire::GetReply {
            entry: encoded(entry, format_of(request.format)),
            revision: snapshot.revision,
        }))
    }

    async fn batch_get(
        &self,
        request: Request<proto::BatchGetRequest>,
    ) -> Result<Response<wire::BatchGetReply>, Status> {
        let request = request.get_ref();
        self.check_count(request.keys.len())?;
        for key in &request.keys {
            check_key(key)?;
        }
        let snapshot = self.ready_snapshot()?;
        let format = format_of(request.format);
        let mut reply = wire::BatchGetReply { revision: snapshot.revision, ..Default::default() };
        for key in &request.keys {
            match snapshot.get(key) {
                Some(entry) => reply.entries.push(encoded(entry, format)),
                None => reply.missing.push(key.clone()),
            }
        }
        Ok(Response::new(reply))
    }

    async fn list(&self, request: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        let prefix = &request.get_ref().prefix;
        check_prefix(prefix)?;
        let snapshot = self.ready_snapshot()?;
        let keys = snapshot
            .with_prefix(prefix)
            .map(|entry| proto::ListedKey { key: entry.key.to_string(), mod_revision: entry.mod_revision })
            .collect();
        Ok(Response::new(proto::ListResponse { keys, revision: snapshot.revision }))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        self.check_count(request.keys.len() + request.prefixes.len())?;
        for key in &request.keys {
            check_key(key)?;
        }
        for prefix in &request.prefixes {
            check_prefix(prefix)?;
        }
        let format = format_of(request.format);
        let selection = watch::Selection::new(request.keys, request.prefixes);
        Ok(Response::new(watch::spawn(
            self.store.clone(),
            selection,
            request.start_revision,
            format,
            self.limits.progress_interval,
            self.drain.clone(),
        )))
    }

    async fn status(&self, _: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let snapshot = self.store.snapshot();
        let upstream = self.upstream.state();
        let rejections = self.store.rejections();
        let n_watchers = self.store.watchers.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(proto::StatusResponse {
            upstream_kind: self.upstream.kind.to_owned(),
            upstream: self.upstream.uri.clone(),
            upstream_healthy: upstream.healthy,
            last_sync: upstream.last_sync.map(prost_types::Timestamp::from),
            revision: snapshot.revision,
            keys: snapshot.entries.len() as u64,
            rejections: rejections.iter().map(rejection_to_proto).collect(),
            serving_from_last_known_good: false,
            watchers: u32::try_from(n_watchers).unwrap_or(u32::MAX),
            lagged_resyncs: self.store.lagged_resyncs.load(std::sync::atomic::Ordering::Relaxed),
            labels: self.labels.clone().into_iter().collect(),
            upstream_error: upstream.error.unwrap_or_default(),
        }))
    }
}
