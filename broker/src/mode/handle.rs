//! Handle mode: every access is a host call that copies between the region and a caller's buffer.
//!
//! A write holds the region's writer lock for the whole copy, marks the pages it touched with the new
//! version and bumps the region version before releasing it; a read holds the reader lock. So a reader
//! (guest, host, or a mirror refresh) sees a write entirely or not at all. Ranges are checked by the
//! caller (`capability` resolves them against the capability's range) and again by `RegionMemory`.
//! These calls work on regions of every mode: the host and handle holders may always read and write.

use crate::region::{Region, RegionError, RegionMemory};

/// Copies `dst.len()` bytes at absolute `offset` of the region into `dst`; returns the version those
/// bytes belong to.
///
/// # Errors
/// [`RegionError::OutOfBounds`] if the range does not lie inside the region.
pub(crate) fn read(region: &Region, offset: u64, dst: &mut [u8]) -> Result<u64, RegionError> {
    read_with(region, dst.len(), |m| m.copy_out(offset, dst))
}

/// Runs `copy` (which copies `len` bytes out of the region's memory to wherever the caller
/// keeps them) under the reader lock; returns the version those bytes belong to.
///
/// # Errors
/// What `copy` returns.
pub(crate) fn read_with(
    region: &Region,
    len: usize,
    copy: impl FnOnce(&RegionMemory) -> Result<(), RegionError>,
) -> Result<u64, RegionError> {
    let _pages = region.pages.read();
    copy(&region.memory)?;
    region.traffic.copied_out(len64(len));
    // Read under the same lock as the bytes: the version the bytes belong to.
    Ok(region.version())
}

/// Copies `src` to absolute `offset` of the region and returns the region's new version.
///
/// # Errors
/// [`RegionError::OutOfBounds`] if the range does not lie inside the region; nothing is written.
pub(crate) fn write(region: &Region, offset: u64, src: &[u8]) -> Result<u64, RegionError> {
    write_with(region, offset, src.len(), |m| m.copy_in(offset, src))
}

/// Runs `copy` (which copies `len` bytes to `offset` of the region's memory) under the writer lock, then
/// marks the pages, bumps the version and publishes the change; returns the new version.
///
/// # Errors
/// What `copy` returns; nothing is marked or published then.
pub(crate) fn write_with(
    region: &Region,
    offset: u64,
    len: usize,
    copy: impl FnOnce(&RegionMemory) -> Result<(), RegionError>,
) -> Result<u64, RegionError> {
    let mut pages = region.pages.write();
    copy(&region.memory)?;
    let version = region.bump_version();
    pages.mark(offset, len64(len), version);
    region.traffic.copied_in(len64(len));
    region.publish(crate::region::Change { version, offset, len: len64(len) });
    Ok(version)
}

pub(crate) fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
