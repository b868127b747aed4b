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
        let _publishing = Publishing::enter();
        for (_, f) in self.list.read().iter() {
            f(change);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.read().len()
    }
}

thread_local! {
    /// How many publications this thread is inside (a watcher of one region may write another).
    static PUBLISHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread is publishing a region's change right now, and so holds that region's write
/// lock: app code must not run on it then (a callback that touched the region would wait for the lock
/// forever, and everyone else with it).
pub(crate) fn publishing() -> bool {
    PUBLISHING.try_with(|p| p.get() > 0).unwrap_or(false)
}

/// Counts a publication on this thread until dropped.
struct Publishing;

impl Publishing {
    fn enter() -> Publishing {
        let _ = PUBLISHING.try_with(|p| p.set(p.get().saturating_add(1)));
        Publishing
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        let _ = PUBLISHING.try_with(|p| p.set(p.get().saturating_sub(1)));
    }
}
