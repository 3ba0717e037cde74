//! Node configuration: a TOML file plus `KERNEL_*` environment overrides.
//!
//! Every key has a default next to its name, so an empty file (or none) is a
//! working embedded node. An environment variable `KERNEL_SECTION__KEY`
//! overrides `[section] key` (double underscore between levels, case
//! insensitive), e.g. `KERNEL_ROUTER__MAX_PAYLOAD_BYTES=1048576`,
//! `KERNEL_LISTEN=0.0.0.0:50051`. Variables whose first key is not a config
//! section (`KERNEL_FOO`) are ignored. Bad config is an error naming the key.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use kernel_core::{BrokerConfig, BudgetConfig, BudgetOverride, RouterConfig};

/// The node's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Call routing.
    pub router: RouterConfig,
    /// Event bus.
    pub broker: BrokerConfig,
    /// Context-tree budgets.
    pub budget: BudgetConfig,
    /// Server lifecycle.
    pub server: ServerConfig,
    /// Traces and metrics.
    pub telemetry: TelemetryConfig,
    /// Identity (tokens) and capabilities.
    pub auth: kernel_core::AuthConfig,
    /// `[[plugins]]`: plugins the node supervises itself (manifests, see
    /// `docs/PLUGINS.md` §6). Kept as raw tables here so one bad manifest
    /// is refused on its own, naming its key, while the others start.
    pub plugins: Vec<toml::Value>,
    /// A directory of plugin manifests (one `*.toml` per plugin),
    /// supervised beside `[[plugins]]`.
    pub plugins_dir: Option<std::path::PathBuf>,
    /// PostgreSQL (`postgres://user@host:5432/db`; `KERNEL_DATABASE_URL`):
    /// switches on the outbox relay. Unset = the embedded default.
    pub database_url: Option<String>,
    /// `[outbox]`: the relay (only with `database_url`).
    pub outbox: OutboxConfig,
    /// `[durable]`: durable subscriptions (only with `database_url`).
    pub durable: DurableConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            router: RouterConfig::default(),
            broker: BrokerConfig::default(),
            budget: BudgetConfig::default(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: kernel_core::AuthConfig::default(),
            plugins: Vec::new(),
            plugins_dir: None,
            database_url: None,
            outbox: OutboxConfig::default(),
            durable: DurableConfig::default(),
        }
    }
}

/// `[server]`: lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// On SIGINT/SIGTERM, how long in-flight calls get to finish.
    pub shutdown_grace_ms: u64,
    /// Tokio worker threads; 0 = one per core. On a machine shared with the
    /// plugin processes, 1 avoids cross-core wake-ups and gives the lowest
    /// call latency (see `make bench`).
    pub worker_threads: usize,
    /// Longest any request may take to get its response head: the whole
    /// call for unary RPCs (whatever deadline the client asked for), the
    /// open for streams. 0 = no cap.
    pub max_request_ms: u64,
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// A connection that sends nothing (not even the HTTP/2 preface) this
    /// long after it was accepted is closed.
    pub handshake_timeout_ms: u64,
    /// `[server.tls]`: TLS, and mTLS with `client_ca_file`.
    pub tls: TlsConfig,
    /// A Unix-domain socket to accept connections on as well as the TCP
    /// port (co-located plugins connect with `unix:///path`; the same
    /// services, limits and auth). Created at start with mode 0600 (a stale
    /// socket nobody answers on is replaced), removed at exit while still
    /// this node's (`socket_file`). Unset = TCP only.
    pub unix_socket: Option<std::path::PathBuf>,
}

/// `[server.tls]`: with `cert_file` and `key_file` the node speaks TLS
/// only; with `client_ca_file` too, it requires a client certificate
/// signed by that CA (mTLS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain, PEM.
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key, PEM.
    pub key_file: Option<std::path::PathBuf>,
    /// CA(s) whose client certificates are accepted, PEM; set = mTLS.
    pub client_ca_file: Option<std::path::PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_grace_ms: 10_000,
            worker_threads: 0,
            max_request_ms: 300_000,
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            tls: TlsConfig::default(),
            unix_socket: None,
        }
    }
}

/// `[durable]`: durable subscriptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DurableConfig {
    /// Events kept per durable subscription at most; a publish that would
    /// exceed it fails with `RESOURCE_EXHAUSTED` naming the subscription.
    pub max_backlog: u64,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            max_backlog: 1_000_000,
        }
    }
}

