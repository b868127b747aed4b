//! An app that receives callbacks: region watches, toolkit events through native trampolines, and
//! host services through function handles. Callbacks record what they saw in statics the host reads
//! back through exports; exports return a non-negative result or a negative status.

#![no_main]

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use broker_guest::{
    ui_callback, ui_code, watch_callback, Error, Field, HostFn, Mode, Object, Region, Rights,
};

static WATCH_CALLS: AtomicU64 = AtomicU64::new(0);
static WATCH_MISSED: AtomicU64 = AtomicU64::new(0);
static WATCH_LAST_VERSION: AtomicU64 = AtomicU64::new(0);
static WATCH_OUT_OF_ORDER: AtomicU64 = AtomicU64::new(0);
static WATCH_USER_DATA: AtomicU64 = AtomicU64::new(0);
static WATCH_LAST_RANGE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static REGIONS: RefCell<Vec<Region>> = const { RefCell::new(Vec::new()) };
    static OBJECTS: RefCell<Vec<Object>> = const { RefCell::new(Vec::new()) };
    static UI_LOG: RefCell<Vec<(u32, u32, u32, i32)>> = const { RefCell::new(Vec::new()) };
}

watch_callback!(fn on_change(user_data, event) {
    WATCH_CALLS.fetch_add(1, Ordering::Relaxed);
    WATCH_MISSED.fetch_add(u64::from(event.missed), Ordering::Relaxed);
    WATCH_USER_DATA.store(u64::from(user_data), Ordering::Relaxed);
    let last = WATCH_LAST_VERSION.swap(event.version, Ordering::Relaxed);
    if event.version <= last {
        WATCH_OUT_OF_ORDER.fetch_add(1, Ordering::Relaxed);
    }
    WATCH_LAST_RANGE.store(i64::try_from(event.offset << 32 | event.len).unwrap_or(-1), Ordering::Relaxed);
});

/// The host service `on_change_tell` calls (a raw function handle; 0 for none).
static TELL: AtomicU32 = AtomicU32::new(0);

/// Calls the host service kept in TELL (if any) with `version`: the host learns which thread ran the
/// callback.
fn tell(version: u64) {
    let fh = TELL.load(Ordering::Relaxed);
    if fh != 0 {
        let mut out = [0u8; 8];
        let mut n = 0u32;
        let _ = broker_guest::sys::fn_call(fh, &version.to_le_bytes(), &mut out, &mut n);
    }
}

watch_callback!(fn on_change_tell(_user_data, event) {
    tell(event.version);
    WATCH_CALLS.fetch_add(1, Ordering::Relaxed);
    if WATCH_LAST_VERSION.swap(event.version, Ordering::Relaxed) >= event.version {
        WATCH_OUT_OF_ORDER.fetch_add(1, Ordering::Relaxed);
    }
});

/// Calls of `on_change_spin` that finished.
static SPINS_DONE: AtomicU64 = AtomicU64::new(0);

watch_callback!(fn on_change_spin(_user_data, event) {
    // Tells the host it started (if a TELL service is kept), spins until the u64 at offset 0 of region
    // "flag" is non-zero, then counts the call.
    tell(event.version);
    if let Ok(flag) = Region::open("flag") {
        while flag.load::<u64>(0).is_ok_and(|v| v == 0) {}
    }
    SPINS_DONE.fetch_add(1, Ordering::Relaxed);
});

