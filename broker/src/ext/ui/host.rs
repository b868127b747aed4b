//! The host functions of the UI toolkit extension (`broker_ui_v1`): toolkit objects as capability
//! handles whose fields are regions, and whose events reach app callbacks through C trampolines.
//!
//! Each function gets the extension's state ([`Ui`]) and the caller, whose context carries the core (the
//! capability space, the caller's tenant and its event sink). An object's region is the source of truth
//! for its fields, whatever its mode: it is copied into the native object before the toolkit reads it.
//! Registrations hang off capability nodes as cleanup hooks, as the core's watches do: destroying an
//! object's region deletes the object, and closing or revoking the capability an event callback was
//! registered through removes the callback and frees its trampoline. The hooks hold the extension
//! weakly and the trampoline pool strongly, so a slot is freed even after the broker is gone.

use std::sync::{Arc, Weak};

use broker_abi::ui;

use super::{Event, EventCode, ObjectId, Ui, OBJ_FIELDS_SIZE};
use crate::abi::callbacks::check_callback;
use crate::abi::guest_memory::{check_bounds, GuestMemory};
use crate::abi::{check_out, copy_in, memory_size, write_handle, write_with_len, AbiError, Ctx};
use crate::capability::{Cap, Cleanup, CleanupTag, Rights};
use crate::mode::{ConflictPolicy, Mode};
use crate::name::Name;
use crate::region::Backing;
use crate::runtime::events::{self, EventKind, Pending};
use crate::tenant::Resource;

/// The native object behind an object handle.
fn object_of(ui: &Ui, cap: &Cap) -> Result<ObjectId, AbiError> {
    ui.objects.lock().get(&cap.region.id()).copied().ok_or(AbiError::NotAnObject)
}

/// The capability `handle` names, with `right` checked, and the toolkit object behind it: the checks
/// every call on an object starts with, in the ABI's order (handle, rights, then what it names).
fn object_cap(ui: &Ui, caller: &Ctx<'_>, handle: u32, right: Rights) -> Result<(Cap, ObjectId), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(right)?;
    let object = object_of(ui, &cap)?;
    Ok((cap, object))
}

/// Copies the object's region (the source of truth, whatever its mode) into the native object.
fn push_to_native(ui: &Ui, cap: &Cap, object: ObjectId) -> Result<(), AbiError> {
    let mut bytes = [0u8; OBJ_FIELDS_SIZE];
    cap.region.read(0, &mut bytes)?;
    ui.toolkit.lock().write_fields_bytes(object, &bytes).map_err(|e| AbiError::Native(e.to_string()))
}

