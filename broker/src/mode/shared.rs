//! Shared mode: a region's pages mapped into an app's linear memory, zero copies.
//!
//! A [`Window`] is a `MAP_SHARED | MAP_FIXED` mapping of the region's memfd over page-aligned bytes of a
//! guest's linear memory (a host-owned reservation, see `runtime::memory_creator`). Read-only
//! capabilities map `PROT_READ`, so a guest store traps in wasm and never reaches the host. A window
//! belongs to the capability it was mapped through: when that capability is closed or revoked (or the
//! region destroyed, or the instance exits), the window is replaced by `PROT_NONE` pages, so a later
//! access traps instead of reading stale or zero bytes; a [`Tombstone`] remembers which region was
//! there so the trap can name it.
//!
//! [`Windows`] is the broker's registry of them: every instance's live windows and tombstones, the
//! windows whose revocation failed, the mode, alignment, overlap and quota rules of mapping, and what a
//! fault in a window means. A window hangs off its capability as a revocation hook
//! ([`Cleanup::revocation`], tag [`CleanupTag::Window`]), as watches do: the capability space runs it
//! when it removes the capability, under its lock and before the removing call returns, and reports the
//! hook's failure as that call's [`CapError::NotRevoked`]. The capability space knows nothing else
//! about windows.
//!
//! **Invariant:** a `Window` exists only while the linear memory it points into is alive: windows are
//! removed with their capabilities, and an instance's capabilities are removed before its store drops.
//! **Invariant:** a capability has a `Window` hook exactly while this registry holds a live window
//! mapped through it; both change only under the capability space's lock.
//! **Invariant:** pages are swapped under a window only while holding the owning instance's memory
//! fence for writing; host functions hold it for reading while they touch guest memory, so host code
//! never faults on a page revoked under it.
//!
//! Memory-ordering contract for apps: a window is ordinary shared memory. Plain loads and stores are
//! not synchronised between apps; use the atomic helpers (wasm atomics, sequentially consistent or
//! acquire/release) to publish data, as with threads sharing memory.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`).

#![allow(unsafe_code, reason = "maps region pages into guest linear memories")]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rustix::mm::{mmap, mmap_anonymous, MapFlags, ProtFlags};
use wasmtime::Engine;

use crate::capability::{CapError, CapId, CapSpace, Cleanup, CleanupTag, Handle};
use crate::mode::Mode;
use crate::region::Region;
use crate::runtime::memory_creator::{MemoryShape, ANON_FLAGS};
use crate::runtime::InstanceId;
use crate::tenant::{QuotaError, Reservation, Resource, Tenant};

/// Host page size: windows and their guest addresses are aligned to it.
pub const HOST_PAGE: u64 = crate::region::PAGE_SIZE;

/// What host code may not do to a range of a guest's linear memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// A read-only window: the host may read it but must not write it (a store would fault).
    ReadOnly,
    /// A revoked window: inaccessible pages, neither readable nor writable.
    Revoked,
}

/// The ranges of one guest's linear memory that are read-only or inaccessible windows. Every host access
/// to guest memory is checked against it (see `abi::guest_memory`), so host code never faults on a
/// window.
#[derive(Debug, Default)]
pub(crate) struct Guards {
    ranges: Vec<(u32, u64, Guard)>,
    /// The memory was scrubbed because a window could not be revoked: the instance is being stopped
    /// and the host touches none of its memory any more.
    sealed: bool,
}

impl Guards {
    /// Whether the host may read (or, with `write`, write) `[ptr, ptr+len)`.
    pub(crate) fn allows(&self, ptr: u32, len: u32, write: bool) -> bool {
        if self.sealed {
            return false;
        }
        if len == 0 {
            return true;
        }
        self.ranges.iter().all(|(start, n, guard)| {
            !overlap(*start, *n, ptr, u64::from(len)) || (*guard == Guard::ReadOnly && !write)
        })
    }

    /// Records what `[ptr, ptr+len)` is now (`None`: ordinary memory again).
    fn set(&mut self, ptr: u32, len: u64, guard: Option<Guard>) {
        self.ranges.retain(|(start, n, _)| !overlap(*start, *n, ptr, len));
        if let Some(g) = guard {
            self.ranges.push((ptr, len, g));
        }
    }
}

