//! Expected results computed by the host, independently of the guest apps: the data the pipeline's
//! producer writes and the transformation its transformer applies, and the sensor service's samples.
//! A check passes only when an app's result equals what the host computed on its own.

/// Sample `i` of the synthetic sensor: a reading in `[0, 1000)` from a fixed pseudo-random sequence.
/// The one home of the sequence: the `sensor.sample` host service ([`sensor_service`]) and the
/// scenarios' sensor feed both serve it.
pub fn sensor_sample(i: u64) -> u64 {
    let x = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (x >> 33) % 1000
}

/// The name apps open the synthetic sensor by (`fn_open("sensor.sample")`).
pub const SENSOR_SERVICE: &str = "sensor.sample";

/// The synthetic sensor as a host service: an 8-byte little-endian sample index in, the 8-byte reading
/// ([`sensor_sample`]) out. Scenarios register it on the broker they build
/// (`broker.register_service(SENSOR_SERVICE, None, sensor_service())`); the engine has no built-in
/// services of its own.
pub fn sensor_service() -> broker::ServiceFn {
    std::sync::Arc::new(|args: &[u8]| {
        let i = args
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("expects an 8-byte sample index")?;
        Ok(sensor_sample(i).to_le_bytes().to_vec())
    })
}

/// The sum of samples `0..n`.
pub fn sensor_sum(n: u64) -> u64 {
    (0..n).fold(0u64, |acc, i| acc.wrapping_add(sensor_sample(i)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `w` of pipeline block `i`, as the producer writes it.
pub fn pipeline_word(block: u64, w: u64) -> u64 {
    splitmix64(block << 32 | w)
}

/// The transformer's function of one word.
pub fn pipeline_transform(x: u64) -> u64 {
    x.rotate_left(13) ^ 0xA5A5_5A5A_DEAD_BEEF
}

/// The consumer's checksum after consuming blocks `0..blocks` of `block_bytes` bytes each.
pub fn pipeline_checksum(blocks: u64, block_bytes: u64) -> u64 {
    let words = block_bytes / 8;
    (0..blocks).fold(0u64, |acc, i| {
        let sum = (0..words)
            .fold(0u64, |s, w| s.wrapping_add((w + 1).wrapping_mul(pipeline_transform(pipeline_word(i, w)))));
        acc.wrapping_mul(31).wrapping_add(sum)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_readings_below_1000_and_not_constant() {
        let samples: Vec<u64> = (0..100).map(sensor_sample).collect();
        assert!(samples.iter().all(|s| *s < 1000));
        assert!(samples.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(sensor_sum(3), samples[0] + samples[1] + samples[2]);
    }

    #[test]
    fn checksum_depends_on_order_and_size() {
        assert_eq!(pipeline_checksum(0, 4096), 0);
        assert_ne!(pipeline_checksum(2, 4096), pipeline_checksum(2, 8192));
        assert_ne!(pipeline_checksum(1, 64), pipeline_checksum(2, 64));
    }
}
