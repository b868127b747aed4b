//! Host functions for callbacks both ways: region watches (the broker calls the app), the native
//! toolkit (objects as capability handles whose events reach app callbacks through C trampolines), and
//! native functions as handles (the app calls host services).
//!
//! A callback is a wasm function pointer, i.e. an index into the app's exported function table; it is
//! checked (present, non-null, right signature) when registered and delivered later on the app's own
//! worker through its event queue (see `runtime::events`). Registrations hang off the capability they
//! were made through, so closing or revoking it ends them.

use std::sync::{Arc, Weak};

use broker_abi::{ui, MAX_FUNCTION_HANDLES, MAX_NAME_LEN};
use wasmtime::Caller;

use super::guest_memory::{check_bounds, GuestMemory};
use super::{check_out, copy_in, memory_size, write_handle, AbiError, Ctx};
use crate::capability::{Cap, Cleanup, CleanupTag, Handle, Rights};
use crate::mode::{ConflictPolicy, Mode};
use crate::name::Name;
use crate::native::{EventCode, ObjectId, OBJ_FIELDS_SIZE};
use crate::region::{Backing, Change};
use crate::registry::{Core, Service};
use crate::runtime::events::{self, EventKind, Pending};
use crate::runtime::InstanceState;
use crate::tenant::{Reservation, Resource};

fn lookup(caller: &Ctx<'_>, handle: u32) -> Result<Cap, AbiError> {
    caller.data().ctx.lookup(handle)
}

