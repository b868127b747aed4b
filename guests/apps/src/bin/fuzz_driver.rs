//! The fuzz driver: one export, `op`, calls any raw import of `broker_v1` or of the UI toolkit extension
//! (`broker_ui_v1`) with arguments derived from six integers, so a host-side fuzzer (`broker_tests::fuzz`)
//! can drive the whole ABI with plain data.
//!
//! Each argument is built from bits of one integer: its low bits pick a class (a handle from the table of
//! handles this app was given, a stale or forged value; a pointer into the scratch buffer, into the
//! page-aligned page buffer or a wild one; a length that fits the capability or a wild one) and the
//! remaining bits pick a value inside the class. Handles and function handles returned through the
//! dedicated out-slot are remembered, and so are acquired mirrors and mapped windows, so that later
//! operations can refer to them and whole scenarios (open, restrict, grant, map, write, revoke, unmap)
//! come out of short random sequences.
//!
//! Wild pointers never land on memory the app itself uses (its stack, its statics, the heap below the
//! page buffer): they are moved out of linear memory instead, so that every trap of this app is a fault
//! in a shared window (or a broker bug), never an app corrupted by its own inputs. The scratch buffer and
//! the out-slots sit between guard zones that the app checks after every call: a broker write outside the
//! range it was given shows up as [`GUARD_BROKEN`].
//!
//! The host calls `setup` once per instance (it opens "owner/ro", "rw", "mi" and "sh"), may call
//! `avoid_windows` (a workaround for a known broker crash), then `op` as often as it likes; `scratch`,
//! `page_buffer`, `handle_at`, `live_range` and `callbacks_run` let it look at the driver's state.

#![no_main]

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use broker_guest::sys::raw::{
    abi_version, fn_call, fn_close, fn_open, handle_close, handle_grant, handle_info, handle_restrict,
    handle_revoke, mirror_acquire, mirror_commit, mirror_hint, mirror_refresh, nop, region_create,
    region_map, region_notify, region_open, region_read, region_readv, region_unmap, region_unwatch,
    region_wait, region_watch, region_write, region_writev, ui_create, ui_delete, ui_get, ui_get_text,
    ui_on_event, ui_send, ui_set, ui_set_text,
};

/// Number of imports `op` dispatches over (`broker_tests::fuzz::IMPORTS.len()`: every function of
/// `broker_abi::func::ALL` and `broker_abi::ui_func::ALL`).
const FUNCS: i32 = 34;

/// What `op` returns when a guard zone changed: the broker wrote outside a range it was given.
pub const GUARD_BROKEN: i32 = 0x4755_4152;
/// What `op` returns before `setup` ran.
pub const NOT_SET_UP: i32 = 0x4e4f_5355;

const PAGE: u32 = broker_guest::PAGE_SIZE;
const MAP_WRITE: u32 = 1;
const SCRATCH_LEN: u32 = 64 * 1024;
/// The page buffer: this many pages are used as window targets (the allocation is twice as large, so a
/// window starting on the last used page still lies inside it).
const PAGES: u32 = 16;
const PAGE_BUF_LEN: usize = 2 * 16 * 4096;

// The arena: guard, out-slots, guard, scratch, guard.
const GUARD: u32 = 4096;
const OUT_AT: u32 = GUARD;
const OUT_LEN: u32 = 64;
const SCRATCH_AT: u32 = 2 * GUARD;
const ARENA_LEN: usize = (3 * GUARD + SCRATCH_LEN) as usize;
const GUARD_BYTE: u8 = 0xa5;

static ARENA: [AtomicU8; ARENA_LEN] = [const { AtomicU8::new(0) }; ARENA_LEN];
/// What `handle_info` writes when the driver asks for a capability's length.
static INFO: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The handles of "owner/ro", "rw", "mi" and "sh", as last opened by name.
static FIXED: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
/// Handles this app was given through the first out-slot (a ring).
static HANDLES: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
static HANDLES_SEEN: AtomicU32 = AtomicU32::new(0);
/// Handles of toolkit objects.
static OBJECTS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
static OBJECTS_SEEN: AtomicU32 = AtomicU32::new(0);
/// Function handles.
static FNS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
static FNS_SEEN: AtomicU32 = AtomicU32::new(0);
/// Windows mapped: `(handle, address)` rows.
static WINDOWS: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
static WINDOWS_SEEN: AtomicU32 = AtomicU32::new(0);
/// Mirrors acquired: `(handle, address, length)` rows.
static MIRRORS: [AtomicU32; 12] = [const { AtomicU32::new(0) }; 12];
static MIRRORS_SEEN: AtomicU32 = AtomicU32::new(0);

