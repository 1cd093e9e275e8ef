//! Tracing set-up shared by every binary: `RUST_LOG` filters, `LOG_FORMAT=json|text`.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call once per process.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
