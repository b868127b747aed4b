//! The safe Rust API that Wasm apps use to reach regions held by the broker.
//!
//! An app opens a [`Region`] by name and gets an owned capability handle; reads, writes, typed loads and
//! stores, delegation (`grant`), attenuation (`restrict`) and revocation go through it. Every call returns
//! a [`Result`] whose error mirrors the ABI status codes one to one, so an app can match on exactly what the
//! broker refused. The API does not assume a mode: the mirror and shared modes add accessors next to these
//! methods, so code written against `read`/`write` keeps working under every mode. A [`Mirror`] is the
//! app's own copy and lends it as slices; a [`SharedWindow`], whose bytes other apps change concurrently,
//! never does: it offers by-value loads and stores, copies, atomics and `UnsafeCell` cells instead.

#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

extern crate alloc;

mod callback;
mod mirror;
mod record;
mod shared;
pub mod sys;
mod view;

pub use callback::{Field, HostFn, Object, RawUiFn, RawWatchFn, UiEvent, WatchEvent};
pub use mirror::Mirror;
pub use record::{Member, Members};
pub use shared::{ReadOnly, ReadWrite, SharedWindow, SpscRing, Wait};
pub use view::View;

pub use broker_abi::ui as ui_code;
pub use broker_abi::{
    mode as raw_mode, rights as raw_rights, HandleInfo, Status, LEN_TO_END, MAX_IOVS, MAX_NAME_LEN, PAGE_SIZE,
};
pub use bytemuck::{Pod, Zeroable};

use core::fmt;

/// An error the broker returned, one variant per ABI status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The handle is 0, never issued or out of range.
    InvalidHandle,
    /// The handle was closed or revoked.
    StaleHandle,
    /// The capability lacks a right, or a delegation tried to widen rights.
    PermissionDenied,
    /// The offset or length lies outside the capability's range.
    OutOfBounds,
    /// A pointer and length do not lie in this app's linear memory.
    BadPointer,
    /// No region or instance of that name is visible.
    NotFound,
    /// The name is taken.
    AlreadyExists,
    /// The tenant's quota would be exceeded.
    QuotaExceeded,
    /// A malformed argument (name, rights bits, mode, size).
    InvalidArgument,
    /// The region mode is not implemented by this broker.
    ModeNotSupported,
    /// The call needs a region in another mode.
    WrongMode,
    /// The broker failed internally; nothing happened.
    Internal,
    /// A mirror commit conflicts with changes since the mirror's base; nothing was written.
    Conflict,
    /// A version argument is negative or newer than the region's.
    BadVersion,
    /// A window address or capability range is not page aligned.
    Unaligned,
    /// The capability is already mapped, or the window overlaps another.
    Busy,
    /// A wait ended by its timeout.
    TimedOut,
    /// A callback is null, outside the function table, or of the wrong signature.
    BadCallback,
    /// A host service reported a failure.
    ServiceFailed,
    /// The region is a replica whose home cannot take the write now; nothing was written.
    Unavailable,
    /// A code this library does not know (a newer broker).
    Unknown(i32),
}

impl Error {
    /// Maps a status code to `Ok(())` or the matching error.
    pub fn check(code: i32) -> Result<(), Error> {
        match Status::from_code(code) {
            Some(Status::Ok) => Ok(()),
            Some(s) => Err(Error::from_status(s)),
            None => Err(Error::Unknown(code)),
        }
    }

    fn from_status(s: Status) -> Error {
        match s {
            // `Ok` never reaches here through `check`; map it to `Internal` rather than panic.
            Status::Ok | Status::Internal => Error::Internal,
            Status::InvalidHandle => Error::InvalidHandle,
            Status::StaleHandle => Error::StaleHandle,
            Status::PermissionDenied => Error::PermissionDenied,
            Status::OutOfBounds => Error::OutOfBounds,
            Status::BadPointer => Error::BadPointer,
            Status::NotFound => Error::NotFound,
            Status::AlreadyExists => Error::AlreadyExists,
            Status::QuotaExceeded => Error::QuotaExceeded,
            Status::InvalidArgument => Error::InvalidArgument,
            Status::ModeNotSupported => Error::ModeNotSupported,
            Status::WrongMode => Error::WrongMode,
            Status::Conflict => Error::Conflict,
            Status::BadVersion => Error::BadVersion,
            Status::Unaligned => Error::Unaligned,
            Status::Busy => Error::Busy,
            Status::TimedOut => Error::TimedOut,
            Status::BadCallback => Error::BadCallback,
            Status::ServiceFailed => Error::ServiceFailed,
            Status::Unavailable => Error::Unavailable,
        }
    }

