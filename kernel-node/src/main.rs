//! The `kernel-node` binary: flags, config, telemetry, bind, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kernel_node::{plugins, server, telemetry, Config, Kernel};

/// Every call and event allocates a few small, short-lived objects across
/// worker threads; mimalloc's thread-local free lists serve that pattern at
/// a fraction of glibc malloc's cost (see `docs/ARCHITECTURE.md`, Speed).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A microkernel runtime delivered as a gRPC node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// Address to listen on (overrides `listen` in the config).
    #[arg(long, env = "KERNEL_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // A supervised plugin's shim is this executable run again: it must
    // not parse flags or start a node.
    plugin_host::shim::run_if_requested();
    telemetry::init();
    let flags = Flags::parse();
    let config = match Config::load(flags.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernel-node: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.server.worker_threads > 0 {
        rt.worker_threads(config.server.worker_threads);
    }
    match rt.enable_all().build() {
        Ok(rt) => rt.block_on(serve(flags, config)),
        Err(e) => {
            eprintln!("kernel-node: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(flags: Flags, mut config: Config) -> ExitCode {
    if let Some(l) = flags.listen {
        config.listen = l;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kernel-node: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listen = %addr, "kernel node listening (embedded mode: in-memory registry, bus and contexts)");
    println!("kernel-node listening on {addr}");
    let telemetry = match telemetry::from_config(&config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kernel-node: bad telemetry config: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_listen = config.telemetry.admin_listen.clone();
    let manifests = plugins::manifests(&config);
    let kernel = Kernel::with_telemetry(config.clone(), telemetry.clone());
    let local = match listener.local_addr() {
        Ok(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
        Ok(a) => format!("http://{a}"),
        Err(_) => format!("http://{}", config.listen),
    };
    let hosted = plugins::start(manifests, &kernel, &local);
    if !admin_listen.is_empty() {
        match tokio::net::TcpListener::bind(&admin_listen).await {
            Ok(l) => {
                let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(admin = %at, "metrics and health on http://{at}/metrics, /healthz, /readyz");
                tokio::spawn(server::serve_admin_http_with(
                    l,
                    kernel.clone(),
                    hosted.clone(),
                ));
            }
            Err(e) => {
                eprintln!(
                    "kernel-node: cannot listen on telemetry.admin_listen {admin_listen}: {e}"
                );
                return ExitCode::from(1);
            }
        }
    }
    let out = server::run(
        listener,
        kernel,
        config.server.clone(),
        hosted.clone(),
        shutdown_signal(),
    )
    .await;
    // Plugins stop after the node drained the calls they were serving.
    if let Some(host) = hosted {
        host.stop().await;
    }
    telemetry.shutdown();
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel-node: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