/// Calls of the spinning watch callback that finished.
#[no_mangle]
pub extern "C" fn spins_done() -> i64 {
    i64::try_from(SPINS_DONE.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

/// Toolkit events received (all of them; the log keeps the first few thousand, so a long benchmark
/// does not grow memory without bound).
static UI_EVENTS: AtomicU64 = AtomicU64::new(0);
const UI_LOG_MAX: usize = 4096;

ui_callback!(fn on_ui(user_data, event) {
    UI_EVENTS.fetch_add(1 + u64::from(event.missed), Ordering::Relaxed);
    UI_LOG.with_borrow_mut(|log| {
        if log.len() < UI_LOG_MAX {
            log.push((user_data, event.object, event.code, event.param));
        }
    });
});

/// A function with a signature no callback has.
#[no_mangle]
pub extern "C" fn wrong_sig(_x: u32) {}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

/// Opens `name_sel` ("data" = 0, "flag" = 1, "alpha/data" = 2) and keeps the handle; returns its index.
fn keep(sel: i32) -> Result<usize, Error> {
    let name = ["data", "flag", "alpha/data"]
        .get(usize::try_from(sel).map_err(|_| Error::InvalidArgument)?)
        .copied()
        .ok_or(Error::InvalidArgument)?;
    let r = Region::open(name)?;
    Ok(REGIONS.with_borrow_mut(|v| {
        v.push(r);
        v.len() - 1
    }))
}

/// Opens region `sel` and watches it with user data `ud`; returns the handle.
#[no_mangle]
pub extern "C" fn watch(sel: i32, ud: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let i = keep(sel)?;
        REGIONS.with_borrow(|v| {
            let r = &v[i];
            r.watch(on_change, u32::try_from(ud).unwrap_or(0))?;
            Ok(u64::from(r.raw()))
        })
    };
    ret(run())
}

/// Opens region `sel` and watches it with `on_change_tell` (`kind` 0: it calls host service `service`,
/// opened now, with each version it sees) or `on_change_spin` (`kind` 1: it spins until region "flag"
/// is set); returns the handle.
#[no_mangle]
pub extern "C" fn watch_with(sel: i32, kind: i32, service: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let callback: broker_guest::RawWatchFn = match kind {
            0 => {
                let mut fh = 0;
                Error::check(broker_guest::sys::fn_open(service_name(service)?.as_bytes(), &mut fh))?;
                TELL.store(fh, Ordering::Relaxed);
                on_change_tell
            }
            1 => on_change_spin,
            _ => return Err(Error::InvalidArgument),
        };
        let i = keep(sel)?;
        REGIONS.with_borrow(|v| {
            let r = &v[i];
            r.watch(callback, 0)?;
            Ok(u64::from(r.raw()))
        })
    };
    ret(run())
}

/// Registers a raw table index as a watch callback on region `sel`; returns the status.
#[no_mangle]
pub extern "C" fn watch_raw(sel: i32, index: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let i = keep(sel)?;
        let h = REGIONS.with_borrow(|v| v[i].raw());
        #[allow(clippy::cast_sign_loss, reason = "raw table index")]
        Error::check(broker_guest::sys::region_watch(h, index as u32, 0)).map(|()| 0)
    };
    ret(run())
}

/// The table index of `wrong_sig` (a function of the wrong signature).
#[no_mangle]
pub extern "C" fn wrong_sig_index() -> i64 {
    i64::try_from(wrong_sig as *const () as usize).unwrap_or(-1)
}

/// Ends the watch of the first kept region.
#[no_mangle]
pub extern "C" fn unwatch() -> i64 {
    ret(REGIONS
        .with_borrow(|v| v.first().ok_or(Error::InvalidArgument).and_then(Region::unwatch).map(|()| 0)))
}

/// Closes every kept region handle.
#[no_mangle]
pub extern "C" fn close_all() -> i64 {
    REGIONS.with_borrow_mut(Vec::clear);
    0
}

#[no_mangle]
pub extern "C" fn watch_calls() -> i64 {
    i64::try_from(WATCH_CALLS.load(Ordering::Relaxed)).unwrap_or(-1)
}

#[no_mangle]
pub extern "C" fn watch_missed() -> i64 {
    i64::try_from(WATCH_MISSED.load(Ordering::Relaxed)).unwrap_or(-1)
}

#[no_mangle]
pub extern "C" fn watch_last_version() -> i64 {
    i64::try_from(WATCH_LAST_VERSION.load(Ordering::Relaxed)).unwrap_or(-1)
}

#[no_mangle]
pub extern "C" fn watch_out_of_order() -> i64 {
    i64::try_from(WATCH_OUT_OF_ORDER.load(Ordering::Relaxed)).unwrap_or(-1)
}

#[no_mangle]
pub extern "C" fn watch_user_data() -> i64 {
    i64::try_from(WATCH_USER_DATA.load(Ordering::Relaxed)).unwrap_or(-1)
}

/// `offset << 32 | len` of the last event.
#[no_mangle]
pub extern "C" fn watch_last_range() -> i64 {
    WATCH_LAST_RANGE.load(Ordering::Relaxed)
}

