//! The sensor-hub scenario's nanoapp (after Android CHRE): it watches the hub's sample region, and on
//! every change reads the new samples, keeps a moving average, publishes it into its own results region
//! and acknowledges the newest sample to the host service `hub.ack` (which measures end-to-end latency).
//!
//! The sample region (`hub/samples`, written by the host's sensor feed) holds the count of samples
//! written (u64 at offset 0) and a ring of 16-byte slots from offset 64: slot `s % slots` holds sample
//! `s` as `(seq: u64, value: u64)`. The nanoapp sees every sample in order, or counts exactly the ones
//! it missed: when it falls more than a ring behind, or a slot was overwritten before it was read.
//! Its results region `results-<index>` holds `(last seq, moving average * 1000)`.

#![no_main]

use std::cell::RefCell;

use broker_guest::{watch_callback, Error, HostFn, Region, View};

const HEADER: u64 = 64;
const SLOT: u64 = 16;
const WINDOW: usize = 16;

struct App {
    samples: View<'static>,
    /// A handle on the header alone: the watch fires once per published sample, not per slot write.
    _header: Region,
    slots: u64,
    results: View<'static>,
    ack: HostFn,
    next: u64,
    seen: u64,
    missed: u64,
    out_of_order: u64,
    sum: u64,
    window: [u64; WINDOW],
    errors: u64,
}

thread_local! {
    static APP: RefCell<Option<App>> = const { RefCell::new(None) };
}

fn leak(r: Region) -> &'static Region {
    Box::leak(Box::new(r))
}

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

impl App {
    fn on_change(&mut self) -> Result<(), Error> {
        self.samples.refresh()?;
        let written: u64 = self.samples.load(0)?;
        let start = self.next;
        while self.next < written {
            if written - self.next > self.slots {
                // More than a ring behind: the oldest samples are gone.
                let gone = written - self.next - self.slots;
                self.missed += gone;
                self.next += gone;
                continue;
            }
            let at = HEADER + (self.next % self.slots) * SLOT;
            let seq: u64 = self.samples.load(at)?;
            let value: u64 = self.samples.load(at + 8)?;
            if seq == self.next {
                self.window[usize::try_from(seq % WINDOW as u64).unwrap_or(0)] = value;
                self.sum = self.sum.wrapping_add(value);
                self.seen += 1;
            } else if seq > self.next {
                // Overwritten by a newer sample before we read it.
                self.missed += 1;
            } else {
                self.out_of_order += 1;
            }
            self.next += 1;
        }
        if self.next == start {
            return Ok(());
        }
        let last = self.next - 1;
        let filled = usize::try_from(self.seen.min(WINDOW as u64)).unwrap_or(WINDOW).max(1);
        let avg_milli = self.window.iter().take(filled).sum::<u64>() * 1000 / filled as u64;
        self.results.store(0, &last)?;
        self.results.store(8, &avg_milli)?;
        self.results.commit()?;
        let mut out = [0u8; 8];
        self.ack.call(&last.to_le_bytes(), &mut out)?;
        Ok(())
    }
}

watch_callback!(fn on_samples(_user_data, _event) {
    APP.with_borrow_mut(|app| {
        if let Some(app) = app.as_mut() {
            if app.on_change().is_err() {
                app.errors += 1;
            }
        }
    });
});

/// Opens the sample region and this nanoapp's results region `results-<index>`, and starts watching.
#[no_mangle]
pub extern "C" fn init(index: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let samples = leak(Region::open("hub/samples")?);
        let slots = samples.len()?.saturating_sub(HEADER) / SLOT;
        if slots == 0 {
            return Err(Error::OutOfBounds);
        }
        let header =
            samples.restrict(broker_guest::Rights::READ | broker_guest::Rights::WATCH, 0, Some(8))?;
        header.watch(on_samples, 0)?;
        let results = leak(Region::open(&format!("results-{index}"))?);
        let app = App {
            samples: samples.view()?,
            _header: header,
            slots,
            results: results.view()?,
            ack: HostFn::open("hub.ack")?,
            next: 0,
            seen: 0,
            missed: 0,
            out_of_order: 0,
            sum: 0,
            window: [0; WINDOW],
            errors: 0,
        };
        APP.with_borrow_mut(|a| *a = Some(app));
        Ok(slots)
    };
    ret(run())
}

fn get(f: impl FnOnce(&App) -> u64) -> i64 {
    APP.with_borrow(|app| ret(app.as_ref().map(f).ok_or(Error::InvalidArgument)))
}

/// Samples processed in order.
#[no_mangle]
pub extern "C" fn seen() -> i64 {
    get(|a| a.seen)
}

/// Samples missed (fell a ring behind, or overwritten before read).
#[no_mangle]
pub extern "C" fn missed() -> i64 {
    get(|a| a.missed)
}

/// Samples accounted for: seen + missed (equals the samples written once the nanoapp caught up).
#[no_mangle]
pub extern "C" fn accounted() -> i64 {
    get(|a| a.seen + a.missed)
}

/// Samples found older than expected (must stay 0).
#[no_mangle]
pub extern "C" fn out_of_order() -> i64 {
    get(|a| a.out_of_order)
}

/// Sum of the values of the samples seen.
#[no_mangle]
pub extern "C" fn checksum() -> i64 {
    get(|a| a.sum)
}

/// Callbacks that failed (must stay 0).
#[no_mangle]
pub extern "C" fn errors() -> i64 {
    get(|a| a.errors)
}
