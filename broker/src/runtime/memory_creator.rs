//! Host-owned linear memories: every instance's memory is a reservation the broker made itself, so the
//! shared mode can map a region's memfd pages into it.
//!
//! A memory is one `PROT_NONE` reservation of a leading guard page plus `reserved + guard` bytes (as
//! wasmtime's own allocator makes, with the page before); the accessible prefix is made read-write as
//! the memory grows, and growth only ever touches pages beyond the current size, so windows mapped
//! inside the memory survive `memory.grow`. The base never moves. Dropping the memory unmaps the whole
//! reservation, windows included.
//!
//! Each memory publishes its [`MemoryShape`] (base and accessible size), found by base
//! address with [`shape_of`]. The shape is what `runtime::fault` reads, without locks, inside a signal
//! handler, and what [`MemoryShape::scrub`] uses to replace every page of the memory at once.
//!
//! **Invariant:** every mapping made over a part of the accessible prefix that hands pages back to the
//! guest uses [`ANON_FLAGS`] and read-write protection, exactly as the prefix was made, so the kernel
//! merges it with its neighbours and a map/unmap cycle leaves the process's mapping count unchanged.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`).

#![allow(unsafe_code, reason = "owns the raw reservations of linear memories")]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;
use rustix::mm::{mmap_anonymous, mprotect, munmap, MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Flags of every anonymous mapping inside a reservation. Pages handed back to the guest must be mapped
/// with exactly these (and read-write), or the kernel cannot merge them with the pages around them and
/// each map/unmap cycle would cost the process two more mappings.
pub(crate) const ANON_FLAGS: MapFlags = MapFlags::PRIVATE.union(MapFlags::NORESERVE);

/// Where a linear memory lives and how much of it is accessible, readable without locks (a signal
/// handler reads it).
#[derive(Debug)]
pub(crate) struct MemoryShape {
    base: usize,
    /// Accessible bytes (the memory's byte size).
    size: AtomicUsize,
}

impl MemoryShape {
    /// Host address of the memory's first byte.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// The accessible size in bytes, rounded up to whole host pages.
    pub(crate) fn accessible(&self) -> usize {
        round_up(self.size.load(Ordering::Acquire)).unwrap_or(usize::MAX)
    }

    /// Whether host address `addr` lies in the accessible part of this memory.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr - self.base < self.accessible()
    }

    /// Replaces every accessible page with fresh zeroed read-write pages of the memory's own kind: every
    /// window (read-only, read-write or revoked) is gone at once, and nothing of any region is reachable
    /// through this memory any more. Its contents are lost; only a memory whose instance is being
    /// stopped is scrubbed. The range starts at the reservation's start and ends where its inaccessible
    /// tail begins, so the kernel never has to split a mapping of someone else to do it.
    ///
    /// Async-signal-safe: one `mmap` system call, no allocation, no lock.
    ///
    /// # Safety
    /// The memory must be alive (its owner, a store, has not dropped it), and no host code may hold a
    /// reference into its bytes (raw-pointer copies in progress are fine: they see zeros).
    pub(crate) unsafe fn scrub(&self) -> rustix::io::Result<()> {
        let len = self.accessible();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `[base, base+len)` is the accessible prefix of our own live reservation (the caller's
        // obligation); MAP_FIXED replaces exactly those pages with private zero pages of the same kind
        // as the prefix, so the address range stays ours and nothing outside it changes.
        unsafe {
            mmap_anonymous(
                self.base as *mut c_void,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                ANON_FLAGS | MapFlags::FIXED,
            )
        }
        .map(|_| ())
    }
}

/// Every live memory's shape, by base address, so an instance can find the shape of the memory
/// wasmtime created for it.
static SHAPES: LazyLock<Mutex<HashMap<usize, Weak<MemoryShape>>>> = LazyLock::new(Default::default);

/// The shape of the live memory at host address `base`, if the broker created it.
pub(crate) fn shape_of(base: usize) -> Option<Arc<MemoryShape>> {
    SHAPES.lock().get(&base).and_then(Weak::upgrade)
}

/// Host page size the broker assumes for reservations and windows.
pub(crate) const HOST_PAGE: usize = broker_abi::PAGE_SIZE as usize;

/// Reservation made when wasmtime asks for none (it always does on 64-bit hosts with default settings).
const DEFAULT_RESERVATION: usize = 4 << 30;

/// `n` bytes rounded up to whole pages; `None` on overflow.
fn round_up(n: usize) -> Option<usize> {
    let aligned = broker_abi::PageAligned::round_up(u64::try_from(n).ok()?)?;
    usize::try_from(aligned.bytes()).ok()
}

/// Creates [`HostMemory`] for every linear memory of every instance.
pub(crate) struct BrokerMemoryCreator;

// SAFETY: `new_memory` returns memories that satisfy `LinearMemory`'s contract (see `HostMemory`): page
// aligned, zero-filled, `guard_size_in_bytes` of unmapped (PROT_NONE) space after the reservation, and a
// base that never moves while the memory grows within its reservation.
unsafe impl MemoryCreator for BrokerMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        HostMemory::new(minimum, maximum, reserved_size_in_bytes, guard_size_in_bytes)
            .map(|m| Box::new(m) as Box<dyn LinearMemory>)
    }
}