/// Why an instance must stop at its next epoch check, as `Fence::stop` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Code outside wasm (a wasmtime helper such as `memory.fill`, or a host function) faulted at this
    /// wasm address of a window; the memory was scrubbed so the helper could finish.
    Fault {
        /// Wasm address of the fault.
        addr: u64,
    },
    /// A window could not be revoked, so the whole memory was scrubbed (or is about to be dropped).
    Sealed,
}

const STOP_NONE: u64 = 0;
const STOP_SEALED: u64 = u64::MAX;

/// Guards one instance's linear memory (one per store).
///
/// `guards` is held for reading while host code touches the memory and for writing while a window in it
/// is swapped. `stop` and `shape` are read without locks by the fault handler (`runtime::fault`).
#[derive(Debug)]
pub(crate) struct Fence {
    guards: Arc<RwLock<Guards>>,
    /// The memory windows are mapped into, once the instance has one.
    shape: OnceLock<Arc<MemoryShape>>,
    /// [`STOP_NONE`], [`STOP_SEALED`], or a faulting wasm address plus one: set once, never cleared
    /// (a stopped store is dropped, not reused).
    stop: AtomicU64,
    /// Advancing the epoch makes the instance reach its epoch check (and see `stop`) promptly.
    engine: Engine,
}

/// The fence shared by an instance's host functions, its windows and its fault handler.
pub(crate) type MemoryFence = Arc<Fence>;

impl Fence {
    /// A fence for a new store of `engine`.
    pub(crate) fn new(engine: Engine) -> MemoryFence {
        Arc::new(Fence {
            guards: Arc::new(RwLock::new(Guards::default())),
            shape: OnceLock::new(),
            stop: AtomicU64::new(STOP_NONE),
            engine,
        })
    }

    /// Holds the guards for reading: no window of this memory is swapped while the guard lives (the
    /// only way host code gets at guest memory, see `abi::guest_memory`).
    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, Guards> {
        self.guards.read()
    }

    /// Records which memory this fence guards (once, after instantiation).
    pub(crate) fn set_shape(&self, shape: Arc<MemoryShape>) {
        let _ = self.shape.set(shape);
    }

    /// The guarded memory's shape, if the instance has a memory.
    pub(crate) fn shape(&self) -> Option<&Arc<MemoryShape>> {
        self.shape.get()
    }

    /// Why the instance must stop, if it must.
    pub(crate) fn stop(&self) -> Option<Stop> {
        match self.stop.load(Ordering::Acquire) {
            STOP_NONE => None,
            STOP_SEALED => Some(Stop::Sealed),
            a => Some(Stop::Fault { addr: a - 1 }),
        }
    }

