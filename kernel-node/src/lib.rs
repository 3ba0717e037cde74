//! The kernel node: a [`kernel_core::Kernel`] behind a gRPC server.
//!
//! The kernel proper (registry, router, broker, contexts, middleware) is
//! the `kernel-core` crate; this crate adds what a deployed node needs
//! around it, and the `kernel-node` binary.
//!
//! # Layout
//! - [`server`]: the tonic services (Kernel, Admin, health, reflection),
//!   the transport edge, the admin HTTP port, and [`server::run`].
//! - [`config`]: TOML + `KERNEL_*` environment configuration.
//! - [`identity`]: bearer tokens to plugin names (`[auth]`).
//! - [`telemetry`]: logs, and the OTLP exporter behind the kernel's spans.
//! - [`plugins`]: plugins the node supervises itself (`plugin-host`).
//! - [`store`]: PostgreSQL when `database_url` is set: migrations and the
//!   outbox relay.
//! - [`socket_file`]: the node's Unix-domain socket file (`server.unix_socket`).
//! - [`node`]: a whole node process (what `main` runs after flags and config).

pub mod config;
pub mod identity;
pub mod node;
pub mod plugins;
pub mod server;
pub mod socket_file;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use kernel_core::Kernel;
