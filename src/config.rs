//! The sidecar's own settings: plain data, defaults in one place, validated before any
//! port is bound. Flags and `VELTRIX_*` variables win over the settings file, which wins
//! over the defaults.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{relay::Token, source::etcd::TlsFiles, sync::backoff::Backoff};

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: Role,
    pub source: SourceUri,
    pub upstream: UpstreamSettings,
    /// `None` when the TCP listener is turned off.
    pub listen: Option<SocketAddr>,
    /// `None` when the unix socket is turned off.
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    pub log_format: LogFormat,
    /// tracing's env-filter directives.
    pub log_level: String,
    /// The admin HTTP server (metrics, probes, debug); `None` when turned off.
    pub admin_listen: Option<SocketAddr>,
    pub max_keys_per_request: usize,
    /// Change-sets kept for Watch resumes.
    pub history: usize,
    /// Events a Watch stream may fall behind before it is collapsed into a RESYNC.
    pub watch_backlog: usize,
    pub progress_interval: Duration,
    pub debounce: Duration,
    pub rescan_interval: Duration,
    pub max_document_bytes: u64,
    /// Bound of the cache of values resolved under request labels.
    pub context_cache_bytes: u64,
    /// How long shutdown waits for open requests and streams.
    pub drain_grace: Duration,
    /// TLS on the TCP listener (a relay's).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The bearer token every request to the listeners must carry.
    pub token: Option<Token>,
}

/// What `serve` is: a sidecar next to an engine, or a relay between the upstream and
/// many sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Sidecar,
    Relay,
}

/// How a sidecar reaches relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTransport {
    /// The relay's Watch stream.
    Grpc,
    /// Long-polls of `/v1/watch`.
    Http,
}

impl RelayTransport {
    pub fn scheme(self, tls: bool) -> &'static str {
        match (self, tls) {
            (RelayTransport::Grpc, false) => "grpc",
            (RelayTransport::Grpc, true) => "grpcs",
            (RelayTransport::Http, false) => "http",
            (RelayTransport::Http, true) => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    File(PathBuf),
    /// Members as `HOST:PORT`, and a key prefix ending with '/'.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
    /// Servers as `HOST:PORT`, and the subtree's root without a trailing '/'.
    ZooKeeper {
        servers: Vec<String>,
        root: String,
    },
    /// Relays as `HOST:PORT`, tried in turn, and the name prefix of the documents taken
    /// ("" for all, else ending with '/').
    Relay {
        transport: RelayTransport,
        tls: bool,
        endpoints: Vec<String>,
        prefix: String,
    },
}

impl SourceUri {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceUri::File(_) => "file",
            SourceUri::Etcd { .. } => "etcd",
            SourceUri::ZooKeeper { .. } => "zookeeper",
            SourceUri::Relay { .. } => "relay",
        }
    }
}

impl std::fmt::Display for SourceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceUri::File(dir) => write!(f, "file://{}", dir.display()),
            SourceUri::Etcd { endpoints, prefix } => write!(f, "etcd://{}{prefix}", endpoints.join(",")),
            SourceUri::ZooKeeper { servers, root } => write!(f, "zk://{}{root}", servers.join(",")),
            SourceUri::Relay { transport, tls, endpoints, prefix } => {
                write!(f, "{}://{}/{prefix}", transport.scheme(*tls), endpoints.join(","))
            }
        }
    }
}

/// How to reach a network upstream: credentials, TLS, timeouts, backoff.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// User and password.
    pub credentials: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
    pub connect_timeout: Duration,
    /// ZooKeeper's session timeout: how long the ensemble keeps a silent session.
    pub session_timeout: Duration,
    /// Between failed sessions with the upstream.
    pub backoff: Backoff,
    /// Bearer token for relays.
    pub token: Option<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

pub const DEFAULT_SOURCE: &str = "deploy/examples/config";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7071";
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The default unix socket: in the user's runtime directory when there is one.
pub fn default_socket() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
        .join("veltrix-sidecar.sock")
}

