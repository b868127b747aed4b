//! The bench's results: every [`Cell`], the recommendation per (size, pattern, readers), and the
//! machine they were measured on; rendered as a terminal table, a JSON file with the same figures and
//! one SVG chart per pattern.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::{bar_chart_svg, format_count, format_ns, LatencySummary, Series, Table};
use broker::mode::Mode;

use super::config::{format_size, BenchConfig, Pattern};
use super::recommend::{recommend, Recommendation};
use super::runner::Measured;
use super::BenchError;

/// Serialises a value as its `Display` text (modes and patterns appear as `"mirror"`, `"scan"`).
pub(super) fn display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
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
    pub(super) fn new(subject: Subject, size: u64, pattern: Pattern, readers: usize, m: &Measured) -> Cell {
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

/// A bench run's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What it measured.
    pub settings: Settings,
    /// Every cell, natives included, in the order measured.
    pub cells: Vec<Cell>,
    /// One per (size, pattern, readers), in matrix order.
    pub recommendations: Vec<Recommendation>,
}

/// Paths a report was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The JSON file.
    pub json: PathBuf,
    /// One SVG chart per pattern.
    pub charts: Vec<PathBuf>,
}

impl Report {
    /// Fills in the ratios to native and derives the recommendations.
    pub(super) fn new(machine: Machine, config: &BenchConfig, mut cells: Vec<Cell>) -> Report {
        // Matrix order: size, pattern, readers as configured, then native and the modes in ABI order.
        let position = |c: &Cell| {
            let index = |found: Option<usize>| found.unwrap_or(usize::MAX);
            (
                index(config.sizes.iter().position(|s| *s == c.size)),
                index(config.patterns.iter().position(|p| *p == c.pattern)),
                index(config.readers.iter().position(|r| *r == c.readers)),
                match c.subject {
                    Subject::Native => 0,
                    Subject::Mode(m) => 1 + index(Mode::ALL.iter().position(|x| *x == m)),
                },
            )
        };
        cells.sort_by_key(position);
        let natives: Vec<(u64, Pattern, usize, f64)> = cells
            .iter()
            .filter(|c| c.subject == Subject::Native)
            .map(|c| (c.size, c.pattern, c.readers, c.ns_per_op))
            .collect();
        for cell in cells.iter_mut().filter(|c| c.subject != Subject::Native) {
            let native = natives.iter().find(|(s, p, r, _)| cell.is(*s, *p, *r));
            cell.ratio_to_native = native.map(|(.., ns)| cell.ns_per_op / ns.max(1e-3));
        }
        let mut recommendations = Vec::new();
        for &size in &config.sizes {
            for &pattern in &config.patterns {
                for &readers in &config.readers {
                    let key: Vec<&Cell> = cells.iter().filter(|c| c.is(size, pattern, readers)).collect();
                    recommendations.extend(recommend(&key));
                }
            }
        }
        let settings = Settings {
            modes: config.modes.iter().map(ToString::to_string).collect(),
            sizes: config.sizes.clone(),
            patterns: config.patterns.iter().map(ToString::to_string).collect(),
            readers: config.readers.clone(),
            cell_ms: config.cell.as_millis(),
            conflict_policy: "merge",
        };
        Report { machine, settings, cells, recommendations }
    }

    /// The cell of `subject` at (size, pattern, readers), if measured.
    pub fn cell(&self, subject: Subject, size: u64, pattern: Pattern, readers: usize) -> Option<&Cell> {
        self.cells.iter().find(|c| c.subject == subject && c.is(size, pattern, readers))
    }

    /// The figures as a table, followed by the recommendations.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "size",
            "pattern",
            "readers",
            "mode",
            "ops/s",
            "MB/s",
            "per op",
            "x native",
            "conflicts",
        ]);
        for c in &self.cells {
            t.row(vec![
                c.size_label.clone(),
                c.pattern.to_string(),
                c.readers.to_string(),
                c.subject.to_string(),
                format_count(c.ops_per_sec),
                format!("{:.1}", c.mb_per_sec),
                format_ns(c.ns_per_op),
                c.ratio_to_native.map_or_else(|| "1.0x".to_owned(), |r| format!("{r:.1}x")),
                if c.commits + c.conflicts > 0 {
                    format!("{}/{}", c.conflicts, c.commits + c.conflicts)
                } else {
                    String::new()
                },
            ]);
        }
        let mut r = Table::new(&["size", "pattern", "readers", "use", "why"]);
        for rec in &self.recommendations {
            r.row(vec![
                format_size(rec.size),
                rec.pattern.to_string(),
                rec.readers.to_string(),
                rec.mode.to_string(),
                rec.reason.clone(),
            ]);
        }
        format!(
            "{}\nRecommendations (the most isolated mode within {}x of the fastest):\n{}",
            t.render(),
            super::recommend::ISOLATION_SLACK,
            r.render()
        )
    }

    /// Writes `bench.json` and one `bench-<pattern>.svg` per pattern into `dir` (created if missing).
    ///
    /// # Errors
    /// [`BenchError::Io`], [`BenchError::Chart`].
    pub fn write(&self, dir: &Path) -> Result<Written, BenchError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BenchError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json = dir.join("bench.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| BenchError::Json(e.to_string()))?;
        std::fs::write(&json, text + "\n").map_err(io(&json))?;
        let mut charts = Vec::new();
        let mut patterns: Vec<Pattern> = self.cells.iter().map(|c| c.pattern).collect();
        patterns.sort();
        patterns.dedup();
        for pattern in patterns {
            let path = dir.join(format!("bench-{pattern}.svg"));
            self.chart(pattern, &path)?;
            charts.push(path);
        }
        Ok(Written { json, charts })
    }

    /// One group per (size, readers), one bar per subject: nanoseconds per 8-byte word, log scale.
    fn chart(&self, pattern: Pattern, path: &Path) -> Result<(), BenchError> {
        let mut keys: Vec<(u64, usize)> = Vec::new();
        let mut subjects: Vec<Subject> = Vec::new();
        for c in self.cells.iter().filter(|c| c.pattern == pattern) {
            if !keys.contains(&(c.size, c.readers)) {
                keys.push((c.size, c.readers));
            }
            if !subjects.contains(&c.subject) {
                subjects.push(c.subject);
            }
        }
        // Native first, so the baseline is the leftmost bar of every group.
        subjects.sort_by_key(|s| *s != Subject::Native);
        let groups: Vec<String> = keys.iter().map(|(s, r)| format!("{} r{r}", format_size(*s))).collect();
        let series: Vec<Series> = subjects
            .iter()
            .map(|&subject| Series {
                name: subject.to_string(),
                values: keys
                    .iter()
                    .map(|&(s, r)| self.cell(subject, s, pattern, r).map_or(f64::NAN, Cell::ns_per_word))
                    .collect(),
            })
            .collect();
        let title = format!("{pattern}: ns per 8-byte word touched (lower is better)");
        bar_chart_svg(path, &title, "ns per 8-byte word (log)", &groups, &series, true)?;
        Ok(())
    }
}
