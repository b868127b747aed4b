//! The cost of replicating regions across brokers through NATS JetStream (issue 19), on loopback:
//! replication lag (a write at the home until it has landed in a replica on another broker, p50 and
//! p99) and replication throughput (MB/s of changed bytes, home to replica), next to raw JetStream
//! publish throughput measured in the same run against the same server: one publish in flight at a
//! time, each acknowledged, as the home's publisher does, and pipelined. The stream of changes is
//! measured with compaction off; the last column is the throughput with the default compaction, whose
//! snapshots take the place of a backlog of changes they hold.
//!
//! `cargo bench -p broker-benches --bench cluster` runs it in full; under `cargo test` it runs once,
//! small, as a smoke test. Needs `nats-server` (installed from Debian when missing).

#![forbid(unsafe_code)]

#[path = "../tests/support/nats.rs"]
mod nats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use broker::{Broker, BrokerConfig, Mode, Quotas, RegionId, RegionSpec};
use broker_cluster::{JoinOptions, Membership, NodeLoad, Replication, ReplicationOptions};

/// One broker of the bench's cluster.
struct Node {
    broker: Arc<Broker>,
    replication: Replication,
    _membership: Membership,
}

fn node(rt: &tokio::runtime::Runtime, url: &str, name: &str, options: ReplicationOptions) -> Node {
    let broker =
        Arc::new(Broker::new(BrokerConfig { workers: 1, ..BrokerConfig::default() }).expect("broker"));
    let quotas = Quotas { region_bytes: 1 << 30, memory_bytes: 4 << 30, ..Quotas::default() };
    broker.create_tenant("bench", quotas).expect("tenant");
    let membership = rt
        .block_on(Membership::join(
            url,
            name,
            &format!("bench-{name}"),
            JoinOptions::default(),
            NodeLoad::default,
        ))
        .expect("join");
    let replication =
        rt.block_on(Replication::start(url, name, Arc::clone(&broker), options)).expect("replication");
    Node { broker, replication, _membership: membership }
}

/// Percentile `p` (0..=100) of sorted nanoseconds.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1000.0)
}

fn mbps(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e6
}

/// Raw JetStream publish of `count` messages of `size` bytes to a stream of its own: one in flight
/// (each acknowledged before the next) and pipelined (all sent, then every acknowledgement awaited).
fn raw_publish(rt: &tokio::runtime::Runtime, url: &str, size: usize, count: usize) -> (f64, f64) {
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = jetstream::new(client);
        let name = format!("RAW_{size}");
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("raw.{size}")],
            storage: stream::StorageType::File,
            ..stream::Config::default()
        })
        .await
        .expect("stream");
        let payload = bytes::Bytes::from(vec![7u8; size]);
        let subject = format!("raw.{size}");
        let start = Instant::now();
        for _ in 0..count {
            js.publish(subject.clone(), payload.clone()).await.expect("publish").await.expect("ack");
        }
        let one = mbps((size * count) as u64, start.elapsed());
        let start = Instant::now();
        let mut acks = Vec::with_capacity(count);
        for _ in 0..count {
            acks.push(js.publish(subject.clone(), payload.clone()).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("ack");
        }
        let pipelined = mbps((size * count) as u64, start.elapsed());
        js.delete_stream(&name).await.expect("delete");
        (one, pipelined)
    })
}

struct Figures {
    size: usize,
    compacted_mbps: f64,
    lag_p50: u64,
    lag_p99: u64,
    replicated_mbps: f64,
    raw_one_mbps: f64,
    raw_pipelined_mbps: f64,
}

/// A replicated region named `name` at the home of a pair, followed by the replica: its id at the
/// home, its id at the replica, and how many writes of `size` bytes it holds side by side.
fn replicated(
    rt: &tokio::runtime::Runtime,
    (home, replica): (&Node, &Node),
    name: &str,
    size: usize,
) -> (RegionId, RegionId, u64) {
    let region_size = (size as u64 * 16).max(64 * 1024);
    let t = home.broker.tenant_id("bench").expect("tenant");
    let region =
        home.broker.create_region(t, RegionSpec::new(name, region_size, Mode::Handle)).expect("region");
    rt.block_on(home.replication.share("bench", name)).expect("share");
    let copy = rt.block_on(replica.replication.follow("bench", name)).expect("follow");
    (region, copy, region_size / size as u64)
}

