//! An instance's handle table: slots with generations, and the packing of [`Handle`] values.
//!
//! A handle is `generation << INDEX_BITS | (index + 1)`: the `+ 1` keeps 0 invalid, the generation makes
//! a closed handle stale forever. A slot whose generation is exhausted is retired, never reused.

use std::fmt;

use super::{CapError, CapId};

/// Bits of a handle that hold the slot index (plus one).
const INDEX_BITS: u32 = 20;
/// Largest slot index a handle can carry.
const MAX_INDEX: u32 = (1 << INDEX_BITS) - 2;
/// Generations a slot goes through before it is retired.
const GENERATIONS: u32 = 1 << (32 - INDEX_BITS);

/// An instance's name for a capability: slot index and generation packed in a `u32`; 0 is never valid.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(u32);

impl Handle {
    /// Wraps a raw value from a guest; validity is checked on lookup.
    pub fn from_raw(raw: u32) -> Handle {
        Handle(raw)
    }

    /// The raw value a guest sees.
    pub fn raw(self) -> u32 {
        self.0
    }

    fn pack(index: u32, generation: u32) -> Handle {
        Handle(generation << INDEX_BITS | (index + 1))
    }

    /// `(index, generation)`, or `None` for a value with no index (0 in the low bits).
    fn unpack(self) -> Option<(u32, u32)> {
        let low = self.0 & ((1 << INDEX_BITS) - 1);
        (low != 0).then(|| (low - 1, self.0 >> INDEX_BITS))
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unpack() {
            Some((i, g)) => write!(f, "Handle({:#x}: slot {i} gen {g})", self.0),
            None => write!(f, "Handle({:#x}: invalid)", self.0),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// The generation the slot's current (or next) occupant carries; `GENERATIONS` means retired.
    generation: u32,
    node: Option<CapId>,
}

/// The slots of one instance.
#[derive(Debug, Default)]
pub(super) struct HandleTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

impl HandleTable {
    /// Puts `node` in a free slot; `None` if the table is full.
    pub(super) fn insert(&mut self, node: CapId) -> Option<(Handle, u32)> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).ok().filter(|i| *i <= MAX_INDEX)?;
                self.slots.push(Slot::default());
                i
            }
        };
        let slot = self.slots.get_mut(usize::try_from(index).ok()?)?;
        slot.node = Some(node);
        self.live += 1;
        Some((Handle::pack(index, slot.generation), index))
    }

    /// The node a handle names.
    pub(super) fn get(&self, handle: Handle) -> Result<CapId, CapError> {
        let invalid = CapError::InvalidHandle(handle.raw());
        let (index, generation) = handle.unpack().ok_or_else(|| invalid.clone())?;
        let slot =
            usize::try_from(index).ok().and_then(|i| self.slots.get(i)).ok_or_else(|| invalid.clone())?;
        match slot.node {
            Some(node) if slot.generation == generation => Ok(node),
            // An earlier generation of this slot was issued and has since been freed.
            _ if generation < slot.generation => Err(CapError::StaleHandle(handle.raw())),
            _ => Err(invalid),
        }
    }

    /// Empties a slot and bumps its generation; an exhausted slot is retired.
    pub(super) fn free(&mut self, index: u32) {
        let Some(slot) = usize::try_from(index).ok().and_then(|i| self.slots.get_mut(i)) else {
            return;
        };
        if slot.node.take().is_none() {
            return;
        }
        self.live -= 1;
        slot.generation += 1;
        if slot.generation < GENERATIONS {
            self.free.push(index);
        }
    }

    /// Number of occupied slots.
    pub(super) fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_unissued_handles_are_invalid() {
        let mut t = HandleTable::default();
        assert_eq!(t.get(Handle::from_raw(0)), Err(CapError::InvalidHandle(0)));
        let (h, _) = t.insert(CapId(1)).expect("room");
        assert_ne!(h.raw(), 0);
        assert_eq!(t.get(h), Ok(CapId(1)));
        let beyond = Handle::pack(5, 0);
        assert_eq!(t.get(beyond), Err(CapError::InvalidHandle(beyond.raw())));
        let future = Handle::pack(0, 3);
        assert_eq!(t.get(future), Err(CapError::InvalidHandle(future.raw())));
    }

    #[test]
    fn freed_slot_is_reused_with_a_new_generation() {
        let mut t = HandleTable::default();
        let (h1, i1) = t.insert(CapId(1)).expect("room");
        t.free(i1);
        assert_eq!(t.get(h1), Err(CapError::StaleHandle(h1.raw())));
        let (h2, i2) = t.insert(CapId(2)).expect("room");
        assert_eq!(i1, i2);
        assert_ne!(h1, h2);
        assert_eq!(t.get(h1), Err(CapError::StaleHandle(h1.raw())));
        assert_eq!(t.get(h2), Ok(CapId(2)));
    }

    #[test]
    fn exhausted_slot_is_retired_not_wrapped() {
        let mut t = HandleTable::default();
        let (first, idx) = t.insert(CapId(0)).expect("room");
        t.free(idx);
        for n in 1..GENERATIONS {
            let (_, i) = t.insert(CapId(u64::from(n))).expect("room");
            assert_eq!(i, idx, "the single slot is reused until retired");
            t.free(i);
        }
        let (_, fresh) = t.insert(CapId(9999)).expect("room");
        assert_ne!(fresh, idx, "a retired slot is never handed out again");
        assert_eq!(t.get(first), Err(CapError::StaleHandle(first.raw())));
    }
}