    /// The ABI code of this error, so apps can report it to the host as a plain `i32`.
    pub fn code(self) -> i32 {
        match self {
            Error::InvalidHandle => Status::InvalidHandle.code(),
            Error::StaleHandle => Status::StaleHandle.code(),
            Error::PermissionDenied => Status::PermissionDenied.code(),
            Error::OutOfBounds => Status::OutOfBounds.code(),
            Error::BadPointer => Status::BadPointer.code(),
            Error::NotFound => Status::NotFound.code(),
            Error::AlreadyExists => Status::AlreadyExists.code(),
            Error::QuotaExceeded => Status::QuotaExceeded.code(),
            Error::InvalidArgument => Status::InvalidArgument.code(),
            Error::ModeNotSupported => Status::ModeNotSupported.code(),
            Error::WrongMode => Status::WrongMode.code(),
            Error::Internal => Status::Internal.code(),
            Error::Conflict => Status::Conflict.code(),
            Error::BadVersion => Status::BadVersion.code(),
            Error::Unaligned => Status::Unaligned.code(),
            Error::Busy => Status::Busy.code(),
            Error::TimedOut => Status::TimedOut.code(),
            Error::BadCallback => Status::BadCallback.code(),
            Error::ServiceFailed => Status::ServiceFailed.code(),
            Error::Unavailable => Status::Unavailable.code(),
            Error::Unknown(c) => c,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            Error::InvalidHandle => "invalid handle",
            Error::StaleHandle => "stale handle (closed or revoked)",
            Error::PermissionDenied => "permission denied",
            Error::OutOfBounds => "offset or length outside the capability's range",
            Error::BadPointer => "pointer outside linear memory",
            Error::NotFound => "not found",
            Error::AlreadyExists => "already exists",
            Error::QuotaExceeded => "tenant quota exceeded",
            Error::InvalidArgument => "invalid argument",
            Error::ModeNotSupported => "region mode not supported by this broker",
            Error::WrongMode => "operation needs a region in another mode",
            Error::Internal => "internal broker error",
            Error::Conflict => "commit conflicts with changes since the mirror's base",
            Error::BadVersion => "version is not a version of this region",
            Error::Unaligned => "window address or range is not page aligned",
            Error::Busy => "already mapped, or overlapping another window",
            Error::TimedOut => "wait timed out",
            Error::BadCallback => "callback is null, outside the function table, or of the wrong signature",
            Error::ServiceFailed => "host service failed",
            Error::Unavailable => "the replicated region's home is unavailable",
            Error::Unknown(c) => return write!(f, "unknown broker status {c}"),
        };
        f.write_str(msg)
    }
}

/// Shorthand for results of broker calls.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// A set of capability rights; combine with `|`. The ABI's own type, shared with the broker: an app
/// that passes raw bits builds it with `Rights::from_bits_retain`, so unknown bits reach the broker,
/// which refuses them.
pub use broker_abi::Rights;

/// The mode an operator (or the creating app) picked for a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every access is a checked host call.
    Handle,
    /// Copy-on-access mirror.
    Mirror,
    /// Zero-copy shared window.
    Shared,
}

impl Mode {
    pub(crate) fn raw(self) -> u32 {
        match self {
            Mode::Handle => raw_mode::HANDLE,
            Mode::Mirror => raw_mode::MIRROR,
            Mode::Shared => raw_mode::SHARED,
        }
    }

    /// Decodes the ABI encoding of a mode; `None` for an unknown value.
    pub fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            raw_mode::HANDLE => Some(Mode::Handle),
            raw_mode::MIRROR => Some(Mode::Mirror),
            raw_mode::SHARED => Some(Mode::Shared),
            _ => None,
        }
    }
}

/// What a capability covers, as reported by the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// Size of the whole region.
    pub region_size: u64,
    /// Start of this capability's range in the region.
    pub offset: u64,
    /// Length of this capability's range; offsets passed to `read`/`write` are relative to its start.
    pub len: u64,
    /// The region's version at the time of the call.
    pub version: u64,
    /// The capability's rights.
    pub rights: Rights,
    /// The region's mode.
    pub mode: Mode,
}

/// The ABI version of the broker hosting this app.
pub fn abi_version() -> i32 {
    sys::abi_version()
}

/// Calls the no-op import: the baseline cost of crossing into the host.
pub fn nop() -> Result<()> {
    Error::check(sys::nop())
}

fn offset_arg(offset: u64) -> Result<i64> {
    i64::try_from(offset).map_err(|_| Error::OutOfBounds)
}

fn len_arg(len: Option<u64>) -> Result<i64> {
    match len {
        None => Ok(LEN_TO_END),
        Some(l) => i64::try_from(l).map_err(|_| Error::OutOfBounds),
    }
}

