//! The safe face of the C object toolkit in `broker/native/toolkit/`: its FFI declarations, the table
//! that maps [`ObjectId`]s to live C objects, and [`Toolkit`], the only way the rest of the broker
//! reaches the library.
//!
//! The C library is an ordinary single-threaded C library: objects are `calloc`'d structs, callbacks
//! are bare C function pointers, and nothing may run two of its functions at once. This module keeps
//! the promises it needs. Every call into C happens while holding one process-wide lock, so the
//! library is entered by one thread at a time. Raw pointers never leave this module: callers hold
//! [`ObjectId`]s, which are looked up in a table that is updated in the same critical section as the C
//! deletion, so a stale or forged id is an error and never a dangling pointer. Only
//! [`EventCallback`]s, which this crate alone creates (from trampolines), can be registered as
//! callbacks, so C only ever calls functions that are sound to call with its events.

#![allow(unsafe_code, reason = "calls the C toolkit through FFI; every block is justified below")]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{c_int, CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{offset_of, size_of};
use std::ptr::{self, NonNull};

use parking_lot::{Mutex, MutexGuard, RwLock};

/// The raw declarations of `toolkit.h`. Private to `ext::ui`: nothing outside it sees a raw pointer.
pub(super) mod ffi {
    #![allow(non_camel_case_types, reason = "mirrors the type names of toolkit.h")]

    use std::ffi::{c_char, c_int, c_void};
    use std::marker::{PhantomData, PhantomPinned};

    use super::ObjFields;

    /// `obj_t`: an object, opaque to Rust.
    #[repr(C)]
    pub struct obj_t {
        _opaque: [u8; 0],
        _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
    }

    /// `event_t`: an event as a callback sees it, opaque to Rust (read through the accessors).
    #[repr(C)]
    pub struct event_t {
        _opaque: [u8; 0],
        _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
    }

    /// `event_code_t`.
    pub type event_code_t = u32;

    /// `event_cb_t`, non-null. C's nullable `event_cb_t` is `Option<event_cb_t>` here.
    pub type event_cb_t = unsafe extern "C" fn(e: *mut event_t);

    /// `TOOLKIT_TEXT_MAX`.
    pub const TOOLKIT_TEXT_MAX: usize = 32;
    /// `TOOLKIT_MAX_EVENT_CBS`.
    pub const TOOLKIT_MAX_EVENT_CBS: u32 = 8;

    // SAFETY: the signatures below are those of `broker/native/toolkit/toolkit.h`, which build.rs compiles
    // and links into this crate (`obj_fields_t` is `ObjFields`, whose layout is asserted below and in C).
    unsafe extern "C" {
        pub fn obj_create(parent: *mut obj_t) -> *mut obj_t;
        pub fn obj_delete(obj: *mut obj_t);
        pub fn obj_get_parent(obj: *const obj_t) -> *mut obj_t;
        pub fn obj_get_child_count(obj: *const obj_t) -> u32;
        pub fn obj_get_child(obj: *const obj_t, index: u32) -> *mut obj_t;
        pub fn obj_set_pos(obj: *mut obj_t, x: i32, y: i32);
        pub fn obj_set_size(obj: *mut obj_t, width: i32, height: i32);
        pub fn obj_set_value(obj: *mut obj_t, value: i32);
        pub fn obj_set_flags(obj: *mut obj_t, flags: u32);
        pub fn obj_set_color(obj: *mut obj_t, color: u32);
        pub fn obj_set_text(obj: *mut obj_t, text: *const c_char);
        pub fn obj_get_x(obj: *const obj_t) -> i32;
        pub fn obj_get_y(obj: *const obj_t) -> i32;
        pub fn obj_get_width(obj: *const obj_t) -> i32;
        pub fn obj_get_height(obj: *const obj_t) -> i32;
        pub fn obj_get_value(obj: *const obj_t) -> i32;
        pub fn obj_get_flags(obj: *const obj_t) -> u32;
        pub fn obj_get_color(obj: *const obj_t) -> u32;
        pub fn obj_get_text(obj: *mut obj_t) -> *const c_char;
        pub fn obj_fields(obj: *mut obj_t) -> *mut ObjFields;
        pub fn obj_add_event_cb(
            obj: *mut obj_t,
            cb: Option<event_cb_t>,
            filter: event_code_t,
            user_data: *mut c_void,
        ) -> c_int;
        pub fn obj_remove_event_cb(obj: *mut obj_t, cb: Option<event_cb_t>) -> c_int;
        pub fn obj_get_event_count(obj: *const obj_t) -> u32;
        pub fn obj_get_event_cb(obj: *const obj_t, index: u32) -> Option<event_cb_t>;
        pub fn obj_send_event(obj: *mut obj_t, code: event_code_t, param: i32) -> c_int;
        pub fn event_get_code(e: *const event_t) -> event_code_t;
        pub fn event_get_target(e: *const event_t) -> *mut obj_t;
        pub fn event_get_user_data(e: *const event_t) -> *mut c_void;
        pub fn event_get_param(e: *const event_t) -> i32;
        pub fn toolkit_reset();
    }
}

