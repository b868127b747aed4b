//! The conformance suite's app: every operation the suite checks, written once against `Region` and the
//! mode-agnostic `View`, so the same code runs whatever mode the operator gave the region.
//!
//! Handles are raw values the host passes back; views live in slots the host refers to by index; names
//! of regions and target instances are picked from the fixed tables below by index. Exports return a
//! non-negative result or a negative ABI status code.

#![no_main]

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use broker_guest::{member, watch_callback, Error, Member, Members, Mode, Region, Rights, View};

/// Region names, by the index the host passes.
const REGIONS: &[&str] = &["data", "alpha/data", "handle", "mirror", "shared"];
/// Instance names, by the index the host passes.
const TARGETS: &[&str] = &["beta/reader", "beta/relay", "nobody"];

thread_local! {
    static VIEWS: RefCell<Vec<View<'static>>> = const { RefCell::new(Vec::new()) };
}

static WATCH_CALLS: AtomicU64 = AtomicU64::new(0);
static WATCH_LAST_VERSION: AtomicU64 = AtomicU64::new(0);
static WATCH_LAST_RANGE: AtomicI64 = AtomicI64::new(0);
static WATCH_USER_DATA: AtomicU64 = AtomicU64::new(0);

watch_callback!(fn on_change(user_data, event) {
    WATCH_CALLS.fetch_add(1, Ordering::Relaxed);
    WATCH_LAST_VERSION.store(event.version, Ordering::Relaxed);
    WATCH_LAST_RANGE.store(i64::try_from(event.offset << 32 | event.len).unwrap_or(-1), Ordering::Relaxed);
    WATCH_USER_DATA.store(u64::from(user_data), Ordering::Relaxed);
});

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

