//! Regions: named, host-owned memory that the broker arbitrates between the host and apps.
//!
//! A [`Region`] is backed by a memfd mapped with memmap2 (see [`mapping`]), so the same pages can later
//! be mapped into apps' linear memories (shared mode) without copying. It has a name unique within its
//! owner tenant, a size, a [`Mode`] fixed at creation and a version counter bumped by every write.
//!
//! **Invariant:** every access to a region's bytes is bounds-checked against its size here, whatever
//! the caller checked before.

pub(crate) mod lease;
pub mod mapping;
mod replica;
mod traffic;
mod watch;

use broker_abi::Rights;
use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::mode::{ConflictPolicy, Mode};
use crate::name::Name;
use crate::tenant::TenantId;

pub(crate) use mapping::copy_raw;
pub use mapping::RegionMemory;
pub use replica::{Accepted, Check, Proposal, Refused, Span, Upstream};
pub use traffic::{Traffic, TrafficStats};
pub(crate) use watch::publishing;
use watch::Watchers;
pub use watch::{Change, WatchFn, WatchId};

/// Granularity of per-page versions (mirror refresh and commit work in whole pages).
pub const PAGE_SIZE: u64 = broker_abi::PAGE_SIZE as u64;

/// Identifies a region for the lifetime of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub(crate) u64);

impl RegionId {
    /// The raw id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region#{}", self.0)
    }
}

/// The largest region this broker creates (1 TiB): far above any quota, and small enough that offsets
/// always fit in `i64` and `usize`.
pub const MAX_REGION_SIZE: u64 = 1 << 40;

/// A size written as text that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not digits with an optional unit.
    #[error("{0:?} is not a size: use bytes or a B, KiB, MiB or GiB suffix, like 64KiB")]
    NotASize(String),
    /// More bytes than a `u64` holds.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Deletes a destroyed persistent region's files: the region file, its snapshot and its version lease.
/// Best effort: a file that is already gone is not an error, and the region must no longer exist.
pub fn remove_persistent_files(path: &std::path::Path) {
    let _ = std::fs::remove_file(mapping::snapshot_path(path));
    lease::VersionLease::remove(path);
    let _ = std::fs::remove_file(path);
}

/// Parses a byte count as people write it: `4096`, `4096B`, `64KiB`, `16 MiB`, `1GiB` (binary units,
/// case-insensitive). Scenario files and `broker bench` both take sizes this way; each checks its own
/// range afterwards.
///
/// # Errors
/// [`SizeError`], naming the text.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        _ => return Err(SizeError::NotASize(text.to_owned())),
    };
    let n: u64 = digits.parse().map_err(|_| {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            SizeError::TooLarge(text.to_owned())
        } else {
            SizeError::NotASize(text.to_owned())
        }
    })?;
    n.checked_mul(1 << shift).ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

/// Errors of region memory and access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// A region must have at least one byte.
    #[error("region size must be at least 1 byte")]
    ZeroSize,
    /// The requested size exceeds [`MAX_REGION_SIZE`].
    #[error("region size {size} exceeds the maximum of {MAX_REGION_SIZE} bytes")]
    TooLarge {
        /// The requested size.
        size: u64,
    },
    /// `[offset, offset+len)` does not lie inside the region.
    #[error("range at offset {offset} of {len} bytes lies outside the region of {size} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// The region is a replica and its home cannot take the write now (unreachable, or dead with no
    /// node taken over yet); nothing was written.
    #[error("the region's home is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The operating system refused to create or map the backing memory.
    #[error("{op} failed: {message}")]
    Os {
        /// Which call failed.
        op: &'static str,
        /// The OS error's text.
        message: String,
    },
}

/// What the host asks for when it creates a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// Name, unique within the owner tenant.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Access mode.
    pub mode: Mode,
    /// What a mirror commit does when the region changed since the mirror's base.
    pub policy: ConflictPolicy,
    /// Where the bytes live.
    pub backing: Backing,
    /// What every app of the owner tenant may open the region with by name. `Rights::NONE` (the
    /// default): only the instances it is granted to may open it (and, for a region an app created,
    /// that app).
    pub members: Rights,
}

