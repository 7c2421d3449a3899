//! Start-up and shutdown: bind the listeners, serve, follow the upstream, drain.
//!
//! Binding is separate from running so that a caller (main, or a test) owns the sockets
//! and learns their addresses before anything is served.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::task::{JoinHandle, JoinSet};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::mpsc,
};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Server,
    server::{Router, TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{
    layer::util::{Identity, Stack},
    util::Either,
};
use tracing::{error, info, warn};

use crate::{
    admin,
    api::{ApiLimits, ConfigApi, ConfigServiceServer, proto},
    cache::ContextCache,
    config::{Role, Settings, SourceUri},
    metrics::Metrics,
    relay::{Gate, Hub, RELAY_SERVICE_NAME, RelayApi, Token},
    resolve::Labels,
    source::{
        SourceEvent,
        etcd::{EtcdSettings, EtcdSource},
        file::{FileSource, FileSourceSettings},
        follow,
        relay::{RelaySettings, RelaySource},
        zookeeper::{ZooKeeperSettings, ZooKeeperSource},
    },
    store::{Publisher, Store, StoreLimits},
    sync::{self, LastKnownGood, Upstream, last_known_good::StateFile},
};

/// HTTP/2 pings on idle connections, so that a dead peer or a silently dropped
/// connection is noticed. Clients may ping us as often as every 10 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name health checks use for the config service.
pub const CONFIG_SERVICE_NAME: &str = "veltrix.config.v1.ConfigService";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on unix socket {path}: {source}")]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unix socket {0} is in use by a running process")]
    SocketInUse(PathBuf),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the API, the admin server and the sync loop share.
pub struct Shared {
    pub store: Arc<Store>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    /// Values resolved under request labels.
    pub context: Arc<ContextCache>,
    /// The instance's labels.
    pub labels: Labels,
    /// The upstream's documents as served to sidecars, in the relay role.
    pub relay: Option<Arc<Hub>>,
    /// The bearer token requests must carry, when one is set.
    pub token: Option<Token>,
}

impl Shared {
    pub fn new(store: Arc<Store>, upstream: Arc<Upstream>, labels: Labels, context_cache_bytes: u64) -> Shared {
        let metrics = Arc::new(Metrics::default());
        let context = Arc::new(ContextCache::new(context_cache_bytes, metrics.clone()));
        Shared { store, upstream, metrics, context, labels, relay: None, token: None }
    }
}

/// The services of a listener, behind the token check and the long-poll route when the
/// settings ask for them.
pub type ApiRouter = Router<Stack<Either<Gate, Identity>, Identity>>;

/// The sockets the local API and the admin server are served on.
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    /// TLS on the TCP listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub unix: Option<(UnixListener, PathBuf)>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> Result<Listeners, AppError> {
        let tcp = match settings.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| AppError::BindTcp { addr, source })?),
            None => None,
        };
        let unix = match &settings.socket {
            Some(path) => Some((bind_unix(path).await?, path.clone())),
            None => None,
        };
        let admin = match settings.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| AppError::BindTcp { addr, source })?),
            None => None,
        };
        Ok(Listeners { tcp, tls: settings.tls.clone(), unix, admin })
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|listener| listener.local_addr().ok())
    }
}

