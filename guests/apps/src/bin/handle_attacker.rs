//! A hostile app: it calls the raw ABI with forged handles, wild pointers and overflowing lengths, and
//! counts what the broker answered. It never uses the safe library, so nothing filters its inputs.

#![no_main]

use broker_guest::sys::raw::{
    handle_close, handle_grant, handle_info, handle_restrict, handle_revoke, mirror_acquire, mirror_commit,
    mirror_hint, mirror_refresh, region_create, region_open, region_read, region_readv, region_write,
    region_writev,
};

const INVALID_HANDLE: i32 = broker_guest::Status::InvalidHandle.code();
const STALE_HANDLE: i32 = broker_guest::Status::StaleHandle.code();

/// Scratch space: a page for most cases, three for mirrors of ranges longer than a page.
static mut BUF: [u8; SCRATCH] = [0; SCRATCH];
const SCRATCH: usize = 3 * 4096;

fn buf() -> *mut u8 {
    core::ptr::addr_of_mut!(BUF).cast()
}

/// Opens the region "data" and returns its handle (or the negative status).
#[no_mangle]
pub extern "C" fn open_data() -> i64 {
    let mut h = 0u32;
    let name = b"data";
    // SAFETY: `name` and `h` are live during the call.
    let rc = unsafe { region_open(name.as_ptr(), name.len(), &mut h) };
    if rc == 0 {
        i64::from(h)
    } else {
        i64::from(rc)
    }
}

/// Calls every handle-taking import with `count` handle values from a xorshift sequence seeded by `seed`,
/// plus every value in `[0, low)`, skipping `own`, and returns how many calls did NOT answer
/// `INVALID_HANDLE` or `STALE_HANDLE` (the broker must make this 0).
#[no_mangle]
pub extern "C" fn sweep(seed: i64, count: i32, low: i32, own: i32) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "bit patterns")]
    let (mut x, own) = (seed as u64 | 1, own as u32);
    let mut unexpected = 0i64;
    let mut probe = |h: u32| {
        if h == own {
            return;
        }
        let mut out = 0u32;
        // SAFETY: the buffers passed are live statics or locals of the right size.
        let codes = unsafe {
            [
                region_read(h, 0, buf(), 8),
                region_write(h, 0, buf(), 8),
                handle_info(h, buf()),
                handle_restrict(h, 1, 0, -1, &mut out),
                handle_grant(h, b"reader".as_ptr(), 6, 1, 0, -1),
                handle_revoke(h),
                handle_close(h),
            ]
        };
        unexpected += codes.iter().filter(|c| **c != INVALID_HANDLE && **c != STALE_HANDLE).count() as i64;
    };
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        probe((x >> 32) as u32);
    }
    for h in 0..u32::try_from(low).unwrap_or(0) {
        probe(h);
    }
    unexpected
}

/// `region_read` into an arbitrary guest pointer.
#[no_mangle]
pub extern "C" fn read_raw(h: i32, offset: i64, ptr: i32, len: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: not safe at all for a native program: the broker must check `ptr` and `len`, which is the
    // point of this test. In wasm the worst outcome is a refused call.
    unsafe {
        region_read(h as u32, offset, ptr as usize as *mut u8, len as usize)
    }
}

/// `region_write` from an arbitrary guest pointer.
#[no_mangle]
pub extern "C" fn write_raw(h: i32, offset: i64, ptr: i32, len: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: as in `read_raw`: the broker validates the range.
    unsafe {
        region_write(h as u32, offset, ptr as usize as *const u8, len as usize)
    }
}

/// An iovec list the host fills entry by entry ([`iov_set`]) and passes by its address ([`iov_list`]).
static mut IOVS: [[u8; 16]; 8] = [[0; 16]; 8];

/// The iovec list's address.
#[no_mangle]
pub extern "C" fn iov_list() -> i32 {
    i32::try_from(core::ptr::addr_of_mut!(IOVS) as usize).unwrap_or(-1)
}

/// Sets entry `i` (0..8) of the iovec list to any values at all.
#[no_mangle]
pub extern "C" fn iov_set(i: i32, offset: i64, ptr: i32, len: i32) -> i64 {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&offset.to_le_bytes());
    e[8..12].copy_from_slice(&ptr.to_le_bytes());
    e[12..].copy_from_slice(&len.to_le_bytes());
    // SAFETY: single-threaded guest; `i` is clamped to the list.
    unsafe { (*core::ptr::addr_of_mut!(IOVS))[usize::try_from(i).unwrap_or(0).min(7)] = e };
    0
}

