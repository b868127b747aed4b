//! The imports of host ABI v1, exactly as the broker exports them under `broker_v1`, and thin safe
//! wrappers over them.
//!
//! This is the only module of the guest library that contains `unsafe`: each wrapper takes Rust slices and
//! references, so the pointer and length it passes always describe live memory of this app. The names must
//! match `broker_abi::func`; instantiation fails otherwise, and the guests' tests call every import. On
//! non-wasm targets the imports are never linked (the library is compiled for the host only so that its
//! pure parts can be unit tested).

#![allow(unsafe_code, reason = "this module is the FFI boundary with the host")]

mod raw {
    #[cfg_attr(target_arch = "wasm32", link(wasm_import_module = "broker_v1"))]
    extern "C" {
        pub fn abi_version() -> i32;
        pub fn nop() -> i32;
        pub fn region_open(name: *const u8, name_len: usize, out_handle: *mut u32) -> i32;
        pub fn region_create(
            name: *const u8,
            name_len: usize,
            size: i64,
            mode: u32,
            out_handle: *mut u32,
        ) -> i32;
        pub fn handle_close(handle: u32) -> i32;
        pub fn handle_info(handle: u32, out_info: *mut u8) -> i32;
        pub fn region_read(handle: u32, offset: i64, dst: *mut u8, len: usize) -> i32;
        pub fn region_write(handle: u32, offset: i64, src: *const u8, len: usize) -> i32;
        pub fn handle_restrict(handle: u32, rights: u32, offset: i64, len: i64, out_handle: *mut u32) -> i32;
        pub fn handle_grant(
            handle: u32,
            target: *const u8,
            target_len: usize,
            rights: u32,
            offset: i64,
            len: i64,
        ) -> i32;
        pub fn handle_revoke(handle: u32) -> i32;
        pub fn mirror_acquire(handle: u32, buf: *mut u8, len: usize, out_version: *mut u64) -> i32;
        pub fn mirror_refresh(
            handle: u32,
            buf: *mut u8,
            len: usize,
            since: i64,
            out_version: *mut u64,
            out_pages: *mut u32,
        ) -> i32;
        pub fn region_map(handle: u32, addr: *mut u8, len: usize, flags: u32) -> i32;
        pub fn region_unmap(handle: u32, addr: *mut u8) -> i32;
        pub fn region_wait(handle: u32, offset: i64, expected: u32, timeout_ms: u32) -> i32;
        pub fn region_notify(handle: u32, offset: i64) -> i32;
        pub fn mirror_commit(
            handle: u32,
            buf: *const u8,
            len: usize,
            base: i64,
            out_version: *mut u64,
            out_pages: *mut u32,
        ) -> i32;
    }
}

/// The ABI version the host implements.
pub fn abi_version() -> i32 {
    // SAFETY: the import takes no arguments and touches no memory of ours.
    unsafe { raw::abi_version() }
}

/// Does nothing and returns `OK`: the cost of a bare host call.
pub fn nop() -> i32 {
    // SAFETY: the import takes no arguments and touches no memory of ours.
    unsafe { raw::nop() }
}

/// Opens a region by name; the new handle goes to `out`.
pub fn region_open(name: &[u8], out: &mut u32) -> i32 {
    // SAFETY: `name` is live for `name.len()` bytes and `out` is a live, aligned u32 during the call.
    unsafe { raw::region_open(name.as_ptr(), name.len(), out) }
}

/// Creates a region of the caller's tenant; a full-rights handle goes to `out`.
pub fn region_create(name: &[u8], size: i64, mode: u32, out: &mut u32) -> i32 {
    // SAFETY: `name` is live for `name.len()` bytes and `out` is a live, aligned u32 during the call.
    unsafe { raw::region_create(name.as_ptr(), name.len(), size, mode, out) }
}

/// Closes a handle, revoking everything derived from it.
pub fn handle_close(handle: u32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::handle_close(handle) }
}

/// Writes the capability's `HandleInfo` encoding to `out`.
pub fn handle_info(handle: u32, out: &mut [u8; broker_abi::HandleInfo::SIZE]) -> i32 {
    // SAFETY: `out` is a live, writable buffer of exactly the size the import writes.
    unsafe { raw::handle_info(handle, out.as_mut_ptr()) }
}

