//! The UI toolkit extension: the native C toolkit and its callback trampolines, offered to apps under
//! their own import module, `broker_ui_v1` ([`broker_abi::UI_MODULE`]).
//!
//! A host turns it on with `BrokerConfig::ui` (the daemon does by default, the scenario runner for every
//! broker it builds); a broker without it has none of the `ui_*` imports and refuses to load a module
//! that imports them. [`Ui`] is the extension's state, owned by the extension and not by the core: the
//! toolkit, this broker's [`TrampolinePool`] and which regions are toolkit objects. It registers its
//! imports with `add_to_linker` and its host service, [`OBJECT_COUNT_SERVICE`], when the broker starts.
//! Its host functions (`host`) reach the core through the caller's context (capability space, tenant,
//! event sink), as every host function does: the extension depends on the core, never the reverse.
//!
//! `toolkit` owns the C object toolkit built from `broker/native/toolkit/` by `build.rs`: an unchanged,
//! single-threaded C library whose objects live in native memory and whose callbacks are bare C
//! function pointers. [`Toolkit`] is its only safe entry point, and hands out [`ObjectId`]s instead of
//! pointers. `trampoline` owns the process's table of static C trampolines and the pools that share it
//! (one per broker with the extension, sized by [`UiConfig::trampolines`]): [`TrampolinePool::allocate`]
//! binds a Rust [`EventTarget`] to a slot and returns that slot's real C function pointer, which the C
//! library stores and calls like any other callback. Those two modules are allowed `unsafe` because
//! they are the FFI boundary; raw pointers do not leave them.

mod host;
mod toolkit;
mod trampoline;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use broker_abi::{ui_func, UI_MODULE};
use parking_lot::Mutex;
use wasmtime::Linker;

use crate::abi::{code, enter, Ctx};
use crate::error::Error;
use crate::region::RegionId;
use crate::registry::{Core, ServiceFn};
use crate::runtime::InstanceState;

pub use toolkit::{
    CallbackId, EventCallback, EventCode, ObjFields, ObjectId, Toolkit, ToolkitError, MAX_EVENT_CALLBACKS,
    OBJ_FIELDS_SIZE, TEXT_CAPACITY,
};
pub use trampoline::{
    Event, EventTarget, PoolError, SlotId, Trampoline, TrampolinePool, DEFAULT_TRAMPOLINES, MAX_TRAMPOLINES,
};

/// The host service the extension registers while it is on: how many toolkit objects are alive in the
/// broker, as 8 bytes little-endian (arguments are ignored).
pub const OBJECT_COUNT_SERVICE: &str = "toolkit.object_count";

/// Settings of the UI toolkit extension. `BrokerConfig::ui` set to `Some` turns the extension on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UiConfig {
    /// Native trampolines (C callback pointers into apps) the broker's pool may bind at once: 1 to
    /// [`MAX_TRAMPOLINES`], the number compiled in. Tenants' `trampolines` quotas share this pool, so an
    /// operator with many tenants using the toolkit raises it.
    pub trampolines: u32,
}

impl Default for UiConfig {
    /// A pool of [`DEFAULT_TRAMPOLINES`] trampolines.
    fn default() -> UiConfig {
        UiConfig { trampolines: DEFAULT_TRAMPOLINES }
    }
}

impl UiConfig {
    /// The trampoline pool this config asks for; checked before the broker starts any thread.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `trampolines` if the size is 0 or above [`MAX_TRAMPOLINES`].
    pub(crate) fn pool(&self) -> Result<TrampolinePool, Error> {
        TrampolinePool::new(self.trampolines)
            .map_err(|e| Error::InvalidArgument { field: "trampolines", reason: e.to_string() })
    }
}

/// The UI toolkit extension of one broker: the toolkit, the broker's trampoline pool and its toolkit
/// objects. `Broker::ui` lends it while the extension is on.
pub struct Ui {
    /// The broker's registries, for host-side events on objects named by their region.
    core: Arc<Core>,
    /// The native toolkit (a single-threaded C library: one caller at a time).
    toolkit: Mutex<Toolkit>,
    /// This broker's trampolines, sized by [`UiConfig::trampolines`]; shared with the cleanup hooks of
    /// the callbacks bound to them, which free their slots even after the broker is gone.
    trampolines: Arc<TrampolinePool>,
    /// Which regions are toolkit objects.
    objects: Mutex<HashMap<RegionId, ObjectId>>,
}