/// Sets the u64 at offset 8 of region "flag", then keeps the app busy until the u64 at offset 0 is
/// non-zero (so events pile up meanwhile).
#[no_mangle]
pub extern "C" fn busy_until_flag() -> i64 {
    let run = || -> Result<u64, Error> {
        let flag = Region::open("flag")?;
        // Tell the host the loop has started, so what it does next happens while this app is busy.
        flag.store(8, &1u64)?;
        let mut spins = 0u64;
        while flag.load::<u64>(0)? == 0 {
            spins += 1;
        }
        Ok(spins)
    };
    ret(run())
}

/// Creates a toolkit object (fields in a region of `mode`: 0 handle, 1 mirror, 2 shared) and registers
/// `on_ui` for all its events with user data `ud`; returns the object's handle.
#[no_mangle]
pub extern "C" fn ui_make(mode: i32, ud: i32) -> i64 {
    let mode = match mode {
        1 => Mode::Mirror,
        2 => Mode::Shared,
        _ => Mode::Handle,
    };
    let run = || -> Result<u64, Error> {
        let o = Object::create(None, mode)?;
        if let Err(e) = o.on_event(ui_code::EVENT_ALL, on_ui, u32::try_from(ud).unwrap_or(0)) {
            // An object nobody listens to is of no use to this app: delete it rather than leak it.
            let _ = o.delete();
            return Err(e);
        }
        let h = u64::from(o.handle());
        OBJECTS.with_borrow_mut(|v| v.push(o));
        Ok(h)
    };
    ret(run())
}

fn with_object(i: i32, f: impl FnOnce(&Object) -> Result<u64, Error>) -> i64 {
    OBJECTS.with_borrow(|v| {
        ret(usize::try_from(i).ok().and_then(|i| v.get(i)).ok_or(Error::InvalidArgument).and_then(f))
    })
}

/// Fires an event on object `i`; returns how many callbacks ran.
#[no_mangle]
pub extern "C" fn ui_fire(i: i32, code: i32, param: i32) -> i64 {
    with_object(i, |o| o.send(u32::try_from(code).unwrap_or(0), param).map(u64::from))
}

/// Sets the value field.
#[no_mangle]
pub extern "C" fn ui_set_value(i: i32, v: i32) -> i64 {
    with_object(i, |o| o.set(Field::Value, v).map(|()| 0))
}

/// Reads the value field (as u32 bits).
#[no_mangle]
pub extern "C" fn ui_get_value(i: i32) -> i64 {
    with_object(i, |o| o.get(Field::Value).map(|v| u64::from(v.cast_unsigned())))
}

/// Sets then reads the text; returns its length if it came back equal, else -1000.
#[no_mangle]
pub extern "C" fn ui_text(i: i32) -> i64 {
    with_object(i, |o| {
        o.set_text("hello toolkit")?;
        let t = o.text()?;
        Ok(if t == "hello toolkit" { t.len() as u64 } else { 1000 })
    })
}

/// Reads the value field through the object's region (a plain region read).
#[no_mangle]
pub extern "C" fn ui_value_via_region(i: i32) -> i64 {
    with_object(i, |o| o.region().load::<i32>(16).map(|v| u64::from(v.cast_unsigned())))
}

/// Registers a raw table index as an event callback on object `i`.
#[no_mangle]
pub extern "C" fn ui_on_event_raw(i: i32, index: i32) -> i64 {
    #[allow(clippy::cast_sign_loss, reason = "raw table index")]
    with_object(i, |o| {
        Error::check(broker_guest::sys::ui_on_event(o.handle(), 0, index as u32, 0)).map(|()| 0)
    })
}

/// Registers `on_ui` again on object `i` (to exhaust callback slots).
#[no_mangle]
pub extern "C" fn ui_on_event_again(i: i32) -> i64 {
    with_object(i, |o| o.on_event(ui_code::EVENT_ALL, on_ui, 0).map(|()| 0))
}

/// Deletes object `i`.
#[no_mangle]
pub extern "C" fn ui_delete(i: i32) -> i64 {
    let o =
        OBJECTS.with_borrow_mut(|v| usize::try_from(i).ok().filter(|i| *i < v.len()).map(|i| v.remove(i)));
    ret(o.ok_or(Error::InvalidArgument).and_then(Object::delete).map(|()| 0))
}