/// Where a region's bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backing {
    /// An anonymous memfd: gone when the broker exits (the default).
    #[default]
    Ephemeral,
    /// A file, mapped shared: [`Region::flush`] makes its contents durable, and a broker restarted on
    /// the same file finds them again.
    Persistent(std::path::PathBuf),
}

impl RegionSpec {
    /// A spec with the given name, size and mode, and the default conflict policy (reject).
    pub fn new(name: impl Into<String>, size: u64, mode: Mode) -> RegionSpec {
        RegionSpec {
            name: name.into(),
            size,
            mode,
            policy: ConflictPolicy::default(),
            backing: Backing::Ephemeral,
            members: Rights::NONE,
        }
    }

    /// The same spec, opened by every app of the owner tenant with `rights` (see
    /// [`RegionSpec::members`]).
    #[must_use]
    pub fn with_members(mut self, rights: Rights) -> RegionSpec {
        self.members = rights;
        self
    }

    /// The same spec backed by a file.
    #[must_use]
    pub fn persistent(mut self, path: impl Into<std::path::PathBuf>) -> RegionSpec {
        self.backing = Backing::Persistent(path.into());
        self
    }

    /// The same spec with another conflict policy.
    #[must_use]
    pub fn with_policy(mut self, policy: ConflictPolicy) -> RegionSpec {
        self.policy = policy;
        self
    }
}

/// A snapshot of a region's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's id.
    pub id: RegionId,
    /// Its name.
    pub name: String,
    /// The owner tenant.
    pub owner: TenantId,
    /// Size in bytes.
    pub size: u64,
    /// Access mode.
    pub mode: Mode,
    /// Mirror conflict policy.
    pub policy: ConflictPolicy,
    /// Whether the region is ephemeral or file-backed.
    pub backing: Backing,
    /// Version counter: bumped by every write.
    pub version: u64,
    /// What the owner tenant's apps may open it with by name (see [`RegionSpec::members`]).
    pub members: Rights,
}

/// A region: host-owned memory with a name, owner, mode and version.
#[derive(Debug)]
pub struct Region {
    id: RegionId,
    name: Name,
    owner: TenantId,
    owner_name: Name,
    mode: Mode,
    policy: ConflictPolicy,
    backing: Backing,
    pub(crate) memory: RegionMemory,
    /// Serialises writers against readers so each write or commit is seen whole or not at all, and
    /// guards the per-page versions. Writers take it through [`Region::lock_for_write`] only.
    pub(crate) pages: RwLock<PageVersions>,
    /// The write sequence: odd while a writer holds `pages` for writing, advanced by 2 per writer.
    /// Small reads copy without the reader lock and keep the copy only if the sequence was even and
    /// unchanged around it (a seqlock; see [`Region::read_small`]).
    seq: AtomicU64,
    /// The region version; written only under the `pages` writer lock, readable without it.
    version: AtomicU64,
    /// For a persistent region: the durable reservation that keeps versions rising across restarts.
    lease: Option<lease::VersionLease>,
    pub(crate) traffic: Traffic,
    /// Calls parked in `region_wait` on this region, woken by `region_notify`.
    pub(crate) waiters: parking_lot::Mutex<Waiters>,
    watchers: Watchers,
    /// Whether writes go to `upstream` (read on every write without the lock).
    replica: AtomicBool,
    /// For a replica: where its writes go (see [`Upstream`]).
    upstream: RwLock<Option<Arc<dyn Upstream>>>,
}

/// The calls parked on a region, each as the waker of its instance.
///
/// A parked call holds no thread: its instance's worker went back to the pool, and the waker puts the
/// instance back in the run queue. Each instance has at most one call in flight, so the list is no
/// longer than the number of instances waiting, and a waiter removes itself when its wait ends.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// Advanced by every notify: a waiter that parked at an older generation has been notified.
    generation: u64,
    parked: Vec<(u64, std::task::Waker)>,
    next: u64,
}

impl Waiters {
    /// The current generation (read when parking).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Parks a waiter; the key removes it again.
    pub(crate) fn park(&mut self, waker: &std::task::Waker) -> u64 {
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        self.parked.push((key, waker.clone()));
        key
    }

