//! The engine's side: connecting to a sidecar over TCP or a unix socket, typed reads,
//! waiting for readiness, and [`LiveConfig`], a value kept current by a Watch stream
//! that the game thread reads without a call or a lock.

mod live;

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub use live::LiveConfig;

use crate::api::proto::{self, config_service_client::ConfigServiceClient};

/// Where engines find their sidecar: `unix:/run/veltrix/sidecar.sock` or `HOST:PORT`.
pub const ADDR_ENV: &str = "VELTRIX_SIDECAR_ADDR";

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
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("module {key} does not have the expected shape: {source}")]
    Shape {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the sidecar at {addr} was not serving within {waited:?}")]
    NotReady { addr: String, waited: Duration },
}

/// The address from `VELTRIX_SIDECAR_ADDR`, or the sidecar's default TCP address.
pub fn default_addr() -> String {
    std::env::var(ADDR_ENV).unwrap_or_else(|_| crate::config::DEFAULT_LISTEN.to_owned())
}

/// A channel to `addr` (`HOST:PORT`, `http://HOST:PORT` or `unix:PATH`). A lazy one
/// connects on first use and reconnects by itself, so it can be made before the sidecar
/// is up.
async fn channel(addr: &str, lazy: bool) -> Result<Channel, ClientError> {
    let connect_error = |source| ClientError::Connect { addr: addr.to_owned(), source };
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        // The URI is required by the API but unused: the connector decides where to go.
        let endpoint = Endpoint::from_static("http://localhost");
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        });
        return if lazy {
            Ok(endpoint.connect_with_connector_lazy(connector))
        } else {
            endpoint.connect_with_connector(connector).await.map_err(connect_error)
        };
    }
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|error| ClientError::BadAddress { addr: addr.to_owned(), reason: error.to_string() })?
        .tcp_nodelay(true);
    if lazy { Ok(endpoint.connect_lazy()) } else { endpoint.connect().await.map_err(connect_error) }
}

fn config_client(channel: Channel) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// Connects now; fails when nothing answers at `addr`.
pub async fn connect(addr: &str) -> Result<ConfigServiceClient<Channel>, ClientError> {
    Ok(config_client(channel(addr, false).await?))
}

/// A sidecar client for engines.
#[derive(Clone)]
pub struct Client {
    addr: String,
    channel: Channel,
}

impl Client {
    /// A client of the sidecar at `addr`. Nothing is connected until the first call, so
    /// this works before the sidecar is up; see [`Client::wait_ready`].
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Ok(Client { addr: addr.to_owned(), channel: channel(addr, true).await? })
    }

    /// A client of the sidecar named by `VELTRIX_SIDECAR_ADDR`.
    pub async fn from_env() -> Result<Client, ClientError> {
        Client::connect(&default_addr()).await
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The generated client, for calls this type does not wrap.
    pub fn api(&self) -> ConfigServiceClient<Channel> {
        config_client(self.channel.clone())
    }

    /// Waits until the sidecar reports SERVING (it has configuration), retrying while it
    /// is not up yet, for at most `deadline`.
    pub async fn wait_ready(&self, deadline: Duration) -> Result<(), ClientError> {
        let mut health = HealthClient::new(self.channel.clone());
        let waiting = async {
            loop {
                let request = HealthCheckRequest { service: String::new() };
                if let Ok(response) = health.check(request).await {
                    if response.into_inner().status() == ServingStatus::Serving {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(deadline, waiting)
            .await
            .map_err(|_| ClientError::NotReady { addr: self.addr.clone(), waited: deadline })
    }

    /// One module, deserialized into `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ClientError> {
        let request = proto::GetRequest { key: key.to_owned(), ..Default::default() };
        let response = self.api().get(request).await?.into_inner();
        let json = response.entry.map(|entry| entry.json).unwrap_or_default();
        serde_json::from_slice(&json).map_err(|source| ClientError::Shape { key: key.to_owned(), source })
    }
}