/// The next connection, or `None` once `drain` fires. A failed accept (out of file
/// descriptors, say) is logged and waited out rather than ending the server.
pub(crate) async fn accept(
    listener: &TcpListener,
    drain: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = drain.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Binds a unix socket with mode 0660, replacing a stale socket file left by a process
/// that died, but never one that a live process still answers on.
async fn bind_unix(path: &Path) -> Result<UnixListener, AppError> {
    let bind_error = |source| AppError::BindUnix { path: path.to_owned(), source };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(AppError::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_error)?;
    Ok(listener)
}

/// The API's gRPC services: config, health and reflection, and the relay's Watch and
/// long-poll in the relay role. Health says NOT_SERVING until the store has a snapshot,
/// and again once `drain` fires.
pub async fn local_api(
    shared: &Shared,
    limits: ApiLimits,
    drain: CancellationToken,
) -> Result<(ApiRouter, HealthReporter), AppError> {
    let store = shared.store.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    {
        let (store, health, drain) = (store.clone(), health.clone(), drain.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = drain.cancelled() => {}
                _ = store.wait_ready() => {
                    set_health(&health, ServingStatus::Serving).await;
                    info!(revision = store.snapshot().revision, "ready");
                }
            }
        });
    }
    let api = ConfigApi::new(
        shared.store.clone(),
        shared.upstream.clone(),
        limits,
        shared.labels.clone(),
        shared.context.clone(),
        shared.metrics.clone(),
        drain.clone(),
    );
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    if shared.relay.is_some() {
        reflection = reflection.register_encoded_file_descriptor_set(crate::relay::proto::FILE_DESCRIPTOR_SET);
    }
    let gate = (shared.token.is_some() || shared.relay.is_some()).then(|| Gate {
        token: shared.token.clone(),
        hub: shared.relay.clone(),
        metrics: shared.metrics.clone(),
        drain: drain.clone(),
    });
    let relay = shared.relay.clone().map(|hub| RelayApi::new(hub, limits.progress_interval, drain.clone()));
    let router = Server::builder()
        // Long-polls come over HTTP/1.1 too, through proxies that speak nothing else.
        .accept_http1(shared.relay.is_some())
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(tower::util::option_layer(gate))
        .add_service(ConfigServiceServer::new(api))
        .add_service(health_service)
        .add_service(reflection.build_v1()?)
        .add_optional_service(relay);
    Ok((router, health))
}

/// Both the whole server ("") and the config service, so that probes may ask for either.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(CONFIG_SERVICE_NAME, status).await;
    health.set_service_status(RELAY_SERVICE_NAME, status).await;
}

/// Serves `router` on every listener until `drain` fires.
pub fn serve(
    router: ApiRouter,
    listeners: Listeners,
    drain: &CancellationToken,
) -> JoinSet<Result<(), tonic::transport::Error>> {
    let mut servers = JoinSet::new();
    if let Some(listener) = listeners.tcp {
        let addr = listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default();
        let (router, drain) = (router.clone(), drain.clone());
        match listeners.tls {
            Some(config) => {
                info!(%addr, "serving the API on TCP with TLS");
                let incoming = crate::tls::incoming(listener, config, drain.clone());
                servers
                    .spawn(async move { router.serve_with_incoming_shutdown(incoming, drain.cancelled_owned()).await });
            }
            None => {
                info!(%addr, "serving the API on TCP");
                // tonic's own nodelay setting does not reach a listener bound outside it.
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                servers
                    .spawn(async move { router.serve_with_incoming_shutdown(incoming, drain.cancelled_owned()).await });
            }
        }
    }
    if let Some((listener, path)) = listeners.unix {
        info!(path = %path.display(), "serving the local API on a unix socket");
        let incoming = UnixListenerStream::new(listener);
        let drain = drain.clone();
        servers.spawn(async move { router.serve_with_incoming_shutdown(incoming, drain.cancelled_owned()).await });
    }
    servers
}

/// Starts following the upstream the settings name.
fn spawn_source(settings: &Settings, events: mpsc::Sender<SourceEvent>, drain: CancellationToken) -> JoinHandle<()> {
    let upstream = &settings.upstream;
    match &settings.source {
        SourceUri::File(root) => {
            let source = FileSource::new(FileSourceSettings {
                root: root.clone(),
                debounce: settings.debounce,
                rescan_interval: settings.rescan_interval,
                max_document_bytes: settings.max_document_bytes,
            });
            tokio::spawn(source.run(events, drain))
        }
        SourceUri::Etcd { endpoints, prefix } => {
            let source = EtcdSource::new(EtcdSettings {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                credentials: upstream.credentials.clone(),
                tls: upstream.tls.clone(),
                connect_timeout: upstream.connect_timeout,
                max_document_bytes: settings.max_document_bytes,
            });
            tokio::spawn(follow(source, events, upstream.backoff.clone(), drain))
        }
        SourceUri::ZooKeeper { servers, root } => {
            let source = ZooKeeperSource::new(ZooKeeperSettings {
                servers: servers.join(","),
                root: root.clone(),
                session_timeout: upstream.session_timeout,
                connect_timeout: upstream.connect_timeout,
                max_document_bytes: settings.max_document_bytes,
            });
            tokio::spawn(follow(source, events, upstream.backoff.clone(), drain))
        }
        SourceUri::Relay { transport, tls, endpoints, prefix } => {
            let source = RelaySource::new(RelaySettings {
                transport: *transport,
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                tls: upstream.tls.clone().filter(|_| *tls),
                token: upstream.token.clone(),
                connect_timeout: upstream.connect_timeout,
                max_document_bytes: settings.max_document_bytes,
            });
            tokio::spawn(follow(source, events, upstream.backoff.clone(), drain))
        }
    }
}