fn check_callback(
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

/// The native object behind an object handle.
fn object_of(core: &Core, cap: &Cap) -> Result<ObjectId, AbiError> {
    core.ui_objects.lock().get(&cap.region.id()).copied().ok_or(AbiError::NotAnObject)
}

/// Copies the object's region (the source of truth, whatever its mode) into the native object.
fn push_to_native(core: &Core, cap: &Cap, object: ObjectId) -> Result<(), AbiError> {
    let mut bytes = [0u8; OBJ_FIELDS_SIZE];
    cap.region.read(0, &mut bytes)?;
    core.toolkit.lock().write_fields_bytes(object, &bytes).map_err(|e| AbiError::Native(e.to_string()))
}

pub(super) fn ui_create(caller: &mut Ctx<'_>, parent: u32, mode: u32, out: u32) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let mode = Mode::from_raw(mode).ok_or(AbiError::UnknownMode(mode))?;
    let ctx = &caller.data().ctx;
    let core = &ctx.core;
    let parent_obj = if parent == 0 { None } else { Some(object_of(core, &lookup(caller, parent)?)?) };
    let object =
        core.toolkit.lock().create_object(parent_obj).map_err(|e| AbiError::Native(e.to_string()))?;
    let delete_object = |core: &Core| {
        let _ = core.toolkit.lock().delete_object(object);
    };
    let name = Name::new(&format!("ui.{}", object.0)).map_err(AbiError::Name)?;
    let size = u64::try_from(OBJ_FIELDS_SIZE).unwrap_or(60);
    let region = match core.create_region(
        &ctx.tenant,
        name,
        size,
        mode,
        ConflictPolicy::default(),
        Backing::Ephemeral,
    ) {
        Ok(r) => r,
        Err(e) => {
            delete_object(core);
            return Err(e.into());
        }
    };
    let initial = core.toolkit.lock().fields_bytes(object).map_err(|e| AbiError::Native(e.to_string()));
    let initial = match initial {
        Ok(b) => b,
        Err(e) => {
            delete_object(core);
            let _ = core.destroy_region(region.id());
            return Err(e);
        }
    };
    region.write(0, &initial)?;
    core.ui_objects.lock().insert(region.id(), object);
    let weak: Weak<Core> = Arc::downgrade(core);
    let region_id = region.id();
    let derived = {
        let mut caps = core.caps.lock();
        let root = caps.root(region_id).ok_or(crate::capability::CapError::Gone)?;
        caps.add_cleanup(
            root,
            CleanupTag::NativeObject,
            Cleanup::new(move || {
                if let Some(core) = weak.upgrade() {
                    core.ui_objects.lock().remove(&region_id);
                    let _ = core.toolkit.lock().delete_object(object);
                }
            }),
        )?;
        caps.derive_handle(root, Rights::ALL, 0, broker_abi::LEN_TO_END, ctx.instance, &ctx.tenant)
    };
    match derived {
        Ok(h) => write_handle(caller, out, h),
        Err(e) => {
            // Destroying the region runs the root's hook, which deletes the object.
            let _ = core.destroy_region(region_id);
            Err(e.into())
        }
    }
}

fn field_offset(field: u32) -> Result<i64, AbiError> {
    if field < ui::FIELDS {
        Ok(i64::from(field) * 4)
    } else {
        Err(AbiError::InvalidValue { field: "field", value: i64::from(field) })
    }
}

pub(super) fn ui_set(caller: &mut Ctx<'_>, handle: u32, field: u32, value: i32) -> Result<(), AbiError> {
    let cap = lookup(caller, handle)?;
    cap.require(Rights::WRITE)?;
    let core = &caller.data().ctx.core;
    let object = object_of(core, &cap)?;
    let at = cap.range.access(field_offset(field)?, 4)?;
    cap.region.write(at, &value.to_le_bytes())?;
    push_to_native(core, &cap, object)
}

pub(super) fn ui_get(caller: &mut Ctx<'_>, handle: u32, field: u32, out: u32) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let cap = lookup(caller, handle)?;
    cap.require(Rights::READ)?;
    object_of(&caller.data().ctx.core, &cap)?;
    let at = cap.range.access(field_offset(field)?, 4)?;
    let mut v = [0u8; 4];
    cap.region.read(at, &mut v)?;
    GuestMemory::lock(caller).write(out, &v)
}

pub(super) fn ui_set_text(caller: &mut Ctx<'_>, handle: u32, ptr: u32, len: u32) -> Result<(), AbiError> {
    // Handle and rights first, as for every call (see ABI.md), then the text.
    let cap = lookup(caller, handle)?;
    cap.require(Rights::WRITE)?;
    let object = object_of(&caller.data().ctx.core, &cap)?;
    if len > ui::TEXT_MAX {
        return Err(AbiError::InvalidValue { field: "len", value: i64::from(len) });
    }
    let text = copy_in(caller, ptr, len, ui::TEXT_MAX)?;
    if text.contains(&0) {
        return Err(AbiError::InvalidValue { field: "text", value: 0 });
    }
    let core = &caller.data().ctx.core;
    let mut field = [0u8; (ui::TEXT_MAX + 1) as usize];
    field[..text.len()].copy_from_slice(&text);
    let at = cap.range.access(i64::from(ui::TEXT_OFFSET), u64::from(ui::TEXT_MAX + 1))?;
    cap.region.write(at, &field)?;
    push_to_native(core, &cap, object)
}

pub(super) fn ui_get_text(
    caller: &mut Ctx<'_>,
    handle: u32,
    ptr: u32,
    cap_len: u32,
    out_len: u32,
) -> Result<(), AbiError> {
    check_out(caller, out_len, 4)?;
    check_bounds(memory_size(caller), ptr, cap_len)?;
    let cap = lookup(caller, handle)?;
    cap.require(Rights::READ)?;
    object_of(&caller.data().ctx.core, &cap)?;
    let mut field = [0u8; (ui::TEXT_MAX + 1) as usize];
    let at = cap.range.access(i64::from(ui::TEXT_OFFSET), u64::from(ui::TEXT_MAX + 1))?;
    cap.region.read(at, &mut field)?;
    let n = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let mem = GuestMemory::lock(caller);
    let len_out = mem.check(out_len, 4, true)?;
    let text_out = mem.check(ptr, cap_len.min(n32), true)?;
    len_out.write_from(0, &n32.to_le_bytes())?;
    if n32 > cap_len {
        return Err(AbiError::Broker(crate::Error::Region(crate::region::RegionError::OutOfBounds {
            offset: 0,
            len: u64::from(n32),
            size: u64::from(cap_len),
        })));
    }
    text_out.write_from(0, field.get(..n).unwrap_or_default())
}

pub(super) fn ui_on_event(
    caller: &mut Ctx<'_>,
    handle: u32,
    code: u32,
    callback: u32,
    user_data: u32,
) -> Result<(), AbiError> {
    check_callback(caller, callback, &events::native_signature())?;
    let ctx = &caller.data().ctx;
    let core = &ctx.core;
    let cap = lookup(caller, handle)?;
    cap.require(Rights::READ)?;
    let object = object_of(core, &cap)?;
    let sink = ctx.sink.clone();
    let pool = Arc::clone(&core.trampolines);
    // The pool is broker-wide: each tenant holds at most its share, so one tenant's callbacks cannot
    // leave another's registrations without a trampoline. The charge goes with the registration.
    let charge = ctx.tenant.reserve(Resource::Trampolines, 1).map_err(crate::Error::from)?;
    let source = (1u64 << 63) | cap.id.get();
    let trampoline = pool
        .allocate(Arc::new(move |ev: &crate::native::Event| {
            let kind = EventKind::Native { object: handle, code: ev.code.0, param: ev.param };
            if sink.deliver(Pending { source, callback, user_data, kind, missed: 0, echo: false }) {
                Ok(())
            } else {
                Err("the app behind this callback has stopped or trapped".to_owned())
            }
        }))
        .map_err(|e| AbiError::Exhausted(e.to_string()))?;
    let (slot, fn_ptr) = (trampoline.slot(), trampoline.fn_ptr());
    let user = usize::try_from(user_data).unwrap_or(usize::MAX);
    if let Err(e) = core.toolkit.lock().add_event_cb(object, fn_ptr, EventCode(code), user) {
        let _ = pool.free(slot);
        return Err(AbiError::Exhausted(e.to_string()));
    }
    let weak: Weak<Core> = Arc::downgrade(core);
    // The hook holds the pool itself, not the core: the slot is freed even if the broker is gone.
    let hook_pool = Arc::clone(&pool);
    let hook = Cleanup::new(move || {
        if let Some(core) = weak.upgrade() {
            let _ = core.toolkit.lock().remove_event_cb(object, fn_ptr);
        }
        let _ = hook_pool.free(slot);
        drop(charge);
    });
    let mut caps = core.caps.lock();
    if let Err(e) = caps.add_cleanup(cap.id, CleanupTag::NativeCallback(slot.index()), hook) {
        drop(caps);
        let _ = core.toolkit.lock().remove_event_cb(object, fn_ptr);
        let _ = pool.free(slot);
        return Err(e.into());
    }
    Ok(())
}

pub(super) fn ui_send(
    caller: &mut Ctx<'_>,
    handle: u32,
    code: u32,
    param: i32,
    out: u32,
) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let cap = lookup(caller, handle)?;
    cap.require(Rights::WRITE)?;
    let core = &caller.data().ctx.core;
    let object = object_of(core, &cap)?;
    push_to_native(core, &cap, object)?;
    let n = core
        .toolkit
        .lock()
        .send_event(object, EventCode(code), param)
        .map_err(|e| AbiError::Native(e.to_string()))?;
    GuestMemory::lock(caller).write_u32(out, n)
}

