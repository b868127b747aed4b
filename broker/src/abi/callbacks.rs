//! Host functions for callbacks both ways: region watches (the broker calls the app) and native
//! functions as handles (the app calls host services). The UI toolkit extension's callbacks
//! (`ext::ui`) are checked with [`check_callback`] and delivered the same way.
//!
//! A callback is a wasm function pointer, i.e. an index into the app's exported function table; it is
//! checked (present, non-null, right signature) when registered and delivered later on the app's own
//! worker through its event queue (see `runtime::events`). Registrations hang off the capability they
//! were made through, so closing or revoking it ends them.

use std::sync::Arc;

use broker_abi::{MAX_FUNCTION_HANDLES, MAX_NAME_LEN};
use wasmtime::Caller;

use super::guest_memory::{check_bounds, GuestMemory};
use super::{check_out, copy_in, memory_size, write_with_len, AbiError, Ctx};
use crate::capability::{Cleanup, CleanupTag, Handle, Rights};
use crate::region::Change;
use crate::registry::Service;
use crate::runtime::events::{self, EventKind, Pending};
use crate::runtime::InstanceState;
use crate::tenant::{Reservation, Resource};

/// Checks a callback the caller registers (a function-table index of the signature `params`), before
/// anything else of the registration happens.
pub(crate) fn check_callback(
    caller: &mut Caller<'_, InstanceState>,
    index: u32,
    params: &[wasmtime::ValType],
) -> Result<(), AbiError> {
    events::check_callback(caller, index, params).map_err(AbiError::Callback)
}

pub(super) fn region_watch(
    caller: &mut Ctx<'_>,
    handle: u32,
    callback: u32,
    user_data: u32,
) -> Result<(), AbiError> {
    check_callback(caller, callback, &events::watch_signature())?;
    let ctx = &caller.data().ctx;
    let mut caps = ctx.core.caps.lock();
    let cap = caps.lookup(ctx.instance, Handle::from_raw(handle))?;
    cap.require(Rights::WATCH)?;
    if caps.has_cleanup(cap.id, CleanupTag::Watch) {
        return Err(AbiError::AlreadyRegistered);
    }
    // Each watch costs a watcher on the region and callbacks queued for the app: bounded per tenant.
    // The charge goes with the registration.
    let charge = ctx.tenant.reserve(Resource::Watches, 1).map_err(crate::Error::from)?;
    let (sink, range, source) = (ctx.sink.clone(), cap.range, cap.id.get());
    let ending = sink.clone();
    sink.watch_started(source);
    let watch = cap.region.watch(Arc::new(move |c: &Change| {
        // Only changes inside the capability's range, reported relative to it.
        let start = c.offset.max(range.offset);
        let end = (c.offset + c.len).min(range.offset + range.len);
        if end <= start {
            return;
        }
        let kind =
            EventKind::Watch { handle, version: c.version, offset: start - range.offset, len: end - start };
        sink.deliver(Pending { source, callback, user_data, kind, missed: 0, echo: false });
    }));
    let region = Arc::clone(&cap.region);
    caps.add_cleanup(
        cap.id,
        CleanupTag::Watch,
        Cleanup::new(move || {
            region.unwatch(watch);
            // Events of this watch already queued go too: no callback runs after the unwatch, close
            // or revoke that ran this returns.
            ending.watch_ended(source);
            drop(charge);
        }),
    )?;
    Ok(())
}

pub(super) fn region_unwatch(caller: &mut Ctx<'_>, handle: u32) -> Result<(), AbiError> {
    let ctx = &caller.data().ctx;
    let mut caps = ctx.core.caps.lock();
    let cap = caps.lookup(ctx.instance, Handle::from_raw(handle))?;
    if caps.run_cleanup(cap.id, CleanupTag::Watch)? == 0 {
        return Err(AbiError::NotRegistered);
    }
    Ok(())
}

pub(super) fn fn_open(caller: &mut Ctx<'_>, name_ptr: u32, name_len: u32, out: u32) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let name = copy_in(caller, name_ptr, name_len, MAX_NAME_LEN)?;
    let name =
        std::str::from_utf8(&name).map_err(|_| AbiError::Name(crate::name::NameError::NotUtf8))?.to_owned();
    let ctx = &caller.data().ctx;
    let service: Arc<Service> =
        ctx.core.services.read().get(&name).cloned().ok_or_else(|| AbiError::NoSuchService(name.clone()))?;
    if !service.allows(ctx.tenant.id()) {
        return Err(AbiError::ServiceDenied(name));
    }
    // A function handle is a capability like any other: it counts against the tenant's handles quota
    // (and so shows in its usage) for as long as it is open.
    let charge = ctx.tenant.reserve(Resource::Handles, 1).map_err(crate::Error::from)?;
    let fence = std::sync::Arc::clone(&caller.data().ctx.fence);
    let mem = GuestMemory::lock_through(&fence, caller);
    let out = mem.check(out, 4, true)?;
    let h = caller.data_mut().ctx.functions.open(service, charge)?;
    out.write_from(0, &h.to_le_bytes())
}

