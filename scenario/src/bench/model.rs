//! The bench's data model: what a cell measured ([`Measured`], from the runner) and how it is reported
//! ([`Cell`], [`Subject`]), and where and how the run was made ([`Machine`], [`Settings`]). The runner
//! produces these, the recommendation and the report consume them; none of them imports another.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::{format_ns, Latency, LatencySummary};
use broker::mode::Mode;

use super::config::{format_size, Pattern};

/// What one cell measured.
pub(crate) struct Measured {
    /// Ops completed by all readers together.
    pub(crate) ops: u64,
    /// From the barrier to the last reader's end.
    pub(crate) wall: Duration,
    /// Nanoseconds per op of each call (the call's time over its ops), all readers merged.
    pub(crate) per_op: Latency,
}

/// Serialises a value as its `Display` text (modes and patterns appear as `"mirror"`, `"scan"`).
pub(crate) fn display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Who did the work in a cell: guests through a mode, or host code on the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The native baseline: host threads on the region's mapping.
    Native,
    /// Guest instances through a region in this mode.
    Mode(Mode),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Native => f.write_str("native"),
            Subject::Mode(m) => m.fmt(f),
        }
    }
}

/// One measured cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Native or a mode.
    #[serde(rename = "mode", serialize_with = "display")]
    pub subject: Subject,
    /// Region size in bytes.
    pub size: u64,
    /// Region size as labelled (`64KiB`).
    pub size_label: String,
    /// Access pattern.
    #[serde(serialize_with = "display")]
    pub pattern: Pattern,
    /// Concurrent readers.
    pub readers: usize,
    /// Ops completed by all readers together (a scan pass, or one 8-byte access).
    pub ops: u64,
    /// Measured time, from the readers' common start to the last one's end.
    pub seconds: f64,
    /// Ops per second, all readers together.
    pub ops_per_sec: f64,
    /// Bytes the pattern touched per second (scan: the region per pass; otherwise 8 per op), in MB/s.
    pub mb_per_sec: f64,
    /// Time one reader spends per op (measured time x readers / ops), in nanoseconds.
    pub ns_per_op: f64,
    /// `ns_per_op` over the native cell's (same size, pattern and readers); `None` for native.
    pub ratio_to_native: Option<f64>,
    /// Per call: its time over its ops, in nanoseconds.
    pub per_op_latency: LatencySummary,
    /// A scan's checksum (every reader's agreed), checked against the bytes the host wrote.
    pub checksum: Option<u64>,
    /// Mirror commits that wrote pages during the cell (warm-up included).
    pub commits: u64,
    /// Mirror commits refused for a conflict during the cell (warm-up included).
    pub conflicts: u64,
    /// The process's peak resident memory while this mode and size were set up and measured.
    pub peak_rss_bytes: Option<u64>,
}

fn f64_of(n: u64) -> f64 {
    // Counts in a bench stay far below 2^53, where u64 -> f64 is exact.
    n as f64
}

impl Cell {
    pub(crate) fn new(subject: Subject, size: u64, pattern: Pattern, readers: usize, m: &Measured) -> Cell {
        let seconds = m.wall.as_secs_f64().max(1e-9);
        let ops = f64_of(m.ops.max(1));
        let ops_per_sec = f64_of(m.ops) / seconds;
        Cell {
            subject,
            size,
            size_label: format_size(size),
            pattern,
            readers,
            ops: m.ops,
            seconds,
            ops_per_sec,
            mb_per_sec: ops_per_sec * f64_of(pattern.bytes_per_op(size)) / 1e6,
            ns_per_op: seconds * 1e9 * f64_of(u64::try_from(readers).unwrap_or(1)) / ops,
            ratio_to_native: None,
            per_op_latency: m.per_op.summary(),
            checksum: None,
            commits: 0,
            conflicts: 0,
            peak_rss_bytes: None,
        }
    }

    /// Whether this cell belongs to the (size, pattern, readers) key.
    pub fn is(&self, size: u64, pattern: Pattern, readers: usize) -> bool {
        self.size == size && self.pattern == pattern && self.readers == readers
    }

    /// `64KiB random r2 mirror: 35.2 ns/op`, for progress lines.
    pub fn describe(&self) -> String {
        format!(
            "{} {} r{} {}: {}/op",
            self.size_label,
            self.pattern,
            self.readers,
            self.subject,
            format_ns(self.ns_per_op)
        )
    }

    /// Nanoseconds per 8-byte word the op touched: comparable across sizes and patterns.
    pub fn ns_per_word(&self) -> f64 {
        self.ns_per_op / (f64_of(self.pattern.bytes_per_op(self.size)) / 8.0).max(1.0)
    }
}

/// The machine and build the figures come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// Operating system.
    pub os: &'static str,
    /// CPU architecture.
    pub arch: &'static str,
    /// `release` or `debug` (host-side costs differ a lot between them).
    pub profile: &'static str,
    /// The broker's version.
    pub version: &'static str,
}

impl Machine {
    /// This process's machine.
    pub fn this() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            profile: if cfg!(debug_assertions) { "debug" } else { "release" },
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The settings a report was measured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Modes measured.
    pub modes: Vec<String>,
    /// Region sizes in bytes.
    pub sizes: Vec<u64>,
    /// Patterns.
    pub patterns: Vec<String>,
    /// Reader counts.
    pub readers: Vec<usize>,
    /// Milliseconds per cell.
    pub cell_ms: u128,
    /// The mirror conflict policy of the bench region.
    pub conflict_policy: &'static str,
}