/// Serves the state an earlier run saved, before the upstream is reached. A damaged or
/// foreign state is reported and ignored: the sidecar then waits for the upstream.
fn restore_last_known_good(last_known_good: &LastKnownGood, publisher: &mut Publisher, upstream: &Upstream) {
    match last_known_good.file.load(&last_known_good.source) {
        Ok(Some(state)) => {
            let (entries, modules) = state.restore();
            if publisher.restore(state.epoch, state.revision, entries, modules) {
                upstream.update(|upstream| upstream.serving_from_last_known_good = true);
                info!(revision = state.revision, path = %last_known_good.file.path().display(), "serving the last-known-good state; upstream not yet reached");
            }
        }
        Ok(None) => {}
        Err(error) => error!(%error, "ignoring the last-known-good state; waiting for the upstream"),
    }
}

/// Serves until `shutdown` resolves, then drains for at most `settings.drain_grace`.
pub async fn run(
    settings: Settings,
    mut listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let drain = CancellationToken::new();
    let (store, mut publisher) =
        Store::new(StoreLimits { history: settings.history, watch_backlog: settings.watch_backlog });
    let upstream = Arc::new(Upstream::new(settings.source.kind(), settings.source.to_string()));
    let hub = (settings.role == Role::Relay).then(|| {
        // Relays that follow the same etcd or ZooKeeper share its revisions, so a sidecar
        // can resume on any of them; a directory's revisions are this process's own.
        let shared_revisions = !matches!(settings.source, SourceUri::File(_));
        Hub::new(shared_revisions.then(|| settings.source.to_string()), settings.history)
    });
    let mut shared = Shared::new(store, upstream.clone(), settings.labels.clone(), settings.context_cache_bytes);
    shared.relay = hub.clone();
    shared.token = settings.token.clone();
    let shared = Arc::new(shared);

    let last_known_good = settings.state_dir.as_deref().map(|dir| LastKnownGood {
        file: StateFile::in_dir(dir),
        source: settings.source.to_string(),
        metrics: shared.metrics.clone(),
    });
    if let Some(last_known_good) = &last_known_good {
        restore_last_known_good(last_known_good, &mut publisher, &upstream);
    }
    let (events_tx, events_rx) = mpsc::channel(16);
    let source_task = spawn_source(&settings, events_tx, drain.clone());
    let sync_task = tokio::spawn(sync::run(
        events_rx,
        publisher,
        upstream.clone(),
        settings.labels.clone(),
        last_known_good,
        hub,
        drain.clone(),
    ));

    let limits = ApiLimits {
        max_keys_per_request: settings.max_keys_per_request,
        progress_interval: settings.progress_interval,
    };
    let (router, health) = local_api(&shared, limits, drain.clone()).await?;
    let admin_task =
        listeners.admin.take().map(|listener| tokio::spawn(admin::serve(listener, shared.clone(), drain.clone())));
    let socket_path = listeners.unix.as_ref().map(|(_, path)| path.clone());
    let mut servers = serve(router, listeners, &drain);

    let failed = tokio::select! {
        _ = shutdown => None,
        Some(result) = servers.join_next() => Some(result),
    };
    info!("shutting down");
    set_health(&health, ServingStatus::NotServing).await;
    drain.cancel();
    let drained = tokio::time::timeout(settings.drain_grace, async {
        while servers.join_next().await.is_some() {}
        let _ = tokio::join!(source_task, sync_task);
        if let Some(admin_task) = admin_task {
            let _ = admin_task.await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?settings.drain_grace, "connections still open after the grace period; closing them");
        servers.abort_all();
    }
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    match failed {
        Some(Ok(Err(error))) => Err(AppError::Serve(error)),
        Some(Err(join_error)) => {
            warn!(%join_error, "server task ended abnormally");
            Ok(())
        }
        _ => Ok(()),
    }
}