/// One linear memory: a reservation whose first `size` bytes are read-write, preceded by one
/// inaccessible guard page of its own (so the memory's first mapping never merges with whatever the
/// kernel placed below it).
pub(crate) struct HostMemory {
    base: usize,
    size: usize,
    /// Bytes the memory may grow to without moving.
    capacity: usize,
    /// The whole mapping: the leading guard page, capacity and the trailing guard.
    mapping_len: usize,
    /// Published for lock-free readers (see [`shape_of`]).
    shape: Arc<MemoryShape>,
}

impl HostMemory {
    fn new(
        minimum: usize,
        maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Result<HostMemory, String> {
        let wanted = reserved.unwrap_or_else(|| maximum.unwrap_or(DEFAULT_RESERVATION).max(minimum));
        let capacity = round_up(wanted).ok_or("memory reservation overflows")?;
        if minimum > capacity {
            return Err(format!("minimum memory of {minimum} bytes exceeds the reservation of {capacity}"));
        }
        // One guard page before the memory, then the memory's capacity, then the guard wasmtime asked for.
        let mapping_len = capacity
            .checked_add(round_up(guard).ok_or("guard overflows")?)
            .and_then(|l| l.checked_add(HOST_PAGE))
            .ok_or("reservation overflows")?;
        // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel chooses aliases nothing.
        let start =
            unsafe { mmap_anonymous(std::ptr::null_mut(), mapping_len, ProtFlags::empty(), ANON_FLAGS) }
                .map_err(|e| format!("reserving {mapping_len} bytes for a linear memory failed: {e}"))?;
        let base = start as usize + HOST_PAGE;
        let shape = Arc::new(MemoryShape { base, size: AtomicUsize::new(0) });
        SHAPES.lock().insert(base, Arc::downgrade(&shape));
        // From here on, dropping `memory` unmaps the reservation and unregisters the shape.
        let mut memory = HostMemory { base, size: 0, capacity, mapping_len, shape };
        memory.make_accessible(minimum).map_err(|e| e.to_string())?;
        Ok(memory)
    }

    /// Makes `[0, new_size)` read-write; pages below the current size are left alone (windows live there).
    fn make_accessible(&mut self, new_size: usize) -> wasmtime::Result<()> {
        let (from, to) =
            (round_up(self.size).unwrap_or(self.capacity), round_up(new_size).unwrap_or(usize::MAX));
        if to > self.capacity {
            wasmtime::bail!("memory of {new_size} bytes exceeds its reservation of {} bytes", self.capacity);
        }
        if to > from {
            // SAFETY: `[from, to)` lies inside our own reservation (`to <= capacity`) and above every byte
            // wasm or a window can use (`from` is the old size, rounded up), so changing its protection
            // affects nothing anyone holds.
            unsafe {
                mprotect(
                    (self.base + from) as *mut c_void,
                    to - from,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }
            .map_err(|e| wasmtime::format_err!("growing a linear memory failed: {e}"))?;
        }
        self.size = new_size;
        self.shape.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

// SAFETY: the memory is page aligned (mmap), its size is a multiple of the wasm page size (wasmtime only
// asks for such sizes), `as_ptr` never changes, growth stays within `byte_capacity`, and the reservation
// is followed by the guard region wasmtime asked for.
unsafe impl LinearMemory for HostMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        self.make_accessible(new_size)
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        let start = self.base - HOST_PAGE;
        {
            let mut shapes = SHAPES.lock();
            if shapes.get(&self.base).is_some_and(|w| w.as_ptr() == Arc::as_ptr(&self.shape)) {
                shapes.remove(&self.base);
            }
        }
        // SAFETY: the mapping is ours, from the guard page before `base`, of exactly `mapping_len` bytes,
        // and wasmtime drops the memory only
        // once no instance can touch it; every window inside was unregistered when the instance's
        // capabilities were removed, before its store dropped.
        if let Err(e) = unsafe { munmap(start as *mut c_void, self.mapping_len) } {
            // Unmapping our own whole reservation cannot fail; if it ever did, the address space stays
            // reserved (leaked), which is safe: nothing else can be mapped there.
            tracing::error!(
                base = self.base,
                len = self.mapping_len,
                "unmapping a linear memory failed: {e}"
            );
        }
    }
}