/// Bytes of text an object holds, the terminating NUL included (`TOOLKIT_TEXT_MAX`).
pub const TEXT_CAPACITY: usize = ffi::TOOLKIT_TEXT_MAX;

/// Event callbacks one object can hold (`TOOLKIT_MAX_EVENT_CBS`).
pub const MAX_EVENT_CALLBACKS: u32 = ffi::TOOLKIT_MAX_EVENT_CBS;

/// Size in bytes of an object's field struct (`sizeof(obj_fields_t)`).
pub const OBJ_FIELDS_SIZE: usize = 60;

/// An object's plain fields, laid out exactly as C's `obj_fields_t` (native byte order, no padding).
///
/// This is the memory that can later be offered as a region; [`ObjFields::to_bytes`] and
/// [`ObjFields::from_bytes`] convert to and from its raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct ObjFields {
    /// Horizontal position.
    pub x: i32,
    /// Vertical position.
    pub y: i32,
    /// Width.
    pub width: i32,
    /// Height.
    pub height: i32,
    /// The object's value (a slider position, a counter).
    pub value: i32,
    /// Application-defined flag bits.
    pub flags: u32,
    /// Colour, as the application encodes it.
    pub color: u32,
    /// Text, NUL-terminated unless written raw; see [`ObjFields::text_bytes`].
    pub text: [u8; TEXT_CAPACITY],
}

// The same layout is asserted in toolkit.c, so the two sides agree on every offset.
const _: () = {
    assert!(size_of::<ObjFields>() == OBJ_FIELDS_SIZE);
    assert!(offset_of!(ObjFields, x) == 0);
    assert!(offset_of!(ObjFields, y) == 4);
    assert!(offset_of!(ObjFields, width) == 8);
    assert!(offset_of!(ObjFields, height) == 12);
    assert!(offset_of!(ObjFields, value) == 16);
    assert!(offset_of!(ObjFields, flags) == 20);
    assert!(offset_of!(ObjFields, color) == 24);
    assert!(offset_of!(ObjFields, text) == 28);
};

impl ObjFields {
    /// Decodes the raw bytes of an `obj_fields_t`.
    pub fn from_bytes(bytes: &[u8; OBJ_FIELDS_SIZE]) -> ObjFields {
        let word = |offset: usize| {
            let mut word = [0; 4];
            word.copy_from_slice(&bytes[offset..offset + 4]);
            word
        };
        let mut text = [0; TEXT_CAPACITY];
        text.copy_from_slice(&bytes[offset_of!(ObjFields, text)..]);
        ObjFields {
            x: i32::from_ne_bytes(word(offset_of!(ObjFields, x))),
            y: i32::from_ne_bytes(word(offset_of!(ObjFields, y))),
            width: i32::from_ne_bytes(word(offset_of!(ObjFields, width))),
            height: i32::from_ne_bytes(word(offset_of!(ObjFields, height))),
            value: i32::from_ne_bytes(word(offset_of!(ObjFields, value))),
            flags: u32::from_ne_bytes(word(offset_of!(ObjFields, flags))),
            color: u32::from_ne_bytes(word(offset_of!(ObjFields, color))),
            text,
        }
    }

