//! The built-in scenarios' untrusted app.
//!
//! In mixed-trust it attacks the trusted group with forged handles, out-of-bounds requests and a flood
//! of writes to the inbox region the trusted consumer watches. Every attack that the broker refuses is
//! counted and returned, so the host can report how many were refused; an attack that succeeds is a
//! breach (`breaches()` must stay 0). The forged handles and wild pointers go through the raw imports,
//! so no library code filters them.
//!
//! In noisy-neighbor it attacks the machine rather than the other tenants' data: `burn` spins in pure
//! wasm (no host call, so only preemption at epoch ticks can take its worker back), and
//! `grab_trampolines` registers native toolkit callbacks until the broker refuses one.

#![no_main]

use std::cell::{Cell, RefCell};

use broker_guest::{ui_callback, ui_code, Error, Mode, Object, Region};

use broker_guest::sys::raw::{region_read, region_write};

thread_local! {
    static INBOX: Cell<u32> = const { Cell::new(0) };
    static BREACHES: Cell<u64> = const { Cell::new(0) };
    /// Toolkit objects whose callbacks hold the trampolines `grab_trampolines` got; kept for the life
    /// of the instance, so the trampolines stay taken.
    static GRABBED: RefCell<Vec<Object>> = const { RefCell::new(Vec::new()) };
}

/// The most callbacks `grab_trampolines` tries to register: far above any share of the process's
/// 64-trampoline pool, so only a refusal ends the loop on a working broker, yet a bound on a broken one.
const MAX_GRAB: usize = 1024;

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

/// Burns CPU in pure wasm for `millions` million rounds of a multiply-xorshift chain (about a
/// nanosecond a round), with no host call: a spinner that only preemption at epoch ticks can take a
/// worker back from. Returns the chain's final state (non-negative), so the loop cannot be optimised
/// away.
#[no_mangle]
pub extern "C" fn burn(millions: i32) -> i64 {
    let rounds = u64::try_from(millions).unwrap_or(0).saturating_mul(1_000_000);
    let mut x = std::hint::black_box(0x9E37_79B9_7F4A_7C15u64);
    for _ in 0..rounds {
        x = x.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(0x1405_7B7E_F767_814F);
        x ^= x >> 29;
    }
    i64::try_from(x >> 1).unwrap_or(0)
}

ui_callback!(fn on_grabbed(_user_data, _event) {});

/// Registers native toolkit callbacks, one new object each, until the broker refuses one with
/// `QUOTA_EXCEEDED` (the tenant's share of the trampoline pool, or the pool itself, is used up); keeps
/// every registration, so its trampolines stay taken, and returns how many this app holds. Any other
/// refusal is returned as its status.
#[no_mangle]
pub extern "C" fn grab_trampolines() -> i64 {
    let run = || -> Result<u64, Error> {
        for _ in 0..MAX_GRAB {
            let object = Object::create(None, Mode::Handle)?;
            match object.on_event(ui_code::EVENT_ALL, on_grabbed, 0) {
                Ok(()) => GRABBED.with_borrow_mut(|held| held.push(object)),
                Err(e) => {
                    // An object nobody listens to holds no trampoline: give its region back.
                    let _ = object.delete();
                    if e == Error::QuotaExceeded {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        Ok(u64::try_from(GRABBED.with_borrow(Vec::len)).unwrap_or(u64::MAX))
    };
    ret(run())
}
