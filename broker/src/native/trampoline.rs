//! The trampoline pool: turns Rust event targets into real C function pointers that an unchanged C
//! library can store as callbacks.
//!
//! A C library like the toolkit takes bare `void (*)(event_t *)` callbacks, with no closure context.
//! `broker/native/toolkit/trampolines.c` therefore defines [`TRAMPOLINE_COUNT`] distinct static C
//! functions; trampoline `n` only calls `broker_trampoline_dispatch(n, e)`, defined here. So the
//! function pointer itself names a slot, and this module binds slots to targets: [`TrampolinePool`]
//! hands out a free slot with its C pointer, and the dispatcher looks the slot up in a global table and
//! calls its target with a safe [`Event`] snapshot.
//!
//! Nothing may unwind into C and nothing C does may crash the broker: a call on a free slot, a target
//! that fails (because the app it routes to has stopped or trapped) and a target that panics are all
//! caught, counted as dead calls, and returned from normally.

#![allow(
    unsafe_code,
    reason = "exports the dispatcher C calls and reads its event pointer; every block is justified below"
)]

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::toolkit::{self, ffi, EventCallback, EventCode, ObjectId};

/// How many trampolines (and so slots) exist; `BROKER_TRAMPOLINE_COUNT` in `trampolines.c`.
pub const TRAMPOLINE_COUNT: u32 = 64;

/// `TRAMPOLINE_COUNT` as an array length.
const SLOT_COUNT: usize = TRAMPOLINE_COUNT as usize;

/// The declarations of `trampolines.c`.
pub(super) mod ffi_trampolines {
    use super::ffi::event_cb_t;

    // SAFETY: the signatures below are those defined in `broker/native/toolkit/trampolines.c`, which
    // build.rs compiles and links into this crate. Both functions only read a constant table, so any
    // argument is fine and they may be declared safe.
    unsafe extern "C" {
        /// `broker_trampoline_count`: how many trampolines `trampolines.c` defines. Only tests need it:
        /// allocation relies on `broker_trampoline_ptr` returning null out of range.
        #[cfg(test)]
        pub safe fn broker_trampoline_count() -> u32;
        /// `broker_trampoline_ptr`: the trampoline of `slot`, or null when out of range.
        pub safe fn broker_trampoline_ptr(slot: u32) -> Option<event_cb_t>;
    }
}

/// What a trampoline delivers: where the route goes. `Err` means the event could not be delivered (the
/// app behind it stopped or trapped, say); it is counted as a dead call.
pub type EventTarget = Arc<dyn Fn(&Event) -> Result<(), String> + Send + Sync>;

/// A safe snapshot of one C event, taken before the target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub code: EventCode,
    /// The event's parameter.
    pub param: i32,
    /// The `user_data` the callback was registered with.
    pub user_data: usize,
    /// The object the event was sent to, if it is one the toolkit wrapper created and still knows.
    pub target: Option<ObjectId>,
}

impl Event {
    /// Copies an event out of C.
    ///
    /// # Safety
    /// `event` must be null or point to an `event_t` that stays valid for the duration of the call.
    unsafe fn snapshot(event: *const ffi::event_t) -> Option<Event> {
        if event.is_null() {
            return None;
        }
        // SAFETY: `event` is a valid `event_t` (the caller's obligation). The accessors only read that
        // struct, never the toolkit's object registry, so they need no toolkit lock; the target pointer
        // is only compared by address, never dereferenced.
        let (code, param, user_data, target) = unsafe {
            (
                ffi::event_get_code(event),
                ffi::event_get_param(event),
                ffi::event_get_user_data(event),
                ffi::event_get_target(event),
            )
        };
        Some(Event {
            code: EventCode(code),
            param,
            user_data: user_data.addr(),
            target: toolkit::object_id_at(target),
        })
    }
}

/// Names one allocation of a slot: its index (which trampoline) and the generation it was allocated
/// in. Freeing bumps the generation, so an old `SlotId` can never free a later allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId {
    index: u32,
    generation: u64,
}

impl SlotId {
    /// Which trampoline (`0..TRAMPOLINE_COUNT`).
    pub fn index(self) -> u32 {
        self.index
    }

