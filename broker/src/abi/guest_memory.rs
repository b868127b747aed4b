//! Guest memory as host functions see it: one accessor, taken from the memory fence's guard, through
//! which every byte a host function reads from or writes to a guest passes.
//!
//! A guest's linear memory can contain shared windows that other apps change concurrently, read-only
//! windows and revoked (inaccessible) ones. So no `&[u8]` or `&mut [u8]` over guest memory ever exists
//! in the host: [`GuestMemory::check`] turns a guest `(ptr, len)` into a [`GuestBytes`] once, after
//! checking it against the memory's size (overflow caught) and against the fence's [`Guards`], and
//! `GuestBytes` copies through raw pointers. A `GuestMemory` can only be made from a fence guard, so
//! host code cannot touch guest memory without holding the fence (no window is swapped meanwhile) and
//! cannot get at the bytes without the check: forgetting either does not compile.
//!
//! [`check_bounds`] checks a range against the memory's size only, without the fence, for out-pointers
//! checked before an operation that takes the capability lock (which must not be taken while holding
//! the fence); the write itself still goes through a `GuestBytes`.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`).

#![allow(unsafe_code, reason = "copies to and from guest memory through raw pointers")]

use std::marker::PhantomData;

use parking_lot::RwLockReadGuard;

use super::{AbiError, Ctx};
use crate::mode::shared::{Fence, Guards};
use crate::region::{RegionError, RegionMemory};

/// A guest's linear memory with its fence held for reading: no window in it is swapped, and its guards
/// stay as they are, while this lives.
pub(crate) struct GuestMemory<'c> {
    /// Host address of byte 0; meaningful only when `size > 0`.
    base: usize,
    size: usize,
    /// Borrowed from the calling instance's fence (no reference count is touched per host call).
    guards: RwLockReadGuard<'c, Guards>,
}

/// The checked bytes `[ptr, ptr+len)` of a guest's memory, readable (and writable if checked so).
pub(crate) struct GuestBytes<'m> {
    /// Inside the memory `'m` borrows; valid while it (and so its fence guard) lives.
    host: *mut u8,
    len: usize,
    writable: bool,
    _memory: PhantomData<&'m ()>,
}

fn range(size: usize, ptr: u32, len: u32) -> Result<(usize, usize), AbiError> {
    // Made only on failure: an error built and dropped on every successful check was a measurable
    // share of a small host call.
    let bad = || AbiError::BadPointer { ptr, len, memory_len: size };
    let start = usize::try_from(ptr).map_err(|_| bad())?;
    let n = usize::try_from(len).map_err(|_| bad())?;
    match start.checked_add(n) {
        Some(end) if end <= size => Ok((start, n)),
        _ => Err(bad()),
    }
}

/// Checks that `[ptr, ptr+len)` lies in a memory of `size` bytes, without touching it.
///
/// # Errors
/// [`AbiError::BadPointer`].
pub(crate) fn check_bounds(size: usize, ptr: u32, len: u32) -> Result<(), AbiError> {
    range(size, ptr, len).map(|_| ())
}

