//! A node with the example system: `inventory` in-process, and the
//! plugins of its config (`deploy/system.toml`: `orders` in Rust,
//! `notifier` in Python) supervised. `make run-system` starts it.

use std::process::ExitCode;

use clap::Parser;
use kernel_node::{node, telemetry};
use kernel_sdk::Plugin;

/// The example system's node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: node::Flags,
}

fn main() -> ExitCode {
    plugin_host::shim::run_if_requested();
    telemetry::init();
    let cli = Cli::parse();
    let config = match node::config("kernel-system", &cli.node) {
        Ok(c) => c,
        Err(code) => return code,
    };
    node::run("kernel-system", config, |kernel| {
        let stock = [("sku-1", 100), ("sku-2", 5)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let inventory: Plugin = kernel_examples::inventory::plugin(stock);
        let registration = inventory.attach(kernel).map_err(|e| e.to_string())?;
        Ok(Box::new(registration))
    })
}
