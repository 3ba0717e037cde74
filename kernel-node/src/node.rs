//! A whole node process: bind, trace export, the kernel, in-process
//! plugins a binary attaches, supervised plugins, admin HTTP, serve until
//! SIGINT/SIGTERM, then drain and stop the plugins. The `kernel-node` binary
//! and binaries that embed in-process plugins (`examples`' `kernel-system`)
//! share it, so each `main` stays flags and config.

use std::any::Any;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use kernel_core::Kernel;

use crate::config::Config;
use crate::store::Store;
use crate::{plugins, server, socket_file, telemetry};

/// The flags every node binary takes.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// Address to listen on (overrides `listen` in the config).
    #[arg(long, env = "KERNEL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read a token from stdin, print its salted hash (for
    /// `auth.plugins.NAME.tokens`) and exit.
    #[arg(long)]
    pub hash_token: bool,
}

/// `--hash-token`: the salted hash of the token on stdin.
pub fn hash_token_from_stdin() -> ExitCode {
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut token) {
        eprintln!("cannot read a token from stdin: {e}");
        return ExitCode::from(2);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > crate::identity::MAX_TOKEN_BYTES {
        eprintln!(
            "a token is 1 to {} bytes on one line",
            crate::identity::MAX_TOKEN_BYTES
        );
        return ExitCode::from(2);
    }
    println!("{}", crate::identity::hash_token(token));
    ExitCode::SUCCESS
}

/// The config `flags` point at, with their overrides; on a bad config,
/// the exit code to leave with (2) after saying why, as `name`.
pub fn config(name: &str, flags: &Flags) -> Result<Config, ExitCode> {
    let mut config = Config::load(flags.config.as_deref()).map_err(|e| {
        eprintln!("{name}: {e}");
        ExitCode::from(2)
    })?;
    if let Some(l) = flags.listen {
        config.listen = l;
    }
    Ok(config)
}

/// What an `attach` callback keeps alive while the node runs (in-process
/// plugin registrations: dropping one deregisters it).
pub type Attached = Box<dyn Any + Send>;

/// Runs a node with `config` on a runtime of its own until a signal ends
/// it; `attach` gets the kernel before the node serves (to attach
/// in-process plugins). `name` prefixes startup errors.
pub fn run(
    name: &'static str,
    config: Config,
    attach: impl FnOnce(&Arc<Kernel>) -> Result<Attached, String> + Send + 'static,
) -> ExitCode {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.server.worker_threads > 0 {
        rt.worker_threads(config.server.worker_threads);
    }
    match rt.enable_all().build() {
        Ok(rt) => rt.block_on(serve(name, config, attach)),
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(
    name: &'static str,
    config: Config,
    attach: impl FnOnce(&Arc<Kernel>) -> Result<Attached, String>,
) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{name}: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    // Dropped (and the file removed, if still this node's) on every way out.
    let (unix, socket_file) = match &config.server.unix_socket {
        None => (None, None),
        Some(path) => match socket_file::bind(path) {
            Ok((l, file)) => {
                tracing::info!(unix_socket = %path.display(), "also listening on a Unix-domain socket");
                (Some(l), Some(file))
            }
            Err(e) => {
                eprintln!(
                    "{name}: cannot listen on server.unix_socket {}: {e}",
                    path.display()
                );
                return ExitCode::from(1);
            }
        },
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if config.database_url.is_some() {
        tracing::info!(listen = %addr, "kernel node listening (in-memory registry, bus and contexts; PostgreSQL outbox relay)");
    } else {
        tracing::info!(listen = %addr, "kernel node listening (embedded mode: in-memory registry, bus and contexts)");
    }
    let reachable = listener.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    if reachable && !config.auth.enabled {
        tracing::warn!(listen = %addr, "listening beyond loopback with auth off: any client that reaches this port may register, call, publish and subscribe to anything; set auth.enabled (docs/OPERATIONS.md, Security)");
    }
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: cannot hook SIGTERM and SIGINT: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{name} listening on {addr}");
    let telemetry = match telemetry::from_config(&config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: bad telemetry config: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_listen = config.telemetry.admin_listen.clone();
    let mut manifests = plugins::manifests(&config);
    let mut config = config;
    plugins::issue_tokens(&mut manifests, &mut config.auth);
    let kernel = Kernel::with_telemetry(config.clone(), telemetry.clone());
    // Supervised plugins reach the node here (with TLS on, its certificate
    // must name 127.0.0.1 or the listen address, and the plugins trust its
    // CA through KERNEL_TLS_CA in the node's environment).
    let scheme = if config.server.tls.enabled() {
        "https"
    } else {
        "http"
    };
    let tcp = match listener.local_addr() {
        Ok(a) if a.ip().is_unspecified() => format!("{scheme}://127.0.0.1:{}", a.port()),
        Ok(a) => format!("{scheme}://{a}"),
        Err(_) => format!("{scheme}://{}", config.listen),
    };
    // The socket, for plugins whose manifest says `transport = "unix"`
    // (not with TLS on: the socket then speaks TLS, which `unix://` URLs
    // do not).
    let urls = plugin_host::KernelUrls {
        tcp,
        unix: config
            .server
            .unix_socket
            .as_ref()
            .filter(|_| !config.server.tls.enabled())
            // Absolute: a plugin resolves it from its own directory.
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .map(|p| format!("unix://{}", p.display())),
    };
    for m in &manifests {
        if let Err(e) = urls.get(m.transport) {
            eprintln!(
                "{name}: plugin `{}`: {e} (set server.unix_socket, with TLS off)",
                m.name
            );
            return ExitCode::from(2);
        }
    }
    let _attached = match attach(&kernel) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{name}: cannot attach in-process plugins: {e}");
            return ExitCode::from(1);
        }
    };
    let store = match &config.database_url {
        Some(url) => match Store::start(
            url,
            config.outbox.clone(),
            config.durable.clone(),
            kernel.clone(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let hosted = plugins::start(manifests, &kernel, urls);
    if !admin_listen.is_empty() {
        match tokio::net::TcpListener::bind(&admin_listen).await {
            Ok(l) => {
                let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(admin = %at, "metrics and health on http://{at}/metrics, /healthz, /readyz");
                tokio::spawn(server::serve_admin_http_with(
                    l,
                    kernel.clone(),
                    hosted.clone(),
                    store.clone(),
                ));
            }
            Err(e) => {
                eprintln!(
                    "{name}: cannot listen on telemetry.admin_listen {admin_listen}: {e} \
                     (another node on this host? give this one another port with \
                     KERNEL_TELEMETRY__ADMIN_LISTEN=127.0.0.1:9465, or turn it off with \
                     KERNEL_TELEMETRY__ADMIN_LISTEN=)"
                );
                return ExitCode::from(1);
            }
        }
    }
    let out = server::run(
        server::Listeners {
            tcp: listener,
            unix,
        },
        kernel,
        config.server.clone(),
        hosted.clone(),
        store.clone(),
        shutdown,
    )
    .await;
    drop(socket_file);
    // Plugins stop after the node drained the calls they were serving.
    if let Some(host) = hosted {
        host.stop().await;
    }
    telemetry.shutdown();
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM or SIGINT (Ctrl-C). Both are hooked when this is called, not
/// when the future is first polled, so a signal that arrives once the node
/// has said it listens starts a graceful shutdown instead of killing it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
