//! Resolving a handle without the capability lock: each instance keeps the capabilities its handles
//! last resolved to, valid for as long as no capability anywhere has been removed since.
//!
//! A node's region, rights and range never change once made (narrowing a membership replaces the node),
//! so what a handle resolved to stays right until the node is removed. Every removal (close, revoke,
//! destroy, an instance's end) counts one [`Removals`] tick while it holds the capability lock, before
//! it returns. A [`HandleCache`] entry is used only while the count is what it was when the entry was
//! filled (read under that same lock): so an access that begins after a removal returned misses, and
//! resolves through the locked table, which refuses the handle. An access that overlaps the removal may
//! still succeed, exactly as one that took the lock just before it does.
//!
//! The count is global: a removal anywhere empties every cache, which costs each instance one locked
//! lookup per handle afterwards, never a wrong answer. This file depends on nothing else in the broker
//! (the loom model in `loom/` compiles it as it is, with loom's atomics under `super::sync`).

use super::sync::{AtomicU64, Ordering};

/// Counts removals of capabilities, so lock-free readers know when what they resolved may be gone.
#[derive(Debug)]
pub struct Removals(AtomicU64);

impl Default for Removals {
    fn default() -> Removals {
        Removals(AtomicU64::new(0))
    }
}

impl Removals {
    /// Records a removal. Called with the capability lock held, before the removing operation returns.
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// The removals so far: under the capability lock, exact; without it, at least every removal that
    /// returned before this call began.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Entries in one instance's cache, by raw handle modulo this (direct-mapped: an app's hot handles are
/// few, and a collision costs one locked lookup).
const SLOTS: usize = 16;

/// One instance's resolved handles: `V` is what a handle resolved to (the broker keeps the capability
/// with a weak reference to its region, so a cache never keeps a destroyed region's memory alive).
#[derive(Debug)]
pub struct HandleCache<V> {
    /// The removal count the entries were filled at.
    count: u64,
    slots: [Option<(u32, V)>; SLOTS],
}

impl<V> Default for HandleCache<V> {
    fn default() -> HandleCache<V> {
        HandleCache { count: 0, slots: std::array::from_fn(|_| None) }
    }
}

impl<V> HandleCache<V> {
    /// Resolves `raw`: from the cache while no capability was removed since its entry was filled
    /// (`hit` makes the caller's result from the entry, or `None` if it no longer stands, say its
    /// region is gone), otherwise through `locked`, which resolves under the capability lock and
    /// returns the result, what to remember, and the removal count read under that same lock hold.
    /// Every caller goes through here, so the count is never read anywhere else.
    ///
    /// # Errors
    /// What `locked` returns.
    pub fn resolve<T, E>(
        &mut self,
        raw: u32,
        removals: &Removals,
        hit: impl FnOnce(&V) -> Option<T>,
        locked: impl FnOnce() -> Result<(T, V, u64), E>,
    ) -> Result<T, E> {
        if let Some(found) = self.get(raw, removals).and_then(hit) {
            return Ok(found);
        }
        let (found, value, count) = locked()?;
        self.put(raw, count, value);
        Ok(found)
    }

    /// What `raw` resolved to, if no capability was removed since (`removals`: the count now, read
    /// without the lock). Empties the cache when the count has moved.
    fn get(&mut self, raw: u32, removals: &Removals) -> Option<&V> {
        let now = removals.count();
        if now != self.count {
            self.clear(now);
            return None;
        }
        match &self.slots[slot(raw)] {
            Some((r, v)) if *r == raw => Some(v),
            _ => None,
        }
    }

    /// Remembers what `raw` resolved to, at removal count `count` read under the same lock hold as the
    /// resolution.
    fn put(&mut self, raw: u32, count: u64, value: V) {
        if count != self.count {
            self.clear(count);
        }
        self.slots[slot(raw)] = Some((raw, value));
    }

    fn clear(&mut self, count: u64) {
        self.count = count;
        for s in &mut self.slots {
            *s = None;
        }
    }
}

fn slot(raw: u32) -> usize {
    // A u32 always fits in usize on the hosts the broker runs on (64-bit).
    raw as usize % SLOTS
}