    /// Encodes these fields as the raw bytes of an `obj_fields_t`.
    pub fn to_bytes(&self) -> [u8; OBJ_FIELDS_SIZE] {
        let mut bytes = [0; OBJ_FIELDS_SIZE];
        let mut put = |offset: usize, word: [u8; 4]| bytes[offset..offset + 4].copy_from_slice(&word);
        put(offset_of!(ObjFields, x), self.x.to_ne_bytes());
        put(offset_of!(ObjFields, y), self.y.to_ne_bytes());
        put(offset_of!(ObjFields, width), self.width.to_ne_bytes());
        put(offset_of!(ObjFields, height), self.height.to_ne_bytes());
        put(offset_of!(ObjFields, value), self.value.to_ne_bytes());
        put(offset_of!(ObjFields, flags), self.flags.to_ne_bytes());
        put(offset_of!(ObjFields, color), self.color.to_ne_bytes());
        bytes[offset_of!(ObjFields, text)..].copy_from_slice(&self.text);
        bytes
    }

    /// The text's bytes up to the first NUL (all of them if a raw writer left none).
    pub fn text_bytes(&self) -> &[u8] {
        let len = self.text.iter().position(|&b| b == 0).unwrap_or(TEXT_CAPACITY);
        &self.text[..len]
    }
}

/// Names a toolkit object. Ids are never reused, so an id whose object was deleted (directly, through
/// an ancestor, or by [`Toolkit::reset`]) stays unknown forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub(crate) u64);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object#{}", self.0)
    }
}

/// An event code (`event_code_t`). Codes other than the named ones are application defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventCode(pub u32);

impl EventCode {
    /// As a filter, every code; never sent (`EVENT_ALL`).
    pub const ALL: EventCode = EventCode(0);
    /// `EVENT_PRESSED`.
    pub const PRESSED: EventCode = EventCode(1);
    /// `EVENT_RELEASED`.
    pub const RELEASED: EventCode = EventCode(2);
    /// `EVENT_CLICKED`.
    pub const CLICKED: EventCode = EventCode(3);
    /// `EVENT_VALUE_CHANGED`.
    pub const VALUE_CHANGED: EventCode = EventCode(4);
    /// Sent to every object being deleted, children first, with param 0 (`EVENT_DELETE`).
    pub const DELETE: EventCode = EventCode(5);
}

impl fmt::Display for EventCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EventCode::ALL => f.write_str("all"),
            EventCode::PRESSED => f.write_str("pressed"),
            EventCode::RELEASED => f.write_str("released"),
            EventCode::CLICKED => f.write_str("clicked"),
            EventCode::VALUE_CHANGED => f.write_str("value-changed"),
            EventCode::DELETE => f.write_str("delete"),
            EventCode(other) => write!(f, "custom({other})"),
        }
    }
}

/// A C function pointer that the toolkit may store and call as an event callback.
///
/// **Invariant:** the function is sound to call with any event pointer the toolkit passes and never
/// unwinds. Only this crate creates values of this type (from its trampolines, see
/// `TrampolinePool`), which is what makes [`Toolkit::add_event_cb`] safe.
#[derive(Clone, Copy)]
pub struct EventCallback(ffi::event_cb_t);

impl EventCallback {
    /// Wraps a function that keeps this type's invariant.
    pub(super) fn new(function: ffi::event_cb_t) -> EventCallback {
        EventCallback(function)
    }

    /// The function's address, the identity C compares callbacks by.
    pub fn addr(self) -> usize {
        self.0 as usize
    }
}

