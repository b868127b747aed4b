//! The broker's host ABI v1, as constants shared by the host (`broker`) and the guests (`broker-guest`).
//!
//! Everything a guest and the broker must agree on lives here and only here: the import modules and
//! function names (the core's under [`MODULE`], the UI toolkit extension's under [`UI_MODULE`]), the `i32` status codes every import returns, the rights bits, the region modes and the
//! layout of the structs the broker writes into guest memory.
//! The crate is `no_std`, with `bitflags` its only dependency, so that it compiles unchanged for wasm32
//! guests.
//! `guest-lib/include/broker.h` mirrors these values for C guests; a test in `broker-tests` checks that the
//! header and this crate agree.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The import module of the core ABI: every host function a broker always offers ([`func`]).
/// Extensions, which a host turns on or leaves off, have modules of their own ([`UI_MODULE`]).
pub const MODULE: &str = "broker_v1";

/// The ABI version `abi_version` returns; bumped on any incompatible change.
pub const VERSION: i32 = 1;

/// Names of the host functions under [`MODULE`].
///
/// Every function returns an `i32` [`Status`] code; results go through out-pointers into guest memory.
pub mod func {
    /// `abi_version() -> i32`: the ABI version (not a status).
    pub const ABI_VERSION: &str = "abi_version";
    /// `nop() -> i32`: does nothing and returns `OK`; the baseline cost of a host call.
    pub const NOP: &str = "nop";
    /// `region_open(name_ptr, name_len, out_handle_ptr) -> status`.
    pub const REGION_OPEN: &str = "region_open";
    /// `region_create(name_ptr, name_len, size: i64, mode: i32, out_handle_ptr) -> status`.
    pub const REGION_CREATE: &str = "region_create";
    /// `handle_close(handle) -> status`.
    pub const HANDLE_CLOSE: &str = "handle_close";
    /// `handle_info(handle, out_info_ptr) -> status`; writes a [`crate::HandleInfo`].
    pub const HANDLE_INFO: &str = "handle_info";
    /// `region_read(handle, offset: i64, dst_ptr, len) -> status`.
    pub const REGION_READ: &str = "region_read";
    /// `region_write(handle, offset: i64, src_ptr, len) -> status`.
    pub const REGION_WRITE: &str = "region_write";
    /// `region_readv(handle, iovs_ptr, count) -> status`: `count` (at most [`MAX_IOVS`](crate::MAX_IOVS))
    /// reads in one call, each an [`Iovec`](crate::Iovec) (`offset` in the capability's range, `ptr`,
    /// `len`), all checked before any is done, all from one consistent state of the region.
    pub const REGION_READV: &str = "region_readv";
    /// `region_writev(handle, iovs_ptr, count) -> status`: `count` writes in one call, all checked
    /// before any is done, applied together as one change (one version, seen whole by readers).
    pub const REGION_WRITEV: &str = "region_writev";
    /// `handle_restrict(handle, rights, offset: i64, len: i64, out_handle_ptr) -> status`.
    pub const HANDLE_RESTRICT: &str = "handle_restrict";
    /// `handle_grant(handle, target_ptr, target_len, rights, offset: i64, len: i64) -> status`.
    pub const HANDLE_GRANT: &str = "handle_grant";
    /// `handle_revoke(handle) -> status`.
    pub const HANDLE_REVOKE: &str = "handle_revoke";
    /// `mirror_acquire(handle, ptr, len, out_version_ptr) -> status`.
    pub const MIRROR_ACQUIRE: &str = "mirror_acquire";
    /// `mirror_refresh(handle, ptr, len, since: i64, out_version_ptr, out_pages_ptr) -> status`.
    pub const MIRROR_REFRESH: &str = "mirror_refresh";
    /// `mirror_commit(handle, ptr, len, base: i64, out_version_ptr, out_pages_ptr) -> status`.
    pub const MIRROR_COMMIT: &str = "mirror_commit";
    /// `mirror_hint(handle, first_page, pages) -> status`: limits the next `mirror_commit` through
    /// `handle` to the pages hinted since the last commit (relative to the handle's range).
    pub const MIRROR_HINT: &str = "mirror_hint";
    /// `region_map(handle, ptr, len, flags) -> status`: maps a shared region at `ptr`.
    pub const REGION_MAP: &str = "region_map";
    /// `region_unmap(handle, ptr) -> status`.
    pub const REGION_UNMAP: &str = "region_unmap";
    /// `region_wait(handle, offset: i64, expected: u32, timeout_ms: u32) -> status`.
    pub const REGION_WAIT: &str = "region_wait";
    /// `region_notify(handle, offset: i64) -> status`.
    pub const REGION_NOTIFY: &str = "region_notify";
    /// `region_watch(handle, callback, user_data) -> status`: calls
    /// `callback(user_data, handle, version: i64, offset: i64, len: i64, missed)` after changes.
    pub const REGION_WATCH: &str = "region_watch";
    /// `region_unwatch(handle) -> status`.
    pub const REGION_UNWATCH: &str = "region_unwatch";
    /// `fn_open(name_ptr, name_len, out_handle_ptr) -> status`: a host service as a function handle.
    pub const FN_OPEN: &str = "fn_open";
    /// `fn_call(fn_handle, arg_ptr, arg_len, res_ptr, res_cap, out_len_ptr) -> status`.
    pub const FN_CALL: &str = "fn_call";
    /// `fn_close(fn_handle) -> status`.
    pub const FN_CLOSE: &str = "fn_close";

