//! Benchmark loops for mirror mode, run inside the guest: acquire, refresh of an unchanged region,
//! commit with a given number of dirty pages, and commit followed by a second mirror's refresh.

#![no_main]

use std::cell::RefCell;

use broker_guest::{Mirror, Region};

thread_local! {
    static MIRRORS: RefCell<Vec<Mirror<'static>>> = const { RefCell::new(Vec::new()) };
}

const PAGE: usize = broker_guest::PAGE_SIZE as usize;

/// Opens "bench" twice and acquires two mirrors (A writes, B reads); returns 0 or a status.
#[no_mangle]
pub extern "C" fn setup() -> i32 {
    let run = || -> broker_guest::Result<()> {
        for _ in 0..2 {
            let region: &'static Region = Box::leak(Box::new(Region::open("bench")?));
            let m = region.mirror()?;
            MIRRORS.with_borrow_mut(|v| v.push(m));
        }
        Ok(())
    };
    run().map_or_else(|e| e.code(), |()| 0)
}

fn with<T>(f: impl FnOnce(&mut [Mirror<'static>]) -> T) -> T {
    MIRRORS.with_borrow_mut(|v| f(v))
}

/// `n` full acquires (discard re-copies everything).
#[no_mangle]
pub extern "C" fn acquire_loop(n: i32) -> i32 {
    with(|m| {
        for _ in 0..n {
            if let Err(e) = m[1].discard() {
                return e.code();
            }
        }
        0
    })
}

/// `n` refreshes of an unchanged region.
#[no_mangle]
pub extern "C" fn refresh_loop(n: i32) -> i32 {
    with(|m| {
        for _ in 0..n {
            match m[1].refresh() {
                Ok(0) => {}
                Ok(_) => return -100,
                Err(e) => return e.code(),
            }
        }
        0
    })
}

fn dirty(m: &mut Mirror<'static>, pages: usize, round: i32) {
    let stamp = u8::try_from(round & 0xff).unwrap_or(0).wrapping_add(1);
    let total = m.len().div_ceil(PAGE);
    for p in 0..pages.min(total) {
        // Spread the dirty pages over the region.
        let at = (p * total / pages.max(1)) * PAGE;
        if let Some(b) = m.get_mut(at) {
            *b = b.wrapping_add(stamp);
        }
    }
}

/// `n` commits of mirror A with `pages` dirty pages each.
#[no_mangle]
pub extern "C" fn commit_loop(pages: i32, n: i32) -> i32 {
    let pages = usize::try_from(pages).unwrap_or(0);
    with(|m| {
        for i in 0..n {
            dirty(&mut m[0], pages, i);
            if let Err(e) = m[0].commit() {
                return e.code();
            }
        }
        0
    })
}

/// `n` rounds of: commit A with `pages` dirty pages, then refresh B (which copies those pages).
#[no_mangle]
pub extern "C" fn commit_refresh_loop(pages: i32, n: i32) -> i32 {
    let pages = usize::try_from(pages).unwrap_or(0);
    with(|m| {
        for i in 0..n {
            dirty(&mut m[0], pages, i);
            if let Err(e) = m[0].commit() {
                return e.code();
            }
            if let Err(e) = m[1].refresh() {
                return e.code();
            }
        }
        0
    })
}