impl PartialEq for EventCallback {
    fn eq(&self, other: &EventCallback) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for EventCallback {}

impl fmt::Debug for EventCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventCallback({:#x})", self.addr())
    }
}

/// The id the toolkit gave one callback registration; ids are not reused within an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallbackId(pub u32);

/// Why a toolkit call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolkitError {
    /// The id names no live object: it was deleted, reset away, or never created.
    #[error("{0} does not exist (deleted or never created)")]
    UnknownObject(ObjectId),
    /// A toolkit call was made from inside a toolkit callback on the same thread.
    #[error("the toolkit was entered again from inside one of its own callbacks")]
    Reentered,
    /// Text passed to C must not contain NUL bytes.
    #[error("text contains a nul byte at offset {position}")]
    TextContainsNul {
        /// Offset of the first NUL.
        position: usize,
    },
    /// [`EventCode::ALL`] only filters; it cannot be sent.
    #[error("event code {0} is a filter and cannot be sent")]
    UnsendableEventCode(EventCode),
    /// The object already holds [`MAX_EVENT_CALLBACKS`] callbacks.
    #[error("{object} already has the maximum of {max} event callbacks")]
    TooManyCallbacks {
        /// The object.
        object: ObjectId,
        /// The limit.
        max: u32,
    },
    /// The C library could not allocate an object.
    #[error("the toolkit is out of memory")]
    OutOfMemory,
    /// The C library refused a call the wrapper had checked; a bug in the wrapper or the library.
    #[error("the toolkit rejected {call} for {object}")]
    Rejected {
        /// The C function.
        call: &'static str,
        /// The object it was called on.
        object: ObjectId,
    },
}

/// A pointer to a live C object, as stored in the id table.
struct ObjPtr(NonNull<ffi::obj_t>);

// SAFETY: the toolkit keeps no thread-local state, so its objects may be used from any thread as long as
// calls are serialised; an `ObjPtr` is only passed to C while holding `TOOLKIT`, which serialises them.
unsafe impl Send for ObjPtr {}

/// The id table: every live object this module created, by id.
///
/// **Invariant:** every pointer in `objects` is a live C object; an entry is removed in the same critical
/// section (under `TOOLKIT`) as the C call that frees its object.
struct ObjectTable {
    objects: BTreeMap<ObjectId, ObjPtr>,
    next_id: u64,
}

/// Serialises every entry into the C library and guards the id table.
static TOOLKIT: Mutex<ObjectTable> = Mutex::new(ObjectTable { objects: BTreeMap::new(), next_id: 1 });

/// Object address to id, the inverse of the id table, for the trampoline dispatcher.
///
/// It has its own lock because the dispatcher runs inside C calls made while `TOOLKIT` is held.
/// Written only while holding `TOOLKIT` (lock order: `TOOLKIT`, then this) and never held across a C call.
static OBJECT_IDS: RwLock<BTreeMap<usize, ObjectId>> = RwLock::new(BTreeMap::new());

thread_local! {
    /// Whether this thread holds `TOOLKIT`, so that a callback calling back in fails instead of deadlocking.
    static INSIDE_TOOLKIT: Cell<bool> = const { Cell::new(false) };
}

/// The id of the object at `obj`, if this module created it and it is live.
///
/// Only compares addresses; never dereferences `obj`.
pub(super) fn object_id_at(obj: *const ffi::obj_t) -> Option<ObjectId> {
    OBJECT_IDS.read().get(&obj.addr()).copied()
}

/// Proof that this thread holds `TOOLKIT` and may call into C.
struct Entered {
    table: MutexGuard<'static, ObjectTable>,
}

impl Entered {
    fn new() -> Result<Entered, ToolkitError> {
        if INSIDE_TOOLKIT.get() {
            return Err(ToolkitError::Reentered);
        }
        let table = TOOLKIT.lock();
        INSIDE_TOOLKIT.set(true);
        Ok(Entered { table })
    }

