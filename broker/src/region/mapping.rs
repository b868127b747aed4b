//! The backing memory of a region: a memfd mapped shared and read-write into the broker.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`). It owns the raw
//! mapping and exposes only bounds-checked copies, so no `&[u8]` or `&mut [u8]` to bytes that guests may
//! change concurrently ever exists; copies go through raw pointers.
//!
//! The memfd (rather than anonymous memory) is what lets the shared mode map the very same pages into
//! guests' linear memories later.

#![allow(unsafe_code, reason = "owns the raw region mapping; every block is justified below")]

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;
use rustix::fs::{memfd_create, MemfdFlags};

use super::RegionError;

/// A region's bytes: a shared mapping of a memfd of exactly `len` bytes.
#[derive(Debug)]
pub struct RegionMemory {
    map: MmapRaw,
    len: u64,
    // Kept so the shared mode can map the same pages into guests.
    _file: File,
    /// Where a persistent region's flushed image lives (`None` for memfd regions).
    snapshot: Option<std::path::PathBuf>,
    /// Serialises flushes (they share the snapshot's temporary file), without blocking readers or
    /// writers of the region while a flush syncs.
    flushing: parking_lot::Mutex<()>,
}

/// `<path>.snap`: the last flushed image of a persistent region.
pub fn snapshot_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".snap");
    std::path::PathBuf::from(s)
}

impl RegionMemory {
    /// Creates a zero-filled memfd of `len` bytes and maps it.
    ///
    /// # Errors
    /// [`RegionError::Os`] if the memfd cannot be created, sized or mapped, and
    /// [`RegionError::TooLarge`] if `len` does not fit the address space.
    pub fn new_memfd(debug_name: &str, len: u64) -> Result<RegionMemory, RegionError> {
        let os = |op: &'static str| move |e: std::io::Error| RegionError::Os { op, message: e.to_string() };
        let fd = memfd_create(format!("broker-region-{debug_name}"), MemfdFlags::CLOEXEC)
            .map_err(|e| os("memfd_create")(e.into()))?;
        let file = File::from(fd);
        // Whole pages, so the shared mode can map the last partial page too.
        let file_len = len.checked_add(4095).map(|l| l & !4095).ok_or(RegionError::TooLarge { size: len })?;
        file.set_len(file_len).map_err(os("ftruncate"))?;
        let map = MmapRaw::map_raw(&file).map_err(os("mmap"))?;
        if u64::try_from(map.len()).ok() != Some(file_len) {
            return Err(RegionError::TooLarge { size: len });
        }
        Ok(RegionMemory { map, len, _file: file, snapshot: None, flushing: parking_lot::Mutex::new(()) })
    }

