//! An app that misbehaves at the runtime level: it spins forever, traps, or grows memory without end.
//! The broker must stop it with a clear error and keep serving every other instance.

#![no_main]

use std::hint::black_box;

/// Spins forever; only epoch interruption ends this call.
#[no_mangle]
pub extern "C" fn spin() -> i64 {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Executes `unreachable`.
#[no_mangle]
pub extern "C" fn trap() -> i64 {
    core::arch::wasm32::unreachable()
}

/// Grows linear memory by `pages` 64 KiB pages; returns the previous size in pages, or -1 if refused.
#[no_mangle]
pub extern "C" fn grow(pages: i32) -> i64 {
    let delta = usize::try_from(pages).unwrap_or(0);
    let prev = core::arch::wasm32::memory_grow(0, delta);
    if prev == usize::MAX {
        -1
    } else {
        i64::try_from(prev).unwrap_or(i64::MAX)
    }
}

/// Grows memory one page at a time until refused; returns the number of pages gained.
#[no_mangle]
pub extern "C" fn bomb() -> i64 {
    let mut gained = 0i64;
    while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {
        gained += 1;
    }
    gained
}

/// A cheap call that shows the instance still answers.
#[no_mangle]
pub extern "C" fn ping() -> i64 {
    7
}

/// Writes 1 at offset 0 of the region "flag" (so the host knows the loop has begun), then spins forever.
#[no_mangle]
pub extern "C" fn spin_signal() -> i64 {
    if let Ok(flag) = broker_guest::Region::open("flag") {
        let _ = flag.store(0, &1u64);
        let _ = flag.into_raw();
    }
    spin()
}

/// Writes 1 at word `slot` of the region "flag" (so the host knows this instance's loop has begun),
/// then spins forever.
#[no_mangle]
pub extern "C" fn spin_signal_at(slot: i32) -> i64 {
    signal(slot);
    spin()
}

/// Writes 1 at word `slot` of the region "flag", then waits (`region_wait`, up to a second at a time)
/// until word 0 of "flag" is no longer 0; returns how many waits timed out, or -1 if the region cannot
/// be opened.
#[no_mangle]
pub extern "C" fn wait_signal_at(slot: i32) -> i64 {
    let Ok(flag) = broker_guest::Region::open("flag") else { return -1 };
    signal(slot);
    let mut timeouts = 0;
    loop {
        match broker_guest::sys::region_wait(flag.raw(), 0, 0, 1000) {
            0 => {}
            rc if rc == broker_guest::Status::TimedOut.code() => timeouts += 1,
            rc => return i64::from(rc),
        }
        if flag.load::<u64>(0).is_ok_and(|v| v != 0) {
            return timeouts;
        }
    }
}

/// Writes 1 at word `slot` (`slot` >= 1) of the region "flag".
fn signal(slot: i32) {
    let offset = u64::try_from(slot).unwrap_or(0) * 8;
    if let Ok(flag) = broker_guest::Region::open("flag") {
        let _ = flag.store(offset, &1u64);
        let _ = flag.into_raw();
    }
}

/// Writes 1 at word `slot` of the region "flag", then waits once (`region_wait` for up to a second)
/// while word 0 is 0; returns the wait's status (0: woken or the word changed, negative: an error, such
/// as `BROKER_ERR_TIMED_OUT`), or -1 if the region cannot be opened.
#[no_mangle]
pub extern "C" fn wait_once_at(slot: i32) -> i64 {
    let Ok(flag) = broker_guest::Region::open("flag") else { return -1 };
    signal(slot);
    i64::from(broker_guest::sys::region_wait(flag.raw(), 0, 0, 1000))
}

/// Wakes every call parked on the region "flag" (`region_notify`); returns the status.
#[no_mangle]
pub extern "C" fn notify() -> i64 {
    let Ok(flag) = broker_guest::Region::open("flag") else { return -1 };
    i64::from(broker_guest::sys::region_notify(flag.raw(), 0))
}
