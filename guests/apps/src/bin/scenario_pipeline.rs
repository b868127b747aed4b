//! The pipeline scenario's app: one module, three roles, loaded by three tenants. The producer
//! (tenant `producers`) writes block `i` into its region `stage1`; the transformer (tenant
//! `transformers`) reads `stage1` through a read-only grant, transforms every 8-byte word and writes
//! the result into its region `stage2`; the consumer (tenant `consumers`) reads `stage2` through a
//! grant and folds it into a checksum the host compares with its own computation.
//!
//! Every role reaches its regions through `Region::view()`, so the same code runs in handle, mirror and
//! shared mode: in place in mirror mode (the app's own copy), by one copy out of or into the window in
//! shared mode (whose bytes other apps may change meanwhile, so they are never borrowed as a slice), and
//! through one bulk host call in handle mode.
//! Exports return a non-negative result or a negative status.
//!
//! The data is fixed by formulas the host re-implements (`broker_scenario::expect`): word `w` of block
//! `i` is `splitmix64(i << 32 | w)`, the transform is `rotl(x, 13) ^ 0xA5A5_5A5A_DEAD_BEEF`, and the
//! checksum is `acc = acc * 31 + sum_w (w + 1) * y_w` over blocks in order (wrapping arithmetic).

#![no_main]

use std::cell::RefCell;

use broker_guest::{Error, Mode, Region, View};

const STAGE1: &str = "producers/stage1";
const STAGE2: &str = "transformers/stage2";
const MASK: u64 = 0xA5A5_5A5A_DEAD_BEEF;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A region opened once and kept with its view for the life of the instance.
struct Stage {
    view: View<'static>,
    len: usize,
    /// Scratch for handle and shared mode, where the bytes are not lent as a slice.
    buf: Vec<u8>,
}

impl Stage {
    fn open(name: &str) -> Result<Stage, Error> {
        let region: &'static Region = Box::leak(Box::new(Region::open(name)?));
        let len = usize::try_from(region.len()?).map_err(|_| Error::OutOfBounds)?;
        Ok(Stage { view: region.view()?, len, buf: Vec::new() })
    }

    /// Runs `f` over the current bytes (refreshed first): in place in mirror mode, otherwise over one copy,
    /// so `f` sees bytes that do not change under it.
    fn with_bytes<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        self.view.refresh()?;
        if let Some(bytes) = self.view.as_slice() {
            return Ok(f(bytes));
        }
        self.buf.resize(self.len, 0);
        self.view.read(0, &mut self.buf)?;
        Ok(f(&self.buf))
    }

    /// Calls `f` with every little-endian word of the current bytes (refreshed first): in place in
    /// mirror mode, by value straight from the window in shared mode (plain loads, no copy: the
    /// pipeline's protocol guarantees nobody writes this region meanwhile), over one copy in handle mode.
    fn for_each_word(&mut self, mut f: impl FnMut(u64)) -> Result<usize, Error> {
        if self.view.mode() == Mode::Shared {
            self.view.refresh()?;
            let words = self.len / 8;
            let mut at = 0;
            while at + 8 <= words {
                let chunk: [u64; 8] =
                    self.view.load(u64::try_from(at * 8).map_err(|_| Error::OutOfBounds)?)?;
                chunk.into_iter().for_each(|w| f(u64::from_le(w)));
                at += 8;
            }
            for i in at..words {
                let w: u64 = self.view.load(u64::try_from(i * 8).map_err(|_| Error::OutOfBounds)?)?;
                f(u64::from_le(w));
            }
            return Ok(self.len);
        }
        self.with_bytes(|bytes| {
            words(bytes).for_each(&mut f);
            bytes.len()
        })
    }

    /// Writes word `i` = `f(i)` (little-endian) for every word, then publishes: by value straight into
    /// the window in shared mode, otherwise as `fill` does.
    fn fill_words(&mut self, f: impl Fn(u64) -> u64) -> Result<(), Error> {
        if self.view.mode() == Mode::Shared {
            let words = u64::try_from(self.len / 8).map_err(|_| Error::OutOfBounds)?;
            // Eight words per store: one bounds check for 64 bytes of plain stores.
            let mut i = 0;
            while i + 8 <= words {
                let chunk: [u64; 8] = core::array::from_fn(|k| f(i + k as u64).to_le());
                self.view.store(i * 8, &chunk)?;
                i += 8;
            }
            for i in i..words {
                self.view.store(i * 8, &f(i).to_le())?;
            }
            return self.view.commit();
        }
        self.fill(|bytes| {
            for (w, chunk) in (0u64..).zip(bytes.chunks_exact_mut(8)) {
                chunk.copy_from_slice(&f(w).to_le_bytes());
            }
        })
    }

    /// Lets `f` fill the bytes (in place in mirror mode, otherwise in scratch copied in whole), then
    /// publishes them.
    fn fill(&mut self, f: impl FnOnce(&mut [u8])) -> Result<(), Error> {
        if let Some(bytes) = self.view.as_mut_slice() {
            f(bytes);
        } else {
            self.buf.resize(self.len, 0);
            f(&mut self.buf);
            self.view.write(0, &self.buf)?;
        }
        self.view.commit()
    }
}