/// `region_readv` with an arbitrary list pointer and count.
#[no_mangle]
pub extern "C" fn readv_raw(h: i32, list: i32, count: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: as in `read_raw`: the broker validates the list and every entry.
    unsafe {
        region_readv(h as u32, list as usize as *const u8, count as usize)
    }
}

/// `region_writev` with an arbitrary list pointer and count.
#[no_mangle]
pub extern "C" fn writev_raw(h: i32, list: i32, count: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: as in `read_raw`: the broker validates the list and every entry.
    unsafe {
        region_writev(h as u32, list as usize as *const u8, count as usize)
    }
}

/// `handle_info` to an arbitrary pointer.
#[no_mangle]
pub extern "C" fn info_raw(h: i32, ptr: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: as in `read_raw`: the broker validates the range.
    unsafe {
        handle_info(h as u32, ptr as usize as *mut u8)
    }
}

/// `region_open` with an arbitrary name pointer and length, and an arbitrary out pointer.
#[no_mangle]
pub extern "C" fn open_raw(name_ptr: i32, name_len: i32, out_ptr: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: as in `read_raw`: the broker validates the ranges.
    unsafe {
        region_open(name_ptr as usize as *const u8, name_len as usize, out_ptr as usize as *mut u32)
    }
}

/// `region_open` of a name that is not UTF-8.
#[no_mangle]
pub extern "C" fn open_not_utf8() -> i32 {
    let name = [0x64u8, 0xff, 0xfe, 0x61];
    let mut h = 0u32;
    // SAFETY: `name` and `h` are live during the call.
    unsafe { region_open(name.as_ptr(), name.len(), &mut h) }
}

/// `region_create` with raw size and mode.
#[no_mangle]
pub extern "C" fn create_raw(size: i64, mode: i32) -> i32 {
    let name = b"made-by-attacker";
    let mut h = 0u32;
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: `name` and `h` are live during the call.
    unsafe {
        region_create(name.as_ptr(), name.len(), size, mode as u32, &mut h)
    }
}

/// `handle_restrict` with raw arguments; the new handle is closed again on success.
#[no_mangle]
pub extern "C" fn restrict_raw(h: i32, rights: i32, offset: i64, len: i64) -> i32 {
    let mut out = 0u32;
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: `out` is live during the call.
    let rc = unsafe { handle_restrict(h as u32, rights as u32, offset, len, &mut out) };
    if rc == 0 {
        // SAFETY: integer-only call.
        unsafe { handle_close(out) };
    }
    rc
}

/// `handle_grant` with raw arguments, to the instance "reader".
#[no_mangle]
pub extern "C" fn grant_raw(h: i32, rights: i32, offset: i64, len: i64) -> i32 {
    let target = b"reader";
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: `target` is live during the call.
    unsafe {
        handle_grant(h as u32, target.as_ptr(), target.len(), rights as u32, offset, len)
    }
}

/// `handle_grant` with a raw target pointer.
#[no_mangle]
pub extern "C" fn grant_target_raw(h: i32, ptr: i32, len: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: as in `read_raw`: the broker validates the range.
    unsafe {
        handle_grant(h as u32, ptr as usize as *const u8, len as usize, 1, 0, -1)
    }
}

/// The size of this app's linear memory, in bytes.
#[no_mangle]
pub extern "C" fn memory_bytes() -> i64 {
    i64::try_from(core::arch::wasm32::memory_size(0) * 65536).unwrap_or(i64::MAX)
}

/// Address of the app's scratch buffer (12 KiB), for in-bounds pointer cases.
#[no_mangle]
pub extern "C" fn scratch() -> i32 {
    i32::try_from(buf() as usize).unwrap_or(-1)
}

/// Sum of the scratch buffer's first `len` bytes.
#[no_mangle]
pub extern "C" fn scratch_sum(len: i32) -> i64 {
    let len = usize::try_from(len).unwrap_or(0).min(SCRATCH);
    // SAFETY: the buffer is `SCRATCH` bytes and `len` is clamped to that; the guest is single-threaded.
    let bytes = unsafe { core::slice::from_raw_parts(buf(), len) };
    bytes.iter().map(|b| i64::from(*b)).sum()
}

static mut OUT_VERSION: u64 = 0;
static mut OUT_PAGES: u32 = 0;

