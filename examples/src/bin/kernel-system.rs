//! A node with the example system: `inventory` in-process, and the
//! plugins of its config (`deploy/system.toml`: `orders` in Rust,
//! `notifier` in Python) supervised. `make run-system` starts it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kernel_node::{node, telemetry, Config};
use kernel_sdk::Plugin;

/// The example system's node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// Address to listen on (overrides `listen` in the config).
    #[arg(long, env = "KERNEL_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML config file (`deploy/system.toml`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    plugin_host::shim::run_if_requested();
    telemetry::init();
    let flags = Flags::parse();
    let mut config = match Config::load(flags.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernel-system: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = flags.listen {
        config.listen = l;
    }
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
