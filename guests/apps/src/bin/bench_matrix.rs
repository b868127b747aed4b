//! The guest of `broker bench`: one export per access pattern, written once against
//! `broker_guest::View`, so the same code runs whatever mode the region is in.
//!
//! Where the view holds the region's bytes in this app's memory the patterns access them in place, as
//! an app would: a mirror's copy, which only this app changes, as a slice; a shared window, whose bytes
//! other apps change at any time and which is therefore never lent as a slice, by value
//! (`SharedWindow::load` in `scan` and `random`, `View::load` and `View::store` in `write1`: plain loads
//! and stores). In handle mode every access is a host call (`View::read`, `View::load`, `View::store`).
//! Going through `View::read` per access in the other modes would add a guest-side copy per access (a
//! wasm `memory.copy`, which wasmtime runs as a libcall), which costs more than the mode does (see
//! `benches/README.md`).
//!
//! Every pattern works in batches of [`BATCH`] accesses (a scan pass is one batch): it refreshes the
//! view first, so a reader sees what other readers committed, and `write1` commits after the batch.
//! Exports return 0 or a negative status code; `checksum` and `conflicts` report the figures.

#![no_main]

use std::cell::RefCell;

use broker_guest::{Error, Region, Result, SharedWindow, View};

/// Bytes a handle-mode scan copies per host call: one page, the granularity mirror refresh works at.
const CHUNK: usize = 4096;

/// Accesses between a refresh (and, for `write1`, a commit).
const BATCH: u32 = 1024;

struct Bench {
    view: View<'static>,
    /// Region length in bytes (a multiple of 8).
    len: u64,
    /// Last checksum: a scan's sum of every little-endian u64, or the sum of the values loaded.
    checksum: u64,
    /// Mirror commits refused for a conflict (the batch's changes on those pages are dropped).
    conflicts: u64,
    chunk: Vec<u8>,
    /// The handle-mode copy of a handover's payload.
    payload: Vec<u8>,
}

thread_local! {
    static BENCH: RefCell<Option<Bench>> = const { RefCell::new(None) };
}

fn status(r: Result<()>) -> i32 {
    r.map_or_else(|e| e.code(), |()| 0)
}

fn with(f: impl FnOnce(&mut Bench) -> Result<()>) -> i32 {
    status(BENCH.with_borrow_mut(|b| b.as_mut().map_or(Err(Error::NotFound), f)))
}

fn word(bytes: &[u8], offset: u64) -> Result<u64> {
    let at = usize::try_from(offset).map_err(|_| Error::OutOfBounds)?;
    let w: [u8; 8] = bytes.get(at..at + 8).and_then(|s| s.try_into().ok()).ok_or(Error::OutOfBounds)?;
    Ok(u64::from_le_bytes(w))
}

fn sum_words(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0u64, |sum, w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        sum.wrapping_add(u64::from_le_bytes(b))
    })
}

/// The little-endian u64 at `offset` of a shared window, loaded by value in place.
fn window_word<A>(w: &SharedWindow<'_, A>, offset: u64) -> Result<u64> {
    let at = usize::try_from(offset).map_err(|_| Error::OutOfBounds)?;
    Ok(u64::from_le(w.load::<u64>(at)?))
}

/// The sum of every little-endian u64 of a shared window, loaded by value in place, 64 bytes (one
/// bounds check, eight plain loads) at a time.
fn sum_window<A>(w: &SharedWindow<'_, A>) -> Result<u64> {
    let mut sum = 0u64;
    let whole = w.len() / 64 * 64;
    for at in (0..whole).step_by(64) {
        for x in w.load::<[u64; 8]>(at)? {
            sum = sum.wrapping_add(u64::from_le(x));
        }
    }
    for at in (whole..w.len() / 8 * 8).step_by(8) {
        sum = sum.wrapping_add(u64::from_le(w.load::<u64>(at)?));
    }
    Ok(sum)
}

