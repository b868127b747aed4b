//! Host ABI v1: the core-wasm imports under `broker_v1` through which apps reach regions.
//!
//! This is the core every broker offers; extensions a host turns on (the UI toolkit under
//! `broker_ui_v1`, in `ext::ui`) add imports under modules of their own, built on the helpers here
//! (`Ctx`, `enter`, `code`, the guest-memory checks) and on `AbiError`, whose status mapping stays the
//! only one.
//!
//! Each import returns an `i32` [`broker_abi::Status`]; results go through out-pointers. Every guest
//! value is untrusted: handles are resolved through the caller's own handle table, offsets and lengths
//! are checked against the capability's range with overflow caught, and pointers are checked against
//! linear memory (see [`guest_memory`]). Guest memory is read once per decision: names are copied out
//! before they are parsed, and out-pointers are checked before the operation so that a bad pointer
//! never leaves a half-done effect behind.
//!
//! The names, codes and rights bits come from the `broker-abi` crate, shared with `broker-guest`.
//! `guest-lib/ABI.md` documents every call for app authors.

mod authority;
pub(crate) mod callbacks;
mod errno;
pub(crate) mod guest_memory;
mod wait;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use broker_abi::{func, HandleInfo, Status, MAX_NAME_LEN, MODULE};
use wasmtime::{Caller, Linker, Memory};

use crate::capability::{Cap, CapId, CapRange, Handle, HandleCache, Removals, Rights};
use crate::mode::mirror::{self, MirrorError, MirrorState};
use crate::mode::shared::{MapRequest, MemoryFence};
use crate::mode::Mode;
use crate::name::QualifiedName;
use crate::region::{Region, Traffic, PAGE_SIZE, SMALL_READ};
use crate::registry::Core;
use crate::runtime::{InstanceId, InstanceState};
use crate::tenant::{Resource, Tenant};
use guest_memory::{check_bounds, GuestBytes, GuestMemory};

pub use errno::AbiError;

/// What a host function knows about its caller.
pub(crate) struct GuestCtx {
    pub(crate) core: Arc<Core>,
    pub(crate) instance: InstanceId,
    pub(crate) tenant: Arc<Tenant>,
    memory: Option<Memory>,
    /// This instance's counters (shared with the host API).
    traffic: Arc<Traffic>,
    /// Mirrors acquired, by the raw handle they were acquired through.
    mirrors: HashMap<u32, MirrorState>,
    /// Held for reading while host code touches this instance's memory, for writing while a shared
    /// window in it is swapped (see `mode::shared`). Never take the capability lock while holding it.
    pub(crate) fence: MemoryFence,
    /// Where events for this instance go (watch notifications, native callbacks).
    pub(crate) sink: crate::runtime::EventSink,
    /// Host services opened as function handles.
    pub(crate) functions: callbacks::FunctionTable,
    /// What this instance's handles last resolved to, used while no capability has been removed since
    /// (see `capability::cache`): most calls resolve their handle without the capability lock.
    handles: RefCell<HandleCache<Resolved>>,
    /// The capability space's removal count, read without its lock.
    removals: Arc<Removals>,
}

/// A handle's capability as an instance's cache keeps it: the region by weak reference, so a cache
/// never keeps a destroyed region's memory alive (destroying it also empties every cache).
#[derive(Debug)]
struct Resolved {
    id: CapId,
    region: Weak<Region>,
    rights: Rights,
    range: CapRange,
}

impl GuestCtx {
    pub(crate) fn new(
        core: Arc<Core>,
        instance: InstanceId,
        tenant: Arc<Tenant>,
        traffic: Arc<Traffic>,
        sink: crate::runtime::EventSink,
        fence: MemoryFence,
    ) -> GuestCtx {
        let removals = Arc::clone(core.caps.lock().removals());
        GuestCtx {
            instance,
            tenant,
            memory: None,
            traffic,
            mirrors: HashMap::new(),
            fence,
            sink,
            functions: callbacks::FunctionTable::default(),
            handles: RefCell::new(HandleCache::default()),
            removals,
            core,
        }
    }