/// Writes `count` changes of `size` bytes at the home as fast as it takes them, until the replica
/// has the last: MB/s.
fn burst(
    (home, replica): (&Node, &Node),
    (region, copy, slots): (RegionId, RegionId, u64),
    size: usize,
    count: usize,
) -> f64 {
    let data = vec![0x5au8; size];
    let start = Instant::now();
    let mut last = 0;
    for i in 0..count as u64 {
        last = home.broker.write_region(region, (i % slots) * size as u64, &data).expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.broker.region_info(copy).expect("info").version < last {
        assert!(Instant::now() < deadline, "the replica never reached version {last}");
        std::hint::spin_loop();
    }
    mbps((size * count) as u64, start.elapsed())
}

fn measure(
    rt: &tokio::runtime::Runtime,
    url: &str,
    (home, replica): (&Node, &Node),
    compacting: (&Node, &Node),
    size: usize,
    samples: usize,
) -> Figures {
    let (region, copy, slots) = replicated(rt, (home, replica), &format!("r{size}"), size);

    // When each version landed in the replica.
    let landed: Arc<parking_lot::Mutex<Vec<(u64, Instant)>>> = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = Arc::clone(&landed);
    replica
        .broker
        .watch_region(
            copy,
            Arc::new(move |c: &broker::region::Change| record.lock().push((c.version, Instant::now()))),
        )
        .expect("watch");
    let data = vec![0x5au8; size];

    // Lag: one write at a time, each waited for at the replica.
    let mut lags = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let at = (i % slots) * size as u64;
        let start = Instant::now();
        let v = home.broker.write_region(region, at, &data).expect("write");
        // The watcher runs just after the version is stored: wait for it, not the version.
        let deadline = Instant::now() + Duration::from_secs(60);
        let arrived = loop {
            if let Some((_, t)) = landed.lock().iter().rev().find(|(lv, _)| *lv == v) {
                break *t;
            }
            assert!(Instant::now() < deadline, "version {v} never landed in the replica");
            std::hint::spin_loop();
        };
        lags.push(u64::try_from(arrived.duration_since(start).as_nanos()).unwrap_or(u64::MAX));
    }
    lags.sort_unstable();

    // Throughput: writes as fast as the home takes them, until the replica has the last. At most
    // 32 MiB, half what a home queues before it replaces its queue by one snapshot (which would
    // measure the snapshot, not the stream of changes).
    let count = (samples * 4).min((32 << 20) / size);
    let replicated_mbps = burst((home, replica), (region, copy, slots), size, count);
    let (raw_one_mbps, raw_pipelined_mbps) = raw_publish(rt, url, size, count);
    // The same burst with the default compaction, on a region of the other pair.
    let other = replicated(rt, compacting, &format!("t{size}"), size);
    let compacted_mbps = burst(compacting, other, size, count);
    Figures {
        size,
        compacted_mbps,
        lag_p50: percentile(&lags, 50.0),
        lag_p99: percentile(&lags, 99.0),
        replicated_mbps,
        raw_one_mbps,
        raw_pipelined_mbps,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let samples = if full { 2000 } else { 20 };
    let server = nats::Nats::start();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // The stream of changes, every one published (no compaction); and the default options, apart.
    let off = || ReplicationOptions { snapshot_after: u64::MAX, ..ReplicationOptions::default() };
    let home = node(&rt, &server.url, "home", off());
    let replica = node(&rt, &server.url, "replica", off());
    let on = || ReplicationOptions { namespace: "compacted".into(), ..ReplicationOptions::default() };
    let compacting = (&node(&rt, &server.url, "home-c", on()), &node(&rt, &server.url, "replica-c", on()));
    println!("cluster: replication home -> replica through nats-server on loopback ({samples} lag samples per size)");
    println!(
        "{:>8} {:>11} {:>11} {:>14} {:>17} {:>17} {:>9} {:>13} {:>16}",
        "size",
        "lag p50",
        "lag p99",
        "replicated",
        "raw 1 in flight",
        "raw pipelined",
        "x raw 1",
        "x pipelined",
        "w/ compaction"
    );
    for size in [64usize, 4096, 65536] {
        let f = measure(&rt, &server.url, (&home, &replica), compacting, size, samples);
        println!(
            "{:>8} {:>11} {:>11} {:>9.1} MB/s {:>12.1} MB/s {:>12.1} MB/s {:>8.2}x {:>12.2}x {:>11.1} MB/s",
            f.size,
            us(f.lag_p50),
            us(f.lag_p99),
            f.replicated_mbps,
            f.raw_one_mbps,
            f.raw_pipelined_mbps,
            f.replicated_mbps / f.raw_one_mbps,
            f.replicated_mbps / f.raw_pipelined_mbps,
            f.compacted_mbps
        );
    }
}
