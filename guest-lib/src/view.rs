//! A mode-agnostic view of a region, so the same app code runs whatever mode the operator chose.
//!
//! In handle mode every access is a host call; in mirror mode accesses hit the local copy and
//! [`View::commit`] publishes them; in shared mode they hit the mapped window directly (refresh and
//! commit are no-ops). Code that reads and writes through a `View` and calls `refresh`
//! before reading and `commit` after writing behaves the same under every mode.
//!
//! Only a mirror's bytes are lent as slices ([`View::as_slice`], [`View::as_mut_slice`]): they are the
//! app's own copy, which nothing but this app and its own host calls changes. A shared window's bytes
//! change under the app whenever another app writes, so they are never lent as `&[u8]` (see
//! [`SharedWindow`]): in shared mode [`View::load`] and [`View::store`] are plain loads and stores by
//! value, [`View::read`] and [`View::write`] copy through the window's raw pointer, and
//! [`View::as_cells`] lends the bytes as `&[UnsafeCell<u8>]` for code that needs pointers into them.

use core::cell::UnsafeCell;

use bytemuck::Pod;

use crate::{Error, Mirror, Mode, ReadOnly, ReadWrite, Region, Result, Rights, SharedWindow};

/// A region seen through whatever mechanism its mode provides.
#[derive(Debug)]
pub enum View<'r> {
    /// Handle mode: each access is a checked host call.
    Handle(&'r Region),
    /// Mirror mode: a local copy, refreshed and committed explicitly.
    Mirror(Mirror<'r>),
    /// Shared mode, mapped read-write.
    Shared(SharedWindow<'r, ReadWrite>),
    /// Shared mode, mapped read-only (writes are refused with `PermissionDenied`, never trapped).
    SharedReadOnly(SharedWindow<'r, ReadOnly>),
}

fn range(offset: u64, len: usize, total: usize) -> Result<core::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| Error::OutOfBounds)?;
    let end = start.checked_add(len).ok_or(Error::OutOfBounds)?;
    if end > total {
        return Err(Error::OutOfBounds);
    }
    Ok(start..end)
}

/// An offset into a window or mirror (both of which fit in this app's memory).
#[inline]
fn at(offset: u64) -> Result<usize> {
    usize::try_from(offset).map_err(|_| Error::OutOfBounds)
}

impl<'r> View<'r> {
    pub(crate) fn open(region: &'r Region) -> Result<View<'r>> {
        let info = region.info()?;
        match info.mode {
            Mode::Mirror => Ok(View::Mirror(region.mirror()?)),
            Mode::Shared if info.rights.contains(Rights::WRITE) => Ok(View::Shared(region.map_mut()?)),
            Mode::Shared => Ok(View::SharedReadOnly(region.map()?)),
            Mode::Handle => Ok(View::Handle(region)),
        }
    }

    /// Checks that `len` bytes at `offset` lie inside a mirror's copy or a shared window (handle mode
    /// has nothing local: the broker checks each call).
    pub(crate) fn check_local(&self, offset: u64, len: usize) -> Result<()> {
        let total = match self {
            View::Handle(_) => return Ok(()),
            View::Mirror(m) => m.len(),
            View::Shared(w) => w.len(),
            View::SharedReadOnly(w) => w.len(),
        };
        range(offset, len, total).map(|_| ())
    }

    /// Which mechanism this view uses.
    pub fn mode(&self) -> Mode {
        match self {
            View::Handle(_) => Mode::Handle,
            View::Mirror(_) => Mode::Mirror,
            View::Shared(_) | View::SharedReadOnly(_) => Mode::Shared,
        }
    }

    /// Copies bytes at `offset` into `buf`.
    ///
    /// # Errors
    /// `OutOfBounds`, `PermissionDenied`, handle errors.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            View::Handle(r) => r.read(offset, buf),
            View::Mirror(m) => {
                buf.copy_from_slice(&m[range(offset, buf.len(), m.len())?]);
                Ok(())
            }
            View::Shared(w) => w.read_into(at(offset)?, buf),
            View::SharedReadOnly(w) => w.read_into(at(offset)?, buf),
        }
    }

    /// Writes `data` at `offset` (in mirror mode: locally, until [`View::commit`]).
    ///
    /// # Errors
    /// `OutOfBounds`, `PermissionDenied` (handle mode), handle errors.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            View::Handle(r) => r.write(offset, data),
            View::Mirror(m) => {
                let start = range(offset, data.len(), m.len())?.start;
                m.write(start, data)
            }
            View::Shared(w) => w.write_from(at(offset)?, data),
            View::SharedReadOnly(_) => Err(Error::PermissionDenied),
        }
    }

    /// A mirror's bytes in place, without a copy; `None` in handle mode, where every access is a host
    /// call, and in shared mode, whose bytes other apps change concurrently (see [`View::as_cells`]).
    /// Lets bulk work (scans, transforms) skip the copy that [`View::read`] makes.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match self {
            View::Mirror(m) => Some(m),
            View::Handle(_) | View::Shared(_) | View::SharedReadOnly(_) => None,
        }
    }

    /// A mirror's bytes in place for writing (published by [`View::commit`], which then compares every
    /// page, since writes through the slice cannot be tracked); `None` in the other modes, as for
    /// [`View::as_slice`].
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match self {
            View::Mirror(m) => Some(m),
            View::Handle(_) | View::Shared(_) | View::SharedReadOnly(_) => None,
        }
    }

    /// A shared window's bytes in place, as cells that other apps may change at any time (see
    /// [`SharedWindow::cells`]); `None` in handle and mirror mode.
    pub fn as_cells(&self) -> Option<&[UnsafeCell<u8>]> {
        match self {
            View::Shared(w) => Some(w.cells()),
            View::SharedReadOnly(w) => Some(w.cells()),
            View::Handle(_) | View::Mirror(_) => None,
        }
    }

    /// Reads a `Pod` value (any alignment). In mirror and shared mode this is a plain load in place,
    /// with no copy call (a value-sized copy through [`View::read`] would compile to a wasm
    /// `memory.copy`, which wasmtime runs as a libcall, many times the cost of the load itself).
    ///
    /// # Errors
    /// As [`View::read`].
    #[inline]
    pub fn load<T: Pod>(&self, offset: u64) -> Result<T> {
        match self {
            View::Handle(r) => r.load(offset),
            View::Mirror(m) => {
                let r = range(offset, core::mem::size_of::<T>(), m.len())?;
                Ok(bytemuck::pod_read_unaligned(&m[r]))
            }
            View::Shared(w) => w.load(at(offset)?),
            View::SharedReadOnly(w) => w.load(at(offset)?),
        }
    }

    /// Writes a `Pod` value (any alignment): a plain store in place in shared mode; in mirror mode
    /// tracked, so the commit hints only the pages written.
    ///
    /// # Errors
    /// As [`View::write`].
    #[inline]
    pub fn store<T: Pod>(&mut self, offset: u64, value: &T) -> Result<()> {
        match self {
            View::Handle(r) => r.store(offset, value),
            View::Mirror(m) => m.store(at(offset)?, value),
            View::Shared(w) => w.store(at(offset)?, value),
            View::SharedReadOnly(_) => Err(Error::PermissionDenied),
        }
    }

    /// Brings the view up to date with the region (a no-op in handle and shared mode, never stale).
    ///
    /// # Errors
    /// Mirror refresh errors.
    pub fn refresh(&mut self) -> Result<()> {
        match self {
            View::Handle(_) | View::Shared(_) | View::SharedReadOnly(_) => Ok(()),
            View::Mirror(m) => m.refresh().map(|_| ()),
        }
    }

    /// Publishes local writes (a no-op in handle and shared mode, whose writes are immediate).
    ///
    /// # Errors
    /// `Conflict` and other mirror commit errors.
    pub fn commit(&mut self) -> Result<()> {
        match self {
            View::Handle(_) | View::Shared(_) | View::SharedReadOnly(_) => Ok(()),
            View::Mirror(m) => m.commit().map(|_| ()),
        }
    }
}