    /// Forgets mirrors whose handles were closed or revoked (and returns their quota charge).
    fn drop_stale_mirrors(&mut self) {
        let caps = self.core.caps.lock();
        let instance = self.instance;
        self.mirrors.retain(|h, _| caps.lookup(instance, Handle::from_raw(*h)).is_ok());
    }

    pub(crate) fn set_memory(&mut self, memory: Option<Memory>) {
        self.memory = memory;
    }

    /// The instance's exported memory, if it has one.
    pub(crate) fn memory(&self) -> Option<Memory> {
        self.memory
    }

    /// The capability `handle` names in this instance's own handle table: from this instance's cache
    /// if no capability was removed since it was resolved, otherwise under the capability lock.
    pub(crate) fn lookup(&self, handle: u32) -> Result<Cap, AbiError> {
        let locked = || {
            let caps = self.core.caps.lock();
            let cap = caps.lookup(self.instance, Handle::from_raw(handle))?;
            let resolved = Resolved {
                id: cap.id,
                region: Arc::downgrade(&cap.region),
                rights: cap.rights,
                range: cap.range,
            };
            // Under the same lock hold as the lookup: see `capability::cache`.
            Ok((cap, resolved, caps.removals().count()))
        };
        let Ok(mut cache) = self.handles.try_borrow_mut() else {
            // Never borrowed across a call out, so this does not happen; the locked path is right anyway.
            return locked().map(|(cap, _, _)| cap);
        };
        let hit = |r: &Resolved| {
            Some(Cap { id: r.id, region: r.region.upgrade()?, rights: r.rights, range: r.range })
        };
        cache.resolve(handle, &self.removals, hit, locked)
    }
}

/// What every host function is called with: the calling instance's store, through wasmtime's `Caller`.
pub(crate) type Ctx<'a> = Caller<'a, InstanceState>;

/// The size of the caller's memory (0 if it has none), for bounds checks made before the fence is held.
pub(crate) fn memory_size(caller: &Ctx<'_>) -> usize {
    caller.data().ctx.memory.map_or(0, |m| m.data_size(caller))
}

/// Copies `[ptr, ptr+len)` out of guest memory once; `max` bounds the copy before anything is read.
pub(crate) fn copy_in(caller: &Ctx<'_>, ptr: u32, len: u32, max: u32) -> Result<Vec<u8>, AbiError> {
    if len > max {
        return Err(AbiError::Name(crate::name::NameError::TooLong {
            len: usize::try_from(len).unwrap_or(usize::MAX),
        }));
    }
    GuestMemory::lock(caller).read(ptr, len)
}

/// Checks that an out-pointer of `len` bytes lies in memory before the operation runs (the write checks
/// the window guards again, under the fence).
pub(crate) fn check_out(caller: &Ctx<'_>, ptr: u32, len: u32) -> Result<(), AbiError> {
    check_bounds(memory_size(caller), ptr, len)
}

/// Writes a new handle to a checked out-pointer; if that fails after all (a window was mapped over it
/// meanwhile), the handle is closed again so the call has no effect.
pub(crate) fn write_handle(caller: &mut Ctx<'_>, out: u32, handle: Handle) -> Result<(), AbiError> {
    let written = GuestMemory::lock(caller).write_u32(out, handle.raw());
    if written.is_err() {
        let ctx = &caller.data().ctx;
        let _ = ctx.core.caps.lock().close(ctx.instance, handle);
    }
    written
}

/// Writes `bytes` to the guest buffer `[ptr, ptr + cap)` and their length to `out_len`: the length
/// always (so the app learns what it needs), the bytes only if they fit, else the error `too_large`
/// makes of their length. Both ranges are checked before either is written.
pub(crate) fn write_with_len(
    caller: &Ctx<'_>,
    (ptr, cap): (u32, u32),
    out_len: u32,
    bytes: &[u8],
    too_large: impl FnOnce(u32) -> AbiError,
) -> Result<(), AbiError> {
    let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mem = GuestMemory::lock(caller);
    let len_out = mem.check(out_len, 4, true)?;
    let bytes_out = mem.check(ptr, cap.min(n), true)?;
    len_out.write_from(0, &n.to_le_bytes())?;
    if n > cap {
        return Err(too_large(n));
    }
    bytes_out.write_from(0, bytes)
}

