//! The kernel node: a small, stable microkernel delivered as a gRPC server.
//!
//! Plugins register string-named services, call each other through the
//! router, and publish/subscribe events through the broker; every call and
//! delivery gets a context (trace, context path, deadline, budget).
//!
//! # Layout
//! - [`kernel`]: the [`Kernel`] handle that owns everything below; the
//!   in-process API.
//! - [`middleware`]: the kernel pipeline (trace, validate, accounting) as
//!   tower layers, composed in one place.
//! - [`registry`]: which instances provide which service names.
//! - [`provider`]: remote (Register session) and in-process provider instances.
//! - [`router`]: one call from request to reply: context, deadline, selection,
//!   concurrency queue, dispatch, cancellation.
//! - [`batch`]: channel → batched stream frames (node and SDK streams).
//! - [`broker`]: the event bus (topic trie, subscriptions, acks, dead letters).
//! - [`context`]: the context tree, budgets and header names.
//! - [`names`]: the grammar of service names, topics and patterns.
//! - [`server`]: the tonic services (Kernel, Admin, health, reflection) and
//!   `server::run`.
//! - [`config`]: TOML + `KERNEL_*` environment configuration.
//! - [`error`]: the crate's error enum and its one mapping to `tonic::Status`.
//! - [`stats`]: node-wide counters.
//! - [`metrics`]: Prometheus call metrics and the `/metrics` rendering.
//! - [`telemetry`]: logs, and OpenTelemetry traces over OTLP.

pub mod batch;
pub mod broker;
pub mod config;
pub mod context;
pub mod error;
pub mod kernel;
pub mod metrics;
pub mod middleware;
pub mod names;
pub mod provider;
pub mod registry;
pub mod router;
pub mod server;
pub mod stats;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use kernel::Kernel;