/// xorshift64: cheap, deterministic per seed, and the same as the host's native baseline.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn seed(s: i64) -> u64 {
    u64::from_ne_bytes(s.to_ne_bytes()) | 1
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// Opens the region `bench` of this app's tenant and its view (a mirror copy or a mapped window in
/// those modes). Call once per instance; returns 0 or a status code.
#[no_mangle]
pub extern "C" fn open() -> i32 {
    let run = || -> Result<()> {
        // The view borrows the region for the instance's whole life, so the region is leaked.
        let region: &'static Region = Box::leak(Box::new(Region::open("bench")?));
        let len = region.len()?;
        let view = region.view()?;
        let chunk = vec![0u8; CHUNK];
        BENCH.with_borrow_mut(|b| *b = Some(Bench { view, len, checksum: 0, conflicts: 0, chunk, payload: Vec::new() }));
        Ok(())
    };
    status(run())
}

/// `passes` sequential scans: refresh, then sum every u64 of the region in order (in handle mode,
/// reading it a page at a time).
#[no_mangle]
pub extern "C" fn scan(passes: i32) -> i32 {
    with(|b| {
        for _ in 0..count(passes) {
            b.view.refresh()?;
            let in_place = match &b.view {
                View::Mirror(m) => Some(sum_words(m)),
                View::Shared(w) => Some(sum_window(w)?),
                View::SharedReadOnly(w) => Some(sum_window(w)?),
                View::Handle(_) => None,
            };
            if let Some(sum) = in_place {
                b.checksum = sum;
                continue;
            }
            let mut sum = 0u64;
            let mut offset = 0u64;
            while offset < b.len {
                let n = usize::try_from((b.len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
                let chunk = &mut b.chunk[..n];
                b.view.read(offset, chunk)?;
                sum = sum.wrapping_add(sum_words(chunk));
                offset += CHUNK as u64;
            }
            b.checksum = sum;
        }
        Ok(())
    })
}

/// `n` loads of random 8-byte-aligned u64s through `load`, added to `acc`.
fn random_loads(
    n: u32,
    words: u64,
    rng: &mut u64,
    acc: &mut u64,
    load: impl Fn(u64) -> Result<u64>,
) -> Result<()> {
    for _ in 0..n {
        *acc = acc.wrapping_add(load((next(rng) % words) * 8)?);
    }
    Ok(())
}

/// `iters` loads of random 8-byte-aligned u64s, refreshing every [`BATCH`].
#[no_mangle]
pub extern "C" fn random(iters: i32, seed_value: i64) -> i32 {
    with(|b| {
        let words = (b.len / 8).max(1);
        let mut rng = seed(seed_value);
        let mut acc = 0u64;
        let mut left = count(iters);
        while left > 0 {
            let n = left.min(BATCH);
            b.view.refresh()?;
            // In place where the bytes are in this app's memory; a host call per load in handle mode.
            let (r, a) = (&mut rng, &mut acc);
            match &b.view {
                View::Mirror(m) => {
                    let bytes: &[u8] = m;
                    random_loads(n, words, r, a, |offset| word(bytes, offset))?;
                }
                View::Shared(w) => random_loads(n, words, r, a, |offset| window_word(w, offset))?,
                View::SharedReadOnly(w) => random_loads(n, words, r, a, |offset| window_word(w, offset))?,
                View::Handle(_) => random_loads(n, words, r, a, |offset| b.view.load::<u64>(offset))?,
            }
            left -= n;
        }
        b.checksum = acc;
        Ok(())
    })
}

/// `iters` random 8-byte accesses of which 1% are stores, in batches of [`BATCH`]: refresh, access,
/// commit. A refused commit (mirror mode, another reader changed a page this batch wrote) is counted,
/// and the view refreshed, which drops this batch's changes on those pages, as a real app would redo.
#[no_mangle]
pub extern "C" fn write1(iters: i32, seed_value: i64) -> i32 {
    with(|b| {
        let words = (b.len / 8).max(1);
        let mut rng = seed(seed_value);
        let mut acc = 0u64;
        let mut left = count(iters);
        while left > 0 {
            let n = left.min(BATCH);
            b.view.refresh()?;
            for _ in 0..n {
                let r = next(&mut rng);
                let offset = ((r >> 7) % words) * 8;
                let store = r.is_multiple_of(100);
                // Stores go through `View::store`: a plain store in shared mode, tracked in mirror mode
                // (so the commit hints only the pages written), a host call in handle mode.
                // Loads through `View::load`: a plain load in mirror and shared mode, a host call in
                // handle mode.
                if store {
                    b.view.store(offset, &(acc ^ r))?;
                } else {
                    acc = acc.wrapping_add(b.view.load::<u64>(offset)?);
                }
            }
            match b.view.commit() {
                Ok(()) => {}
                Err(Error::Conflict) => {
                    b.conflicts += 1;
                    b.view.refresh()?;
                }
                Err(e) => return Err(e),
            }
            left -= n;
        }
        b.checksum = acc;
        Ok(())
    })
}

/// One handover of a payload (the peers benchmark, issue 18): the first `len` bytes of the region (a
/// multiple of 8) come to this app, which adds 1 to every little-endian u64 of them, and go back. In
/// handle mode that is one `region_read` and one `region_write` of the whole payload through a buffer
/// of this app's; in mirror mode a refresh, the change in the mirror's copy and a commit; in shared
/// mode the change in place in the window, 64 bytes at a time. Returns 0 or a status code
/// (`OUT_OF_BOUNDS` for a length that is negative, not a multiple of 8, or past the region).
#[no_mangle]
pub extern "C" fn handover(len: i32) -> i32 {
    with(|b| {
        let n = usize::try_from(len).map_err(|_| Error::OutOfBounds)?;
        if !n.is_multiple_of(8) || u64::try_from(n).map_or(true, |n| n > b.len) {
            return Err(Error::OutOfBounds);
        }
        match &mut b.view {
            View::Mirror(m) => {
                m.refresh()?;
                let bytes = m.get_mut(..n).ok_or(Error::OutOfBounds)?;
                bump_words(bytes);
                if let Err(e) = m.commit() {
                    // Not handed back: drop the change, so a retry starts from the region's bytes.
                    m.discard()?;
                    return Err(e);
                }
            }
            View::Shared(w) => {
                let whole = n / 64 * 64;
                for at in (0..whole).step_by(64) {
                    let words = w.load::<[u64; 8]>(at)?.map(|x| u64::from_le(x).wrapping_add(1).to_le());
                    w.store(at, &words)?;
                }
                for at in (whole..n).step_by(8) {
                    w.store(at, &u64::from_le(w.load::<u64>(at)?).wrapping_add(1).to_le())?;
                }
            }
            View::SharedReadOnly(_) => return Err(Error::PermissionDenied),
            View::Handle(_) => {
                b.payload.resize(n, 0);
                b.view.read(0, &mut b.payload)?;
                bump_words(&mut b.payload);
                b.view.write(0, &b.payload)?;
            }
        }
        Ok(())
    })
}

/// Adds 1 to every little-endian u64 of `bytes`.
fn bump_words(bytes: &mut [u8]) {
    for word in bytes.chunks_exact_mut(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&u64::from_le_bytes(w).wrapping_add(1).to_le_bytes());
    }
}

/// The last checksum, as the bits of an i64.
#[no_mangle]
pub extern "C" fn checksum() -> i64 {
    BENCH.with_borrow(|b| b.as_ref().map_or(0, |b| i64::from_ne_bytes(b.checksum.to_ne_bytes())))
}

/// Mirror commits refused for a conflict since `open`.
#[no_mangle]
pub extern "C" fn conflicts() -> i64 {
    BENCH.with_borrow(|b| b.as_ref().map_or(0, |b| i64::try_from(b.conflicts).unwrap_or(i64::MAX)))
}