/// Windows this app mapped and has not unmapped (revoked ones included): `(address, length)` rows,
/// length 0 for a free row.
static HAZARDS: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];
/// Set when a window could not be recorded: every pointer into scratch or the page buffer is then
/// suspect.
static HAZARDS_LOST: AtomicU32 = AtomicU32::new(0);
/// Whether pointers the broker reads or writes are kept away from windows (see `avoid_windows`).
static AVOID: AtomicU32 = AtomicU32::new(0);

static PAGE_BUF: AtomicU32 = AtomicU32::new(0);
/// `[LIVE_LO, LIVE_HI)`: memory this app uses itself (stack, statics, heap below the page buffer).
static LIVE_LO: AtomicU32 = AtomicU32::new(0);
static LIVE_HI: AtomicU32 = AtomicU32::new(0);
static CALLBACKS: AtomicU64 = AtomicU64::new(0);

const NAMES: &[&[u8]] = &[
    b"owner/ro",
    b"rw",
    b"mi",
    b"sh",
    b"reader",
    b"t/reader",
    b"sensor.sample",
    b"toolkit.object_count",
    b"n0",
    b"n1",
    b"ro",
    b"owner/rw",
    b"driver",
    b"bad name!",
    b"",
    b"owner/sh",
];
/// Indexes into [`NAMES`] that the calls prefer.
const OPENABLE: &[usize] = &[0, 1, 2, 3, 8, 9];
const CREATABLE: &[usize] = &[8, 9, 1];
const TARGETS: &[usize] = &[4, 5];
const SERVICES: &[usize] = &[6, 7];