    /// The live object `id` names; the pointer is valid while the borrow of `self` lasts, because
    /// deleting objects needs `&mut self`.
    fn live(&self, id: ObjectId) -> Result<Live<'_>, ToolkitError> {
        let ptr = self.table.objects.get(&id).ok_or(ToolkitError::UnknownObject(id))?.0;
        Ok(Live { ptr, _entered: PhantomData })
    }

    /// Records a new object.
    fn insert(&mut self, ptr: NonNull<ffi::obj_t>) -> ObjectId {
        let id = ObjectId(self.table.next_id);
        self.table.next_id += 1;
        self.table.objects.insert(id, ObjPtr(ptr));
        OBJECT_IDS.write().insert(ptr.as_ptr().addr(), id);
        id
    }

    /// Forgets objects the C library has just freed.
    fn forget(&mut self, ids: &[ObjectId]) {
        let mut by_address = OBJECT_IDS.write();
        for id in ids {
            if let Some(ObjPtr(ptr)) = self.table.objects.remove(id) {
                by_address.remove(&ptr.as_ptr().addr());
            }
        }
    }

    /// `obj` and all its descendants, parents before children.
    fn subtree(&self, id: ObjectId) -> Result<Vec<ObjectId>, ToolkitError> {
        let mut ids = vec![id];
        let mut next = 0;
        while let Some(&current) = ids.get(next) {
            let children = self.live(current)?.children();
            ids.extend(children);
            next += 1;
        }
        Ok(ids)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        INSIDE_TOOLKIT.set(false);
    }
}

/// A pointer to a live object, borrowed from an [`Entered`].
///
/// **Invariant:** the object is live and `TOOLKIT` is held for as long as this value exists.
#[derive(Clone, Copy)]
struct Live<'a> {
    ptr: NonNull<ffi::obj_t>,
    _entered: PhantomData<&'a Entered>,
}

impl Live<'_> {
    fn as_ptr(self) -> *mut ffi::obj_t {
        self.ptr.as_ptr()
    }

    /// The ids of the object's children, in the toolkit's order.
    fn children(self) -> Vec<ObjectId> {
        // SAFETY: `self` is live and `TOOLKIT` is held (`Live`'s invariant).
        let count = unsafe { ffi::obj_get_child_count(self.as_ptr()) };
        (0..count)
            .filter_map(|index| {
                // SAFETY: as above; an out-of-range index returns null rather than reading past the list.
                let child = unsafe { ffi::obj_get_child(self.as_ptr(), index) };
                object_id_at(child)
            })
            .collect()
    }
}

/// A handle to the process's one C toolkit.
///
/// The C library is single-threaded: every method takes a process-wide lock for the duration of its C
/// calls, so any number of handles on any number of threads use it one at a time. A handle is `Send`
/// (move it to the thread that uses it) but not `Sync` (each thread holds its own).
///
/// Callbacks run synchronously inside [`Toolkit::send_event`], [`Toolkit::delete_object`] and
/// [`Toolkit::reset`], on the calling thread and with the lock held. A callback that calls the toolkit
/// again on that thread gets [`ToolkitError::Reentered`]; one that blocks on another thread which is
/// waiting for the toolkit deadlocks, so callbacks must hand work off rather than wait for it.
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<broker::ext::ui::Toolkit>();
/// ```
#[derive(Debug, Default)]
pub struct Toolkit {
    _not_sync: PhantomData<Cell<()>>,
}

impl Toolkit {
    /// A handle to the toolkit.
    pub fn new() -> Toolkit {
        Toolkit { _not_sync: PhantomData }
    }