/// Settings as given, before defaults and validation: every field may be missing. The
/// same shape is read from flags and from the settings file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub role: Option<Role>,
    pub source: Option<String>,
    pub listen: Option<String>,
    pub socket: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub labels: Option<BTreeMap<String, String>>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub admin_listen: Option<String>,
    pub max_keys_per_request: Option<usize>,
    pub history: Option<usize>,
    pub watch_backlog: Option<usize>,
    pub progress_interval: Option<String>,
    pub debounce: Option<String>,
    pub rescan_interval: Option<String>,
    pub max_document_bytes: Option<u64>,
    pub context_cache_bytes: Option<u64>,
    pub drain_grace: Option<String>,
    pub upstream_user: Option<String>,
    pub upstream_password: Option<String>,
    pub upstream_password_file: Option<PathBuf>,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_cert: Option<PathBuf>,
    pub upstream_key: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub session_timeout: Option<String>,
    pub backoff_min: Option<String>,
    pub backoff_max: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub upstream_token: Option<String>,
    pub upstream_token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settings file {path}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    ParseFile { path: PathBuf, line: Option<u32>, reason: String },
    #[error("{setting}: {reason}")]
    Invalid { setting: &'static str, reason: String },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { setting, reason: reason.into() }
}

impl RawSettings {
    pub fn from_file(path: &Path) -> Result<RawSettings, SettingsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SettingsError::ReadFile { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|error| SettingsError::ParseFile {
            path: path.to_owned(),
            line: error.span().map(|span| crate::resolve::line_of_offset(text.as_bytes(), span.start)),
            reason: error.message().to_owned(),
        })
    }

    /// Fields set in `self` win over those in `base`.
    pub fn over(self, base: RawSettings) -> RawSettings {
        RawSettings {
            role: self.role.or(base.role),
            source: self.source.or(base.source),
            listen: self.listen.or(base.listen),
            socket: self.socket.or(base.socket),
            state_dir: self.state_dir.or(base.state_dir),
            labels: self.labels.or(base.labels),
            log_format: self.log_format.or(base.log_format),
            log_level: self.log_level.or(base.log_level),
            admin_listen: self.admin_listen.or(base.admin_listen),
            max_keys_per_request: self.max_keys_per_request.or(base.max_keys_per_request),
            history: self.history.or(base.history),
            watch_backlog: self.watch_backlog.or(base.watch_backlog),
            progress_interval: self.progress_interval.or(base.progress_interval),
            debounce: self.debounce.or(base.debounce),
            rescan_interval: self.rescan_interval.or(base.rescan_interval),
            max_document_bytes: self.max_document_bytes.or(base.max_document_bytes),
            context_cache_bytes: self.context_cache_bytes.or(base.context_cache_bytes),
            drain_grace: self.drain_grace.or(base.drain_grace),
            upstream_user: self.upstream_user.or(base.upstream_user),
            upstream_password: self.upstream_password.or(base.upstream_password),
            upstream_password_file: self.upstream_password_file.or(base.upstream_password_file),
            upstream_ca: self.upstream_ca.or(base.upstream_ca),
            upstream_cert: self.upstream_cert.or(base.upstream_cert),
            upstream_key: self.upstream_key.or(base.upstream_key),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            session_timeout: self.session_timeout.or(base.session_timeout),
            backoff_min: self.backoff_min.or(base.backoff_min),
            backoff_max: self.backoff_max.or(base.backoff_max),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            token: self.token.or(base.token),
            token_file: self.token_file.or(base.token_file),
            upstream_token: self.upstream_token.or(base.upstream_token),
            upstream_token_file: self.upstream_token_file.or(base.upstream_token_file),
        }
    }

    /// Applies defaults and checks every setting.
    pub fn validate(self) -> Result<Settings, SettingsError> {
        // With a state directory, a source directory that is missing at start is an
        // upstream outage that the last-known-good state covers; without one, a mistake.
        let role = self.role.unwrap_or(Role::Sidecar);
        let source = parse_source(self.source.as_deref().unwrap_or(DEFAULT_SOURCE), self.state_dir.is_none())?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::server_config(cert, key).map_err(|reason| invalid("tls-cert", reason))?)
            }
            (None, None) => None,
            _ => return Err(invalid("tls-cert", "a certificate needs its key, and the other way round")),
        };
        let token = secret("token", self.token.as_deref(), self.token_file.as_deref())?;
        let listen = match self.listen.as_deref().unwrap_or(DEFAULT_LISTEN) {
            "" | "none" => None,
            text => Some(parse_listen(text, role, tls.is_some(), token.is_some())?),
        };
        if tls.is_some() && listen.is_none() {
            return Err(invalid("tls-cert", "TLS is for the TCP listener, which is turned off"));
        }
        let socket = match self.socket.as_deref() {
            // A relay's clients are on other hosts.
            None if role == Role::Relay => None,
            None => Some(default_socket()),
            Some("" | "none") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        if let Some(parent) = socket.as_deref().and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(invalid("socket", format!("directory {} does not exist", parent.display())));
            }
        }
        if listen.is_none() && socket.is_none() {
            return Err(invalid("listen", "both the TCP listener and the unix socket are turned off"));
        }
        if let Some(dir) = &self.state_dir {
            std::fs::create_dir_all(dir)
                .map_err(|error| invalid("state-dir", format!("cannot create {}: {error}", dir.display())))?;
        }
        let upstream = self.upstream_settings()?;
        if let SourceUri::Relay { tls: true, .. } = &source {
            if upstream.tls.is_none() {
                return Err(invalid(
                    "upstream-ca",
                    format!("{source} needs the CA that signed the relays' certificates (--upstream-ca)"),
                ));
            }
        }
        let log_level = self.log_level()?;
        let labels = self.labels.unwrap_or_default();
        for (name, value) in &labels {
            check_label(name, value)?;
        }
        let settings = Settings {
            role,
            source,
            upstream,
            listen,
            socket,
            state_dir: self.state_dir,
            labels,
            log_format: self.log_format.unwrap_or(LogFormat::Human),
            log_level,
            admin_listen: match self.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
                "" | "none" => None,
                text => Some(
                    text.parse().map_err(|_| invalid("admin-listen", format!("{text:?} is not an IP:PORT address")))?,
                ),
            },
            max_keys_per_request: positive("max-keys-per-request", self.max_keys_per_request.unwrap_or(1000))?,
            history: positive("history", self.history.unwrap_or(1000))?,
            watch_backlog: positive("watch-backlog", self.watch_backlog.unwrap_or(256))?,
            progress_interval: duration("progress-interval", self.progress_interval.as_deref().unwrap_or("10s"))?,
            debounce: duration("debounce", self.debounce.as_deref().unwrap_or("50ms"))?,
            rescan_interval: duration("rescan-interval", self.rescan_interval.as_deref().unwrap_or("30s"))?,
            max_document_bytes: positive("max-document-bytes", self.max_document_bytes.unwrap_or(16 << 20))?,
            context_cache_bytes: positive("context-cache-bytes", self.context_cache_bytes.unwrap_or(64 << 20))?,
            drain_grace: duration("drain-grace", self.drain_grace.as_deref().unwrap_or("5s"))?,
            tls,
            token,
        };
        Ok(settings)
    }
}

