//! A mode-agnostic view of a region, so the same app code runs whatever mode the operator chose.
//!
//! In handle mode every access is a host call; in mirror mode accesses hit the local copy and
//! [`View::commit`] publishes them. Code that reads and writes through a `View` and calls `refresh`
//! before reading and `commit` after writing behaves the same under both.

use bytemuck::Pod;

use crate::{Error, Mirror, Mode, Region, Result};

/// A region seen through whatever mechanism its mode provides.
#[derive(Debug)]
pub enum View<'r> {
    /// Handle mode: each access is a checked host call.
    Handle(&'r Region),
    /// Mirror mode: a local copy, refreshed and committed explicitly.
    Mirror(Mirror<'r>),
}

impl<'r> View<'r> {
    pub(crate) fn open(region: &'r Region) -> Result<View<'r>> {
        match region.info()?.mode {
            Mode::Mirror => Ok(View::Mirror(region.mirror()?)),
            Mode::Handle | Mode::Shared => Ok(View::Handle(region)),
        }
    }

    /// Which mechanism this view uses.
    pub fn mode(&self) -> Mode {
        match self {
            View::Handle(_) => Mode::Handle,
            View::Mirror(_) => Mode::Mirror,
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
                let start = usize::try_from(offset).map_err(|_| Error::OutOfBounds)?;
                let end = start.checked_add(buf.len()).ok_or(Error::OutOfBounds)?;
                buf.copy_from_slice(m.get(start..end).ok_or(Error::OutOfBounds)?);
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
                let start = usize::try_from(offset).map_err(|_| Error::OutOfBounds)?;
                let end = start.checked_add(data.len()).ok_or(Error::OutOfBounds)?;
                m.get_mut(start..end).ok_or(Error::OutOfBounds)?.copy_from_slice(data);
                Ok(())
            }
        }
    }

    /// Reads a `Pod` value.
    ///
    /// # Errors
    /// As [`View::read`].
    pub fn load<T: Pod>(&self, offset: u64) -> Result<T> {
        let mut v = T::zeroed();
        self.read(offset, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Writes a `Pod` value.
    ///
    /// # Errors
    /// As [`View::write`].
    pub fn store<T: Pod>(&mut self, offset: u64, value: &T) -> Result<()> {
        self.write(offset, bytemuck::bytes_of(value))
    }

    /// Brings the view up to date with the region (a no-op in handle mode, which is never stale).
    ///
    /// # Errors
    /// Mirror refresh errors.
    pub fn refresh(&mut self) -> Result<()> {
        match self {
            View::Handle(_) => Ok(()),
            View::Mirror(m) => m.refresh().map(|_| ()),
        }
    }

    /// Publishes local writes (a no-op in handle mode, whose writes are immediate).
    ///
    /// # Errors
    /// `Conflict` and other mirror commit errors.
    pub fn commit(&mut self) -> Result<()> {
        match self {
            View::Handle(_) => Ok(()),
            View::Mirror(m) => m.commit().map(|_| ()),
        }
    }
}
