//! Mirrors: the app's own copy of a mirror-mode region, used with plain slices and typed views, then
//! refreshed and committed.
//!
//! The buffer is allocated as `u64`s so typed views of `Pod` types up to 8-byte alignment work at
//! aligned offsets. The broker tracks what this copy was given: `refresh` copies only changed pages and
//! `commit` writes back only pages that differ, failing with [`Error::Conflict`] (and nothing written)
//! when the region's conflict policy refuses it.
//!
//! Writes through [`Mirror::store`], [`Mirror::write`] and [`Mirror::view_mut`] record the pages they
//! touch, and `commit` hints exactly those to the broker (`mirror_hint`), so a commit costs the pages
//! changed rather than the whole region. Writing through the `&mut [u8]` deref cannot be tracked: it
//! makes the next commit compare every page, as without hints.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use bytemuck::Pod;

use crate::{sys, Error, Region, Result};

/// A copy of a region's bytes in this app's memory; derefs to `[u8]`.
#[derive(Debug)]
pub struct Mirror<'r> {
    region: &'r Region,
    words: Vec<u64>,
    len: usize,
    version: u64,
    /// Pages written through the tracked methods since the last commit (a bit per page).
    dirty: Vec<u64>,
    /// The buffer was borrowed mutably as a whole: the next commit compares every page.
    untracked: bool,
}

/// The broker's page size, the granularity of refreshes, commits and hints.
const PAGE: usize = broker_abi::PAGE_SIZE as usize;

fn version_arg(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::BadVersion)
}

impl<'r> Mirror<'r> {
    pub(crate) fn acquire(region: &'r Region) -> Result<Mirror<'r>> {
        let len = usize::try_from(region.len()?).map_err(|_| Error::OutOfBounds)?;
        let pages = len.div_ceil(PAGE);
        let mut m = Mirror {
            region,
            words: vec![0u64; len.div_ceil(8)],
            len,
            version: 0,
            dirty: vec![0u64; pages.div_ceil(64)],
            untracked: false,
        };
        let mut version = 0;
        Error::check(sys::mirror_acquire(region.raw(), m.bytes_mut(), &mut version))?;
        m.version = version;
        Ok(m)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut bytemuck::cast_slice_mut(&mut self.words)[..len]
    }

    /// The region this mirror copies.
    pub fn region(&self) -> &'r Region {
        self.region
    }

    /// The region version this copy reflects (after a conflict: the region's current version).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Copies the pages that changed in the region since this copy's version; returns how many.
    /// Uncommitted local edits on those pages are replaced.
    ///
    /// # Errors
    /// Handle errors, `BadVersion`.
    pub fn refresh(&mut self) -> Result<u32> {
        let (mut version, mut pages) = (0, 0);
        let since = version_arg(self.version)?;
        let h = self.region.raw();
        Error::check(sys::mirror_refresh(h, self.bytes_mut(), since, &mut version, &mut pages))?;
        self.version = version;
        Ok(pages)
    }

    /// Writes back the pages this copy changed; returns how many.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the region's policy refuses (then [`Mirror::version`] is the region's
    /// current version: refresh, redo the change and commit again), `PermissionDenied` under a
    /// read-only capability, handle errors.
    pub fn commit(&mut self) -> Result<u32> {
        let (mut version, mut pages) = (0, 0);
        let base = version_arg(self.version)?;
        let h = self.region.raw();
        // Hints pay off when they let the broker skip pages: with every page written, a commit
        // without hints does the same work one host call cheaper.
        let pages_total = self.len.div_ceil(PAGE);
        let pages_dirty: usize = self.dirty.iter().map(|w| w.count_ones() as usize).sum();
        if !self.untracked && pages_dirty < pages_total {
            self.send_hints()?;
        }
        let r = sys::mirror_commit(h, self, base, &mut version, &mut pages);
        if r == crate::Status::Conflict.code() {
            self.version = version;
        }
        Error::check(r)?;
        self.version = version;
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.untracked = false;
        Ok(pages)
    }

