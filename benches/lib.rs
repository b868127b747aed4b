//! Shared set-up for the criterion benches: a broker with one tenant, one region and an instance of a
//! bench guest whose measurement loops run inside wasm, and helpers for the same-run baseline summaries.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use broker::mode::ConflictPolicy;
use broker::{
    Broker, BrokerConfig, InstanceConfig, InstanceId, Mode, Quotas, RegionId, RegionSpec, Rights, Val,
};

/// A broker, a region "bench" and an instance of a bench guest.
pub struct Fixture {
    /// The broker.
    pub broker: Broker,
    /// The bench guest instance.
    pub guest: InstanceId,
    /// The region "bench".
    pub region: RegionId,
}

impl Fixture {
    /// Sets up a region of `region_size` bytes in `mode` and starts the guest.
    ///
    /// # Panics
    /// If the broker refuses the set-up (a bench cannot run without it).
    pub fn new(wasm: &[u8], region_size: u64, mode: Mode) -> Fixture {
        let broker = Broker::new(BrokerConfig { workers: 1, ..BrokerConfig::default() }).expect("broker");
        let quotas = Quotas { region_bytes: 1 << 30, memory_bytes: 4 << 30, ..Quotas::default() };
        let t = broker.create_tenant("bench", quotas).expect("tenant");
        let spec = RegionSpec::new("bench", region_size, mode)
            .with_members(Rights::ALL)
            .with_policy(ConflictPolicy::LastWriterWins);
        let region = broker.create_region(t, spec).expect("region");
        broker.load_module(t, "guest", wasm).expect("module");
        let config = InstanceConfig { max_memory_bytes: 1 << 30, ..InstanceConfig::default() };
        let guest = broker.start_instance(t, "guest", "g", config).expect("instance");
        Fixture { broker, guest, region }
    }

    /// Calls a guest export returning one integer.
    ///
    /// # Panics
    /// If the call fails.
    pub fn call(&self, export: &str, args: &[Val]) -> i64 {
        self.broker.call_i64(self.guest, export, args).expect("call")
    }

    /// Runs `iters` iterations of a guest loop `export(prefix.., n)` and returns the elapsed time.
    ///
    /// # Panics
    /// If the guest loop reports an error: a bench of failing calls would measure nothing useful.
    pub fn run(&self, export: &str, prefix: &[Val], iters: u64) -> Duration {
        let mut left = iters;
        let start = Instant::now();
        while left > 0 {
            let n = i32::try_from(left.min(1 << 30)).unwrap_or(i32::MAX);
            let mut args = prefix.to_vec();
            args.push(Val::I32(n));
            let rc = self.call(export, &args);
            assert_eq!(rc, 0, "guest loop {export} failed with status {rc}");
            left -= u64::try_from(n).unwrap_or(0);
        }
        start.elapsed()
    }
}

/// Nanoseconds per iteration: the best of `rounds` runs of `iters` iterations of `f`.
pub fn best_ns(rounds: u32, iters: u64, mut f: impl FnMut(u64) -> Duration) -> f64 {
    let best = (0..rounds.max(1)).map(|_| f(iters)).min().unwrap_or_default();
    #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
    let per = best.as_nanos() as f64 / iters.max(1) as f64;
    per
}

/// Times `iters` native copies of `bytes` bytes between two buffers: the memcpy baseline.
pub fn memcpy(bytes: usize, iters: u64) -> Duration {
    let src = vec![7u8; bytes];
    let mut dst = vec![0u8; bytes];
    let start = Instant::now();
    for _ in 0..iters {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    start.elapsed()
}

/// Whether the bench binary runs under `cargo bench` (which passes `--bench`) rather than as a quick
/// smoke test under `cargo test`.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}
