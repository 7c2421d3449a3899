//! `grpc(s)://HOST:PORT[,...][/PREFIX]` and `http(s)://HOST:PORT[,...][/PREFIX]`: the
//! documents a relay serves, over its Watch stream or by long-polling `/v1/watch`.
//!
//! A session opens the first relay that answers, starting after the one that failed
//! last, and asks for what changed after the last revision applied (in its epoch). The
//! relay answers with those changes, or with its whole state when it cannot tell them
//! apart (another upstream, history too short), which the sync loop turns into the
//! difference. So a sidecar that fails over between relays of the same upstream misses
//! nothing and reloads nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tracing::{debug, info};

use super::{Document, Reporter, Source, SourceError, Update, etcd::TlsFiles, sized_document};
use crate::{
    config::RelayTransport,
    relay::{
        Position, Token,
        proto::{WatchRequest, document::State, relay_service_client::RelayServiceClient, watch_response::Kind},
    },
};

/// How long a long-poll may wait at the relay before it answers "no change".
const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// A whole state of a large configuration is one message, or one body.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub transport: RelayTransport,
    pub endpoints: Vec<String>,
    /// Documents whose names start with it, served without it.
    pub prefix: String,
    /// TLS to the relays (grpcs://, https://), trusting this CA.
    pub tls: Option<TlsFiles>,
    pub token: Option<Token>,
    pub connect_timeout: Duration,
    pub max_document_bytes: u64,
}

pub struct RelaySource {
    settings: RelaySettings,
    /// What the sync loop last took, to resume from.
    position: Option<Position>,
    next_endpoint: usize,
}

impl RelaySource {
    pub fn new(settings: RelaySettings) -> RelaySource {
        RelaySource { settings, position: None, next_endpoint: 0 }
    }

    /// Every relay in turn, starting after the one that failed last, until one opens.
    async fn open<T, F>(&mut self, mut open_one: impl FnMut(String) -> F) -> Result<(String, T), SourceError>
    where
        F: Future<Output = Result<T, SourceError>>,
    {
        let n = self.settings.endpoints.len();
        let mut failures = Vec::new();
        for offset in 0..n {
            let index = (self.next_endpoint + offset) % n;
            let host = self.settings.endpoints[index].clone();
            match open_one(host.clone()).await {
                Ok(opened) => {
                    // A session that fails later moves on to the next relay.
                    self.next_endpoint = index + 1;
                    info!(relay = %host, resume_after = ?self.position.as_ref().map(|at| at.revision), "following a relay");
                    return Ok((host, opened));
                }
                Err(error) => failures.push(error.0),
            }
        }
        self.next_endpoint += 1;
        Err(SourceError(format!("no relay answered ({})", failures.join("; "))))
    }

    /// Hands one reply to the sync loop; remembers the position only once it is there.
    async fn deliver(
        &mut self,
        reporter: &mut Reporter,
        full: bool,
        epoch: &str,
        revision: i64,
        documents: impl IntoIterator<Item = (String, Option<Document>)>,
    ) -> Result<(), SourceError> {
        let mut changes = BTreeMap::new();
        for (name, document) in documents {
            let Some(name) = name.strip_prefix(&self.settings.prefix) else {
                debug!(%name, "the relay sent a document outside the prefix; ignored");
                continue;
            };
            let document = document
                .map(|document| document.and_then(|content| sized_document(content, self.settings.max_document_bytes)));
            changes.insert(name.to_owned(), document);
        }
        let epoch: Arc<str> = epoch.into();
        reporter
            .update(Update { changes, full, upstream_revision: Some(revision), epoch: Some(epoch.clone()) })
            .await?;
        self.position = Some(Position { epoch, revision });
        Ok(())
    }

