#!/usr/bin/env bash
# Fuzzes the host ABI with cargo-fuzz (libFuzzer): the `abi` target in fuzz/ plays random sequences of raw
# `broker_v1` calls through the `fuzz_driver` guest and checks the broker's invariants after every call
# (see tests/src/fuzz.rs). Starts from the committed seed corpus in fuzz/corpus/abi (read only: what
# libFuzzer finds goes to fuzz/target/corpus/abi, which later runs reuse); a crash leaves its input in
# fuzz/artifacts/abi/ (replay it with `cargo +nightly fuzz run abi <file>`).
#
# Usage: scripts/fuzz.sh [seconds] [extra libFuzzer flags...]   (default 60 seconds)
# BROKER_FUZZ_AVOID_WINDOW_POINTERS=1 keeps pointers away from the driver's own shared windows, to fuzz
# around the known crash of host copies into read-only or revoked windows.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz
fi
# The guests are built for wasm32 by the nightly toolchain too (guests/build.rs).
rustup target add --toolchain nightly wasm32-unknown-unknown >/dev/null

mkdir -p fuzz/target/corpus/abi
cargo +nightly fuzz run abi fuzz/target/corpus/abi fuzz/corpus/abi -- -max_total_time="$seconds" "$@"