    /// Every function name under [`MODULE`](crate::MODULE), for tests and for the C header check;
    /// the extensions' functions (such as [`ui_func`](crate::ui_func)) are not among them.
    pub const ALL: &[&str] = &[
        ABI_VERSION,
        NOP,
        REGION_OPEN,
        REGION_CREATE,
        HANDLE_CLOSE,
        HANDLE_INFO,
        REGION_READ,
        REGION_WRITE,
        HANDLE_RESTRICT,
        HANDLE_GRANT,
        HANDLE_REVOKE,
        MIRROR_ACQUIRE,
        MIRROR_REFRESH,
        MIRROR_COMMIT,
        REGION_MAP,
        REGION_UNMAP,
        REGION_WAIT,
        REGION_NOTIFY,
        REGION_WATCH,
        REGION_UNWATCH,
        FN_OPEN,
        FN_CALL,
        REGION_READV,
        REGION_WRITEV,
        FN_CLOSE,
        MIRROR_HINT,
    ];
}

/// The import module of the UI toolkit extension: the `ui_*` functions of [`ui_func`].
///
/// An extension is a group of host functions a broker offers only when its host turns it on, under an
/// import module of its own (as wasmtime-wasi adds one linker module per proposal). A broker without
/// the extension refuses, when it is loaded, any module that imports from it.
pub const UI_MODULE: &str = "broker_ui_v1";

/// Names of the host functions under [`UI_MODULE`]: the native C toolkit, whose objects are regions
/// reached through capability handles (fields in [`ui`]).
///
/// Like the functions of [`func`], every one returns an `i32` [`Status`] code.
pub mod ui_func {
    /// `ui_create(parent_handle_or_0, mode, out_handle_ptr) -> status`: a toolkit object, as a region.
    pub const UI_CREATE: &str = "ui_create";
    /// `ui_set(handle, field, value: i32) -> status`.
    pub const UI_SET: &str = "ui_set";
    /// `ui_get(handle, field, out_value_ptr) -> status`.
    pub const UI_GET: &str = "ui_get";
    /// `ui_set_text(handle, ptr, len) -> status`.
    pub const UI_SET_TEXT: &str = "ui_set_text";
    /// `ui_get_text(handle, ptr, cap, out_len_ptr) -> status`.
    pub const UI_GET_TEXT: &str = "ui_get_text";
    /// `ui_on_event(handle, code, callback, user_data) -> status`: the toolkit calls
    /// `callback(user_data, object_handle, code, param, missed)` through a native trampoline.
    pub const UI_ON_EVENT: &str = "ui_on_event";
    /// `ui_send(handle, code, param: i32, out_count_ptr) -> status`: fires an event.
    pub const UI_SEND: &str = "ui_send";
    /// `ui_delete(handle) -> status`: deletes the object and its region.
    pub const UI_DELETE: &str = "ui_delete";

