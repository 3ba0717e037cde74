//! Structured logging setup (`RUST_LOG` filters, default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Safe to call more than once (later
/// calls are ignored), which tests rely on.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
