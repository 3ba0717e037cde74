//! The `kernel.v1` wire contract (`proto/kernel/v1/*.proto`) and the wire
//! helpers that the node and every plugin need alike.
//!
//! The bindings are generated at build time by protox + tonic-prost-build;
//! the `.proto` files are the source of truth and are documented message by
//! message.
//!
//! # Layout
//! - [`v1`]: messages, client stubs and server traits.
//! - [`headers`]: header names (gRPC metadata and frame header maps),
//!   `traceparent` helpers, and bounded checks of `baggage` and
//!   `grpc-timeout`.
//! - [`failure`]: `Failure` ↔ `tonic::Status` (the trailer's
//!   `google.rpc.Status`) and causality hops.
//! - [`codec`]: the protobuf codec of every RPC, with small starting
//!   buffers (idle streams stay cheap).
//! - [`batch`]: a channel of items → a stream of batched frames.
//! - [`trace`]: the tracer handle spans are made with, on both sides, and
//!   the `traceparent` parser.

pub mod batch;
pub mod codec;
pub mod failure;
pub mod headers;
pub mod trace;

/// The `kernel.v1` package: messages, client stubs and server traits.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("kernel.v1");
}

/// The encoded `FileDescriptorSet` of the contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kernel_descriptor");
