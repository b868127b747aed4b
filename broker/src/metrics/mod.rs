//! Measurement shared by scenario runs and `broker bench`: latency histograms, peak resident memory,
//! text tables, SVG charts and progress output.
