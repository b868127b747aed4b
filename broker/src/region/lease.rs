//! Versions that never go backwards across restarts, for persistent regions.
//!
//! A persistent region's version must stay above every version a client or a mirror has seen, also
//! after a crash that lost writes made since the last flush. The region therefore reserves versions in
//! blocks, as databases cache sequence numbers: the end of the reserved block is written durably to a
//! small file beside the region's file (`<file>.version`) before any version in it is handed out, and a
//! restart continues from that end. A restart skips at most one block; a crash never repeats a version.
//! The lease file outlives a destroyed region, so one created again under the same name continues above
//! its predecessor's versions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Versions reserved at a time: one small durable write per this many writes to the region.
pub(crate) const BLOCK: u64 = 1 << 20;

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
        let mut name = region_file.as_os_str().to_owned();
        name.push(".version");
        let file = PathBuf::from(name);
        let start = std::fs::read(&file)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        (VersionLease { file, until: AtomicU64::new(start) }, start)
    }

    /// Makes sure `version` is reserved durably before it is handed out; callers hold the region's
    /// writer lock, so versions arrive in order. A lease that cannot be written is logged: the version
    /// still goes out (the write must not fail for it), and monotonicity after a crash is then only as
    /// good as the last lease written.
    pub(crate) fn cover(&self, version: u64) {
        if version <= self.until.load(Ordering::Acquire) {
            return;
        }
        let until = version.saturating_add(BLOCK);
        match self.persist(until) {
            Ok(()) => self.until.store(until, Ordering::Release),
            Err(e) => tracing::warn!(file = %self.file.display(), "cannot reserve region versions: {e}"),
        }
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
        // A damaged lease file reads as no lease (and is replaced at the next reservation).
        std::fs::write(dir.join("r.region.version"), b"junk").expect("write");
        assert_eq!(VersionLease::open(&region).1, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