/// Opens the region of another app's toolkit object by name (`ui.<object>`, or `alpha/ui.<object>`, a
/// grant from tenant "alpha", when `granted` is not 0), narrows it to every right over
/// `[offset, offset + len)` of it (all of it when `len` is negative) and calls `ui_delete` through
/// that handle; returns the status. The handles are closed again whatever happens.
#[no_mangle]
pub extern "C" fn ui_delete_opened(object: i64, granted: i32, offset: i64, len: i64) -> i64 {
    let run = || -> Result<u64, Error> {
        let name = if granted == 0 { format!("ui.{object}") } else { format!("alpha/ui.{object}") };
        let whole = Region::open(&name)?;
        let offset = u64::try_from(offset).map_err(|_| Error::InvalidArgument)?;
        let part = whole.restrict(Rights::ALL, offset, u64::try_from(len).ok())?;
        Error::check(broker_guest::sys::ui_delete(part.raw())).map(|()| 0)
    };
    ret(run())
}

/// Number of toolkit events received.
#[no_mangle]
pub extern "C" fn ui_events() -> i64 {
    i64::try_from(UI_EVENTS.load(Ordering::Relaxed)).unwrap_or(-1)
}

/// Event `k` as `user_data << 48 | code << 32 | param` (param as u32).
#[no_mangle]
pub extern "C" fn ui_event(k: i32) -> i64 {
    UI_LOG.with_borrow(|l| {
        usize::try_from(k).ok().and_then(|k| l.get(k)).map_or(-1, |(ud, _, code, param)| {
            i64::from(*ud) << 48 | i64::from(*code) << 32 | i64::from(param.cast_unsigned())
        })
    })
}

/// Calls the host service "sensor.sample" for sample `i`.
#[no_mangle]
pub extern "C" fn sensor(i: i64) -> i64 {
    let run = || -> Result<u64, Error> {
        let f = HostFn::open("sensor.sample")?;
        let mut out = [0u8; 8];
        let n = f.call(&i.to_le_bytes(), &mut out)?;
        if n != 8 {
            return Err(Error::Internal);
        }
        Ok(u64::from_le_bytes(out))
    };
    ret(run())
}

/// The host service of name index `sel` (see `service`).
fn service_name(sel: i32) -> Result<&'static str, Error> {
    let names =
        ["sensor.sample", "nope", "test.secret", "test.fail", "test.big", "toolkit.object_count", "test.thread"];
    names
        .get(usize::try_from(sel).map_err(|_| Error::InvalidArgument)?)
        .copied()
        .ok_or(Error::InvalidArgument)
}

/// Opens a host service by name index (0 "sensor.sample", 1 "nope", 2 "test.secret", 3 "test.fail",
/// 4 "test.big", 5 "toolkit.object_count", the UI extension's, 6 "test.thread") and calls it with 8
/// bytes into an 8-byte buffer; returns the first result byte or the status.
#[no_mangle]
pub extern "C" fn service(sel: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let f = HostFn::open(service_name(sel)?)?;
        let mut out = [0u8; 8];
        f.call(&[1, 2, 3, 4, 5, 6, 7, 8], &mut out)?;
        Ok(u64::from(out[0]))
    };
    ret(run())
}

/// Opens a host service by name index (as `service`) and keeps it open; returns the raw handle or the
/// status.
#[no_mangle]
pub extern "C" fn keep_service(sel: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let name = service_name(sel)?;
        let mut fh = 0;
        Error::check(broker_guest::sys::fn_open(name.as_bytes(), &mut fh))?;
        Ok(u64::from(fh))
    };
    ret(run())
}

/// Calls a raw function handle value.
#[no_mangle]
pub extern "C" fn fn_call_raw(fh: i32) -> i64 {
    let mut out = [0u8; 8];
    let mut n = 0u32;
    #[allow(clippy::cast_sign_loss, reason = "raw handle")]
    ret(Error::check(broker_guest::sys::fn_call(fh as u32, &[0; 8], &mut out, &mut n)).map(|()| 0))
}

#[no_mangle]
pub extern "C" fn trap() -> i64 {
    core::arch::wasm32::unreachable()
}

#[no_mangle]
pub extern "C" fn ping() -> i64 {
    1
}

/// The table index of the watch callback, for benchmarks that call it directly.
#[no_mangle]
pub extern "C" fn on_change_index() -> i64 {
    let f: broker_guest::RawWatchFn = on_change;
    i64::try_from(f as usize).unwrap_or(-1)
}
