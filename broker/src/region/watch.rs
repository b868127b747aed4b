//! Change notifications: who wants to hear that a region changed.
//!
//! Every write and commit (handle calls, mirror commits, host writes) publishes a [`Change`] with the
//! new version and the changed byte range to the region's watchers. Watchers are callbacks run while
//! the writer still holds the region's lock, so they see changes in version order; they must not block
//! (the control plane's stream pushes into a bounded queue and counts what it drops). Stores through
//! shared-mode windows bypass the broker and publish nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// One change to a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The region's version after the change.
    pub version: u64,
    /// Start of the changed bytes.
    pub offset: u64,
    /// Number of changed bytes (a mirror commit reports the span of its dirty pages).
    pub len: u64,
}

/// A watcher callback.
pub type WatchFn = Arc<dyn Fn(&Change) + Send + Sync>;

/// Identifies a watcher so it can be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchId(u64);

/// The watchers of one region.
#[derive(Default)]
pub(crate) struct Watchers {
    next: AtomicU64,
    list: RwLock<Vec<(WatchId, WatchFn)>>,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchers({})", self.list.read().len())
    }
}

impl Watchers {
    pub(crate) fn add(&self, f: WatchFn) -> WatchId {
        let id = WatchId(self.next.fetch_add(1, Ordering::Relaxed));
        self.list.write().push((id, f));
        id
    }

    pub(crate) fn remove(&self, id: WatchId) -> bool {
        let mut list = self.list.write();
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        list.len() != before
    }

    pub(crate) fn publish(&self, change: &Change) {
        for (_, f) in self.list.read().iter() {
            f(change);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.read().len()
    }
}