impl RawSettings {
    /// The log filter, checked; `main` installs it before the rest is validated.
    pub fn log_level(&self) -> Result<String, SettingsError> {
        let level = self.log_level.clone().unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        crate::telemetry::parse_filter(&level).map_err(|reason| invalid("log-level", reason))?;
        Ok(level)
    }

    fn upstream_settings(&self) -> Result<UpstreamSettings, SettingsError> {
        let password = match (&self.upstream_password, &self.upstream_password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("upstream-password", "give the password or a file holding it, not both"));
            }
            (Some(password), None) => Some(password.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|error| invalid("upstream-password-file", format!("{}: {error}", path.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let credentials = match (&self.upstream_user, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("upstream-user", "needs a password too")),
            (None, Some(_)) => return Err(invalid("upstream-password", "needs a user too")),
        };
        for (setting, path) in [
            ("upstream-ca", &self.upstream_ca),
            ("upstream-cert", &self.upstream_cert),
            ("upstream-key", &self.upstream_key),
        ] {
            if let Some(path) = path.as_ref().filter(|path| !path.is_file()) {
                return Err(invalid(setting, format!("{} is not a file", path.display())));
            }
        }
        let identity = match (&self.upstream_cert, &self.upstream_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(invalid("upstream-cert", "a client certificate needs its key, and the other way round")),
        };
        let tls = match (&self.upstream_ca, identity) {
            (Some(ca), identity) => Some(TlsFiles { ca: ca.clone(), identity }),
            (None, None) => None,
            (None, Some(_)) => return Err(invalid("upstream-ca", "a client certificate needs the CA too")),
        };
        let token = secret("upstream-token", self.upstream_token.as_deref(), self.upstream_token_file.as_deref())?;
        let backoff_min = duration("backoff-min", self.backoff_min.as_deref().unwrap_or("100ms"))?;
        let backoff_max = duration("backoff-max", self.backoff_max.as_deref().unwrap_or("10s"))?;
        let backoff =
            Backoff::new(backoff_min, backoff_max).map_err(|error| invalid("backoff-min", error.to_string()))?;
        Ok(UpstreamSettings {
            credentials,
            tls,
            connect_timeout: duration("connect-timeout", self.connect_timeout.as_deref().unwrap_or("3s"))?,
            session_timeout: duration("session-timeout", self.session_timeout.as_deref().unwrap_or("10s"))?,
            backoff,
            token,
        })
    }
}

/// A secret given directly (an environment variable) or in a file, not both.
fn secret(setting: &'static str, value: Option<&str>, file: Option<&Path>) -> Result<Option<Token>, SettingsError> {
    let text = match (value, file) {
        (Some(_), Some(_)) => return Err(invalid(setting, "give the token or a file holding it, not both")),
        (Some(text), None) => text.to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|error| invalid(setting, format!("{}: {error}", path.display())))?
        }
        (None, None) => return Ok(None),
    };
    Token::new(&text).map(Some).ok_or_else(|| invalid(setting, "the token is empty"))
}