/// Copies `dst.len()` bytes at `offset` of the capability's range into `dst`.
pub fn region_read(handle: u32, offset: i64, dst: &mut [u8]) -> i32 {
    // SAFETY: `dst` is live and writable for `dst.len()` bytes during the call.
    unsafe { raw::region_read(handle, offset, dst.as_mut_ptr(), dst.len()) }
}

/// Copies `src` to `offset` of the capability's range.
pub fn region_write(handle: u32, offset: i64, src: &[u8]) -> i32 {
    // SAFETY: `src` is live for `src.len()` bytes during the call.
    unsafe { raw::region_write(handle, offset, src.as_ptr(), src.len()) }
}

/// Derives a smaller capability for the caller; the new handle goes to `out`.
pub fn handle_restrict(handle: u32, rights: u32, offset: i64, len: i64, out: &mut u32) -> i32 {
    // SAFETY: `out` is a live, aligned u32 during the call.
    unsafe { raw::handle_restrict(handle, rights, offset, len, out) }
}

/// Delegates a smaller capability to the instance named `target`.
pub fn handle_grant(handle: u32, target: &[u8], rights: u32, offset: i64, len: i64) -> i32 {
    // SAFETY: `target` is live for `target.len()` bytes during the call.
    unsafe { raw::handle_grant(handle, target.as_ptr(), target.len(), rights, offset, len) }
}

/// Revokes every capability derived from this one.
pub fn handle_revoke(handle: u32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::handle_revoke(handle) }
}

/// Copies the capability's range into `buf` (which must be exactly that long); the version goes to
/// `out_version`.
pub fn mirror_acquire(handle: u32, buf: &mut [u8], out_version: &mut u64) -> i32 {
    // SAFETY: `buf` is live and writable for `buf.len()` bytes and `out_version` is a live u64.
    unsafe { raw::mirror_acquire(handle, buf.as_mut_ptr(), buf.len(), out_version) }
}

/// Copies into `buf` the pages changed since `since`.
pub fn mirror_refresh(
    handle: u32,
    buf: &mut [u8],
    since: i64,
    out_version: &mut u64,
    out_pages: &mut u32,
) -> i32 {
    // SAFETY: `buf` is live and writable for `buf.len()` bytes; the out-pointers are live locals.
    unsafe { raw::mirror_refresh(handle, buf.as_mut_ptr(), buf.len(), since, out_version, out_pages) }
}

/// Writes back the pages of `buf` that changed since the mirror was acquired or last synced.
pub fn mirror_commit(handle: u32, buf: &[u8], base: i64, out_version: &mut u64, out_pages: &mut u32) -> i32 {
    // SAFETY: `buf` is live for `buf.len()` bytes; the out-pointers are live locals.
    unsafe { raw::mirror_commit(handle, buf.as_ptr(), buf.len(), base, out_version, out_pages) }
}

/// Maps the capability's range at `addr` (page aligned, `len` bytes of this app's memory).
///
/// # Safety
/// `[addr, addr+len)` must be memory this app owns and no Rust reference into it may be used while the
/// window is mapped except through the window's own accessors: its contents become the region's.
pub unsafe fn region_map(handle: u32, addr: *mut u8, len: usize, flags: u32) -> i32 {
    // SAFETY: the caller upholds the contract above; the host checks the range against linear memory.
    unsafe { raw::region_map(handle, addr, len, flags) }
}

/// Unmaps the window at `addr`; its pages become zeroed memory of this app again.
pub fn region_unmap(handle: u32, addr: usize) -> i32 {
    // SAFETY: the host only touches a window it mapped at `addr` for this app; the address is passed as
    // a number and never dereferenced here.
    unsafe { raw::region_unmap(handle, addr as *mut u8) }
}

/// Parks until the `u32` at `offset` differs from `expected`, a notify, or the timeout.
pub fn region_wait(handle: u32, offset: i64, expected: u32, timeout_ms: u32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::region_wait(handle, offset, expected, timeout_ms) }
}

/// Wakes the apps parked on this region.
pub fn region_notify(handle: u32, offset: i64) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::region_notify(handle, offset) }
}