impl Ui {
    /// Turns the extension on for a broker being built: its state over `core` and the pool checked
    /// by [`UiConfig::pool`], its imports in `linker`, and its host service.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if an import or the service is registered already, which would be a
    /// bug of the broker's start.
    pub(crate) fn install(
        linker: &mut Linker<InstanceState>,
        core: &Arc<Core>,
        trampolines: TrampolinePool,
    ) -> Result<Arc<Ui>, Error> {
        let ui = Arc::new(Ui {
            core: Arc::clone(core),
            toolkit: Mutex::new(Toolkit::new()),
            trampolines: Arc::new(trampolines),
            objects: Mutex::new(HashMap::new()),
        });
        add_to_linker(linker, &ui)
            .map_err(|e| Error::InvalidArgument { field: "host functions", reason: e.to_string() })?;
        // The service holds the extension weakly: the core that stores it must not keep it alive.
        let weak = Arc::downgrade(&ui);
        let count: ServiceFn = Arc::new(move |_args: &[u8]| {
            let n = weak.upgrade().map_or(0, |ui| ui.object_count());
            Ok(u64::try_from(n).unwrap_or(u64::MAX).to_le_bytes().to_vec())
        });
        core.add_service(OBJECT_COUNT_SERVICE, None, count)?;
        Ok(ui)
    }

    /// Fires a toolkit event on the object behind a region (as the host's input layer would): the
    /// object's fields are synced from the region first, then every matching callback runs; returns how
    /// many ran. Apps' callbacks are queued and delivered on their workers (or, when this runs inside a
    /// host write's scope, on the writing thread after the write: `Broker::write_region`).
    ///
    /// # Errors
    /// [`Error::RegionNotFound`] if the region is not a toolkit object; [`Error::InvalidArgument`]
    /// naming `object` if the toolkit refuses the event.
    pub fn send(&self, region: RegionId, code: u32, param: i32) -> Result<u32, Error> {
        let r = self.core.region(region)?;
        let object = self
            .objects
            .lock()
            .get(&region)
            .copied()
            .ok_or_else(|| Error::RegionNotFound(format!("{region} (not a toolkit object)")))?;
        let mut bytes = [0u8; OBJ_FIELDS_SIZE];
        r.read(0, &mut bytes)?;
        let toolkit = self.toolkit.lock();
        toolkit
            .write_fields_bytes(object, &bytes)
            .map_err(|e| Error::InvalidArgument { field: "object", reason: e.to_string() })?;
        toolkit
            .send_event(object, EventCode(code), param)
            .map_err(|e| Error::InvalidArgument { field: "object", reason: e.to_string() })
    }

    /// This broker's trampoline pool: its size ([`UiConfig::trampolines`]), the trampolines its apps'
    /// callbacks hold now, and the process's undeliverable calls.
    pub fn trampolines(&self) -> &TrampolinePool {
        &self.trampolines
    }

    /// Toolkit objects alive in this broker.
    pub fn object_count(&self) -> usize {
        self.objects.lock().len()
    }
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("trampolines", &self.trampolines)
            .field("objects", &self.object_count())
            .finish_non_exhaustive()
    }
}

/// Registers one import of the extension, `broker_ui_v1::$name`, calling `$f(&ui, caller, args...)`, with
/// the call counted and refused for a stopped instance (`abi::enter`) and its result as a status code.
macro_rules! ui_import {
    ($linker:ident, $ui:ident, $name:expr, $f:path, ($($arg:ident: $ty:ty),*)) => {{
        let ui = Arc::clone($ui);
        $linker.func_wrap(UI_MODULE, $name, move |mut c: Ctx<'_>, $($arg: $ty),*| -> wasmtime::Result<i32> {
            enter(&c)?;
            Ok(code($f(&ui, &mut c, $($arg),*)))
        })?;
    }};
}

/// Registers the extension's imports, every `broker_ui_v1` function, each bound to `ui`.
///
/// # Errors
/// Only if a name is registered twice, which would be a bug in this function.
pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>, ui: &Arc<Ui>) -> wasmtime::Result<()> {
    ui_import!(linker, ui, ui_func::UI_CREATE, host::ui_create, (parent: u32, mode: u32, out: u32));
    ui_import!(linker, ui, ui_func::UI_SET, host::ui_set, (h: u32, field: u32, value: i32));
    ui_import!(linker, ui, ui_func::UI_GET, host::ui_get, (h: u32, field: u32, out: u32));
    ui_import!(linker, ui, ui_func::UI_SET_TEXT, host::ui_set_text, (h: u32, ptr: u32, len: u32));
    ui_import!(linker, ui, ui_func::UI_GET_TEXT, host::ui_get_text, (h: u32, ptr: u32, cap: u32, out: u32));
    ui_import!(linker, ui, ui_func::UI_ON_EVENT, host::ui_on_event, (h: u32, event: u32, cb: u32, ud: u32));
    ui_import!(linker, ui, ui_func::UI_SEND, host::ui_send, (h: u32, event: u32, param: i32, out: u32));
    ui_import!(linker, ui, ui_func::UI_DELETE, host::ui_delete, (h: u32));
    Ok(())
}
