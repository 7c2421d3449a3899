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

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, debug_span};

pub use server::config_service_server::{ConfigService, ConfigServiceServer};

use crate::{
    cache::{ContextCache, Session},
    metrics::{Method, Metrics},
    model::{Key, KeyError, Rejection, validate_key, validate_prefix},
    resolve::{Labels, OnDemand, SchemaCache, is_label_word},
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
    #[error("invalid labels: {0}")]
    BadLabels(String),
    #[error("module {key} does not resolve: {reason}")]
    Rejected { key: String, reason: String },
}

/// The one table from errors to gRPC codes.
impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let message = error.to_string();
        match error {
            ApiError::BadKey { .. }
            | ApiError::BadPrefix { .. }
            | ApiError::TooManyKeys { .. }
            | ApiError::BadLabels(_) => Status::invalid_argument(message),
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::Rejected { .. } => Status::failed_precondition(message),
            ApiError::NotReady => Status::unavailable(message),
        }
    }
}

pub struct ConfigApi {
    store: Arc<Store>,
    upstream: Arc<Upstream>,
    limits: ApiLimits,
    /// This instance's labels: the snapshot is resolved with them, and request labels
    /// are laid over them.
    labels: Arc<Labels>,
    /// Values resolved under request labels.
    context: Arc<ContextCache>,
    metrics: Arc<Metrics>,
    /// Ends every Watch stream at shutdown.
    drain: CancellationToken,
}

/// Labels one request may carry.
pub const MAX_REQUEST_LABELS: usize = 16;

impl ConfigApi {
    pub fn new(
        store: Arc<Store>,
        upstream: Arc<Upstream>,
        limits: ApiLimits,
        labels: Labels,
        context: Arc<ContextCache>,
        metrics: Arc<Metrics>,
        drain: CancellationToken,
    ) -> ConfigApi {
        ConfigApi { store, upstream, limits, labels: Arc::new(labels), context, metrics, drain }
    }

    /// The labels a request resolves with: `None` for the instance's own (the snapshot),
    /// else the request's laid over the instance's.
    fn context_labels(&self, requested: &HashMap<String, String>) -> Result<Option<Arc<Labels>>, ApiError> {
        if requested.is_empty() {
            return Ok(None);
        }
        if requested.len() > MAX_REQUEST_LABELS {
            return Err(ApiError::BadLabels(format!(
                "{} labels, over the limit of {MAX_REQUEST_LABELS}",
                requested.len()
            )));
        }
        if let Some((name, value)) =
            requested.iter().find(|(name, value)| !is_label_word(name) || !is_label_word(value))
        {
            return Err(ApiError::BadLabels(format!(
                "{name}={value}: names and values are non-empty and use A-Z a-z 0-9 _ . - only"
            )));
        }
        let mut labels = (*self.labels).clone();
        labels.extend(requested.iter().map(|(name, value)| (name.clone(), value.clone())));
        Ok((labels != *self.labels).then(|| Arc::new(labels)))
    }

    /// One module from the snapshot, or resolved under `labels`.
    fn entry(
        &self,
        snapshot: &Snapshot,
        session: Option<&mut Session<'_>>,
        key: &str,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let Some(session) = session else { return Ok(snapshot.get(key).cloned()) };
        let key = Key::new(key).map_err(|source| ApiError::BadKey { key: key.to_owned(), source })?;
        match session.get(&key) {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(entry)),
            Some(Err(reason)) => Err(ApiError::Rejected { key: key.to_string(), reason: reason.to_string() }),
        }
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

/// The handlers; the trait implementation below measures and logs each call.
impl ConfigApi {
    async fn get_now(&self, request: Request<proto::GetRequest>) -> Result<Response<wire::GetReply>, Status> {
        let request = request.get_ref();
        check_key(&request.key)?;
        let labels = self.context_labels(&request.labels)?;
        let snapshot = self.ready_snapshot()?;
        let mut session = labels.as_ref().map(|labels| self.context.session(&snapshot, labels));
        let entry = self
            .entry(&snapshot, session.as_mut(), &request.key)?
            .ok_or_else(|| ApiError::NotFound(request.key.clone()))?;
        Ok(Response::new(wire::GetReply {
            entry: encoded(&entry, format_of(request.format)),
            revision: snapshot.revision,
            epoch: self.store.epoch(),
        }))
    }

    async fn batch_get_now(
        &self,
        request: Request<proto::BatchGetRequest>,
    ) -> Result<Response<wire::BatchGetReply>, Status> {
        let request = request.get_ref();
        self.check_count(request.keys.len())?;
        for key in &request.keys {
            check_key(key)?;
        }
        let labels = self.context_labels(&request.labels)?;
        let snapshot = self.ready_snapshot()?;
        let mut session = labels.as_ref().map(|labels| self.context.session(&snapshot, labels));
        let format = format_of(request.format);
        let mut reply =
            wire::BatchGetReply { revision: snapshot.revision, epoch: self.store.epoch(), ..Default::default() };
        for key in &request.keys {
            match self.entry(&snapshot, session.as_mut(), key)? {
                Some(entry) => reply.entries.push(encoded(&entry, format)),
                None => reply.missing.push(key.clone()),
            }
        }
        Ok(Response::new(reply))
    }

