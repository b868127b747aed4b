//! Latency histograms: an HDR histogram of nanoseconds, so percentiles of millions of samples cost a
//! few kilobytes and stay within 0.1% of the true value.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest value a [`Latency`] tracks: 60 s in nanoseconds. Larger values saturate to it.
pub const MAX_NS: u64 = 60_000_000_000;

/// Three significant figures: a reported percentile is within 0.1% of the recorded value.
const SIGFIG: u8 = 3;

/// A latency histogram in nanoseconds, from 1 ns to 60 s at three significant figures; values above
/// 60 s are recorded as 60 s.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

/// Percentiles of a [`Latency`], in nanoseconds (all zero when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencySummary {
    /// Number of recorded values.
    pub count: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest recorded value.
    pub max_ns: u64,
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        // The bounds are constants that satisfy the crate's preconditions (low >= 1, high >= 2 * low,
        // sigfig <= 5), so creation cannot fail.
        let hist =
            Histogram::new_with_bounds(1, MAX_NS, SIGFIG).expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Records one duration (saturating at 60 s).
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one value in nanoseconds (saturating at 60 s).
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.min(MAX_NS));
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so `add` cannot run out of range; should that ever
        // change, fall back to re-recording value by value (saturating) rather than losing samples.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Count and percentiles.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_ns: self.hist.value_at_quantile(0.5),
            p99_ns: self.hist.value_at_quantile(0.99),
            p999_ns: self.hist.value_at_quantile(0.999),
            max_ns: self.hist.max(),
        }
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}