    /// Replaces a parked waiter's waker if the call is now polled through another.
    pub(crate) fn repark(&mut self, key: u64, waker: &std::task::Waker) {
        if let Some((_, w)) = self.parked.iter_mut().find(|(k, _)| *k == key) {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
        }
    }

    /// Removes a waiter (a no-op if a notify already took it).
    pub(crate) fn unpark(&mut self, key: u64) {
        self.parked.retain(|(k, _)| *k != key);
    }

    /// Starts a new generation and hands back every parked waker, to wake after the lock is released.
    #[must_use = "the wakers must be woken"]
    pub(crate) fn notify(&mut self) -> Vec<std::task::Waker> {
        self.generation = self.generation.wrapping_add(1);
        self.parked.drain(..).map(|(_, w)| w).collect()
    }
}

/// The version of the last write or commit that changed each page.
#[derive(Debug)]
pub(crate) struct PageVersions(pub(crate) Vec<u64>);

impl PageVersions {
    /// Host memory the table of a region of `size` bytes takes (a `u64` per 4 KiB page, a size in
    /// 4 KiB pages: 1/512 of the region), charged to the owner's `memory_bytes`.
    pub(crate) fn table_bytes(size: u64) -> u64 {
        size.div_ceil(PAGE_SIZE).saturating_mul(8)
    }

    /// Indexes of the pages that `[offset, offset+len)` touches.
    pub(crate) fn touched(offset: u64, len: u64) -> std::ops::Range<usize> {
        if len == 0 {
            return 0..0;
        }
        let first = usize::try_from(offset / PAGE_SIZE).unwrap_or(usize::MAX);
        let last = usize::try_from((offset + len - 1) / PAGE_SIZE).unwrap_or(usize::MAX);
        first..last.saturating_add(1)
    }

    /// Marks the pages of a write with its version.
    pub(crate) fn mark(&mut self, offset: u64, len: u64, version: u64) {
        let r = Self::touched(offset, len);
        let end = r.end.min(self.0.len());
        if let Some(pages) = self.0.get_mut(r.start.min(end)..end) {
            pages.fill(version);
        }
    }
}

impl Region {
    #[allow(clippy::too_many_arguments, reason = "the constructor of every field the spec and owner give")]
    pub(crate) fn new(
        id: RegionId,
        name: Name,
        owner: TenantId,
        owner_name: Name,
        size: u64,
        mode: Mode,
        policy: ConflictPolicy,
        backing: Backing,
    ) -> Result<Region, RegionError> {
        if size == 0 {
            return Err(RegionError::ZeroSize);
        }
        if size > MAX_REGION_SIZE {
            return Err(RegionError::TooLarge { size });
        }
        let (memory, lease, start) = match &backing {
            Backing::Ephemeral => (RegionMemory::new_memfd(name.as_str(), size)?, None, 0),
            Backing::Persistent(path) => {
                let (lease, start) = lease::VersionLease::open(path);
                (RegionMemory::open_file(path, size)?, Some(lease), start)
            }
        };
        Ok(Region {
            id,
            name,
            owner,
            owner_name,
            mode,
            memory,
            policy,
            pages: RwLock::new(PageVersions(vec![0; usize::try_from(size.div_ceil(PAGE_SIZE)).unwrap_or(0)])),
            version: AtomicU64::new(start),
            seq: AtomicU64::new(0),
            lease,
            traffic: Traffic::default(),
            waiters: parking_lot::Mutex::new(Waiters::default()),
            watchers: Watchers::default(),
            replica: AtomicBool::new(false),
            upstream: RwLock::new(None),
            backing,
        })
    }

    /// The region's id.
    pub fn id(&self) -> RegionId {
        self.id
    }

    /// The region's mapping, for host code that reads it directly (bounds-checked copies and atomic
    /// word access; no capability, version or watch is involved).
    pub fn memory(&self) -> &RegionMemory {
        &self.memory
    }

    /// The region's name within its tenant.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The owner tenant.
    pub fn owner(&self) -> TenantId {
        self.owner
    }

    /// The owner tenant's name, for qualified names (`tenant/region`).
    pub fn owner_name(&self) -> &Name {
        &self.owner_name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.memory.len()
    }

