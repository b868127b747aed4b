//! Demo producer: writes a sequence of readings into the region "readings" and grants the consumer
//! read-only access to it.

#![no_main]

use broker_guest::{Region, Rights};

/// Writes `n` u64 readings (`i * i`) from offset 8, then the count at offset 0; grants "consumers/consumer" read.
#[no_mangle]
pub extern "C" fn produce(n: i32) -> i64 {
    let run = || -> Result<i64, broker_guest::Error> {
        let region = Region::open("readings")?;
        let n = u64::try_from(n).unwrap_or(0);
        for i in 0..n {
            region.store(8 + i * 8, &(i * i))?;
        }
        region.store(0, &n)?;
        region.grant("consumers/consumer", Rights::READ, 0, None)?;
        // Keep the handle open: closing it would revoke the grant derived from it.
        let _ = region.into_raw();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    };
    run().unwrap_or_else(|e| i64::from(e.code()))
}
