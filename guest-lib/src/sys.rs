//! The imports of host ABI v1, exactly as the broker exports them under `broker_v1` (and the UI toolkit
//! extension's under `broker_ui_v1`), and thin safe wrappers over them.
//!
//! This is the only module of the guest library that contains `unsafe`: each wrapper takes Rust slices and
//! references, so the pointer and length it passes always describe live memory of this app. The names must
//! match `broker_abi::func` and `broker_abi::ui_func`; instantiation fails otherwise, and the guests' tests
//! call every import. On non-wasm targets the imports are never linked (the library is compiled for the
//! host only so that its pure parts can be unit tested).

#![allow(unsafe_code, reason = "this module is the FFI boundary with the host")]

use alloc::vec::Vec;

/// The raw imports, exactly as the host exports them. Apps use the safe wrappers below; this is public
/// only for the hostile test guests, which must pass whatever pointers and lengths they like.
#[doc(hidden)]
pub mod raw {
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
        pub fn region_readv(handle: u32, iovs: *const u8, count: usize) -> i32;
        pub fn region_writev(handle: u32, iovs: *const u8, count: usize) -> i32;
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
        pub fn region_watch(handle: u32, callback: u32, user_data: u32) -> i32;
        pub fn region_unwatch(handle: u32) -> i32;
        pub fn fn_open(name: *const u8, name_len: usize, out_handle: *mut u32) -> i32;
        pub fn fn_call(
            fh: u32,
            args: *const u8,
            args_len: usize,
            result: *mut u8,
            result_cap: usize,
            out_len: *mut u32,
        ) -> i32;
        pub fn fn_close(fh: u32) -> i32;
        pub fn mirror_hint(handle: u32, first_page: u32, pages: u32) -> i32;
        pub fn mirror_commit(
            handle: u32,
            buf: *const u8,
            len: usize,
            base: i64,
            out_version: *mut u64,
            out_pages: *mut u32,
        ) -> i32;
    }

    // The UI toolkit extension: a broker offers these only when its host turned the extension on, and
    // refuses an app that imports them otherwise (an app that calls none of them imports none).
    #[cfg_attr(target_arch = "wasm32", link(wasm_import_module = "broker_ui_v1"))]
    extern "C" {
        pub fn ui_create(parent: u32, mode: u32, out_handle: *mut u32) -> i32;
        pub fn ui_set(handle: u32, field: u32, value: i32) -> i32;
        pub fn ui_get(handle: u32, field: u32, out_value: *mut i32) -> i32;
        pub fn ui_set_text(handle: u32, text: *const u8, len: usize) -> i32;
        pub fn ui_get_text(handle: u32, buf: *mut u8, cap: usize, out_len: *mut u32) -> i32;
        pub fn ui_on_event(handle: u32, code: u32, callback: u32, user_data: u32) -> i32;
        pub fn ui_send(handle: u32, code: u32, param: i32, out_count: *mut u32) -> i32;
        pub fn ui_delete(handle: u32) -> i32;
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

/// One encoded `region_readv`/`region_writev` entry, or the status that refuses it.
fn iovec(offset: u64, ptr: usize, len: usize) -> Result<[u8; 16], i32> {
    let offset = i64::try_from(offset).map_err(|_| broker_abi::Status::OutOfBounds.code())?;
    let ptr = u32::try_from(ptr).map_err(|_| broker_abi::Status::BadPointer.code())?;
    let len = u32::try_from(len).map_err(|_| broker_abi::Status::OutOfBounds.code())?;
    Ok(broker_abi::Iovec { offset, ptr, len }.to_bytes())
}

/// Reads each `(offset, buffer)` of `reads` in one call (see `region_readv`).
pub fn region_readv(handle: u32, reads: &mut [(u64, &mut [u8])]) -> i32 {
    let iovs: Result<Vec<[u8; 16]>, i32> =
        reads.iter_mut().map(|(o, b)| iovec(*o, b.as_mut_ptr() as usize, b.len())).collect();
    match iovs {
        // SAFETY: every entry points at a buffer of `reads`, borrowed mutably (so touched by nothing
        // else) and live for the whole call; `iovs` is live for the call too.
        Ok(iovs) => unsafe { raw::region_readv(handle, iovs.as_ptr().cast(), iovs.len()) },
        Err(status) => status,
    }
}

/// Writes each `(offset, bytes)` of `writes` in one call (see `region_writev`).
pub fn region_writev(handle: u32, writes: &[(u64, &[u8])]) -> i32 {
    let iovs: Result<Vec<[u8; 16]>, i32> =
        writes.iter().map(|(o, d)| iovec(*o, d.as_ptr() as usize, d.len())).collect();
    match iovs {
        // SAFETY: every entry points at a slice of `writes`, live and readable for the whole call.
        Ok(iovs) => unsafe { raw::region_writev(handle, iovs.as_ptr().cast(), iovs.len()) },
        Err(status) => status,
    }
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

/// Limits the next commit through `handle` to the pages hinted since the last commit (page indices
/// relative to the handle's range; `pages == 0` hints none).
pub fn mirror_hint(handle: u32, first_page: u32, pages: u32) -> i32 {
    // SAFETY: the import takes plain integers.
    unsafe { raw::mirror_hint(handle, first_page, pages) }
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

/// Registers `callback` (a function-table index) for changes to the handle's region.
pub fn region_watch(handle: u32, callback: u32, user_data: u32) -> i32 {
    // SAFETY: the import takes only integers; the host validates the table index.
    unsafe { raw::region_watch(handle, callback, user_data) }
}

/// Ends the watch registered through `handle`.
pub fn region_unwatch(handle: u32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::region_unwatch(handle) }
}

/// Creates a toolkit object (its region in `mode`); the handle goes to `out`.
pub fn ui_create(parent: u32, mode: u32, out: &mut u32) -> i32 {
    // SAFETY: `out` is a live, aligned u32 during the call.
    unsafe { raw::ui_create(parent, mode, out) }
}

/// Sets an integer field of a toolkit object.
pub fn ui_set(handle: u32, field: u32, value: i32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::ui_set(handle, field, value) }
}

/// Reads an integer field of a toolkit object into `out`.
pub fn ui_get(handle: u32, field: u32, out: &mut i32) -> i32 {
    // SAFETY: `out` is a live, aligned i32 during the call.
    unsafe { raw::ui_get(handle, field, out) }
}

/// Sets a toolkit object's text.
pub fn ui_set_text(handle: u32, text: &[u8]) -> i32 {
    // SAFETY: `text` is live for `text.len()` bytes during the call.
    unsafe { raw::ui_set_text(handle, text.as_ptr(), text.len()) }
}

/// Copies a toolkit object's text into `buf`; its length goes to `out_len`.
pub fn ui_get_text(handle: u32, buf: &mut [u8], out_len: &mut u32) -> i32 {
    // SAFETY: `buf` is live and writable for `buf.len()` bytes, `out_len` a live u32.
    unsafe { raw::ui_get_text(handle, buf.as_mut_ptr(), buf.len(), out_len) }
}

/// Registers `callback` (a function-table index) for the object's events with `code` (0: all).
pub fn ui_on_event(handle: u32, code: u32, callback: u32, user_data: u32) -> i32 {
    // SAFETY: the import takes only integers; the host validates the table index.
    unsafe { raw::ui_on_event(handle, code, callback, user_data) }
}

/// Fires an event on a toolkit object; the number of callbacks run goes to `out_count`.
pub fn ui_send(handle: u32, code: u32, param: i32, out_count: &mut u32) -> i32 {
    // SAFETY: `out_count` is a live u32 during the call.
    unsafe { raw::ui_send(handle, code, param, out_count) }
}

/// Deletes a toolkit object and its region.
pub fn ui_delete(handle: u32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::ui_delete(handle) }
}

/// Opens a host service by name; the function handle goes to `out`.
pub fn fn_open(name: &[u8], out: &mut u32) -> i32 {
    // SAFETY: `name` is live for its length and `out` a live u32 during the call.
    unsafe { raw::fn_open(name.as_ptr(), name.len(), out) }
}

/// Calls a host service with `args`; the result goes to `result`, its length to `out_len`.
pub fn fn_call(fh: u32, args: &[u8], result: &mut [u8], out_len: &mut u32) -> i32 {
    // SAFETY: both buffers are live for their lengths, `out_len` a live u32, during the call.
    unsafe { raw::fn_call(fh, args.as_ptr(), args.len(), result.as_mut_ptr(), result.len(), out_len) }
}

/// Closes a function handle.
pub fn fn_close(fh: u32) -> i32 {
    // SAFETY: the import takes only integers.
    unsafe { raw::fn_close(fh) }
}