fn rights(bits: u32) -> Result<Rights, AbiError> {
    Rights::from_bits(bits).ok_or(AbiError::UnknownRights(bits))
}

/// The status code a host function returns for `r`.
pub(crate) fn code(r: Result<(), AbiError>) -> i32 {
    match r {
        Ok(()) => Status::Ok.code(),
        Err(e) => e.status().code(),
    }
}

fn region_open(caller: &mut Ctx<'_>, name_ptr: u32, name_len: u32, out: u32) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let name = QualifiedName::from_bytes(&copy_in(caller, name_ptr, name_len, MAX_NAME_LEN)?)?;
    let handle = authority::open(&caller.data().ctx.core, &caller.data().ctx, &name)?;
    write_handle(caller, out, handle)
}

fn region_create(
    caller: &mut Ctx<'_>,
    name_ptr: u32,
    name_len: u32,
    size: i64,
    mode: u32,
    out: u32,
) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let name = crate::name::Name::from_bytes(&copy_in(caller, name_ptr, name_len, MAX_NAME_LEN)?)?;
    let size = u64::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or(AbiError::InvalidValue { field: "size", value: size })?;
    let mode = Mode::from_raw(mode).ok_or(AbiError::UnknownMode(mode))?;
    let handle = authority::create_region(&caller.data().ctx.core, &caller.data().ctx, name, size, mode)?;
    write_handle(caller, out, handle)
}

fn handle_info(caller: &mut Ctx<'_>, handle: u32, out: u32) -> Result<(), AbiError> {
    let size = u32::try_from(HandleInfo::SIZE).unwrap_or(u32::MAX);
    check_out(caller, out, size)?;
    let cap = caller.data().ctx.lookup(handle)?;
    let info = HandleInfo {
        region_size: cap.region.size(),
        offset: cap.range.offset,
        len: cap.range.len,
        version: cap.region.version(),
        rights: cap.rights.bits(),
        mode: cap.region.mode().to_raw(),
    };
    GuestMemory::lock(caller).write(out, &info.to_bytes())
}

fn region_read(caller: &mut Ctx<'_>, handle: u32, offset: i64, dst: u32, len: u32) -> Result<(), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::READ)?;
    let at = cap.range.access(offset, u64::from(len))?;
    let mem = GuestMemory::lock(caller);
    let dst = mem.check(dst, len, true)?;
    let n = dst.len();
    if n <= SMALL_READ {
        // A few words: copied without the region's lock unless a write overlaps (`Region::read_small`),
        // into a buffer of our own, so a torn copy it throws away never reaches the app.
        let mut buf = [0u8; SMALL_READ];
        let small =
            buf.get_mut(..n).ok_or_else(|| AbiError::InvalidValue { field: "len", value: i64::from(len) })?;
        cap.region.read_small(at, small)?;
        dst.write_from(0, small)?;
    } else {
        cap.region.read_with(n, |m| dst.copy_from_region(0, n, m, at))?;
    }
    caller.data().ctx.traffic.copied_out(u64::from(len));
    Ok(())
}

fn region_write(caller: &mut Ctx<'_>, handle: u32, offset: i64, src: u32, len: u32) -> Result<(), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::WRITE)?;
    let at = cap.range.access(offset, u64::from(len))?;
    let mem = GuestMemory::lock(caller);
    let src = mem.check(src, len, false)?;
    let n = src.len();
    if cap.region.is_replica() {
        // Read once into a proposal; the guest's memory is released before the home is asked.
        let mut bytes = vec![0; n];
        src.read_into(0, &mut bytes)?;
        drop(mem);
        cap.region.propose_blind(vec![crate::region::Span { offset: at, bytes }])?;
    } else {
        // The guest bytes are read exactly once, by the copy into the region.
        cap.region.write_with(at, n, |m| src.copy_to_region(0, n, m, at))?;
    }
    caller.data().ctx.traffic.copied_in(u64::from(len));
    Ok(())
}

