//! The `kernel-node` binary: flags, config, telemetry, bind, serve.

use std::process::ExitCode;

use clap::Parser;
use kernel_node::{node, telemetry};

/// Every call and event allocates a few small, short-lived objects across
/// worker threads; mimalloc's thread-local free lists serve that pattern at
/// a fraction of glibc malloc's cost (see `docs/ARCHITECTURE.md`, Speed).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A microkernel runtime delivered as a gRPC node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: node::Flags,
}

fn main() -> ExitCode {
    // A supervised plugin's shim is this executable run again: it must
    // not parse flags or start a node.
    plugin_host::shim::run_if_requested();
    telemetry::init();
    let cli = Cli::parse();
    if cli.node.hash_token {
        return node::hash_token_from_stdin();
    }
    match node::config("kernel-node", &cli.node) {
        Ok(config) => node::run("kernel-node", config, |_| Ok(Box::new(()))),
        Err(code) => code,
    }
}