    /// Every function name under [`UI_MODULE`](crate::UI_MODULE), for tests and for the C header check.
    pub const ALL: &[&str] =
        &[UI_CREATE, UI_SET, UI_GET, UI_SET_TEXT, UI_GET_TEXT, UI_ON_EVENT, UI_SEND, UI_DELETE];
}

/// The status every host function returns: `OK` (0) or a negative error code.
///
/// The numeric values are stable: they are the wire contract with guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The handle is 0, was never issued, or is out of the table's range.
    InvalidHandle = -1,
    /// The handle was issued once but has been closed or revoked since.
    StaleHandle = -2,
    /// The capability lacks a right the call needs, or a delegation tried to widen rights.
    PermissionDenied = -3,
    /// An offset or length lies outside the capability's range, or offset + length overflows.
    OutOfBounds = -4,
    /// A guest pointer and length do not lie inside the guest's linear memory.
    BadPointer = -5,
    /// No region or instance has that name (or none is visible to the caller).
    NotFound = -6,
    /// A region with that name already exists for the tenant.
    AlreadyExists = -7,
    /// The tenant's quota (region bytes, region count, handle count, ...) would be exceeded.
    QuotaExceeded = -8,
    /// An argument is malformed: a name that is not UTF-8 or is empty or too long, unknown rights bits, an
    /// unknown mode, a zero size.
    InvalidArgument = -9,
    /// The region mode exists in the ABI but this broker does not implement it yet.
    ModeNotSupported = -10,
    /// The call needs a region in another mode.
    WrongMode = -11,
    /// The broker hit an internal error; the call had no effect.
    Internal = -12,
    /// A mirror commit conflicts with changes made since the mirror's base; nothing was written, and the
    /// region's current version was written to the out-pointer.
    Conflict = -13,
    /// A version argument is negative or newer than the region's current version.
    BadVersion = -14,
    /// A guest address or capability range is not page aligned (shared-mode windows).
    Unaligned = -15,
    /// The capability is already mapped, or the range overlaps another window.
    Busy = -16,
    /// A wait ended by its timeout.
    TimedOut = -17,
    /// A callback is a null function pointer, outside the function table, or of the wrong signature.
    BadCallback = -18,
    /// A host service reported a failure.
    ServiceFailed = -19,
    /// The region is a replica of another broker's region and its home cannot take the write now
    /// (unreachable, or dead with no broker taken over yet); nothing was written.
    Unavailable = -20,
}

impl Status {
    /// Every status, in code order; used by tests and the C header check.
    pub const ALL: &'static [Status] = &[
        Status::Ok,
        Status::InvalidHandle,
        Status::StaleHandle,
        Status::PermissionDenied,
        Status::OutOfBounds,
        Status::BadPointer,
        Status::NotFound,
        Status::AlreadyExists,
        Status::QuotaExceeded,
        Status::InvalidArgument,
        Status::ModeNotSupported,
        Status::WrongMode,
        Status::Internal,
        Status::Conflict,
        Status::BadVersion,
        Status::Unaligned,
        Status::Busy,
        Status::TimedOut,
        Status::BadCallback,
        Status::ServiceFailed,
        Status::Unavailable,
    ];

    /// The numeric code a guest sees.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The status for a code, or `None` for a code this ABI version never returns.
    pub fn from_code(code: i32) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| s.code() == code)
    }

    /// The C header's name for this status, e.g. `BROKER_ERR_STALE_HANDLE`.
    pub const fn c_name(self) -> &'static str {
        match self {
            Status::Ok => "BROKER_OK",
            Status::InvalidHandle => "BROKER_ERR_INVALID_HANDLE",
            Status::StaleHandle => "BROKER_ERR_STALE_HANDLE",
            Status::PermissionDenied => "BROKER_ERR_PERMISSION_DENIED",
            Status::OutOfBounds => "BROKER_ERR_OUT_OF_BOUNDS",
            Status::BadPointer => "BROKER_ERR_BAD_POINTER",
            Status::NotFound => "BROKER_ERR_NOT_FOUND",
            Status::AlreadyExists => "BROKER_ERR_ALREADY_EXISTS",
            Status::QuotaExceeded => "BROKER_ERR_QUOTA_EXCEEDED",
            Status::InvalidArgument => "BROKER_ERR_INVALID_ARGUMENT",
            Status::ModeNotSupported => "BROKER_ERR_MODE_NOT_SUPPORTED",
            Status::WrongMode => "BROKER_ERR_WRONG_MODE",
            Status::Internal => "BROKER_ERR_INTERNAL",
            Status::Conflict => "BROKER_ERR_CONFLICT",
            Status::BadVersion => "BROKER_ERR_BAD_VERSION",
            Status::Unaligned => "BROKER_ERR_UNALIGNED",
            Status::Busy => "BROKER_ERR_BUSY",
            Status::TimedOut => "BROKER_ERR_TIMED_OUT",
            Status::BadCallback => "BROKER_ERR_BAD_CALLBACK",
            Status::ServiceFailed => "BROKER_ERR_SERVICE_FAILED",
            Status::Unavailable => "BROKER_ERR_UNAVAILABLE",
        }
    }
}