    async fn grpc_session(&mut self, reporter: &mut Reporter, drain: &CancellationToken) -> Result<(), SourceError> {
        let tls = match &self.settings.tls {
            Some(files) => Some(super::etcd::tls_config(files).await?),
            None => None,
        };
        let request = WatchRequest {
            prefix: self.settings.prefix.clone(),
            start_revision: self.position.as_ref().map_or(0, |at| at.revision),
            epoch: self.position.as_ref().map(|at| at.epoch.to_string()).unwrap_or_default(),
        };
        let (token, connect_timeout) = (self.settings.token.clone(), self.settings.connect_timeout);
        let (host, mut stream) = self
            .open(|host| {
                let (tls, token, request) = (tls.clone(), token.clone(), request.clone());
                async move {
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))
                        .map_err(|error| SourceError::new(&host, error))?
                        .connect_timeout(connect_timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_timeout(Duration::from_secs(5));
                    if let Some(tls) = tls {
                        endpoint = endpoint.tls_config(tls).map_err(|error| SourceError::new(&host, error))?;
                    }
                    let channel: Channel = endpoint.connect().await.map_err(|error| SourceError::new(&host, error))?;
                    let mut client = RelayServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                    let mut request = tonic::Request::new(request);
                    if let Some(token) = &token {
                        let value = MetadataValue::try_from(token.header_value())
                            .map_err(|_| SourceError(format!("{host}: the token is not a valid header value")))?;
                        request.metadata_mut().insert("authorization", value);
                    }
                    let response = client.watch(request).await.map_err(|status| refused(&host, &status))?;
                    Ok(response.into_inner())
                }
            })
            .await?;
        loop {
            let message = tokio::select! {
                _ = drain.cancelled() => return Ok(()),
                message = stream.message() => message,
            };
            let reply = match message {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(SourceError(format!("relay {host} ended the stream"))),
                Err(status) => return Err(refused(&host, &status)),
            };
            let full = match reply.kind() {
                Kind::Snapshot | Kind::Resync => true,
                Kind::Changes => false,
                Kind::Progress | Kind::Unspecified => continue,
            };
            let documents = reply.documents.into_iter().map(|document| {
                let state = match document.state {
                    Some(State::Content(content)) => Some(Ok(content)),
                    Some(State::Error(error)) => Some(Err(error)),
                    Some(State::Deleted(_)) => None,
                    None => Some(Err("the relay sent the document without its content".to_owned())),
                };
                (document.name, state)
            });
            self.deliver(reporter, full, &reply.epoch, reply.revision, documents).await?;
        }
    }

    async fn http_session(&mut self, reporter: &mut Reporter, drain: &CancellationToken) -> Result<(), SourceError> {
        let tls = match &self.settings.tls {
            Some(files) => Some(crate::tls::client_config(&files.ca).map_err(SourceError)?),
            None => None,
        };
        let connect_timeout = self.settings.connect_timeout;
        let (host, mut sender) = self
            .open(|host| {
                let tls = tls.clone();
                async move {
                    tokio::time::timeout(connect_timeout, connect_http(&host, tls))
                        .await
                        .map_err(|_| SourceError(format!("{host}: connection timed out")))?
                }
            })
            .await?;
        loop {
            let poll = self.poll(&host, &mut sender);
            let reply = tokio::select! {
                _ = drain.cancelled() => return Ok(()),
                reply = poll => reply?,
            };
            let full = match reply.kind.as_str() {
                "snapshot" | "resync" => true,
                "changes" => false,
                "no_change" => continue,
                other => return Err(SourceError(format!("relay {host} answered with an unknown kind {other:?}"))),
            };
            let documents = reply.documents.into_iter().map(|document| {
                let state = match (document.content, document.error, document.deleted) {
                    (_, _, true) => None,
                    (Some(content), None, false) => Some(Ok(Bytes::from(content))),
                    (None, Some(error), false) => Some(Err(error)),
                    _ => Some(Err("the relay sent the document with neither content nor error".to_owned())),
                };
                (document.name, state)
            });
            self.deliver(reporter, full, &reply.epoch, reply.revision, documents).await?;
        }
    }

    async fn poll(&self, host: &str, sender: &mut SendRequest<Empty<Bytes>>) -> Result<PollReply, SourceError> {
        let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
        let (since, epoch) = match &self.position {
            Some(at) => (at.revision, encode(&at.epoch)),
            None => (0, String::new()),
        };
        let uri = format!(
            "/v1/watch?prefix={}&since={since}&epoch={epoch}&wait={}s",
            encode(&self.settings.prefix),
            LONG_POLL_WAIT.as_secs()
        );
        let mut request = Request::get(uri).header(hyper::header::HOST, host);
        if let Some(token) = &self.settings.token {
            request = request.header(hyper::header::AUTHORIZATION, token.header_value());
        }
        let request = request.body(Empty::new()).map_err(|error| SourceError::new(host, error))?;
        sender.ready().await.map_err(|error| SourceError::new(host, error))?;
        // The relay answers by the end of the wait; a silent one is gone.
        let exchange = async {
            let response = sender.send_request(request).await.map_err(|error| SourceError::new(host, error))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_MESSAGE_BYTES)
                .collect()
                .await
                .map_err(|error| SourceError::new(host, error))?
                .to_bytes();
            Ok::<_, SourceError>((status, body))
        };
        let (status, body) = tokio::time::timeout(LONG_POLL_WAIT + Duration::from_secs(15), exchange)
            .await
            .map_err(|_| SourceError(format!("relay {host} did not answer a long-poll in time")))??;
        match status {
            StatusCode::OK => serde_json::from_slice(&body)
                .map_err(|error| SourceError(format!("relay {host} sent a reply that is not the protocol's: {error}"))),
            StatusCode::UNAUTHORIZED => Err(SourceError(format!(
                "relay {host} refused the bearer token (401); check --upstream-token-file or VELTRIX_UPSTREAM_TOKEN"
            ))),
            status => Err(SourceError(format!("relay {host} answered {status}: {}", String::from_utf8_lossy(&body)))),
        }
    }
}

