//! The integration test suite: one binary, one module per area, real guests on a real broker.

mod abi_header;
mod authority;
mod bench;
mod c_guest;
mod callback;
mod cluster;
mod conformance;
mod control;
mod demo;
mod handle;
mod malicious;
mod mirror;
mod reflection;
mod runtime;
mod scenario;
mod shared;
mod tenant;
mod tidy;
mod wasi;

/// Every guest must have a test named after it in the module named by its prefix; this fails to compile
/// otherwise (wasmtime's `assert_test_exists`).
macro_rules! assert_test_exists {
    ($suite:ident, $name:ident) => {
        const _: fn() = $suite::$name;
    };
}
broker_guests::foreach_guest!(assert_test_exists);
mod fuzz;
mod isolation;

/// A real `nats-server` (shared with the cluster crate's and the CLI's tests).
#[path = "../../support/nats.rs"]
mod nats;

/// Finding a Python with grpcio (shared with the broker crate's process tests).
#[path = "../../support/python.rs"]
mod python;