extern "C" fn on_watch(_user_data: u32, _handle: u32, _version: u64, _offset: u64, _len: u64, _missed: u32) {
    CALLBACKS.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn on_ui(_user_data: u32, _object: u32, _code: u32, _param: i32, _missed: u32) {
    CALLBACKS.fetch_add(1, Ordering::Relaxed);
}

/// A function of a signature no callback has.
extern "C" fn wrong_signature(_x: u32) -> u32 {
    CALLBACKS.fetch_add(1, Ordering::Relaxed);
    0
}

fn addr<T>(p: *const T) -> u32 {
    u32::try_from(p as usize).unwrap_or(u32::MAX)
}

fn arena() -> u32 {
    addr(ARENA.as_ptr())
}

/// The low 32 bits: the fuzzer's integers become raw ABI values.
fn bits32(x: i64) -> u32 {
    (x as u64 & 0xffff_ffff) as u32
}

fn usize_of(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// The bits above the class bits, as an unsigned selector.
fn sel(x: i64, shift: u32) -> u64 {
    (x as u64) >> shift
}

/// `sel(x, 3) % n` as a `u32`.
fn pick(x: i64, n: u64) -> u32 {
    u32::try_from(sel(x, 3) % n.max(1)).unwrap_or(0)
}

fn remember(table: &[AtomicU32], seen: &AtomicU32, values: &[u32]) {
    let rows = table.len() / values.len();
    let row = usize_of(u64::from(seen.fetch_add(1, Ordering::Relaxed))) % rows;
    for (i, v) in values.iter().enumerate() {
        table[row * values.len() + i].store(*v, Ordering::Relaxed);
    }
}

/// Row `pick` (modulo the rows filled so far) of a ring, or `None` if it is empty.
fn recall<const N: usize>(table: &[AtomicU32], seen: &AtomicU32, pick: u64) -> Option<[u32; N]> {
    let rows = table.len() / N;
    let filled = usize_of(u64::from(seen.load(Ordering::Relaxed))).min(rows);
    if filled == 0 {
        return None;
    }
    let row = usize_of(pick % filled as u64);
    Some(core::array::from_fn(|i| table[row * N + i].load(Ordering::Relaxed)))
}

/// What kind of handle a call wants most.
#[derive(Clone, Copy)]
enum Want {
    Any,
    Given,
    Mirror,
    Shared,
    Object,
}

/// A handle: one this app holds (or held) of the kind the call wants, another one it was given, another
/// generation of one (stale or never issued), or a forged value.
fn handle(x: i64, want: Want) -> u32 {
    let fixed = |i: u64| FIXED[usize_of(i % 4)].load(Ordering::Relaxed);
    let given = recall::<1>(&HANDLES, &HANDLES_SEEN, sel(x, 3)).map_or_else(|| fixed(sel(x, 3)), |[h]| h);
    let preferred = match want {
        Want::Any => fixed(sel(x, 3)),
        Want::Given => given,
        Want::Mirror => fixed(2),
        Want::Shared => fixed(3),
        Want::Object => recall::<1>(&OBJECTS, &OBJECTS_SEEN, sel(x, 3)).map_or(given, |[h]| h),
    };
    match x & 7 {
        0..=2 => preferred,
        3..=5 => given,
        6 => given ^ (1 + (bits32(x >> 40) & 0xf)) << 20,
        _ if x & 8 == 0 => bits32(x >> 4) & 0xff,
        _ => bits32(x >> 4),
    }
}

fn function_handle(x: i64) -> u32 {
    match x & 7 {
        0..=5 => recall::<1>(&FNS, &FNS_SEEN, sel(x, 3)).map_or(1, |[h]| h),
        6 => pick(x, 8),
        _ => bits32(x >> 3),
    }
}

/// Moves a wild range that touches memory this app uses out of linear memory.
fn tame(ptr: u32, len: u32) -> u32 {
    let (lo, hi) = (u64::from(LIVE_LO.load(Ordering::Relaxed)), u64::from(LIVE_HI.load(Ordering::Relaxed)));
    let (start, end) = (u64::from(ptr), u64::from(ptr) + u64::from(len));
    if start < hi && lo < end.max(start + 1) {
        ptr ^ 0x8000_0000
    } else {
        ptr
    }
}

fn overlaps(a: u32, a_len: u32, b: u32, b_len: u32) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a < b + u64::from(b_len.max(1)) && b < a + u64::from(a_len.max(1))
}

fn note_window(p: u32, len: u32) {
    let free = HAZARDS.chunks(2).position(|row| row[1].load(Ordering::Relaxed) == 0);
    match free {
        Some(i) => {
            HAZARDS[2 * i].store(p, Ordering::Relaxed);
            HAZARDS[2 * i + 1].store(len.max(1), Ordering::Relaxed);
        }
        None => HAZARDS_LOST.store(1, Ordering::Relaxed),
    }
}

/// Forgets the most recent window at `p` (an unmap restored it).
fn forget_window(p: u32) {
    let row = HAZARDS
        .chunks(2)
        .rposition(|row| row[0].load(Ordering::Relaxed) == p && row[1].load(Ordering::Relaxed) != 0);
    if let Some(i) = row {
        HAZARDS[2 * i + 1].store(0, Ordering::Relaxed);
    }
}

/// With `avoid_windows` on, moves a range the broker would read or write out of linear memory if it
/// touches a window this app mapped (a known broker crash, see `avoid_windows`).
fn shun(p: u32, len: u32) -> u32 {
    if AVOID.load(Ordering::Relaxed) == 0 {
        return p;
    }
    let lost = HAZARDS_LOST.load(Ordering::Relaxed) != 0
        && (overlaps(p, len, arena() + SCRATCH_AT, SCRATCH_LEN)
            || overlaps(p, len, page_buf(), u32::try_from(PAGE_BUF_LEN).unwrap_or(u32::MAX)));
    let hit = HAZARDS.chunks(2).any(|row| {
        let l = row[1].load(Ordering::Relaxed);
        l != 0 && overlaps(p, len, row[0].load(Ordering::Relaxed), l)
    });
    if lost || hit {
        p ^ 0x8000_0000
    } else {
        p
    }
}

fn page_buf() -> u32 {
    PAGE_BUF.load(Ordering::Relaxed)
}

/// A scratch address with room for `len` bytes, or `None` if `len` exceeds the scratch buffer.
fn scratch_at(x: u64, len: u32) -> Option<u32> {
    let room = SCRATCH_LEN.checked_sub(len)?;
    Some(arena() + SCRATCH_AT + u32::try_from(x % (u64::from(room) + 1)).unwrap_or(0))
}

/// A pointer for `len` bytes: into the scratch buffer mostly, into the page buffer (where windows go),
/// or wild.
fn pointer(x: i64, len: u32) -> u32 {
    let wild = tame(bits32(x >> 3), len);
    let p = match x & 7 {
        0..=3 => scratch_at(sel(x, 3), len).unwrap_or(wild),
        4 => scratch_at(0, len).unwrap_or(wild),
        5 => page_buf() + pick(x, u64::from(PAGES)) * PAGE,
        6 => page_buf() + pick(x, u64::from(PAGES * PAGE)),
        _ => wild,
    };
    shun(p, len)
}

/// A window address: a page of the page buffer mostly, an unaligned one, a page of scratch, or wild.
fn map_address(x: i64, len: u32) -> u32 {
    match x & 7 {
        0..=4 => page_buf() + pick(x, u64::from(PAGES)) * PAGE,
        5 => page_buf() + pick(x, u64::from(2 * PAGES * PAGE)),
        6 => {
            let first = (arena() + SCRATCH_AT).div_ceil(PAGE) * PAGE;
            let pages = (arena() + SCRATCH_AT + SCRATCH_LEN).saturating_sub(first).saturating_sub(len) / PAGE;
            first + pick(x, u64::from(pages) + 1) * PAGE
        }
        _ => tame(bits32(x >> 3), len),
    }
}

/// An out-pointer for `size` bytes: out-slot `slot` mostly, else scratch, the page buffer or wild.
fn out_pointer(x: i64, size: u32, slot: u32) -> u32 {
    let p = match x & 7 {
        0..=5 => out_slot(slot),
        6 if x & 8 == 0 => scratch_at(sel(x, 4), size).unwrap_or(0),
        6 => page_buf() + u32::try_from(sel(x, 4) % u64::from(PAGES * PAGE)).unwrap_or(0),
        _ => tame(bits32(x >> 3), size),
    };
    shun(p, size)
}

fn out_slot(slot: u32) -> u32 {
    arena() + OUT_AT + slot * 16
}

fn out_value(slot: u32) -> u32 {
    let at = usize_of(u64::from(OUT_AT + slot * 16));
    u32::from_le_bytes(core::array::from_fn(|i| ARENA[at + i].load(Ordering::Relaxed)))
}

fn clear_out(slot: u32) {
    let at = usize_of(u64::from(OUT_AT + slot * 16));
    for b in &ARENA[at..at + 16] {
        b.store(0, Ordering::Relaxed);
    }
}

/// Asks the broker about a handle: `(range length, region version)`, `None` for a bad handle.
fn info(h: u32) -> Option<(u64, u64)> {
    // SAFETY: `INFO` is a static of exactly 40 bytes, the size `handle_info` writes.
    let rc = unsafe { handle_info(h, INFO.as_ptr().cast_mut().cast()) };
    (rc == 0).then(|| (INFO[2].load(Ordering::Relaxed), INFO[3].load(Ordering::Relaxed)))
}

fn cap_len(h: u32) -> Option<u32> {
    info(h).map(|(len, _)| u32::try_from(len).unwrap_or(u32::MAX))
}

/// A length for an access through `h`: small, the whole range, larger, or wild.
fn length(x: i64, h: u32) -> u32 {
    match x & 7 {
        0..=2 => 1 + pick(x, 64),
        3 | 4 => cap_len(h).unwrap_or(8),
        5 => pick(x, 4096),
        6 => pick(x, 16384),
        _ => bits32(x >> 3),
    }
}

/// The length `mirror_acquire` wants (the capability's range) mostly, else a wrong or wild one.
fn mirror_length(x: i64, h: u32) -> u32 {
    match x & 7 {
        0..=5 => cap_len(h).unwrap_or(0),
        6 => cap_len(h).unwrap_or(0).wrapping_add(1 + pick(x, 4096)),
        _ => bits32(x >> 3) & 0x3_ffff,
    }
}

/// The length `region_map` wants (the range in whole pages) mostly, else a few pages, 0 or wild.
fn map_length(x: i64, h: u32) -> u32 {
    match x & 7 {
        0..=4 => cap_len(h).map_or(PAGE, |l| l.div_ceil(PAGE).saturating_mul(PAGE)),
        5 => (1 + pick(x, 4)) * PAGE,
        6 => 0,
        _ => bits32(x >> 3),
    }
}

/// An offset: 0 mostly, small, page aligned, beyond the ranges, or wild (negative and huge included).
fn offset(x: i64) -> i64 {
    match x & 7 {
        0..=3 => 0,
        4 => i64::from(pick(x, 64)),
        5 => i64::from(pick(x, 3)) * 4096,
        6 => i64::from(pick(x, 16384)),
        _ => x >> 3,
    }
}

/// A length for restrict and grant: to the end mostly, small, whole pages, 0, or wild.
fn range_length(x: i64) -> i64 {
    match x & 7 {
        0..=3 => broker_guest::LEN_TO_END,
        4 => 1 + i64::from(pick(x, 4096)),
        5 => (1 + i64::from(pick(x, 2))) * 4096,
        6 => 0,
        _ => x >> 3,
    }
}

fn rights(x: i64) -> u32 {
    match x & 7 {
        0..=4 => bits32(x >> 3) & 0x1f,
        5 => broker_guest::raw_rights::READ,
        6 => broker_guest::raw_rights::ALL,
        _ => bits32(x >> 3),
    }
}

fn mode(x: i64) -> u32 {
    match x & 7 {
        0..=6 => pick(x, 3),
        _ => bits32(x >> 3),
    }
}

/// A region size: small, whole pages, zero or negative, or wild.
fn size(x: i64) -> i64 {
    match x & 7 {
        0..=3 => 1 + i64::from(pick(x, 8192)),
        4 | 5 => (1 + i64::from(pick(x, 4))) * 4096,
        6 => -i64::from(pick(x, 2)),
        _ => x >> 3,
    }
}

/// `(ptr, len, index)` of a name: a preferred one mostly, any known one, a known one with a bad
/// length, or wild bytes (`index` is `None` for the last two).
fn name(x: i64, preferred: &[usize]) -> (u32, u32, Option<usize>) {
    let i = match x & 7 {
        0..=3 => preferred[usize_of(sel(x, 3) % preferred.len() as u64)],
        _ => usize_of(sel(x, 3) % NAMES.len() as u64),
    };
    let (p, l) = (addr(NAMES[i].as_ptr()), u32::try_from(NAMES[i].len()).unwrap_or(0));
    match x & 7 {
        0..=5 => (p, l, Some(i)),
        6 => (p, bits32(x >> 8) % 300, None),
        _ => {
            let len = bits32(x >> 35) % 300;
            (pointer(x >> 3, len), len, None)
        }
    }
}

/// A callback table index: the right one mostly, one of the wrong signature, null, or wild.
fn callback(x: i64, right: u32) -> u32 {
    match x & 7 {
        0..=4 => right,
        5 => addr(wrong_signature as *const ()),
        6 => 0,
        _ => bits32(x >> 3) & 0xff,
    }
}

fn field(x: i64) -> u32 {
    match x & 7 {
        0..=6 => pick(x, 7),
        _ => bits32(x >> 3),
    }
}

fn int_len(x: i64, usual: u32) -> u32 {
    match x & 7 {
        0..=4 => usual,
        5 => 0,
        6 => pick(x, 64),
        _ => bits32(x >> 3),
    }
}

/// A version for refresh and commit: the region's current one mostly, 0, a newer one, or wild.
fn version(x: i64, h: u32) -> i64 {
    let current = info(h).map_or(0, |(_, v)| i64::try_from(v).unwrap_or(i64::MAX));
    match x & 7 {
        0..=4 => current,
        5 => 0,
        6 => current + 1,
        _ => x >> 3,
    }
}

fn as_mut(p: u32) -> *mut u8 {
    p as usize as *mut u8
}

fn as_const(p: u32) -> *const u8 {
    p as usize as *const u8
}

/// Changes one byte of `[p, p+len)` (a mirror buffer), so the next commit has something to write.
fn poke(p: u32, len: u32, x: i64) {
    if len == 0 {
        return;
    }
    let at = p + u32::try_from(sel(x, 4) % u64::from(len)).unwrap_or(0);
    let v = bits32(x >> 24) as u8 | 1;
    // SAFETY: `[p, p+len)` was a mirror buffer the broker accepted, so it lies in this app's memory, in
    // the scratch buffer or the page buffer, which no Rust reference covers. If the page is a window the
    // broker made read-only or revoked meanwhile, the store traps, which the fuzzer accepts.
    unsafe { core::ptr::write_volatile(as_mut(at), v) };
}

fn guards_intact() -> bool {
    let zones =
        [0..GUARD, OUT_AT + OUT_LEN..SCRATCH_AT, SCRATCH_AT + SCRATCH_LEN..SCRATCH_AT + SCRATCH_LEN + GUARD];
    zones.into_iter().all(|z| {
        ARENA[usize_of(u64::from(z.start))..usize_of(u64::from(z.end))]
            .iter()
            .all(|b| b.load(Ordering::Relaxed) == GUARD_BYTE)
    })
}

/// Fills the guards and the scratch buffer (letters, no NUL, so it serves as text), allocates the page
/// buffer and opens "owner/ro", "rw", "mi" and "sh"; returns how many of those opened. Call once per
/// instance before `op`.
#[no_mangle]
pub extern "C" fn setup() -> i32 {
    for (i, b) in ARENA.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(0);
        let in_scratch = (SCRATCH_AT..SCRATCH_AT + SCRATCH_LEN).contains(&i);
        let in_out = (OUT_AT..OUT_AT + OUT_LEN).contains(&i);
        let v = if in_scratch {
            b'a' + (i % 26) as u8
        } else if in_out {
            0
        } else {
            GUARD_BYTE
        };
        b.store(v, Ordering::Relaxed);
    }
    if PAGE_BUF.load(Ordering::Relaxed) == 0 {
        let layout = std::alloc::Layout::from_size_align(PAGE_BUF_LEN, 64 * 1024).expect("a valid layout");
        // SAFETY: the layout has a non-zero size; the buffer is leaked on purpose (windows go there).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return -1;
        }
        PAGE_BUF.store(addr(p), Ordering::Relaxed);
    }
    let marker = 0u8;
    let stack = addr(core::hint::black_box(&marker));
    let statics = [arena(), addr(INFO.as_ptr()), addr(HANDLES.as_ptr()), addr(NAMES.as_ptr())];
    let lowest = statics.iter().copied().min().unwrap_or(0);
    LIVE_LO.store(stack.saturating_sub(64 * 1024).min(lowest) & !(PAGE - 1), Ordering::Relaxed);
    LIVE_HI.store(PAGE_BUF.load(Ordering::Relaxed), Ordering::Relaxed);
    let mut opened = 0;
    for (n, fixed) in NAMES.iter().zip(&FIXED) {
        let mut h = 0u32;
        // SAFETY: `n` and `h` are live during the call.
        if unsafe { region_open(n.as_ptr(), n.len(), &mut h) } == 0 {
            fixed.store(h, Ordering::Relaxed);
            opened += 1;
        }
    }
    opened
}

