//! `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: documents under a key prefix of an etcd v3
//! cluster, named by the rest of their key (`PREFIX/matchmaking/queues.yaml`).
//!
//! A session lists the prefix at one revision, then watches from the next: one etcd
//! revision (a put, a delete, a whole transaction) is one update. A later session resumes
//! the watch after the last revision reported; when etcd has compacted that history away,
//! it lists again, and the sync loop publishes the difference as one change-set. Endpoints
//! are tried in turn, starting after the one that failed last.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tracing::info;

use super::{Document, Reporter, Source, SourceError, Update, sized_document};

/// The etcd v3 API as generated from `proto/etcd` (clients only).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod api {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
}

use api::{
    etcdserverpb::{
        AuthenticateRequest, RangeRequest, WatchCreateRequest, WatchRequest, auth_client::AuthClient,
        kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion,
    },
    mvccpb::event::EventType,
};

/// Keys per Range page when listing.
const PAGE: i64 = 1000;
/// Largest message accepted from etcd: a page of large documents.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// Client certificate and key, for clusters that require them.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// Ends with '/'.
    pub prefix: String,
    pub credentials: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
    pub connect_timeout: Duration,
    pub max_document_bytes: u64,
}

pub struct EtcdSource {
    settings: EtcdSettings,
    /// The last etcd revision reported: the next session watches from the one after.
    revision: Option<i64>,
    /// Which endpoint the next session tries first.
    next_endpoint: usize,
}

/// Adds the auth token, and asks members without a leader to refuse rather than serve
/// stale data.
#[derive(Clone)]
struct Metadata {
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Metadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Metadata>;

impl EtcdSource {
    pub fn new(settings: EtcdSettings) -> EtcdSource {
        EtcdSource { settings, revision: None, next_endpoint: 0 }
    }

