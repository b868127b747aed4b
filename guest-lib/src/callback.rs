//! Callbacks from the broker into this app: region watches, toolkit objects whose events reach an
//! `extern "C"` function, and host services called through function handles.
//!
//! A callback is a plain `extern "C" fn` (closure-free: wasm passes it as an index into the function
//! table). The [`watch_callback!`](crate::watch_callback) and [`ui_callback!`](crate::ui_callback)
//! macros write the raw signature for you and hand your body a typed event. Callbacks run on this app's
//! worker after the call that produced the event returns, in the order the events happened.

use alloc::string::String;
use alloc::vec;

use crate::{sys, Error, Mode, Region, Result};

/// A change to a watched region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchEvent {
    /// The handle the watch was registered through.
    pub handle: u32,
    /// The region's version after the change.
    pub version: u64,
    /// Start of the changed bytes, relative to the handle's range.
    pub offset: u64,
    /// Number of changed bytes.
    pub len: u64,
    /// Changes merged into this event because the app fell behind.
    pub missed: u32,
}

/// The raw signature of a watch callback: `(user_data, handle, version, offset, len, missed)`.
pub type RawWatchFn = extern "C" fn(u32, u32, u64, u64, u64, u32);

/// Defines a watch callback with a typed event:
/// `watch_callback!(fn on_change(user_data, event) { ... })`.
#[macro_export]
macro_rules! watch_callback {
    ($vis:vis fn $name:ident($ud:ident, $ev:ident) $body:block) => {
        $vis extern "C" fn $name(user_data: u32, handle: u32, version: u64, offset: u64, len: u64, missed: u32) {
            let $ud: u32 = user_data;
            let $ev = $crate::WatchEvent { handle, version, offset, len, missed };
            $body
        }
    };
}

/// A toolkit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UiEvent {
    /// The object's handle in this app.
    pub object: u32,
    /// The event code (see [`crate::ui_code`]).
    pub code: u32,
    /// The event's parameter.
    pub param: i32,
    /// Events merged into this one because the app fell behind.
    pub missed: u32,
}

/// The raw signature of a toolkit event callback: `(user_data, object, code, param, missed)`.
pub type RawUiFn = extern "C" fn(u32, u32, u32, i32, u32);

/// Defines a toolkit event callback with a typed event: `ui_callback!(fn on_click(user_data, event) { ... })`.
#[macro_export]
macro_rules! ui_callback {
    ($vis:vis fn $name:ident($ud:ident, $ev:ident) $body:block) => {
        $vis extern "C" fn $name(user_data: u32, object: u32, code: u32, param: i32, missed: u32) {
            let $ud: u32 = user_data;
            let $ev = $crate::UiEvent { object, code, param, missed };
            $body
        }
    };
}

/// The function-table index of a function pointer (what wasm passes for it).
fn table_index(addr: usize) -> u32 {
    u32::try_from(addr).unwrap_or(0)
}

impl Region {
    /// Calls `callback` after every change to this handle's range (writes, commits, host and gRPC
    /// writes). Needs the watch right; one watch per handle; closing the handle ends it.
    ///
    /// # Errors
    /// `BadCallback` if the function is not in the exported table, `Busy` if already watching,
    /// `PermissionDenied` without the watch right.
    pub fn watch(&self, callback: RawWatchFn, user_data: u32) -> Result<()> {
        Error::check(sys::region_watch(self.raw(), table_index(callback as usize), user_data))
    }

    /// Ends the watch.
    ///
    /// # Errors
    /// `NotFound` if there is none.
    pub fn unwatch(&self) -> Result<()> {
        Error::check(sys::region_unwatch(self.raw()))
    }
}

/// A field of a toolkit object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Horizontal position.
    X,
    /// Vertical position.
    Y,
    /// Width.
    Width,
    /// Height.
    Height,
    /// Value.
    Value,
    /// Flag bits.
    Flags,
    /// Colour.
    Color,
}

impl Field {
    fn raw(self) -> u32 {
        use broker_abi::ui;
        match self {
            Field::X => ui::X,
            Field::Y => ui::Y,
            Field::Width => ui::WIDTH,
            Field::Height => ui::HEIGHT,
            Field::Value => ui::VALUE,
            Field::Flags => ui::FLAGS,
            Field::Color => ui::COLOR,
        }
    }
}