fn parse_source(text: &str, must_exist: bool) -> Result<SourceUri, SettingsError> {
    let (scheme, rest) = text.split_once("://").unwrap_or(("file", text));
    match scheme {
        "file" => {
            let dir = PathBuf::from(rest);
            if rest.is_empty() {
                return Err(invalid("source", "file:// needs a directory"));
            }
            if must_exist && !dir.is_dir() {
                let hint = if text == DEFAULT_SOURCE {
                    " (the default is the example config in the repository: run from its top directory or pass --source file://DIR)"
                } else {
                    ""
                };
                return Err(invalid("source", format!("{} is not a directory{hint}", dir.display())));
            }
            Ok(SourceUri::File(dir))
        }
        "etcd" => {
            let (endpoints, path) = hosts_and_path(text, rest, "etcd")?;
            let prefix = if path.is_empty() { "/".to_owned() } else { format!("/{path}/") };
            Ok(SourceUri::Etcd { endpoints, prefix })
        }
        "zk" => {
            let (servers, path) = hosts_and_path(text, rest, "zookeeper")?;
            Ok(SourceUri::ZooKeeper { servers, root: format!("/{path}") })
        }
        "grpc" | "grpcs" | "http" | "https" => {
            let (endpoints, path) = hosts_and_path(text, rest, "relay")?;
            let transport = if scheme.starts_with("grpc") { RelayTransport::Grpc } else { RelayTransport::Http };
            let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
            Ok(SourceUri::Relay { transport, tls: scheme.ends_with('s'), endpoints, prefix })
        }
        other => Err(invalid(
            "source",
            format!(
                "unsupported scheme {other:?} in {text:?}; supported: file://DIR, etcd://HOST:PORT[,...]/PREFIX, zk://HOST:PORT[,...]/PATH, grpc(s)://RELAY:PORT[,...][/PREFIX], http(s)://RELAY:PORT[,...][/PREFIX]"
            ),
        )),
    }
}

