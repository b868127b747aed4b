//! `handle_mode`: what a guest pays to read and write a region through a capability handle, at 8 B,
//! 4 KiB and 1 MiB, against a bare wasmtime host call (the `nop` import) measured in the same run.
//!
//! Each measurement loops inside the guest, so the cost is the host call and the copy, not the entry
//! into wasm. After the criterion group, a summary prints ns/op and the ratio to the baseline.

#![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

use broker::Mode;
use broker_benches::{ns_per_op, Fixture, Op};

const SIZES: [(i32, &str); 3] = [(8, "8B"), (4096, "4KiB"), (1 << 20, "1MiB")];

fn handle_mode(c: &mut Criterion) {
    let f = Fixture::new(1 << 20, Mode::Handle);
    let mut g = c.benchmark_group("handle_mode");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("host_call_baseline", "nop"), |b| {
        b.iter_custom(|n| f.run(Op::Nop, 0, n))
    });
    for (len, label) in SIZES {
        g.throughput(Throughput::Bytes(u64::try_from(len).unwrap_or(0)));
        g.bench_function(BenchmarkId::new("read", label), |b| b.iter_custom(|n| f.run(Op::Read, len, n)));
        g.bench_function(BenchmarkId::new("write", label), |b| b.iter_custom(|n| f.run(Op::Write, len, n)));
    }
    g.finish();
}

/// Prints ns/op and the ratio to the no-op host call, all measured now on this machine.
fn summary(quick: bool) {
    let f = Fixture::new(1 << 20, Mode::Handle);
    let (rounds, scale) = if quick { (1, 1) } else { (5, 100) };
    let base = ns_per_op(&f, Op::Nop, 0, 10_000 * scale, rounds);
    println!("\nhandle_mode summary (best of {rounds}; baseline = bare host call through the nop import)");
    println!("{:<8} {:>6} {:>12} {:>10} {:>12}", "op", "size", "ns/op", "x nop", "GB/s");
    println!("{:<8} {:>6} {:>12.1} {:>10.1} {:>12}", "nop", "-", base, 1.0, "-");
    for (len, label) in SIZES {
        let iters = if len >= 1 << 20 { 20 * scale } else { 5_000 * scale };
        for op in [Op::Read, Op::Write] {
            let ns = ns_per_op(&f, op, len, iters, rounds);
            #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
            let gbs = f64::from(len) / ns;
            let name = if op == Op::Read { "read" } else { "write" };
            println!("{name:<8} {label:>6} {ns:>12.1} {:>10.1} {gbs:>12.2}", ns / base);
        }
    }
}

criterion_group!(
    name = benches;
    config = Criterion::default();
    targets = handle_mode
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes --bench; under `cargo test` the run is a quick smoke test.
    summary(!std::env::args().any(|a| a == "--bench"));
}
