//! Logging: human-readable lines by default, JSON objects on request, with the span of
//! the request (method, request id) on every line logged while serving it. The filter is
//! `--log-level` (tracing's env-filter syntax: `info`, `veltrix_sidecar=debug`, ...) and
//! can be changed while running through the admin server.

use std::sync::OnceLock;

use tracing_subscriber::{EnvFilter, Registry, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Changes the log filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

static LOG_CONTROL: OnceLock<LogControl> = OnceLock::new();

impl LogControl {
    /// The process's control, once logging was initialised.
    pub fn get() -> Option<&'static LogControl> {
        LOG_CONTROL.get()
    }

    pub fn current(&self) -> String {
        self.handle.with_current(|filter| filter.to_string()).unwrap_or_default()
    }

    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = parse_filter(directives)?;
        self.handle.reload(filter).map_err(|error| error.to_string())
    }
}

pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(directives.trim()).map_err(|error| format!("invalid log filter {directives:?}: {error}"))
}

/// Installs the global subscriber. A second call (tests) keeps the first.
pub fn init(format: LogFormat, filter: EnvFilter) {
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Human => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(std::io::stderr))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_CONTROL.set(LogControl { handle });
    }
}
