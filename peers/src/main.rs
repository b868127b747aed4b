//! The peers benchmark (issue 18, item 5): the broker next to what users would pick instead, measured
//! in one run on one machine, printed as ratios.
//!
//! - **Payload handover.** A host hands a 64 KiB or 1 MiB payload to a plugin, the plugin adds 1 to
//!   every little-endian u64 of it, and the host takes the result back: through Extism (the `extism`
//!   crate, whose `Plugin::call` copies the input into its kernel memory and the output back out), and
//!   through the broker in handle, mirror and shared mode (the host writes the region, the `bench_matrix`
//!   guest's `handover` export changes it through `broker_guest::View`, the host reads it back).
//! - **Handle resolution floor.** A lookup in wasmtime's component-model `ResourceTable` (what a
//!   component's `resource` handles resolve through), next to a bare host call and the broker's 8-byte
//!   handle read.
//!
//! Usage: `scripts/peers.sh [--quick]` (`--quick`: one iteration of each, to check that it runs).

use std::hint::black_box;
use std::time::{Duration, Instant};

use broker::{Mode, Val};
use broker_benches::{best_ns, Fixture};

const SIZES: [(usize, &str); 2] = [(64 << 10, "64 KiB"), (1 << 20, "1 MiB")];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, scale) = if quick { (1, 0) } else { (5, 1) };
    println!("peers benchmark ({}), best of {rounds}", if quick { "quick" } else { "full" });

    println!("\npayload handover: host -> plugin (adds 1 to every u64) -> host, us per handover");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10}   {:>14} {:>14}",
        "size", "extism", "handle", "mirror", "shared", "extism/handle", "extism/shared"
    );
    let modes = [Mode::Handle, Mode::Mirror, Mode::Shared];
    let fixtures: Vec<Fixture> = modes.iter().map(|m| broker_fixture(*m)).collect();
    let mut plugin = extism_plugin();
    for (size, label) in SIZES {
        let iters = if quick {
            1
        } else if size >= 1 << 20 {
            200 * scale
        } else {
            2_000 * scale
        };
        let payload = payload(size);
        let extism = best_ns(rounds, iters, |n| extism_handover(&mut plugin, &payload, n));
        let broker: Vec<f64> =
            fixtures.iter().map(|f| best_ns(rounds, iters, |n| broker_handover(f, &payload, n))).collect();
        let us = |ns: f64| ns / 1000.0;
        println!(
            "{label:<8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}   {:>13.2}x {:>13.2}x",
            us(extism),
            us(broker[0]),
            us(broker[1]),
            us(broker[2]),
            extism / broker[0],
            extism / broker[2]
        );
    }

    println!("\nhandle resolution, ns per operation");
    let handle = Fixture::new(broker_guests::BENCH_HANDLE_WASM, 1 << 20, Mode::Handle);
    let h = handle.call("open_bench", &[]);
    let h = i32::from_ne_bytes(u32::try_from(h).expect("a handle, not an error").to_ne_bytes());
    let iters = if quick { 1 } else { 1_000_000 };
    let nop = best_ns(rounds, iters, |n| handle.run("nop_loop", &[], n));
    let read8 = best_ns(rounds, iters, |n| handle.run("read_loop", &[Val::I32(h), Val::I32(8)], n));
    let get = best_ns(rounds, iters * 10, resource_table_gets);
    println!("{:<52} {:>8.1}", "bare host call (the guest's nop import)", nop);
    println!("{:<52} {:>8.1}", "wasmtime component ResourceTable::get (host only)", get);
    println!("{:<52} {:>8.1}", "floor: a host call that resolves a resource (sum)", nop + get);
    println!(
        "{:<52} {:>8.1}   {:.2}x the floor",
        "broker: 8-byte region_read through a handle",
        read8,
        read8 / (nop + get)
    );
}

/// The payload: every u64 is its own index.
fn payload(size: usize) -> Vec<u8> {
    (0..size / 8).flat_map(|i| u64::try_from(i).unwrap_or(0).to_le_bytes()).collect()
}

/// Panics unless `back` is `payload` with every u64 one higher: a bench of a wrong handover measures
/// nothing.
fn check(payload: &[u8], back: &[u8], who: &str) {
    assert_eq!(payload.len(), back.len(), "{who}: length");
    for (i, (a, b)) in payload.chunks_exact(8).zip(back.chunks_exact(8)).enumerate() {
        let (a, b) =
            (u64::from_le_bytes(a.try_into().expect("8")), u64::from_le_bytes(b.try_into().expect("8")));
        assert_eq!(b, a.wrapping_add(1), "{who}: word {i}");
    }
}

fn extism_plugin() -> extism::Plugin {
    let wasm = std::fs::read(env!("PEERS_PLUGIN")).expect("the Extism plugin was built by build.rs");
    let manifest = extism::Manifest::new([extism::Wasm::data(wasm)]);
    extism::Plugin::new(&manifest, [], false).expect("Extism loads the plugin")
}

fn extism_handover(plugin: &mut extism::Plugin, payload: &[u8], n: u64) -> Duration {
    let mut back = vec![0u8; payload.len()];
    let start = Instant::now();
    for _ in 0..n {
        let out: &[u8] = plugin.call("handover", black_box(payload)).expect("the plugin runs");
        back.copy_from_slice(out);
    }
    let elapsed = start.elapsed();
    check(payload, &back, "extism");
    elapsed
}

fn broker_fixture(mode: Mode) -> Fixture {
    let f = Fixture::new(broker_guests::BENCH_MATRIX_WASM, 1 << 20, mode);
    assert_eq!(f.call("open", &[]), 0, "the bench guest opens its region in {mode:?} mode");
    f
}

fn broker_handover(f: &Fixture, payload: &[u8], n: u64) -> Duration {
    let mut back = vec![0u8; payload.len()];
    let len = Val::I32(i32::try_from(payload.len()).expect("payloads are at most 1 MiB"));
    let start = Instant::now();
    for _ in 0..n {
        f.broker.write_region(f.region, 0, black_box(payload)).expect("host write");
        let rc = f.broker.call_i64(f.guest, "handover", std::slice::from_ref(&len)).expect("the guest runs");
        assert_eq!(rc, 0, "handover failed with status {rc}");
        f.broker.read_region(f.region, 0, &mut back).expect("host read");
    }
    let elapsed = start.elapsed();
    check(payload, &back, "broker");
    elapsed
}

/// `n` lookups of one resource in a component-model resource table.
fn resource_table_gets(n: u64) -> Duration {
    let mut table = wasmtime_component::component::ResourceTable::new();
    let r = table.push(42u64).expect("a fresh table has room");
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(*table.get(black_box(&r)).expect("live resource"));
    }
    let elapsed = start.elapsed();
    assert_eq!(sum, 42u64.wrapping_mul(n));
    elapsed
}