pub(super) fn ui_create(
    ui: &Arc<Ui>,
    caller: &mut Ctx<'_>,
    parent: u32,
    mode: u32,
    out: u32,
) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let mode = Mode::from_raw(mode).ok_or(AbiError::UnknownMode(mode))?;
    let ctx = &caller.data().ctx;
    let core = &ctx.core;
    let parent_obj = if parent == 0 { None } else { Some(object_of(ui, &ctx.lookup(parent)?)?) };
    let object = ui.toolkit.lock().create_object(parent_obj).map_err(|e| AbiError::Native(e.to_string()))?;
    let delete_object = || {
        let _ = ui.toolkit.lock().delete_object(object);
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
            delete_object();
            return Err(e.into());
        }
    };
    let initial = ui.toolkit.lock().fields_bytes(object).map_err(|e| AbiError::Native(e.to_string()));
    let initial = match initial {
        Ok(b) => b,
        Err(e) => {
            delete_object();
            let _ = core.destroy_region(region.id());
            return Err(e);
        }
    };
    region.write(0, &initial)?;
    ui.objects.lock().insert(region.id(), object);
    let weak: Weak<Ui> = Arc::downgrade(ui);
    let region_id = region.id();
    let derived = {
        let mut caps = core.caps.lock();
        let root = caps.root(region_id).ok_or(crate::capability::CapError::Gone)?;
        caps.add_cleanup(
            root,
            CleanupTag::NativeObject,
            Cleanup::new(move || {
                if let Some(ui) = weak.upgrade() {
                    ui.objects.lock().remove(&region_id);
                    let _ = ui.toolkit.lock().delete_object(object);
                }
            }),
        )?;
        caps.derive_handle(root, Rights::ALL, 0, broker_abi::LEN_TO_END, ctx.instance, &ctx.tenant)
    };
    match derived {
        Ok(h) => write_handle(caller, out, h),
        Err(e) => {
            // Destroying the region runs the root's hook, which deletes the object.
            let _ = caller.data().ctx.core.destroy_region(region_id);
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

pub(super) fn ui_set(
    ui: &Ui,
    caller: &mut Ctx<'_>,
    handle: u32,
    field: u32,
    value: i32,
) -> Result<(), AbiError> {
    let (cap, object) = object_cap(ui, caller, handle, Rights::WRITE)?;
    let at = cap.range.access(field_offset(field)?, 4)?;
    cap.region.write(at, &value.to_le_bytes())?;
    push_to_native(ui, &cap, object)
}

pub(super) fn ui_get(
    ui: &Ui,
    caller: &mut Ctx<'_>,
    handle: u32,
    field: u32,
    out: u32,
) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let (cap, _) = object_cap(ui, caller, handle, Rights::READ)?;
    let at = cap.range.access(field_offset(field)?, 4)?;
    let mut v = [0u8; 4];
    cap.region.read(at, &mut v)?;
    GuestMemory::lock(caller).write(out, &v)
}

pub(super) fn ui_set_text(
    ui: &Ui,
    caller: &mut Ctx<'_>,
    handle: u32,
    ptr: u32,
    len: u32,
) -> Result<(), AbiError> {
    // Handle and rights first, as for every call (see ABI.md), then the text.
    let (cap, object) = object_cap(ui, caller, handle, Rights::WRITE)?;
    if len > ui::TEXT_MAX {
        return Err(AbiError::InvalidValue { field: "len", value: i64::from(len) });
    }
    let text = copy_in(caller, ptr, len, ui::TEXT_MAX)?;
    if text.contains(&0) {
        return Err(AbiError::InvalidValue { field: "text", value: 0 });
    }
    let mut field = [0u8; (ui::TEXT_MAX + 1) as usize];
    field[..text.len()].copy_from_slice(&text);
    let at = cap.range.access(i64::from(ui::TEXT_OFFSET), u64::from(ui::TEXT_MAX + 1))?;
    cap.region.write(at, &field)?;
    push_to_native(ui, &cap, object)
}

pub(super) fn ui_get_text(
    ui: &Ui,
    caller: &mut Ctx<'_>,
    handle: u32,
    ptr: u32,
    cap_len: u32,
    out_len: u32,
) -> Result<(), AbiError> {
    check_out(caller, out_len, 4)?;
    check_bounds(memory_size(caller), ptr, cap_len)?;
    let (cap, _) = object_cap(ui, caller, handle, Rights::READ)?;
    let mut field = [0u8; (ui::TEXT_MAX + 1) as usize];
    let at = cap.range.access(i64::from(ui::TEXT_OFFSET), u64::from(ui::TEXT_MAX + 1))?;
    cap.region.read(at, &mut field)?;
    let n = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = field.get(..n).unwrap_or_default();
    write_with_len(caller, (ptr, cap_len), out_len, text, |len| {
        AbiError::Broker(crate::Error::Region(crate::region::RegionError::OutOfBounds {
            offset: 0,
            len: u64::from(len),
            size: u64::from(cap_len),
        }))
    })
}

pub(super) fn ui_on_event(
    ui: &Arc<Ui>,
    caller: &mut Ctx<'_>,
    handle: u32,
    code: u32,
    callback: u32,
    user_data: u32,
) -> Result<(), AbiError> {
    check_callback(caller, callback, &events::native_signature())?;
    let (cap, object) = object_cap(ui, caller, handle, Rights::READ)?;
    let ctx = &caller.data().ctx;
    let core = &ctx.core;
    let sink = ctx.sink.clone();
    let pool = Arc::clone(&ui.trampolines);
    // The pool is broker-wide: each tenant holds at most its share, so one tenant's callbacks cannot
    // leave another's registrations without a trampoline. The charge goes with the registration.
    let charge = ctx.tenant.reserve(Resource::Trampolines, 1).map_err(crate::Error::from)?;
    let source = (1u64 << 63) | cap.id.get();
    let trampoline = pool
        .allocate(Arc::new(move |ev: &Event| {
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
    if let Err(e) = ui.toolkit.lock().add_event_cb(object, fn_ptr, EventCode(code), user) {
        let _ = pool.free(slot);
        return Err(AbiError::Exhausted(e.to_string()));
    }
    let weak: Weak<Ui> = Arc::downgrade(ui);
    // The hook holds the pool itself, not the extension: the slot is freed even if the broker is gone.
    let hook_pool = Arc::clone(&pool);
    let hook = Cleanup::new(move || {
        if let Some(ui) = weak.upgrade() {
            let _ = ui.toolkit.lock().remove_event_cb(object, fn_ptr);
        }
        let _ = hook_pool.free(slot);
        drop(charge);
    });
    let mut caps = core.caps.lock();
    if let Err(e) = caps.add_cleanup(cap.id, CleanupTag::NativeCallback(slot.index()), hook) {
        drop(caps);
        let _ = ui.toolkit.lock().remove_event_cb(object, fn_ptr);
        let _ = pool.free(slot);
        return Err(e.into());
    }
    Ok(())
}

pub(super) fn ui_send(
    ui: &Ui,
    caller: &mut Ctx<'_>,
    handle: u32,
    code: u32,
    param: i32,
    out: u32,
) -> Result<(), AbiError> {
    check_out(caller, out, 4)?;
    let (cap, object) = object_cap(ui, caller, handle, Rights::WRITE)?;
    push_to_native(ui, &cap, object)?;
    let n = ui
        .toolkit
        .lock()
        .send_event(object, EventCode(code), param)
        .map_err(|e| AbiError::Native(e.to_string()))?;
    GuestMemory::lock(caller).write_u32(out, n)
}

pub(super) fn ui_delete(ui: &Ui, caller: &mut Ctx<'_>, handle: u32) -> Result<(), AbiError> {
    let (cap, _) = object_cap(ui, caller, handle, Rights::WRITE | Rights::GRANT)?;
    let ctx = &caller.data().ctx;
    // Deleting destroys the object's whole region: only a capability over all of it, held by an app
    // of the tenant that owns it, may (a sub-range or another tenant's grant only closes).
    let whole = cap.range.offset == 0 && cap.range.len == cap.region.size();
    if !whole || cap.region.owner() != ctx.tenant.id() {
        return Err(AbiError::NotWholeObject);
    }
    ctx.core.destroy_region(cap.region.id())?;
    Ok(())
}