    /// Records a fault outside wasm code at wasm address `addr` (the first one wins) and advances the
    /// epoch so the instance reaches its epoch check at once. Async-signal-safe: atomics only.
    pub(crate) fn record_fault(&self, addr: u64) {
        let _ = self.stop.compare_exchange(
            STOP_NONE,
            addr.saturating_add(1).min(STOP_SEALED - 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.engine.increment_epoch();
    }

    /// The fail-closed path of revocation: scrubs the whole memory (every window goes at once), refuses
    /// the host any further access to it, and stops the instance at its next epoch check.
    ///
    /// # Errors
    /// The operating system's error if even the scrub failed; the instance is still marked to stop.
    pub(crate) fn seal(&self) -> std::io::Result<()> {
        let mut guards = self.guards.write();
        self.stop.store(STOP_SEALED, Ordering::Release);
        self.engine.increment_epoch();
        guards.sealed = true;
        match self.shape.get() {
            // SAFETY: the shape belongs to this fence's store, which is alive (windows, which hold the
            // fence, are removed before their store drops); holding the guards for writing means no
            // host function of the instance is touching its memory; wasm code running on it sees zeros
            // and stops at the epoch check the advance above triggers.
            Some(shape) => unsafe { shape.scrub() }.map_err(std::io::Error::from),
            None => Ok(()),
        }
    }
}

/// Why a map or unmap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// The handle or its rights refused the operation.
    #[error(transparent)]
    Cap(#[from] CapError),
    /// Only shared-mode regions can be mapped.
    #[error("only shared-mode regions can be mapped; this one is {0}")]
    WrongMode(Mode),
    /// The guest address, or the capability's range, is not page aligned.
    #[error(
        "guest address {guest_ptr:#x} or capability range at {offset} of {len} bytes is not page aligned"
    )]
    Unaligned {
        /// The guest address.
        guest_ptr: u32,
        /// The capability's offset in the region.
        offset: u64,
        /// The capability's length.
        len: u64,
    },
    /// The length is not the capability's length rounded up to whole pages.
    #[error("window length {given} must be {expected} (the capability's range in whole pages)")]
    LengthMismatch {
        /// The length asked for.
        given: u64,
        /// The length required.
        expected: u64,
    },
    /// The window would extend past the guest's current memory.
    #[error("window at {guest_ptr:#x} of {len} bytes extends past linear memory of {memory_size} bytes")]
    BeyondMemory {
        /// The guest address.
        guest_ptr: u32,
        /// The length.
        len: u64,
        /// The memory size.
        memory_size: u64,
    },
    /// This capability already has a window.
    #[error("this capability is already mapped")]
    AlreadyMapped,
    /// The range overlaps another window of this instance.
    #[error("window at {guest_ptr:#x} of {len} bytes overlaps another window")]
    Overlap {
        /// The guest address.
        guest_ptr: u32,
        /// The length.
        len: u64,
    },
    /// No window of this capability is at that address.
    #[error("no window of this capability at {guest_ptr:#x}")]
    NotMapped {
        /// The guest address.
        guest_ptr: u32,
    },
    /// The operating system refused the mapping.
    #[error("mapping failed: {0}")]
    Os(String),
    /// A window could not be taken away (the kernel refused both the window's replacement and the
    /// scrub of the whole memory); its instance was told to stop.
    #[error(
        "the shared window of region {region} could not be revoked ({reason}); its instance is being stopped"
    )]
    NotRevoked {
        /// The region the window maps.
        region: String,
        /// What the kernel said.
        reason: String,
    },
    /// The instance, or its tenant, has as many windows (revoked ones included) as its quota allows.
    #[error(transparent)]
    Quota(#[from] QuotaError),
}

/// A region mapped into a guest's linear memory.
#[derive(Debug)]
pub(crate) struct Window {
    instance: InstanceId,
    guest_ptr: u32,
    len: u64,
    writable: bool,
    host_addr: usize,
    fence: MemoryFence,
    region: Arc<Region>,
    /// The window's place in its tenant's window quota.
    charge: Reservation,
}

/// Where a revoked window was, so a trap there can name the region. It keeps the window's quota
/// charge (its `PROT_NONE` pages are still a mapping) until the guest unmaps it or exits.
#[derive(Debug)]
pub(crate) struct Tombstone {
    guest_ptr: u32,
    len: u64,
    region: String,
    /// `None` once a window mapped over it took the charge over.
    charge: Option<Reservation>,
}

impl Tombstone {
    /// Hands this tombstone's quota charge to a window mapped over it.
    fn take_charge(&mut self) -> Option<Reservation> {
        self.charge.take()
    }
}

/// A request to map, validated by [`Windows::map`] against the capability and memory.
struct MapAt {
    instance: InstanceId,
    /// Host address of the guest's linear memory.
    memory_base: usize,
    guest_ptr: u32,
    len: u64,
    region_offset: u64,
    writable: bool,
    fence: MemoryFence,
    charge: Reservation,
}

