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
    /// Only one thread at a time counts (an instance's own counters: its host calls run on the thread
    /// that runs it, and the pool hands it between threads with a happens-before), so a count is a
    /// load and a store rather than a locked read-modify-write, which on a host call of a few words
    /// cost as much as the copy (issue 18).
    one_writer: bool,
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

impl Traffic {
    /// Counters for one writer at a time (see `one_writer`): an instance's.
    pub(crate) fn one_writer() -> Traffic {
        Traffic { one_writer: true, ..Traffic::default() }
    }

    #[inline]
    fn add(&self, c: &AtomicU64, n: u64) {
        if self.one_writer {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts bytes copied into the region.
    pub fn copied_in(&self, bytes: u64) {
        self.add(&self.bytes_in, bytes);
    }

    /// Counts bytes copied out of the region.
    pub fn copied_out(&self, bytes: u64) {
        self.add(&self.bytes_out, bytes);
    }

    /// Counts pages copied by a refresh.
    pub fn refreshed(&self, pages: u64) {
        self.add(&self.pages_refreshed, pages);
    }

    /// Counts an accepted commit.
    pub fn committed(&self) {
        self.add(&self.commits, 1);
    }

    /// Counts a refused commit.
    pub fn conflicted(&self) {
        self.add(&self.conflicts, 1);
    }

    /// Counts a host call.
    pub fn host_called(&self) {
        self.add(&self.host_calls, 1);
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
