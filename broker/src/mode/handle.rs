//! Handle mode: every access is a host call that copies between the region and a caller's buffer.
//!
//! A write holds the region's writer lock for the whole copy and bumps the version before releasing it;
//! a read holds the reader lock. So a reader (guest, host or any later path) sees a write entirely or not
//! at all. Ranges are checked by the caller (`capability` resolves them against the capability's range,
//! `region` against the region size); this module only moves bytes.

use crate::region::{Region, RegionError};

/// Copies `dst.len()` bytes at absolute `offset` of the region into `dst`.
///
/// # Errors
/// [`RegionError::OutOfBounds`] if the range does not lie inside the region.
pub(crate) fn read(region: &Region, offset: u64, dst: &mut [u8]) -> Result<(), RegionError> {
    let _guard = region.lock.read();
    region.memory.copy_out(offset, dst)
}

/// Copies `src` to absolute `offset` of the region and returns the region's new version.
///
/// # Errors
/// [`RegionError::OutOfBounds`] if the range does not lie inside the region; nothing is written.
pub(crate) fn write(region: &Region, offset: u64, src: &[u8]) -> Result<u64, RegionError> {
    let _guard = region.lock.write();
    region.memory.copy_in(offset, src)?;
    Ok(region.bump_version())
}