/// Reads the iovec list at `ptr` once, into host memory.
fn iovecs(mem: &GuestMemory, ptr: u32, count: u32) -> Result<Vec<broker_abi::Iovec>, AbiError> {
    if count > broker_abi::MAX_IOVS {
        return Err(AbiError::InvalidValue { field: "count", value: i64::from(count) });
    }
    let bytes = mem.read(ptr, count * broker_abi::Iovec::SIZE)?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| broker_abi::Iovec::from_bytes(c.try_into().unwrap_or([0; 16])))
        .collect())
}

/// Every entry of the list at `iovs`, checked against the capability's range and the app's memory
/// (`write`: the app's memory is written) before anything is copied: each guest range with the
/// region offset it goes with, and the bytes in all.
fn checked_iovecs<'m>(
    cap: &Cap,
    mem: &'m GuestMemory,
    iovs: u32,
    count: u32,
    write: bool,
) -> Result<(Vec<(GuestBytes<'m>, u64)>, u64), AbiError> {
    let list = iovecs(mem, iovs, count)?;
    let mut checked = Vec::with_capacity(list.len());
    let mut total = 0u64;
    for iov in &list {
        let at = cap.range.access(iov.offset, u64::from(iov.len))?;
        checked.push((mem.check(iov.ptr, iov.len, write)?, at));
        total += u64::from(iov.len);
    }
    Ok((checked, total))
}

fn region_readv(caller: &mut Ctx<'_>, handle: u32, iovs: u32, count: u32) -> Result<(), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::READ)?;
    let mem = GuestMemory::lock(caller);
    let (checked, total) = checked_iovecs(&cap, &mem, iovs, count, true)?;
    let n = usize::try_from(total).unwrap_or(usize::MAX);
    cap.region.read_with(n, |m| {
        checked.iter().try_for_each(|(dst, at)| dst.copy_from_region(0, dst.len(), m, *at))
    })?;
    caller.data().ctx.traffic.copied_out(total);
    Ok(())
}

fn region_writev(caller: &mut Ctx<'_>, handle: u32, iovs: u32, count: u32) -> Result<(), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::WRITE)?;
    let mem = GuestMemory::lock(caller);
    let (checked, total) = checked_iovecs(&cap, &mem, iovs, count, false)?;
    if cap.region.is_replica() {
        let mut spans = Vec::with_capacity(checked.len());
        for (src, at) in &checked {
            let mut bytes = vec![0; src.len()];
            src.read_into(0, &mut bytes)?;
            spans.push(crate::region::Span { offset: *at, bytes });
        }
        drop(checked);
        drop(mem);
        cap.region.propose_blind(spans)?;
        caller.data().ctx.traffic.copied_in(total);
        return Ok(());
    }
    let spans: Vec<(u64, usize)> = checked.iter().map(|(src, at)| (*at, src.len())).collect();
    // The guest bytes are read exactly once, by the copies into the region, all under one writer lock.
    cap.region.write_many(&spans, |m| {
        checked.iter().try_for_each(|(src, at)| src.copy_to_region(0, src.len(), m, *at))
    })?;
    caller.data().ctx.traffic.copied_in(total);
    Ok(())
}

fn handle_restrict(
    caller: &mut Ctx<'_>,
    handle: u32,
    bits: u32,
    offset: i64,
    len: i64,
    out: u32,
) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let rights = rights(bits)?;
    let ctx = &caller.data().ctx;
    let new = authority::restrict(&ctx.core, ctx, Handle::from_raw(handle), rights, offset, len)?;
    write_handle(caller, out, new)
}

fn handle_grant(
    caller: &mut Ctx<'_>,
    handle: u32,
    target_ptr: u32,
    target_len: u32,
    bits: u32,
    offset: i64,
    len: i64,
) -> Result<(), AbiError> {
    let target = QualifiedName::from_bytes(&copy_in(caller, target_ptr, target_len, MAX_NAME_LEN)?)?;
    let rights = rights(bits)?;
    let ctx = &caller.data().ctx;
    authority::grant(&ctx.core, ctx, Handle::from_raw(handle), &target, rights, offset, len)?;
    Ok(())
}

