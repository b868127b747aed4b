//! What `broker bench` measures: the matrix of modes, region sizes, access patterns and reader counts,
//! and the parsing of its command-line values, validated once into these types.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use broker::mode::Mode;

/// The largest region the bench accepts: 1 GiB, so a mirror copy still fits a guest's 4 GiB memory.
pub const MAX_SIZE: u64 = 1 << 30;

/// The most concurrent readers a cell may have.
pub const MAX_READERS: usize = 64;

/// How an app touches the region in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Read every u64 of the region in order, a page at a time, and sum them; one op is one pass.
    Scan,
    /// Load random 8-byte-aligned u64s; one op is one load.
    Random,
    /// Random 8-byte accesses of which 1% are stores, published (mirror commit) every 1024; one op is
    /// one access.
    Write1,
}

impl Pattern {
    /// Every pattern, in report order.
    pub const ALL: [Pattern; 3] = [Pattern::Scan, Pattern::Random, Pattern::Write1];

    /// Bytes one op touches in a region of `size` bytes.
    pub fn bytes_per_op(self, size: u64) -> u64 {
        match self {
            Pattern::Scan => size,
            Pattern::Random | Pattern::Write1 => 8,
        }
    }

    /// The guest export that runs it.
    pub(super) fn export(self) -> &'static str {
        match self {
            Pattern::Scan => "scan",
            Pattern::Random => "random",
            Pattern::Write1 => "write1",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.export())
    }
}

impl FromStr for Pattern {
    type Err = BenchArgError;

    fn from_str(s: &str) -> Result<Pattern, BenchArgError> {
        Pattern::ALL
            .into_iter()
            .find(|p| p.export() == s.trim())
            .ok_or_else(|| BenchArgError::Pattern { value: s.to_owned() })
    }
}

/// A bad value for one of the bench's settings; each variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BenchArgError {
    /// A region size that is not a size, or out of range.
    #[error("invalid region size {value:?}: {reason}")]
    Size {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reader count that is not a number from 1 to [`MAX_READERS`].
    #[error("invalid reader count {value:?}: expected a whole number from 1 to {MAX_READERS}")]
    Readers {
        /// The value given.
        value: String,
    },
    /// An unknown pattern.
    #[error("unknown access pattern {value:?}: expected scan, random or write1")]
    Pattern {
        /// The value given.
        value: String,
    },
    /// An unknown mode.
    #[error("{0}")]
    Mode(String),
    /// A list with no value.
    #[error("the list of {what} is empty: give at least one")]
    Empty {
        /// Which list.
        what: &'static str,
    },
    /// A cell time of zero or over a minute.
    #[error("invalid cell time of {ms} ms: expected 1 to 60000")]
    CellTime {
        /// The value given, in milliseconds.
        ms: u128,
    },
}

const SIZE_HINT: &str =
    "expected a whole number of bytes with an optional B, KiB, MiB or GiB suffix, like 64KiB";

/// Parses a region size: `4096`, `4096B`, `4KiB`, `64MiB`, `1GiB` (binary units; case-insensitive).
/// It must be a multiple of 8 (the patterns access u64s) from 8 bytes to 1 GiB.
///
/// # Errors
/// [`BenchArgError::Size`] naming the value and what is wrong with it.
pub fn parse_size(s: &str) -> Result<u64, BenchArgError> {
    let bad = |reason| BenchArgError::Size { value: s.to_owned(), reason };
    let size = broker::region::parse_size(s).map_err(|e| match e {
        broker::region::SizeError::NotASize(_) => bad(SIZE_HINT),
        broker::region::SizeError::TooLarge(_) => bad("larger than 1GiB"),
    })?;
    if size == 0 {
        return Err(bad("a region needs at least 8 bytes"));
    }
    if size > MAX_SIZE {
        return Err(bad("larger than 1GiB"));
    }
    if !size.is_multiple_of(8) {
        return Err(bad("must be a multiple of 8 bytes (the patterns access u64s)"));
    }
    Ok(size)
}