/// A connection to one relay, over TLS when `tls` is set; the connection is driven by a
/// task of its own that ends when `SendRequest` is dropped.
async fn connect_http(
    host: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Empty<Bytes>>, SourceError> {
    let stream = TcpStream::connect(host).await.map_err(|error| SourceError::new(host, error))?;
    let _ = stream.set_nodelay(true);
    match tls {
        Some(config) => {
            let name = host.rsplit_once(':').map_or(host, |(name, _)| name).trim_matches(['[', ']']);
            let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
                .map_err(|error| SourceError::new(host, error))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, stream)
                .await
                .map_err(|error| SourceError::new(host, error))?;
            handshake(host, stream).await
        }
        None => handshake(host, stream).await,
    }
}

async fn handshake<S>(host: &str, stream: S) -> Result<SendRequest<Empty<Bytes>>, SourceError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| SourceError::new(host, error))?;
    let host = host.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(relay = %host, %error, "long-poll connection ended");
        }
    });
    Ok(sender)
}

/// Why a relay refused or ended a stream, with what to check when it is the token.
fn refused(host: &str, status: &Status) -> SourceError {
    match status.code() {
        Code::Unauthenticated => SourceError(format!(
            "relay {host} refused the bearer token ({}); check --upstream-token-file or VELTRIX_UPSTREAM_TOKEN",
            status.message()
        )),
        code => SourceError(format!("relay {host}: {code:?}: {}", status.message())),
    }
}

#[derive(Debug, Deserialize)]
struct PollReply {
    kind: String,
    epoch: String,
    revision: i64,
    #[serde(default)]
    documents: Vec<PollDocument>,
}

#[derive(Debug, Deserialize)]
struct PollDocument {
    name: String,
    content: Option<String>,
    error: Option<String>,
    #[serde(default)]
    deleted: bool,
}

impl Source for RelaySource {
    fn describe(&self) -> String {
        let scheme = self.settings.transport.scheme(self.settings.tls.is_some());
        format!("{scheme}://{}/{}", self.settings.endpoints.join(","), self.settings.prefix)
    }

    async fn session(&mut self, reporter: &mut Reporter, drain: &CancellationToken) -> Result<(), SourceError> {
        match self.settings.transport {
            RelayTransport::Grpc => self.grpc_session(reporter, drain).await,
            RelayTransport::Http => self.http_session(reporter, drain).await,
        }
    }
}
