//! An app that uses shared windows: it maps regions read-write, reads and writes them with plain
//! (by-value and copying) and atomic accesses, streams through an SPSC ring, and drives the raw map ABI
//! with bad inputs (read-only windows, and mode-agnostic code through `Region::view`, are
//! `conformance_app`'s).
//! Windows live in slots the host refers to by index; exports return a non-negative result or a
//! negative status.

#![no_main]

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use broker_guest::{Error, ReadWrite, Region, SharedWindow, Wait};

const REGIONS: &[&str] = &["data", "alpha/data", "flag", "ring", "alpha/ring", "alpha/leakcheck-6d1f"];

thread_local! {
    static SLOTS: RefCell<Vec<Option<SharedWindow<'static, ReadWrite>>>> = const { RefCell::new(Vec::new()) };
}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

fn open(sel: i32) -> Result<&'static Region, Error> {
    let name = usize::try_from(sel).ok().and_then(|i| REGIONS.get(i)).ok_or(Error::InvalidArgument)?;
    Ok(Box::leak(Box::new(Region::open(name)?)))
}

fn with_slot(slot: i32, f: impl FnOnce(&SharedWindow<'static, ReadWrite>) -> Result<u64, Error>) -> i64 {
    SLOTS.with_borrow(|s| {
        let w = usize::try_from(slot)
            .ok()
            .and_then(|i| s.get(i))
            .and_then(Option::as_ref)
            .ok_or(Error::InvalidArgument);
        ret(w.and_then(f))
    })
}

fn off(o: i64) -> Result<usize, Error> {
    usize::try_from(o).map_err(|_| Error::OutOfBounds)
}

/// Maps region `sel` read-write, returns the slot.
#[no_mangle]
pub extern "C" fn map(sel: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let window = open(sel)?.map_mut()?;
        Ok(SLOTS.with_borrow_mut(|s| {
            s.push(Some(window));
            u64::try_from(s.len() - 1).unwrap_or(0)
        }))
    };
    ret(run())
}

/// Unmaps (drops) the window in `slot`.
#[no_mangle]
pub extern "C" fn unmap(slot: i32) -> i64 {
    SLOTS.with_borrow_mut(|s| {
        match usize::try_from(slot).ok().and_then(|i| s.get_mut(i)).and_then(Option::take) {
            Some(_) => 0,
            None => i64::from(Error::InvalidArgument.code()),
        }
    })
}

/// Atomic load of the u64 at `o`.
#[no_mangle]
pub extern "C" fn load(slot: i32, o: i64) -> i64 {
    with_slot(slot, |w| Ok(w.atomic_u64(off(o)?)?.load(Ordering::SeqCst) & (u64::MAX >> 1)))
}

/// Atomic store to the u64 at `o`.
#[no_mangle]
pub extern "C" fn store(slot: i32, o: i64, v: i64) -> i64 {
    with_slot(slot, |w| {
        w.atomic_u64(off(o)?)?.store(u64::try_from(v).unwrap_or(0), Ordering::SeqCst);
        Ok(0)
    })
}

/// A plain (non-atomic) byte store through `SharedWindow::store`.
#[no_mangle]
pub extern "C" fn poke(slot: i32, o: i64, byte: i32) -> i64 {
    let b = u8::try_from(byte & 0xff).unwrap_or(0);
    with_slot(slot, |w| w.store(off(o)?, &b).map(|()| 0))
}

/// `n` atomic increments of the u64 at `o`.
#[no_mangle]
pub extern "C" fn add_many(slot: i32, o: i64, n: i32) -> i64 {
    with_slot(slot, |w| {
        let a = w.atomic_u64(off(o)?)?;
        for _ in 0..n {
            a.fetch_add(1, Ordering::SeqCst);
        }
        Ok(0)
    })
}

/// Sum of every byte of the window, copied out a page at a time (the bytes may change meanwhile).
#[no_mangle]
pub extern "C" fn sum(slot: i32) -> i64 {
    with_slot(slot, |w| {
        let mut page = [0u8; 4096];
        let mut sum = 0u64;
        for at in (0..w.len()).step_by(page.len()) {
            let n = (w.len() - at).min(page.len());
            let chunk = &mut page[..n];
            w.read_into(at, chunk)?;
            sum += chunk.iter().map(|b| u64::from(*b)).sum::<u64>();
        }
        Ok(sum)
    })
}

/// Sets the u64 at 8 to 1 (so the host knows the loop started), then reads the u64 at 0 forever.
#[no_mangle]
pub extern "C" fn watch_forever(slot: i32) -> i64 {
    with_slot(slot, |w| {
        w.atomic_u64(8)?.store(1, Ordering::SeqCst);
        let a = w.atomic_u64(0)?;
        loop {
            std::hint::black_box(a.load(Ordering::Relaxed));
        }
    })
}

