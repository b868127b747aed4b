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