/// `HOST:PORT[,HOST:PORT...]/PATH` → the hosts, and the path without slashes around it.
fn hosts_and_path(text: &str, rest: &str, what: &str) -> Result<(Vec<String>, String), SettingsError> {
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<String> = hosts.split(',').filter(|host| !host.is_empty()).map(str::to_owned).collect();
    if hosts.is_empty() {
        return Err(invalid("source", format!("{text:?} names no {what} server")));
    }
    for host in &hosts {
        let (_, port) = host
            .rsplit_once(':')
            .ok_or_else(|| invalid("source", format!("{what} server {host:?} is not HOST:PORT")))?;
        port.parse::<u16>().map_err(|_| invalid("source", format!("{what} server {host:?} has no valid port")))?;
    }
    Ok((hosts, path.trim_matches('/').to_owned()))
}

/// A sidecar's local API is for processes on this host only: it refuses other addresses.
/// A relay serves other hosts, and only with TLS and a token.
fn parse_listen(text: &str, role: Role, tls: bool, token: bool) -> Result<SocketAddr, SettingsError> {
    let addr: SocketAddr =
        text.parse().map_err(|_| invalid("listen", format!("{text:?} is not an IP:PORT address")))?;
    if addr.ip().is_loopback() {
        return Ok(addr);
    }
    match role {
        Role::Sidecar => Err(invalid(
            "listen",
            format!(
                "{addr} is not a loopback address; the local API listens on 127.0.0.1, [::1] or a unix socket only"
            ),
        )),
        Role::Relay if !tls || !token => Err(invalid(
            "listen",
            format!(
                "{addr} is not a loopback address, so the relay needs TLS (--tls-cert and --tls-key) and a bearer token (--token-file or VELTRIX_TOKEN); missing: {}",
                match (tls, token) {
                    (false, false) => "TLS and the token",
                    (false, true) => "TLS",
                    _ => "the token",
                }
            ),
        )),
        Role::Relay => Ok(addr),
    }
}

/// Parses `KEY=VALUE` as given to `--label`.
pub fn parse_label(text: &str) -> Result<(String, String), SettingsError> {
    let (name, value) = text.split_once('=').ok_or_else(|| invalid("label", format!("{text:?} is not KEY=VALUE")))?;
    check_label(name, value)?;
    Ok((name.to_owned(), value.to_owned()))
}

/// Parses `VELTRIX_LABELS`: `KEY=VALUE[,KEY=VALUE...]`.
pub fn parse_label_list(text: &str) -> Result<BTreeMap<String, String>, SettingsError> {
    text.split(',').filter(|part| !part.trim().is_empty()).map(|part| parse_label(part.trim())).collect()
}

fn check_label(name: &str, value: &str) -> Result<(), SettingsError> {
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok(name) || !ok(value) {
        return Err(invalid(
            "label",
            format!("{name}={value}: names and values are non-empty and use A-Z a-z 0-9 _ . - only"),
        ));
    }
    Ok(())
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(setting: &'static str, n: T) -> Result<T, SettingsError> {
    if n > T::default() { Ok(n) } else { Err(invalid(setting, format!("must be greater than 0, got {n}"))) }
}

/// `250ms`, `10s`, `2m`.
pub fn duration(setting: &'static str, text: &str) -> Result<Duration, SettingsError> {
    let bad = || invalid(setting, format!("{text:?} is not a duration such as 250ms, 10s or 2m"));
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(invalid(setting, "must be greater than 0"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests;