/// A toolkit object: a native C struct the broker owns, reached through a capability handle. Its
/// fields are also a region (see [`Object::region`]), so any mode applies to them.
///
/// The toolkit is an extension of the broker (imports under `broker_ui_v1`): an app that uses `Object`
/// runs only on a broker whose host turned the extension on, and any other refuses to load it.
#[derive(Debug)]
pub struct Object {
    region: Region,
}

impl Object {
    /// Creates an object (a child of `parent`), its fields in a region of `mode`.
    ///
    /// # Errors
    /// `QuotaExceeded`, `WrongMode` if `parent` is not an object.
    pub fn create(parent: Option<&Object>, mode: Mode) -> Result<Object> {
        let mut h = 0;
        Error::check(sys::ui_create(parent.map_or(0, |p| p.region.raw()), mode.raw(), &mut h))?;
        Ok(Object { region: Region::from_raw(h) })
    }

    /// The object's fields as a region: read, mirror or map them like any other region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The object's handle.
    pub fn handle(&self) -> u32 {
        self.region.raw()
    }

    /// Sets a field.
    ///
    /// # Errors
    /// Handle and rights errors.
    pub fn set(&self, field: Field, value: i32) -> Result<()> {
        Error::check(sys::ui_set(self.handle(), field.raw(), value))
    }

    /// Reads a field.
    ///
    /// # Errors
    /// Handle and rights errors.
    pub fn get(&self, field: Field) -> Result<i32> {
        let mut v = 0;
        Error::check(sys::ui_get(self.handle(), field.raw(), &mut v))?;
        Ok(v)
    }

    /// Sets the text (at most 31 bytes, no NUL).
    ///
    /// # Errors
    /// `InvalidArgument` for a longer text or one with a NUL.
    pub fn set_text(&self, text: &str) -> Result<()> {
        Error::check(sys::ui_set_text(self.handle(), text.as_bytes()))
    }

    /// The text.
    ///
    /// # Errors
    /// Handle and rights errors.
    pub fn text(&self) -> Result<String> {
        let mut buf = vec![0u8; 32];
        let mut n = 0u32;
        Error::check(sys::ui_get_text(self.handle(), &mut buf, &mut n))?;
        buf.truncate(usize::try_from(n).unwrap_or(0));
        String::from_utf8(buf).map_err(|_| Error::InvalidArgument)
    }

    /// Calls `callback` for this object's events with `code` (`ui_code::ALL` for every event). The
    /// toolkit stores a real C function pointer; the broker routes it here.
    ///
    /// # Errors
    /// `BadCallback`, `QuotaExceeded` when the toolkit or the trampoline pool is full.
    pub fn on_event(&self, code: u32, callback: RawUiFn, user_data: u32) -> Result<()> {
        Error::check(sys::ui_on_event(self.handle(), code, table_index(callback as usize), user_data))
    }

    /// Fires an event on the object; returns how many callbacks the toolkit ran.
    ///
    /// # Errors
    /// Handle and rights errors.
    pub fn send(&self, code: u32, param: i32) -> Result<u32> {
        let mut n = 0;
        Error::check(sys::ui_send(self.handle(), code, param, &mut n))?;
        Ok(n)
    }

    /// Deletes the object and its region.
    ///
    /// # Errors
    /// Handle and rights errors.
    pub fn delete(self) -> Result<()> {
        let h = self.region.into_raw();
        Error::check(sys::ui_delete(h))
    }
}

/// A host service opened by name; closed on drop.
#[derive(Debug)]
pub struct HostFn {
    fh: u32,
}

impl HostFn {
    /// Opens a host service.
    ///
    /// # Errors
    /// `NotFound`, `PermissionDenied` if this tenant may not use it, `QuotaExceeded`.
    pub fn open(name: &str) -> Result<HostFn> {
        let mut fh = 0;
        Error::check(sys::fn_open(name.as_bytes(), &mut fh))?;
        Ok(HostFn { fh })
    }

    /// Calls the service with `args`, writing the result into `result`; returns the result's length.
    ///
    /// # Errors
    /// `ServiceFailed`, `OutOfBounds` if `result` is too small.
    pub fn call(&self, args: &[u8], result: &mut [u8]) -> Result<usize> {
        let mut n = 0u32;
        Error::check(sys::fn_call(self.fh, args, result, &mut n))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl Drop for HostFn {
    fn drop(&mut self) {
        let _ = sys::fn_close(self.fh);
    }
}