thread_local! {
    static INPUT: RefCell<Option<Stage>> = const { RefCell::new(None) };
    static OUTPUT: RefCell<Option<Stage>> = const { RefCell::new(None) };
    static CHECKSUM: RefCell<u64> = const { RefCell::new(0) };
    static BLOCK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn stage<R>(
    cell: &'static std::thread::LocalKey<RefCell<Option<Stage>>>,
    name: &str,
    f: impl FnOnce(&mut Stage) -> Result<R, Error>,
) -> Result<R, Error> {
    cell.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(Stage::open(name)?);
        }
        slot.as_mut().map_or(Err(Error::InvalidArgument), f)
    })
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| c.try_into().map_or(0, u64::from_le_bytes))
}

fn ret(r: Result<usize, Error>) -> i64 {
    match r {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

/// Producer: writes block `i` into `stage1`; returns the bytes written.
#[no_mangle]
pub extern "C" fn produce(i: i64) -> i64 {
    let block = u64::try_from(i).unwrap_or(0) << 32;
    ret(stage(&OUTPUT, STAGE1, |out| {
        let len = out.len;
        out.fill_words(|w| splitmix64(block | w))?;
        Ok(len)
    }))
}

/// Transformer: reads `stage1`, writes the transformed words into `stage2`; returns the bytes moved.
#[no_mangle]
pub extern "C" fn transform() -> i64 {
    ret(BLOCK.with_borrow_mut(|block| {
        // The input is copied out once (read in place in mirror mode) before the output is touched, so
        // the two regions never need to be borrowed at the same time.
        let len = stage(&INPUT, STAGE1, |input| {
            block.clear();
            input.for_each_word(|x| block.push(x.rotate_left(13) ^ MASK))
        })?;
        stage(&OUTPUT, STAGE2, |out| {
            let n = (out.len / 8).min(block.len());
            out.fill_words(|i| {
                usize::try_from(i).ok().filter(|i| *i < n).and_then(|i| block.get(i)).copied().unwrap_or(0)
            })
        })?;
        Ok(len)
    }))
}

/// Consumer: folds `stage2` into the running checksum; returns the bytes read.
#[no_mangle]
pub extern "C" fn consume() -> i64 {
    ret(stage(&INPUT, STAGE2, |input| {
        let (mut sum, mut k) = (0u64, 0u64);
        let len = input.for_each_word(|y| {
            k += 1;
            sum = sum.wrapping_add(k.wrapping_mul(y));
        })?;
        CHECKSUM.with_borrow_mut(|acc| *acc = acc.wrapping_mul(31).wrapping_add(sum));
        Ok(len)
    }))
}

/// Consumer: returns the checksum of the blocks consumed since the last call (as i64 bits) and
/// starts a new one.
#[no_mangle]
pub extern "C" fn take_checksum() -> i64 {
    #[allow(clippy::cast_possible_wrap, reason = "the checksum's bits are returned as they are")]
    CHECKSUM.with_borrow_mut(|acc| std::mem::take(acc) as i64)
}

static INBOX_EVENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

broker_guest::watch_callback!(fn on_inbox(_user_data, event) {
    INBOX_EVENTS.fetch_add(1 + u64::from(event.missed), std::sync::atomic::Ordering::Relaxed);
});

/// Consumer (mixed-trust): watches the untrusted tenant's `inbox`, counting its changes; returns 0.
#[no_mangle]
pub extern "C" fn watch_inbox() -> i64 {
    let run = || -> Result<usize, Error> {
        let inbox = Region::open("untrusted/inbox")?;
        inbox.watch(on_inbox, 0)?;
        // The watch lives as long as the handle: keep it for the life of the instance.
        let _ = inbox.into_raw();
        Ok(0)
    };
    ret(run())
}

/// Consumer (mixed-trust): inbox changes seen (delivered callbacks plus the changes merged into them).
#[no_mangle]
pub extern "C" fn inbox_events() -> i64 {
    i64::try_from(INBOX_EVENTS.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX)
}
