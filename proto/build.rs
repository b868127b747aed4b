//! Generates the gRPC code from `broker.proto` with the vendored `protoc`, so a fresh machine needs no
//! protobuf installation; also writes the file descriptor set that the reflection service serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: setting an env var for this build script's own child processes.
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("broker_descriptor.bin"))
        .compile_protos(&["broker.proto"], &["."])?;
    println!("cargo:rerun-if-changed=broker.proto");
    Ok(())
}