/// Grows memory by `pages` wasm pages; returns the old size in pages or -1.
#[no_mangle]
pub extern "C" fn grow(pages: i32) -> i64 {
    let prev = core::arch::wasm32::memory_grow(0, usize::try_from(pages).unwrap_or(0));
    if prev == usize::MAX {
        -1
    } else {
        i64::try_from(prev).unwrap_or(-1)
    }
}

/// Maps and unmaps region `sel` `n` times.
#[no_mangle]
pub extern "C" fn cycle(sel: i32, n: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let region = open(sel)?;
        for _ in 0..n {
            let w = region.map_mut()?;
            w.atomic_u64(0)?.fetch_add(1, Ordering::SeqCst);
        }
        Ok(0)
    };
    ret(run())
}

/// Producer: pushes `count` messages of `size` bytes (byte `i` of message `k` is `k + i`) into the ring
/// over region `sel`; returns the number pushed.
#[no_mangle]
pub extern "C" fn produce(sel: i32, count: i32, size: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let ring = open(sel)?.map_mut()?.into_ring()?;
        let size = usize::try_from(size).map_err(|_| Error::InvalidArgument)?;
        let mut msg = vec![0u8; size];
        for k in 0..count {
            for (i, b) in msg.iter_mut().enumerate() {
                *b = (k as u8).wrapping_add(i as u8);
            }
            while !ring.push(&msg)? {
                std::hint::spin_loop();
            }
        }
        Ok(u64::try_from(count).unwrap_or(0))
    };
    ret(run())
}

/// Consumer: pops `count` messages from the ring over region `sel`, parking (`park != 0`) or polling,
/// checks every byte, and returns the number received (or -1000 on a corrupt message).
#[no_mangle]
pub extern "C" fn consume(sel: i32, count: i32, park: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let ring = open(sel)?.map_mut()?.into_ring()?;
        let wait = if park != 0 { Wait::Park(100) } else { Wait::Poll };
        let mut buf = vec![0u8; 4096];
        for k in 0..count {
            let n = ring.pop_wait(&mut buf, wait)?;
            let ok = buf[..n].iter().enumerate().all(|(i, b)| *b == (k as u8).wrapping_add(i as u8));
            if !ok {
                return Ok(u64::MAX);
            }
        }
        Ok(u64::try_from(count).unwrap_or(0))
    };
    match run() {
        Ok(u64::MAX) => -1000,
        r => ret(r),
    }
}

use broker_guest::sys::raw::{region_map as raw_region_map, region_unmap as raw_region_unmap};

/// Opens region `sel` and returns the raw handle (kept open).
#[no_mangle]
pub extern "C" fn open_raw(sel: i32) -> i64 {
    ret(open(sel).map(|r| u64::from(r.raw())))
}

/// Allocates `pages` host pages aligned to 4096 (never freed) and returns the address.
#[no_mangle]
pub extern "C" fn alloc_pages(pages: i32) -> i64 {
    let len = usize::try_from(pages).unwrap_or(1).max(1) * 4096;
    let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
    // SAFETY: non-zero size; the memory is deliberately leaked for raw map tests.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    i64::try_from(p as usize).unwrap_or(-1)
}

/// `region_map` with raw arguments.
#[no_mangle]
pub extern "C" fn map_raw(h: i32, ptr: i32, len: i32, flags: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this export")]
    // SAFETY: the target memory is leaked test memory (or invalid, which the broker must refuse).
    unsafe {
        raw_region_map(h as u32, ptr as usize as *mut u8, len as usize, flags as u32)
    }
}

/// `region_unmap` with raw arguments.
#[no_mangle]
pub extern "C" fn unmap_raw(h: i32, ptr: i32) -> i32 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns are the point of this export")]
    // SAFETY: as in `map_raw`.
    unsafe {
        raw_region_unmap(h as u32, ptr as usize as *mut u8)
    }
}

/// Reads byte `i` of the app's memory (to look at unmapped or revoked pages).
#[no_mangle]
pub extern "C" fn peek(addr: i32) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "raw address")]
    // SAFETY: reading arbitrary own memory; out-of-range or PROT_NONE traps, which tests expect.
    i64::from(unsafe { (addr as usize as *const u8).read_volatile() })
}

/// `handle_restrict` to `rights` over `[offset, offset+len)`; returns the new handle or the status.
#[no_mangle]
pub extern "C" fn restrict(h: i32, rights: i32, offset: i64, len: i64) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns")]
    let r = Region::from_raw(h as u32);
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns")]
    let out = r.restrict(
        broker_guest::Rights::from_bits_retain(rights as u32),
        u64::try_from(offset).unwrap_or(u64::MAX),
        u64::try_from(len).ok(),
    );
    let _ = r.into_raw();
    ret(out.map(|n| u64::from(n.into_raw())))
}

/// Closes a raw handle.
#[no_mangle]
pub extern "C" fn close(h: i32) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "raw bit patterns")]
    ret(Region::from_raw(h as u32).close().map(|()| 0))
}