    /// Connects to the first endpoint that answers, starting with `next_endpoint`.
    async fn connect(&mut self) -> Result<Channel, SourceError> {
        let tls = match &self.settings.tls {
            Some(files) => Some(tls_config(files).await?),
            None => None,
        };
        let n = self.settings.endpoints.len();
        let mut failures = Vec::new();
        for offset in 0..n {
            let index = (self.next_endpoint + offset) % n;
            let host = &self.settings.endpoints[index];
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))
                .map_err(|error| SourceError::new(host, error))?
                .connect_timeout(self.settings.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(|error| SourceError::new(host, error))?;
            }
            match endpoint.connect().await {
                Ok(channel) => {
                    // A session that fails later moves on to the next member.
                    self.next_endpoint = index + 1;
                    return Ok(channel);
                }
                Err(error) => failures.push(format!("{host}: {error}")),
            }
        }
        self.next_endpoint += 1;
        Err(SourceError(format!("no etcd endpoint answered ({})", failures.join("; "))))
    }

    async fn authenticate(&self, channel: &Channel) -> Result<Metadata, SourceError> {
        let Some((name, password)) = &self.settings.credentials else { return Ok(Metadata { token: None }) };
        let response = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest { name: name.clone(), password: password.clone() })
            .await
            .map_err(|status| SourceError::new("etcd authentication", status.message()))?;
        let token = response.into_inner().token.parse().map_err(|error| SourceError::new("etcd token", error))?;
        Ok(Metadata { token: Some(token) })
    }

    fn range_end(&self) -> Vec<u8> {
        prefix_end(self.settings.prefix.as_bytes())
    }

    /// The document name of an etcd key, or `None` for the prefix itself.
    fn name_of(&self, key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(self.settings.prefix.as_bytes())?;
        (!rest.is_empty()).then(|| String::from_utf8_lossy(rest).into_owned())
    }

    fn document(&self, value: Vec<u8>) -> Document {
        sized_document(value, self.settings.max_document_bytes)
    }

    /// Lists the prefix at one revision, page by page, and reports it as the whole state.
    async fn list(&mut self, kv: &mut KvClient<Authed>, reporter: &mut Reporter) -> Result<i64, SourceError> {
        let mut changes = BTreeMap::new();
        let mut key = self.settings.prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let response = kv
                .range(RangeRequest {
                    key: key.clone(),
                    range_end: self.range_end(),
                    limit: PAGE,
                    // Later pages read the same revision as the first.
                    revision,
                    ..Default::default()
                })
                .await
                .map_err(|status| SourceError::new("etcd range", status.message()))?
                .into_inner();
            if revision == 0 {
                revision = response.header.as_ref().map_or(0, |header| header.revision);
            }
            let last = response.kvs.last().map(|kv| kv.key.clone());
            for kv in response.kvs {
                if let Some(name) = self.name_of(&kv.key) {
                    changes.insert(name, Some(self.document(kv.value)));
                }
            }
            match last {
                Some(mut last) if response.more => {
                    last.push(0);
                    key = last;
                }
                _ => break,
            }
        }
        info!(revision, n_documents = changes.len(), "listed etcd prefix {}", self.settings.prefix);
        reporter.update(Update { changes, full: true, upstream_revision: Some(revision), epoch: None }).await?;
        self.revision = Some(revision);
        Ok(revision)
    }

    /// Watches from `revision + 1`. `Ok(true)`: the history was compacted away, list
    /// again; `Ok(false)`: drained.
    async fn watch(
        &mut self,
        client: &mut WatchClient<Authed>,
        revision: i64,
        reporter: &mut Reporter,
        drain: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let (requests, requests_rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.settings.prefix.as_bytes().to_vec(),
                range_end: self.range_end(),
                start_revision: revision + 1,
                progress_notify: true,
                ..Default::default()
            })),
        };
        requests.send(create).await.map_err(|_| SourceError("watch request channel closed".to_owned()))?;
        let mut responses = client
            .watch(ReceiverStream::new(requests_rx))
            .await
            .map_err(|status| SourceError::new("etcd watch", status.message()))?
            .into_inner();
        loop {
            let response = tokio::select! {
                _ = drain.cancelled() => return Ok(false),
                response = responses.message() => response,
            };
            let response = match response {
                Ok(Some(response)) => response,
                Ok(None) => return Err(SourceError("etcd closed the watch stream".to_owned())),
                Err(status) => return Err(SourceError::new("etcd watch", status.message())),
            };
            if response.compact_revision > 0 {
                info!(
                    compacted = response.compact_revision,
                    resume = revision + 1,
                    "etcd compacted the history this sidecar needs; listing again"
                );
                return Ok(true);
            }
            if response.canceled {
                return Err(SourceError(format!("etcd canceled the watch: {}", response.cancel_reason)));
            }
            // One update per etcd revision, in order: a transaction's events share one.
            let mut by_revision: BTreeMap<i64, BTreeMap<String, Option<Document>>> = BTreeMap::new();
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                let Some(name) = self.name_of(&kv.key) else { continue };
                let change = match EventType::try_from(event.r#type) {
                    Ok(EventType::Delete) => None,
                    _ => Some(self.document(kv.value)),
                };
                by_revision.entry(kv.mod_revision).or_default().insert(name, change);
            }
            for (event_revision, changes) in by_revision {
                reporter
                    .update(Update { changes, full: false, upstream_revision: Some(event_revision), epoch: None })
                    .await?;
                self.revision = Some(event_revision);
            }
        }
    }
}

impl Source for EtcdSource {
    fn describe(&self) -> String {
        format!("etcd://{}{}", self.settings.endpoints.join(","), self.settings.prefix)
    }

    async fn session(&mut self, reporter: &mut Reporter, drain: &CancellationToken) -> Result<(), SourceError> {
        let channel = self.connect().await?;
        let metadata = self.authenticate(&channel).await?;
        let mut kv =
            KvClient::with_interceptor(channel.clone(), metadata.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut watch = WatchClient::with_interceptor(channel, metadata).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut revision = match self.revision {
            Some(revision) => revision,
            None => self.list(&mut kv, reporter).await?,
        };
        while self.watch(&mut watch, revision, reporter, drain).await? {
            revision = self.list(&mut kv, reporter).await?;
        }
        Ok(())
    }
}

pub(crate) async fn tls_config(files: &TlsFiles) -> Result<ClientTlsConfig, SourceError> {
    let read = |path: PathBuf| async move {
        tokio::fs::read(&path).await.map_err(|error| SourceError::new(&path.display().to_string(), error))
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(files.ca.clone()).await?));
    if let Some((cert, key)) = &files.identity {
        config = config.identity(Identity::from_pem(read(cert.clone()).await?, read(key.clone()).await?));
    }
    Ok(config)
}

/// The smallest key after every key starting with `prefix`, as etcd's range_end wants.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/cfg/"), b"/cfg0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
