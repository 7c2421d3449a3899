//! The command line: `serve`, and the client commands that talk to a running sidecar.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_stream::StreamExt;

use crate::{
    api::{proto, proto::watch_response::Kind, wire::from_proto_value},
    client,
    config::{LogFormat, RawSettings, Role, parse_label},
    model::Rejection,
    resolve::Labels,
    source::file::load_directory,
    sync::Pipeline,
};

#[derive(Debug, Parser)]
#[command(
    name = "veltrix-sidecar",
    version,
    about = "Config sidecar for game servers: resolved configuration over localhost gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configuration to local engine processes.
    Serve(Box<ServeArgs>),
    /// Print one module's value as JSON.
    Get {
        key: String,
        #[command(flatten)]
        context: ContextArgs,
    },
    /// List keys (under PREFIX) with the revision at which each last changed.
    List { prefix: Option<String> },
    /// Print changes as they are accepted. Arguments ending in '/' are prefixes, others
    /// keys; none follows everything.
    Watch {
        targets: Vec<String>,
        /// Resume after this revision instead of starting with the current state.
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        #[command(flatten)]
        context: ContextArgs,
    },
    /// Print upstream health, revision and rejected modules.
    Status,
    /// Show where a module's value came from: bases, the module, overlays, references.
    Explain {
        key: String,
        #[command(flatten)]
        context: ContextArgs,
    },
    /// Resolve and validate a config directory offline; exit code 1 when anything is
    /// rejected. Each error names the file, the line where the format gives one, and why.
    Check {
        dir: PathBuf,
        /// Labels to resolve with, KEY=VALUE; repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Measure: resolution and Get latency, load on a running sidecar, start-up and memory.
    #[command(subcommand)]
    Bench(Bench),
    /// Print a config directory's dependency graph as Graphviz DOT; rejected modules in red.
    Graph {
        dir: PathBuf,
        /// Labels to resolve with, KEY=VALUE; repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Resolution of a generated configuration, one incremental change, and Get latency
    /// while changes are being resolved.
    Resolve(crate::bench::ResolveBench),
    /// Load a running sidecar (at --addr) with Get, BatchGet or Watch, and print
    /// throughput and latency percentiles.
    Load(crate::bench::LoadBench),
    /// Watch fan-out of one etcd key to many streams: from etcd alone, then through a
    /// relay following it; put-to-receipt percentiles and memory per stream.
    Fanout(crate::bench::FanoutBench),
    /// Start sidecar processes on a generated configuration, from the upstream and from
    /// the last-known-good state, and print the time to the first Get and idle memory.
    Startup(crate::bench::StartupBench),
}

/// Labels a client command sends as its context.
#[derive(Debug, Args)]
pub struct ContextArgs {
    /// Resolve under these labels (laid over the sidecar's own), KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

impl ContextArgs {
    fn labels(&self) -> anyhow::Result<HashMap<String, String>> {
        Ok(self.labels.iter().map(|label| parse_label(label)).collect::<Result<_, _>>()?)
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The sidecar the client commands talk to: HOST:PORT or unix:PATH.
    #[arg(long, global = true, env = "VELTRIX_ADDR", default_value = crate::config::DEFAULT_LISTEN)]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML settings file; flags and VELTRIX_* variables override it.
    #[arg(long, env = "VELTRIX_CONFIG")]
    pub config: Option<PathBuf>,
    /// sidecar: serve resolved config to the engine next to it. relay: also serve the
    /// upstream's documents to sidecars (gRPC Watch and HTTP long-poll). [default: sidecar]
    #[arg(long, env = "VELTRIX_ROLE")]
    pub role: Option<Role>,
    /// Upstream source of truth: file://DIR (a plain path means a directory),
    /// etcd://HOST:PORT[,...]/PREFIX, zk://HOST:PORT[,...]/PATH, or relays:
    /// grpc(s)://HOST:PORT[,...][/PREFIX], http(s)://HOST:PORT[,...][/PREFIX].
    /// [default: deploy/examples/config]
    #[arg(long, env = "VELTRIX_SOURCE")]
    pub source: Option<String>,
    /// TCP address of the API, or "none": loopback only, except for a relay with TLS and a
    /// token. [default: 127.0.0.1:7070]
    #[arg(long, env = "VELTRIX_LISTEN")]
    pub listen: Option<String>,
    /// Unix socket of the local API (mode 0660), or "none".
    /// [default: $XDG_RUNTIME_DIR or /tmp, /veltrix-sidecar.sock; none for a relay]
    #[arg(long, env = "VELTRIX_SOCKET")]
    pub socket: Option<String>,
    /// Directory for the sidecar's state; created if missing.
    #[arg(long, env = "VELTRIX_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This instance's labels, KEY=VALUE; repeatable, or comma-separated in VELTRIX_LABELS.
    #[arg(long = "label", env = "VELTRIX_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Log as human-readable lines or as JSON objects. [default: human]
    #[arg(long, env = "VELTRIX_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter: a level (info, debug, ...) or tracing directives such as
    /// "info,veltrix_sidecar::source=debug"; changeable at run time on the admin server.
    /// [default: info]
    #[arg(long, env = "VELTRIX_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Admin HTTP server: /metrics, /healthz, /readyz, /debug/*; or "none".
    /// /debug/* answers loopback clients only. [default: 127.0.0.1:7071]
    #[arg(long, env = "VELTRIX_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Keys in one BatchGet, keys plus prefixes in one Watch. [default: 1000]
    #[arg(long, env = "VELTRIX_MAX_KEYS_PER_REQUEST")]
    pub max_keys_per_request: Option<usize>,
    /// Change-sets kept for Watch resumes. [default: 1000]
    #[arg(long, env = "VELTRIX_HISTORY")]
    pub history: Option<usize>,
    /// Events a Watch stream may fall behind before it gets a RESYNC. [default: 256]
    #[arg(long, env = "VELTRIX_WATCH_BACKLOG")]
    pub watch_backlog: Option<usize>,
    /// Heartbeat on idle Watch streams. [default: 10s]
    #[arg(long, env = "VELTRIX_PROGRESS_INTERVAL")]
    pub progress_interval: Option<String>,
    /// Quiet time after file changes before they are read. [default: 50ms]
    #[arg(long, env = "VELTRIX_DEBOUNCE")]
    pub debounce: Option<String>,
    /// Full rescan of the config directory, in case notifications were lost. [default: 30s]
    #[arg(long, env = "VELTRIX_RESCAN_INTERVAL")]
    pub rescan_interval: Option<String>,
    /// Larger documents are rejected. [default: 16777216]
    #[arg(long, env = "VELTRIX_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<u64>,
    /// Bytes of values resolved under request labels kept in memory. [default: 67108864]
    #[arg(long, env = "VELTRIX_CONTEXT_CACHE_BYTES")]
    pub context_cache_bytes: Option<u64>,
    /// User for the upstream (etcd).
    #[arg(long, env = "VELTRIX_UPSTREAM_USER")]
    pub upstream_user: Option<String>,
    /// Password for the upstream; prefer --upstream-password-file.
    #[arg(long, env = "VELTRIX_UPSTREAM_PASSWORD", hide_env_values = true)]
    pub upstream_password: Option<String>,
    /// File holding the upstream password.
    #[arg(long, env = "VELTRIX_UPSTREAM_PASSWORD_FILE")]
    pub upstream_password_file: Option<PathBuf>,
    /// CA certificate (PEM) of the upstream; turns TLS on.
    #[arg(long, env = "VELTRIX_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Client certificate (PEM) for the upstream.
    #[arg(long, env = "VELTRIX_UPSTREAM_CERT")]
    pub upstream_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(long, env = "VELTRIX_UPSTREAM_KEY")]
    pub upstream_key: Option<PathBuf>,
    /// Timeout of one connection attempt to the upstream. [default: 3s]
    #[arg(long, env = "VELTRIX_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// ZooKeeper session timeout. [default: 10s]
    #[arg(long, env = "VELTRIX_SESSION_TIMEOUT")]
    pub session_timeout: Option<String>,
    /// First wait before reconnecting to the upstream, doubled up to --backoff-max. [default: 100ms]
    #[arg(long, env = "VELTRIX_BACKOFF_MIN")]
    pub backoff_min: Option<String>,
    /// Longest wait before reconnecting to the upstream. [default: 10s]
    #[arg(long, env = "VELTRIX_BACKOFF_MAX")]
    pub backoff_max: Option<String>,
    /// How long shutdown waits for open requests and streams. [default: 5s]
    #[arg(long, env = "VELTRIX_DRAIN_GRACE")]
    pub drain_grace: Option<String>,
    /// Certificate chain (PEM) for TLS on the TCP listener.
    #[arg(long, env = "VELTRIX_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "VELTRIX_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token every request must carry; prefer --token-file.
    #[arg(long, env = "VELTRIX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token every request must carry.
    #[arg(long, env = "VELTRIX_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Bearer token sent to relays; prefer --upstream-token-file.
    #[arg(long, env = "VELTRIX_UPSTREAM_TOKEN", hide_env_values = true)]
    pub upstream_token: Option<String>,
    /// File holding the bearer token sent to relays.
    #[arg(long, env = "VELTRIX_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<PathBuf>,
    /// Threads serving the local API: 1 is a single-threaded runtime, the least work per
    /// request; more spread connections over cores. Resolution runs on a thread of its
    /// own either way. Not read from --config: the runtime exists before the file is read.
    #[arg(long, env = "VELTRIX_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
}

impl ServeArgs {
    /// Flags and environment over the settings file.
    pub fn raw_settings(&self) -> anyhow::Result<RawSettings> {
        let file = match &self.config {
            Some(path) => RawSettings::from_file(path)?,
            None => RawSettings::default(),
        };
        let labels = if self.labels.is_empty() {
            None
        } else {
            Some(self.labels.iter().map(|label| parse_label(label)).collect::<Result<_, _>>()?)
        };
        let flags = RawSettings {
            role: self.role,
            source: self.source.clone(),
            listen: self.listen.clone(),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            labels,
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            admin_listen: self.admin_listen.clone(),
            max_keys_per_request: self.max_keys_per_request,
            history: self.history,
            watch_backlog: self.watch_backlog,
            progress_interval: self.progress_interval.clone(),
            debounce: self.debounce.clone(),
            rescan_interval: self.rescan_interval.clone(),
            max_document_bytes: self.max_document_bytes,
            context_cache_bytes: self.context_cache_bytes,
            upstream_user: self.upstream_user.clone(),
            upstream_password: self.upstream_password.clone(),
            upstream_password_file: self.upstream_password_file.clone(),
            upstream_ca: self.upstream_ca.clone(),
            upstream_cert: self.upstream_cert.clone(),
            upstream_key: self.upstream_key.clone(),
            connect_timeout: self.connect_timeout.clone(),
            session_timeout: self.session_timeout.clone(),
            backoff_min: self.backoff_min.clone(),
            backoff_max: self.backoff_max.clone(),
            drain_grace: self.drain_grace.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            upstream_token: self.upstream_token.clone(),
            upstream_token_file: self.upstream_token_file.clone(),
        };
        Ok(flags.over(file))
    }
}

pub async fn get(key: &str, context: &ContextArgs, client: &ClientArgs) -> anyhow::Result<()> {
    let labels = context.labels()?;
    let mut api = client::connect(&client.addr).await?;
    let response = api
        .get(proto::GetRequest { key: key.to_owned(), format: proto::ValueFormat::Json.into(), labels })
        .await
        .with_context(|| format!("get {key}"))?
        .into_inner();
    let entry = response.entry.context("response without an entry")?;
    let value: serde_json::Value = serde_json::from_slice(&entry.json).context("value is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

pub async fn list(prefix: Option<&str>, client: &ClientArgs) -> anyhow::Result<()> {
    let mut api = client::connect(&client.addr).await?;
    let response = api
        .list(proto::ListRequest { prefix: prefix.unwrap_or_default().to_owned() })
        .await
        .context("list")?
        .into_inner();
    let mut out = std::io::stdout().lock();
    for listed in response.keys {
        writeln!(out, "{}\t{}", listed.key, listed.mod_revision)?;
    }
    Ok(())
}

pub async fn watch(
    targets: &[String],
    from_revision: u64,
    context: &ContextArgs,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let (prefixes, keys): (Vec<String>, Vec<String>) = targets.iter().cloned().partition(|t| t.ends_with('/'));
    let labels = context.labels()?;
    let mut api = client::connect(&client.addr).await?;
    let mut stream = api
        .watch(proto::WatchRequest {
            keys,
            prefixes,
            start_revision: from_revision,
            format: proto::ValueFormat::Json.into(),
            labels,
            ..Default::default()
        })
        .await
        .context("watch")?
        .into_inner();
    while let Some(message) = stream.next().await {
        let message = message.context("watch stream")?;
        let mut out = std::io::stdout().lock();
        let revision = message.revision;
        match message.kind() {
            Kind::Progress | Kind::Unspecified => continue,
            Kind::Snapshot => writeln!(out, "[{revision}] snapshot: {} keys", message.entries.len())?,
            Kind::Resync => writeln!(out, "[{revision}] resync: {} keys", message.entries.len())?,
            Kind::Change => {}
            Kind::Rejected => {
                for rejection in &message.rejections {
                    writeln!(out, "[{revision}] rejected {}: {}", rejection.key, located(rejection))?;
                }
            }
        }
        for entry in &message.entries {
            let value = if entry.value.is_some() {
                entry.value.as_ref().map(from_proto_value).unwrap_or_default().to_string()
            } else {
                String::from_utf8_lossy(&entry.json).into_owned()
            };
            writeln!(out, "[{revision}] put {} {value}", entry.key)?;
        }
        for key in &message.deleted {
            writeln!(out, "[{revision}] delete {key}")?;
        }
        out.flush()?;
    }
    Ok(())
}

pub async fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let mut api = client::connect(&client.addr).await?;
    let status = api.status(proto::StatusRequest {}).await.context("status")?.into_inner();
    let health =
        if status.upstream_healthy { "healthy".to_owned() } else { format!("unhealthy: {}", status.upstream_error) };
    println!("upstream:  {} ({})", status.upstream, health);
    if let Some(last_sync) = status.last_sync {
        println!("last sync: {last_sync}");
    }
    println!("revision:  {}", status.revision);
    if status.upstream_revision > 0 {
        println!("upstream revision: {}", status.upstream_revision);
    }
    println!("keys:      {}", status.keys);
    println!("watchers:  {} ({} collapsed to resync)", status.watchers, status.lagged_resyncs);
    if !status.labels.is_empty() {
        let mut labels: Vec<String> = status.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!("labels:    {}", labels.join(","));
    }
    if status.serving_from_last_known_good {
        println!("serving from last-known-good; upstream not yet reached");
    }
    if status.rejections.is_empty() {
        println!("rejected:  none");
    } else {
        println!("rejected:");
        for rejection in &status.rejections {
            let kept = if rejection.serving_previous { " (previous value still served)" } else { "" };
            println!("  {}: {}{kept}", rejection.key, located(rejection));
        }
    }
    Ok(())
}

/// `origin:line: reason`, as compilers print it; without `:line` when there is none.
fn located(rejection: &proto::Rejection) -> String {
    let line = Some(rejection.line).filter(|line| *line > 0);
    Rejection {
        key: rejection.key.clone(),
        origin: rejection.origin.clone(),
        line,
        reason: rejection.reason.clone(),
        serving_previous: rejection.serving_previous,
    }
    .to_string()
}

pub async fn explain(key: &str, context: &ContextArgs, client: &ClientArgs) -> anyhow::Result<()> {
    let labels = context.labels()?;
    let mut api = client::connect(&client.addr).await?;
    let explained = api
        .explain(proto::ExplainRequest { key: key.to_owned(), labels })
        .await
        .with_context(|| format!("explain {key}"))?
        .into_inner();
    let mut labels: Vec<String> = explained.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    println!(
        "{} at revision {} (labels: {})",
        explained.key,
        explained.revision,
        if labels.is_empty() { "none".to_owned() } else { labels.join(",") }
    );
    println!("layers, bottom to top:");
    for layer in &explained.layers {
        println!("  {layer}");
    }
    println!("fields:");
    let fields: BTreeMap<_, _> = explained.fields.iter().collect();
    for (field, layer) in fields {
        println!("  {field}: {layer}");
    }
    if !explained.references.is_empty() {
        println!("references:");
        for reference in &explained.references {
            println!("  {}: {}", reference.path, reference.reference);
        }
    }
    if !explained.schema.is_empty() {
        println!("schema: {}", explained.schema);
    }
    let value: serde_json::Value = serde_json::from_slice(&explained.json).context("value is not JSON")?;
    println!("value:\n{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn label_map(labels: &[String]) -> anyhow::Result<Labels> {
    Ok(labels.iter().map(|label| parse_label(label)).collect::<Result<_, _>>()?)
}

/// Largest document `check` and `graph` read.
const OFFLINE_MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// Resolves a directory as `serve` would, from scratch.
fn resolve_directory(dir: &Path, labels: &[String]) -> anyhow::Result<(Pipeline, Vec<Rejection>, usize)> {
    let labels = label_map(labels)?;
    let update =
        load_directory(dir, OFFLINE_MAX_DOCUMENT_BYTES).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut pipeline = Pipeline::new(labels);
    let outcome = pipeline.apply(update, &|_| false);
    let n_resolved = outcome.changes.values().filter(|value| value.is_some()).count();
    Ok((pipeline, outcome.rejections, n_resolved))
}

/// Prints every rejection; `Ok(true)` when there were none.
pub fn check(dir: &Path, labels: &[String]) -> anyhow::Result<bool> {
    let (_, rejections, n_resolved) = resolve_directory(dir, labels)?;
    let mut err = std::io::stderr().lock();
    for rejection in &rejections {
        let path = dir.join(&rejection.origin).display().to_string();
        writeln!(err, "{}", Rejection { origin: path, ..rejection.clone() })?;
    }
    if rejections.is_empty() {
        println!("{}: {n_resolved} modules resolved, none rejected", dir.display());
    } else {
        writeln!(err, "{}: {n_resolved} modules resolved, {} rejected", dir.display(), rejections.len())?;
    }
    Ok(rejections.is_empty())
}

pub fn graph(dir: &Path, labels: &[String]) -> anyhow::Result<()> {
    let (pipeline, rejections, _) = resolve_directory(dir, labels)?;
    let rejected = rejections.into_iter().map(|rejection| (rejection.key, rejection.reason)).collect();
    print!("{}", crate::resolve::dot(pipeline.resolver(), &rejected));
    Ok(())
}