/// A size as the report labels it: `4KiB`, `64MiB`, or bytes (`4104B`) when not a whole unit.
pub fn format_size(size: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("{}{unit}", size >> shift);
        }
    }
    format!("{size}B")
}

/// Parses a reader count from 1 to [`MAX_READERS`].
///
/// # Errors
/// [`BenchArgError::Readers`] naming the value.
pub fn parse_readers(s: &str) -> Result<usize, BenchArgError> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_READERS).contains(n))
        .ok_or_else(|| BenchArgError::Readers { value: s.to_owned() })
}

/// Parses a mode (`handle`, `mirror` or `shared`).
///
/// # Errors
/// [`BenchArgError::Mode`] naming the value.
pub fn parse_mode(s: &str) -> Result<Mode, BenchArgError> {
    s.trim().parse().map_err(BenchArgError::Mode)
}

/// The matrix to measure: every combination of mode, size, pattern and reader count is one cell, and
/// every (size, pattern, readers) also gets a native cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Modes to measure.
    pub modes: Vec<Mode>,
    /// Region sizes in bytes.
    pub sizes: Vec<u64>,
    /// Access patterns.
    pub patterns: Vec<Pattern>,
    /// Numbers of concurrent readers (guest instances, or host threads for the native baseline).
    pub readers: Vec<usize>,
    /// How long each cell is measured, after its warm-up call.
    pub cell: Duration,
}

impl BenchConfig {
    /// The standard matrix: every mode; 4 KiB, 64 KiB, 1 MiB, 16 MiB and 64 MiB; every pattern; 1, 2
    /// and 8 readers; 150 ms a cell.
    pub fn standard() -> BenchConfig {
        BenchConfig {
            modes: Mode::ALL.to_vec(),
            sizes: vec![4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20],
            patterns: Pattern::ALL.to_vec(),
            readers: vec![1, 2, 8],
            cell: Duration::from_millis(150),
        }
    }

    /// A small matrix for a smoke run: every mode and pattern on 4 KiB and 1 MiB, 1 and 2 readers,
    /// 20 ms a cell.
    pub fn quick() -> BenchConfig {
        BenchConfig {
            sizes: vec![4 << 10, 1 << 20],
            readers: vec![1, 2],
            cell: Duration::from_millis(20),
            ..BenchConfig::standard()
        }
    }

    /// Checks that every list has a value and every value is in range.
    ///
    /// # Errors
    /// The first problem found, as a [`BenchArgError`].
    pub fn validate(&self) -> Result<(), BenchArgError> {
        for (what, empty) in [
            ("modes", self.modes.is_empty()),
            ("sizes", self.sizes.is_empty()),
            ("patterns", self.patterns.is_empty()),
            ("readers", self.readers.is_empty()),
        ] {
            if empty {
                return Err(BenchArgError::Empty { what });
            }
        }
        for &size in &self.sizes {
            parse_size(&size.to_string())?;
        }
        for &r in &self.readers {
            parse_readers(&r.to_string())?;
        }
        let ms = self.cell.as_millis();
        if !(1..=60_000).contains(&ms) {
            return Err(BenchArgError::CellTime { ms });
        }
        Ok(())
    }

    /// The same matrix with repeated values removed (first occurrence kept), so no cell runs twice.
    pub fn normalized(&self) -> BenchConfig {
        fn dedup<T: PartialEq + Copy>(v: &[T]) -> Vec<T> {
            let mut out: Vec<T> = Vec::with_capacity(v.len());
            for x in v {
                if !out.contains(x) {
                    out.push(*x);
                }
            }
            out
        }
        BenchConfig {
            modes: dedup(&self.modes),
            sizes: dedup(&self.sizes),
            patterns: dedup(&self.patterns),
            readers: dedup(&self.readers),
            cell: self.cell,
        }
    }

    /// Number of cells the run measures, native cells included.
    pub fn cell_count(&self) -> usize {
        self.sizes.len() * self.patterns.len() * self.readers.len() * (self.modes.len() + 1)
    }
}
