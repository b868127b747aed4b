//! `broker bench`: the mode trade-off matrix (modes x region sizes x access patterns x readers) with a
//! native baseline on the same mapping, measured in the same run.
//!
//! [`run`] builds a broker of its own, and for every region size and mode creates a region filled with
//! a known pattern and starts one instance of the `bench_matrix` guest per reader. The guest is written
//! once against `broker_guest::View`, so the code measured is the same in every mode. Each cell calls
//! the guest's pattern export from one host thread per reader for a fixed time; the native cell runs
//! the same pattern as host code directly on the region's mapping. Scans are checked against the bytes
//! the host wrote, so a broker bug cannot hide as a fast number. The [`Report`] holds every cell, the
//! ratio of each mode to native, and one [`Recommendation`] per (size, pattern, readers), and renders
//! as a table, a JSON file and SVG charts (through [`crate::metrics`]).

mod config;
mod model;
mod recommend;
mod report;
mod runner;

pub use config::{
    format_size, parse_mode, parse_readers, parse_size, BenchArgError, BenchConfig, Pattern, MAX_READERS,
    MAX_SIZE,
};
pub use model::{Cell, Machine, Settings, Subject};
pub use recommend::{Recommendation, CONFLICT_LIMIT, ISOLATION_SLACK};
pub use report::{Report, Written};
pub use runner::{expected_checksum, fill_word, run};

use std::path::PathBuf;

use broker::mode::Mode;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting is invalid.
    #[error(transparent)]
    Arg(#[from] BenchArgError),
    /// The broker refused a step of the set-up or a call.
    #[error("{what}: {source}")]
    Broker {
        /// The step.
        what: String,
        /// The broker's error.
        source: broker::Error,
    },
    /// A guest export returned a status code other than 0.
    #[error("the bench guest's {export} failed in {mode} mode with status {code}")]
    Guest {
        /// The export.
        export: &'static str,
        /// The region's mode.
        mode: Mode,
        /// The status code it returned.
        code: i64,
    },
    /// A scan summed other bytes than the host wrote: a broker bug, never a measurement.
    #[error("{subject} scan of {size} bytes returned checksum {got:#x}, the region holds {expected:#x}")]
    ChecksumMismatch {
        /// Who scanned.
        subject: Subject,
        /// The region size.
        size: u64,
        /// The checksum returned.
        got: u64,
        /// The checksum of the bytes written.
        expected: u64,
    },
    /// Region memory refused an access of the native baseline.
    #[error(transparent)]
    Region(#[from] broker::region::RegionError),
    /// A report file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] crate::metrics::ChartError),
    /// The report could not be serialised.
    #[error("cannot serialise the report: {0}")]
    Json(String),
    /// Something that cannot happen did (a thread panicked, a reader had no instance).
    #[error("internal bench error: {0}")]
    Internal(&'static str),
}

#[cfg(test)]
mod tests;