fn name(table: &[&'static str], i: i32) -> Result<&'static str, Error> {
    usize::try_from(i).ok().and_then(|i| table.get(i).copied()).ok_or(Error::InvalidArgument)
}

/// A handle value the host passed back (a `u32` bit pattern carried in an `i32`).
fn raw(h: i32) -> u32 {
    u32::from_ne_bytes(h.to_ne_bytes())
}

/// Borrows a raw handle without closing it when done.
fn region<T>(h: i32, f: impl FnOnce(&Region) -> Result<T, Error>) -> Result<T, Error> {
    let region = Region::from_raw(raw(h));
    let out = f(&region);
    let _ = region.into_raw();
    out
}

fn view<T>(slot: i32, f: impl FnOnce(&mut View<'static>) -> Result<T, Error>) -> Result<T, Error> {
    VIEWS.with_borrow_mut(|views| {
        let v = usize::try_from(slot).ok().and_then(|i| views.get_mut(i)).ok_or(Error::InvalidArgument)?;
        f(v)
    })
}

fn at(offset: i64) -> Result<u64, Error> {
    u64::try_from(offset).map_err(|_| Error::OutOfBounds)
}

fn rights(bits: i32) -> Rights {
    Rights::from_bits_retain(u32::from_ne_bytes(bits.to_ne_bytes()))
}

/// A value the host passed as an `i64`, stored as the `u64` with the same bits.
fn word(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Opens region `sel`; returns the handle.
#[no_mangle]
pub extern "C" fn open(sel: i32) -> i64 {
    ret(name(REGIONS, sel).and_then(Region::open).map(|r| u64::from(r.into_raw())))
}

#[no_mangle]
pub extern "C" fn close(h: i32) -> i64 {
    ret(Region::from_raw(raw(h)).close().map(|()| 0))
}

#[no_mangle]
pub extern "C" fn info_len(h: i32) -> i64 {
    ret(region(h, |r| r.info().map(|i| i.len)))
}

#[no_mangle]
pub extern "C" fn info_rights(h: i32) -> i64 {
    ret(region(h, |r| r.info().map(|i| u64::from(i.rights.bits()))))
}

/// `handle_restrict` to `rights` over `[off, off + len)` (`len < 0`: to the end); returns the new handle.
#[no_mangle]
pub extern "C" fn restrict(h: i32, rights_bits: i32, off: i64, len: i64) -> i64 {
    let len = u64::try_from(len).ok();
    ret(region(h, |r| r.restrict(rights(rights_bits), at(off)?, len).map(|n| u64::from(n.into_raw()))))
}

/// `handle_grant` of `rights` over `[off, off + len)` (`len < 0`: to the end) to target `target`.
#[no_mangle]
pub extern "C" fn grant(h: i32, target: i32, rights_bits: i32, off: i64, len: i64) -> i64 {
    let len = u64::try_from(len).ok();
    ret(region(h, |r| r.grant(name(TARGETS, target)?, rights(rights_bits), at(off)?, len).map(|()| 0)))
}

#[no_mangle]
pub extern "C" fn revoke(h: i32) -> i64 {
    ret(region(h, |r| r.revoke().map(|()| 0)))
}

/// The u64 at `off`, read with a host call (`region_read`, in every mode).
#[no_mangle]
pub extern "C" fn read_u64(h: i32, off: i64) -> i64 {
    ret(region(h, |r| r.load::<u64>(at(off)?)))
}

/// Writes the u64 `v` at `off` with a host call (`region_write`, in every mode).
#[no_mangle]
pub extern "C" fn write_u64(h: i32, off: i64, v: i64) -> i64 {
    ret(region(h, |r| r.store(at(off)?, &word(v)).map(|()| 0)))
}

/// Writes `len` bytes of `byte` at `off` with one host call.
#[no_mangle]
pub extern "C" fn fill(h: i32, off: i64, len: i32, byte: i32) -> i64 {
    let data = vec![byte.to_le_bytes()[0]; usize::try_from(len).unwrap_or(0)];
    ret(region(h, |r| r.write(at(off)?, &data).map(|()| 0)))
}

/// Reads `len` bytes at `off` with one host call; returns their sum.
#[no_mangle]
pub extern "C" fn sum(h: i32, off: i64, len: i32) -> i64 {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    ret(region(h, |r| r.read(at(off)?, &mut buf)).map(|()| buf.iter().map(|b| u64::from(*b)).sum()))
}

/// Opens a `View` of handle `h` (a mirror, a window or host calls, as the region's mode says); returns
/// its slot.
#[no_mangle]
pub extern "C" fn view_open(h: i32) -> i64 {
    // The view borrows its region for the rest of the app's life; the host closes the handle, if ever.
    let region: &'static Region = Box::leak(Box::new(Region::from_raw(raw(h))));
    ret(region.view().map(|v| {
        VIEWS.with_borrow_mut(|views| {
            views.push(v);
            u64::try_from(views.len() - 1).unwrap_or(u64::MAX)
        })
    }))
}

/// The mechanism of the view in `slot`: 0 handle, 1 mirror, 2 shared.
#[no_mangle]
pub extern "C" fn view_mode(slot: i32) -> i64 {
    ret(view(slot, |v| {
        Ok(match v.mode() {
            Mode::Handle => 0,
            Mode::Mirror => 1,
            Mode::Shared => 2,
        })
    }))
}

/// The u64 at `off` as the view has it now (a mirror: its copy, without a refresh).
#[no_mangle]
pub extern "C" fn load(slot: i32, off: i64) -> i64 {
    ret(view(slot, |v| v.load::<u64>(at(off)?)))
}

#[no_mangle]
pub extern "C" fn refresh(slot: i32) -> i64 {
    ret(view(slot, |v| v.refresh().map(|()| 0)))
}

/// Refreshes, then loads the u64 at `off`: what the app reads of the region now.
#[no_mangle]
pub extern "C" fn fetch(slot: i32, off: i64) -> i64 {
    ret(view(slot, |v| {
        v.refresh()?;
        v.load::<u64>(at(off)?)
    }))
}

/// Stores the u64 `v` at `off` through the view (a mirror: in its copy, until `commit`).
#[no_mangle]
pub extern "C" fn store(slot: i32, off: i64, v: i64) -> i64 {
    ret(view(slot, |view| view.store(at(off)?, &word(v)).map(|()| 0)))
}

#[no_mangle]
pub extern "C" fn commit(slot: i32) -> i64 {
    ret(view(slot, |v| v.commit().map(|()| 0)))
}

/// Stores the u64 `v` at `off`, then commits: an app's write, published.
#[no_mangle]
pub extern "C" fn put(slot: i32, off: i64, v: i64) -> i64 {
    ret(view(slot, |view| {
        view.store(at(off)?, &word(v))?;
        view.commit().map(|()| 0)
    }))
}

/// As `put`, but in shared mode the bytes are stored in place through the window's cells, which a
/// read-only window also lends, where `View::store` would refuse: there the hardware must stop it.
#[no_mangle]
pub extern "C" fn poke(slot: i32, off: i64, v: i64) -> i64 {
    ret(view(slot, |view| {
        let Some(cells) = view.as_cells() else {
            view.store(at(off)?, &word(v))?;
            return view.commit().map(|()| 0);
        };
        let start = usize::try_from(at(off)?).map_err(|_| Error::OutOfBounds)?;
        let end = start.checked_add(8).ok_or(Error::OutOfBounds)?;
        let cells = cells.get(start..end).ok_or(Error::OutOfBounds)?;
        for (cell, byte) in cells.iter().zip(word(v).to_le_bytes()) {
            // SAFETY: the cell is a byte of this app's mapped window, alive while the view is; a volatile
            // store through `UnsafeCell::get` creates no reference to bytes that other apps change. In a
            // read-only window the store faults and traps this app, which is what the suite checks.
            unsafe { cell.get().write_volatile(byte) };
        }
        Ok(0)
    }))
}

/// Mode-agnostic code: adds `delta` to the u64 at `off` of region `sel` through `Region::view`, and
/// returns the new value. The same function runs unchanged whatever the region's mode.
#[no_mangle]
pub extern "C" fn view_add(sel: i32, off: i64, delta: i64) -> i64 {
    let run = || -> Result<u64, Error> {
        let region = Region::open(name(REGIONS, sel)?)?;
        let mut view = region.view()?;
        view.refresh()?;
        let v: u64 = view.load(at(off)?)?;
        let new = v.wrapping_add(word(delta));
        view.store(at(off)?, &new)?;
        view.commit()?;
        Ok(new)
    };
    ret(run())
}

/// A record as apps keep them in a region: 32 bytes, no padding. The suite writes and reads its bytes
/// at the offsets `repr(C)` gives (seq 0, celsius 8, flags 12, kind 14, history 16).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Reading {
    seq: u64,
    celsius: f32,
    flags: u16,
    kind: u8,
    spare: u8,
    history: [u32; 4],
}

const SEQ: Member<Reading, u64> = member!(Reading, seq);
const CELSIUS: Member<Reading, f32> = member!(Reading, celsius);
const KIND: Member<Reading, u8> = member!(Reading, kind);
const HISTORY: Member<Reading, [u32; 4]> = member!(Reading, history);

/// Member `which` (0 seq, 1 celsius's bits, 2 kind, 3 history[2]) of the `Reading` at byte `record`,
/// through the view in `slot` after a refresh: one member, one access.
#[no_mangle]
pub extern "C" fn member_get(slot: i32, record: i64, which: i32) -> i64 {
    ret(view(slot, |v| {
        v.refresh()?;
        let record = at(record)?;
        Ok(match which {
            0 => SEQ.load(v, record)?,
            1 => u64::from(CELSIUS.load(v, record)?.to_bits()),
            2 => u64::from(KIND.load(v, record)?),
            3 => u64::from(HISTORY.load(v, record)?[2]),
            _ => return Err(Error::InvalidArgument),
        })
    }))
}

/// seq + kind + history[2] of the `Reading` at byte `record`, read together (one host call in handle
/// mode, from one state of the region).
#[no_mangle]
pub extern "C" fn members_sum(slot: i32, record: i64) -> i64 {
    ret(view(slot, |v| {
        v.refresh()?;
        let (seq, kind, history) = (SEQ, KIND, HISTORY).load(v, at(record)?)?;
        Ok(seq.wrapping_add(u64::from(kind)).wrapping_add(u64::from(history[2])))
    }))
}

/// Sets seq, celsius (from its bits) and kind of the `Reading` at byte `record` together and commits,
/// leaving its other members as they are.
#[no_mangle]
pub extern "C" fn members_set(slot: i32, record: i64, seq: i64, celsius_bits: i32, kind: i32) -> i64 {
    ret(view(slot, |v| {
        let celsius = f32::from_bits(u32::from_ne_bytes(celsius_bits.to_ne_bytes()));
        let kind = u8::try_from(kind).map_err(|_| Error::InvalidArgument)?;
        (SEQ, CELSIUS, KIND).store(v, at(record)?, &(word(seq), celsius, kind))?;
        v.commit().map(|()| 0)
    }))
}

/// Watches handle `h` with user data `ud`.
#[no_mangle]
pub extern "C" fn watch(h: i32, ud: i32) -> i64 {
    ret(region(h, |r| r.watch(on_change, u32::from_ne_bytes(ud.to_ne_bytes())).map(|()| 0)))
}

/// What the watch callback saw: 0 the number of calls, 1 the last version, 2 `offset << 32 | len` of
/// the last change, 3 the last user data.
#[no_mangle]
pub extern "C" fn watched(what: i32) -> i64 {
    let seen = match what {
        0 => WATCH_CALLS.load(Ordering::Relaxed),
        1 => WATCH_LAST_VERSION.load(Ordering::Relaxed),
        2 => return WATCH_LAST_RANGE.load(Ordering::Relaxed),
        3 => WATCH_USER_DATA.load(Ordering::Relaxed),
        _ => return i64::from(Error::InvalidArgument.code()),
    };
    i64::try_from(seen).unwrap_or(-1)
}

/// A cheap call that shows the instance answers.
#[no_mangle]
pub extern "C" fn ping() -> i64 {
    1
}