/// With `on` non-zero, keeps every pointer the broker reads or writes (buffers, names, out-pointers)
/// away from the windows this app mapped, read-only or revoked ones included. This works around a
/// broker crash (a host function copying into a read-only or revoked window faults in host code) so
/// the rest of the ABI can be fuzzed until it is fixed; returns the previous setting.
#[no_mangle]
pub extern "C" fn avoid_windows(on: i32) -> i32 {
    i32::try_from(AVOID.swap(u32::from(on != 0), Ordering::Relaxed)).unwrap_or(1)
}

/// Address of the 64 KiB scratch buffer.
#[no_mangle]
pub extern "C" fn scratch() -> i32 {
    i32::try_from(arena() + SCRATCH_AT).unwrap_or(-1)
}

/// Address of the page-aligned page buffer (0 before `setup`).
#[no_mangle]
pub extern "C" fn page_buffer() -> i32 {
    i32::try_from(PAGE_BUF.load(Ordering::Relaxed)).unwrap_or(-1)
}

/// Entry `i` of the table of handles this app holds (or held), 0 if none.
#[no_mangle]
pub extern "C" fn handle_at(i: i32) -> i64 {
    let i = usize::try_from(i).unwrap_or(usize::MAX);
    HANDLES.get(i).map_or(0, |h| i64::from(h.load(Ordering::Relaxed)))
}

