//! Real upstream servers for the integration tests, started on loopback ports in temp
//! directories and killed by PID when dropped.
//!
//! A test whose server is not installed is skipped with a message, unless
//! `VELTRIX_REQUIRE_SERVICES=1` (CI) makes it fail; `scripts/install-test-services`
//! installs them.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tonic::transport::Channel;
use veltrix_sidecar::source::etcd::api::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    kv_client::KvClient, maintenance_client::MaintenanceClient, request_op::Request,
};

pub const REQUIRE_SERVICES: &str = "VELTRIX_REQUIRE_SERVICES";

/// Whether `program` can be run; panics when it cannot and CI requires it.
pub fn available(program: &str, what: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var(REQUIRE_SERVICES).as_deref() != Ok("1"),
            "{what} is required ({REQUIRE_SERVICES}=1) but `{program}` is not installed; run scripts/install-test-services"
        );
        eprintln!("skipping: {what} is not installed (scripts/install-test-services installs it)");
    }
    found
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// One etcd member.
pub struct Etcd {
    name: String,
    data_dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Etcd {
    /// A single-member cluster, or `None` when etcd is not installed (and not required).
    pub async fn start() -> Option<Etcd> {
        if !available("etcd", "etcd") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let peer_port = free_port();
        let initial_cluster = format!("n0=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd {
            name: "n0".into(),
            data_dir: dir.path().join("data"),
            client_port: free_port(),
            peer_port,
            initial_cluster,
            child: None,
            _dir: Some(dir),
        };
        etcd.spawn(etcd.client_port);
        etcd.wait_healthy(etcd.client_port).await;
        Some(etcd)
    }

    /// A cluster of `n` members on loopback ports, or `None` as for [`Etcd::start`].
    pub async fn cluster(n: usize) -> Option<(Vec<Etcd>, TempDir)> {
        if !available("etcd", "etcd") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Etcd {
                name: format!("n{i}"),
                data_dir: dir.path().join(format!("n{i}")),
                client_port: *client,
                peer_port: *peer,
                initial_cluster: initial_cluster.clone(),
                child: None,
                _dir: None,
            })
            .collect();
        for member in &mut members {
            member.spawn(member.client_port);
        }
        for member in &members {
            member.wait_healthy(member.client_port).await;
        }
        Some((members, dir))
    }

    fn spawn(&mut self, client_port: u16) {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    async fn wait_healthy(&self, client_port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut kv) = kv_at(client_port).await {
                if kv.range(RangeRequest { key: b"health".to_vec(), ..Default::default() }).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd {} did not become healthy", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data dir, serving clients on `client_port`.
    pub async fn restart_on(&mut self, client_port: u16) {
        self.kill();
        self.spawn(client_port);
        self.wait_healthy(client_port).await;
    }

    /// Whether this member leads the cluster now.
    pub async fn is_leader(&self) -> bool {
        let channel = channel_at(self.client_port).await.expect("connect");
        let status = MaintenanceClient::new(channel).status(StatusRequest {}).await.expect("status").into_inner();
        status.header.is_some_and(|header| header.member_id == status.leader)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn channel_at(port: u16) -> Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
}

pub async fn kv_at(port: u16) -> Result<KvClient<Channel>, tonic::transport::Error> {
    Ok(KvClient::new(channel_at(port).await?))
}

/// Writes to etcd as a config repository's deploy job would.
pub struct EtcdWriter {
    kv: KvClient<Channel>,
    prefix: String,
}

impl EtcdWriter {
    pub async fn connect(port: u16, prefix: &str) -> EtcdWriter {
        EtcdWriter { kv: kv_at(port).await.expect("connect to etcd"), prefix: prefix.to_owned() }
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    /// Returns the revision of the write.
    pub async fn put(&mut self, name: &str, value: &str) -> i64 {
        self.try_put(name, value).await.expect("put")
    }

    pub async fn try_put(&mut self, name: &str, value: &str) -> Result<i64, tonic::Status> {
        let request = PutRequest { key: self.key(name), value: value.as_bytes().to_vec(), ..Default::default() };
        let response = self.kv.put(request).await?.into_inner();
        Ok(response.header.map_or(0, |header| header.revision))
    }

    pub async fn delete(&mut self, name: &str) -> i64 {
        let request = DeleteRangeRequest { key: self.key(name), ..Default::default() };
        let response = self.kv.delete_range(request).await.expect("delete").into_inner();
        response.header.map_or(0, |header| header.revision)
    }

    /// Puts (`Some`) and deletes (`None`) in one transaction: one etcd revision.
    pub async fn transaction(&mut self, ops: &[(&str, Option<&str>)]) -> i64 {
        let success = ops
            .iter()
            .map(|(name, value)| RequestOp {
                request: Some(match value {
                    Some(value) => Request::RequestPut(PutRequest {
                        key: self.key(name),
                        value: value.as_bytes().to_vec(),
                        ..Default::default()
                    }),
                    None => {
                        Request::RequestDeleteRange(DeleteRangeRequest { key: self.key(name), ..Default::default() })
                    }
                }),
            })
            .collect();
        let response = self.kv.txn(TxnRequest { success, ..Default::default() }).await.expect("txn").into_inner();
        response.header.map_or(0, |header| header.revision)
    }

    pub async fn compact(&mut self, revision: i64) {
        self.kv.compact(CompactionRequest { revision, physical: true }).await.expect("compact");
    }
}

/// A standalone ZooKeeper server from Debian's `zookeeper` package.
pub struct ZooKeeper {
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

impl ZooKeeper {
    pub async fn start() -> Option<ZooKeeper> {
        if !available("java", "ZooKeeper (java)") {
            return None;
        }
        if !std::path::Path::new(ZOOKEEPER_JAR).exists() {
            assert!(
                std::env::var(REQUIRE_SERVICES).as_deref() != Ok("1"),
                "ZooKeeper is required ({REQUIRE_SERVICES}=1) but {ZOOKEEPER_JAR} is missing; run scripts/install-test-services"
            );
            eprintln!("skipping: ZooKeeper is not installed (scripts/install-test-services installs it)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("zoo.cfg");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "tickTime=200\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=400\nmaxSessionTimeout=20000\n",
                data.display()
            ),
        )
        .expect("write zoo.cfg");
        let mut zookeeper = ZooKeeper { port, config, child: None, _dir: dir };
        zookeeper.spawn();
        zookeeper.connect().await;
        Some(zookeeper)
    }

    fn spawn(&mut self) {
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", ZOOKEEPER_JAR, "org.apache.zookeeper.server.ZooKeeperServerMain"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ZooKeeper");
        self.child = Some(child);
    }

    pub fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client session, once the server answers.
    pub async fn connect(&self) -> zookeeper_client::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connected = zookeeper_client::Client::connector()
                .with_connection_timeout(Duration::from_millis(500))
                .connect(&self.servers())
                .await;
            match connected {
                Ok(client) => return client,
                Err(error) => assert!(Instant::now() < deadline, "ZooKeeper did not start: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates or replaces a node with its parents, as a deploy job would.
pub async fn zk_put(client: &zookeeper_client::Client, path: &str, data: &str) {
    let options = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    if let Some((parent, _)) = path.rsplit_once('/').filter(|(parent, _)| !parent.is_empty()) {
        client.mkdir(parent, &options).await.expect("mkdir");
    }
    match client.create(path, data.as_bytes(), &options).await {
        Ok(_) => {}
        Err(zookeeper_client::Error::NodeExists) => {
            client.set_data(path, data.as_bytes(), None).await.expect("set");
        }
        Err(error) => panic!("create {path}: {error}"),
    }
}