/// Rights bits carried by a capability; a delegation may only clear bits, never set them.
pub mod rights {
    /// Read the region's bytes.
    pub const READ: u32 = 1 << 0;
    /// Write the region's bytes.
    pub const WRITE: u32 = 1 << 1;
    /// Map the region into linear memory (shared mode).
    pub const MAP: u32 = 1 << 2;
    /// Delegate the capability (or a smaller one) to another instance.
    pub const GRANT: u32 = 1 << 3;
    /// Watch the region for changes.
    pub const WATCH: u32 = 1 << 4;
    /// Every right.
    pub const ALL: u32 = READ | WRITE | MAP | GRANT | WATCH;
}

bitflags::bitflags! {
    /// A set of capability rights: what the host and the guests both mean by the [`rights`] bits.
    ///
    /// [`Rights::from_bits`] refuses unknown bits (what the broker does with a guest's or a client's
    /// value); [`Rights::from_bits_retain`] keeps them (what a guest does, so the broker refuses them).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Rights: u32 {
        /// Read the region's bytes.
        const READ = rights::READ;
        /// Write the region's bytes.
        const WRITE = rights::WRITE;
        /// Map the region into linear memory (shared mode).
        const MAP = rights::MAP;
        /// Delegate the capability (or a smaller one).
        const GRANT = rights::GRANT;
        /// Watch the region for changes.
        const WATCH = rights::WATCH;
        /// Every right.
        const ALL = rights::ALL;
    }
}

impl Rights {
    /// No right.
    pub const NONE: Rights = Rights::empty();
}

impl core::fmt::Display for Rights {
    /// `rwmgn` with `-` for each right not held (`r-m--`).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let names = [(Rights::READ, 'r'), (Rights::WRITE, 'w'), (Rights::MAP, 'm'), (Rights::GRANT, 'g')];
        for (right, c) in names.into_iter().chain([(Rights::WATCH, 'n')]) {
            core::fmt::Write::write_char(f, if self.contains(right) { c } else { '-' })?;
        }
        Ok(())
    }
}