fn handle_revoke(caller: &mut Ctx<'_>, handle: u32) -> Result<(), AbiError> {
    let ctx = &caller.data().ctx;
    ctx.core.caps.lock().revoke(ctx.instance, Handle::from_raw(handle))?;
    Ok(())
}

fn handle_close(caller: &mut Ctx<'_>, handle: u32) -> Result<(), AbiError> {
    caller.data_mut().ctx.mirrors.remove(&handle);
    let ctx = &caller.data().ctx;
    ctx.core.caps.lock().close(ctx.instance, Handle::from_raw(handle))?;
    Ok(())
}

fn require_mode(cap: &Cap, mode: Mode) -> Result<(), AbiError> {
    if cap.region.mode() == mode {
        Ok(())
    } else {
        Err(AbiError::WrongMode { needed: mode, actual: cap.region.mode() })
    }
}

fn mirror_acquire(
    caller: &mut Ctx<'_>,
    handle: u32,
    ptr: u32,
    len: u32,
    out_version: u32,
) -> Result<(), AbiError> {
    check_out(caller, out_version, 8)?;
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::READ)?;
    require_mode(&cap, Mode::Mirror)?;
    // The broker keeps a shadow of every mirror: charge it to the tenant's memory quota.
    let charge =
        caller.data().ctx.tenant.reserve(Resource::MemoryBytes, cap.range.len).map_err(crate::Error::from)?;
    // This takes the capability lock, so it runs before the fence is held.
    caller.data_mut().ctx.drop_stale_mirrors();
    let fence = Arc::clone(&caller.data().ctx.fence);
    let mem = GuestMemory::lock_through(&fence, caller);
    let dst = mem.check(ptr, len, true)?;
    let out = mem.check(out_version, 8, true)?;
    let (mirror, version) = mirror::acquire(&cap.region, cap.range, &dst, charge)?;
    let ctx = &mut caller.data_mut().ctx;
    ctx.traffic.copied_out(mirror.range().len);
    ctx.mirrors.insert(handle, mirror);
    out.write_from(0, &version.to_le_bytes())
}

/// The checks refresh and commit share: both out-pointers writable, then the handle, the right and the
/// mirror mode (in that order, as for every call).
fn mirror_call(
    caller: &mut Ctx<'_>,
    handle: u32,
    right: Rights,
    out_version: u32,
    out_pages: u32,
) -> Result<Cap, AbiError> {
    check_out(caller, out_version, 8)?;
    check_out(caller, out_pages, 4)?;
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(right)?;
    require_mode(&cap, Mode::Mirror)?;
    Ok(cap)
}

fn mirror_refresh(
    caller: &mut Ctx<'_>,
    handle: u32,
    ptr: u32,
    len: u32,
    since: i64,
    out_version: u32,
    out_pages: u32,
) -> Result<(), AbiError> {
    let cap = mirror_call(caller, handle, Rights::READ, out_version, out_pages)?;
    let fence = Arc::clone(&caller.data().ctx.fence);
    let mem = GuestMemory::lock_through(&fence, caller);
    let dst = mem.check(ptr, len, true)?;
    let (v_out, p_out) = (mem.check(out_version, 8, true)?, mem.check(out_pages, 4, true)?);
    let ctx = &mut caller.data_mut().ctx;
    let m = ctx.mirrors.get_mut(&handle).ok_or(MirrorError::NotAcquired)?;
    let synced = m.refresh(&cap.region, &dst, since)?;
    ctx.traffic.refreshed(u64::from(synced.pages));
    ctx.traffic.copied_out(u64::from(synced.pages) * PAGE_SIZE);
    v_out.write_from(0, &synced.version.to_le_bytes())?;
    p_out.write_from(0, &synced.pages.to_le_bytes())
}

