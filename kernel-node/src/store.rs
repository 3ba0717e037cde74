//! PostgreSQL, when `database_url` is set: the schema migrations, the
//! outbox relay, and the database's part of `/readyz` and `/metrics`.
//! Without it none of this runs and the node is the embedded default.
//!
//! One task owns one connection (LISTEN needs a session of its own): it
//! connects, migrates, then relays until the node stops. When the database
//! is unreachable, or lost while running, the task says so in the log,
//! marks the node not ready naming the database, and tries again with
//! backoff; in-memory traffic never waits for it.

mod durable;
mod migrate;
mod relay;

pub use durable::{Connected, Durables};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kernel_core::{Kernel, Work};
use parking_lot::Mutex;

use crate::config::{DurableConfig, OutboxConfig};

/// The node's database side.
#[derive(Debug)]
pub struct Store {
    /// The URL without its password, for logs and `/readyz`.
    shown: String,
    config: tokio_postgres::Config,
    outbox: OutboxConfig,
    /// Why the database is not usable now; `None` = connected and migrated.
    down: Mutex<Option<String>>,
    relayed: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    /// Age of the oldest unrelayed row at the last look, in milliseconds.
    lag_ms: AtomicI64,
    /// When the node started (the relay's start delay counts from here).
    started: std::time::Instant,
    durables: Arc<Durables>,
}

impl Store {
    /// Starts the database task for `url` (already checked by the config).
    pub fn start(
        url: &str,
        outbox: OutboxConfig,
        durable: DurableConfig,
        kernel: Arc<Kernel>,
    ) -> Result<Arc<Store>, String> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("database_url is not a PostgreSQL URL: {e}"))?;
        let shown = shown(&config);
        let durables = Durables::new(config.clone(), shown.clone(), durable.max_backlog);
        kernel.set_keeper(durables.clone());
        let store = Arc::new(Store {
            durables,
            down: Mutex::new(Some(format!("database {shown}: connecting"))),
            shown,
            config,
            outbox,
            relayed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            lag_ms: AtomicI64::new(0),
            started: std::time::Instant::now(),
        });
        let task = store.clone();
        let lifecycle = kernel.lifecycle().clone();
        lifecycle.spawn(Work::Sessions, async move { task.run(kernel).await });
        Ok(store)
    }

    /// The durable subscriptions.
    pub fn durables(&self) -> &Arc<Durables> {
        &self.durables
    }

    /// Why the node is not ready on the database's account, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.down.lock().clone()
    }

    /// The `kernel_outbox_*`, `kernel_durable_backlog` and
    /// `kernel_database_up` metrics.
    pub fn render_metrics(&self) -> String {
        let up = u8::from(self.down.lock().is_none());
        let mut out = format!(
            "# HELP kernel_database_up 1 when the node is connected to its database and the schema is migrated.\n\
             # TYPE kernel_database_up gauge\nkernel_database_up {up}\n\
             # HELP kernel_outbox_relayed_total Outbox rows published to the bus.\n\
             # TYPE kernel_outbox_relayed_total counter\nkernel_outbox_relayed_total {}\n\
             # HELP kernel_outbox_rejected_total Outbox rows the bus refused for good, moved to kernel.outbox_rejected.\n\
             # TYPE kernel_outbox_rejected_total counter\nkernel_outbox_rejected_total {}\n\
             # HELP kernel_outbox_batches_total Relay transactions that published at least one row.\n\
             # TYPE kernel_outbox_batches_total counter\nkernel_outbox_batches_total {}\n\
             # HELP kernel_outbox_lag_seconds Age of the oldest committed row not yet relayed, at the relay's last look.\n\
             # TYPE kernel_outbox_lag_seconds gauge\nkernel_outbox_lag_seconds {:.3}\n",
            self.relayed.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
            self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        self.durables.render_metrics(&mut out);
        out
    }

    async fn run(self: Arc<Self>, kernel: Arc<Kernel>) {
        let mut backoff = Duration::from_millis(100);
        let max = Duration::from_millis(self.outbox.retry_max_ms.max(100));
        loop {
            let session = relay::Session::run(&self, &kernel);
            let out = tokio::select! {
                out = session => out,
                _ = kernel.lifecycle().stopped() => return,
            };
            match out {
                Ok(()) => return,
                Err(e) => {
                    let e = cause(&e);
                    let was_up = self
                        .down
                        .lock()
                        .replace(format!("database {}: {e}", self.shown))
                        .is_none();
                    if was_up {
                        tracing::error!(database = %self.shown, cause = %e, "database lost; the outbox relay stops until it is back (in-memory calls and events go on)");
                        backoff = Duration::from_millis(100);
                    } else {
                        tracing::warn!(database = %self.shown, cause = %e, retry_in_ms = backoff.as_millis() as u64, "database unreachable; the node is not ready until it is");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = kernel.lifecycle().stopped() => return,
            }
            backoff = (backoff * 2).min(max);
        }
    }

    fn up(&self) {
        if self.down.lock().take().is_some() {
            tracing::info!(database = %self.shown, "database connected; schema migrated; outbox relay running");
        }
    }
}

/// A `jsonb` headers column as headers: its string members, names in
/// lower case (as gRPC metadata has them); other members are left out.
fn headers_of(v: serde_json::Value) -> std::collections::HashMap<String, String> {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k.to_ascii_lowercase(), s)),
                _ => None,
            })
            .collect(),
        _ => Default::default(),
    }
}

/// A database error with what the server said (tokio-postgres's own
/// message is only "db error").
fn cause(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// `postgres://user@host:port/db`: what the node says about its database,
/// never the password.
fn shown(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or_default(),
        c.get_dbname().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_url_has_no_password() {
        let c: tokio_postgres::Config = "postgres://app:s3cret@db.local:6543/orders"
            .parse()
            .expect("url");
        let s = shown(&c);
        assert_eq!(s, "postgres://app@db.local:6543/orders");
        assert!(!s.contains("s3cret"));
    }
}
