#!/usr/bin/env bash
# The reliability suite, run longer than CI can: more property-test cases, a longer crash loop, a
# longer load test and (if cargo-fuzz is available) a fuzzing session; figures are printed at the end.
# CI runs the short, deterministic versions of the same tests through `cargo test --workspace`.
#
# Usage: scripts/stress.sh [minutes]   (default 10; split between the parts)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
seconds=$((minutes * 60))
log=$(mktemp -d)
summary=()

step() { echo; echo "== $*"; }

step "build (release)"
cargo build --release -p broker-cli
cargo test --release --no-run -p broker -p broker-cli -p broker-tests >/dev/null 2>&1

step "property tests: capability model, mirror commits, ABI driver ($((seconds / 4)) s budget)"
start=$(date +%s)
PROPTEST_CASES=${PROPTEST_CASES:-2000} timeout $((seconds / 4 + 60)) \
  cargo test --release -p broker --lib capability::tests::model -- --nocapture >"$log/model.txt" 2>&1 && model=ok || model=FAILED
PROPTEST_CASES=${PROPTEST_CASES:-200} timeout $((seconds / 4 + 60)) \
  cargo test --release -p broker-tests -- mirror::concurrent fuzz >"$log/props.txt" 2>&1 && props=ok || props=FAILED
summary+=("property tests: capability model $model, mirror + ABI driver $props ($(( $(date +%s) - start )) s)")

step "instruction-level fuzzing: loads, stores, bulk memory and atomics on shared windows under revocation"
start=$(date +%s)
PROPTEST_CASES=${INSN_CASES:-3000} timeout $((seconds / 4 + 120)) \
  cargo test --release -p broker-tests --test all -- isolation::instruction_level --nocapture >"$log/insn.txt" 2>&1 \
  && insn=ok || insn=FAILED
summary+=("$(grep -o 'instruction fuzzing: .*' "$log/insn.txt" | tail -1 || echo 'instruction fuzzing: no figure'), $insn ($(( $(date +%s) - start )) s)")

step "crash loop: SIGKILL the daemon at random moments"
iterations=$((seconds / 2))
start=$(date +%s)
BROKER_CRASH_ITERATIONS=$iterations cargo test --release -p broker-cli --test process sigkill_at_random >"$log/crash.txt" 2>&1 \
  && crash=ok || crash=FAILED
summary+=("crash loop: $iterations kills, $crash ($(( $(date +%s) - start )) s)")

step "load test: 16 clients"
./target/release/broker loadtest --clients 16 --seconds $((seconds / 4)) --json >"$log/load.json"
summary+=("load test: $(python3 -c "import json,sys; r=json.load(open('$log/load.json')); print(f\"{r['ops']} ops, {r['errors']} errors, {r['ops_per_sec']:.0f} ops/s, p99 {r['p99_us']:.0f} us, rss {r['rss_start']>>20} -> {r['rss_end']>>20} MiB\")")")

if [ -x scripts/fuzz.sh ] && (command -v cargo-fuzz >/dev/null 2>&1 || cargo +nightly fuzz --help >/dev/null 2>&1); then
  step "fuzz the host ABI"
  scripts/fuzz.sh $((seconds / 4)) >"$log/fuzz.txt" 2>&1 && fuzz=ok || fuzz=FAILED
  summary+=("fuzzing: $fuzz, $(grep -Eo '#[0-9]+' "$log/fuzz.txt" | tail -1 | tr -d '#') executions")
else
  summary+=("fuzzing: skipped (cargo-fuzz not installed; scripts/fuzz.sh installs it)")
fi

echo
echo "== stress summary (logs in $log)"
for line in "${summary[@]}"; do echo "  $line"; done
! printf '%s\n' "${summary[@]}" | grep -q FAILED