impl<'c> GuestMemory<'c> {
    /// The calling instance's memory (a guest without one has a memory of 0 bytes, so every non-empty
    /// range is refused), with its fence held for reading.
    ///
    /// Never take the capability lock while holding this (lock order: capability space, then fence).
    pub(crate) fn lock(caller: &'c Ctx<'_>) -> GuestMemory<'c> {
        Self::lock_through(&caller.data().ctx.fence, caller)
    }

    /// As [`GuestMemory::lock`], holding the fence through `fence`, a clone of the caller's own
    /// `MemoryFence`, so that the caller's context can still be changed while this lives.
    pub(crate) fn lock_through(fence: &'c Fence, caller: &Ctx<'_>) -> GuestMemory<'c> {
        let ctx = &caller.data().ctx;
        debug_assert!(std::ptr::eq(fence, &*ctx.fence), "the caller's own fence");
        let guards = fence.read();
        // Read after the fence is held; the memory's base never moves and its size only grows, which no
        // host function does.
        let (base, size) =
            ctx.memory().map_or((0, 0), |m| (m.data_ptr(caller) as usize, m.data_size(caller)));
        GuestMemory { base, size, guards }
    }

    /// Checks `[ptr, ptr+len)` once, for reading or (with `write`) for writing.
    ///
    /// # Errors
    /// [`AbiError::BadPointer`] outside the memory, [`AbiError::GuardedPointer`] over a revoked window
    /// (or, for a write, a read-only one), or over any byte of a sealed memory.
    pub(crate) fn check(&self, ptr: u32, len: u32, write: bool) -> Result<GuestBytes<'_>, AbiError> {
        let (start, n) = range(self.size, ptr, len)?;
        if !self.guards.allows(ptr, len, write) {
            return Err(AbiError::GuardedPointer { ptr, len });
        }
        Ok(GuestBytes {
            host: self.base.wrapping_add(start) as *mut u8,
            len: n,
            writable: write,
            _memory: PhantomData,
        })
    }

    /// Copies `[ptr, ptr+len)` out once.
    ///
    /// # Errors
    /// As [`GuestMemory::check`].
    pub(crate) fn read(&self, ptr: u32, len: u32) -> Result<Vec<u8>, AbiError> {
        let src = self.check(ptr, len, false)?;
        let mut out = vec![0u8; src.len()];
        src.read_into(0, &mut out)?;
        Ok(out)
    }

    /// Writes `bytes` at `ptr`.
    ///
    /// # Errors
    /// As [`GuestMemory::check`].
    pub(crate) fn write(&self, ptr: u32, bytes: &[u8]) -> Result<(), AbiError> {
        let len = u32::try_from(bytes.len()).map_err(|_| AbiError::BadPointer {
            ptr,
            len: u32::MAX,
            memory_len: self.size,
        })?;
        self.check(ptr, len, true)?.write_from(0, bytes)
    }

    /// Writes a little-endian `u32` at `ptr`.
    ///
    /// # Errors
    /// As [`GuestMemory::check`].
    pub(crate) fn write_u32(&self, ptr: u32, v: u32) -> Result<(), AbiError> {
        self.write(ptr, &v.to_le_bytes())
    }
}

/// A copy between a region and a checked guest range that does not fit the range (a broker bug),
/// reported as the region's own out-of-bounds error.
fn region_oob(region: &RegionMemory, offset: u64, n: usize) -> RegionError {
    RegionError::OutOfBounds { offset, len: u64::try_from(n).unwrap_or(u64::MAX), size: region.len() }
}

/// An internal offset past a checked range: a broker bug, reported to the guest as a bad pointer.
fn past_end(at: usize, n: usize, len: usize) -> AbiError {
    AbiError::BadPointer {
        ptr: u32::try_from(at).unwrap_or(u32::MAX),
        len: u32::try_from(n).unwrap_or(u32::MAX),
        memory_len: len,
    }
}

