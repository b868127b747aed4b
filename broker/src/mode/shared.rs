//! Shared mode: a region's pages mapped into an app's linear memory, zero copies.
//!
//! A [`Window`] is a `MAP_SHARED | MAP_FIXED` mapping of the region's memfd over page-aligned bytes of a
//! guest's linear memory (a host-owned reservation, see `runtime::memory_creator`). Read-only
//! capabilities map `PROT_READ`, so a guest store traps in wasm and never reaches the host. A window
//! belongs to the capability it was mapped through: when that capability is closed or revoked (or the
//! region destroyed, or the instance exits), the window is replaced by `PROT_NONE` pages, so a later
//! access traps instead of reading stale or zero bytes; a [`Tombstone`] remembers which region was
//! there so the trap can name it.
//!
//! **Invariant:** a `Window` exists only while the linear memory it points into is alive: windows are
//! removed with their capabilities, and an instance's capabilities are removed before its store drops.
//! **Invariant:** pages are swapped under a window only while holding the owning instance's memory
//! fence for writing; host functions hold it for reading while they touch guest memory, so host code
//! never faults on a page revoked under it.
//!
//! Memory-ordering contract for apps: a window is ordinary shared memory. Plain loads and stores are
//! not synchronised between apps; use the atomic helpers (wasm atomics, sequentially consistent or
//! acquire/release) to publish data, as with threads sharing memory.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`).

#![allow(unsafe_code, reason = "maps region pages into guest linear memories")]

use std::ffi::c_void;
use std::sync::Arc;

use parking_lot::RwLock;
use rustix::mm::{mmap, mmap_anonymous, MapFlags, ProtFlags};

use crate::capability::CapError;
use crate::mode::Mode;
use crate::region::Region;
use crate::runtime::InstanceId;

/// Host page size: windows and their guest addresses are aligned to it.
pub const HOST_PAGE: u64 = 4096;

/// What host code may not do to a range of a guest's linear memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// A read-only window: the host may read it but must not write it (a store would fault).
    ReadOnly,
    /// A revoked window: inaccessible pages, neither readable nor writable.
    Revoked,
}

/// The ranges of one guest's linear memory that are read-only or inaccessible windows. Host functions
/// check every guest range they copy to or from against it, so host code never faults on a window.
#[derive(Debug, Default)]
pub(crate) struct Guards {
    ranges: Vec<(u32, u64, Guard)>,
}

impl Guards {
    /// Whether the host may read (or, with `write`, write) `[ptr, ptr+len)`.
    pub(crate) fn allows(&self, ptr: u32, len: u32, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        self.ranges.iter().all(|(start, n, guard)| {
            !overlap(*start, *n, ptr, u64::from(len)) || (*guard == Guard::ReadOnly && !write)
        })
    }

    /// Records what `[ptr, ptr+len)` is now (`None`: ordinary memory again).
    fn set(&mut self, ptr: u32, len: u64, guard: Option<Guard>) {
        self.ranges.retain(|(start, n, _)| !overlap(*start, *n, ptr, len));
        if let Some(g) = guard {
            self.ranges.push((ptr, len, g));
        }
    }
}

/// Guards an instance's linear memory: held for reading while host code touches it, for writing while
/// a window in it is swapped; it also records which ranges are read-only or revoked windows.
pub(crate) type MemoryFence = Arc<RwLock<Guards>>;

/// Why a map or unmap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// The handle or its rights refused the operation.
    #[error(transparent)]
    Cap(#[from] CapError),
    /// Only shared-mode regions can be mapped.
    #[error("only shared-mode regions can be mapped; this one is {0}")]
    WrongMode(Mode),
    /// The guest address, or the capability's range, is not page aligned.
    #[error(
        "guest address {guest_ptr:#x} or capability range at {offset} of {len} bytes is not page aligned"
    )]
    Unaligned {
        /// The guest address.
        guest_ptr: u32,
        /// The capability's offset in the region.
        offset: u64,
        /// The capability's length.
        len: u64,
    },
    /// The length is not the capability's length rounded up to whole pages.
    #[error("window length {given} must be {expected} (the capability's range in whole pages)")]
    LengthMismatch {
        /// The length asked for.
        given: u64,
        /// The length required.
        expected: u64,
    },
    /// The window would extend past the guest's current memory.
    #[error("window at {guest_ptr:#x} of {len} bytes extends past linear memory of {memory_size} bytes")]
    BeyondMemory {
        /// The guest address.
        guest_ptr: u32,
        /// The length.
        len: u64,
        /// The memory size.
        memory_size: u64,
    },
    /// This capability already has a window.
    #[error("this capability is already mapped")]
    AlreadyMapped,
    /// The range overlaps another window of this instance.
    #[error("window at {guest_ptr:#x} of {len} bytes overlaps another window")]
    Overlap {
        /// The guest address.
        guest_ptr: u32,
        /// The length.
        len: u64,
    },
    /// No window of this capability is at that address.
    #[error("no window of this capability at {guest_ptr:#x}")]
    NotMapped {
        /// The guest address.
        guest_ptr: u32,
    },
    /// The operating system refused the mapping.
    #[error("mapping failed: {0}")]
    Os(String),
}

