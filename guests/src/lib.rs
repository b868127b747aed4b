//! Paths of the guest apps' `.wasm` files, compiled from `guests/apps` by this crate's build script.
//!
//! Tests, benches and the demo load guests through these constants, so the `.wasm` files are always built
//! from the sources in this repository by the ordinary `cargo build`/`cargo test`, never by a manual step.
//! Each guest `guests/apps/src/bin/<name>.rs` becomes a constant `<NAME>` holding its absolute path, and
//! [`foreach_guest!`] expands a macro once per guest so the test suite can insist each guest has a test.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Reads a guest's `.wasm` bytes by its constant, e.g. `broker_guests::read(broker_guests::HANDLE_APP)`.
///
/// # Errors
/// The file cannot be read (it is produced by the build script, so this means the target dir was changed
/// under the build).
pub fn read(path: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Path of the C guest's checked-in `.wasm` (built from `guests/c/handle_counter.c` with clang, which a
/// fresh machine does not have; the test suite rebuilds it where clang is installed).
pub const C_HANDLE_COUNTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c/handle_counter.wasm");

/// Path of the C guest's source.
pub const C_HANDLE_COUNTER_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c/handle_counter.c");

/// Path of the C mirror guest's checked-in `.wasm` (built from `guests/c/mirror_counter.c` as
/// [`C_HANDLE_COUNTER`] is).
pub const C_MIRROR_COUNTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c/mirror_counter.wasm");

/// Path of the C mirror guest's source.
pub const C_MIRROR_COUNTER_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c/mirror_counter.c");
