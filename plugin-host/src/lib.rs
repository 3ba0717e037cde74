//! The plugin host: supervised out-of-process plugins.
//!
//! Each plugin declared by a [`Manifest`] runs as a child process in a
//! process group of its own, behind a small shim (see [`shim`]) that takes
//! the plugin and its children down when the host dies. A supervisor per
//! plugin restarts it by its policy, with exponential backoff and jitter,
//! stops restarting in a crash loop until an operator resets it, forwards
//! its output into the host's log, and stops it gracefully. The node embeds
//! a [`Host`] for the plugins in its config; the `plugin-host` binary runs
//! one for a node elsewhere.
//!
//! # Layout
//! - [`manifest`]: the manifest, its checks and loading (a list, a directory).
//! - [`transport`]: a manifest's `transport` and the kernel address for each.
//! - [`shim`]: the process between the host and a plugin.
//! - `supervisor`: one plugin's start / watch / restart loop.
//! - [`status`]: what the host knows about each plugin.
//! - `host`: the [`Host`]: supervisors, status, operator orders, metrics.
//! - [`error`]: the crate's error type.

pub mod error;
mod host;
pub mod manifest;
pub mod shim;
pub mod status;
mod supervisor;
pub mod transport;

pub use error::Error;
pub use host::Host;
pub use manifest::Manifest;
pub use status::{Event, Exit, PluginStatus, State};
pub use supervisor::{instance_id, Readiness};
pub use transport::{KernelUrls, Transport};