    /// The slot's generation when this allocation was made.
    pub fn generation(self) -> u64 {
        self.generation
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trampoline#{}.{}", self.index, self.generation)
    }
}

/// An allocated trampoline: a slot bound to a target, and the C function pointer that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trampoline {
    slot: SlotId,
    fn_ptr: EventCallback,
}

impl Trampoline {
    /// The slot, to free it with.
    pub fn slot(&self) -> SlotId {
        self.slot
    }

    /// The real C function pointer (the slot's trampoline), to register with the C library.
    pub fn fn_ptr(&self) -> EventCallback {
        self.fn_ptr
    }
}

/// Why the pool refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every trampoline is bound.
    #[error("all {capacity} trampolines are in use")]
    Exhausted {
        /// How many trampolines there are.
        capacity: u32,
    },
    /// The slot was already freed (and maybe reallocated), or never allocated.
    #[error("{0} is not allocated (already freed, or never allocated)")]
    StaleSlot(SlotId),
    /// `trampolines.c` has no trampoline for a slot this module believes exists; a build mismatch.
    #[error("the C trampoline table has no entry for slot {index}")]
    MissingTrampoline {
        /// The slot.
        index: u32,
    },
}

/// One slot: its generation, and its target while allocated.
struct Slot {
    generation: u64,
    target: Option<EventTarget>,
}

/// The slot table.
struct SlotTable {
    slots: [Slot; SLOT_COUNT],
    /// Slots `fresh..` have never been allocated.
    fresh: u32,
    /// Freed slots, oldest first. Reusing the oldest keeps a freed pointer unbound as long as possible.
    freed: VecDeque<u32>,
}

impl SlotTable {
    /// The slot the next allocation gets.
    fn next_free(&self) -> Option<u32> {
        if self.fresh < TRAMPOLINE_COUNT {
            Some(self.fresh)
        } else {
            self.freed.front().copied()
        }
    }

    fn slot(&self, index: u32) -> Option<&Slot> {
        self.slots.get(usize::try_from(index).ok()?)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut Slot> {
        self.slots.get_mut(usize::try_from(index).ok()?)
    }
}

/// The process's pool of trampolines (there is one set of C trampolines, so one pool; see
/// [`TrampolinePool::global`]).
///
/// **Limitation:** C passes only the slot, so a callback still registered in C after its slot was freed
/// is a dead call only until the slot is reallocated; after that it reaches the new target. Remove the
/// C registration before freeing the slot. The pool reuses the longest-freed slot to keep that window
/// as wide as possible.
pub struct TrampolinePool {
    table: RwLock<SlotTable>,
    dead_calls: AtomicU64,
}

static POOL: TrampolinePool = TrampolinePool {
    table: RwLock::new(SlotTable {
        slots: [const { Slot { generation: 0, target: None } }; SLOT_COUNT],
        fresh: 0,
        freed: VecDeque::new(),
    }),
    dead_calls: AtomicU64::new(0),
};

impl TrampolinePool {
    /// The pool.
    pub fn global() -> &'static TrampolinePool {
        &POOL
    }

    /// How many trampolines exist.
    pub fn capacity(&self) -> u32 {
        TRAMPOLINE_COUNT
    }

    /// How many slots are bound now.
    pub fn in_use(&self) -> u32 {
        let table = self.table.read();
        let bound = table.slots.iter().filter(|slot| slot.target.is_some()).count();
        u32::try_from(bound).unwrap_or(TRAMPOLINE_COUNT)
    }

    /// Calls that could not be delivered: on a free slot, to a target that returned `Err` or panicked,
    /// or with a null event.
    pub fn dead_calls(&self) -> u64 {
        self.dead_calls.load(Ordering::Relaxed)
    }