/// The version the last mirror call wrote.
#[no_mangle]
pub extern "C" fn out_version() -> i64 {
    // SAFETY: single-threaded guest; a plain read of a static.
    i64::try_from(unsafe { OUT_VERSION }).unwrap_or(-1)
}

/// `mirror_acquire` with a raw buffer pointer and length (outputs to statics).
#[no_mangle]
pub extern "C" fn mirror_acquire_raw(h: i32, ptr: i32, len: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: the broker validates the range; the out-pointer is a static.
    unsafe {
        mirror_acquire(h as u32, ptr as usize as *mut u8, len as usize, core::ptr::addr_of_mut!(OUT_VERSION))
    }
}

/// `mirror_refresh` with raw arguments.
#[no_mangle]
pub extern "C" fn mirror_refresh_raw(h: i32, ptr: i32, len: i32, since: i64) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: the broker validates the range; the out-pointers are statics.
    unsafe {
        mirror_refresh(
            h as u32,
            ptr as usize as *mut u8,
            len as usize,
            since,
            core::ptr::addr_of_mut!(OUT_VERSION),
            core::ptr::addr_of_mut!(OUT_PAGES),
        )
    }
}

/// `mirror_commit` with raw arguments.
/// `mirror_hint` with raw values.
#[no_mangle]
pub extern "C" fn mirror_hint_raw(h: i32, first: i32, pages: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: the import takes plain integers.
    unsafe {
        mirror_hint(h as u32, first as u32, pages as u32)
    }
}

#[no_mangle]
pub extern "C" fn mirror_commit_raw(h: i32, ptr: i32, len: i32, base: i64) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: the broker validates the range; the out-pointers are statics.
    unsafe {
        mirror_commit(
            h as u32,
            ptr as usize as *const u8,
            len as usize,
            base,
            core::ptr::addr_of_mut!(OUT_VERSION),
            core::ptr::addr_of_mut!(OUT_PAGES),
        )
    }
}

/// `mirror_commit` with a raw out-pointer for the version.
#[no_mangle]
pub extern "C" fn mirror_commit_out_raw(h: i32, ptr: i32, len: i32, out: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: the broker validates every range.
    unsafe {
        mirror_commit(
            h as u32,
            ptr as usize as *const u8,
            len as usize,
            0,
            out as usize as *mut u64,
            core::ptr::addr_of_mut!(OUT_PAGES),
        )
    }
}

/// Opens the region named by the first `len` bytes of the scratch buffer; returns the handle or status.
#[no_mangle]
pub extern "C" fn open_scratch(len: i32) -> i64 {
    let mut h = 0u32;
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: the broker validates the range; `h` is live.
    let rc = unsafe { region_open(buf(), len as usize, &mut h) };
    if rc == 0 {
        i64::from(h)
    } else {
        i64::from(rc)
    }
}

/// Writes `bytes` (up to 8, little-endian packed in `v`) to the scratch buffer at `at`.
#[no_mangle]
pub extern "C" fn scratch_put(at: i32, v: i64, n: i32) -> i32 {
    let (at, n) = (usize::try_from(at).unwrap_or(0), usize::try_from(n).unwrap_or(0).min(8));
    if at + n > SCRATCH {
        return -1;
    }
    let bytes = v.to_le_bytes();
    for (i, b) in bytes.iter().take(n).enumerate() {
        // SAFETY: `at + n <= SCRATCH` was checked; single-threaded guest.
        unsafe { buf().add(at + i).write(*b) };
    }
    0
}

/// `handle_restrict` to `rights` over the whole range, keeping the new handle; returns it or the status.
#[no_mangle]
pub extern "C" fn restrict_raw_keep(h: i32, rights: i32) -> i64 {
    restrict_range_keep(h, rights, 0, -1)
}

/// `handle_restrict` to `rights` over `[offset, offset + len)` of the handle's range, keeping the new
/// handle; returns it or the status.
#[no_mangle]
pub extern "C" fn restrict_range_keep(h: i32, rights: i32, offset: i64, len: i64) -> i64 {
    let mut out = 0u32;
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: `out` is live during the call.
    let rc = unsafe { handle_restrict(h as u32, rights as u32, offset, len, &mut out) };
    if rc == 0 {
        i64::from(out)
    } else {
        i64::from(rc)
    }
}

/// `handle_close` of a raw value.
#[no_mangle]
pub extern "C" fn close_raw(h: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this app")]
    // SAFETY: integer-only call.
    unsafe {
        handle_close(h as u32)
    }
}