/// An owned capability handle to a region; closed when dropped.
///
/// Offsets are relative to the start of the capability's range, so a sub-range grant looks to its holder
/// like a smaller region starting at 0.
#[derive(Debug)]
pub struct Region {
    handle: u32,
}

impl Region {
    /// Opens a region by name: `"name"` for a region of this app's tenant, `"tenant/name"` for a region
    /// another tenant granted to this instance. The handle carries what this instance was given and no
    /// more: all rights on a region it created, a grant's rights and range, or the region's member
    /// rights (see ABI.md, "Handles and names").
    ///
    /// # Errors
    /// `NotFound` if no such region is visible to this instance, `PermissionDenied` for a region of its
    /// own tenant that was not given to it, `QuotaExceeded` if the tenant holds its maximum number of
    /// handles, `InvalidArgument` for an empty or overlong name.
    pub fn open(name: &str) -> Result<Region> {
        let mut handle = 0u32;
        Error::check(sys::region_open(name.as_bytes(), &mut handle))?;
        Ok(Region { handle })
    }

    /// Creates a region owned by this app's tenant, counted against its quota, and opens it with all rights.
    ///
    /// # Errors
    /// `AlreadyExists`, `QuotaExceeded`, `InvalidArgument` (zero size, bad name) or `ModeNotSupported`.
    pub fn create(name: &str, size: u64, mode: Mode) -> Result<Region> {
        let size = i64::try_from(size).map_err(|_| Error::InvalidArgument)?;
        let mut handle = 0u32;
        Error::check(sys::region_create(name.as_bytes(), size, mode.raw(), &mut handle))?;
        Ok(Region { handle })
    }

    /// Wraps a raw handle value, e.g. one passed in by the host as an export argument.
    ///
    /// This is safe: a wrong value only makes later calls fail with `InvalidHandle` or `StaleHandle`.
    pub fn from_raw(handle: u32) -> Region {
        Region { handle }
    }

    /// The raw handle value.
    pub fn raw(&self) -> u32 {
        self.handle
    }

    /// Gives up ownership without closing the handle.
    pub fn into_raw(self) -> u32 {
        let h = self.handle;
        core::mem::forget(self);
        h
    }

    /// What this capability covers.
    ///
    /// # Errors
    /// `InvalidHandle` or `StaleHandle`.
    pub fn info(&self) -> Result<Info> {
        let mut buf = [0u8; HandleInfo::SIZE];
        Error::check(sys::handle_info(self.handle, &mut buf))?;
        let raw = HandleInfo::from_bytes(&buf);
        Ok(Info {
            region_size: raw.region_size,
            offset: raw.offset,
            len: raw.len,
            version: raw.version,
            rights: Rights::from_bits_retain(raw.rights),
            mode: Mode::from_raw(raw.mode).ok_or(Error::Unknown(0))?,
        })
    }

    /// Whether this capability's range is empty.
    ///
    /// # Errors
    /// As [`Region::info`].
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The length of this capability's range.
    ///
    /// # Errors
    /// As [`Region::info`].
    pub fn len(&self) -> Result<u64> {
        Ok(self.info()?.len)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    ///
    /// # Errors
    /// `PermissionDenied` without the read right, `OutOfBounds` past the range, handle errors.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let offset = offset_arg(offset)?;
        Error::check(sys::region_read(self.handle, offset, buf))
    }

