//! `handle_mode`: what a guest pays to read and write a region through a capability handle, at 8 B,
//! 4 KiB and 1 MiB, against a bare wasmtime host call (the `nop` import) measured in the same run.
//!
//! Each measurement loops inside the guest, so the cost is the host call and the copy, not the entry
//! into wasm. After the criterion group, a summary prints ns/op and the ratio to the baseline.

#![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

use broker::{Mode, Val};
use broker_benches::{best_ns, full_run, Fixture};

const SIZES: [(i32, &str); 3] = [(8, "8B"), (4096, "4KiB"), (1 << 20, "1MiB")];

fn fixture() -> (Fixture, i32) {
    let f = Fixture::new(broker_guests::BENCH_HANDLE_WASM, 1 << 20, Mode::Handle);
    let h = f.call("open_bench", &[]);
    let h = i32::from_ne_bytes(u32::try_from(h).expect("a handle, not an error").to_ne_bytes());
    (f, h)
}

fn handle_mode(c: &mut Criterion) {
    let (f, h) = fixture();
    let mut g = c.benchmark_group("handle_mode");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("host_call_baseline", "nop"), |b| {
        b.iter_custom(|n| f.run("nop_loop", &[], n))
    });
    for (len, label) in SIZES {
        let prefix = [Val::I32(h), Val::I32(len)];
        g.throughput(Throughput::Bytes(u64::try_from(len).unwrap_or(0)));
        g.bench_function(BenchmarkId::new("read", label), |b| {
            b.iter_custom(|n| f.run("read_loop", &prefix, n))
        });
        g.bench_function(BenchmarkId::new("write", label), |b| {
            b.iter_custom(|n| f.run("write_loop", &prefix, n))
        });
    }
    for vectored in [0, 1] {
        let name = if vectored == 0 { "gather_separate" } else { "gather_vectored" };
        g.throughput(Throughput::Elements(16));
        g.bench_function(BenchmarkId::new(name, "16x8B"), |b| {
            b.iter_custom(|n| f.run("gather_loop", &[Val::I32(h), Val::I32(16), Val::I32(vectored)], n))
        });
    }
    g.finish();
}

/// Prints ns/op and the ratio to the no-op host call, all measured now on this machine.
fn summary(full: bool) {
    let (f, h) = fixture();
    let (rounds, scale) = if full { (5, 100) } else { (1, 1) };
    let base = best_ns(rounds, 10_000 * scale, |n| f.run("nop_loop", &[], n));
    println!("\nhandle_mode summary (best of {rounds}; baseline = bare host call through the nop import)");
    println!("{:<8} {:>6} {:>12} {:>10} {:>10}", "op", "size", "ns/op", "x nop", "GB/s");
    println!("{:<8} {:>6} {:>12.1} {:>10.1} {:>10}", "nop", "-", base, 1.0, "-");
    for (len, label) in SIZES {
        let iters = if len >= 1 << 20 { 20 * scale } else { 5_000 * scale };
        for export in ["read_loop", "write_loop"] {
            let ns = best_ns(rounds, iters, |n| f.run(export, &[Val::I32(h), Val::I32(len)], n));
            let gbs = f64::from(len) / ns;
            let name = export.trim_end_matches("_loop");
            println!("{name:<8} {label:>6} {ns:>12.1} {:>10.1} {gbs:>10.2}", ns / base);
        }
    }
    // Gathering 16 fields of 8 bytes: 16 calls against one vectored call, per field.
    println!("\ngather of 16 x 8 B fields, ns per field (x nop)");
    let mut per = [0.0; 2];
    for (vectored, slot) in [0, 1].into_iter().zip(&mut per) {
        let ns = best_ns(rounds, 1_000 * scale, |n| {
            f.run("gather_loop", &[Val::I32(h), Val::I32(16), Val::I32(vectored)], n)
        }) / 16.0;
        *slot = ns;
        let name = if vectored == 0 { "separate" } else { "vectored" };
        println!("{name:<9} {ns:>10.1} ({:.2}x)", ns / base);
    }
    println!("vectored / separate: {:.2}x", per[1] / per[0]);
}

criterion_group!(
    name = benches;
    config = Criterion::default();
    targets = handle_mode
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(full_run());
}
