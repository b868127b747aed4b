//! Shared windows: a shared-mode region's pages mapped into this app's memory, plus atomics and a
//! single-producer single-consumer ring for app-to-app streaming.
//!
//! Other apps (and host threads) may change the bytes at any time, so this module never hands out
//! `&[u8]`, `&mut [u8]` or `&T` over them: Rust assumes the bytes behind such references do not change,
//! and the compiler may rely on it. Instead a window offers what stays true under concurrent change, as
//! wasmtime's `SharedMemory::data` does:
//!
//! - by-value [`SharedWindow::load`] and [`SharedWindow::store`] of `Pod` values at any offset, which
//!   compile to plain (unaligned) loads and stores;
//! - bulk copies out of and into the window, [`SharedWindow::read_into`] and
//!   [`SharedWindow::write_from`];
//! - atomics, [`SharedWindow::atomic_u32`] and [`SharedWindow::atomic_u64`];
//! - the raw bytes as cells, [`SharedWindow::cells`] (`&[UnsafeCell<u8>]`), for code that needs
//!   pointers into the window.
//!
//! Every access copies through the window's raw pointer, bounds checked, never through a reference to
//! the bytes. Plain loads see whatever is there, possibly half of another app's store; to publish data
//! between apps use the atomics (acquire/release or sequentially consistent), as threads sharing memory
//! would, and copy what you decide on once before validating it. A window is read-only unless mapped
//! with [`Region::map_mut`]; only a read-write window offers `store` and `write_from`, and a store into
//! a read-only window through its raw address traps this app. Dropping the window unmaps it and gives
//! the memory back.
//!
//! This module may use `unsafe` (see `ARCHITECTURE.md`): it owns the window's allocation and every raw
//! access to it, the ring's included.

#![allow(unsafe_code, reason = "owns window allocations and raw shared-memory accesses")]

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytemuck::Pod;

use crate::{sys, Error, Region, Result};

/// Host page size: windows are allocated aligned to it.
const PAGE: usize = broker_abi::PAGE_SIZE as usize;

/// Marker: the window is mapped read-only.
#[derive(Debug)]
pub enum ReadOnly {}
/// Marker: the window is mapped read-write.
#[derive(Debug)]
pub enum ReadWrite {}

/// A region's pages mapped into this app's memory, read through by-value loads, copies, atomics and
/// cells (and written through them when mapped read-write); never borrowed as `&[u8]`.
///
/// **Invariant:** `[ptr, ptr + len)` lies inside an allocation of this window's own (`layout`), mapped
/// to the region from construction until drop and reached only through this window; no `&[u8]`,
/// `&mut [u8]` or `&T` over it is ever created.
#[derive(Debug)]
pub struct SharedWindow<'r, A = ReadOnly> {
    region: &'r Region,
    ptr: *mut u8,
    len: usize,
    layout: Layout,
    _access: PhantomData<A>,
}

