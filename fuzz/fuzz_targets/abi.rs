//! cargo-fuzz target for the host ABI: libFuzzer's bytes become a sequence of `AbiOp`s (through
//! `arbitrary`), which `broker_tests::fuzz::run` plays through the `fuzz_driver` guest on a real broker,
//! checking its invariants after every call; a broken invariant panics, which libFuzzer reports as a
//! crash with the input that caused it.
//!
//! Every pointer class is on, so the known crash of a host function copying into a read-only or revoked
//! shared window is found within seconds; set `BROKER_FUZZ_AVOID_WINDOW_POINTERS=1` to fuzz the rest of
//! the ABI around it (see `broker_tests::fuzz::Options`).

#![no_main]

use broker_tests::fuzz::{self, AbiOp, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<AbiOp>| {
    let outcome = if std::env::var_os("BROKER_FUZZ_AVOID_WINDOW_POINTERS").is_some() {
        fuzz::run_with(&ops, Options { avoid_window_pointers: true }).map(|_| ())
    } else {
        fuzz::run(&ops)
    };
    if let Err(e) = outcome {
        panic!("{e}");
    }
});