    /// Access mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `owner/name`, as apps of other tenants open it.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.owner_name, self.name)
    }

    /// Where the bytes live.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Makes a persistent region's contents durable (msync); returns whether it is persistent.
    ///
    /// # Errors
    /// [`RegionError::Os`] if the flush fails.
    pub fn flush(&self) -> Result<bool, RegionError> {
        match self.backing {
            Backing::Ephemeral => Ok(false),
            Backing::Persistent(_) => {
                // The bytes are copied under the reader lock (no write or commit is half-done), then
                // synced without it, so a slow disk never holds the region's writers (or, through them,
                // anyone waiting on their guests' memory fences) for the length of an fsync.
                let staged = {
                    let _pages = self.pages.read();
                    self.memory.stage_snapshot()?
                };
                if let Some(s) = staged {
                    s.commit()?;
                }
                Ok(true)
            }
        }
    }

    /// Calls `f` after every write and commit, with the change; see [`Change`].
    pub fn watch(&self, f: WatchFn) -> WatchId {
        self.watchers.add(f)
    }

    /// Removes a watcher; false if it was already gone.
    pub fn unwatch(&self, id: WatchId) -> bool {
        self.watchers.remove(id)
    }

    /// Number of watchers (for tests and stats).
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Tells the watchers; callers hold the `pages` writer lock, so changes arrive in version order.
    pub(crate) fn publish(&self, change: Change) {
        self.watchers.publish(&change);
    }

    /// The mirror conflict policy.
    pub fn policy(&self) -> ConflictPolicy {
        self.policy
    }

    /// Bytes and pages copied, commits and conflicts, over the region's life.
    pub fn traffic(&self) -> TrafficStats {
        self.traffic.stats()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Advances the version; callers hold the `pages` writer lock.
    pub(crate) fn bump_version(&self) -> u64 {
        // Reserved durably before anyone (lock-free readers included) can see it.
        let v = self.version.load(Ordering::Acquire) + 1;
        if let Some(lease) = &self.lease {
            lease.cover(v);
        }
        self.version.store(v, Ordering::Release);
        v
    }

    /// A metadata snapshot.
    pub fn info(&self) -> RegionInfo {
        RegionInfo {
            id: self.id,
            name: self.name.to_string(),
            owner: self.owner,
            size: self.size(),
            mode: self.mode,
            policy: self.policy,
            backing: self.backing.clone(),
            version: self.version(),
            // Kept by the capability space: the broker fills it in.
            members: Rights::NONE,
        }
    }

    /// Copies bytes at absolute `offset` into `dst`.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`].
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), RegionError> {
        self.read_versioned(offset, dst).map(|_| ())
    }

    /// As [`Region::read`], and returns the version the bytes belong to (read under the same lock).
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`].
    pub fn read_versioned(&self, offset: u64, dst: &mut [u8]) -> Result<u64, RegionError> {
        self.read_with(dst.len(), |m| m.copy_out(offset, dst))
    }

    /// Copies `src` to absolute `offset`; returns the new version.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`]; nothing is written.
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<u64, RegionError> {
        if self.is_replica() {
            return self.propose_blind(vec![Span { offset, bytes: src.to_vec() }]);
        }
        self.write_with(offset, src.len(), |m| m.copy_in(offset, src))
    }

    /// Runs `copy` (which copies `len` bytes out of the region's memory to wherever the caller keeps
    /// them: a host buffer, or a guest's memory for a handle-mode read) under the reader lock; returns
    /// the version those bytes belong to, read under the same lock.
    ///
    /// # Errors
    /// What `copy` returns.
    pub(crate) fn read_with(
        &self,
        len: usize,
        copy: impl FnOnce(&RegionMemory) -> Result<(), RegionError>,
    ) -> Result<u64, RegionError> {
        let _pages = self.pages.read();
        copy(&self.memory)?;
        self.traffic.copied_out(len64(len));
        Ok(self.version())
    }

    /// Runs `copy` (which copies `len` bytes to absolute `offset` of the region's memory) under the
    /// writer lock, then marks the pages, bumps the version and publishes the change; returns the new
    /// version.
    ///
    /// # Errors
    /// What `copy` returns; nothing is marked or published then.
    pub(crate) fn write_with(
        &self,
        offset: u64,
        len: usize,
        copy: impl FnOnce(&RegionMemory) -> Result<(), RegionError>,
    ) -> Result<u64, RegionError> {
        let mut pages = self.lock_for_write();
        copy(&self.memory)?;
        let version = self.bump_version();
        pages.mark(offset, len64(len), version);
        self.traffic.copied_in(len64(len));
        self.publish(Change { version, offset, len: len64(len) });
        Ok(version)
    }
}

