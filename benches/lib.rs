//! Shared set-up for the criterion benches: a broker with one tenant, one region and an instance of a
//! bench guest that runs its measurement loops inside wasm, plus the same-run baseline summary.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use broker::{Broker, BrokerConfig, InstanceConfig, InstanceId, Mode, Quotas, RegionSpec, Val};

/// A broker, the bench guest instance and its handle to the region "bench".
pub struct Fixture {
    /// The broker.
    pub broker: Broker,
    /// The `bench_handle` instance.
    pub guest: InstanceId,
    /// Its handle to "bench", as the guest takes it.
    pub handle: i32,
}

impl Fixture {
    /// Sets up a region of `region_size` bytes in the given mode.
    ///
    /// # Panics
    /// If the broker refuses the set-up (a bench cannot run without it).
    pub fn new(region_size: u64, mode: Mode) -> Fixture {
        let broker = Broker::new(BrokerConfig { workers: 1 }).expect("broker");
        let t = broker
            .create_tenant("bench", Quotas { region_bytes: 1 << 30, ..Quotas::default() })
            .expect("tenant");
        broker.create_region(t, RegionSpec::new("bench", region_size, mode)).expect("region");
        broker.load_module(t, "bench_handle", broker_guests::BENCH_HANDLE_WASM).expect("module");
        let guest =
            broker.start_instance(t, "bench_handle", "g", InstanceConfig::default()).expect("instance");
        let h = broker.call_i64(guest, "open_bench", &[]).expect("open");
        let handle = i32::from_ne_bytes(u32::try_from(h).expect("a handle, not an error").to_ne_bytes());
        Fixture { broker, guest, handle }
    }

    /// Runs `iters` iterations of a guest loop and returns the elapsed time.
    ///
    /// # Panics
    /// If the guest loop reports an error: a bench of failing calls would measure nothing useful.
    pub fn run(&self, op: Op, len: i32, iters: u64) -> Duration {
        let mut left = iters;
        let start = Instant::now();
        while left > 0 {
            let n = i32::try_from(left.min(1 << 30)).unwrap_or(i32::MAX);
            let args: Vec<Val> = match op {
                Op::Nop => vec![Val::I32(n)],
                Op::Read | Op::Write => vec![Val::I32(self.handle), Val::I32(len), Val::I32(n)],
            };
            let rc = self.broker.call_i64(self.guest, op.export(), &args).expect("call");
            assert_eq!(rc, 0, "guest loop {} failed with status {rc}", op.export());
            left -= u64::try_from(n).unwrap_or(0);
        }
        start.elapsed()
    }
}

/// A measured guest operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The no-op import: the baseline cost of a host call.
    Nop,
    /// `region_read` of `len` bytes.
    Read,
    /// `region_write` of `len` bytes.
    Write,
}

impl Op {
    /// The guest export that loops over this operation.
    pub fn export(self) -> &'static str {
        match self {
            Op::Nop => "nop_loop",
            Op::Read => "read_loop",
            Op::Write => "write_loop",
        }
    }
}

/// Nanoseconds per operation: the best of `rounds` runs of `iters` iterations.
pub fn ns_per_op(f: &Fixture, op: Op, len: i32, iters: u64, rounds: u32) -> f64 {
    let best = (0..rounds.max(1)).map(|_| f.run(op, len, iters)).min().unwrap_or_default();
    // Precision is irrelevant at these magnitudes; the conversion is for reporting only.
    #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
    let per = best.as_nanos() as f64 / iters.max(1) as f64;
    per
}
