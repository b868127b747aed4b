//! Builds the Extism plugin (peers/plugin) for wasm32-unknown-unknown and points `PEERS_PLUGIN` at it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let plugin = dir.join("plugin");
    println!("cargo:rerun-if-changed={}", plugin.join("src").display());
    println!("cargo:rerun-if-changed={}", plugin.join("Cargo.toml").display());
    let target_dir = dir.join("plugin/target");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "--manifest-path"])
        .arg(plugin.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the Extism plugin failed");
    let wasm = target_dir.join("wasm32-unknown-unknown/release/peers_plugin.wasm");
    println!("cargo:rustc-env=PEERS_PLUGIN={}", wasm.display());
}