impl GuestBytes<'_> {
    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Host address of byte `at` of `n` bytes, if `[at, at+n)` lies inside the checked range.
    fn at(&self, at: usize, n: usize) -> Result<*mut u8, AbiError> {
        match at.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.host.wrapping_add(at)),
            _ => Err(past_end(at, n, self.len)),
        }
    }

    /// Copies `dst.len()` bytes starting at byte `at` of this range into `dst`.
    ///
    /// # Errors
    /// [`AbiError::BadPointer`] if they lie past the range (a broker bug).
    pub(crate) fn read_into(&self, at: usize, dst: &mut [u8]) -> Result<(), AbiError> {
        let src = self.at(at, dst.len())?;
        if dst.is_empty() {
            // Nothing to copy, and the range's address may be null (a guest without memory).
            return Ok(());
        }
        // SAFETY: `[src, src+dst.len())` lies inside a range `GuestMemory::check` proved to be accessible
        // guest memory (not a revoked window), which stays mapped while the fence guard behind `'m` is
        // held; `dst` is a host buffer, never guest memory, so they do not overlap. Bytes other apps
        // change concurrently are copied as whatever they are.
        unsafe { crate::region::copy_raw(src.cast_const(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` to byte `at` of this range.
    ///
    /// # Errors
    /// [`AbiError::GuardedPointer`] if the range was checked for reading only; [`AbiError::BadPointer`]
    /// past the range (a broker bug).
    pub(crate) fn write_from(&self, at: usize, src: &[u8]) -> Result<(), AbiError> {
        let dst = self.writable_at(at, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: as in `read_into`, and the range was checked writable (no read-only or revoked window
        // in it); `src` is a host buffer, never guest memory.
        unsafe { crate::region::copy_raw(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    fn writable_at(&self, at: usize, n: usize) -> Result<*mut u8, AbiError> {
        if !self.writable {
            return Err(AbiError::GuardedPointer {
                ptr: u32::try_from(at).unwrap_or(u32::MAX),
                len: u32::try_from(n).unwrap_or(u32::MAX),
            });
        }
        self.at(at, n)
    }

    /// Copies `n` bytes at absolute `offset` of a region into byte `at` of this range, with no buffer in
    /// between.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] from the region; an internal range error becomes one too.
    pub(crate) fn copy_from_region(
        &self,
        at: usize,
        n: usize,
        region: &RegionMemory,
        offset: u64,
    ) -> Result<(), RegionError> {
        let dst = self.writable_at(at, n).map_err(|_| region_oob(region, offset, n))?;
        if n == 0 {
            return region.copy_out(offset, &mut []);
        }
        // SAFETY: `[dst, dst+n)` lies inside checked, writable guest memory that stays mapped while the
        // fence guard is held; nothing holds a reference to it.
        unsafe { region.copy_out_raw(offset, dst, n) }
    }

    /// Copies `n` bytes at byte `at` of this range to absolute `offset` of a region.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] from the region; an internal range error becomes one too.
    pub(crate) fn copy_to_region(
        &self,
        at: usize,
        n: usize,
        region: &RegionMemory,
        offset: u64,
    ) -> Result<(), RegionError> {
        let src = self.at(at, n).map_err(|_| region_oob(region, offset, n))?;
        if n == 0 {
            return region.copy_in(offset, &[]);
        }
        // SAFETY: `[src, src+n)` lies inside checked, readable guest memory that stays mapped while the
        // fence guard is held.
        unsafe { region.copy_in_raw(offset, src.cast_const(), n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fence of the test's own (leaked: a few bytes per test).
    fn guards() -> RwLockReadGuard<'static, Guards> {
        Box::leak(Box::new(parking_lot::RwLock::new(Guards::default()))).read()
    }

    fn memory(bytes: &mut [u8]) -> GuestMemory<'static> {
        let guards = guards();
        GuestMemory { base: bytes.as_mut_ptr() as usize, size: bytes.len(), guards }
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        let mut mem = [0u8; 16];
        let m = memory(&mut mem);
        assert!(m.check(0, 16, false).is_ok());
        assert!(m.check(16, 0, true).is_ok());
        assert_eq!(m.check(8, 9, false).err(), Some(AbiError::BadPointer { ptr: 8, len: 9, memory_len: 16 }));
        assert!(m.check(u32::MAX, 2, false).is_err());
        assert!(m.check(17, 0, false).is_err());
        m.write_u32(12, 0x0403_0201).expect("in range");
        assert_eq!(m.read(12, 4).expect("in range"), vec![1, 2, 3, 4]);
        let none = memory(&mut []);
        assert_eq!(
            none.check(0, 1, false).err(),
            Some(AbiError::BadPointer { ptr: 0, len: 1, memory_len: 0 })
        );
    }

    #[test]
    fn empty_ranges_of_a_guest_without_memory_copy_nothing() {
        // A guest without a memory: base 0. Empty ranges pass the check and copy nothing (never
        // through the null address).
        let m = GuestMemory { base: 0, size: 0, guards: guards() };
        let r = m.check(0, 0, true).expect("an empty range is in bounds");
        r.read_into(0, &mut []).expect("nothing to read");
        r.write_from(0, &[]).expect("nothing to write");
        let region = RegionMemory::new_memfd("t", 8).expect("memfd");
        r.copy_from_region(0, 0, &region, 8).expect("nothing to copy");
        r.copy_to_region(0, 0, &region, 8).expect("nothing to copy");
        assert!(m.check(0, 1, false).is_err());
    }

    #[test]
    fn a_range_checked_for_reading_cannot_be_written() {
        let mut mem = [0u8; 8];
        let m = memory(&mut mem);
        let r = m.check(0, 8, false).expect("in range");
        assert_eq!(r.write_from(0, &[1]), Err(AbiError::GuardedPointer { ptr: 0, len: 1 }));
        let w = m.check(0, 8, true).expect("in range");
        assert!(w.write_from(4, &[0; 5]).is_err(), "past the checked range");
        w.write_from(4, &[9; 4]).expect("inside");
        let mut out = [0u8; 4];
        r.read_into(4, &mut out).expect("inside");
        assert_eq!(out, [9; 4]);
    }
}
