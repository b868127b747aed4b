//! Measurement shared by scenario runs and `broker bench`: latency histograms, peak resident memory,
//! text tables, SVG charts and progress output.
//!
//! Everything here is reporting machinery, independent of the broker's domain types, so the bench
//! matrix, scenario runs and the CLI present figures the same way: [`Latency`] records durations into
//! an HDR histogram and summarises percentiles, [`peak_rss_bytes`] reads the kernel's high-water mark,
//! [`Table`] renders aligned plain text, [`bar_chart_svg`] draws grouped bar charts with no font or
//! system dependency, and [`ProgressSink`] lets long runs report progress to a terminal, a test or a
//! gRPC stream alike.

mod chart;
mod format;
mod latency;
mod progress;
mod rss;
mod table;

pub use chart::{bar_chart_svg, ChartError, Series};
pub use format::{format_bytes, format_count, format_ns};
pub use latency::{Latency, LatencySummary};
pub use progress::{CollectProgress, NoProgress, ProgressEvent, ProgressSink, TerminalProgress};
pub use rss::{peak_rss_bytes, reset_peak_rss};
pub use table::Table;

#[cfg(test)]
mod tests;
