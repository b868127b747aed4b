//! Benchmark loops run inside the guest, so the measured cost is the host call itself and not the
//! host-to-guest entry: `n` iterations of a bare import, a read, or a write of `len` bytes.

#![no_main]

use broker_guest::Region;

static mut BUF: [u8; 1 << 20] = [0; 1 << 20];

fn buf(len: usize) -> &'static mut [u8] {
    // SAFETY: the guest is single-threaded and no other reference to BUF is alive during a call.
    let all = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let len = len.min(all.len());
    &mut all[..len]
}

/// `n` calls of the no-op import.
#[no_mangle]
pub extern "C" fn nop_loop(n: i32) -> i32 {
    for _ in 0..n {
        if broker_guest::nop().is_err() {
            return -1;
        }
    }
    0
}

/// `n` reads of `len` bytes at offset 0 through handle `h`.
#[no_mangle]
pub extern "C" fn read_loop(h: i32, len: i32, n: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "handles are u32 bit patterns carried in an i32")]
    let region = Region::from_raw(h as u32);
    let b = buf(usize::try_from(len).unwrap_or(0));
    let mut rc = 0;
    for _ in 0..n {
        if let Err(e) = region.read(0, b) {
            rc = e.code();
            break;
        }
    }
    let _ = region.into_raw();
    rc
}

/// `n` writes of `len` bytes at offset 0 through handle `h`.
#[no_mangle]
pub extern "C" fn write_loop(h: i32, len: i32, n: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "handles are u32 bit patterns carried in an i32")]
    let region = Region::from_raw(h as u32);
    let b = buf(usize::try_from(len).unwrap_or(0));
    let mut rc = 0;
    for _ in 0..n {
        if let Err(e) = region.write(0, b) {
            rc = e.code();
            break;
        }
    }
    let _ = region.into_raw();
    rc
}

/// Opens the region "bench" and returns its handle.
#[no_mangle]
pub extern "C" fn open_bench() -> i64 {
    match Region::open("bench") {
        Ok(r) => i64::from(r.into_raw()),
        Err(e) => i64::from(e.code()),
    }
}