impl core::fmt::Debug for Rights {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

/// Region modes, as the `mode` argument of `region_create` and the `mode` field of [`HandleInfo`].
pub mod mode {
    /// Every access is a checked host call through a handle.
    pub const HANDLE: u32 = 0;
    /// Copy-on-access mirror in the guest's linear memory.
    pub const MIRROR: u32 = 1;
    /// Zero-copy window mapped into the guest's linear memory.
    pub const SHARED: u32 = 2;
}

/// Flags of `region_map`.
pub mod map_flags {
    /// Map read-write (needs the write right); without it the window is read-only.
    pub const WRITE: u32 = 1 << 0;
    /// Every flag.
    pub const ALL: u32 = WRITE;
}

/// Fields of a toolkit object for `ui_set`/`ui_get` (each an `i32`/`u32` at `4 * field` in the object's
/// region; the text follows at [`ui::TEXT_OFFSET`]).
pub mod ui {
    /// Horizontal position.
    pub const X: u32 = 0;
    /// Vertical position.
    pub const Y: u32 = 1;
    /// Width.
    pub const WIDTH: u32 = 2;
    /// Height.
    pub const HEIGHT: u32 = 3;
    /// The widget's value (slider position, counter, ...).
    pub const VALUE: u32 = 4;
    /// Flag bits.
    pub const FLAGS: u32 = 5;
    /// Colour.
    pub const COLOR: u32 = 6;
    /// Number of integer fields.
    pub const FIELDS: u32 = 7;
    /// Offset of the NUL-terminated text in the object's region.
    pub const TEXT_OFFSET: u32 = 28;
    /// Longest text, in bytes (the region holds one more for the NUL).
    pub const TEXT_MAX: u32 = 31;
    /// Size of an object's region.
    pub const OBJECT_SIZE: u32 = 60;
    /// Event codes: any event (as a filter).
    pub const EVENT_ALL: u32 = 0;
    /// Pressed.
    pub const EVENT_PRESSED: u32 = 1;
    /// Released.
    pub const EVENT_RELEASED: u32 = 2;
    /// Clicked.
    pub const EVENT_CLICKED: u32 = 3;
    /// Value changed.
    pub const EVENT_VALUE_CHANGED: u32 = 4;
}

/// Function handles an instance may hold at once.
pub const MAX_FUNCTION_HANDLES: u32 = 1024;

/// The longest `region_wait` a guest can ask for, in milliseconds; longer waits are cut to this and
/// return `TIMED_OUT`, so a waiting guest never holds its worker for long.
pub const MAX_WAIT_MS: u32 = 1000;

/// Most entries one `region_readv` or `region_writev` takes.
pub const MAX_IOVS: u32 = 256;

/// One entry of a `region_readv`/`region_writev` list, as laid out in guest memory (16 bytes,
/// little-endian): where in the capability's range, and where in the app's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Iovec {
    /// Offset in the capability's range.
    pub offset: i64,
    /// Address in the app's linear memory.
    pub ptr: u32,
    /// Bytes to copy.
    pub len: u32,
}

impl Iovec {
    /// Its size in guest memory.
    pub const SIZE: u32 = 16;

    /// The entry encoded as guest memory holds it.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.ptr.to_le_bytes());
        b[12..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// The entry encoded in `b`.
    pub fn from_bytes(b: [u8; 16]) -> Iovec {
        let [o0, o1, o2, o3, o4, o5, o6, o7, p0, p1, p2, p3, l0, l1, l2, l3] = b;
        Iovec {
            offset: i64::from_le_bytes([o0, o1, o2, o3, o4, o5, o6, o7]),
            ptr: u32::from_le_bytes([p0, p1, p2, p3]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
        }
    }
}

/// `len` value meaning "from the offset to the end of the capability's range" in restrict and grant.
pub const LEN_TO_END: i64 = -1;

/// The ABI's page size: 4 KiB. Shared windows are mapped at page-aligned guest addresses over whole
/// pages, and mirror page versions, refreshes, commits and hints count pages of this size. The broker
/// requires the host's page size to be the same.
pub const PAGE_SIZE: u32 = 4096;

/// A length that is a whole number of ABI pages ([`PAGE_SIZE`]): what a shared window spans in guest
/// memory, the unit mirror hints and page versions count, and the granularity of the broker's memory
/// reservations. Made only by checking ([`PageAligned::new`]) or rounding up
/// ([`PageAligned::round_up`]), so code that holds one never re-checks alignment or overflows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageAligned(u64);

impl PageAligned {
    /// One page.
    pub const PAGE: PageAligned = PageAligned(PAGE_SIZE as u64);

    /// `bytes` if it is a whole number of pages, else `None`.
    pub const fn new(bytes: u64) -> Option<PageAligned> {
        if PageAligned::is_aligned(bytes) {
            Some(PageAligned(bytes))
        } else {
            None
        }
    }

    /// `bytes` rounded up to whole pages; `None` if that overflows a `u64`.
    pub const fn round_up(bytes: u64) -> Option<PageAligned> {
        match bytes.checked_add(PAGE_SIZE as u64 - 1) {
            Some(v) => Some(PageAligned(v & !(PAGE_SIZE as u64 - 1))),
            None => None,
        }
    }

    /// `pages` whole pages; `None` if the length overflows a `u64`.
    pub const fn from_pages(pages: u64) -> Option<PageAligned> {
        match pages.checked_mul(PAGE_SIZE as u64) {
            Some(bytes) => Some(PageAligned(bytes)),
            None => None,
        }
    }

    /// Whether `bytes` (a length or an address) is a whole number of pages.
    pub const fn is_aligned(bytes: u64) -> bool {
        bytes.is_multiple_of(PAGE_SIZE as u64)
    }

    /// The length in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The length in pages.
    pub const fn pages(self) -> u64 {
        self.0 / PAGE_SIZE as u64
    }
}

/// The longest region or instance name, in bytes.
pub const MAX_NAME_LEN: u32 = 256;

/// What `handle_info` writes to guest memory: little-endian, 40 bytes, no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct HandleInfo {
    /// Size of the whole region in bytes.
    pub region_size: u64,
    /// Start of the capability's range within the region.
    pub offset: u64,
    /// Length of the capability's range.
    pub len: u64,
    /// The region's version counter; bumped by every write.
    pub version: u64,
    /// The capability's rights bits.
    pub rights: u32,
    /// The region's mode (see [`mode`]).
    pub mode: u32,
}

impl HandleInfo {
    /// Size of the encoded struct in guest memory.
    pub const SIZE: usize = 40;