pub(super) fn ui_delete(caller: &mut Ctx<'_>, handle: u32) -> Result<(), AbiError> {
    let cap = lookup(caller, handle)?;
    cap.require(Rights::WRITE | Rights::GRANT)?;
    let ctx = &caller.data().ctx;
    let core = &ctx.core;
    object_of(core, &cap)?;
    // Deleting destroys the object's whole region: only a capability over all of it, held by an app
    // of the tenant that owns it, may (a sub-range or another tenant's grant only closes).
    let whole = cap.range.offset == 0 && cap.range.len == cap.region.size();
    if !whole || cap.region.owner() != ctx.tenant.id() {
        return Err(AbiError::NotWholeObject);
    }
    core.destroy_region(cap.region.id())?;
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
    let mem = GuestMemory::lock(caller);
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
        let slot = self.slots.get_mut(index).ok_or(AbiError::Exhausted("function table".into()))?;
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
    let n = u32::try_from(result.len()).unwrap_or(u32::MAX);
    let mem = GuestMemory::lock(caller);
    let len_out = mem.check(out_len, 4, true)?;
    let res_out = mem.check(res_ptr, res_cap.min(n), true)?;
    len_out.write_from(0, &n.to_le_bytes())?;
    if n > res_cap {
        return Err(AbiError::ResultTooLarge { needed: n, cap: res_cap });
    }
    res_out.write_from(0, &result)
}

pub(super) fn fn_close(caller: &mut Ctx<'_>, fh: u32) -> Result<(), AbiError> {
    caller.data_mut().ctx.functions.close(fh)
}
