//! Numbers as reports print them, so `broker bench` and scenario reports read the same: durations
//! with a unit, counts and rates with an SI suffix, byte counts in binary units.

/// `12.3 ns`, `4.56 us`, `7.89 ms`, `1.23 s`.
pub fn format_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// `950`, `12.3k`, `4.56M`, `7.89G`.
pub fn format_count(v: f64) -> String {
    if v < 1e3 {
        format!("{v:.0}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else if v < 1e9 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.2}G", v / 1e9)
    }
}

/// `512`, `4.0KiB`, `1.5MiB`, `2.0GiB`.
pub fn format_bytes(v: f64) -> String {
    if v >= f64::from(1u32 << 30) {
        format!("{:.1}GiB", v / f64::from(1u32 << 30))
    } else if v >= f64::from(1u32 << 20) {
        format!("{:.1}MiB", v / f64::from(1u32 << 20))
    } else if v >= 1024.0 {
        format!("{:.1}KiB", v / 1024.0)
    } else {
        format!("{v:.0}")
    }
}
