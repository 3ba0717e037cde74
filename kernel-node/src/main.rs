//! The `kernel-node` binary: flags, config, telemetry, bind, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kernel_node::{node, telemetry, Config};

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
    let mut config = match Config::load(flags.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernel-node: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = flags.listen {
        config.listen = l;
    }
    node::run("kernel-node", config, |_| Ok(Box::new(())))
}
