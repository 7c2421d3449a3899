//! Starting sidecars for tests and waiting on what they do, with deadlines.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};
use veltrix_sidecar::{
    api::{
        ApiLimits,
        proto::{self, config_service_client::ConfigServiceClient, watch_response::Kind},
    },
    app::{self, Listeners},
    client,
    config::RawSettings,
    store::{Publisher, Store, StoreLimits},
    sync::Upstream,
};

pub type Client = ConfigServiceClient<Channel>;

/// Generous: CI machines are slow and noisy; a pass never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A sidecar serving a temp config directory, as `serve` runs it.
pub struct Sidecar {
    pub dir: TempDir,
    pub addr: String,
    /// The admin server's address, unless the test turned it off.
    pub admin: Option<String>,
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), app::AppError>>>,
    /// Holds the socket's directory for as long as the sidecar runs.
    _socket_dir: TempDir,
}

impl Sidecar {
    /// Writes `files` (relative path → text) and starts serving them.
    pub async fn start(files: &[(&str, &str)]) -> Sidecar {
        Sidecar::start_with(files, RawSettings::default()).await
    }

    pub async fn start_with(files: &[(&str, &str)], extra: RawSettings) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let socket_dir = tempfile::tempdir().expect("temp dir");
        let socket = socket_dir.path().join("sidecar.sock");
        let raw = RawSettings {
            source: Some(dir.path().display().to_string()),
            listen: Some("127.0.0.1:0".into()),
            socket: Some(socket.display().to_string()),
            debounce: Some("20ms".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let settings = extra.over(raw).validate().expect("test settings are valid");
        let listeners = Listeners::bind(&settings).await.expect("bind");
        let addr = listeners.tcp_addr().expect("tcp listener").to_string();
        let admin = listeners.admin_addr().map(|addr| addr.to_string());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(settings, listeners, async {
            let _ = stopped.await;
        }));
        let sidecar =
            Sidecar { dir, addr, admin, socket, shutdown: Some(shutdown), task: Some(task), _socket_dir: socket_dir };
        let mut client = sidecar.client().await;
        within("the first snapshot", async {
            while client.status(proto::StatusRequest {}).await.map(|s| s.into_inner().revision).unwrap_or(0) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        sidecar
    }

    pub async fn client(&self) -> Client {
        client::connect(&self.addr).await.expect("connect over TCP")
    }

    pub async fn unix_client(&self) -> Client {
        client::connect(&format!("unix:{}", self.socket.display())).await.expect("connect over the unix socket")
    }

    pub fn write(&self, name: &str, text: &str) {
        write(self.dir.path(), name, text);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the sidecar as SIGTERM would, and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            within("the sidecar to drain", task).await.expect("no panic").expect("clean shutdown");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Writes via a temp file and a rename, as editors and config deploys do, so that a
/// reader never sees a half-written file.
pub fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dirs");
    }
    let temp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
    std::fs::write(&temp, text).expect("write temp file");
    std::fs::rename(&temp, &path).expect("rename into place");
}

/// The store, published to by the test itself, behind the same services `serve` runs.
pub struct StoreServer {
    pub addr: String,
    pub publisher: Publisher,
    pub store: Arc<Store>,
    drain: CancellationToken,
    /// Dropping the set would stop the servers.
    _servers: tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
}

impl StoreServer {
    pub async fn start(limits: StoreLimits, api: ApiLimits) -> StoreServer {
        let (store, publisher) = Store::new(limits);
        let upstream = Arc::new(Upstream::new("test", "test://".into()));
        let drain = CancellationToken::new();
        let shared = app::Shared::new(store.clone(), upstream, BTreeMap::new(), 1 << 20);
        let (router, _health) = app::local_api(&shared, api, drain.clone()).await.expect("services");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let listeners = Listeners { tcp: Some(tcp), tls: None, unix: None, admin: None };
        let addr = listeners.tcp_addr().expect("tcp").to_string();
        let servers = app::serve(router, listeners, &drain);
        StoreServer { addr, publisher, store, drain, _servers: servers }
    }

    pub async fn client(&self) -> Client {
        client::connect(&self.addr).await.expect("connect")
    }

    /// Publishes one change-set; `None` deletes.
    pub fn publish(&mut self, changes: &[(&str, Option<Value>)]) -> u64 {
        let changes = changes
            .iter()
            .map(|(key, value)| {
                (veltrix_sidecar::model::Key::new(key).expect("valid key"), value.clone().map(Arc::new))
            })
            .collect();
        self.publisher.apply(changes, None).expect("a change")
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.drain.cancel();
    }
}

pub fn default_api_limits() -> ApiLimits {
    ApiLimits { max_keys_per_request: 1000, progress_interval: Duration::from_secs(10) }
}

/// A client of the sidecar at `addr`, once it accepts connections.
pub async fn connect_when_up(addr: &str) -> Client {
    within("the sidecar to accept connections", async {
        loop {
            if let Ok(client) = client::connect(addr).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

pub async fn get_json(client: &mut Client, key: &str) -> Result<(Value, u64), tonic::Status> {
    let response =
        client.get(proto::GetRequest { key: key.into(), format: 0, ..Default::default() }).await?.into_inner();
    let entry = response.entry.expect("an entry");
    Ok((serde_json::from_slice(&entry.json).expect("JSON"), entry.mod_revision))
}

pub async fn watch(client: &mut Client, request: proto::WatchRequest) -> Streaming<proto::WatchResponse> {
    client.watch(request).await.expect("watch").into_inner()
}

/// The next message that is not a heartbeat.
pub async fn next_event(stream: &mut Streaming<proto::WatchResponse>) -> proto::WatchResponse {
    within("a watch event", async {
        loop {
            let message = stream.next().await.expect("stream open").expect("no error");
            if message.kind() != Kind::Progress {
                return message;
            }
        }
    })
    .await
}

/// Entries of a watch message as key → JSON value.
pub fn values(message: &proto::WatchResponse) -> BTreeMap<String, Value> {
    message
        .entries
        .iter()
        .map(|entry| (entry.key.clone(), serde_json::from_slice(&entry.json).expect("JSON")))
        .collect()
}

/// A `serve` process of the real binary, killed by PID when dropped.
pub struct Serve {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Serve {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veltrix-sidecar"))
            .arg("serve")
            .args(args)
            .env("VELTRIX_LOG_FORMAT", "json")
            // Tests run side by side: no fixed admin port.
            .env("VELTRIX_ADMIN_LISTEN", "127.0.0.1:0")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start serve");
        // Read the log on its own thread for as long as the process runs.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Serve { child, lines }
    }

    /// The next log line that contains every one of `parts`.
    pub fn log_line(&self, parts: &[&str]) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut seen = std::collections::VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if parts.iter().all(|part| line.contains(part)) => return line,
                Ok(line) => {
                    seen.push_back(line);
                    if seen.len() > 10 {
                        seen.pop_front();
                    }
                }
                Err(_) => panic!("no log line containing {parts:?}; the last lines:\n{}", Vec::from(seen).join("\n")),
            }
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for serve")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config directory, a state directory and a socket path in one temp dir: what a test
/// needs to run the binary on files, and to restart it where it was.
pub struct ServeDirs {
    pub config: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    _run: TempDir,
}

impl ServeDirs {
    pub fn new() -> ServeDirs {
        let run = tempfile::tempdir().expect("temp dir");
        ServeDirs {
            config: run.path().join("config"),
            state: run.path().join("state"),
            socket: run.path().join("s.sock"),
            _run: run,
        }
    }

    /// `serve` arguments: these directories, the unix socket only, and `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<std::ffi::OsString> {
        self.args_from(self.config.as_os_str(), extra)
    }

    /// The same, following `source` rather than the config directory.
    pub fn args_from(&self, source: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--listen".into(), "none".into()];
        for (flag, value) in [
            ("--source", source.as_ref()),
            ("--state-dir", self.state.as_os_str()),
            ("--socket", self.socket.as_os_str()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.extend(extra.iter().map(Into::into));
        args
    }

    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    pub fn generate() -> Certificates {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).expect("write pem");
        write("ca.pem", ca.pem());
        for (name, usage) in
            [("server", ExtendedKeyUsagePurpose::ServerAuth), ("client", ExtendedKeyUsagePurpose::ClientAuth)]
        {
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        Certificates { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let read = |name: &str| std::fs::read(self.dir.path().join(name)).expect("read pem");
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
            .identity(tonic::transport::Identity::from_pem(read("client.pem"), read("client-key.pem")))
    }
}