/// `[outbox]`: the relay that publishes committed outbox rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Rows claimed, published and deleted per database transaction.
    pub batch: u32,
    /// How often the relay looks for rows when no notification came (a
    /// fallback: commits notify it at once).
    pub poll_ms: u64,
    /// The longest wait between two attempts to reach the database.
    pub retry_max_ms: u64,
    /// After the node starts, how long the relay waits before the first
    /// batch, so that plugins reconnect and subscribe again first (an event
    /// relayed before a subscription opens does not reach it).
    pub start_delay_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            batch: 512,
            poll_ms: 1_000,
            retry_max_ms: 5_000,
            start_delay_ms: 2_000,
        }
    }
}

/// `[telemetry]`: traces and the admin HTTP port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint for traces; when unset, `OTEL_EXPORTER_OTLP_*`
    /// decide, and with neither nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the node's spans (else `OTEL_SERVICE_NAME`, else
    /// `kernel-node`).
    pub service_name: Option<String>,
    /// Trace sampler, by its OpenTelemetry name (`always_on`, `always_off`,
    /// `traceidratio`, `parentbased_always_on`, `parentbased_always_off`,
    /// `parentbased_traceidratio`); else `OTEL_TRACES_SAMPLER`, else
    /// `parentbased_always_on`. An unknown name is a startup error.
    pub sampler: Option<String>,
    /// The ratio of the `*traceidratio` samplers, in [0, 1]; else
    /// `OTEL_TRACES_SAMPLER_ARG`, else 1.
    pub sampler_arg: Option<f64>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; empty = off.
    pub admin_listen: String,
    /// How long one OTLP export may take, and how long shutdown waits for
    /// the last spans to go out (an unreachable collector costs at most
    /// this), in milliseconds.
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: None,
            sampler: None,
            sampler_arg: None,
            admin_listen: "127.0.0.1:9464".into(),
            export_timeout_ms: 2_000,
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML (after environment overrides) is wrong; the message names the key.
    #[error("bad config: {0}")]
    Invalid(String),
}

impl From<Config> for kernel_core::Config {
    fn from(c: Config) -> kernel_core::Config {
        kernel_core::Config {
            router: c.router,
            broker: c.broker,
            budget: c.budget,
            auth: c.auth,
        }
    }
}

impl Config {
    /// The kernel's own sections, for [`kernel_core::Kernel::new`].
    pub fn kernel(&self) -> kernel_core::Config {
        kernel_core::Config {
            router: self.router.clone(),
            broker: self.broker.clone(),
            budget: self.budget.clone(),
            auth: self.auth.clone(),
        }
    }

    /// Loads the file (when given), applies `KERNEL_*` variables from the
    /// process environment, and checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_toml_and_env(&text, std::env::vars())
    }

    /// Parses TOML text, then applies overrides from `vars` (only names
    /// starting with `KERNEL_` are read).
    pub fn from_toml_and_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut applied = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("KERNEL_") else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            // Only names that start with a known key are config; others
            // (some other tool's KERNEL_SOMETHING) are not ours to reject.
            if !KNOWN_ROOTS.contains(&keys[0].as_str()) {
                continue;
            }
            set_path(&mut root, &keys, parse_scalar(&value))
                .map_err(|e| ConfigError::Invalid(format!("environment variable {name}: {e}")))?;
            applied.push(format!("{name} sets `{}`", keys.join(".")));
        }
        let merged = toml::to_string(&root).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let config: Config = toml::from_str(&merged).map_err(|e| {
            if applied.is_empty() {
                ConfigError::Invalid(e.to_string())
            } else {
                ConfigError::Invalid(format!(
                    "{e}(environment overrides: {})",
                    applied.join(", ")
                ))
            }
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("`{key}` {why}")));
        if self.router.max_payload_bytes == 0 {
            return bad("router.max_payload_bytes", "must be greater than 0");
        }
        if self.router.heartbeat_timeout_ms <= self.router.heartbeat_interval_ms {
            return bad(
                "router.heartbeat_timeout_ms",
                "must be greater than router.heartbeat_interval_ms",
            );
        }
        if self.broker.buffer == 0 {
            return bad("broker.buffer", "must be greater than 0");
        }
        if self.broker.max_deliver == 0 {
            return bad("broker.max_deliver", "must be at least 1");
        }
        let tls = &self.server.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return bad("server.tls.key_file", "is needed with server.tls.cert_file")
            }
            (None, Some(_)) => {
                return bad("server.tls.cert_file", "is needed with server.tls.key_file")
            }
            (None, None) if tls.client_ca_file.is_some() => {
                return bad(
                    "server.tls.client_ca_file",
                    "needs server.tls.cert_file and key_file (mTLS is TLS first)",
                )
            }
            _ => {}
        }
        for (key, file) in [
            ("server.tls.cert_file", &tls.cert_file),
            ("server.tls.key_file", &tls.key_file),
            ("server.tls.client_ca_file", &tls.client_ca_file),
        ] {
            if let Some(f) = file {
                if let Err(e) = std::fs::metadata(f) {
                    return bad(key, &format!("cannot be read ({}): {e}", f.display()));
                }
            }
        }
        if let Some(url) = &self.database_url {
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return bad("database_url", &format!("is not a PostgreSQL URL: {e}"));
            }
        }
        if self.outbox.batch == 0 {
            return bad("outbox.batch", "must be at least 1");
        }
        if self.outbox.poll_ms == 0 {
            return bad("outbox.poll_ms", "must be greater than 0");
        }
        Ok(())
    }
}

