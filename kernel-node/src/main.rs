//! The `kernel-node` binary: flags, config, telemetry, bind, serve.

use std::process::ExitCode;

use clap::Parser;
use kernel_node::{node, telemetry};

/// Every call and event allocates a few small, short-lived objects across
/// worker threads; mimalloc's thread-local free lists serve that pattern at
/// a fraction of glibc malloc's cost (see `docs/ARCHITECTURE.md`, Speed).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`,
/// `mimalloc.h` of the v3 sources libmimalloc-sys builds).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory the node frees goes back to the operating system at once: by
/// default mimalloc purges free pages a second later, and only while the
/// thread keeps allocating, so a node that had 10,000 subscriptions and
/// then went idle kept their memory for good (`make bench`, memory rows;
/// docs/PERFORMANCE.md). The same run measured no cost on the call and event
/// rows. An operator's `MIMALLOC_PURGE_DELAY` still wins.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // The one unsafe call in the workspace: mimalloc's option API is C.
    // Setting an option is allowed at any time; the value is read when
    // pages are freed.
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` takes a plain enum value and a long; it
    // touches only mimalloc's option table, which is made for this.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

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
    purge_freed_memory_at_once();
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