fn function(caller: &Ctx<'_>, fh: u32) -> Result<Arc<Service>, AbiError> {
    caller.data().ctx.functions.get(fh)
}

/// An open function handle: the service, and its charge against the tenant's handles quota.
type OpenFunction = (Arc<Service>, Reservation);

/// An instance's open host services. A handle packs a slot index (plus one, so 0 is never valid) in its
/// low 20 bits and the slot's generation in its high 12, so closed slots are reused (open/close churn
/// costs nothing) while a stale handle never reaches the service later opened in its slot; lookups,
/// opens and closes are O(1). An open slot holds its charge against the tenant's handles quota.
#[derive(Default)]
pub(crate) struct FunctionTable {
    /// Each slot's generation, and its service with the handle's charge while open.
    slots: Vec<(u32, Option<OpenFunction>)>,
    free: Vec<usize>,
    open: u32,
}

const SLOT_BITS: u32 = 20;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const GENERATIONS: u32 = 1 << (32 - SLOT_BITS);

impl FunctionTable {
    /// Opens `service`; returns its handle.
    fn open(&mut self, service: Arc<Service>, charge: Reservation) -> Result<u32, AbiError> {
        if self.open >= MAX_FUNCTION_HANDLES {
            return Err(AbiError::Exhausted("too many function handles".into()));
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
        };
        let slot = self.slots.get_mut(index).ok_or_else(|| AbiError::Exhausted("function table".into()))?;
        slot.1 = Some((service, charge));
        self.open += 1;
        let low = u32::try_from(index + 1).map_err(|_| AbiError::Exhausted("function table".into()))?;
        Ok(slot.0 << SLOT_BITS | low)
    }

    fn slot(&self, fh: u32) -> Result<usize, AbiError> {
        let index = usize::try_from(fh & SLOT_MASK).ok().and_then(|i| i.checked_sub(1));
        match index {
            Some(i) if i < self.slots.len() => Ok(i),
            _ => Err(crate::capability::CapError::InvalidHandle(fh).into()),
        }
    }

    /// The service behind a live handle.
    fn get(&self, fh: u32) -> Result<Arc<Service>, AbiError> {
        let i = self.slot(fh)?;
        match self.slots.get(i) {
            Some((gen, Some((s, _)))) if *gen == fh >> SLOT_BITS => Ok(Arc::clone(s)),
            _ => Err(crate::capability::CapError::StaleHandle(fh).into()),
        }
    }

    /// Closes a live handle; its slot is reused with the next generation (a slot whose generations are
    /// used up is retired).
    fn close(&mut self, fh: u32) -> Result<(), AbiError> {
        self.get(fh)?;
        let i = self.slot(fh)?;
        if let Some(slot) = self.slots.get_mut(i) {
            slot.1 = None;
            slot.0 += 1;
            self.open -= 1;
            if slot.0 < GENERATIONS {
                self.free.push(i);
            }
        }
        Ok(())
    }
}

/// The largest argument buffer a service call copies.
const MAX_ARGS: u32 = 1 << 20;

pub(super) fn fn_call(
    caller: &mut Ctx<'_>,
    fh: u32,
    arg_ptr: u32,
    arg_len: u32,
    res_ptr: u32,
    res_cap: u32,
    out_len: u32,
) -> Result<(), AbiError> {
    check_out(caller, out_len, 4)?;
    check_bounds(memory_size(caller), res_ptr, res_cap)?;
    let service = function(caller, fh)?;
    if arg_len > MAX_ARGS {
        return Err(AbiError::InvalidValue { field: "arg_len", value: i64::from(arg_len) });
    }
    let args = GuestMemory::lock(caller).read(arg_ptr, arg_len)?;
    let result = service.call(&args).map_err(AbiError::Service)?;
    write_with_len(caller, (res_ptr, res_cap), out_len, &result, |needed| AbiError::ResultTooLarge {
        needed,
        cap: res_cap,
    })
}

pub(super) fn fn_close(caller: &mut Ctx<'_>, fh: u32) -> Result<(), AbiError> {
    caller.data_mut().ctx.functions.close(fh)
}