    /// Copies `data` to `offset`.
    ///
    /// # Errors
    /// `PermissionDenied` without the write right, `OutOfBounds` past the range, handle errors.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let offset = offset_arg(offset)?;
        Error::check(sys::region_write(self.handle, offset, data))
    }

    /// Reads several ranges in one host call: each `(offset, buffer)` fills the buffer from `offset`.
    /// All are checked before any is read, and all come from one state of the region (no write lands
    /// between two of them).
    ///
    /// # Errors
    /// `InvalidArgument` for more than [`MAX_IOVS`] ranges (the broker's refusal); otherwise as
    /// [`Region::read`], for the first range refused (and then nothing was read).
    pub fn read_vectored(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        Error::check(sys::region_readv(self.handle, reads))
    }

    /// Writes several ranges in one host call: each `(offset, bytes)` goes to `offset`. All are
    /// checked before any is written, and they land together, as one change with one version.
    ///
    /// # Errors
    /// As [`Region::read_vectored`], with [`Region::write`]'s refusals.
    pub fn write_vectored(&self, writes: &[(u64, &[u8])]) -> Result<()> {
        Error::check(sys::region_writev(self.handle, writes))
    }

    /// Reads a plain-old-data value stored at `offset` (unaligned offsets are fine).
    ///
    /// # Errors
    /// As [`Region::read`].
    pub fn load<T: Pod>(&self, offset: u64) -> Result<T> {
        let mut value = T::zeroed();
        self.read(offset, bytemuck::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Stores a plain-old-data value at `offset`.
    ///
    /// # Errors
    /// As [`Region::write`].
    pub fn store<T: Pod>(&self, offset: u64, value: &T) -> Result<()> {
        self.write(offset, bytemuck::bytes_of(value))
    }

    /// Derives a capability for this app with `rights` over `[offset, offset+len)` of this one's range
    /// (`len: None` means to the end). It is revoked when this one is.
    ///
    /// # Errors
    /// `PermissionDenied` if `rights` is not a subset, `OutOfBounds` for a range outside this one.
    pub fn restrict(&self, rights: Rights, offset: u64, len: Option<u64>) -> Result<Region> {
        let (offset, len) = (offset_arg(offset)?, len_arg(len)?);
        let mut handle = 0u32;
        Error::check(sys::handle_restrict(self.handle, rights.bits(), offset, len, &mut handle))?;
        Ok(Region { handle })
    }

    /// Delegates `rights` over `[offset, offset+len)` to the instance `target` (`"name"` in this tenant or
    /// `"tenant/name"`); the target opens it as `"<owner tenant>/<region>"`. Needs the grant right.
    ///
    /// # Errors
    /// `PermissionDenied` without the grant right or when widening rights, `OutOfBounds`, `NotFound`.
    pub fn grant(&self, target: &str, rights: Rights, offset: u64, len: Option<u64>) -> Result<()> {
        let (offset, len) = (offset_arg(offset)?, len_arg(len)?);
        Error::check(sys::handle_grant(self.handle, target.as_bytes(), rights.bits(), offset, len))
    }

    /// Copies the region into this app's memory as a [`Mirror`] (mirror-mode regions only).
    ///
    /// # Errors
    /// `WrongMode` for a region in another mode, `PermissionDenied` without the read right,
    /// `QuotaExceeded` if the tenant's memory quota cannot hold the broker's shadow of the mirror.
    pub fn mirror(&self) -> Result<Mirror<'_>> {
        Mirror::acquire(self)
    }

    /// Maps the region (shared mode) into this app's memory, read-only.
    ///
    /// # Errors
    /// `WrongMode` for a region in another mode, `PermissionDenied` without the map right, `Unaligned`
    /// for a sub-range capability that does not start and end on page boundaries.
    pub fn map(&self) -> Result<SharedWindow<'_, ReadOnly>> {
        SharedWindow::map(self, false)
    }

    /// Maps the region (shared mode) read-write; needs the map and write rights.
    ///
    /// # Errors
    /// As [`Region::map`], and `PermissionDenied` without the write right.
    pub fn map_mut(&self) -> Result<SharedWindow<'_, ReadWrite>> {
        SharedWindow::map(self, true)
    }

    /// A mode-agnostic [`View`]: a mirror for mirror-mode regions, a mapped window (read-write if the
    /// capability has the write right) for shared-mode ones, host calls otherwise.
    ///
    /// # Errors
    /// As [`Region::info`], [`Region::mirror`] and [`Region::map`].
    pub fn view(&self) -> Result<View<'_>> {
        View::open(self)
    }

    /// Revokes every capability derived from this one (grants and restrictions, transitively); this one
    /// stays valid.
    ///
    /// # Errors
    /// Handle errors.
    pub fn revoke(&self) -> Result<()> {
        Error::check(sys::handle_revoke(self.handle))
    }

    /// Closes the handle now and reports the broker's answer (dropping closes too, silently).
    ///
    /// # Errors
    /// Handle errors, e.g. `StaleHandle` if the capability was revoked meanwhile.
    pub fn close(self) -> Result<()> {
        let h = self.into_raw();
        Error::check(sys::handle_close(h))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // A stale handle just returns an error code, ignored here because drop cannot report it; `close`
        // exists for apps that care.
        let _ = sys::handle_close(self.handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_an_error_with_the_same_code() {
        for s in Status::ALL {
            match Error::check(s.code()) {
                Ok(()) => assert_eq!(*s, Status::Ok),
                Err(e) => assert_eq!(e.code(), s.code()),
            }
        }
        assert_eq!(Error::check(77), Err(Error::Unknown(77)));
    }

    #[test]
    fn rights_compose() {
        let rw = Rights::READ | Rights::WRITE;
        assert!(rw.contains(Rights::READ));
        assert!(!rw.contains(Rights::GRANT));
        assert!(Rights::ALL.contains(rw));
    }
}
