//! Runs the matrix: for each size and mode, a region filled with a known pattern and one instance of
//! the `bench_matrix` guest per reader; for each pattern and reader count, a timed cell of guest calls,
//! and (once per size, pattern and readers) a native cell doing the same work on the same mapping
//! from host threads.
//!
//! A cell first runs one warm-up call per reader (it pays for first touches and the mirror's first
//! refresh, and calibrates how many ops one call makes, aiming at an eighth of the cell time), then
//! every reader calls in a loop until the cell time is spent. Readers start together at a barrier.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::metrics::{self, Latency, ProgressEvent, ProgressSink};
use broker::mode::{ConflictPolicy, Mode};
use broker::region::{Region, RegionId, RegionSpec};
use broker::Rights;
use broker::{Broker, BrokerConfig, InstanceConfig, InstanceId, Quotas, TenantId, Val};

use super::config::{format_size, BenchConfig, Pattern};
use super::model::{Cell, Machine, Measured, Subject};
use super::report::Report;
use super::BenchError;

/// Accesses between refreshes in the guest's `random` and `write1`: the warm-up call does one batch.
const BATCH: u64 = 1024;

/// Bytes a scan copies at a time, as in the guest.
const CHUNK: usize = 4096;

/// The module and region names inside the bench's own broker.
const MODULE: &str = "bench_matrix";
const REGION: &str = "bench";

/// The `index`-th u64 of a filled region (little-endian in memory): splitmix64, so scans sum
/// unpredictable words and a wrong or missing page changes the checksum.
pub fn fill_word(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The checksum a scan of a filled region of `size` bytes returns: the wrapping sum of its words.
pub fn expected_checksum(size: u64) -> u64 {
    (0..size / 8).fold(0u64, |sum, i| sum.wrapping_add(fill_word(i)))
}

/// The guest's and the native baseline's generator: xorshift64 seeded with an odd number.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// A distinct seed per reader and call, so readers and calls touch different offsets.
fn seed(reader: usize, call: u64) -> u64 {
    fill_word((u64::try_from(reader).unwrap_or(0) << 32) ^ call) | 1
}

/// Linear memory one instance may grow to for a region of `size` bytes: the mirror copy or the shared
/// window, twice over for allocator slack, plus the guest's own heap and stack.
fn instance_memory(size: u64) -> u64 {
    2 * size + (64 << 20)
}

/// Quotas for the bench tenant: one region at a time, one instance per reader, and memory for every
/// instance plus the broker's mirror shadows (one region-sized copy per mirror).
fn quotas(max_readers: u64, max_size: u64) -> Quotas {
    Quotas {
        region_bytes: max_size + (1 << 20),
        regions: 4,
        instances: max_readers + 1,
        handles: 4096,
        memory_bytes: max_readers * (instance_memory(max_size) + max_size),
        ..Quotas::default()
    }
}

fn broker_error(what: impl Into<String>) -> impl FnOnce(broker::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Broker { what, source }
}

fn readers_u64(readers: usize) -> u64 {
    u64::try_from(readers).unwrap_or(u64::MAX)
}

/// Runs the matrix and returns every cell, the ratios to native and a recommendation per
/// (size, pattern, readers).
///
/// # Errors
/// [`BenchError::Arg`] for a bad config; [`BenchError::Broker`] or [`BenchError::Guest`] if the broker
/// or the guest refuses something; [`BenchError::ChecksumMismatch`] if a scan saw other bytes than
/// the region holds (a broker bug).
pub fn run(config: &BenchConfig, progress: &dyn ProgressSink) -> Result<Report, BenchError> {
    let config = config.normalized();
    config.validate()?;
    let max_readers = config.readers.iter().copied().max().unwrap_or(1);
    let max_size = config.sizes.iter().copied().max().unwrap_or(4096);
    let broker = Broker::new(BrokerConfig { workers: max_readers.max(2), ..BrokerConfig::default() })
        .map_err(broker_error("broker"))?;
    let tenant = broker
        .create_tenant("bench", quotas(readers_u64(max_readers), max_size))
        .map_err(broker_error("tenant"))?;
    broker.load_module(tenant, MODULE, broker_guests::BENCH_MATRIX_WASM).map_err(broker_error("module"))?;

    let total = u64::try_from(config.cell_count()).unwrap_or(u64::MAX);
    progress.event(ProgressEvent::Start { total, label: "broker bench" });
    let mut cells = Vec::new();
    let mut done = 0u64;
    let mut advance = |cell: &Cell| {
        done += 1;
        let message = cell.describe();
        progress.event(ProgressEvent::Advance { done, total, message: &message });
    };
    for &size in &config.sizes {
        let expected = expected_checksum(size);
        for (m, &mode) in config.modes.iter().enumerate() {
            let rss_reset = metrics::reset_peak_rss();
            let group = Group::start(&broker, tenant, mode, size, max_readers)?;
            let first = cells.len();
            for &pattern in &config.patterns {
                for &readers in &config.readers {
                    if pattern == Pattern::Scan {
                        group.fill()?;
                    }
                    let cell = group.measure(pattern, readers, config.cell, expected)?;
                    advance(&cell);
                    cells.push(cell);
                    // The native baseline runs once per (size, pattern, readers), on this same mapping.
                    if m == 0 {
                        let cell = group.measure_native(pattern, readers, config.cell, expected)?;
                        advance(&cell);
                        cells.push(cell);
                    }
                }
            }
            let peak = if rss_reset { metrics::peak_rss_bytes() } else { None };
            for cell in cells.iter_mut().skip(first).filter(|c| c.subject != Subject::Native) {
                cell.peak_rss_bytes = peak;
            }
        }
    }
    progress.event(ProgressEvent::Finish);
    Ok(Report::new(Machine::this(), &config, cells))
}

/// One mode and size: the region and one started, opened instance per reader. Dropping it stops the
/// instances and destroys the region.
struct Group<'b> {
    broker: &'b Broker,
    mode: Mode,
    size: u64,
    region: RegionId,
    memory: Arc<Region>,
    instances: Vec<InstanceId>,
}

