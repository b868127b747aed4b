#!/usr/bin/env bash
# The peers benchmark (issue 18, item 5; see benches/README.md): Extism's payload handover and wasmtime's
# component resource table, measured in the same run as the broker's handle, mirror and shared modes.
# Builds peers/ (its own workspace: Extism brings a second wasmtime, which CI does not build) in release.
#
# Usage: scripts/peers.sh [--quick]   (--quick: one iteration of each, to check that it runs)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "building peers/ (release; the first build compiles a second wasmtime for Extism: minutes)" >&2
# The root target dir: the broker, its wasmtime and the bench guests are reused from the workspace's builds.
CARGO_TARGET_DIR="$PWD/target" cargo run --release --manifest-path peers/Cargo.toml -- "$@"
