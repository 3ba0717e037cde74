//! Example plugins a user can copy.
//!
//! # Layout
//! - [`inventory`]: an in-process plugin (`inventory.check_stock`,
//!   `inventory.reserve`), attached by the `kernel-system` binary.
//! - binaries: `orders` (an out-of-process plugin), `kernel-system` (a node
//!   with inventory in-process and its other plugins supervised, from
//!   `deploy/system.toml`), `in-process`, `call`.
//! - `notifier/notifier.py`: a Python plugin over grpcio.

pub mod inventory;
