//! Logging: human-readable lines by default, JSON objects on request. The filter comes
//! from `VELTRIX_LOG` (tracing's env-filter syntax), `info` when unset.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

pub const LOG_ENV: &str = "VELTRIX_LOG";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
