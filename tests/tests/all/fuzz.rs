//! The host ABI under a fuzzer: random sequences of raw calls by the `fuzz_driver` guest, checked by
//! `broker_tests::fuzz` after every call (no broker panic, documented statuses only, regions the driver
//! cannot write never change, no write outside the given ranges, nothing outliving its instance).
//! The cargo-fuzz target in `fuzz/` runs the same driver for as long as one likes.

use broker_tests::fuzz::{self, AbiOp, Options};
use broker_tests::{watchdog, Status};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Guest ranges may point anywhere, the driver's own read-only and revoked windows included: the broker
/// refuses host copies over them with BAD_POINTER (it used to fault and crash the process).
const OPTIONS: Options = Options { avoid_window_pointers: false };

/// The named test for the `fuzz_driver` guest: 256 random sequences of up to 64 ops.
///
/// The runner is seeded deterministically, so CI sees the same cases every time; set `PROPTEST_CASES`
/// to run more (the first 256 stay the same).
#[test]
pub(crate) fn fuzz_driver() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let outcome = watchdog(300, move || {
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        runner
            .run(&fuzz::ops(), |ops| fuzz::run_with(&ops, OPTIONS).map(|_| ()).map_err(TestCaseError::fail))
            .map_err(|e| e.to_string())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

// Argument encodings of the driver (its low three bits pick a class, the rest the value); see
// `guests/apps/src/bin/fuzz_driver.rs`.
/// A handle the driver opened at setup: 0 "owner/ro", 1 "rw", 2 "mi", 3 "sh".
const fn fixed(i: i64) -> i64 {
    i << 3
}
/// The `i`-th handle the driver was given since setup.
const fn given(i: i64) -> i64 {
    3 | i << 3
}
/// The `i`-th name the call prefers (for `region_open`: "owner/ro", "rw", "mi", "sh", "n0", "n1").
const fn preferred_name(i: i64) -> i64 {
    i << 3
}
/// Scratch buffer at `offset`.
const fn scratch(offset: i64) -> i64 {
    offset << 3
}
const SCRATCH_START: i64 = 4;
/// A small length: `n` bytes (1 to 64).
const fn small(n: i64) -> i64 {
    (n - 1) << 3
}
/// Rights bits.
const fn rights(r: i64) -> i64 {
    r << 3
}
/// A page of the page buffer.
const fn page(i: i64) -> i64 {
    i << 3
}
/// A wild value.
const fn wild(v: i64) -> i64 {
    7 | v << 3
}
const READ: i64 = 1;
const WRITE: i64 = 2;
const MAP_RW: i64 = 3;
const PAGE_AT_4096: i64 = 5 | 1 << 3;
const CURRENT: i64 = 0;
const VERSION_0: i64 = 5;

fn op(name: &str, args: [i64; 6]) -> AbiOp {
    AbiOp::new(name, args)
}

/// A fixed scenario through every import and the driver's argument classes, with the exact status
/// of each call: reads and writes, rights, restrict, grant and cascading revoke, windows (mapped,
/// busy, unmapped, revoked and cleaned up), mirrors (acquire, commit, refresh, conflict), host
/// services, toolkit objects, watches, wait and notify, region creation and bad inputs.
#[test]
fn fixed_sequence_reaches_every_kind_of_call() {
    use Status::*;
    let s = |st: Status| Some(st.code());
    let script: Vec<(AbiOp, Option<i32>)> = vec![
        (op("abi_version", [0; 6]), Some(1)),
        (op("region_write", [fixed(1), 0, SCRATCH_START, small(8), 0, 0]), s(Ok)),
        (op("region_read", [fixed(1), 0, scratch(100), small(8), 0, 0]), s(Ok)),
        (op("region_write", [fixed(0), 0, SCRATCH_START, small(8), 0, 0]), s(PermissionDenied)),
        (op("handle_restrict", [fixed(1), rights(READ), 0, 0, 0, 0]), s(Ok)),
        (op("region_write", [given(0), 0, SCRATCH_START, small(8), 0, 0]), s(PermissionDenied)),
        (op("handle_grant", [fixed(1), 0, rights(READ), 0, 0, 0]), s(Ok)),
        (op("handle_grant", [given(0), 0, rights(WRITE), 0, 0, 0]), s(PermissionDenied)),
        (op("handle_revoke", [fixed(1), 0, 0, 0, 0, 0]), s(Ok)),
        (op("region_read", [given(0), 0, scratch(100), small(8), 0, 0]), s(StaleHandle)),
        (op("region_open", [preferred_name(3), 0, 0, 0, 0, 0]), s(Ok)),
        (op("region_map", [0, page(0), 0, MAP_RW, 0, 0]), s(Ok)),
        (op("region_map", [0, page(2), 0, MAP_RW, 0, 0]), s(Busy)),
        (op("region_write", [fixed(3), 0, SCRATCH_START, small(8), 0, 0]), s(Ok)),
        (op("region_unmap", [0, 0, 0, 0, 0, 0]), s(Ok)),
        (op("region_map", [0, page(4), 0, 0, 0, 0]), s(Ok)),
        (op("handle_close", [1 << 3, 0, 0, 0, 0, 0]), s(Ok)),
        (op("region_unmap", [1 << 3, 0, 0, 0, 0, 0]), s(Ok)),
        (op("mirror_acquire", [0, SCRATCH_START, 0, 0, 0, 0]), s(Ok)),
        (op("mirror_commit", [0, 0, 0, CURRENT, 0, 0]), s(Ok)),
        (op("mirror_refresh", [0, 0, 0, CURRENT, 0, 0]), s(Ok)),
        (op("mirror_commit", [0, 0, 2 << 24, VERSION_0, 0, 0]), s(Conflict)),
        (op("mirror_hint", [0, 0, 0, 0, 0, 0]), s(Ok)),
        (op("mirror_hint", [0, 7 | 1000 << 3, 0, 0, 0, 0]), s(OutOfBounds)),
        (op("fn_open", [0, 0, 0, 0, 0, 0]), s(Ok)),
        (op("fn_call", [0, SCRATCH_START, 0, scratch(200), 0, 0]), s(Ok)),
        (op("fn_call", [0, SCRATCH_START, 0, scratch(200), 5, 0]), s(OutOfBounds)),
        (op("fn_close", [0, 0, 0, 0, 0, 0]), s(Ok)),
        (op("fn_close", [0, 0, 0, 0, 0, 0]), s(StaleHandle)),
        (op("ui_create", [0, 0, 0, 0, 0, 0]), s(Ok)),
        (op("ui_set", [0, 4 << 3, 42, 0, 0, 0]), s(Ok)),
        (op("ui_get", [0, 4 << 3, 0, 0, 0, 0]), s(Ok)),
        (op("ui_set_text", [0, scratch(9000), 4 << 3, 0, 0, 0]), s(Ok)),
        (op("ui_get_text", [0, scratch(20000), 0, 0, 0, 0]), s(Ok)),
        (op("ui_on_event", [0, 0, 0, 7, 0, 0]), s(Ok)),
        (op("ui_send", [0, 3, 1, 0, 0, 0]), s(Ok)),
        (op("ui_on_event", [0, 0, 5, 7, 0, 0]), s(BadCallback)),
        (op("ui_delete", [0, 0, 0, 0, 0, 0]), s(Ok)),
        (op("ui_set", [0, 4 << 3, 42, 0, 0, 0]), s(StaleHandle)),
        (op("region_watch", [fixed(1), 0, 9, 0, 0, 0]), s(Ok)),
        (op("region_watch", [fixed(1), 0, 9, 0, 0, 0]), s(Busy)),
        (op("region_write", [fixed(1), 0, SCRATCH_START, small(8), 0, 0]), s(Ok)),
        (op("region_readv", [fixed(1), 0, 1 << 3, small(8), scratch(100), 1]), s(Ok)),
        (op("region_writev", [fixed(1), 0, 1 << 3, small(8), scratch(100), 1]), s(Ok)),
        (op("region_readv", [fixed(1), 0, 6, small(8), scratch(100), 1]), s(InvalidArgument)),
        (op("region_wait", [fixed(1), 0, 0, 1, 0, 0]), s(Ok)),
        (op("region_wait", [fixed(1), PAGE_AT_4096, 0, 1, 0, 0]), s(TimedOut)),
        (op("region_notify", [fixed(1), 0, 0, 0, 0, 0]), s(Ok)),
        (op("region_unwatch", [fixed(1), 0, 0, 0, 0, 0]), s(Ok)),
        (op("region_unwatch", [fixed(1), 0, 0, 0, 0, 0]), s(NotFound)),
        (op("region_create", [preferred_name(0), 0, 4, 2 << 3, 0, 0]), s(Ok)),
        (op("region_create", [preferred_name(0), 0, 4, 2 << 3, 0, 0]), s(AlreadyExists)),
        (op("region_open", [4 | 10 << 3, 0, 0, 0, 0, 0]), s(NotFound)),
        (op("handle_info", [fixed(1), 0, 0, 0, 0, 0]), s(Ok)),
        (op("handle_info", [fixed(1), wild(0x7fff_fff0), 0, 0, 0, 0]), s(BadPointer)),
        (op("region_read", [fixed(1), wild(-5), scratch(100), small(8), 0, 0]), s(OutOfBounds)),
        (op("handle_restrict", [fixed(1), rights(0x1f), 0, 0, 0, 0]), s(Ok)),
        (op("region_map", [given(3), page(8), 0, 0, 0, 0]), s(WrongMode)),
        (op("region_map", [given(2), page(8), 0, MAP_RW, 0, 0]), s(Ok)),
        (op("handle_close", [7, 0, 0, 0, 0, 0]), s(InvalidHandle)),
        (op("nop", [0; 6]), s(Ok)),
    ];
    let ops: Vec<AbiOp> = script.iter().map(|(o, _)| *o).collect();
    let report = watchdog(60, move || fuzz::run_with(&ops, Options::default())).expect("no invariant broken");
    assert_eq!(report.restarts, 0);
    for (i, ((op, want), got)) in script.iter().zip(&report.statuses).enumerate() {
        assert_eq!(got, want, "op {i}: {} {:?}", op.import(), op.args);
    }
    let reached = fuzz::IMPORTS.iter().zip(&report.succeeded).filter(|(_, n)| **n == 0);
    let missed: Vec<_> = reached.map(|(name, _)| *name).collect();
    assert!(missed.is_empty(), "no call of {missed:?} succeeded");
}

/// The driver's numbering covers every import of `broker_v1` and of the UI toolkit extension exactly
/// once, so the fuzzer reaches the whole ABI whichever module a function lives in.
#[test]
fn the_fuzzer_numbers_every_import_of_both_modules_once() {
    let mut numbered = fuzz::IMPORTS.to_vec();
    numbered.sort_unstable();
    let mut both: Vec<&str> = broker_abi::func::ALL.iter().chain(broker_abi::ui_func::ALL).copied().collect();
    both.sort_unstable();
    assert_eq!(numbered, both);
}

/// The seed corpus of the cargo-fuzz target (`fuzz/corpus/abi/`) decodes to the scenarios its files
/// are named after, and each runs clean with every pointer class on (so a seed never starts the fuzzer
/// on the known window crash).
#[test]
fn seed_corpus_decodes_and_runs_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/abi");
    let mut seeds: Vec<_> =
        std::fs::read_dir(&dir).expect("the seed corpus").flatten().map(|e| e.path()).collect();
    seeds.sort();
    assert!(seeds.len() >= 8, "only {} seeds in {}", seeds.len(), dir.display());
    for seed in seeds {
        let bytes = std::fs::read(&seed).expect("a seed");
        let u = arbitrary::Unstructured::new(&bytes);
        let ops = <Vec<AbiOp> as arbitrary::Arbitrary>::arbitrary_take_rest(u).expect("a sequence of ops");
        assert!(ops.len() >= 5, "{}: {} ops", seed.display(), ops.len());
        let report = watchdog(60, move || fuzz::run_with(&ops, Options::default()))
            .unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        let ok: u32 = report.succeeded.iter().sum();
        assert!(ok >= 2, "{}: only {ok} calls succeeded: {:?}", seed.display(), report.statuses);
    }
}

/// Regression (found by cargo-fuzz): a host copy into a read-only window used to fault in host code and
/// kill the broker; it is now refused with BAD_POINTER.
#[test]
fn host_copies_over_read_only_or_revoked_windows_are_refused() {
    let read_only = [
        AbiOp::new("region_map", [0; 6]), // "sh" read-only at page 0 of the page buffer
        AbiOp::new("region_read", [8, 0, 5, 0, 0, 0]), // region_read("rw", 0, that page, 1 byte)
    ];
    let r = fuzz::run_with(&read_only, OPTIONS).expect("an error status, not a crash");
    assert_eq!(r.statuses[1], Some(Status::BadPointer.code()));
    let revoked = [
        AbiOp::new("region_map", [0, 0, 0, 3, 0, 0]),
        AbiOp::new("handle_close", [24, 0, 0, 0, 0, 0]),
        AbiOp::new("region_write", [8, 0, 5, 0, 0, 0]),
    ];
    let r = fuzz::run_with(&revoked, OPTIONS).expect("an error status, not a crash");
    assert_eq!(r.statuses[2], Some(Status::BadPointer.code()));
}

/// Regression (found by cargo-fuzz): mapping a window over part of a revoked one made the broker forget
/// the revoked one; such a map is now refused, and the revoked window can still be unmapped.
#[test]
fn a_window_over_part_of_a_revoked_one_is_refused() {
    let ops = [
        AbiOp::new("region_map", [0, 0, 0, 3, 0, 0]), // sh (8 KiB) read-write at pages 0-1
        AbiOp::new("handle_close", [24, 0, 0, 0, 0, 0]), // revoke it: pages 0-1 inaccessible
        AbiOp::new("region_open", [24, 0, 0, 0, 0, 0]), // reopen sh
        AbiOp::new("handle_restrict", [24, 6, 13, 5, 0, 0]), // all rights over [4096, 8192)
        AbiOp::new("region_map", [11, 8, 0, 3, 0, 0]), // map it at page 1
        AbiOp::new("region_unmap", [0, 0, 0, 0, 0, 0]), // clean up page 0 with the stale handle
    ];
    let r = fuzz::run_with(&ops, OPTIONS).expect("no invariant broken");
    assert_eq!(r.statuses[4], Some(Status::Busy.code()), "a partial cover of a revoked window is refused");
    assert_eq!(r.statuses[5], Some(Status::Ok.code()), "the revoked window is still known and unmapped");
}
