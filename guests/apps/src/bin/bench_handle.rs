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

/// `n` gathers of `k` (at most 64) 8-byte fields 64 bytes apart through handle `h`: one `region_read`
/// per field if `vectored` is 0, one `region_readv` for all of them otherwise.
#[no_mangle]
pub extern "C" fn gather_loop(h: i32, k: i32, vectored: i32, n: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "handles are u32 bit patterns carried in an i32")]
    let region = Region::from_raw(h as u32);
    let k = usize::try_from(k).unwrap_or(0).min(64);
    let mut fields = [[0u8; 8]; 64];
    let mut rc = 0;
    for _ in 0..n {
        let r = if vectored == 0 {
            fields[..k].iter_mut().enumerate().try_for_each(|(i, f)| region.read(i as u64 * 64, f))
        } else {
            let mut reads: [(u64, &mut [u8]); 64] = core::array::from_fn(|_| (0, &mut [][..]));
            for (i, (slot, f)) in reads.iter_mut().zip(fields.iter_mut()).enumerate().take(k) {
                *slot = (i as u64 * 64, &mut f[..]);
            }
            region.read_vectored(&mut reads[..k])
        };
        if let Err(e) = r {
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
