//! The mixed-trust scenario's untrusted app: it attacks the trusted group with forged handles,
//! out-of-bounds requests and a flood of writes to the inbox region the trusted consumer watches.
//!
//! Every attack that the broker refuses is counted and returned, so the host can report how many were
//! refused; an attack that succeeds is a breach (`breaches()` must stay 0). The forged handles and wild
//! pointers go through the raw imports, so no library code filters them.

#![no_main]

use std::cell::Cell;

use broker_guest::{Error, Region};

#[link(wasm_import_module = "broker_v1")]
extern "C" {
    fn region_read(handle: u32, offset: i64, dst: *mut u8, len: usize) -> i32;
    fn region_write(handle: u32, offset: i64, src: *const u8, len: usize) -> i32;
}

thread_local! {
    static INBOX: Cell<u32> = const { Cell::new(0) };
    static BREACHES: Cell<u64> = const { Cell::new(0) };
}

static mut BUF: [u8; 64] = [0; 64];

fn buf() -> *mut u8 {
    core::ptr::addr_of_mut!(BUF).cast()
}

/// Records the outcome of one attack: refused (a non-zero status) or a breach.
fn refused(code: i32) -> u64 {
    if code == 0 {
        BREACHES.set(BREACHES.get() + 1);
        0
    } else {
        1
    }
}

fn inbox() -> Result<u32, Error> {
    if INBOX.get() == 0 {
        INBOX.set(Region::open("inbox")?.into_raw());
    }
    Ok(INBOX.get())
}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

/// `n` reads and writes through forged handle values (xorshift seeded by `seed`), plus attempts to open
/// the trusted group's regions by name; returns how many were refused.
#[no_mangle]
pub extern "C" fn forge(seed: i64, n: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let own = inbox()?;
        #[allow(clippy::cast_sign_loss, reason = "a seed's bits")]
        let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut count = 0;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            #[allow(clippy::cast_possible_truncation, reason = "the high half of the state is the handle")]
            let mut h = (x >> 32) as u32;
            if h == own {
                // Never the attacker's own handle: every attempt must be a forgery, so the host can count them.
                h = h.wrapping_add(1);
            }
            // SAFETY: BUF is a live 64-byte static and the guest is single-threaded.
            count += refused(unsafe { region_read(h, 0, buf(), 8) });
            // SAFETY: as above.
            count += refused(unsafe { region_write(h, 0, buf(), 8) });
        }
        for name in ["producers/stage1", "transformers/stage2", "consumers/inbox", "producers/../stage1"] {
            count += refused(Region::open(name).map_or_else(Error::code, |r| {
                let _ = r.close();
                0
            }));
        }
        Ok(count)
    };
    ret(run())
}

/// `n` rounds of out-of-bounds requests on the attacker's own inbox: offsets past the end, negative and
/// overflowing offsets, huge lengths and pointers outside linear memory; returns how many were refused.
#[no_mangle]
pub extern "C" fn out_of_bounds(n: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let h = inbox()?;
        let region = Region::from_raw(h);
        let len = region.len();
        // Borrowed, not owned: the handle stays open for the next round.
        let _ = region.into_raw();
        let size = i64::try_from(len?).unwrap_or(i64::MAX);
        let mut count = 0;
        for _ in 0..n {
            let attempts: [(i64, usize, *mut u8); 6] = [
                (size, 8, buf()),
                (size - 4, 8, buf()),
                (-8, 8, buf()),
                (i64::MAX, 8, buf()),
                (0, usize::MAX, buf()),
                (0, 8, 0xFFFF_FFF0usize as *mut u8),
            ];
            for (offset, len, ptr) in attempts {
                // SAFETY: the broker checks every pointer against linear memory; a wild one is refused,
                // never dereferenced by this guest.
                count += refused(unsafe { region_read(h, offset, ptr, len) });
                // SAFETY: as above.
                count += refused(unsafe { region_write(h, offset, ptr, len) });
            }
        }
        Ok(count)
    };
    ret(run())
}

/// Writes the inbox `n` times (each write is a watch event for the trusted consumer); returns `n`.
#[no_mangle]
pub extern "C" fn flood(n: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let h = inbox()?;
        let mut written = 0;
        for k in 0..n {
            let v = i64::from(k).to_le_bytes();
            // SAFETY: `v` is a live local of 8 bytes.
            let rc = unsafe { region_write(h, 0, v.as_ptr(), v.len()) };
            Error::check(rc)?;
            written += 1;
        }
        Ok(written)
    };
    ret(run())
}

/// Attacks the broker did not refuse (must be 0).
#[no_mangle]
pub extern "C" fn breaches() -> i64 {
    i64::try_from(BREACHES.get()).unwrap_or(i64::MAX)
}
