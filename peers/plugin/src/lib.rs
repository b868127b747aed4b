//! The Extism side of the peers benchmark's handover: the plugin gets a payload, adds 1 to every
//! little-endian u64 of it, and hands it back, as the broker's bench guest does with a region
//! (`bench_matrix`'s `handover` export).

use extism_pdk::{plugin_fn, FnResult};

/// Adds 1 to every little-endian u64 of the payload and returns it.
#[plugin_fn]
pub fn handover(input: Vec<u8>) -> FnResult<Vec<u8>> {
    let mut payload = input;
    for word in payload.chunks_exact_mut(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&u64::from_le_bytes(w).wrapping_add(1).to_le_bytes());
    }
    Ok(payload)
}
