//! Connecting to a sidecar's local API, over TCP or a unix socket.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::proto::config_service_client::ConfigServiceClient;

/// Responses larger than this are refused by the client; a full-state Watch message of a
/// large configuration can exceed tonic's 4 MiB default.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// `addr` is `HOST:PORT`, `http://HOST:PORT` or `unix:PATH`.
pub async fn connect(addr: &str) -> Result<ConfigServiceClient<Channel>, ClientError> {
    let channel = if let Some(path) = addr.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        // The URI is required by the API but unused: the connector decides where to go.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
    } else {
        let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
        Endpoint::from_shared(uri)
            .map_err(|error| ClientError::BadAddress { addr: addr.to_owned(), reason: error.to_string() })?
            .tcp_nodelay(true)
            .connect()
            .await
    }
    .map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
    Ok(ConfigServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}