impl<'r, A> SharedWindow<'r, A> {
    pub(crate) fn map(region: &'r Region, writable: bool) -> Result<SharedWindow<'r, A>> {
        let len = usize::try_from(region.len()?).map_err(|_| Error::OutOfBounds)?;
        // Windows span whole pages, at least one.
        let mapped = u64::try_from(len)
            .ok()
            .and_then(broker_abi::PageAligned::round_up)
            .map(|p| p.max(broker_abi::PageAligned::PAGE).bytes())
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(Error::OutOfBounds)?;
        let layout = Layout::from_size_align(mapped, PAGE).map_err(|_| Error::OutOfBounds)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::QuotaExceeded);
        }
        let flags = if writable { broker_abi::map_flags::WRITE } else { 0 };
        // SAFETY: `[ptr, ptr+mapped)` is a fresh allocation of ours; nothing else references it, and from
        // here on it is only reached through this window.
        let rc = unsafe { sys::region_map(region.raw(), ptr, mapped, flags) };
        if let Err(e) = Error::check(rc) {
            // SAFETY: allocated above with this layout and not mapped (the map failed).
            unsafe { dealloc(ptr, layout) };
            return Err(e);
        }
        Ok(SharedWindow { region, ptr, len, layout, _access: PhantomData })
    }

    /// The window's address in this app's memory (page aligned).
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// The window's length in bytes: the capability's range (the mapping itself is rounded up to whole
    /// pages).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window maps no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The window's bytes as cells that other apps may change at any time, as wasmtime's
    /// `SharedMemory::data`: reading or writing them needs `unsafe` code that accounts for concurrent
    /// change, through the cells' raw pointers and never by turning them into `&[u8]` or `&mut [u8]`
    /// (in a read-only window, a write traps). Prefer [`SharedWindow::load`],
    /// [`SharedWindow::read_into`] and the atomics.
    #[inline]
    pub fn cells(&self) -> &[UnsafeCell<u8>] {
        // SAFETY: `UnsafeCell<u8>` has the layout of `u8`, and `ptr` is valid for `len` bytes for as long
        // as `&self` lives (the window invariant). `UnsafeCell` tells the compiler the bytes may change
        // behind the shared reference, which is what other apps do.
        unsafe { core::slice::from_raw_parts(self.ptr.cast::<UnsafeCell<u8>>(), self.len) }
    }

    /// A pointer to `[offset, offset + len)` of the window, bounds checked.
    #[inline]
    fn range(&self, offset: usize, len: usize) -> Result<*mut u8> {
        let end = offset.checked_add(len).ok_or(Error::OutOfBounds)?;
        if end > self.len {
            return Err(Error::OutOfBounds);
        }
        // SAFETY: `offset <= end <= len`, so the result stays inside the window's allocation (or one past
        // its end when `offset == len`).
        Ok(unsafe { self.ptr.add(offset) })
    }

    /// A pointer to a `T` at `offset`, bounds checked and aligned for `T`.
    #[inline]
    fn aligned<T>(&self, offset: usize) -> Result<*mut T> {
        let p = self.range(offset, core::mem::size_of::<T>())?;
        // The window is page aligned, so an aligned offset is an aligned address.
        if !offset.is_multiple_of(core::mem::align_of::<T>()) {
            return Err(Error::Unaligned);
        }
        Ok(p.cast())
    }

    /// Reads the `Pod` value at `offset` (any alignment) by value: a plain load, no copy call. Another
    /// app's concurrent store may be seen in part.
    ///
    /// # Errors
    /// `OutOfBounds` if the value does not lie inside the window.
    #[inline]
    pub fn load<T: Pod>(&self, offset: usize) -> Result<T> {
        let p = self.range(offset, core::mem::size_of::<T>())?.cast::<T>();
        // SAFETY: `[p, p + size_of::<T>())` lies inside the window (checked) and is readable for the
        // window's life; `read_unaligned` needs no alignment, and any bit pattern is a valid `T` (`Pod`).
        // It copies through the raw pointer, so no reference to the shared bytes exists.
        Ok(unsafe { p.read_unaligned() })
    }

    /// Copies `buf.len()` bytes at `offset` out of the window into `buf`.
    ///
    /// # Errors
    /// `OutOfBounds` if the range does not lie inside the window.
    #[inline]
    pub fn read_into(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let src = self.range(offset, buf.len())?;
        // SAFETY: the source lies inside the window (checked) and is readable for its life; `buf` is a
        // `&mut [u8]` valid for its length, so it cannot overlap the window, which no one may borrow as a
        // slice (the window invariant, and the contract of `cells`).
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// The `u32` at an aligned `offset` as an atomic shared with other apps.
    ///
    /// # Errors
    /// `OutOfBounds`, `Unaligned`.
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32> {
        // SAFETY: in bounds and 4-byte aligned (checked); the bytes live as long as the window, and all
        // cross-app synchronisation through them is atomic.
        self.aligned::<u32>(offset).map(|p| unsafe { AtomicU32::from_ptr(p) })
    }

    /// The `u64` at an aligned `offset` as an atomic shared with other apps.
    ///
    /// # Errors
    /// `OutOfBounds`, `Unaligned`.
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64> {
        // SAFETY: as in `atomic_u32`, with 8-byte alignment checked.
        self.aligned::<u64>(offset).map(|p| unsafe { AtomicU64::from_ptr(p) })
    }

    /// The region this window maps.
    pub fn region(&self) -> &'r Region {
        self.region
    }
}

