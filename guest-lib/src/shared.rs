//! Shared windows: a shared-mode region's pages mapped into this app's memory, used with ordinary loads
//! and stores, plus atomics and a single-producer single-consumer ring for app-to-app streaming.
//!
//! Other apps may write the bytes at any time. Plain reads through `Deref` see whatever is there; to
//! publish data between apps use the atomic helpers (acquire/release or sequentially consistent), as
//! threads sharing memory would. A window is read-only unless mapped with [`Region::map_mut`]; a store
//! into a read-only window traps this app. Dropping the window unmaps it and gives the memory back.
//!
//! This module may use `unsafe` (see `ARCHITECTURE.md`): it owns the window's allocation and the raw
//! accesses the ring makes.

#![allow(unsafe_code, reason = "owns window allocations and raw shared-memory accesses")]

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytemuck::Pod;

use crate::{sys, Error, Region, Result};

/// Host page size: windows are allocated aligned to it.
const PAGE: usize = 4096;

/// Marker: the window is mapped read-only.
#[derive(Debug)]
pub enum ReadOnly {}
/// Marker: the window is mapped read-write.
#[derive(Debug)]
pub enum ReadWrite {}

/// A region's pages mapped into this app's memory; derefs to `[u8]` (and to `&mut [u8]` when mapped
/// read-write).
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
        let mapped = len.div_ceil(PAGE).max(1) * PAGE;
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
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    fn check<T>(&self, offset: usize) -> Result<*mut T> {
        let end = offset.checked_add(core::mem::size_of::<T>()).ok_or(Error::OutOfBounds)?;
        if end > self.len {
            return Err(Error::OutOfBounds);
        }
        if !offset.is_multiple_of(core::mem::align_of::<T>()) {
            return Err(Error::Unaligned);
        }
        // SAFETY: `offset + size_of::<T>() <= len`, inside the window.
        Ok(unsafe { self.ptr.add(offset) }.cast())
    }

    /// A typed view of a `Pod` value at an aligned `offset`.
    ///
    /// # Errors
    /// `OutOfBounds`, `Unaligned`.
    pub fn view<T: Pod>(&self, offset: usize) -> Result<&T> {
        // SAFETY: in bounds and aligned (checked), any bit pattern is a valid `T` (Pod), and the window
        // lives as long as the borrow.
        self.check::<T>(offset).map(|p| unsafe { &*p })
    }

    /// The `u32` at an aligned `offset` as an atomic shared with other apps.
    ///
    /// # Errors
    /// `OutOfBounds`, `Unaligned`.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32> {
        // SAFETY: in bounds and 4-byte aligned (checked); the bytes live as long as the window, and all
        // cross-app synchronisation through them is atomic.
        self.check::<u32>(offset).map(|p| unsafe { AtomicU32::from_ptr(p) })
    }

    /// The `u64` at an aligned `offset` as an atomic shared with other apps.
    ///
    /// # Errors
    /// `OutOfBounds`, `Unaligned`.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64> {
        // SAFETY: as in `atomic_u32`, with 8-byte alignment checked.
        self.check::<u64>(offset).map(|p| unsafe { AtomicU64::from_ptr(p) })
    }

    /// The region this window maps.
    pub fn region(&self) -> &'r Region {
        self.region
    }
}

impl<'r> SharedWindow<'r, ReadWrite> {
    /// A mutable typed view of a `Pod` value at an aligned `offset`.
    ///
    /// # Errors
    /// `OutOfBounds`, `Unaligned`.
    pub fn view_mut<T: Pod>(&mut self, offset: usize) -> Result<&mut T> {
        // SAFETY: in bounds and aligned (checked), exclusive through `&mut self`.
        self.check::<T>(offset).map(|p| unsafe { &mut *p })
    }

    /// Turns this read-write window into a ring buffer endpoint (see [`SpscRing`]).
    ///
    /// # Errors
    /// `OutOfBounds` if the window is too small for the ring's header and some data.
    pub fn into_ring(self) -> Result<SpscRing<'r>> {
        SpscRing::new(self)
    }
}

impl<A> Deref for SharedWindow<'_, A> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` bytes while the window lives. Other apps may change them
        // concurrently: readers that need consistency synchronise through the atomic helpers.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for SharedWindow<'_, ReadWrite> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the window is writable and `&mut self` is exclusive within this app.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
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
/// with a release store and the consumer reads with an acquire load.
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
