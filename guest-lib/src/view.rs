//! A mode-agnostic view of a region, so the same app code runs whatever mode the operator chose.
//!
//! In handle mode every access is a host call; in mirror mode accesses hit the local copy and
//! [`View::commit`] publishes them; in shared mode they hit the mapped window directly (refresh and
//! commit are no-ops). Code that reads and writes through a `View` and calls `refresh`
//! before reading and `commit` after writing behaves the same under both.

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
            View::Shared(w) => {
                buf.copy_from_slice(&w[range(offset, buf.len(), w.len())?]);
                Ok(())
            }
            View::SharedReadOnly(w) => {
                buf.copy_from_slice(&w[range(offset, buf.len(), w.len())?]);
                Ok(())
            }
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
            View::Shared(w) => {
                let r = range(offset, data.len(), w.len())?;
                w[r].copy_from_slice(data);
                Ok(())
            }
            View::SharedReadOnly(_) => Err(Error::PermissionDenied),
        }
    }

    /// The region's bytes in place, without a copy: the local mirror or the mapped window; `None` in
    /// handle mode, where every access is a host call. Lets bulk work (scans, transforms) skip the copy
    /// that [`View::read`] makes.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match self {
            View::Handle(_) => None,
            View::Mirror(m) => Some(m),
            View::Shared(w) => Some(w),
            View::SharedReadOnly(w) => Some(w),
        }
    }

    /// The region's bytes in place for writing (mirror: published by [`View::commit`], which then
    /// compares every page, since writes through the slice cannot be tracked); `None` in handle mode
    /// and for a read-only window.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match self {
            View::Handle(_) | View::SharedReadOnly(_) => None,
            View::Mirror(m) => Some(m),
            View::Shared(w) => Some(w),
        }
    }

    /// Reads a `Pod` value.
    ///
    /// # Errors
    /// As [`View::read`].
    pub fn load<T: Pod>(&self, offset: u64) -> Result<T> {
        if let Some(bytes) = self.as_slice() {
            // An unaligned typed load: a value-sized copy through `read` compiles to `memory.copy`,
            // which wasmtime runs as a libcall, many times the cost of the load itself.
            let r = range(offset, core::mem::size_of::<T>(), bytes.len())?;
            return Ok(bytemuck::pod_read_unaligned(&bytes[r]));
        }
        let mut v = T::zeroed();
        self.read(offset, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Writes a `Pod` value.
    ///
    /// # Errors
    /// As [`View::write`].
    pub fn store<T: Pod>(&mut self, offset: u64, value: &T) -> Result<()> {
        if let View::Mirror(m) = self {
            // Tracked, so the commit hints only the pages written.
            let start = range(offset, core::mem::size_of::<T>(), m.len())?.start;
            return m.store(start, value);
        }
        if let Some(bytes) = self.as_mut_slice() {
            let r = range(offset, core::mem::size_of::<T>(), bytes.len())?;
            // Byte by byte rather than `copy_from_slice`, which would become a `memory.copy` libcall;
            // the compiler merges the loop into one store.
            for (dst, src) in bytes[r].iter_mut().zip(bytemuck::bytes_of(value)) {
                *dst = *src;
            }
            return Ok(());
        }
        self.write(offset, bytemuck::bytes_of(value))
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
