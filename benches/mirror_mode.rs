//! `mirror_mode`: acquire, refresh and commit of 64 KiB, 1 MiB and 16 MiB mirrors with 0, 1 page,
//! 10% and 100% of the pages dirty, against a native `memcpy` of the same bytes measured in the same
//! run.
//!
//! Loops run inside the guest (`bench_mirror`): mirror A commits, mirror B refreshes. "refresh/unchanged"
//! shows that refreshing an unchanged region costs the same at every size (O(1)); "commit+refresh"
//! is a commit of k dirty pages followed by another mirror's refresh, which copies those k pages.

#![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]

use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

use broker::{Mode, Val};
use broker_benches::{best_ns, full_run, memcpy, Fixture};

const PAGE: u64 = 4096;
const SIZES: [(u64, &str); 3] = [(64 << 10, "64KiB"), (1 << 20, "1MiB"), (16 << 20, "16MiB")];

/// Dirty-page counts for a region of `pages` pages: 0, 1, 10%, 100%.
fn dirty_cases(pages: u64) -> [(u64, &'static str); 4] {
    [(0, "0"), (1, "1page"), ((pages / 10).max(1), "10pct"), (pages, "100pct")]
}

fn fixture(size: u64) -> Fixture {
    let f = Fixture::new(broker_guests::BENCH_MIRROR_WASM, size, Mode::Mirror);
    assert_eq!(f.call("setup", &[]), 0, "bench guest set-up");
    f
}

fn pages_arg(k: u64) -> Val {
    Val::I32(i32::try_from(k).unwrap_or(i32::MAX))
}

fn mirror_mode(c: &mut Criterion) {
    let mut g = c.benchmark_group("mirror_mode");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (size, label) in SIZES {
        let f = fixture(size);
        let bytes = usize::try_from(size).unwrap_or(0);
        g.throughput(Throughput::Bytes(size));
        g.bench_function(BenchmarkId::new("memcpy_baseline", label), |b| b.iter_custom(|n| memcpy(bytes, n)));
        g.bench_function(BenchmarkId::new("acquire", label), |b| {
            b.iter_custom(|n| f.run("acquire_loop", &[], n))
        });
        g.bench_function(BenchmarkId::new("refresh/unchanged", label), |b| {
            b.iter_custom(|n| f.run("refresh_loop", &[], n))
        });
        for (k, dirty) in dirty_cases(size / PAGE) {
            g.bench_function(BenchmarkId::new(format!("commit/{dirty}"), label), |b| {
                b.iter_custom(|n| f.run("commit_loop", &[pages_arg(k)], n))
            });
            g.bench_function(BenchmarkId::new(format!("commit+refresh/{dirty}"), label), |b| {
                b.iter_custom(|n| f.run("commit_refresh_loop", &[pages_arg(k)], n))
            });
        }
    }
    g.finish();
}

/// Prints every operation's time and its ratio to a memcpy of the bytes it must move.
fn summary(full: bool) {
    let rounds = if full { 5 } else { 1 };
    println!(
        "\nmirror_mode summary (best of {rounds}; x moved = op / native memcpy of the bytes the op moves;"
    );
    println!("x region = op / native memcpy of the whole region)");
    println!(
        "{:<8} {:<22} {:>12} {:>12} {:>9} {:>9}",
        "size", "op", "us/op", "moved us", "x moved", "x region"
    );
    for (size, label) in SIZES {
        let f = fixture(size);
        let iters = |budget: u64| if full { (budget / size).clamp(3, 2000) } else { 2 };
        let copy =
            |bytes: u64| best_ns(rounds, iters(1 << 30), |n| memcpy(usize::try_from(bytes).unwrap_or(0), n));
        let full_copy = copy(size);
        let row = |op: &str, ns: f64, moved: f64| {
            let ratio = if moved > 0.0 { format!("{:.2}", ns / moved) } else { "-".into() };
            let (us, moved_us, whole) = (ns / 1e3, moved / 1e3, ns / full_copy);
            println!("{label:<8} {op:<22} {us:>12.2} {moved_us:>12.2} {ratio:>9} {whole:>9.3}");
        };
        row("acquire", best_ns(rounds, iters(1 << 30), |n| f.run("acquire_loop", &[], n)), full_copy);
        let unchanged = best_ns(rounds, if full { 200_000 } else { 10 }, |n| f.run("refresh_loop", &[], n));
        row("refresh/unchanged", unchanged, 0.0);
        for (k, dirty) in dirty_cases(size / PAGE) {
            // Nothing to move for a clean commit: report its ratio to the whole region only.
            let moved = if k == 0 { 0.0 } else { copy(k * PAGE) };
            let commit = best_ns(rounds, iters(1 << 29), |n| f.run("commit_loop", &[pages_arg(k)], n));
            row(&format!("commit/{dirty}"), commit, moved);
            let both = best_ns(rounds, iters(1 << 29), |n| f.run("commit_refresh_loop", &[pages_arg(k)], n));
            row(&format!("commit+refresh/{dirty}"), both, moved);
        }
    }
}

criterion_group!(
    name = benches;
    config = Criterion::default();
    targets = mirror_mode
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(full_run());
}