    async fn list_now(&self, request: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        let prefix = &request.get_ref().prefix;
        check_prefix(prefix)?;
        let snapshot = self.ready_snapshot()?;
        let keys = snapshot
            .with_prefix(prefix)
            .map(|entry| proto::ListedKey { key: entry.key.to_string(), mod_revision: entry.mod_revision })
            .collect();
        Ok(Response::new(proto::ListResponse { keys, revision: snapshot.revision }))
    }

    async fn watch_now(&self, request: Request<proto::WatchRequest>) -> Result<Response<watch::WatchStream>, Status> {
        let request = request.into_inner();
        self.check_count(request.keys.len() + request.prefixes.len())?;
        for key in &request.keys {
            check_key(key)?;
        }
        for prefix in &request.prefixes {
            check_prefix(prefix)?;
        }
        let context =
            self.context_labels(&request.labels)?.map(|labels| watch::Context::new(labels, self.context.clone()));
        let format = format_of(request.format);
        let selection = watch::Selection::new(request.keys, request.prefixes);
        Ok(Response::new(watch::spawn(
            self.store.clone(),
            selection,
            context,
            watch::Start { revision: request.start_revision, epoch: request.epoch },
            format,
            self.limits.progress_interval,
            self.drain.clone(),
        )))
    }

    async fn status_now(&self, _: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let snapshot = self.store.snapshot();
        let upstream = self.upstream.state();
        let rejections = self.store.rejections();
        let n_watchers = self.store.watchers.load(Ordering::Relaxed);
        Ok(Response::new(proto::StatusResponse {
            upstream_kind: self.upstream.kind.to_owned(),
            upstream: self.upstream.uri.clone(),
            upstream_healthy: upstream.healthy,
            last_sync: upstream.last_sync.map(prost_types::Timestamp::from),
            revision: snapshot.revision,
            keys: snapshot.entries.len() as u64,
            rejections: rejections.iter().map(rejection_to_proto).collect(),
            serving_from_last_known_good: upstream.serving_from_last_known_good,
            watchers: u32::try_from(n_watchers).unwrap_or(u32::MAX),
            lagged_resyncs: self.store.lagged_resyncs.load(Ordering::Relaxed),
            labels: self.labels.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
            upstream_error: upstream.error.unwrap_or_default(),
            context_cache_entries: self.context.entry_count(),
            upstream_revision: upstream.revision.unwrap_or(0),
            epoch: self.store.epoch(),
        }))
    }

    async fn explain_now(
        &self,
        request: Request<proto::ExplainRequest>,
    ) -> Result<Response<proto::ExplainResponse>, Status> {
        let request = request.get_ref();
        let key = Key::new(&request.key).map_err(|source| ApiError::BadKey { key: request.key.clone(), source })?;
        let labels = self.context_labels(&request.labels)?.unwrap_or_else(|| self.labels.clone());
        let snapshot = self.ready_snapshot()?;
        let schemas = SchemaCache::default();
        let (value, explanation) = OnDemand::new(&snapshot.modules, &labels, &schemas)
            .explain(&key)
            .ok_or_else(|| ApiError::NotFound(request.key.clone()))?
            .map_err(|reason| ApiError::Rejected { key: request.key.clone(), reason })?;
        Ok(Response::new(proto::ExplainResponse {
            key: key.to_string(),
            revision: snapshot.revision,
            json: value.to_string().into(),
            layers: explanation.layers,
            fields: explanation.fields.into_iter().collect(),
            references: explanation
                .references
                .into_iter()
                .map(|(path, reference)| proto::FollowedReference { path, reference })
                .collect(),
            schema: explanation.schema.map(|key| key.to_string()).unwrap_or_default(),
            labels: labels.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
        }))
    }
}

/// Numbers requests, for the spans their log lines carry.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

impl ConfigApi {
    /// Runs one handler inside a span with the method and a request id, and counts it by
    /// method and status code.
    async fn measured<T>(&self, method: Method, handler: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let span = debug_span!("request", method = method.name(), id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        let result = handler.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.observe(method, code, elapsed);
        span.in_scope(|| debug!(?code, ?elapsed, "answered"));
        result
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<wire::GetReply>, Status> {
        self.measured(Method::Get, self.get_now(request)).await
    }

    async fn batch_get(
        &self,
        request: Request<proto::BatchGetRequest>,
    ) -> Result<Response<wire::BatchGetReply>, Status> {
        self.measured(Method::BatchGet, self.batch_get_now(request)).await
    }

    async fn list(&self, request: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        self.measured(Method::List, self.list_now(request)).await
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<watch::WatchStream>, Status> {
        self.measured(Method::Watch, self.watch_now(request)).await
    }

    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        self.measured(Method::Status, self.status_now(request)).await
    }

    async fn explain(
        &self,
        request: Request<proto::ExplainRequest>,
    ) -> Result<Response<proto::ExplainResponse>, Status> {
        self.measured(Method::Explain, self.explain_now(request)).await
    }
}