    /// Opens (creating if needed) a file of `len` bytes, rounded up to whole pages, and maps it shared.
    /// If a flushed snapshot (`<path>.snap`) of this size exists, its bytes replace the file's: the
    /// snapshot is the last acknowledged flush, while the live file may hold later, possibly half-done,
    /// writes from before a crash.
    ///
    /// # Errors
    /// [`RegionError::Os`] if the file cannot be opened, sized, mapped or restored.
    pub fn open_file(path: &std::path::Path, len: u64) -> Result<RegionMemory, RegionError> {
        let os = |op: &'static str| {
            move |e: std::io::Error| RegionError::Os { op, message: format!("{}: {e}", shown(path)) }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(os("open"))?;
        let file_len = len.checked_add(4095).map(|l| l & !4095).ok_or(RegionError::TooLarge { size: len })?;
        if file.metadata().map_err(os("stat"))?.len() != file_len {
            file.set_len(file_len).map_err(os("ftruncate"))?;
        }
        // Allocate every block now: a sparse file would fault with SIGBUS, killing the process, the
        // first time a guest's window (or the host) wrote into a hole on a full filesystem. Full disk
        // is an error here, at creation, instead.
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, file_len)
            .map_err(|e| os("fallocate")(e.into()))?;
        let map = MmapRaw::map_raw(&file).map_err(os("mmap"))?;
        if u64::try_from(map.len()).ok() != Some(file_len) {
            return Err(RegionError::TooLarge { size: len });
        }
        let memory = RegionMemory {
            map,
            len,
            _file: file,
            snapshot: Some(snapshot_path(path)),
            flushing: parking_lot::Mutex::new(()),
        };
        memory.restore_snapshot()?;
        Ok(memory)
    }

    /// Copies the flushed snapshot, if there is one of the right size, over the live bytes.
    fn restore_snapshot(&self) -> Result<(), RegionError> {
        let Some(snap) = &self.snapshot else { return Ok(()) };
        let os = |op: &'static str| {
            move |e: std::io::Error| RegionError::Os { op, message: format!("{}: {e}", shown(snap)) }
        };
        let bytes = match std::fs::read(snap) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(os("read snapshot")(e)),
        };
        if u64::try_from(bytes.len()).ok() != Some(self.len) {
            // A snapshot of another size belongs to an older definition of the region: ignore it.
            return Ok(());
        }
        self.copy_in(0, &bytes)?;
        self.map.flush().map_err(os("msync"))
    }

    /// Makes the current bytes durable, in two steps so that the region's lock is held only while its
    /// bytes are copied: `stage` (called under the region's reader lock, so no write is half-done)
    /// copies them into a temporary file without syncing; the returned [`StagedSnapshot`]'s `commit`
    /// (called after the lock is released) syncs it, renames it over `<path>.snap`, syncs the
    /// directory and msyncs the live file. A crash at any moment leaves the previous snapshot or this
    /// one, never a mix. Memfd regions have nothing to flush (`Ok(None)`).
    ///
    /// # Errors
    /// [`RegionError::Os`].
    pub(crate) fn stage_snapshot(&self) -> Result<Option<StagedSnapshot<'_>>, RegionError> {
        use std::io::Write;
        let Some(snap) = &self.snapshot else { return Ok(None) };
        let serial = self.flushing.lock();
        let os = |op: &'static str| {
            move |e: std::io::Error| RegionError::Os { op, message: format!("{}: {e}", shown(snap)) }
        };
        let tmp = snap.with_extension("snap.tmp");
        let mut f = File::create(&tmp).map_err(os("create snapshot"))?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.len {
            let n = usize::try_from((self.len - at).min(1 << 20)).unwrap_or(1 << 20);
            let part = chunk.get_mut(..n).unwrap_or_default();
            self.copy_out(at, part)?;
            f.write_all(part).map_err(os("write snapshot"))?;
            at += u64::try_from(n).unwrap_or(u64::MAX);
        }
        Ok(Some(StagedSnapshot { memory: self, file: f, tmp, _serial: serial }))
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The memfd, for mapping the same pages elsewhere (shared mode).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self._file.as_fd()
    }

    /// Atomically loads the `u32` at `offset` (which must be 4-byte aligned), for wait/notify.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] outside the region or when misaligned.
    pub fn load_u32(&self, offset: u64) -> Result<u32, RegionError> {
        let start = self.check(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(RegionError::OutOfBounds { offset, len: 4, size: self.len });
        }
        // SAFETY: `check` proved `[start, start+4)` lies in the live mapping, the mapping is page aligned
        // and `offset` is a multiple of 4, so the pointer is valid and aligned for an `AtomicU32`; every
        // concurrent access to region bytes is either atomic or a byte copy of the same memory.
        let atom = unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(start).cast::<u32>()) };
        Ok(atom.load(Ordering::SeqCst))
    }

    /// Returns the live mapping as an `AtomicU64` at `offset`, which must be 8-byte aligned.
    fn atomic_u64(&self, offset: u64) -> Result<&AtomicU64, RegionError> {
        let start = self.check(offset, 8)?;
        if !offset.is_multiple_of(8) {
            return Err(RegionError::OutOfBounds { offset, len: 8, size: self.len });
        }
        // SAFETY: `check` proved `[start, start+8)` lies in the mapping, which stays mapped for as long as
        // `self` (and so the returned reference) lives; the mapping is page aligned and `offset` is a
        // multiple of 8, so the pointer is aligned for an `AtomicU64`. Other parties (guests through
        // shared windows, byte copies) may touch the same bytes concurrently: an atomic is the one Rust
        // type for which that is sound, and it never hands out a plain `&u64`.
        Ok(unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(start).cast::<u64>()) })
    }

    /// Loads the `u64` at `offset` (8-byte aligned) straight from the mapping, relaxed, without the
    /// region lock: what an app with the region mapped does. `broker bench`'s native baseline uses it.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] outside the region or when misaligned.
    pub fn load_u64(&self, offset: u64) -> Result<u64, RegionError> {
        Ok(self.atomic_u64(offset)?.load(Ordering::Relaxed))
    }

    /// Stores `value` at `offset` (8-byte aligned) straight into the mapping, relaxed, without the
    /// region lock and without bumping versions (so mirrors do not see it): the native baseline's
    /// counterpart of a store through a shared window.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] outside the region or when misaligned; nothing is written then.
    pub fn store_u64(&self, offset: u64, value: u64) -> Result<(), RegionError> {
        self.atomic_u64(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the region has no bytes (never true for a created region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks `[offset, offset+len)` against the mapping and returns the start as `usize`.
    pub(crate) fn check(&self, offset: u64, len: usize) -> Result<usize, RegionError> {
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        let oob = RegionError::OutOfBounds { offset, len: len64, size: self.len };
        match offset.checked_add(len64) {
            Some(end) if end <= self.len => usize::try_from(offset).map_err(|_| oob),
            _ => Err(oob),
        }
    }

    /// Copies the bytes at `offset` into `dst`.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] if the range is not inside the region; `dst` is untouched then.
    pub fn copy_out(&self, offset: u64, dst: &mut [u8]) -> Result<(), RegionError> {
        // SAFETY: `dst` is a distinct Rust slice, valid for writes of its length (it is never inside this
        // mapping: guests' memories and host buffers are other allocations). Bytes may change
        // concurrently through other mappings of the memfd (the shared mode); the copy then returns some
        // mix of old and new bytes, which callers that need a consistent snapshot prevent with the region
        // lock.
        unsafe { self.copy_out_raw(offset, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` to `offset`.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] if the range is not inside the region; nothing is written then.
    pub fn copy_in(&self, offset: u64, src: &[u8]) -> Result<(), RegionError> {
        // SAFETY: `src` is a distinct Rust slice, valid for reads of its length.
        unsafe { self.copy_in_raw(offset, src.as_ptr(), src.len()) }
    }
}

/// A snapshot copied to its temporary file, not yet durable (see [`RegionMemory::stage_snapshot`]).
pub(crate) struct StagedSnapshot<'m> {
    memory: &'m RegionMemory,
    file: File,
    tmp: std::path::PathBuf,
    /// Holds the region's flush lock until the snapshot is in place.
    _serial: parking_lot::MutexGuard<'m, ()>,
}

impl StagedSnapshot<'_> {
    /// Syncs the snapshot and puts it in place, then msyncs the live file.
    ///
    /// # Errors
    /// [`RegionError::Os`].
    pub(crate) fn commit(self) -> Result<(), RegionError> {
        let Some(snap) = &self.memory.snapshot else { return Ok(()) };
        let os = |op: &'static str| {
            move |e: std::io::Error| RegionError::Os { op, message: format!("{}: {e}", shown(snap)) }
        };
        self.file.sync_all().map_err(os("fsync snapshot"))?;
        std::fs::rename(&self.tmp, snap).map_err(os("rename snapshot"))?;
        if let Some(dir) = snap.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(os("fsync directory"))?;
        }
        self.memory.map.flush().map_err(os("msync"))
    }
}

impl RegionMemory {
    /// Copies `len` bytes at `offset` to `dst`, which may be memory another party changes concurrently
    /// (a guest's linear memory).
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] if the range is not inside the region; nothing is copied then.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes for the whole call, and must not be a reference's
    /// target (it is written through a raw pointer).
    pub(crate) unsafe fn copy_out_raw(
        &self,
        offset: u64,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), RegionError> {
        let start = self.check(offset, len)?;
        // SAFETY: `check` proved the source lies inside the live mapping; the caller vouches for `dst`.
        // A guest window of this same region is another virtual range (physically aliased pages are not
        // overlapping pointers), so the copy sees some mix of old and new bytes at worst.
        unsafe { copy_raw(self.map.as_ptr().add(start), dst, len) };
        Ok(())
    }

    /// Copies `len` bytes from `src`, which may be memory another party changes concurrently, to
    /// `offset`.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] if the range is not inside the region; nothing is written then.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes for the whole call.
    pub(crate) unsafe fn copy_in_raw(
        &self,
        offset: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), RegionError> {
        let start = self.check(offset, len)?;
        // SAFETY: `check` proved the destination lies inside the live writable mapping; the caller vouches
        // for `src`.
        unsafe { copy_raw(src, self.map.as_mut_ptr().add(start), len) };
        Ok(())
    }
}

/// `ptr::copy(src, dst, len)`, with copies of up to 16 bytes done inline: a field-sized copy through a
/// host call is a call into libc's `memmove` otherwise, which costs more than the copy (issue 18).
///
/// # Safety
/// As `ptr::copy`: `src` valid for reads and `dst` for writes of `len` bytes. They may overlap.
#[inline]
pub(crate) unsafe fn copy_raw(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller vouches for `len` bytes at `src` and at `dst`; each access lies inside them
    // (`len - 8 >= 0` where 8 bytes are read, and so on), unaligned accesses are used throughout, and
    // every byte is read before any is written, so overlapping ranges copy as `memmove` would.
    unsafe {
        match len {
            0 => {}
            1..=3 => {
                let (a, b, c) = (src.read(), src.add(len / 2).read(), src.add(len - 1).read());
                dst.write(a);
                dst.add(len / 2).write(b);
                dst.add(len - 1).write(c);
            }
            4..=7 => {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(len - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(len - 4).cast::<u32>().write_unaligned(b);
            }
            8..=16 => {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(len - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(len - 8).cast::<u64>().write_unaligned(b);
            }
            _ => ptr::copy(src, dst, len),
        }
    }
}

/// A file as error messages show it: its name only. Errors reach clients, and the server's directory
/// layout (an absolute path under the state dir) is none of their business; the daemon log has it.
fn shown(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| "the region file".to_owned(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_bounds_checked() {
        let m = RegionMemory::new_memfd("t", 100).expect("memfd");
        m.copy_in(96, &[1, 2, 3, 4]).expect("in range");
        let mut out = [0u8; 4];
        m.copy_out(96, &mut out).expect("in range");
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(m.copy_in(97, &[0; 4]), Err(RegionError::OutOfBounds { offset: 97, len: 4, size: 100 }));
        assert!(m.copy_out(u64::MAX, &mut out).is_err());
        m.copy_out(100, &mut []).expect("empty range at the end is fine");
    }

    #[test]
    fn u64_accesses_are_aligned_and_bounds_checked() {
        let m = RegionMemory::new_memfd("t", 24).expect("memfd");
        m.store_u64(16, 0x0102_0304_0506_0708).expect("in range");
        assert_eq!(m.load_u64(16), Ok(0x0102_0304_0506_0708));
        let mut out = [0u8; 8];
        m.copy_out(16, &mut out).expect("in range");
        assert_eq!(out, 0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(m.load_u64(20), Err(RegionError::OutOfBounds { offset: 20, len: 8, size: 24 }));
        assert_eq!(m.store_u64(24, 1), Err(RegionError::OutOfBounds { offset: 24, len: 8, size: 24 }));
        assert_eq!(m.load_u64(4), Err(RegionError::OutOfBounds { offset: 4, len: 8, size: 24 }));
    }

    /// Every length, at every offset, disjoint and overlapping either way: as `memmove` copies.
    #[test]
    fn inline_copies_copy_as_memmove_does() {
        let source: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for len in 0..=24usize {
            for (from, to) in [(0, 32), (32, 0), (3, 5), (5, 3), (7, 7), (1, 9), (9, 1)] {
                let mut ours = source.clone();
                let mut theirs = source.clone();
                // SAFETY: both ranges lie inside the 64-byte buffers (from, to <= 32, len <= 24).
                unsafe {
                    copy_raw(ours.as_ptr().add(from), ours.as_mut_ptr().add(to), len);
                    ptr::copy(theirs.as_ptr().add(from), theirs.as_mut_ptr().add(to), len);
                }
                assert_eq!(ours, theirs, "len {len} from {from} to {to}");
            }
        }
    }
}
