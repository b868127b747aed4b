//! The built-in demo that `broker demo` runs: two apps of two tenants share a region through a
//! read-only grant.
//!
//! A producer app (tenant `producers`) writes readings into its region `readings` and grants the
//! consumer app (tenant `consumers`) read access; the consumer sums them through its handle and then
//! tries to write, which the broker refuses. The scenario runner will supersede this demo.

use std::io::Write;

use broker_abi::Status;
use wasmtime::Val;

use broker::{Broker, BrokerConfig, Error, InstanceConfig, Mode, Quotas, RegionSpec, Rights};

/// What the demo observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoReport {
    /// Readings the producer wrote.
    pub readings: u32,
    /// The sum the consumer computed through its read-only grant.
    pub consumer_sum: i64,
    /// The sum the host computed reading the region directly.
    pub host_sum: i64,
    /// The status the consumer's write attempt got.
    pub tamper_status: i64,
}

impl DemoReport {
    /// Whether everything behaved: equal sums and a refused write.
    pub fn ok(&self) -> bool {
        self.consumer_sum == self.host_sum && self.tamper_status == i64::from(Status::PermissionDenied.code())
    }
}

fn step(out: &mut dyn Write, msg: &str) {
    // Progress output is best effort: a closed stdout must not fail the demo.
    let _ = writeln!(out, "{msg}");
}

/// Runs the demo with `readings` readings, printing progress to `out`.
///
/// # Errors
/// Any broker error; the demo's own checks are reported in [`DemoReport`].
pub fn run(readings: u32, out: &mut dyn Write) -> Result<DemoReport, Error> {
    let broker = Broker::new(BrokerConfig::default())?;
    let producers = broker.create_tenant("producers", Quotas::default())?;
    let consumers = broker.create_tenant("consumers", Quotas::default())?;
    broker.load_module(producers, "producer", broker_guests::DEMO_PRODUCER_WASM)?;
    broker.load_module(consumers, "consumer", broker_guests::DEMO_CONSUMER_WASM)?;
    let producer = broker.start_instance(producers, "producer", "producer", InstanceConfig::default())?;
    let consumer = broker.start_instance(consumers, "consumer", "consumer", InstanceConfig::default())?;
    step(out, "started instances producers/producer and consumers/consumer");

    let size = 8 + 8 * u64::from(readings);
    let region = broker.create_region(producers, RegionSpec::new("readings", size, Mode::Handle))?;
    step(out, &format!("created region producers/readings: {size} bytes, handle mode"));
    // Apps hold what they are given: the producer may write the readings and share them, nothing more.
    broker.grant(region, producer, Rights::READ | Rights::WRITE | Rights::GRANT, 0, None)?;
    step(out, "granted producers/producer read, write and grant on it");

    let readings_arg = i32::try_from(readings)
        .map_err(|_| Error::InvalidArgument { field: "readings", reason: "exceeds i32".into() })?;
    let written = broker.call_i64(producer, "produce", &[Val::I32(readings_arg)])?;
    step(out, &format!("producer wrote {written} readings and granted consumers/consumer read access"));

    let consumer_sum = broker.call_i64(consumer, "consume", &[])?;
    step(out, &format!("consumer summed them through its read-only grant: {consumer_sum}"));

    let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
    broker.read_region(region, 0, &mut bytes)?;
    let host_sum = bytes
        .chunks_exact(8)
        .skip(1)
        .map(|c| c.try_into().map_or(0, u64::from_le_bytes))
        .fold(0i64, |acc, v| acc.wrapping_add(i64::try_from(v).unwrap_or(i64::MAX)));
    step(out, &format!("host read the region directly:                 {host_sum}"));

    let tamper_status = broker.call_i64(consumer, "tamper", &[])?;
    let described = i32::try_from(tamper_status)
        .ok()
        .and_then(Status::from_code)
        .map_or("unknown status", Status::c_name);
    step(out, &format!("consumer tried to overwrite the readings: {described} ({tamper_status})"));

    let report = DemoReport { readings, consumer_sum, host_sum, tamper_status };
    step(out, if report.ok() { "demo ok: shared through a grant, write refused" } else { "demo FAILED" });
    Ok(report)
}