/// A region mapped into a guest's linear memory.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) instance: InstanceId,
    pub(crate) guest_ptr: u32,
    pub(crate) len: u64,
    pub(crate) writable: bool,
    host_addr: usize,
    fence: MemoryFence,
    pub(crate) region: Arc<Region>,
}

/// Where a revoked window was, so a trap there can name the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub(crate) guest_ptr: u32,
    pub(crate) len: u64,
    pub(crate) region: String,
}

/// A request to map, validated by the caller against the capability and memory.
pub(crate) struct MapAt {
    pub(crate) instance: InstanceId,
    /// Host address of the guest's linear memory.
    pub(crate) memory_base: usize,
    pub(crate) guest_ptr: u32,
    pub(crate) len: u64,
    pub(crate) region_offset: u64,
    pub(crate) writable: bool,
    pub(crate) fence: MemoryFence,
}

fn usize_of(v: u64) -> std::io::Result<usize> {
    usize::try_from(v).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

impl Window {
    /// Maps `region` at `at`.
    ///
    /// # Safety
    /// `[at.memory_base + at.guest_ptr, + at.len)` must lie inside the accessible part of the calling
    /// instance's live linear memory, page aligned, and no host code may hold a reference into it; the
    /// caller must drop (revoke or unmap) the window before that memory is freed.
    pub(crate) unsafe fn map(region: Arc<Region>, at: MapAt) -> std::io::Result<Window> {
        let len = usize_of(at.len)?;
        let host_addr = at
            .memory_base
            .checked_add(usize_of(u64::from(at.guest_ptr))?)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let prot = if at.writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        // SAFETY: the caller guarantees the target range is ours to replace (inside the instance's
        // memory, aligned, unreferenced); MAP_FIXED replaces exactly those pages with the region's.
        unsafe {
            mmap(
                host_addr as *mut c_void,
                len,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                region.memory.fd(),
                at.region_offset,
            )
        }?;
        // A window replaces whatever the range was (a fully covered revoked window included).
        at.fence.write().set(at.guest_ptr, at.len, (!at.writable).then_some(Guard::ReadOnly));
        Ok(Window {
            instance: at.instance,
            guest_ptr: at.guest_ptr,
            len: at.len,
            writable: at.writable,
            host_addr,
            fence: at.fence,
            region,
        })
    }

    /// Replaces the window with fresh zeroed read-write pages: the guest gets its memory back.
    pub(crate) fn unmap(self) -> std::io::Result<()> {
        self.replace(ProtFlags::READ | ProtFlags::WRITE)
    }

    /// Replaces the window with `PROT_NONE` pages and returns the tombstone to remember.
    pub(crate) fn revoke(self) -> Tombstone {
        let tomb =
            Tombstone { guest_ptr: self.guest_ptr, len: self.len, region: self.region.qualified_name() };
        // If even this fails the pages stay mapped to the region; nothing better can be done, and it
        // cannot fail for a range we mapped ourselves.
        let _ = self.replace(ProtFlags::empty());
        tomb
    }

    fn replace(self, prot: ProtFlags) -> std::io::Result<()> {
        let mut guards = self.fence.write();
        // SAFETY: by the type's invariant the range lies in the instance's live memory; holding the fence
        // for writing means no host function of that instance is touching its memory right now; wasm code
        // that touches the range afterwards traps (PROT_NONE) or sees zeros it owns (read-write).
        unsafe {
            mmap_anonymous(
                self.host_addr as *mut c_void,
                usize_of(self.len)?,
                prot,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        }?;
        let revoked = prot == ProtFlags::empty();
        guards.set(self.guest_ptr, self.len, revoked.then_some(Guard::Revoked));
        Ok(())
    }

    /// Whether `[ptr, ptr+len)` overlaps this window.
    pub(crate) fn overlaps(&self, ptr: u32, len: u64) -> bool {
        overlap(self.guest_ptr, self.len, ptr, len)
    }
}

/// Restores read-write zero pages where a tombstone was (the guest unmapping a revoked window).
///
/// # Safety
/// As [`Window::map`]: the range must lie in the calling instance's live memory.
pub(crate) unsafe fn restore(
    memory_base: usize,
    tomb: &Tombstone,
    fence: &MemoryFence,
) -> std::io::Result<()> {
    let mut guards = fence.write();
    let addr = memory_base
        .checked_add(usize_of(u64::from(tomb.guest_ptr))?)
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    // SAFETY: the caller guarantees the range is in its own live memory and that it is the calling
    // instance (so no other host code touches that memory).
    unsafe {
        mmap_anonymous(
            addr as *mut c_void,
            usize_of(tomb.len)?,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED,
        )
    }?;
    guards.set(tomb.guest_ptr, tomb.len, None);
    Ok(())
}

/// Whether two guest ranges overlap.
pub(crate) fn overlap(a: u32, a_len: u64, b: u32, b_len: u64) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}
