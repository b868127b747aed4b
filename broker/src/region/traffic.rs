//! Counters of what crosses a region's boundary: bytes copied in and out, pages refreshed, commits and
//! conflicts. Each region keeps one, and so does each instance, so an operator sees the cost of a mode
//! per region and per app.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (relaxed atomics: they are statistics, not synchronisation).
#[derive(Debug, Default)]
pub struct Traffic {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    pages_refreshed: AtomicU64,
    commits: AtomicU64,
    conflicts: AtomicU64,
    host_calls: AtomicU64,
}

/// A snapshot of [`Traffic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrafficStats {
    /// Bytes copied into the region (writes, commits).
    pub bytes_in: u64,
    /// Bytes copied out of the region (reads, acquires, refreshes).
    pub bytes_out: u64,
    /// Pages copied by mirror refreshes.
    pub pages_refreshed: u64,
    /// Mirror commits accepted.
    pub commits: u64,
    /// Mirror commits refused for a conflict.
    pub conflicts: u64,
    /// Host calls made (counted per instance; a region's counter stays 0).
    pub host_calls: u64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Traffic {
    /// Counts bytes copied into the region.
    pub fn copied_in(&self, bytes: u64) {
        add(&self.bytes_in, bytes);
    }

    /// Counts bytes copied out of the region.
    pub fn copied_out(&self, bytes: u64) {
        add(&self.bytes_out, bytes);
    }

    /// Counts pages copied by a refresh.
    pub fn refreshed(&self, pages: u64) {
        add(&self.pages_refreshed, pages);
    }

    /// Counts an accepted commit.
    pub fn committed(&self) {
        add(&self.commits, 1);
    }

    /// Counts a refused commit.
    pub fn conflicted(&self) {
        add(&self.conflicts, 1);
    }

    /// Counts a host call.
    pub fn host_called(&self) {
        add(&self.host_calls, 1);
    }

    /// A snapshot.
    pub fn stats(&self) -> TrafficStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrafficStats {
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            pages_refreshed: g(&self.pages_refreshed),
            commits: g(&self.commits),
            conflicts: g(&self.conflicts),
            host_calls: g(&self.host_calls),
        }
    }
}
