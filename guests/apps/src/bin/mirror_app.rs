//! An app that works on mirrors: it acquires a copy of a region, edits it with plain slices, refreshes
//! and commits (mode-agnostic code through `Region::view` is `conformance_app`'s). Mirrors live in
//! slots the host refers to by index; exports return a non-negative result or a negative status.

#![no_main]

use std::cell::RefCell;

use broker_guest::{Error, Mirror, Region};

/// Region names, by the index the host passes.
const REGIONS: &[&str] = &["data", "alpha/data", "beta/data", "other"];

thread_local! {
    static SLOTS: RefCell<Vec<Mirror<'static>>> = const { RefCell::new(Vec::new()) };
}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

fn open(sel: i32) -> Result<&'static Region, Error> {
    let name = usize::try_from(sel).ok().and_then(|i| REGIONS.get(i)).ok_or(Error::InvalidArgument)?;
    // Mirrors borrow their region; the app keeps both for its whole life.
    Ok(Box::leak(Box::new(Region::open(name)?)))
}

fn with_slot(slot: i32, f: impl FnOnce(&mut Mirror<'static>) -> Result<u64, Error>) -> i64 {
    SLOTS.with_borrow_mut(|slots| {
        let m = usize::try_from(slot).ok().and_then(|i| slots.get_mut(i)).ok_or(Error::InvalidArgument);
        ret(m.and_then(f))
    })
}

fn offset(off: i64) -> Result<usize, Error> {
    usize::try_from(off).map_err(|_| Error::OutOfBounds)
}

/// Opens region `sel` and acquires a mirror of it; returns the slot.
#[no_mangle]
pub extern "C" fn acquire(sel: i32) -> i64 {
    ret(open(sel).and_then(Region::mirror).map(|m| {
        SLOTS.with_borrow_mut(|s| {
            s.push(m);
            u64::try_from(s.len() - 1).unwrap_or(0)
        })
    }))
}

#[no_mangle]
pub extern "C" fn version(slot: i32) -> i64 {
    with_slot(slot, |m| Ok(m.version()))
}

#[no_mangle]
pub extern "C" fn refresh(slot: i32) -> i64 {
    with_slot(slot, |m| m.refresh().map(u64::from))
}

#[no_mangle]
pub extern "C" fn commit(slot: i32) -> i64 {
    with_slot(slot, |m| m.commit().map(u64::from))
}

#[no_mangle]
pub extern "C" fn discard(slot: i32) -> i64 {
    with_slot(slot, |m| m.discard().map(|()| 0))
}

#[no_mangle]
pub extern "C" fn load(slot: i32, off: i64) -> i64 {
    with_slot(slot, |m| m.load::<u64>(offset(off)?))
}

#[no_mangle]
pub extern "C" fn store(slot: i32, off: i64, v: i64) -> i64 {
    with_slot(slot, |m| m.store(offset(off)?, &u64::try_from(v).unwrap_or(0)).map(|()| 0))
}

/// A typed view at an aligned offset (misaligned offsets are refused).
#[no_mangle]
pub extern "C" fn view_u64(slot: i32, off: i64) -> i64 {
    with_slot(slot, |m| m.view::<u64>(offset(off)?).copied())
}

/// Fills the whole mirror with `byte` (locally).
#[no_mangle]
pub extern "C" fn fill(slot: i32, byte: i32) -> i64 {
    with_slot(slot, |m| {
        m.fill(u8::try_from(byte & 0xff).unwrap_or(0));
        Ok(0)
    })
}

/// Sets byte `index` of the mirror (locally).
#[no_mangle]
pub extern "C" fn poke(slot: i32, index: i64, byte: i32) -> i64 {
    with_slot(slot, |m| {
        let b = m.get_mut(offset(index)?).ok_or(Error::OutOfBounds)?;
        *b = u8::try_from(byte & 0xff).unwrap_or(0);
        Ok(0)
    })
}

/// The mirror's common byte value if every byte is equal, else -1000 (a torn copy).
#[no_mangle]
pub extern "C" fn uniform(slot: i32) -> i64 {
    SLOTS.with_borrow(|slots| {
        let Some(m) = usize::try_from(slot).ok().and_then(|i| slots.get(i)) else { return -1 };
        let first = m.first().copied().unwrap_or(0);
        if m.iter().all(|b| *b == first) {
            i64::from(first)
        } else {
            -1000
        }
    })
}

/// One read-modify-write: refresh, add 1 to the u64 at `off`, commit. Returns the commit's version,
/// or the status (Conflict when another commit got in first).
#[no_mangle]
pub extern "C" fn try_increment(slot: i32, off: i64) -> i64 {
    with_slot(slot, |m| {
        m.refresh()?;
        let at = offset(off)?;
        let v: u64 = m.load(at)?;
        m.store(at, &(v + 1))?;
        match m.commit() {
            Ok(_) => Ok(m.version()),
            Err(e) => {
                // Leave the copy clean for the next attempt.
                m.discard()?;
                Err(e)
            }
        }
    })
}

/// Writes `byte` into pages `hinted` and `other` through the untracked slice, hints only `hinted` and
/// commits with the raw imports; returns the pages the broker wrote back.
#[no_mangle]
pub extern "C" fn hinted_commit(slot: i32, hinted: i32, other: i32, byte: i32) -> i64 {
    with_slot(slot, |m| {
        let page = |p: i32| usize::try_from(p).map_err(|_| Error::InvalidArgument).map(|p| p * 4096);
        let v = u8::try_from(byte & 0xff).unwrap_or(0);
        *m.get_mut(page(hinted)?).ok_or(Error::OutOfBounds)? = v;
        *m.get_mut(page(other)?).ok_or(Error::OutOfBounds)? = v;
        let h = m.region().raw();
        let first = u32::try_from(hinted).map_err(|_| Error::InvalidArgument)?;
        Error::check(broker_guest::sys::mirror_hint(h, first, 1))?;
        let base = i64::try_from(m.version()).map_err(|_| Error::BadVersion)?;
        let (mut version, mut pages) = (0, 0);
        Error::check(broker_guest::sys::mirror_commit(h, m, base, &mut version, &mut pages))?;
        Ok(u64::from(pages))
    })
}