    /// Hints the dirty pages to the broker, one call per run of consecutive pages (one call hinting
    /// none if nothing was written, which still makes the commit skip every page).
    fn send_hints(&self) -> Result<()> {
        let h = self.region.raw();
        let pages = self.len.div_ceil(PAGE);
        let is_dirty = |i: usize| self.dirty.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0);
        let mut sent = false;
        let mut i = 0;
        while i < pages {
            if self.dirty.get(i / 64) == Some(&0) {
                i = (i / 64 + 1) * 64;
                continue;
            }
            if !is_dirty(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && is_dirty(i) {
                i += 1;
            }
            let (first, n) = (u32::try_from(start), u32::try_from(i - start));
            let (Ok(first), Ok(n)) = (first, n) else { return Err(Error::OutOfBounds) };
            Error::check(sys::mirror_hint(h, first, n))?;
            sent = true;
        }
        if !sent {
            Error::check(sys::mirror_hint(h, 0, 0))?;
        }
        Ok(())
    }

    /// Records that `[offset, offset + len)` was written.
    fn mark(&mut self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let last = (offset + len - 1) / PAGE;
        for p in offset / PAGE..=last {
            if let Some(w) = self.dirty.get_mut(p / 64) {
                *w |= 1 << (p % 64);
            }
        }
    }

    /// Writes `data` at `offset` (locally, until [`Mirror::commit`]), recording the pages it touches.
    ///
    /// # Errors
    /// `OutOfBounds` past the end.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let end = offset.checked_add(data.len()).ok_or(Error::OutOfBounds)?;
        self.bytes_mut().get_mut(offset..end).ok_or(Error::OutOfBounds)?.copy_from_slice(data);
        self.mark(offset, data.len());
        Ok(())
    }

    /// Throws away local edits: copies the whole region again.
    ///
    /// # Errors
    /// As [`Region::mirror`].
    pub fn discard(&mut self) -> Result<()> {
        let mut version = 0;
        let h = self.region.raw();
        Error::check(sys::mirror_acquire(h, self.bytes_mut(), &mut version))?;
        self.version = version;
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.untracked = false;
        Ok(())
    }

    /// A typed view of a `Pod` value at `offset` (which must be aligned for `T`, up to 8).
    ///
    /// # Errors
    /// `OutOfBounds` past the end, `InvalidArgument` if misaligned.
    pub fn view<T: Pod>(&self, offset: usize) -> Result<&T> {
        let bytes = self
            .get(offset..offset.checked_add(core::mem::size_of::<T>()).ok_or(Error::OutOfBounds)?)
            .ok_or(Error::OutOfBounds)?;
        bytemuck::try_from_bytes(bytes).map_err(|_| Error::InvalidArgument)
    }

    /// A mutable typed view of a `Pod` value at `offset`.
    ///
    /// # Errors
    /// As [`Mirror::view`].
    pub fn view_mut<T: Pod>(&mut self, offset: usize) -> Result<&mut T> {
        let end = offset.checked_add(core::mem::size_of::<T>()).ok_or(Error::OutOfBounds)?;
        if end > self.len {
            return Err(Error::OutOfBounds);
        }
        self.mark(offset, core::mem::size_of::<T>());
        let bytes = self.bytes_mut().get_mut(offset..end).ok_or(Error::OutOfBounds)?;
        bytemuck::try_from_bytes_mut(bytes).map_err(|_| Error::InvalidArgument)
    }

    /// Reads a `Pod` value at any offset.
    ///
    /// # Errors
    /// `OutOfBounds` past the end.
    pub fn load<T: Pod>(&self, offset: usize) -> Result<T> {
        let end = offset.checked_add(core::mem::size_of::<T>()).ok_or(Error::OutOfBounds)?;
        Ok(bytemuck::pod_read_unaligned(self.get(offset..end).ok_or(Error::OutOfBounds)?))
    }

    /// Writes a `Pod` value at any offset (locally, until [`Mirror::commit`]).
    ///
    /// # Errors
    /// `OutOfBounds` past the end.
    pub fn store<T: Pod>(&mut self, offset: usize, value: &T) -> Result<()> {
        let end = offset.checked_add(core::mem::size_of::<T>()).ok_or(Error::OutOfBounds)?;
        let bytes = self.bytes_mut().get_mut(offset..end).ok_or(Error::OutOfBounds)?;
        // Byte by byte: a value-sized `copy_from_slice` can become a `memory.copy` libcall.
        for (dst, src) in bytes.iter_mut().zip(bytemuck::bytes_of(value)) {
            *dst = *src;
        }
        self.mark(offset, core::mem::size_of::<T>());
        Ok(())
    }
}

impl Deref for Mirror<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl DerefMut for Mirror<'_> {
    /// The whole buffer, writable; writes through it are not tracked, so the next commit compares
    /// every page.
    fn deref_mut(&mut self) -> &mut [u8] {
        self.untracked = true;
        self.bytes_mut()
    }
}
