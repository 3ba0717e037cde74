//! Compiles `kernel/v1/*.proto` with protox (a pure-Rust protobuf compiler),
//! so building needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["kernel/v1/kernel.proto", "kernel/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set is embedded for gRPC server reflection.
    std::fs::write(
        out.join("kernel_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // A delivered event's headers are a B-tree map: a delivery holds one to
    // three entries, and a small B-tree costs no hashing to build, to decode
    // or to look up (`get` works the same), where a `HashMap` pays SipHash
    // and a rehash for each event. It also encodes in a stable order.
    // Every stream's codec starts with small buffers (`src/codec.rs`).
    tonic_prost_build::configure()
        .codec_path("crate::codec::KernelCodec")
        .bytes(".")
        .btree_map(".kernel.v1.Event.headers")
        .compile_fds(fds)?;
    Ok(())
}