impl Region {
    /// As [`Region::write_with`] for several `(offset, len)` spans written by one `copy`: one writer
    /// lock, one version, every span's pages marked, and one change published, spanning them all.
    ///
    /// # Errors
    /// What `copy` returns; nothing is marked or published then.
    pub(crate) fn write_many(
        &self,
        spans: &[(u64, usize)],
        copy: impl FnOnce(&RegionMemory) -> Result<(), RegionError>,
    ) -> Result<u64, RegionError> {
        let mut pages = self.lock_for_write();
        copy(&self.memory)?;
        let version = self.bump_version();
        let mut total = 0u64;
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for &(offset, len) in spans {
            pages.mark(offset, len64(len), version);
            total += len64(len);
            lo = lo.min(offset);
            hi = hi.max(offset.saturating_add(len64(len)));
        }
        self.traffic.copied_in(total);
        if lo < hi {
            self.publish(Change { version, offset: lo, len: hi - lo });
        }
        Ok(version)
    }
}

/// Reads of at most this many bytes ([`Region::read_small`]) take no lock while no write overlaps them.
pub(crate) const SMALL_READ: usize = 64;

/// Tries of a lock-free small read before it waits for the reader lock (a writer holding the lock for
/// long, or a stream of writes, would otherwise keep it retrying).
const SMALL_READ_TRIES: u32 = 4;

impl Region {
    /// Takes `pages` for writing with the write sequence odd until the guard drops: every writer into
    /// the region's memory goes through this, so [`Region::read_small`] can tell that it overlapped one.
    pub(crate) fn lock_for_write(&self) -> WriteLocked<'_> {
        let pages = self.pages.write();
        // Only writers change the sequence, and only under the writer lock: a plain load suffices.
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd value before the writer's stores into the memory: a reader that sees any of
        // them (and fences with Acquire after its copy) then sees the sequence moved.
        fence(Ordering::Release);
        WriteLocked { pages, seq: &self.seq, end: s.wrapping_add(2) }
    }

    /// As [`Region::read_versioned`] for `dst.len() <= SMALL_READ`, without the reader lock while no
    /// write overlaps: the bytes are copied, then kept only if the write sequence was even before the
    /// copy and unchanged after it (so they are one write's whole result, never part of one), with
    /// the version read between the two. After a few overlapped tries it takes the reader lock.
    ///
    /// `dst` should be a private buffer: a copy that is thrown away may have been torn.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`].
    pub(crate) fn read_small(&self, offset: u64, dst: &mut [u8]) -> Result<u64, RegionError> {
        if dst.len() <= SMALL_READ {
            for _ in 0..SMALL_READ_TRIES {
                let before = self.seq.load(Ordering::Acquire);
                if before & 1 == 0 {
                    // The copy may race a writer that starts now, exactly as a copy from a region races
                    // the apps that map it (`RegionMemory::copy_out_raw`): it sees some mix of old and
                    // new bytes, which the check below discards.
                    self.memory.copy_out(offset, dst)?;
                    let version = self.version.load(Ordering::Relaxed);
                    // Pairs with the writer's Release fence: if the copy saw any byte a writer stored
                    // after making the sequence odd, the load below sees that odd value or a later one.
                    fence(Ordering::Acquire);
                    if self.seq.load(Ordering::Relaxed) == before {
                        self.traffic.copied_out(len64(dst.len()));
                        return Ok(version);
                    }
                }
                std::hint::spin_loop();
            }
        }
        self.read_versioned(offset, dst)
    }
}

