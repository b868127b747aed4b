//! Versions that never go backwards across restarts, for persistent regions.
//!
//! A persistent region's version must stay above every version a client or a mirror has seen, also
//! after a crash that lost writes made since the last flush. The region therefore reserves versions in
//! blocks, as databases cache sequence numbers: the end of the reserved block is written durably to a
//! small file beside the region's file before any version in it is handed out, and a restart continues
//! from that end. A restart skips at most one block; a crash never repeats a version. The lease file's
//! name is a fixed-length hash of the region file's name (`.lease-<16 hex>`), so it fits the file
//! system's name limit whatever the region's name, and can never be another region's file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Versions reserved at a time: one small durable write per this many writes to the region.
pub(crate) const BLOCK: u64 = 1 << 20;

/// Where a region whose lease is damaged continues from.
const DAMAGED: u64 = 1 << 62;

/// The lease file of a region file: `.lease-<FNV-1a of the file name, 16 hex digits>` in its directory
/// (stable across builds, unlike std's hasher; short whatever the name).
fn file_for(region_file: &Path) -> PathBuf {
    let name = region_file.file_name().map(std::ffi::OsStr::as_encoded_bytes).unwrap_or_default();
    let hash = name
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    region_file.with_file_name(format!(".lease-{hash:016x}"))
}

/// The durable end of the reserved versions of one persistent region.
#[derive(Debug)]
pub(crate) struct VersionLease {
    file: PathBuf,
    /// Versions up to here may be handed out.
    until: AtomicU64,
}

impl VersionLease {
    /// Opens the lease beside `region_file`; returns it with the version to continue from (0 for a
    /// new region, or the end of the block reserved before the last restart).
    pub(crate) fn open(region_file: &Path) -> (VersionLease, u64) {
        let file = file_for(region_file);
        let start = match std::fs::read(&file) {
            Ok(b) => match <[u8; 8]>::try_from(b.as_slice()) {
                Ok(bytes) => u64::from_le_bytes(bytes),
                Err(_) => {
                    // Fail closed: a damaged lease must not let versions repeat, so continue far above
                    // anything a region can have handed out.
                    tracing::warn!(file = %file.display(), "damaged version lease: continuing from 2^62");
                    DAMAGED
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(file = %file.display(), "unreadable version lease ({e}): continuing from 2^62");
                DAMAGED
            }
        };
        (VersionLease { file, until: AtomicU64::new(start) }, start)
    }

    /// Removes the lease of a destroyed region's file.
    pub(crate) fn remove(region_file: &Path) {
        let _ = std::fs::remove_file(file_for(region_file));
    }

    /// Makes sure `version` is reserved durably before it is handed out; callers hold the region's
    /// writer lock, so versions arrive in order. A lease that cannot be written is logged once per
    /// block: the version still goes out (the write must not fail for it), and monotonicity after a
    /// crash is then only as good as the last lease written.
    pub(crate) fn cover(&self, version: u64) {
        if version <= self.until.load(Ordering::Acquire) {
            return;
        }
        let until = version.saturating_add(BLOCK);
        if let Err(e) = self.persist(until) {
            tracing::warn!(file = %self.file.display(), "cannot reserve region versions: {e}");
        }
        // Advanced even on failure, so a broken disk costs one attempt (and one log line) per block,
        // not one per write.
        self.until.store(until, Ordering::Release);
    }

    /// Writes `until` to a temporary file, syncs it and renames it over the lease.
    fn persist(&self, until: u64) -> std::io::Result<()> {
        let mut tmp = self.file.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&until.to_le_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.file)?;
        if let Some(dir) = self.file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The end of the reserved versions.
    #[cfg(test)]
    pub(crate) fn until(&self) -> u64 {
        self.until.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_lease_continues_past_every_version_handed_out() {
        let dir = std::env::temp_dir().join(format!("broker-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let region = dir.join("r.region");
        let (lease, start) = VersionLease::open(&region);
        assert_eq!(start, 0, "a new region starts at 0");
        for v in 1..=3 {
            lease.cover(v);
        }
        assert_eq!(lease.until(), 1 + BLOCK, "one block reserved, written once");
        // A "crash" after version 3 was handed out: the reopened lease starts past it.
        let (again, start) = VersionLease::open(&region);
        assert!(start >= 3, "versions never repeat: {start}");
        again.cover(start + 1);
        assert!(again.until() > start + 1);
        // A damaged lease fails closed: versions continue far above anything handed out.
        std::fs::write(file_for(&region), b"junk").expect("write");
        assert_eq!(VersionLease::open(&region).1, DAMAGED);
        // A name as long as names go still has a lease that fits the file system.
        let long = dir.join(format!("{}.region", "n".repeat(248)));
        let (lease, _) = VersionLease::open(&long);
        lease.cover(1);
        assert_eq!(VersionLease::open(&long).1, 1 + BLOCK, "the lease of a 255-byte file name was written");
        VersionLease::remove(&region);
        assert_eq!(VersionLease::open(&region).1, 0, "a removed lease starts over");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