fn usize_of(v: u64) -> std::io::Result<usize> {
    usize::try_from(v).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

impl Window {
    /// Maps `region` at `at`.
    ///
    /// # Safety
    /// `[at.memory_base + at.guest_ptr, + at.len)` must lie inside the accessible part of the calling
    /// instance's live linear memory, page aligned, and no host code may hold a reference into it; the
    /// caller must drop (revoke or unmap) the window before that memory is freed.
    /// On failure the quota charge comes back with the error, so a charge taken over from a tombstone
    /// can go back to it.
    unsafe fn map(region: Arc<Region>, at: MapAt) -> Result<Window, (std::io::Error, Reservation)> {
        // SAFETY: forwarded; the caller upholds `map`'s contract, which is `map_pages`'.
        match unsafe { Self::map_pages(&region, &at) } {
            Ok(host_addr) => Ok(Window {
                instance: at.instance,
                guest_ptr: at.guest_ptr,
                len: at.len,
                writable: at.writable,
                host_addr,
                fence: at.fence,
                region,
                charge: at.charge,
            }),
            Err(e) => Err((e, at.charge)),
        }
    }

    /// Maps the pages of a window and returns the host address they are at.
    ///
    /// # Safety
    /// As for [`Window::map`].
    unsafe fn map_pages(region: &Region, at: &MapAt) -> std::io::Result<usize> {
        let len = usize_of(at.len)?;
        let host_addr = at
            .memory_base
            .checked_add(usize_of(u64::from(at.guest_ptr))?)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let prot = if at.writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        let mut guards = at.fence.guards.write();
        // A memory the broker did not create has no shape: the fault handler could not cover a window
        // there, nor could a failed revocation scrub it. And a stopping instance (sealed after a failed
        // revocation, or after a fault) gets no new window: a later revoke would find its memory sealed
        // and could not take the window away.
        if at.fence.shape().is_none() || guards.sealed || at.fence.stop().is_some() {
            return Err(std::io::Error::other("this instance's memory takes no windows (it is stopping)"));
        }
        // SAFETY: the caller guarantees the target range is ours to replace (inside the instance's
        // memory, aligned, unreferenced); MAP_FIXED replaces exactly those pages with the region's.
        unsafe {
            mmap(
                host_addr as *mut c_void,
                len,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                region.memory.fd(),
                at.region_offset,
            )
        }?;
        // A window replaces whatever the range was (a fully covered revoked window included).
        guards.set(at.guest_ptr, at.len, (!at.writable).then_some(Guard::ReadOnly));
        drop(guards);
        Ok(host_addr)
    }

    /// Replaces the window with fresh zeroed read-write pages: the guest gets its memory back. The pages
    /// are of the memory's own kind, so the kernel merges them with their neighbours again.
    ///
    /// # Errors
    /// The operating system's error, with the window, which is then still mapped: the caller keeps it.
    fn unmap(self) -> Result<(), (Window, std::io::Error)> {
        match self.replace(ProtFlags::READ | ProtFlags::WRITE) {
            Ok(()) => Ok(()),
            Err(e) => Err((self, e)),
        }
    }

    /// Replaces the window with `PROT_NONE` pages and returns the tombstone to remember. Fail-closed: if
    /// the kernel refuses (as it does at its limit on mappings when the replacement must split one),
    /// the whole memory is scrubbed instead and the instance is stopped at its next epoch check.
    ///
    /// # Errors
    /// [`ShareError::NotRevoked`], with the window, if even the scrub failed: the instance is marked to
    /// stop, but the window may be reachable until it does, so the caller keeps it and must not report
    /// success.
    fn revoke(self) -> Result<Tombstone, Box<(Window, ShareError)>> {
        let outcome = match self.replace(ProtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(first) => {
                tracing::warn!(
                    region = %self.region.qualified_name(),
                    "revoking a shared window failed ({first}); scrubbing the instance's memory and stopping it"
                );
                self.fence.seal().map_err(|e| format!("{first}; then {e}"))
            }
        };
        match outcome {
            Ok(()) => Ok(Tombstone {
                guest_ptr: self.guest_ptr,
                len: self.len,
                region: self.region.qualified_name(),
                charge: Some(self.charge),
            }),
            Err(reason) => {
                let region = self.region.qualified_name();
                Err(Box::new((self, ShareError::NotRevoked { region, reason })))
            }
        }
    }

    fn replace(&self, prot: ProtFlags) -> std::io::Result<()> {
        let mut guards = self.fence.guards.write();
        if guards.sealed {
            // The memory was scrubbed whole (and takes no new window since): the pages are gone.
            return Ok(());
        }
        // Pages given back are of the memory's own kind, so they merge with their neighbours; a revoked
        // window's `PROT_NONE` pages lack `NORESERVE`, so they never merge with the reservation's
        // inaccessible tail or guard (a scrub of the accessible prefix then never splits a mapping).
        let flags = if prot.is_empty() { MapFlags::PRIVATE } else { ANON_FLAGS };
        // SAFETY: by the type's invariant the range lies in the instance's live memory; holding the fence
        // for writing means no host function of that instance is touching its memory right now; wasm code
        // that touches the range afterwards traps (PROT_NONE) or sees zeros it owns (read-write).
        unsafe {
            mmap_anonymous(self.host_addr as *mut c_void, usize_of(self.len)?, prot, flags | MapFlags::FIXED)
        }?;
        let revoked = prot == ProtFlags::empty();
        guards.set(self.guest_ptr, self.len, revoked.then_some(Guard::Revoked));
        Ok(())
    }

    /// Whether `[ptr, ptr+len)` overlaps this window.
    fn overlaps(&self, ptr: u32, len: u64) -> bool {
        overlap(self.guest_ptr, self.len, ptr, len)
    }
}

/// Restores read-write zero pages where a tombstone was (the guest unmapping a revoked window).
///
/// # Safety
/// As [`Window::map`]: the range must lie in the calling instance's live memory.
unsafe fn restore(memory_base: usize, tomb: &Tombstone, fence: &MemoryFence) -> std::io::Result<()> {
    let mut guards = fence.guards.write();
    if guards.sealed {
        return Ok(());
    }
    let addr = memory_base
        .checked_add(usize_of(u64::from(tomb.guest_ptr))?)
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    // SAFETY: the caller guarantees the range is in its own live memory and that it is the calling
    // instance (so no other host code touches that memory).
    unsafe {
        mmap_anonymous(
            addr as *mut c_void,
            usize_of(tomb.len)?,
            ProtFlags::READ | ProtFlags::WRITE,
            ANON_FLAGS | MapFlags::FIXED,
        )
    }?;
    guards.set(tomb.guest_ptr, tomb.len, None);
    Ok(())
}

/// Whether two guest ranges overlap.
fn overlap(a: u32, a_len: u64, b: u32, b_len: u64) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// What a guest asks for when it maps a window.
pub(crate) struct MapRequest {
    /// Guest address of the window (page aligned).
    pub(crate) guest_ptr: u32,
    /// Length in bytes (the capability's length rounded up to whole pages).
    pub(crate) len: u64,
    /// Map read-write (needs the write right) rather than read-only.
    pub(crate) writable: bool,
    /// Host address of the guest's linear memory.
    pub(crate) memory_base: usize,
    /// The linear memory's current size.
    pub(crate) memory_size: usize,
    /// The instance's memory fence.
    pub(crate) fence: MemoryFence,
    /// The instance's tenant, charged for the window.
    pub(crate) tenant: Arc<Tenant>,
}

/// One instance's windows.
#[derive(Debug, Default)]
struct InstanceWindows {
    /// Live windows, by the capability each was mapped through (one at most per capability).
    live: HashMap<CapId, Window>,
    /// Where revoked windows were, so traps there can name the region.
    tombstones: Vec<Tombstone>,
}

impl InstanceWindows {
    /// Windows, revoked ones not yet unmapped (tombstones) included: what the window quota counts.
    fn held(&self) -> usize {
        self.live.len() + self.tombstones.len()
    }

    /// Whether a window at `[ptr, ptr+len)` would cover a revoked window only in part.
    fn partly_covers_a_tombstone(&self, ptr: u32, len: u64) -> bool {
        self.tombstones.iter().any(|t| {
            overlap(t.guest_ptr, t.len, ptr, len)
                && !(t.guest_ptr >= ptr && u64::from(t.guest_ptr) + t.len <= u64::from(ptr) + len)
        })
    }
}

#[derive(Debug, Default)]
struct WindowTable {
    instances: HashMap<InstanceId, InstanceWindows>,
    /// Windows whose revocation failed; their instances were told to stop, and they go with them.
    unrevoked: Vec<Window>,
}

/// The broker's shared windows: every instance's live windows and tombstones, and the windows whose
/// revocation failed. Cloning it shares the registry (each window's revocation hook holds a clone).
///
/// **Lock order:** the capability space, then this registry, then an instance's fence, then a region.
/// Windows are created and removed only under the capability space's lock: [`Windows::map`] and
/// [`Windows::unmap`] take the locked space, and the revocation hooks run inside its removals. So this
/// lock is never held while a capability is removed (its hook takes it) and never taken before the
/// capability space's.
#[derive(Debug, Default, Clone)]
pub(crate) struct Windows(Arc<Mutex<WindowTable>>);

impl Windows {
    /// An empty registry.
    pub(crate) fn new() -> Windows {
        Windows::default()
    }

    /// Maps the region of `instance`'s `handle` into its linear memory at `req.guest_ptr`, and hangs
    /// the window off that capability as its revocation hook.
    ///
    /// `caps` is the capability space, locked by the caller: the mapping is made under its lock, so a
    /// concurrent revoke either precedes it (the handle is stale) or follows it (and its hook unmaps
    /// the window): no window outlives its capability.
    ///
    /// # Errors
    /// Handle and rights errors, [`ShareError`] for mode, alignment, length, range, overlap and quota
    /// problems, [`ShareError::Os`] if the kernel refused the mapping (or the instance is stopping).
    pub(crate) fn map(
        &self,
        caps: &mut CapSpace,
        instance: InstanceId,
        handle: Handle,
        req: MapRequest,
    ) -> Result<(), ShareError> {
        let cap = caps.lookup(instance, handle)?;
        cap.may_map(req.writable)?;
        let mode = cap.region.mode();
        if mode != Mode::Shared {
            return Err(ShareError::WrongMode(mode));
        }
        let end = cap.range.offset + cap.range.len;
        if u64::from(req.guest_ptr) % HOST_PAGE != 0
            || cap.range.offset % HOST_PAGE != 0
            || (end % HOST_PAGE != 0 && end != cap.region.size())
        {
            return Err(ShareError::Unaligned {
                guest_ptr: req.guest_ptr,
                offset: cap.range.offset,
                len: cap.range.len,
            });
        }
        let expected = cap.range.len.div_ceil(HOST_PAGE) * HOST_PAGE;
        if req.len != expected {
            return Err(ShareError::LengthMismatch { given: req.len, expected });
        }
        let memory = u64::try_from(req.memory_size).unwrap_or(u64::MAX);
        if u64::from(req.guest_ptr).checked_add(req.len).is_none_or(|e| e > memory) {
            return Err(ShareError::BeyondMemory {
                guest_ptr: req.guest_ptr,
                len: req.len,
                memory_size: memory,
            });
        }
        let mut table = self.0.lock();
        let mine = table.instances.entry(instance).or_default();
        if mine.live.contains_key(&cap.id) {
            return Err(ShareError::AlreadyMapped);
        }
        // A revoked window the new one covers only in part would lose its record (and with it the
        // guest's way to get those pages back): refuse; unmap the revoked window first.
        if mine.partly_covers_a_tombstone(req.guest_ptr, req.len)
            || mine.live.values().any(|w| w.overlaps(req.guest_ptr, req.len))
        {
            return Err(ShareError::Overlap { guest_ptr: req.guest_ptr, len: req.len });
        }
        // Every window (and every revoked one not yet unmapped) costs the process kernel mappings: bound
        // them per instance and per tenant. A new window replaces the tombstones it covers.
        let limit = req.tenant.quotas().windows_per_instance;
        let covered =
            mine.tombstones.iter().filter(|t| overlap(t.guest_ptr, t.len, req.guest_ptr, req.len)).count();
        let held = u64::try_from(mine.held().saturating_sub(covered)).unwrap_or(u64::MAX);
        if held >= limit {
            return Err(ShareError::Quota(QuotaError {
                resource: Resource::InstanceWindows,
                limit,
                in_use: held,
                requested: 1,
            }));
        }
        // The hook goes on first, so that a window never exists without it; it finds nothing to revoke
        // (and is dropped here) if the mapping below fails.
        let hook = {
            let (windows, id) = (self.clone(), cap.id);
            Cleanup::revocation(move || windows.revoke(instance, id))
        };
        caps.add_cleanup(cap.id, CleanupTag::Window, hook)?;
        let mapped = Self::map_new(mine, instance, &cap.region, cap.range.offset, req);
        match mapped {
            Ok(window) => {
                mine.tombstones.retain(|t| !overlap(t.guest_ptr, t.len, window.guest_ptr, window.len));
                mine.live.insert(cap.id, window);
                Ok(())
            }
            Err(e) => {
                caps.drop_cleanup(cap.id, CleanupTag::Window);
                Err(e)
            }
        }
    }

    /// Charges a checked request to its tenant's window quota (or to the revoked window it is mapped
    /// over) and maps it.
    fn map_new(
        mine: &mut InstanceWindows,
        instance: InstanceId,
        region: &Arc<Region>,
        region_offset: u64,
        req: MapRequest,
    ) -> Result<Window, ShareError> {
        // A window over the instance's own revoked window takes over that tombstone's place in the
        // quota (the tombstone goes once the window is mapped); otherwise it reserves a new one.
        let covered =
            mine.tombstones.iter().position(|t| overlap(t.guest_ptr, t.len, req.guest_ptr, req.len));
        let taken = covered.and_then(|i| Some((i, mine.tombstones.get_mut(i)?.take_charge()?)));
        let (from_tombstone, charge) = match taken {
            Some((i, c)) => (Some(i), c),
            None => (None, req.tenant.reserve(Resource::Windows, 1)?),
        };
        let at = MapAt {
            instance,
            memory_base: req.memory_base,
            guest_ptr: req.guest_ptr,
            len: req.len,
            region_offset,
            writable: req.writable,
            fence: req.fence,
            charge,
        };
        // SAFETY: `Windows::map` checked the range to lie inside the caller's accessible linear memory
        // (`req.memory_size`) and to be page aligned; the caller is the instance itself, inside a host
        // call (`abi::region_map`) that holds no reference into its memory; the window is kept in this
        // registry with a revocation hook on its capability, and an instance's capabilities are removed
        // (running the hook, which unmaps the window) before its store and memory drop.
        let mapped = unsafe { Window::map(Arc::clone(region), at) };
        mapped.map_err(|(e, charge)| {
            // The tombstone stays (nothing replaced its pages), so it keeps its place in the quota.
            if let Some(t) = from_tombstone.and_then(|i| mine.tombstones.get_mut(i)) {
                t.charge = Some(charge);
            }
            ShareError::Os(e.to_string())
        })
    }

    /// Revokes the window mapped through capability `id` of `instance`, if there is one: the
    /// capability's revocation hook, run when the capability is removed.
    fn revoke(&self, instance: InstanceId, id: CapId) -> Result<(), CapError> {
        let mut table = self.0.lock();
        let Some(window) = table.instances.get_mut(&instance).and_then(|w| w.live.remove(&id)) else {
            return Ok(());
        };
        match window.revoke() {
            Ok(tomb) => {
                table.instances.entry(instance).or_default().tombstones.push(tomb);
                Ok(())
            }
            Err(failed) => {
                let (w, e) = *failed;
                let error = match e {
                    ShareError::NotRevoked { region, reason } => CapError::NotRevoked { region, reason },
                    other => {
                        CapError::NotRevoked { region: w.region.qualified_name(), reason: other.to_string() }
                    }
                };
                table.unrevoked.push(w);
                Err(error)
            }
        }
    }

    /// Unmaps the window at `guest_ptr` mapped through `handle`, giving the guest zeroed pages back. A
    /// window already revoked (stale handle) is cleaned up the same way. `caps` is the capability
    /// space, locked by the caller.
    ///
    /// # Errors
    /// [`ShareError::NotMapped`], or the handle's error if it is stale and no revoked window was there;
    /// [`ShareError::Os`] if the kernel refused (the window is then still mapped, and still revocable).
    pub(crate) fn unmap(
        &self,
        caps: &mut CapSpace,
        instance: InstanceId,
        handle: Handle,
        guest_ptr: u32,
        memory_base: usize,
        fence: &MemoryFence,
    ) -> Result<(), ShareError> {
        let looked_up = caps.lookup(instance, handle);
        let mut table = self.0.lock();
        let mine = table.instances.get_mut(&instance);
        match looked_up {
            Ok(cap) => {
                let live = mine.map(|w| &mut w.live).ok_or(ShareError::NotMapped { guest_ptr })?;
                if live.get(&cap.id).is_none_or(|w| w.guest_ptr != guest_ptr) {
                    return Err(ShareError::NotMapped { guest_ptr });
                }
                let window = live.remove(&cap.id).ok_or(ShareError::NotMapped { guest_ptr })?;
                match window.unmap() {
                    Ok(()) => {
                        // The window is gone: so is the hook that would have revoked it.
                        caps.drop_cleanup(cap.id, CleanupTag::Window);
                        Ok(())
                    }
                    Err((window, e)) => {
                        // Still mapped: keep it where its revocation hook finds it.
                        live.insert(cap.id, window);
                        Err(ShareError::Os(e.to_string()))
                    }
                }
            }
            Err(e) => {
                let tombs = mine.map(|w| &mut w.tombstones);
                let found = tombs.as_ref().and_then(|t| t.iter().position(|t| t.guest_ptr == guest_ptr));
                let (Some(tombs), Some(i)) = (tombs, found) else { return Err(e.into()) };
                let Some(tomb) = tombs.get(i) else { return Err(e.into()) };
                // SAFETY: the tombstone records a window this instance mapped inside its own memory, which is
                // alive (tombstones are forgotten with the instance, before its memory drops); the caller is
                // the instance itself, inside a host call (`abi::region_unmap`).
                let restored = unsafe { restore(memory_base, tomb, fence) };
                restored.map_err(|e| ShareError::Os(e.to_string()))?;
                // Restored: the tombstone (and the window quota it held) goes.
                tombs.swap_remove(i);
                Ok(())
            }
        }
    }

    /// Forgets an instance's revoked windows (and their quota), and its windows whose revocation failed,
    /// once its capabilities were removed: its memory goes with its store, right after. Call it with the
    /// capability space still locked (see `registry::Core::remove_instance`).
    pub(crate) fn forget_instance(&self, instance: InstanceId) {
        let mut table = self.0.lock();
        if let Some(mine) = table.instances.get_mut(&instance) {
            mine.tombstones.clear();
            // Its live windows went with its capabilities; one still here would still have its hook.
            if mine.live.is_empty() {
                table.instances.remove(&instance);
            }
        }
        table.unrevoked.retain(|w| w.instance != instance);
    }

    /// A description of what was at wasm address `addr` of `instance`, if it is a revoked window or a
    /// read-only one, to explain a memory fault there.
    pub(crate) fn explain_fault(&self, instance: InstanceId, addr: u64) -> Option<String> {
        let table = self.0.lock();
        let mine = table.instances.get(&instance)?;
        let inside = |ptr: u32, len: u64| addr >= u64::from(ptr) && addr < u64::from(ptr).saturating_add(len);
        if let Some(t) = mine.tombstones.iter().find(|t| inside(t.guest_ptr, t.len)) {
            return Some(format!(
                "access to the shared window of region {} at {addr:#x}, which was revoked",
                t.region
            ));
        }
        mine.live.values().find(|w| inside(w.guest_ptr, w.len)).map(|w| {
            let kind = if w.writable { "read-write" } else { "read-only" };
            format!("fault in the {kind} shared window of region {} at {addr:#x}", w.region.qualified_name())
        })
    }

    /// Number of live windows (for leak checks).
    pub(crate) fn count(&self) -> usize {
        self.0.lock().instances.values().map(|w| w.live.len()).sum()
    }

    /// Windows an instance holds, revoked ones not yet unmapped (tombstones) included: what its window
    /// quota counts.
    pub(crate) fn windows_of(&self, instance: InstanceId) -> usize {
        self.0.lock().instances.get(&instance).map_or(0, InstanceWindows::held)
    }
}
