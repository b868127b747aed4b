//! The well-behaved tenant of the malicious-app suite: a deterministic workload over its own regions in
//! every mode, whose checksum must not change whatever another tenant's hostile app does meanwhile.
//!
//! `workload(seed)` fills the handle-mode region "data" with a pattern and reads it back, edits and
//! commits a mirror of "mirror", writes and reads a read-write window of "window", and samples the
//! `sensor.sample` host service. Every handle, mirror and window is closed before it returns, so it
//! leaves no capability behind. It returns a checksum (non-negative) or a negative status; a result that
//! contradicts what it wrote returns -1000 and up.

#![no_main]

use broker_guest::{Error, HostFn, Region};

/// FNV-1a over bytes.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `len` bytes of a xorshift sequence seeded by `seed` and `lane`.
fn pattern(seed: u64, lane: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ lane.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// A status that contradicts what this app did itself.
fn inconsistent(which: i32) -> Error {
    Error::Unknown(-1000 - which)
}

fn run(seed: u64) -> Result<u64, Error> {
    let mut sum = 0xcbf2_9ce4_8422_2325;

    // Handle mode: four 4 KiB writes, one 16 KiB read.
    let data = Region::open("data")?;
    let size = usize::try_from(data.len()?).map_err(|_| Error::OutOfBounds)?;
    let mut written = Vec::with_capacity(size);
    for (lane, at) in (0..size).step_by(4096).enumerate() {
        let chunk = pattern(seed, lane as u64, 4096.min(size - at));
        data.write(at as u64, &chunk)?;
        written.extend_from_slice(&chunk);
    }
    let mut back = vec![0u8; size];
    data.read(0, &mut back)?;
    if back != written {
        return Err(inconsistent(1));
    }
    sum = fnv(sum, &back);

    // Mirror mode: acquire, edit every page, commit, refresh (nothing changed), compare with a read.
    let mirror_region = Region::open("mirror")?;
    let mut mirror = mirror_region.mirror()?;
    let edit = pattern(seed, 100, mirror.len());
    mirror.copy_from_slice(&edit);
    mirror.commit()?;
    if mirror.refresh()? != 0 {
        return Err(inconsistent(2));
    }
    let mut read = vec![0u8; mirror.len()];
    mirror_region.read(0, &mut read)?;
    if read != edit || *mirror != *edit {
        return Err(inconsistent(3));
    }
    sum = fnv(sum, &mirror);
    drop(mirror);

    // Shared mode: fill a read-write window, read it back through the window and through the broker.
    let window_region = Region::open("window")?;
    let window = window_region.map_mut()?;
    let fill = pattern(seed, 200, window.len());
    window.write_from(0, &fill)?;
    let mut back = vec![0u8; window.len()];
    window.read_into(0, &mut back)?;
    if back != fill {
        return Err(inconsistent(4));
    }
    let mut read = vec![0u8; window.len()];
    window_region.read(0, &mut read)?;
    if read != fill {
        return Err(inconsistent(5));
    }
    sum = fnv(sum, &back);
    drop(window);

    // A host service.
    let sensor = HostFn::open("sensor.sample")?;
    for i in 0..8u64 {
        let mut out = [0u8; 8];
        sensor.call(&(seed.wrapping_add(i)).to_le_bytes(), &mut out)?;
        sum = fnv(sum, &out);
    }
    Ok(sum & (u64::MAX >> 1))
}

/// Runs the workload for `seed`; returns its checksum or a negative status.
#[no_mangle]
pub extern "C" fn workload(seed: i64) -> i64 {
    match run(seed.cast_unsigned()) {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

/// A cheap call that shows the instance answers.
#[no_mangle]
pub extern "C" fn ping() -> i64 {
    1
}
