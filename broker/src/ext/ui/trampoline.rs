//! The trampoline pool: turns Rust event targets into real C function pointers that an unchanged C
//! library can store as callbacks.
//!
//! A C library like the toolkit takes bare `void (*)(event_t *)` callbacks, with no closure context.
//! `broker/native/toolkit/trampolines.c` therefore defines [`MAX_TRAMPOLINES`] distinct static C
//! functions; trampoline `n` only calls `broker_trampoline_dispatch(n, e)`, defined here. So the
//! function pointer itself names a slot, and this module binds slots to targets: a [`TrampolinePool`]
//! hands out a free slot with its C pointer, and the dispatcher looks the slot up in the process's slot
//! table and calls its target with a safe [`Event`] snapshot.
//!
//! The C functions, and so the slot table, are one per process, whatever the number of brokers in it
//! (the daemon runs scenarios on private brokers beside its own). Each broker with the UI extension has
//! its own pool, sized by `UiConfig::trampolines` ([`DEFAULT_TRAMPOLINES`] unless set): the pool binds
//! at most that many slots of the table at once, so one broker's size never changes another's.
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::toolkit::{self, ffi, EventCallback, EventCode, ObjectId};

/// How many trampolines (and so slots) are compiled in, for the whole process:
/// `BROKER_TRAMPOLINE_MAX` in `trampolines.c`. No pool can be larger.
pub const MAX_TRAMPOLINES: u32 = 1024;

/// A broker's pool size when its config does not set one: 64 trampolines, four tenants' worth of the
/// default `trampolines` quota.
pub const DEFAULT_TRAMPOLINES: u32 = 64;

/// `MAX_TRAMPOLINES` as an array length.
const SLOT_COUNT: usize = MAX_TRAMPOLINES as usize;

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
    /// Which trampoline (`0..MAX_TRAMPOLINES`).
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
    /// Every trampoline of the pool is bound.
    #[error("all {capacity} trampolines are in use")]
    Exhausted {
        /// The pool's size.
        capacity: u32,
    },
    /// The pool has room, but every trampoline of the process is bound (other brokers' pools hold the
    /// rest: their sizes add up to more than the compiled-in maximum).
    #[error("all {max} trampolines of the process are in use, by this broker and others")]
    ProcessExhausted {
        /// How many trampolines the process has: [`MAX_TRAMPOLINES`].
        max: u32,
    },
    /// A pool size of 0 or above the compiled-in maximum.
    #[error("a pool holds 1 to {max} trampolines (the number compiled in), not {requested}")]
    InvalidCapacity {
        /// The size asked for.
        requested: u32,
        /// [`MAX_TRAMPOLINES`].
        max: u32,
    },
    /// The slot is not bound to this pool: already freed (and maybe reallocated), never allocated, or
    /// allocated by another pool.
    #[error("{0} is not allocated in this pool (already freed, or never allocated here)")]
    StaleSlot(SlotId),
    /// `trampolines.c` has no trampoline for a slot this module believes exists; a build mismatch.
    #[error("the C trampoline table has no entry for slot {index}")]
    MissingTrampoline {
        /// The slot.
        index: u32,
    },
}

