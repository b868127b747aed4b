//! A well-behaved app that drives the handle-mode API through `broker-guest`, one export per operation.
//!
//! Names of regions and target instances are picked from the fixed tables below by index, so the host
//! can drive every case with integer arguments. Exports return `i64`: a non-negative result, or a negative
//! ABI status code.

#![no_main]

use broker_guest::{Error, Mode, Region, Rights};

/// Region names, by the index the host passes.
const REGIONS: &[&str] =
    &["data", "alpha/data", "beta/data", "missing", "", "scratch", "alpha/secret", "beta/other"];
/// Instance names, by the index the host passes.
const TARGETS: &[&str] =
    &["reader", "beta/reader", "alpha/writer", "nobody", "alpha/reader", "writer", "beta/relay"];

fn name(table: &[&'static str], i: i32) -> Result<&'static str, Error> {
    usize::try_from(i).ok().and_then(|i| table.get(i).copied()).ok_or(Error::InvalidArgument)
}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

fn status(r: Result<(), Error>) -> i64 {
    ret(r.map(|()| 0))
}

/// Borrows a raw handle without closing it when done.
fn with<T>(h: i32, f: impl FnOnce(&Region) -> T) -> T {
    #[allow(clippy::cast_sign_loss, reason = "handles are u32 bit patterns carried in an i32")]
    let region = Region::from_raw(h as u32);
    let out = f(&region);
    let _ = region.into_raw();
    out
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn opt_len(len: i64) -> Option<u64> {
    (len >= 0).then(|| u(len))
}

/// Writes `[1, 2, 3, 4]` at 10 and `[5, 6]` at 20 of handle `h` in one call, reads both back in one
/// call, and returns their sum (21), or the status.
#[no_mangle]
pub extern "C" fn vectored(h: i32) -> i64 {
    with(h, |r| {
        r.write_vectored(&[(10, &[1, 2, 3, 4]), (20, &[5, 6])])?;
        let (mut a, mut b) = ([0u8; 4], [0u8; 2]);
        r.read_vectored(&mut [(10, &mut a), (20, &mut b)])?;
        Ok(a.iter().chain(&b).map(|&x| u64::from(x)).sum())
    })
    .map_or_else(|e: Error| i64::from(e.code()), |v: u64| i64::try_from(v).unwrap_or(i64::MAX))
}

#[no_mangle]
pub extern "C" fn ping() -> i64 {
    i64::from(broker_guest::abi_version())
}

#[no_mangle]
pub extern "C" fn open(sel: i32) -> i64 {
    ret(name(REGIONS, sel).and_then(Region::open).map(|r| u64::from(r.into_raw())))
}

#[no_mangle]
pub extern "C" fn open_long_name() -> i64 {
    let long = "x".repeat(300);
    ret(Region::open(&long).map(|r| u64::from(r.into_raw())))
}

#[no_mangle]
pub extern "C" fn create(sel: i32, size: i64, mode: i32) -> i64 {
    let mode = match mode {
        0 => Mode::Handle,
        1 => Mode::Mirror,
        _ => Mode::Shared,
    };
    ret(name(REGIONS, sel).and_then(|n| Region::create(n, u(size), mode)).map(|r| u64::from(r.into_raw())))
}

#[no_mangle]
pub extern "C" fn close(h: i32) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "handles are u32 bit patterns carried in an i32")]
    status(Region::from_raw(h as u32).close())
}

#[no_mangle]
pub extern "C" fn info_len(h: i32) -> i64 {
    with(h, |r| ret(r.info().map(|i| i.len)))
}

#[no_mangle]
pub extern "C" fn info_rights(h: i32) -> i64 {
    with(h, |r| ret(r.info().map(|i| u64::from(i.rights.bits()))))
}

#[no_mangle]
pub extern "C" fn info_version(h: i32) -> i64 {
    with(h, |r| ret(r.info().map(|i| i.version)))
}

#[no_mangle]
pub extern "C" fn store_u64(h: i32, off: i64, v: i64) -> i64 {
    with(h, |r| status(r.store::<u64>(u(off), &u(v))))
}

#[no_mangle]
pub extern "C" fn load_u64(h: i32, off: i64) -> i64 {
    with(h, |r| ret(r.load::<u64>(u(off)).map(|v| v & (u64::MAX >> 1))))
}

#[no_mangle]
pub extern "C" fn restrict(h: i32, rights: i32, off: i64, len: i64) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "rights are a bit pattern")]
    let rights = Rights::from_bits_retain(rights as u32);
    with(h, |r| ret(r.restrict(rights, u(off), opt_len(len)).map(|r| u64::from(r.into_raw()))))
}

#[no_mangle]
pub extern "C" fn grant(h: i32, target: i32, rights: i32, off: i64, len: i64) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "rights are a bit pattern")]
    let rights = Rights::from_bits_retain(rights as u32);
    with(h, |r| status(name(TARGETS, target).and_then(|t| r.grant(t, rights, u(off), opt_len(len)))))
}

/// Opens a region, writes a counter value, reads it back and closes, `n` times: a churn of handles.
#[no_mangle]
pub extern "C" fn churn(sel: i32, n: i32) -> i64 {
    let Ok(region_name) = name(REGIONS, sel) else { return i64::from(Error::InvalidArgument.code()) };
    for i in 0..n {
        let r = match Region::open(region_name) {
            Ok(r) => r,
            Err(e) => return i64::from(e.code()),
        };
        let v = u64::try_from(i).unwrap_or(0);
        if let Err(e) = r.store(0, &v) {
            return i64::from(e.code());
        }
        match r.load::<u64>(0) {
            Ok(got) if got == v => {}
            Ok(_) => return i64::from(Error::Internal.code()),
            Err(e) => return i64::from(e.code()),
        }
    }
    i64::from(n)
}

/// Reads `len` bytes at 0 in one call; returns their common value, -1000 if they differ (a torn read),
/// or a negative status.
#[no_mangle]
pub extern "C" fn uniform_read(h: i32, len: i32) -> i64 {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    with(h, |r| match r.read(0, &mut buf) {
        Ok(()) => {
            let first = buf.first().copied().unwrap_or(0);
            if buf.iter().all(|b| *b == first) {
                i64::from(first)
            } else {
                -1000
            }
        }
        Err(e) => i64::from(e.code()),
    })
}