impl<'r> SharedWindow<'r, ReadWrite> {
    /// Writes `value` at `offset` (any alignment) by value: a plain store, no copy call. Other apps may
    /// see it in part until they synchronise with this one through an atomic.
    ///
    /// Takes `&self`: the bytes are shared anyway, as with atomics.
    ///
    /// # Errors
    /// `OutOfBounds` if the value does not lie inside the window.
    #[inline]
    pub fn store<T: Pod>(&self, offset: usize, value: &T) -> Result<()> {
        let p = self.range(offset, core::mem::size_of::<T>())?.cast::<T>();
        // SAFETY: `[p, p + size_of::<T>())` lies inside the window (checked), which is mapped writable
        // (`ReadWrite`); `write_unaligned` needs no alignment and writes through the raw pointer, so no
        // reference to the shared bytes exists.
        unsafe { p.write_unaligned(*value) };
        Ok(())
    }

    /// Copies `data` into the window at `offset`.
    ///
    /// # Errors
    /// `OutOfBounds` if the range does not lie inside the window.
    #[inline]
    pub fn write_from(&self, offset: usize, data: &[u8]) -> Result<()> {
        let dst = self.range(offset, data.len())?;
        // SAFETY: the destination lies inside the window (checked), which is mapped writable (`ReadWrite`);
        // `data` is valid for its length and cannot overlap the window, which no one may borrow as a slice.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Turns this read-write window into a ring buffer endpoint (see [`SpscRing`]).
    ///
    /// # Errors
    /// `OutOfBounds` if the window is too small for the ring's header and some data.
    pub fn into_ring(self) -> Result<SpscRing<'r>> {
        SpscRing::new(self)
    }
}

impl<A> Drop for SharedWindow<'_, A> {
    fn drop(&mut self) {
        if Error::check(sys::region_unmap(self.region.raw(), self.ptr as usize)).is_ok() {
            // SAFETY: the window is unmapped, so the pages are plain memory of ours again, allocated with
            // this layout.
            unsafe { dealloc(self.ptr, self.layout) };
        }
        // Otherwise the pages may still belong to the region (or trap): leaking them is the only safe
        // choice.
    }
}

/// How a consumer waits for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Park in the host (no busy spin) for up to this many milliseconds per wait.
    Park(u32),
    /// Spin, polling the ring.
    Poll,
}

const HEAD: usize = 0;
const TAIL: usize = 64;
const WAITING: usize = 128;
const DATA: usize = 192;

/// A single-producer single-consumer ring of length-prefixed messages over a read-write window.
///
/// Layout (offsets in the window): producer counter at 0, consumer counter at 64, the consumer's
/// "parked" flag at 128, data from 192. Counters are byte positions that wrap; the producer publishes
/// with a release store and the consumer reads with an acquire load. Messages are copied in and out
/// through the window's raw pointer; the ring never borrows the shared bytes.
#[derive(Debug)]
pub struct SpscRing<'r> {
    window: SharedWindow<'r, ReadWrite>,
    capacity: u32,
}