/// One slot: its generation, and while allocated its target and the pool that holds it.
struct Slot {
    generation: u64,
    /// The id of the [`TrampolinePool`] that holds the slot; meaningful only with a target.
    owner: u64,
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
        if self.fresh < MAX_TRAMPOLINES {
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

/// The process's slot table: one slot per C trampoline, shared by every pool.
static TABLE: RwLock<SlotTable> = RwLock::new(SlotTable {
    slots: [const { Slot { generation: 0, owner: 0, target: None } }; SLOT_COUNT],
    fresh: 0,
    freed: VecDeque::new(),
});

/// Calls C made that reached no target, process-wide: a call names only its slot, and a free slot
/// belongs to no pool.
static DEAD_CALLS: AtomicU64 = AtomicU64::new(0);

/// The id the next pool gets; ids start at 1 and are never reused.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// A broker's trampolines: at most [`TrampolinePool::capacity`] slots of the process's table bound at
/// once, to targets of this pool's choosing.
///
/// Slots are taken from the table first never used, then longest freed, whichever pool freed them; so
/// a pool's slot numbers are not confined to `0..capacity`, but a pool never holds more than
/// `capacity` of them.
///
/// A pool dropped while it still holds slots (their registrations' cleanup never ran) retires them:
/// their targets are dropped and calls through them are dead calls, but they are never handed out
/// again, because C may still hold their pointers and would reach whoever got them next. Normally a
/// broker's pool holds nothing when it goes: stopping its instances runs every cleanup hook.
///
/// **Limitation:** C passes only the slot, so a callback still registered in C after its slot was freed
/// is a dead call only until the slot is reallocated; after that it reaches the new target. Remove the
/// C registration before freeing the slot. The table reuses the longest-freed slot, after every
/// never-used one, to keep that window as wide as possible.
pub struct TrampolinePool {
    /// Tells this pool's slots from other pools' in the shared table.
    id: u64,
    capacity: u32,
    /// Slots bound to this pool; changed only under the table's write lock.
    bound: AtomicU32,
}

impl TrampolinePool {
    /// A pool of `capacity` trampolines.
    ///
    /// # Errors
    /// [`PoolError::InvalidCapacity`] when `capacity` is 0 or above [`MAX_TRAMPOLINES`].
    pub fn new(capacity: u32) -> Result<TrampolinePool, PoolError> {
        if !(1..=MAX_TRAMPOLINES).contains(&capacity) {
            return Err(PoolError::InvalidCapacity { requested: capacity, max: MAX_TRAMPOLINES });
        }
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        Ok(TrampolinePool { id, capacity, bound: AtomicU32::new(0) })
    }

    /// How many trampolines the pool may bind at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How many of the pool's slots are bound now.
    pub fn in_use(&self) -> u32 {
        self.bound.load(Ordering::Relaxed)
    }

    /// Calls that could not be delivered, in the whole process (a call through a free slot belongs to no
    /// pool): on a free slot, to a target that returned `Err` or panicked, or with a null event.
    pub fn dead_calls(&self) -> u64 {
        DEAD_CALLS.load(Ordering::Relaxed)
    }

    /// Binds a free slot to `target` and returns it with its C function pointer.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`] when the pool holds its capacity, [`PoolError::ProcessExhausted`] when
    /// other pools hold the rest of the process's trampolines, and [`PoolError::MissingTrampoline`] if
    /// the C table disagrees with [`MAX_TRAMPOLINES`].
    pub fn allocate(&self, target: EventTarget) -> Result<Trampoline, PoolError> {
        let mut table = TABLE.write();
        if self.bound.load(Ordering::Relaxed) >= self.capacity {
            return Err(PoolError::Exhausted { capacity: self.capacity });
        }
        let index = table.next_free().ok_or(PoolError::ProcessExhausted { max: MAX_TRAMPOLINES })?;
        let function =
            ffi_trampolines::broker_trampoline_ptr(index).ok_or(PoolError::MissingTrampoline { index })?;
        if index == table.fresh {
            table.fresh += 1;
        } else {
            table.freed.pop_front();
        }
        let slot = table.slot_mut(index).ok_or(PoolError::MissingTrampoline { index })?;
        slot.target = Some(target);
        slot.owner = self.id;
        self.bound.fetch_add(1, Ordering::Relaxed);
        // The trampoline only forwards to `broker_trampoline_dispatch`, which is sound for any event the
        // toolkit passes and never unwinds: the invariant of `EventCallback`.
        Ok(Trampoline {
            slot: SlotId { index, generation: slot.generation },
            fn_ptr: EventCallback::new(function),
        })
    }

    /// Unbinds a slot of this pool, so that calls through its pointer are dead calls until it is
    /// reallocated, and makes it reusable.
    ///
    /// # Errors
    /// [`PoolError::StaleSlot`] if `slot` is not a current allocation of this pool.
    pub fn free(&self, slot: SlotId) -> Result<(), PoolError> {
        let mut table = TABLE.write();
        let entry = table.slot_mut(slot.index).ok_or(PoolError::StaleSlot(slot))?;
        if entry.generation != slot.generation || entry.target.is_none() || entry.owner != self.id {
            return Err(PoolError::StaleSlot(slot));
        }
        // Dropped after the lock is released, so a target's destructor cannot deadlock on the table.
        let target = entry.target.take();
        // A u64 cannot be exhausted by frees, so wrapping never happens in practice.
        entry.generation = entry.generation.wrapping_add(1);
        table.freed.push_back(slot.index);
        self.bound.fetch_sub(1, Ordering::Relaxed);
        drop(table);
        drop(target);
        Ok(())
    }
}

impl Drop for TrampolinePool {
    /// Retires every slot the pool still holds: unbound (its target dropped, so what the target kept
    /// alive goes), and never put back among the free slots, since the C registration that would have
    /// been removed first may still be there.
    fn drop(&mut self) {
        if self.bound.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut table = TABLE.write();
        let targets: Vec<Option<EventTarget>> = table
            .slots
            .iter_mut()
            .filter(|slot| slot.owner == self.id && slot.target.is_some())
            .map(|slot| {
                slot.generation = slot.generation.wrapping_add(1);
                slot.target.take()
            })
            .collect();
        drop(table);
        // As in `free`: targets are dropped after the lock is released.
        drop(targets);
    }
}

/// Empties the whole table, retired slots included, so a test starts with every trampoline free.
/// Sound only once nothing in C can call a trampoline (the tests reset the toolkit first) and no other
/// pool is in use (the tests hold a lock).
#[cfg(test)]
pub(super) fn reset_table() {
    let mut table = TABLE.write();
    let targets: Vec<Option<EventTarget>> = table
        .slots
        .iter_mut()
        .map(|slot| {
            slot.generation = slot.generation.wrapping_add(1);
            slot.target.take()
        })
        .collect();
    table.fresh = 0;
    table.freed.clear();
    drop(table);
    drop(targets);
}

/// The target bound to `index`, if any.
fn bound_target(index: u32) -> Option<EventTarget> {
    TABLE.read().slot(index)?.target.clone()
}

/// Delivers one call from trampoline `index`; whether it reached a target that accepted it.
///
/// # Safety
/// `event` must be null or point to an `event_t` that stays valid for the duration of the call.
unsafe fn deliver(index: u32, event: *const ffi::event_t) -> bool {
    // SAFETY: forwarded from this function's own contract.
    let Some(event) = (unsafe { Event::snapshot(event) }) else {
        return false;
    };
    // The table lock is released before the target runs, so a target may allocate or free slots.
    let Some(target) = bound_target(index) else {
        return false;
    };
    target(&event).is_ok()
}

impl fmt::Debug for TrampolinePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrampolinePool")
            .field("id", &self.id)
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
    // SAFETY: forwarded from this function's own contract. `AssertUnwindSafe`: after a panic nothing
    // observes the target's state except later calls of the same target, which is the target's concern.
    let delivered = panic::catch_unwind(AssertUnwindSafe(|| unsafe { deliver(slot, event) }));
    if !matches!(delivered, Ok(true)) {
        DEAD_CALLS.fetch_add(1, Ordering::Relaxed);
    }
}