/// Top-level keys an environment variable may set.
const KNOWN_ROOTS: [&str; 10] = [
    "plugins_dir",
    "database_url",
    "outbox",
    "durable",
    "listen",
    "router",
    "broker",
    "budget",
    "server",
    "telemetry",
];

/// An environment value as TOML: integers, floats and booleans keep their
/// type, anything else is a string.
fn parse_scalar(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    toml::Value::String(raw.to_owned())
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = keys.split_last() else {
        return Err("empty key".into());
    };
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_input() {
        let c = Config::from_toml_and_env("", Vec::new()).expect("defaults load");
        assert_eq!(c.router.max_payload_bytes, 4 * 1024 * 1024);
    }

    /// The example config says it shows every default: it must load, and
    /// to the same values as no config at all.
    #[test]
    fn the_example_config_is_the_defaults() {
        let text = include_str!("../../deploy/kernel.toml");
        let c = Config::from_toml_and_env(text, Vec::new()).expect("deploy/kernel.toml loads");
        let d = Config::default();
        assert_eq!(format!("{:?}", c.router), format!("{:?}", d.router));
        assert_eq!(format!("{:?}", c.broker), format!("{:?}", d.broker));
        assert_eq!(format!("{:?}", c.budget), format!("{:?}", d.budget));
        assert_eq!(format!("{:?}", c.server), format!("{:?}", d.server));
        assert_eq!(format!("{:?}", c.telemetry), format!("{:?}", d.telemetry));
        assert_eq!(c.listen, d.listen);
    }

    /// The example system's config loads, with its two supervised plugins.
    #[test]
    fn the_system_config_loads() {
        let text = include_str!("../../deploy/system.toml");
        let c = Config::from_toml_and_env(text, Vec::new()).expect("deploy/system.toml loads");
        assert_eq!(c.plugins.len(), 2);
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_toml_and_env(
            "[router]\nqueue_limit = 7\n",
            vec![
                ("KERNEL_ROUTER__QUEUE_LIMIT".into(), "9".into()),
                ("KERNEL_LISTEN".into(), "127.0.0.1:7000".into()),
            ],
        )
        .expect("loads");
        assert_eq!(c.router.queue_limit, 9);
        assert_eq!(c.listen.port(), 7000);
    }

    #[test]
    fn bad_key_is_named() {
        let err = Config::from_toml_and_env("[router]\nqueue_limitt = 7\n", Vec::new())
            .expect_err("unknown key rejected");
        assert!(err.to_string().contains("queue_limitt"), "{err}");
        let err = Config::from_toml_and_env(
            "",
            vec![("KERNEL_ROUTER__QUEUE_LIMIT".into(), "lots".into())],
        )
        .expect_err("bad type rejected");
        assert!(err.to_string().contains("queue_limit"), "{err}");
        // Another tool's variable is not ours to reject.
        assert!(
            Config::from_toml_and_env("", vec![("KERNEL_VERSION".into(), "6.1".into())]).is_ok()
        );
    }
}
