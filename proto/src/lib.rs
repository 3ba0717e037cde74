//! Rust bindings for the `kernel.v1` wire contract (`proto/kernel/v1/*.proto`).
//!
//! Generated at build time by protox + tonic-prost-build; the `.proto` files
//! are the source of truth and are documented message by message.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]

/// The `kernel.v1` package: messages, client stubs and server traits.
pub mod v1 {
    tonic::include_proto!("kernel.v1");
}

/// The encoded `FileDescriptorSet` of the contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kernel_descriptor");
