//! Demo consumer: opens the readings another app granted it, sums them, and shows that its read-only
//! grant refuses writes.

#![no_main]

use broker_guest::{Error, Region};

/// Returns the sum of the readings, or a negative status.
#[no_mangle]
pub extern "C" fn consume() -> i64 {
    let run = || -> Result<i64, Error> {
        let region = Region::open("producers/readings")?;
        let n: u64 = region.load(0)?;
        let mut total = 0u64;
        for i in 0..n {
            total = total.wrapping_add(region.load::<u64>(8 + i * 8)?);
        }
        Ok(i64::try_from(total).unwrap_or(i64::MAX))
    };
    run().unwrap_or_else(|e| i64::from(e.code()))
}

/// Tries to overwrite the count; returns the status (a read-only grant must answer PermissionDenied).
#[no_mangle]
pub extern "C" fn tamper() -> i64 {
    let run = || -> Result<(), Error> { Region::open("producers/readings")?.store(0, &0u64) };
    match run() {
        Ok(()) => 0,
        Err(e) => i64::from(e.code()),
    }
}