/// The `pages` writer lock with the write sequence odd; dropping it makes the sequence even again.
pub(crate) struct WriteLocked<'r> {
    pages: parking_lot::RwLockWriteGuard<'r, PageVersions>,
    seq: &'r AtomicU64,
    end: u64,
}

impl std::ops::Deref for WriteLocked<'_> {
    type Target = PageVersions;

    fn deref(&self) -> &PageVersions {
        &self.pages
    }
}

impl std::ops::DerefMut for WriteLocked<'_> {
    fn deref_mut(&mut self) -> &mut PageVersions {
        &mut self.pages
    }
}

impl Drop for WriteLocked<'_> {
    fn drop(&mut self) {
        // Release: a reader that sees the even value sees every store of the write before it. The lock
        // itself is released after this (fields drop after `drop` returns).
        self.seq.store(self.end, Ordering::Release);
    }
}

/// A length as the `u64` regions count in (saturating, though no buffer comes near).
pub(crate) fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{Backing, Region, RegionError, RegionId, SMALL_READ};
    use crate::name::Name;
    use crate::tenant::TenantId;

    /// A handle-mode region of `size` bytes (the replica tests use it too).
    pub(super) fn region(size: u64) -> Region {
        let n = |s: &str| Name::new(s).expect("name");
        Region::new(
            RegionId(1),
            n("r"),
            TenantId(1),
            n("t"),
            size,
            crate::Mode::Handle,
            Default::default(),
            Backing::Ephemeral,
        )
        .expect("region")
    }

    /// Write `v` stores the byte `v` over the whole span, so it becomes version `v`: a small read that
    /// kept part of a write, or bytes of one write with another's version, shows mixed bytes or a byte
    /// that is not its version's.
    #[test]
    fn small_reads_never_keep_part_of_a_write() {
        let r = region(4096);
        const WRITES: u64 = 200_000;
        std::thread::scope(|s| {
            s.spawn(|| {
                for v in 1..=WRITES {
                    // An odd span (`memmove` copies it in several stores) that straddles a page.
                    let bytes = [(v & 0xff) as u8; SMALL_READ - 1];
                    assert_eq!(r.write(4096 - 100, &bytes).expect("write"), v);
                }
            });
            let mut last = 0;
            let mut buf = [0u8; SMALL_READ - 1];
            while last < WRITES {
                let version = r.read_small(4096 - 100, &mut buf).expect("read");
                assert!(buf.iter().all(|b| *b == (version & 0xff) as u8), "version {version} read {buf:?}");
                assert!(version >= last, "the version went back from {last} to {version}");
                last = version;
            }
        });
    }

    #[test]
    fn small_reads_check_bounds_and_larger_ones_take_the_lock() {
        let r = region(100);
        let mut buf = [0u8; 8];
        assert!(matches!(r.read_small(93, &mut buf), Err(RegionError::OutOfBounds { .. })));
        assert!(matches!(r.read_small(u64::MAX, &mut buf), Err(RegionError::OutOfBounds { .. })));
        r.write(92, &[7; 8]).expect("write");
        assert_eq!(r.read_small(92, &mut buf).expect("read"), 1);
        assert_eq!(buf, [7; 8]);
        let mut big = [0u8; SMALL_READ + 1];
        r.write(0, &[9; SMALL_READ + 1]).expect("write");
        assert_eq!(r.read_small(0, &mut big).expect("read"), 2);
        assert!(big.iter().all(|b| *b == 9));
        // Nothing is copied in after a refused read.
        let mut untouched = [1u8; 8];
        assert!(r.read_small(100, &mut untouched).is_err());
        assert_eq!(untouched, [1; 8]);
    }

    /// A reader that arrives while a writer holds the lock gets the write whole, after it.
    #[test]
    fn a_small_read_during_a_write_waits_for_it() {
        let r = region(64);
        let guard = r.lock_for_write();
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut buf = [0u8; 16];
                let v = r.read_small(0, &mut buf).expect("read");
                (v, buf)
            });
            r.memory.copy_in(0, &[5; 16]).expect("copy");
            let v = r.bump_version();
            drop(guard);
            assert_eq!(reader.join().expect("reader"), (v, [5; 16]));
        });
    }
}
