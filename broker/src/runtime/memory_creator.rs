//! Host-owned linear memories: every instance's memory is a reservation the broker made itself, so the
//! shared mode can map a region's memfd pages into it.
//!
//! A memory is one `PROT_NONE` reservation of `reserved + guard` bytes (as wasmtime's own allocator
//! makes); the accessible prefix is made read-write as the memory grows, and growth only ever touches
//! pages beyond the current size, so windows mapped inside the memory survive `memory.grow`. The base
//! never moves. Dropping the memory unmaps the whole reservation, windows included.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`).

#![allow(unsafe_code, reason = "owns the raw reservations of linear memories")]

use std::ffi::c_void;

use rustix::mm::{mmap_anonymous, mprotect, munmap, MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Host page size the broker assumes for reservations and windows.
pub(crate) const HOST_PAGE: usize = 4096;

/// Reservation made when wasmtime asks for none (it always does on 64-bit hosts with default settings).
const DEFAULT_RESERVATION: usize = 4 << 30;

fn round_up(n: usize) -> Option<usize> {
    n.checked_add(HOST_PAGE - 1).map(|v| v & !(HOST_PAGE - 1))
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

/// One linear memory: a reservation whose first `size` bytes are read-write.
pub(crate) struct HostMemory {
    base: usize,
    size: usize,
    /// Bytes the memory may grow to without moving.
    capacity: usize,
    /// The whole mapping: capacity plus guard.
    mapping_len: usize,
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
        let mapping_len =
            capacity.checked_add(round_up(guard).ok_or("guard overflows")?).ok_or("reservation overflows")?;
        // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel chooses aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                mapping_len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| format!("reserving {mapping_len} bytes for a linear memory failed: {e}"))?;
        let mut memory = HostMemory { base: base as usize, size: 0, capacity, mapping_len };
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
        // SAFETY: the mapping is ours, of exactly `mapping_len` bytes, and wasmtime drops the memory only
        // once no instance can touch it; every window inside was unregistered when the instance's
        // capabilities were removed, before its store dropped.
        let _ = unsafe { munmap(self.base as *mut c_void, self.mapping_len) };
    }
}