    /// Encodes the struct as the bytes the guest reads.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..8].copy_from_slice(&self.region_size.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..32].copy_from_slice(&self.version.to_le_bytes());
        out[32..36].copy_from_slice(&self.rights.to_le_bytes());
        out[36..40].copy_from_slice(&self.mode.to_le_bytes());
        out
    }

    /// Decodes the bytes written by the broker.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> HandleInfo {
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(w)
        };
        HandleInfo {
            region_size: u64_at(0),
            offset: u64_at(8),
            len: u64_at(16),
            version: u64_at(24),
            rights: u32_at(32),
            mode: u32_at(36),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_and_are_distinct() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(Status::from_code(s.code()), Some(*s));
            for t in &Status::ALL[i + 1..] {
                assert_ne!(s.code(), t.code());
            }
        }
        assert_eq!(Status::from_code(1), None);
        assert_eq!(Status::from_code(-1000), None);
    }

    #[test]
    fn page_aligned_lengths_are_checked_or_rounded() {
        let page = u64::from(PAGE_SIZE);
        assert_eq!(PageAligned::new(0).map(PageAligned::bytes), Some(0));
        assert_eq!(PageAligned::new(3 * page).map(PageAligned::pages), Some(3));
        assert_eq!(PageAligned::new(page + 1), None);
        assert_eq!(PageAligned::round_up(1).map(PageAligned::bytes), Some(page));
        assert_eq!(PageAligned::round_up(page).map(PageAligned::bytes), Some(page));
        assert_eq!(PageAligned::round_up(page + 1).map(PageAligned::pages), Some(2));
        assert_eq!(PageAligned::round_up(u64::MAX), None, "rounding up overflows");
        assert_eq!(
            PageAligned::round_up(u64::MAX - page + 1).map(PageAligned::bytes),
            Some(u64::MAX - page + 1)
        );
        assert_eq!(PageAligned::from_pages(2), Some(PageAligned(2 * page)));
        assert_eq!(PageAligned::from_pages(u64::MAX), None);
        assert!(PageAligned::is_aligned(page * 7) && !PageAligned::is_aligned(page * 7 - 1));
        assert_eq!(PageAligned::PAGE.bytes(), page);
    }

    #[test]
    fn handle_info_round_trips() {
        let info = HandleInfo {
            region_size: 1 << 40,
            offset: 3,
            len: 7,
            version: u64::MAX,
            rights: rights::ALL,
            mode: mode::SHARED,
        };
        assert_eq!(HandleInfo::from_bytes(&info.to_bytes()), info);
    }

    #[test]
    fn the_toolkit_functions_live_only_in_the_extension_module() {
        for name in ui_func::ALL {
            assert!(name.starts_with("ui_"), "{name}");
            assert!(!func::ALL.contains(name), "{name} is listed under {MODULE} too");
        }
        assert!(func::ALL.iter().all(|name| !name.starts_with("ui_")), "func::ALL lists only {MODULE}");
        assert_ne!(MODULE, UI_MODULE);
    }
}