    /// Creates a zeroed object under `parent` (`None`: a top-level object).
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale parent, [`ToolkitError::OutOfMemory`], and
    /// [`ToolkitError::Reentered`] from inside a callback (as for every method).
    pub fn create_object(&self, parent: Option<ObjectId>) -> Result<ObjectId, ToolkitError> {
        let mut entered = Entered::new()?;
        let parent = match parent {
            Some(parent) => entered.live(parent)?.as_ptr(),
            None => ptr::null_mut(),
        };
        // SAFETY: `TOOLKIT` is held and `parent` is null or live (`Entered::live`).
        let obj = unsafe { ffi::obj_create(parent) };
        let obj = NonNull::new(obj).ok_or(ToolkitError::OutOfMemory)?;
        Ok(entered.insert(obj))
    }

    /// Deletes an object and all its descendants; the toolkit first sends [`EventCode::DELETE`] to each
    /// (children first). Every deleted object's id becomes unknown.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn delete_object(&self, id: ObjectId) -> Result<(), ToolkitError> {
        let mut entered = Entered::new()?;
        let doomed = entered.subtree(id)?;
        let obj = entered.live(id)?.as_ptr();
        // SAFETY: `TOOLKIT` is held and `obj` is live. Callbacks cannot reenter (`Entered`), so the subtree
        // C frees is exactly `doomed`, which is forgotten before the lock is released.
        unsafe { ffi::obj_delete(obj) };
        entered.forget(&doomed);
        Ok(())
    }

    /// Deletes every object (sending [`EventCode::DELETE`] to each); every id becomes unknown.
    ///
    /// # Errors
    /// [`ToolkitError::Reentered`] from inside a callback.
    pub fn reset(&self) -> Result<(), ToolkitError> {
        let mut entered = Entered::new()?;
        // SAFETY: `TOOLKIT` is held and this is not a callback (`Entered`), so C deletes every object.
        unsafe { ffi::toolkit_reset() };
        let all: Vec<ObjectId> = entered.table.objects.keys().copied().collect();
        entered.forget(&all);
        Ok(())
    }

    /// The object's parent, `None` for a top-level object.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn parent(&self, id: ObjectId) -> Result<Option<ObjectId>, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        let parent = unsafe { ffi::obj_get_parent(obj.as_ptr()) };
        Ok(object_id_at(parent))
    }

    /// The object's children, in creation order.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn children(&self, id: ObjectId) -> Result<Vec<ObjectId>, ToolkitError> {
        let entered = Entered::new()?;
        Ok(entered.live(id)?.children())
    }

    /// Moves the object.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn set_pos(&self, id: ObjectId, x: i32, y: i32) -> Result<(), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        unsafe { ffi::obj_set_pos(obj.as_ptr(), x, y) };
        Ok(())
    }

    /// The object's position, `(x, y)`.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn pos(&self, id: ObjectId) -> Result<(i32, i32), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        Ok(unsafe { (ffi::obj_get_x(obj.as_ptr()), ffi::obj_get_y(obj.as_ptr())) })
    }

    /// Resizes the object.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn set_size(&self, id: ObjectId, width: i32, height: i32) -> Result<(), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        unsafe { ffi::obj_set_size(obj.as_ptr(), width, height) };
        Ok(())
    }

    /// The object's size, `(width, height)`.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn size(&self, id: ObjectId) -> Result<(i32, i32), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        Ok(unsafe { (ffi::obj_get_width(obj.as_ptr()), ffi::obj_get_height(obj.as_ptr())) })
    }

    /// Sets the object's value.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn set_value(&self, id: ObjectId, value: i32) -> Result<(), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        unsafe { ffi::obj_set_value(obj.as_ptr(), value) };
        Ok(())
    }

    /// The object's value.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn value(&self, id: ObjectId) -> Result<i32, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        Ok(unsafe { ffi::obj_get_value(obj.as_ptr()) })
    }

    /// Replaces the object's flag bits.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn set_flags(&self, id: ObjectId, flags: u32) -> Result<(), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        unsafe { ffi::obj_set_flags(obj.as_ptr(), flags) };
        Ok(())
    }

    /// The object's flag bits.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn flags(&self, id: ObjectId) -> Result<u32, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        Ok(unsafe { ffi::obj_get_flags(obj.as_ptr()) })
    }

    /// Sets the object's colour.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn set_color(&self, id: ObjectId, color: u32) -> Result<(), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        unsafe { ffi::obj_set_color(obj.as_ptr(), color) };
        Ok(())
    }

    /// The object's colour.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn color(&self, id: ObjectId) -> Result<u32, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        Ok(unsafe { ffi::obj_get_color(obj.as_ptr()) })
    }

    /// Sets the object's text, truncated to the longest prefix of at most `TEXT_CAPACITY - 1` bytes
    /// that ends on a character boundary (the C library would cut bytewise, splitting characters).
    ///
    /// # Errors
    /// [`ToolkitError::TextContainsNul`] if `text` contains a NUL byte, and
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn set_text(&self, id: ObjectId, text: &str) -> Result<(), ToolkitError> {
        if let Some(position) = text.bytes().position(|b| b == 0) {
            return Err(ToolkitError::TextContainsNul { position });
        }
        let mut len = text.len().min(TEXT_CAPACITY - 1);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let text = CString::new(&text[..len])
            .map_err(|e| ToolkitError::TextContainsNul { position: e.nul_position() })?;
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`); `text` is NUL-terminated and outlives the
        // call, which copies it.
        unsafe { ffi::obj_set_text(obj.as_ptr(), text.as_ptr()) };
        Ok(())
    }

    /// The object's text. Bytes that are not UTF-8 (only possible after a raw write) read as U+FFFD.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn text(&self, id: ObjectId) -> Result<String, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        let text = unsafe { ffi::obj_get_text(obj.as_ptr()) };
        if text.is_null() {
            return Err(ToolkitError::Rejected { call: "obj_get_text", object: id });
        }
        // SAFETY: for a live object `obj_get_text` returns the object's own NUL-terminated copy of its
        // text, which stays valid until the next `obj_get_text` on it or its deletion; neither can happen
        // before the copy below, because `TOOLKIT` is held.
        let text = unsafe { CStr::from_ptr(text) };
        Ok(text.to_string_lossy().into_owned())
    }

    /// A snapshot of the raw bytes of the object's `obj_fields_t`.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn fields_bytes(&self, id: ObjectId) -> Result<[u8; OBJ_FIELDS_SIZE], ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        let fields = unsafe { ffi::obj_fields(obj.as_ptr()) };
        if fields.is_null() {
            return Err(ToolkitError::Rejected { call: "obj_fields", object: id });
        }
        let mut bytes = [0; OBJ_FIELDS_SIZE];
        // SAFETY: `fields` points to the live object's `obj_fields_t`, `OBJ_FIELDS_SIZE` bytes with no
        // padding (asserted in Rust and C) inside a zero-initialised allocation, so every byte is
        // initialised; nothing else touches it while `TOOLKIT` is held, and `bytes` is a distinct local.
        unsafe { ptr::copy_nonoverlapping(fields.cast::<u8>(), bytes.as_mut_ptr(), OBJ_FIELDS_SIZE) };
        Ok(bytes)
    }

    /// Overwrites the object's `obj_fields_t` with raw bytes, as a region writer would. Any bytes are
    /// accepted: the C library tolerates text without a terminating NUL.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn write_fields_bytes(
        &self,
        id: ObjectId,
        bytes: &[u8; OBJ_FIELDS_SIZE],
    ) -> Result<(), ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        let fields = unsafe { ffi::obj_fields(obj.as_ptr()) };
        if fields.is_null() {
            return Err(ToolkitError::Rejected { call: "obj_fields", object: id });
        }
        // SAFETY: `fields` points to the live object's `OBJ_FIELDS_SIZE`-byte `obj_fields_t`, every bit
        // pattern of which is valid (integers and chars); nothing else touches it while `TOOLKIT` is held,
        // and `bytes` is a distinct Rust array.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), fields.cast::<u8>(), OBJ_FIELDS_SIZE) };
        Ok(())
    }

    /// The object's fields, decoded.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn fields(&self, id: ObjectId) -> Result<ObjFields, ToolkitError> {
        Ok(ObjFields::from_bytes(&self.fields_bytes(id)?))
    }

    /// Overwrites the object's fields.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn write_fields(&self, id: ObjectId, fields: &ObjFields) -> Result<(), ToolkitError> {
        self.write_fields_bytes(id, &fields.to_bytes())
    }

    /// Registers `callback` for the object's events whose code is `filter` ([`EventCode::ALL`]: every
    /// event); the toolkit passes `user_data` back in each event.
    ///
    /// # Errors
    /// [`ToolkitError::TooManyCallbacks`] when the object holds [`MAX_EVENT_CALLBACKS`] already, and
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn add_event_cb(
        &self,
        id: ObjectId,
        callback: EventCallback,
        filter: EventCode,
        user_data: usize,
    ) -> Result<CallbackId, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        if unsafe { ffi::obj_get_event_count(obj.as_ptr()) } >= MAX_EVENT_CALLBACKS {
            return Err(ToolkitError::TooManyCallbacks { object: id, max: MAX_EVENT_CALLBACKS });
        }
        let user_data = ptr::without_provenance_mut(user_data);
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`). The toolkit may call `callback` later with
        // its events, which `EventCallback`'s invariant makes sound; `user_data` is only handed back,
        // never dereferenced.
        let registered =
            unsafe { ffi::obj_add_event_cb(obj.as_ptr(), Some(callback.0), filter.0, user_data) };
        u32::try_from(registered)
            .map(CallbackId)
            .map_err(|_| ToolkitError::Rejected { call: "obj_add_event_cb", object: id })
    }

    /// Removes the first registration of `callback` from the object; whether there was one.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn remove_event_cb(&self, id: ObjectId, callback: EventCallback) -> Result<bool, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        match unsafe { ffi::obj_remove_event_cb(obj.as_ptr(), Some(callback.0)) } {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(ToolkitError::Rejected { call: "obj_remove_event_cb", object: id }),
        }
    }

    /// The callbacks the C library holds for the object, in the order it calls them.
    ///
    /// # Errors
    /// [`ToolkitError::UnknownObject`] for a stale id.
    pub fn event_callbacks(&self, id: ObjectId) -> Result<Vec<EventCallback>, ToolkitError> {
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`).
        let count = unsafe { ffi::obj_get_event_count(obj.as_ptr()) };
        Ok((0..count)
            // SAFETY: as above; the library bounds-checks `index`. Every registered callback came from an
            // `EventCallback` (only `add_event_cb` registers), so wrapping it again keeps the invariant.
            .filter_map(|index| unsafe { ffi::obj_get_event_cb(obj.as_ptr(), index) })
            .map(EventCallback::new)
            .collect())
    }

    /// Sends an event to the object: the toolkit calls every callback whose filter matches `code`, in
    /// registration order, and this returns how many it called.
    ///
    /// # Errors
    /// [`ToolkitError::UnsendableEventCode`] for [`EventCode::ALL`], and [`ToolkitError::UnknownObject`]
    /// for a stale id.
    pub fn send_event(&self, id: ObjectId, code: EventCode, param: i32) -> Result<u32, ToolkitError> {
        if code == EventCode::ALL {
            return Err(ToolkitError::UnsendableEventCode(code));
        }
        let entered = Entered::new()?;
        let obj = entered.live(id)?;
        // SAFETY: `obj` is live and `TOOLKIT` is held (`Live`). The callbacks it runs are `EventCallback`s
        // and cannot reenter the toolkit (`Entered`), so `obj` stays live throughout.
        let called: c_int = unsafe { ffi::obj_send_event(obj.as_ptr(), code.0, param) };
        u32::try_from(called).map_err(|_| ToolkitError::Rejected { call: "obj_send_event", object: id })
    }
}