impl<'r> SpscRing<'r> {
    fn new(window: SharedWindow<'r, ReadWrite>) -> Result<SpscRing<'r>> {
        let capacity = window.len.checked_sub(DATA).filter(|c| *c >= 8).ok_or(Error::OutOfBounds)?;
        let capacity = u32::try_from(capacity.min(1 << 30)).map_err(|_| Error::OutOfBounds)?;
        Ok(SpscRing { window, capacity })
    }

    fn counter(&self, at: usize) -> &AtomicU32 {
        // SAFETY: the window holds at least `DATA` bytes (checked in `new`) and the counters are 4-byte
        // aligned offsets of a page-aligned window.
        unsafe { AtomicU32::from_ptr(self.window.ptr.add(at).cast()) }
    }

    /// Bytes the ring can hold (a message takes 4 more than its length).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn copy_in(&self, pos: u32, bytes: &[u8]) {
        let cap = self.capacity as usize;
        let start = pos as usize % cap;
        let first = bytes.len().min(cap - start);
        // SAFETY: both copies stay inside the data area (`start + first <= cap`, the rest from 0); the
        // producer owns these free bytes until it publishes the new head.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.window.ptr.add(DATA + start), first);
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr().add(first),
                self.window.ptr.add(DATA),
                bytes.len() - first,
            );
        }
    }

    fn copy_out(&self, pos: u32, out: &mut [u8]) {
        let cap = self.capacity as usize;
        let start = pos as usize % cap;
        let first = out.len().min(cap - start);
        // SAFETY: inside the data area as in `copy_in`; the consumer owns these published bytes until it
        // advances the tail.
        unsafe {
            core::ptr::copy_nonoverlapping(self.window.ptr.add(DATA + start), out.as_mut_ptr(), first);
            core::ptr::copy_nonoverlapping(
                self.window.ptr.add(DATA),
                out.as_mut_ptr().add(first),
                out.len() - first,
            );
        }
    }

    /// Appends a message; `Ok(false)` if the ring is full now. Wakes a parked consumer.
    ///
    /// # Errors
    /// `OutOfBounds` for a message that can never fit; host errors from the wake-up.
    pub fn push(&self, msg: &[u8]) -> Result<bool> {
        let need = u32::try_from(msg.len())
            .ok()
            .and_then(|l| l.checked_add(4))
            .filter(|n| *n <= self.capacity)
            .ok_or(Error::OutOfBounds)?;
        let head = self.counter(HEAD).load(Ordering::Relaxed);
        let tail = self.counter(TAIL).load(Ordering::Acquire);
        if self.capacity - head.wrapping_sub(tail) < need {
            return Ok(false);
        }
        self.copy_in(head, &u32::try_from(msg.len()).unwrap_or(0).to_le_bytes());
        self.copy_in(head.wrapping_add(4), msg);
        self.counter(HEAD).store(head.wrapping_add(need), Ordering::SeqCst);
        if self.counter(WAITING).load(Ordering::SeqCst) != 0 {
            Error::check(sys::region_notify(self.window.region.raw(), HEAD as i64))?;
        }
        Ok(true)
    }

    /// Takes the next message into `buf`; `Ok(None)` if the ring is empty.
    ///
    /// # Errors
    /// `OutOfBounds` if `buf` is shorter than the message (the message stays in the ring).
    pub fn pop(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        let tail = self.counter(TAIL).load(Ordering::Relaxed);
        let head = self.counter(HEAD).load(Ordering::Acquire);
        if head == tail {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.copy_out(tail, &mut len);
        let len = u32::from_le_bytes(len) as usize;
        let out = buf.get_mut(..len).ok_or(Error::OutOfBounds)?;
        self.copy_out(tail.wrapping_add(4), out);
        let used = u32::try_from(len).unwrap_or(0).wrapping_add(4);
        self.counter(TAIL).store(tail.wrapping_add(used), Ordering::Release);
        Ok(Some(len))
    }

    /// Takes the next message, waiting as `wait` says until one arrives.
    ///
    /// # Errors
    /// As [`SpscRing::pop`], and host errors from parking.
    pub fn pop_wait(&self, buf: &mut [u8], wait: Wait) -> Result<usize> {
        loop {
            if let Some(n) = self.pop(buf)? {
                return Ok(n);
            }
            match wait {
                Wait::Poll => core::hint::spin_loop(),
                Wait::Park(ms) => {
                    let head = self.counter(HEAD).load(Ordering::SeqCst);
                    self.counter(WAITING).store(1, Ordering::SeqCst);
                    if self.counter(HEAD).load(Ordering::SeqCst) == head {
                        // The host re-checks the head under its wait lock: a push in between wakes us.
                        let rc = sys::region_wait(self.window.region.raw(), HEAD as i64, head, ms);
                        if rc != crate::Status::TimedOut.code() {
                            Error::check(rc)?;
                        }
                    }
                    self.counter(WAITING).store(0, Ordering::SeqCst);
                }
            }
        }
    }
}
