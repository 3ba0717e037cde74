//! The Rust SDK for kernel plugins.
//!
//! A plugin provides string-named services and calls others through the
//! kernel; it never imports another plugin. The same [`Plugin`] runs
//! out-of-process ([`Plugin::serve`], over gRPC) or in-process
//! ([`Plugin::attach`], straight into the kernel pipeline).
//!
//! ```no_run
//! use kernel_sdk::{Plugin, Client};
//! # async fn demo() -> Result<(), kernel_sdk::Error> {
//! let plugin = Plugin::new("greeter").provide("greet.hello", |_ctx, name| async move {
//!     Ok(format!("hello, {}", String::from_utf8_lossy(&name)).into())
//! });
//! tokio::spawn(plugin.serve("http://127.0.0.1:50051", Default::default()));
//! let client = Client::connect("http://127.0.0.1:50051")?;
//! let reply = client.call("greet.hello", "world").await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`]: calls and publishes, remote (multiplexed
//!   CallStream) or in-process.
//! - [`plugin`]: [`Plugin`]: providing services; sessions, drain, reconnect.
//! - [`context`]: [`Context`]: a handler's place in the context tree, deadline,
//!   cancellation, nested calls, emits, budget charges.
//! - [`events`]: [`Subscriber`], [`Publisher`], [`SubscribeOptions`].
//! - [`bulk`]: [`BulkPublisher`]: many events in flight, confirmed in bulk.
//! - [`transaction`]: [`Transaction`]: emits buffered until commit.
//! - [`error`]: the SDK error type, [`Error`].
//! - `wire`: the connection's settings and the bearer token.
//! - [`telemetry`]: your own `tracing` spans and logs in the kernel's trace.

pub mod bulk;
pub mod client;
pub mod context;
pub mod error;
pub mod events;
mod handler;
mod mux;
mod origin;
#[cfg(feature = "postgres")]
pub mod outbox;
pub mod plugin;
pub mod telemetry;
pub mod transaction;
mod wire;

pub use bytes::Bytes;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use bulk::{BulkPublisher, Refused};
pub use client::{CallOptions, Client, Published, Reply};
pub use context::Context;
pub use error::Error;
pub use events::{Event, Publisher, SubscribeOptions, Subscriber};
pub use kernel_proto::trace::Telemetry;
#[cfg(feature = "postgres")]
pub use outbox::PgTransaction;
pub use plugin::{Plugin, SessionEnd};
pub use tokio_util::sync::CancellationToken;
pub use tonic::Code;
pub use transaction::Transaction;
pub use wire::Tls;