    /// Binds a free slot to `target` and returns it with its C function pointer.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`] when every slot is bound, and [`PoolError::MissingTrampoline`] if the C
    /// table disagrees with [`TRAMPOLINE_COUNT`].
    pub fn allocate(&self, target: EventTarget) -> Result<Trampoline, PoolError> {
        let mut table = self.table.write();
        let index = table.next_free().ok_or(PoolError::Exhausted { capacity: TRAMPOLINE_COUNT })?;
        let function =
            ffi_trampolines::broker_trampoline_ptr(index).ok_or(PoolError::MissingTrampoline { index })?;
        if index == table.fresh {
            table.fresh += 1;
        } else {
            table.freed.pop_front();
        }
        let slot = table.slot_mut(index).ok_or(PoolError::MissingTrampoline { index })?;
        slot.target = Some(target);
        // The trampoline only forwards to `broker_trampoline_dispatch`, which is sound for any event the
        // toolkit passes and never unwinds: the invariant of `EventCallback`.
        Ok(Trampoline {
            slot: SlotId { index, generation: slot.generation },
            fn_ptr: EventCallback::new(function),
        })
    }

    /// Unbinds a slot, so that calls through its pointer are dead calls until it is reallocated, and
    /// makes it reusable.
    ///
    /// # Errors
    /// [`PoolError::StaleSlot`] if `slot` is not a current allocation.
    pub fn free(&self, slot: SlotId) -> Result<(), PoolError> {
        let mut table = self.table.write();
        let entry = table.slot_mut(slot.index).ok_or(PoolError::StaleSlot(slot))?;
        if entry.generation != slot.generation || entry.target.is_none() {
            return Err(PoolError::StaleSlot(slot));
        }
        // Dropped after the lock is released, so a target's destructor cannot deadlock on the pool.
        let target = entry.target.take();
        // A u64 cannot be exhausted by frees, so wrapping never happens in practice.
        entry.generation = entry.generation.wrapping_add(1);
        table.freed.push_back(slot.index);
        drop(table);
        drop(target);
        Ok(())
    }

    /// Frees every slot, whoever allocated it, so tests start from an empty pool.
    #[cfg(test)]
    pub(super) fn free_all(&self) {
        let mut table = self.table.write();
        let bound: Vec<u32> = (0..table.fresh)
            .filter(|&index| table.slot(index).is_some_and(|slot| slot.target.is_some()))
            .collect();
        for index in bound {
            if let Some(slot) = table.slot_mut(index) {
                slot.target = None;
                slot.generation = slot.generation.wrapping_add(1);
            }
            table.freed.push_back(index);
        }
    }

    /// The target bound to `index`, if any.
    fn target(&self, index: u32) -> Option<EventTarget> {
        self.table.read().slot(index)?.target.clone()
    }

    /// Delivers one call from trampoline `index`; whether it reached a target that accepted it.
    ///
    /// # Safety
    /// `event` must be null or point to an `event_t` that stays valid for the duration of the call.
    unsafe fn deliver(&self, index: u32, event: *const ffi::event_t) -> bool {
        // SAFETY: forwarded from this function's own contract.
        let Some(event) = (unsafe { Event::snapshot(event) }) else {
            return false;
        };
        // The table lock is released before the target runs, so a target may allocate or free slots.
        let Some(target) = self.target(index) else {
            return false;
        };
        target(&event).is_ok()
    }
}

impl fmt::Debug for TrampolinePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrampolinePool")
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
            .field("dead_calls", &self.dead_calls())
            .finish()
    }
}

/// The function every C trampoline calls: routes the event to the slot's target.
///
/// Never unwinds: a panic in the target is caught and, like a free slot or a target's `Err`, counted in
/// [`TrampolinePool::dead_calls`].
///
/// # Safety
/// `event` must be null or point to an `event_t` that stays valid for the duration of the call, as the
/// toolkit guarantees for the events it passes to callbacks.
#[no_mangle]
pub(super) unsafe extern "C" fn broker_trampoline_dispatch(slot: u32, event: *mut ffi::event_t) {
    let pool = TrampolinePool::global();
    // SAFETY: forwarded from this function's own contract. `AssertUnwindSafe`: after a panic nothing
    // observes the target's state except later calls of the same target, which is the target's concern.
    let delivered = panic::catch_unwind(AssertUnwindSafe(|| unsafe { pool.deliver(slot, event) }));
    if !matches!(delivered, Ok(true)) {
        pool.dead_calls.fetch_add(1, Ordering::Relaxed);
    }
}