/// The memory this app uses itself, `lo << 32 | hi`; wild pointers are kept out of it.
#[no_mangle]
pub extern "C" fn live_range() -> i64 {
    i64::from(LIVE_LO.load(Ordering::Relaxed)) << 32 | i64::from(LIVE_HI.load(Ordering::Relaxed))
}

/// How many callbacks (watch and toolkit) ran in this app.
#[no_mangle]
pub extern "C" fn callbacks_run() -> i64 {
    i64::try_from(CALLBACKS.load(Ordering::Relaxed)).unwrap_or(-1)
}

/// Calls import number `func % 34` (in the order of `broker_tests::fuzz::IMPORTS`) with arguments derived
/// from `a`..`f`; returns what it returned, or [`GUARD_BROKEN`] if the call wrote outside its ranges.
#[no_mangle]
pub extern "C" fn op(func: i32, a: i64, b: i64, c: i64, d: i64, e: i64, f: i64) -> i32 {
    if PAGE_BUF.load(Ordering::Relaxed) == 0 {
        return NOT_SET_UP;
    }
    clear_out(0);
    clear_out(1);
    let rc = dispatch(func.rem_euclid(FUNCS), [a, b, c, d, e, f]);
    if guards_intact() {
        rc
    } else {
        GUARD_BROKEN
    }
}