fn mirror_commit(
    caller: &mut Ctx<'_>,
    handle: u32,
    ptr: u32,
    len: u32,
    base: i64,
    out_version: u32,
    out_pages: u32,
) -> Result<(), AbiError> {
    let cap = mirror_call(caller, handle, Rights::WRITE, out_version, out_pages)?;
    let fence = Arc::clone(&caller.data().ctx.fence);
    let mem = GuestMemory::lock_through(&fence, caller);
    let src = mem.check(ptr, len, false)?;
    let (v_out, p_out) = (mem.check(out_version, 8, true)?, mem.check(out_pages, 4, true)?);
    let ctx = &mut caller.data_mut().ctx;
    let m = ctx.mirrors.get_mut(&handle).ok_or(MirrorError::NotAcquired)?;
    let outcome = m.commit(&cap.region, &src, base);
    match outcome {
        Ok(synced) => {
            ctx.traffic.committed();
            ctx.traffic.copied_in(u64::from(synced.pages) * PAGE_SIZE);
            v_out.write_from(0, &synced.version.to_le_bytes())?;
            p_out.write_from(0, &synced.pages.to_le_bytes())
        }
        Err(e) => {
            if let MirrorError::Conflict { current } = e {
                ctx.traffic.conflicted();
                // The error carries the version the app must refresh to.
                v_out.write_from(0, &current.to_le_bytes())?;
                p_out.write_from(0, &0u32.to_le_bytes())?;
            }
            Err(e.into())
        }
    }
}

fn mirror_hint(caller: &mut Ctx<'_>, handle: u32, first: u32, pages: u32) -> Result<(), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::WRITE)?;
    require_mode(&cap, Mode::Mirror)?;
    let m = caller.data_mut().ctx.mirrors.get_mut(&handle).ok_or(MirrorError::NotAcquired)?;
    Ok(m.hint(first, pages)?)
}

fn region_map(caller: &mut Ctx<'_>, handle: u32, ptr: u32, len: u32, flags: u32) -> Result<(), AbiError> {
    if flags & !broker_abi::map_flags::ALL != 0 {
        return Err(AbiError::InvalidValue { field: "flags", value: i64::from(flags) });
    }
    let mem = caller.data().ctx.memory.ok_or(AbiError::BadPointer { ptr, len, memory_len: 0 })?;
    let req = MapRequest {
        guest_ptr: ptr,
        len: u64::from(len),
        writable: flags & broker_abi::map_flags::WRITE != 0,
        memory_base: mem.data_ptr(&*caller) as usize,
        memory_size: mem.data_size(&*caller),
        fence: caller.data().ctx.fence.clone(),
        tenant: Arc::clone(&caller.data().ctx.tenant),
    };
    let ctx = &caller.data().ctx;
    let mut caps = ctx.core.caps.lock();
    ctx.core.windows.map(&mut caps, ctx.instance, Handle::from_raw(handle), req)?;
    Ok(())
}

fn region_unmap(caller: &mut Ctx<'_>, handle: u32, ptr: u32) -> Result<(), AbiError> {
    let mem = caller.data().ctx.memory.ok_or(AbiError::BadPointer { ptr, len: 0, memory_len: 0 })?;
    let base = mem.data_ptr(&*caller) as usize;
    let ctx = &caller.data().ctx;
    let mut caps = ctx.core.caps.lock();
    ctx.core.windows.unmap(&mut caps, ctx.instance, Handle::from_raw(handle), ptr, base, &ctx.fence)?;
    Ok(())
}

/// Counts one host call against the caller's traffic (host calls per operation is a figure the
/// scenario reports compare across modes), and traps an instance that must stop: one whose memory took
/// a fault outside wasm code or was sealed (see `runtime::fault`) gets no further service.
pub(crate) fn enter(caller: &Ctx<'_>) -> wasmtime::Result<()> {
    let ctx = &caller.data().ctx;
    ctx.traffic.host_called();
    match ctx.fence.stop() {
        None => Ok(()),
        Some(stop) => Err(wasmtime::Error::new(crate::runtime::StopTrap(stop))),
    }
}