impl<'b> Group<'b> {
    fn start(
        broker: &'b Broker,
        tenant: TenantId,
        mode: Mode,
        size: u64,
        readers: usize,
    ) -> Result<Group<'b>, BenchError> {
        let label = format!("{mode} {}", format_size(size));
        // Merge: commits of disjoint pages both land; a commit touching a page another reader changed
        // since it last refreshed is refused and counted (see the guest's `write1`).
        let spec =
            RegionSpec::new(REGION, size, mode).with_members(Rights::ALL).with_policy(ConflictPolicy::Merge);
        let region =
            broker.create_region(tenant, spec).map_err(broker_error(format!("region for {label}")))?;
        let memory = broker.region_ref(region).map_err(broker_error(format!("region for {label}")))?;
        let mut group = Group { broker, mode, size, region, memory, instances: Vec::new() };
        group.fill()?;
        let config = InstanceConfig {
            call_timeout: Duration::from_secs(60),
            max_memory_bytes: instance_memory(size),
            ..InstanceConfig::default()
        };
        for r in 0..readers {
            let id = broker
                .start_instance(tenant, MODULE, &format!("reader-{r}"), config.clone())
                .map_err(broker_error(format!("instance {r} for {label}")))?;
            group.instances.push(id);
            group.call(r, "open", &[])?;
        }
        Ok(group)
    }

    /// Writes the known pattern over the whole region (through the host API, so versions move and
    /// mirrors pick it up on their next refresh).
    fn fill(&self) -> Result<(), BenchError> {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut offset = 0u64;
        while offset < self.size {
            let n = (self.size - offset).min(1 << 20);
            buf.clear();
            buf.extend((offset / 8..(offset + n) / 8).flat_map(|i| fill_word(i).to_le_bytes()));
            self.broker
                .write_region(self.region, offset, &buf)
                .map_err(broker_error("filling the region"))?;
            offset += n;
        }
        Ok(())
    }

    /// Calls a guest export of reader `r` that returns a status; anything but 0 is an error.
    fn call(&self, r: usize, export: &'static str, args: &[Val]) -> Result<i64, BenchError> {
        let id = *self.instances.get(r).ok_or(BenchError::Internal("reader without an instance"))?;
        let v = self
            .broker
            .call_i64(id, export, args)
            .map_err(broker_error(format!("calling {export} on reader {r} ({} mode)", self.mode)))?;
        Ok(v)
    }

    fn run_pattern(&self, r: usize, pattern: Pattern, iters: u64, seed: u64) -> Result<(), BenchError> {
        let n = Val::I32(i32::try_from(iters).unwrap_or(i32::MAX));
        let seed = Val::I64(i64::from_ne_bytes(seed.to_ne_bytes()));
        let args = match pattern {
            Pattern::Scan => vec![n],
            Pattern::Random | Pattern::Write1 => vec![n, seed],
        };
        match self.call(r, pattern.export(), &args)? {
            0 => Ok(()),
            code => Err(BenchError::Guest { export: pattern.export(), mode: self.mode, code }),
        }
    }

    fn measure(
        &self,
        pattern: Pattern,
        readers: usize,
        budget: Duration,
        expected: u64,
    ) -> Result<Cell, BenchError> {
        let before = self.broker.region_traffic(self.region).map_err(broker_error("traffic"))?;
        let measured = timed(readers, budget, warm_iters(pattern), |r, iters, s| {
            self.run_pattern(r, pattern, iters, s)
        })?;
        let after = self.broker.region_traffic(self.region).map_err(broker_error("traffic"))?;
        let mut checksum = None;
        if pattern == Pattern::Scan {
            for r in 0..readers {
                let got = u64::from_ne_bytes(self.call(r, "checksum", &[])?.to_ne_bytes());
                if got != expected {
                    let subject = Subject::Mode(self.mode);
                    return Err(BenchError::ChecksumMismatch { subject, size: self.size, got, expected });
                }
                checksum = Some(got);
            }
        }
        let mut cell = Cell::new(Subject::Mode(self.mode), self.size, pattern, readers, &measured);
        cell.checksum = checksum;
        cell.commits = after.commits - before.commits.min(after.commits);
        cell.conflicts = after.conflicts - before.conflicts.min(after.conflicts);
        Ok(cell)
    }

    fn measure_native(
        &self,
        pattern: Pattern,
        readers: usize,
        budget: Duration,
        expected: u64,
    ) -> Result<Cell, BenchError> {
        let memory = self.memory.memory();
        let measured = timed(readers, budget, warm_iters(pattern), |_, iters, s| {
            native(memory, pattern, iters, s).map(|_| ())
        })?;
        let mut cell = Cell::new(Subject::Native, self.size, pattern, readers, &measured);
        if pattern == Pattern::Scan {
            let got = native(memory, Pattern::Scan, 1, 1)?;
            if got != expected {
                return Err(BenchError::ChecksumMismatch {
                    subject: Subject::Native,
                    size: self.size,
                    got,
                    expected,
                });
            }
            cell.checksum = Some(got);
        }
        Ok(cell)
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        // Best effort: the bench's broker is dropped at the end of the run anyway. Deleted, not just
        // stopped, so the next group can start readers of the same names.
        for id in self.instances.drain(..) {
            let _ = self.broker.delete_instance(id);
        }
        let _ = self.broker.destroy_region(self.region);
    }
}