/// Remembers the handle a successful call wrote to out-slot 0.
fn keep(rc: i32, out: u32, ring: (&[AtomicU32], &AtomicU32)) {
    if rc == 0 && out == out_slot(0) {
        remember(ring.0, ring.1, &[out_value(0)]);
    }
}

const GIVEN: (&[AtomicU32], &AtomicU32) = (&HANDLES, &HANDLES_SEEN);

#[allow(clippy::too_many_lines, reason = "one arm per import")]
fn dispatch(func: i32, [a, b, c, d, e, f]: [i64; 6]) -> i32 {
    // SAFETY (for every call below): the broker checks every pointer and length against this app's
    // linear memory and refuses the call otherwise. The pointers it accepts lie in the scratch buffer,
    // the out-slots, the page buffer or the low stack, which no Rust reference of this app covers (wild
    // pointers are moved away from the memory the app uses, see `tame`), so whatever the broker writes
    // there cannot break this app's own invariants.
    unsafe {
        match func {
            0 => abi_version(),
            1 => nop(),
            2 => {
                let (p, l, i) = name(a, OPENABLE);
                let out = out_pointer(b, 4, 0);
                let rc = region_open(as_const(p), l as usize, as_mut(out).cast());
                keep(rc, out, GIVEN);
                if let (0, Some(fixed)) = (rc, i.and_then(|i| FIXED.get(i))) {
                    if out == out_slot(0) {
                        fixed.store(out_value(0), Ordering::Relaxed);
                    }
                }
                rc
            }
            3 => {
                let (p, l, _) = name(a, CREATABLE);
                let out = out_pointer(b, 4, 0);
                let rc = region_create(as_const(p), l as usize, size(c), mode(d), as_mut(out).cast());
                keep(rc, out, GIVEN);
                rc
            }
            4 => handle_close(handle(a, Want::Given)),
            5 => handle_info(handle(a, Want::Any), as_mut(out_pointer(b, 40, 0))),
            6 | 7 => {
                let h = handle(a, Want::Any);
                let len = length(d, h);
                let p = pointer(c, len);
                if func == 6 {
                    region_read(h, offset(b), as_mut(p), len as usize)
                } else {
                    region_write(h, offset(b), as_const(p), len as usize)
                }
            }
            8 => {
                let out = out_pointer(e, 4, 0);
                let h = handle(a, Want::Any);
                let rc = handle_restrict(h, rights(b), offset(c), range_length(d), as_mut(out).cast());
                keep(rc, out, GIVEN);
                rc
            }
            9 => {
                let (p, l, _) = name(b, TARGETS);
                let h = handle(a, Want::Any);
                handle_grant(h, as_const(p), l as usize, rights(c), offset(d), range_length(e))
            }
            10 => handle_revoke(handle(a, Want::Any)),
            11 => {
                let h = handle(a, Want::Mirror);
                let len = mirror_length(c, h);
                let p = pointer(b, len);
                let rc = mirror_acquire(h, as_mut(p), len as usize, as_mut(out_pointer(d, 8, 0)).cast());
                if rc == 0 {
                    remember(&MIRRORS, &MIRRORS_SEEN, &[h, p, len]);
                }
                rc
            }
            12 | 13 => {
                // A buffer the broker accepted for a mirror before, or a derived (perhaps wild) one.
                let (h, p, len, acquired) = match recall::<3>(&MIRRORS, &MIRRORS_SEEN, sel(a, 3)) {
                    Some([h, p, len]) if a & 7 < 5 => (h, p, len, true),
                    _ => {
                        let h = handle(a, Want::Mirror);
                        let len = mirror_length(c, h);
                        (h, pointer(b, len), len, false)
                    }
                };
                // Poke the buffer only where the broker accepted it and it is still ours to touch.
                let p_shunned = shun(p, len);
                let acquired = acquired && p_shunned == p;
                let p = p_shunned;
                let since = version(d, h);
                let out_version = as_mut(out_pointer(e, 8, 0)).cast();
                let out_pages = as_mut(out_pointer(f, 4, 1)).cast();
                if func == 12 {
                    mirror_refresh(h, as_mut(p), len as usize, since, out_version, out_pages)
                } else {
                    if acquired && c & 7 < 6 {
                        poke(p, len, c);
                    }
                    mirror_commit(h, as_const(p), len as usize, since, out_version, out_pages)
                }
            }
            14 => {
                let h = handle(a, Want::Shared);
                let len = map_length(c, h);
                let p = map_address(b, len);
                let flags = match d & 7 {
                    0..=2 => 0,
                    3..=5 => MAP_WRITE,
                    6 => bits32(d >> 3) & 3,
                    _ => bits32(d >> 3),
                };
                let rc = region_map(h, as_mut(p), len as usize, flags);
                if rc == 0 {
                    remember(&WINDOWS, &WINDOWS_SEEN, &[h, p]);
                    note_window(p, len);
                }
                rc
            }
            15 => {
                let (h, p) = match recall::<2>(&WINDOWS, &WINDOWS_SEEN, sel(a, 3)) {
                    Some([h, p]) if a & 7 < 5 => (h, p),
                    _ => (handle(a, Want::Shared), map_address(b, 0)),
                };
                let rc = region_unmap(h, as_mut(p));
                if rc == 0 {
                    forget_window(p);
                }
                rc
            }
            16 => {
                let expected = if c & 1 == 0 { 0 } else { bits32(c >> 1) };
                region_wait(handle(a, Want::Any), offset(b), expected, bits32(d) & 3)
            }
            17 => region_notify(handle(a, Want::Any), offset(b)),
            18 => {
                let cb = callback(b, addr(on_watch as *const ()));
                region_watch(handle(a, Want::Any), cb, bits32(c))
            }
            19 => region_unwatch(handle(a, Want::Any)),
            20 => {
                let parent = if a & 1 == 0 { 0 } else { handle(a >> 1, Want::Object) };
                let out = out_pointer(c, 4, 0);
                let rc = ui_create(parent, mode(b), as_mut(out).cast());
                keep(rc, out, (&OBJECTS, &OBJECTS_SEEN));
                rc
            }
            21 => ui_set(handle(a, Want::Object), field(b), bits32(c) as i32),
            22 => ui_get(handle(a, Want::Object), field(b), as_mut(out_pointer(c, 4, 0)).cast()),
            23 => {
                let len = match c & 7 {
                    0..=5 => 1 + pick(c, 31),
                    6 => 31 + pick(c, 3),
                    _ => bits32(c >> 3),
                };
                ui_set_text(handle(a, Want::Object), as_const(pointer(b, len)), len as usize)
            }
            24 => {
                let cap = int_len(c, 32);
                let out = as_mut(out_pointer(d, 4, 1)).cast();
                ui_get_text(handle(a, Want::Object), as_mut(pointer(b, cap)), cap as usize, out)
            }
            25 => {
                let cb = callback(c, addr(on_ui as *const ()));
                ui_on_event(handle(a, Want::Object), bits32(b) % 6, cb, bits32(d))
            }
            26 => {
                let out = as_mut(out_pointer(d, 4, 0)).cast();
                ui_send(handle(a, Want::Object), bits32(b) % 6, bits32(c) as i32, out)
            }
            27 => ui_delete(handle(a, Want::Object)),
            28 => {
                let (p, l, _) = name(a, SERVICES);
                let out = out_pointer(b, 4, 0);
                let rc = fn_open(as_const(p), l as usize, as_mut(out).cast());
                keep(rc, out, (&FNS, &FNS_SEEN));
                rc
            }
            29 => {
                let arg_len = int_len(c, 8);
                let res_cap = int_len(e, 8);
                fn_call(
                    function_handle(a),
                    as_const(pointer(b, arg_len)),
                    arg_len as usize,
                    as_mut(pointer(d, res_cap)),
                    res_cap as usize,
                    as_mut(out_pointer(f, 4, 1)).cast(),
                )
            }
            30 => fn_close(function_handle(a)),
            32 | 33 => {
                // Up to four entries built on the stack (offsets, lengths and pointers as for
                // region_read), a count that is mostly theirs and sometimes not, and a list pointer
                // that is mostly the list and sometimes anywhere.
                let h = handle(a, Want::Any);
                let mut list = [[0u8; 16]; 4];
                let mut x = b;
                for (i, entry) in list.iter_mut().enumerate() {
                    let len = length(d.rotate_left(7 * i as u32), h);
                    let p = pointer(e.rotate_left(11 * i as u32), len);
                    entry[..8].copy_from_slice(&offset(x).to_le_bytes());
                    entry[8..12].copy_from_slice(&p.to_le_bytes());
                    entry[12..].copy_from_slice(&len.to_le_bytes());
                    x = x.rotate_left(13) ^ f;
                }
                let count = match c & 7 {
                    0..=5 => pick(c, 5) as usize,
                    6 => 300,
                    _ => bits32(c >> 3) as usize,
                };
                let lp = if f & 15 == 0 { pointer(f >> 4, 64) } else { list.as_ptr() as usize as u32 };
                if func == 32 {
                    region_readv(h, as_const(lp), count)
                } else {
                    region_writev(h, as_const(lp), count)
                }
            }
            _ => {
                // Pages of a mirror mostly; sometimes none, past its end, or wild.
                let first = match b & 7 {
                    0..=5 => pick(b, 4),
                    6 => pick(b, 1 << 16),
                    _ => bits32(b >> 3),
                };
                let pages = match c & 7 {
                    0..=5 => pick(c, 4),
                    6 => 0,
                    _ => bits32(c >> 3),
                };
                mirror_hint(handle(a, Want::Mirror), first, pages)
            }
        }
    }
}