/// Registers one `broker_v1` import, `$name`, calling `$f(caller, args...)`, with the call counted and
/// refused for a stopped instance ([`enter`]) and its result as a status code ([`code`]).
macro_rules! import {
    ($linker:ident, $name:expr, $f:path, ($($arg:ident: $ty:ty),*)) => {
        $linker.func_wrap(MODULE, $name, |mut c: Ctx<'_>, $($arg: $ty),*| -> wasmtime::Result<i32> {
            enter(&c)?;
            Ok(code($f(&mut c, $($arg),*)))
        })?;
    };
}

/// Registers every import of the core ABI v1 (`broker_v1`); extensions register theirs themselves
/// (`ext::ui::add_to_linker`).
///
/// # Errors
/// Only if a name is registered twice, which would be a bug in this function.
pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, func::ABI_VERSION, || broker_abi::VERSION)?;
    linker.func_wrap(MODULE, func::NOP, |c: Ctx<'_>| -> wasmtime::Result<i32> {
        enter(&c)?;
        Ok(Status::Ok.code())
    })?;
    import!(linker, func::REGION_OPEN, region_open, (p: u32, l: u32, out: u32));
    import!(linker, func::REGION_CREATE, region_create, (p: u32, l: u32, size: i64, mode: u32, out: u32));
    import!(linker, func::HANDLE_CLOSE, handle_close, (h: u32));
    import!(linker, func::HANDLE_INFO, handle_info, (h: u32, out: u32));
    import!(linker, func::REGION_READ, region_read, (h: u32, off: i64, p: u32, l: u32));
    import!(linker, func::REGION_WRITE, region_write, (h: u32, off: i64, p: u32, l: u32));
    import!(linker, func::REGION_READV, region_readv, (h: u32, iovs: u32, n: u32));
    import!(linker, func::REGION_WRITEV, region_writev, (h: u32, iovs: u32, n: u32));
    import!(linker, func::HANDLE_RESTRICT, handle_restrict, (h: u32, r: u32, off: i64, len: i64, out: u32));
    import!(linker, func::HANDLE_GRANT, handle_grant, (h: u32, p: u32, l: u32, r: u32, off: i64, len: i64));
    import!(linker, func::HANDLE_REVOKE, handle_revoke, (h: u32));
    import!(linker, func::MIRROR_ACQUIRE, mirror_acquire, (h: u32, p: u32, l: u32, out: u32));
    import!(linker, func::MIRROR_REFRESH, mirror_refresh, (h: u32, p: u32, l: u32, since: i64, v: u32, n: u32));
    import!(linker, func::MIRROR_COMMIT, mirror_commit, (h: u32, p: u32, l: u32, base: i64, v: u32, n: u32));
    import!(linker, func::MIRROR_HINT, mirror_hint, (h: u32, first: u32, pages: u32));
    import!(linker, func::REGION_MAP, region_map, (h: u32, p: u32, l: u32, f: u32));
    import!(linker, func::REGION_UNMAP, region_unmap, (h: u32, p: u32));
    // The one import that blocks: it parks the call without holding a worker (see `wait`).
    linker.func_wrap_async(
        MODULE,
        func::REGION_WAIT,
        |c: Ctx<'_>, (h, off, v, ms): (u32, i64, u32, u32)| {
            Box::new(async move {
                enter(&c)?;
                wait::Wait::new(c, h, off, v, ms).await
            })
        },
    )?;
    import!(linker, func::REGION_NOTIFY, wait::region_notify, (h: u32, off: i64));
    import!(linker, func::REGION_WATCH, callbacks::region_watch, (h: u32, cb: u32, ud: u32));
    import!(linker, func::REGION_UNWATCH, callbacks::region_unwatch, (h: u32));
    import!(linker, func::FN_OPEN, callbacks::fn_open, (p: u32, l: u32, out: u32));
    import!(linker, func::FN_CALL, callbacks::fn_call, (fh: u32, ap: u32, al: u32, rp: u32, rc: u32, out: u32));
    import!(linker, func::FN_CLOSE, callbacks::fn_close, (fh: u32));
    Ok(())
}