/// Ops of the warm-up call: one scan pass, or one batch of accesses.
fn warm_iters(pattern: Pattern) -> u64 {
    match pattern {
        Pattern::Scan => 1,
        Pattern::Random | Pattern::Write1 => BATCH,
    }
}

/// The native baseline: the guest's pattern, done by host code directly on the region's mapping
/// (relaxed atomic u64 loads and stores, page-sized copies for the scan). Returns the checksum as the
/// guest computes it.
fn native(
    memory: &broker::region::RegionMemory,
    pattern: Pattern,
    iters: u64,
    seed: u64,
) -> Result<u64, BenchError> {
    let len = memory.len();
    let words = (len / 8).max(1);
    let mut rng = seed | 1;
    let mut acc = 0u64;
    match pattern {
        Pattern::Scan => {
            let mut chunk = [0u8; CHUNK];
            for _ in 0..iters {
                acc = 0;
                let mut offset = 0u64;
                while offset < len {
                    let n = usize::try_from((len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
                    let part = chunk.get_mut(..n).unwrap_or_default();
                    memory.copy_out(offset, part)?;
                    for word in part.chunks_exact(8) {
                        let mut bytes = [0u8; 8];
                        bytes.copy_from_slice(word);
                        acc = acc.wrapping_add(u64::from_le_bytes(bytes));
                    }
                    offset += CHUNK as u64;
                }
            }
        }
        Pattern::Random => {
            for _ in 0..iters {
                let offset = (next(&mut rng) % words) * 8;
                acc = acc.wrapping_add(u64::from_le(memory.load_u64(offset)?));
            }
        }
        Pattern::Write1 => {
            for _ in 0..iters {
                let r = next(&mut rng);
                let offset = ((r >> 7) % words) * 8;
                if r.is_multiple_of(100) {
                    memory.store_u64(offset, (acc ^ r).to_le())?;
                } else {
                    acc = acc.wrapping_add(u64::from_le(memory.load_u64(offset)?));
                }
            }
        }
    }
    Ok(acc)
}

/// Runs `op(reader, iters, seed)` on `readers` threads: a warm-up call each with `warm` ops, then calls
/// with a calibrated op count until `budget` is spent.
fn timed<F>(readers: usize, budget: Duration, warm: u64, op: F) -> Result<Measured, BenchError>
where
    F: Fn(usize, u64, u64) -> Result<(), BenchError> + Sync,
{
    let warmups = parallel(readers, |r| {
        let t = Instant::now();
        op(r, warm, seed(r, 0))?;
        Ok(t.elapsed())
    })?;
    let slowest = warmups.into_iter().max().unwrap_or(Duration::from_millis(1));
    let target = (budget / 8).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let scaled = u128::from(warm) * target.as_nanos() / slowest.as_nanos().max(1);
    let iters = u64::try_from(scaled).unwrap_or(u64::MAX).clamp(1, u64::from(i32::MAX.unsigned_abs()));
    let barrier = Barrier::new(readers);
    let runs = parallel(readers, |r| {
        barrier.wait();
        let start = Instant::now();
        let (mut ops, mut per_op, mut call) = (0u64, Latency::new(), 1u64);
        loop {
            let t = Instant::now();
            op(r, iters, seed(r, call))?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            per_op.record_ns(ns / iters);
            ops += iters;
            call += 1;
            if start.elapsed() >= budget {
                return Ok((ops, start.elapsed(), per_op));
            }
        }
    })?;
    let mut measured = Measured { ops: 0, wall: Duration::ZERO, per_op: Latency::new() };
    for (ops, wall, per_op) in runs {
        measured.ops += ops;
        measured.wall = measured.wall.max(wall);
        measured.per_op.merge(&per_op);
    }
    Ok(measured)
}

/// Runs `f(0..n)` on `n` scoped threads and collects the results in order; the first error wins.
fn parallel<T: Send>(
    n: usize,
    f: impl Fn(usize) -> Result<T, BenchError> + Sync,
) -> Result<Vec<T>, BenchError> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let f = &f;
                s.spawn(move || f(r))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::Internal("a bench thread panicked"))))
            .collect()
    })
}
