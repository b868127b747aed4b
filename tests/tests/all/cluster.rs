//! Replicated regions across brokers through a real NATS JetStream server (issue 19): every broker
//! here is a real `Broker` with real guests, each with its own NATS connection, as separate daemons
//! would be; the daemon-process test (kill -9 of a replica's process) is in `cli/tests/process.rs`.
//!
//! Every check compares the brokers' bytes with a model the test computes from the writes it made,
//! never one broker with itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::{Broker, Mode, RegionId, RegionSpec, Rights};
use broker_cluster::{JoinOptions, Membership, NodeLoad, Replication, ReplicationOptions, Role};
use broker_tests::{args, call, start, tenant, Status};

use crate::nats::Nats;

const TENANT: &str = "acme";
const REGION: &str = "data";
const SIZE: u64 = 64 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// One broker in the cluster: its engine, its membership (fast heartbeats) and its replication.
struct Node {
    name: &'static str,
    broker: Arc<Broker>,
    membership: Option<Membership>,
    replication: Option<Replication>,
}

impl Node {
    fn join(rt: &tokio::runtime::Runtime, url: &str, name: &'static str) -> Node {
        Node::join_with(rt, url, name, |_| {})
    }

    /// As [`Node::join`], with `tune` applied to the test's replication options.
    fn join_with(
        rt: &tokio::runtime::Runtime,
        url: &str,
        name: &'static str,
        tune: impl Fn(&mut ReplicationOptions),
    ) -> Node {
        // With the UI toolkit extension: callback_app imports it.
        let broker = Arc::new(broker_tests::broker_with_ui());
        tenant(&broker, TENANT);
        let options = JoinOptions { heartbeat: Duration::from_millis(200), ttl: Duration::from_secs(1) };
        let membership = rt
            .block_on(Membership::join(
                url,
                name,
                &format!("127.0.0.1:{}", name.len()),
                options,
                NodeLoad::default,
            ))
            .expect("joins");
        let mut options = ReplicationOptions {
            takeover_after: Duration::from_secs(3),
            check_every: Duration::from_millis(100),
            ..ReplicationOptions::default()
        };
        tune(&mut options);
        let replication = rt
            .block_on(Replication::start(url, name, Arc::clone(&broker), options))
            .expect("replication starts");
        Node { name, broker, membership: Some(membership), replication: Some(replication) }
    }

    fn repl(&self) -> &Replication {
        self.replication.as_ref().expect("replicating")
    }

    /// Creates the region here and makes this node its home.
    fn share(&self, rt: &tokio::runtime::Runtime, spec: RegionSpec) -> RegionId {
        let t = self.broker.tenant_id(TENANT).expect("tenant");
        self.broker.create_region(t, spec).expect("region");
        rt.block_on(self.repl().share(TENANT, REGION)).expect("shared")
    }

    fn follow(&self, rt: &tokio::runtime::Runtime) -> RegionId {
        rt.block_on(self.repl().follow(TENANT, REGION)).expect("follows")
    }

    fn region(&self) -> RegionId {
        let t = self.broker.tenant_id(TENANT).expect("tenant");
        self.broker.region_id(t, REGION).expect("region")
    }

    fn bytes(&self) -> (u64, Vec<u8>) {
        let mut buf = vec![0; usize::try_from(SIZE).expect("size")];
        let v = self.broker.read_region_versioned(self.region(), 0, &mut buf).expect("read");
        (v, buf)
    }

    fn version(&self) -> u64 {
        self.broker.region_info(self.region()).expect("info").version
    }

    /// Dies as a killed process would: no leave, no goodbye; its node record expires.
    fn kill(&mut self) {
        if let Some(r) = self.replication.take() {
            r.shutdown();
        }
        drop(self.membership.take());
    }
}

/// Waits until every node holds the same version as the first, then returns their bytes.
fn converged(nodes: &[&Node]) -> (u64, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = nodes[0].version();
        if nodes.iter().all(|n| n.version() == want) {
            let first = nodes[0].bytes();
            if nodes.iter().all(|n| n.bytes() == first) {
                return first;
            }
        }
        let seen: Vec<_> = nodes.iter().map(|n| (n.name, n.version())).collect();
        assert!(Instant::now() < deadline, "the nodes never converged: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes commit `i` writes: 8 bytes no other commit writes, a positive `i64` (what `handle_app`
/// stores).
fn commit_bytes(i: u64) -> [u8; 8] {
    ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1) >> 1).to_le_bytes()
}

/// Where commit `i` writes: spread over the region, some straddling pages.
fn commit_offset(i: u64) -> u64 {
    (i * 4093) % (SIZE - 8)
}

/// The region as the test's accepted writes left it: commit `i`'s bytes at commit `i`'s offset, in the
/// order written (what every node must end with).
struct Model(Vec<u8>);

impl Model {
    fn new() -> Model {
        Model(vec![0; usize::try_from(SIZE).expect("size")])
    }

    /// Writes commit `i` through node `n`'s broker; only an accepted write enters the model.
    fn write(&mut self, n: &Node, i: u64) -> Result<u64, broker::Error> {
        let (offset, bytes) = (commit_offset(i), commit_bytes(i));
        let v = n.broker.write_region(n.region(), offset, &bytes)?;
        let at = usize::try_from(offset).expect("offset");
        self.0[at..at + 8].copy_from_slice(&bytes);
        Ok(v)
    }

    /// Writes `commits` through `nodes` in turn, each refused one again until it is accepted (writes
    /// resuming after an outage or a takeover), for at most 30 s.
    fn write_until_accepted(&mut self, nodes: &[&Node], commits: std::ops::Range<u64>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in commits {
            let n = nodes[usize::try_from(i).expect("i") % nodes.len()];
            while let Err(e) = self.write(n, i) {
                assert!(Instant::now() < deadline, "writes through {} did not resume: {e}", n.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Replicates 1,000 commits made from every node in turn (host writes at the home and on replicas,
/// guest handle writes on a replica), and checks that each node ends byte-identical with the model, at
/// the same version.
fn replicate_a_thousand_commits(count: usize) {
    let nats = Nats::start();
    let rt = runtime();
    let names = ["a", "b", "c"];
    let nodes: Vec<Node> = names[..count].iter().map(|n| Node::join(&rt, &nats.url, n)).collect();
    nodes[0].share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    for n in &nodes[1..] {
        n.follow(&rt);
        assert_eq!(n.repl().role(TENANT, REGION), Some(Role::Replica { home: "a".into() }));
    }
    assert_eq!(nodes[0].repl().role(TENANT, REGION), Some(Role::Home));
    // A guest on the last replica writes through its handle.
    let last = &nodes[count - 1];
    let t = last.broker.tenant_id(TENANT).expect("tenant");
    let app = start(&last.broker, t, "handle_app", "writer");
    last.broker.grant(last.region(), app, Rights::READ | Rights::WRITE, 0, None).expect("grant");
    let h = call(&last.broker, app, "open", args![0]);
    assert!(h > 0, "open: {h}");

    let mut model = vec![0u8; usize::try_from(SIZE).expect("size")];
    for i in 0..1000u64 {
        let (offset, bytes) = (commit_offset(i), commit_bytes(i));
        let writer = &nodes[usize::try_from(i).expect("i") % count];
        if i % 10 == 9 {
            let v = i64::from_le_bytes(bytes);
            let h32 = i32::try_from(h).expect("handle");
            assert_eq!(
                call(&last.broker, app, "store_u64", args![h32, i64::try_from(offset).expect("o"), v]),
                0
            );
        } else {
            writer.broker.write_region(writer.region(), offset, &bytes).expect("write");
        }
        let at = usize::try_from(offset).expect("offset");
        model[at..at + 8].copy_from_slice(&bytes);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let (version, bytes) = converged(&refs);
    assert!(bytes == model, "the replicated bytes differ from the commits made");
    // The snapshot at sharing, then one version per commit.
    assert_eq!(version, 1001);
}

#[test]
fn r19_two_brokers_replicate_a_thousand_commits() {
    replicate_a_thousand_commits(2);
}

#[test]
fn r19_three_brokers_replicate_a_thousand_commits() {
    replicate_a_thousand_commits(3);
}

/// Two mirror commits from two nodes against the same version under `reject`: exactly one wins, the
/// other is told (Conflict, nothing written), and every node holds the winner's bytes.
#[test]
fn r19_conflicting_commits_from_two_nodes_exactly_one_wins() {
    let nats = Nats::start();
    let rt = runtime();
    let (a, b, c) =
        (Node::join(&rt, &nats.url, "a"), Node::join(&rt, &nats.url, "b"), Node::join(&rt, &nats.url, "c"));
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Mirror));
    b.follow(&rt);
    c.follow(&rt);
    let app = |n: &Node, name: &str| {
        let t = n.broker.tenant_id(TENANT).expect("tenant");
        let i = start(&n.broker, t, "mirror_app", name);
        n.broker.grant(n.region(), i, Rights::READ | Rights::WRITE, 0, None).expect("grant");
        assert_eq!(call(&n.broker, i, "acquire", args![0]), 0, "acquire");
        i
    };
    let (on_b, on_c, on_a) = (app(&b, "mb"), app(&c, "mc"), app(&a, "ma"));
    // Both replicas' mirrors saw the same version; both change the same word.
    assert_eq!(call(&b.broker, on_b, "store", args![0, 100i64, 0xBBi64]), 0);
    assert_eq!(call(&c.broker, on_c, "store", args![0, 100i64, 0xCCi64]), 0);
    let first = call(&b.broker, on_b, "commit", args![0]);
    let second = call(&c.broker, on_c, "commit", args![0]);
    assert_eq!(first, 1, "the first commit writes its one page");
    assert_eq!(second, i64::from(Status::Conflict.code()), "the second is told it conflicts");
    // The home's own mirror, also from before, conflicts the same way.
    assert_eq!(call(&a.broker, on_a, "store", args![0, 100i64, 0xAAi64]), 0);
    assert_eq!(call(&a.broker, on_a, "commit", args![0]), i64::from(Status::Conflict.code()));
    let (_, bytes) = converged(&[&a, &b, &c]);
    assert_eq!(bytes[100..108], 0xBBu64.to_le_bytes(), "the winner's bytes everywhere");
    // The loser refreshes and commits again: now it wins, on every node.
    assert!(call(&c.broker, on_c, "refresh", args![0]) >= 0);
    assert_eq!(call(&c.broker, on_c, "store", args![0, 100i64, 0xCCi64]), 0);
    assert_eq!(call(&c.broker, on_c, "commit", args![0]), 1);
    let (_, bytes) = converged(&[&a, &b, &c]);
    assert_eq!(bytes[100..108], 0xCCu64.to_le_bytes());
}

/// A replica that dies and comes back (a fresh broker under the same node name) catches up with
/// everything written meanwhile, from the snapshot and the stream, and then follows new writes (even
/// one of no bytes).
#[test]
fn r19_a_replica_that_died_resyncs() {
    let nats = Nats::start();
    let rt = runtime();
    let a = Node::join(&rt, &nats.url, "a");
    let mut b = Node::join(&rt, &nats.url, "b");
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt);
    let mut model = Model::new();
    for i in 0..100 {
        model.write(if i % 2 == 0 { &a } else { &b }, i).expect("write");
    }
    converged(&[&a, &b]);
    b.kill();
    drop(b);
    for i in 100..300 {
        model.write(&a, i).expect("write");
    }
    let b = Node::join(&rt, &nats.url, "b");
    b.follow(&rt);
    // Caught up when `follow` returned: nothing older is ever shown.
    assert_eq!(b.version(), a.version());
    for i in 300..350 {
        model.write(&b, i).expect("write");
    }
    let (version, bytes) = converged(&[&a, &b]);
    assert!(bytes == model.0, "the resynced replica differs from the commits made");
    // A write of no bytes at the home still takes a version, and the replica reaches it too.
    let empty = a.broker.write_region(a.region(), 0, &[]).expect("empty write");
    assert!(empty > version, "an empty write took no version");
    assert!(rt.block_on(a.repl().drain(Duration::from_secs(30))), "the empty write was not published");
    assert_eq!(converged(&[&a, &b]).0, empty);
}

/// The home dies: replicas keep serving reads at their last version and refuse writes with
/// UNAVAILABLE, until one of them takes the region over (exactly one, by compare-and-set); then writes
/// work again from every survivor, and nothing the old home published is lost.
#[test]
fn r19_home_loss_then_takeover() {
    let nats = Nats::start();
    let rt = runtime();
    let mut a = Node::join(&rt, &nats.url, "a");
    let (b, c) = (Node::join(&rt, &nats.url, "b"), Node::join(&rt, &nats.url, "c"));
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt);
    c.follow(&rt);
    let mut model = Model::new();
    for i in 0..100 {
        model.write(&a, i).expect("write");
    }
    let (before, _) = converged(&[&a, &b, &c]);
    a.kill();
    // Reads go on at the last version; a write is refused, and writes nothing.
    let (v, _) = b.bytes();
    assert_eq!(v, before);
    let refused = b.broker.write_region(b.region(), 0, &[1; 8]);
    assert!(
        matches!(refused, Err(broker::Error::Region(broker::region::RegionError::Unavailable { .. }))),
        "a write without a home is refused as unavailable: {refused:?}"
    );
    // (Its bytes are in no node's region: the model, which the end compares with, lacks them.)
    // One survivor takes over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let homes = loop {
        let homes: Vec<&str> = [&b, &c]
            .iter()
            .filter(|n| n.repl().role(TENANT, REGION) == Some(Role::Home))
            .map(|n| n.name)
            .collect();
        if !homes.is_empty() {
            break homes;
        }
        assert!(Instant::now() < deadline, "no node took the region over");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(homes.len(), 1, "exactly one new home: {homes:?}");
    let record = rt.block_on(b.repl().record(TENANT, REGION)).expect("record");
    assert_eq!((record.home.as_str(), record.epoch), (homes[0], 2));
    // Writes work again from both survivors (the other one's go to the new home).
    model.write_until_accepted(&[&b, &c], 100..150);
    let (version, bytes) = converged(&[&b, &c]);
    assert!(bytes == model.0, "the survivors differ from the commits made");
    assert!(
        version > before + broker_cluster::replication::TAKEOVER_GAP,
        "versions move past the old home's"
    );
}

/// NATS stops mid-stream and comes back: the home's writes meanwhile are acknowledged locally and all
/// reach the replica afterwards (0 lost); the replica's own writes are refused while it cannot reach
/// the home, and work again after.
#[test]
fn r19_nats_restart_loses_no_acknowledged_commit() {
    let mut nats = Nats::start();
    let rt = runtime();
    let (a, b) = (Node::join(&rt, &nats.url, "a"), Node::join(&rt, &nats.url, "b"));
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt);
    let mut model = Model::new();
    for i in 0..100 {
        model.write(&a, i).expect("write");
    }
    nats.stop();
    for i in 100..200 {
        model.write(&a, i).expect("the home writes while NATS is away");
    }
    assert!(b.broker.write_region(b.region(), 0, &[9; 8]).is_err(), "the replica cannot reach its home");
    // Away for longer than a node record lives (1 s), shorter than a takeover waits (3 s).
    std::thread::sleep(Duration::from_millis(1500));
    nats.restart();
    for i in 200..250 {
        model.write(&a, i).expect("write");
    }
    model.write_until_accepted(&[&b], 250..300);
    let (_, bytes) = converged(&[&a, &b]);
    assert!(bytes == model.0, "an acknowledged commit was lost");
    assert_eq!(a.repl().role(TENANT, REGION), Some(Role::Home), "no takeover for a short outage");
}

/// The home publishes a snapshot once a region's size of changes has gone by and purges the stream
/// behind it: the stream holds the region's last snapshot and the changes since, not its history. A
/// replica whose follower falls behind across purges reads on from the next snapshot; one that
/// restarts, and one that starts afterwards, are built from the last. All end byte-identical with the
/// commits made.
#[test]
fn r19_the_stream_is_compacted_behind_snapshots() {
    const BLOCK: usize = 4096;
    const WRITES: u64 = 200;
    let nats = Nats::start();
    let rt = runtime();
    // The smallest setting: a snapshot after every region's size (64 KiB) of changes.
    let small = |o: &mut ReplicationOptions| o.snapshot_after = 1;
    let a = Node::join_with(&rt, &nats.url, "a", small);
    // The replica's tasks run apart from the home's, as in another process: its follower is stalled
    // below by blocking a thread of its runtime.
    let rt_b = runtime();
    let mut b = Node::join_with(&rt_b, &nats.url, "b", small);
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt_b);
    let mut model = vec![0u8; usize::try_from(SIZE).expect("size")];
    let write = |model: &mut Vec<u8>, n: &Node, i: u64| {
        let blocks = SIZE / BLOCK as u64;
        let at = usize::try_from((i * 7 % blocks) * BLOCK as u64).expect("offset");
        let bytes = [u8::try_from(i % 251).expect("byte") + 1; BLOCK];
        n.broker.write_region(n.region(), at as u64, &bytes).expect("write");
        model[at..at + BLOCK].copy_from_slice(&bytes);
    };
    // Through the replica: each write is its own message (it waits for its answer), 800 KiB in all.
    for i in 0..WRITES {
        write(&mut model, &b, i);
    }
    let (_, bytes) = converged(&[&a, &b]);
    assert!(bytes == model, "the replica differs from the commits made");
    let retained = rt.block_on(a.repl().retained(TENANT, REGION)).expect("retained");
    // Uncompacted, the stream would hold the first snapshot and one message per write. Compacted, it
    // holds the last snapshot (one message) and at most 16 changes of 4 KiB after it, with room for a
    // snapshot still being recorded.
    assert!(
        retained <= 2 * (1 + SIZE / BLOCK as u64),
        "the stream kept {retained} messages of {WRITES} writes"
    );
    let before = rt.block_on(a.repl().record(TENANT, REGION)).expect("record");
    assert!(before.snapshot_seq > WRITES / 2, "replicas start at a recent snapshot: {before:?}");

    // The replica's follower stalls (a host watcher there blocks inside the first change it applies)
    // while the home publishes 700 messages, more than the follower's consumer asks for at once
    // (500), and compacts behind them; then it reads on from a stream whose next messages are gone.
    let gate = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
    let held = Arc::clone(&gate);
    let stall = move |_: &broker::region::Change| {
        let (open, cv) = &*held;
        let mut open = open.lock();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !*open && !cv.wait_until(&mut open, deadline).timed_out() {}
    };
    let watch = b.broker.watch_region(b.region(), Arc::new(stall)).expect("watch");
    for i in WRITES..WRITES + 700 {
        write(&mut model, &a, i);
        // Published before the next write, so each is a message of its own.
        assert!(rt.block_on(a.repl().drain(Duration::from_secs(30))), "write {i} was not published");
    }
    let after = rt.block_on(a.repl().record(TENANT, REGION)).expect("record");
    assert!(
        after.snapshot_seq > before.snapshot_seq + 600,
        "the messages past what the stalled follower had asked for were purged: {before:?} then {after:?}"
    );
    *gate.0.lock() = true;
    gate.1.notify_all();
    b.broker.unwatch_region(b.region(), watch);
    let (_, bytes) = converged(&[&a, &b]);
    assert!(bytes == model, "a follower that fell behind across purges differs from the commits made");

    // A new replica follows while the home writes faster than it publishes (a snapshot takes the
    // place of the changes queued behind it that it holds); a replica that restarts after is built
    // from the last snapshot and what follows it.
    b.kill();
    drop(b);
    let c = Node::join_with(&rt, &nats.url, "c", small);
    c.follow(&rt);
    for i in WRITES + 700..WRITES + 940 {
        write(&mut model, &a, i);
    }
    assert!(rt.block_on(a.repl().drain(Duration::from_secs(30))), "the burst was not published");
    let b = Node::join_with(&rt, &nats.url, "b", small);
    b.follow(&rt);
    assert_eq!((b.version(), c.version()), (a.version(), a.version()), "caught up when `follow` returned");
    for i in WRITES + 940..WRITES + 980 {
        write(&mut model, if i % 2 == 0 { &b } else { &c }, i);
    }
    let (_, bytes) = converged(&[&a, &b, &c]);
    assert!(bytes == model, "a replica built from a snapshot differs from the commits made");
}

/// Shared mode stays node-local: the cluster refuses to replicate a shared region, and the engine
/// refuses to make one a replica.
#[test]
fn r19_shared_mode_is_node_local() {
    let nats = Nats::start();
    let rt = runtime();
    let a = Node::join(&rt, &nats.url, "a");
    let t = a.broker.tenant_id(TENANT).expect("tenant");
    let r = a.broker.create_region(t, RegionSpec::new(REGION, SIZE, Mode::Shared)).expect("region");
    let refused = rt.block_on(a.repl().share(TENANT, REGION));
    assert!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("node-local")),
        "sharing a shared region: {:?}",
        refused.map(|_| ())
    );
    let b = Node::join(&rt, &nats.url, "b");
    let not_there = rt.block_on(b.repl().follow(TENANT, REGION));
    assert!(not_there.is_err(), "nothing to follow");
    #[derive(Debug)]
    struct Nowhere;
    impl broker::Upstream for Nowhere {
        fn propose(&self, _: broker::Proposal) -> Result<broker::Accepted, broker::Refused> {
            Err(broker::Refused::Unavailable("nowhere".into()))
        }
        fn home(&self) -> String {
            "nowhere".into()
        }
    }
    assert!(matches!(
        a.broker.set_upstream(r, Some(Arc::new(Nowhere))),
        Err(broker::Error::InvalidArgument { field: "mode", .. })
    ));
}

/// Writers on three nodes at once (each on its own quarter of a 1 MiB region, so the result does not
/// depend on their interleaving), after a 600 KiB write that the stream carries in two messages, and
/// with snapshots of the whole region in two messages too: every node ends with the model's bytes.
/// Then two replicas' mirrors commit different pages of one version under `merge`: both land.
#[test]
fn r19_concurrent_writers_on_every_node_and_changes_larger_than_a_message() {
    const BIG: u64 = 1 << 20;
    let nats = Nats::start();
    let rt = runtime();
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::join(&rt, &nats.url, n)).collect();
    let spec = RegionSpec::new(REGION, BIG, Mode::Mirror).with_policy(broker::mode::ConflictPolicy::Merge);
    let t = nodes[0].broker.tenant_id(TENANT).expect("tenant");
    nodes[0].broker.create_region(t, spec).expect("region");
    rt.block_on(nodes[0].repl().share(TENANT, REGION)).expect("shared");
    let mut model = vec![0u8; 1 << 20];
    let large: Vec<u8> = (0..600 * 1024).map(|i| u8::try_from(i % 253).expect("byte")).collect();
    nodes[0].broker.write_region(nodes[0].region(), 400 * 1024, &large).expect("large write");
    model[400 * 1024..1000 * 1024].copy_from_slice(&large);
    for n in &nodes[1..] {
        n.follow(&rt);
    }
    let quarter = BIG / 4;
    let models: Vec<Vec<(u64, [u8; 8])>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                s.spawn(move || {
                    let mut written = Vec::new();
                    for i in 0..300u64 {
                        let offset = k as u64 * quarter + (i * 4093) % (quarter - 8);
                        let bytes = commit_bytes(i * 3 + k as u64);
                        n.broker.write_region(n.region(), offset, &bytes).expect("write");
                        written.push((offset, bytes));
                    }
                    written
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer")).collect()
    });
    for (offset, bytes) in models.into_iter().flatten() {
        let at = usize::try_from(offset).expect("offset");
        model[at..at + 8].copy_from_slice(&bytes);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let (_, bytes) = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let want = nodes[0].version();
            if nodes.iter().all(|n| n.version() == want) {
                break (want, big_bytes(&nodes[0]));
            }
            assert!(Instant::now() < deadline, "never converged");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(nodes.iter().all(|n| big_bytes(n) == bytes), "the nodes differ");
    assert!(bytes == model, "the replicated bytes differ from the writes made");

    // Two replicas' mirrors, both at the same version, change different pages: merge takes both.
    let mirror = |n: &Node, name: &str| {
        let t = n.broker.tenant_id(TENANT).expect("tenant");
        let i = start(&n.broker, t, "mirror_app", name);
        n.broker.grant(n.region(), i, Rights::READ | Rights::WRITE, 0, None).expect("grant");
        assert_eq!(call(&n.broker, i, "acquire", args![0]), 0, "acquire");
        i
    };
    let (mb, mc) = (mirror(&nodes[1], "mb"), mirror(&nodes[2], "mc"));
    assert_eq!(call(&nodes[1].broker, mb, "store", args![0, 0i64, 0x1111i64]), 0);
    assert_eq!(call(&nodes[2].broker, mc, "store", args![0, 8192i64, 0x2222i64]), 0);
    assert_eq!(call(&nodes[1].broker, mb, "commit", args![0]), 1);
    assert_eq!(call(&nodes[2].broker, mc, "commit", args![0]), 1, "a different page: merged, not refused");
    model[0..8].copy_from_slice(&0x1111u64.to_le_bytes());
    model[8192..8200].copy_from_slice(&0x2222u64.to_le_bytes());
    converged_big(&refs, &model);
}

fn big_bytes(n: &Node) -> Vec<u8> {
    let size = n.broker.region_info(n.region()).expect("info").size;
    let mut buf = vec![0; usize::try_from(size).expect("size")];
    n.broker.read_region(n.region(), 0, &mut buf).expect("read");
    buf
}

/// Waits until every node reads `model`.
fn converged_big(nodes: &[&Node], model: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes.iter().all(|n| big_bytes(n) == model) {
        assert!(Instant::now() < deadline, "the nodes never reached the model");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A home that is cut off from the cluster's membership while it still runs (its heartbeat stops) is
/// replaced; when it sees the record name another node it steps down and follows the new home, and
/// writes through it then land everywhere.
#[test]
fn r19_a_deposed_home_steps_down_and_follows_the_new_one() {
    let nats = Nats::start();
    let rt = runtime();
    let (mut a, b) = (Node::join(&rt, &nats.url, "a"), Node::join(&rt, &nats.url, "b"));
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt);
    let mut model = Model::new();
    for i in 0..50 {
        model.write(&a, i).expect("write");
    }
    converged(&[&a, &b]);
    // Its heartbeat stops; its replication goes on.
    drop(a.membership.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.repl().role(TENANT, REGION) != Some(Role::Replica { home: "b".into() }) {
        assert!(Instant::now() < deadline, "a never stepped down: {:?}", a.repl().role(TENANT, REGION));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.repl().role(TENANT, REGION), Some(Role::Home));
    model.write_until_accepted(&[&a, &b], 50..100);
    let (_, bytes) = converged(&[&a, &b]);
    assert!(bytes == model.0, "the old home and the new one differ from the writes made");
}

/// An app's watch on a replica fires when a replicated change lands: the app on b sees the home's
/// writes, in version order, the last with the home's version and range.
#[test]
fn r19_a_watch_on_a_replica_fires_when_a_change_lands() {
    let nats = Nats::start();
    let rt = runtime();
    let (a, b) = (Node::join(&rt, &nats.url, "a"), Node::join(&rt, &nats.url, "b"));
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt);
    let t = b.broker.tenant_id(TENANT).expect("tenant");
    let app = start(&b.broker, t, "callback_app", "watcher");
    b.broker.grant(b.region(), app, Rights::READ | Rights::WATCH, 0, None).expect("grant");
    assert!(call(&b.broker, app, "watch", args![0, 7]) > 0, "watch");
    let mut last = 0;
    for i in 0..20u64 {
        last = a.broker.write_region(a.region(), 100 + i, &[1, 2, 3]).expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&b.broker, app, "watch_last_version", args![]) != i64::try_from(last).expect("v") {
        assert!(Instant::now() < deadline, "the replica's watch never saw version {last}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(call(&b.broker, app, "watch_calls", args![]) >= 1);
    assert_eq!(call(&b.broker, app, "watch_out_of_order", args![]), 0, "in version order");
    assert_eq!(call(&b.broker, app, "watch_user_data", args![]), 7);
    // Events the app had not taken yet are merged: the last one covers the last write's bytes.
    let range = call(&b.broker, app, "watch_last_range", args![]);
    let (offset, len) = (range >> 32, range & 0xffff_ffff);
    assert!(offset <= 119 && offset + len >= 122, "the last event {offset}+{len} misses the last write");
}

/// A replicated region's member rights hold on every node, and one its home forgets (destroyed there)
/// is followed by no node any more and leaves nothing in the stream: its name can be replicated
/// afresh, from new bytes.
#[test]
fn r19_member_rights_travel_and_a_forgotten_region_starts_afresh() {
    let nats = Nats::start();
    let rt = runtime();
    let (a, b) = (Node::join(&rt, &nats.url, "a"), Node::join(&rt, &nats.url, "b"));
    let members = Rights::READ | Rights::WATCH;
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle).with_members(members));
    b.follow(&rt);
    assert_eq!(b.broker.region_info(b.region()).expect("info").members, members);
    a.broker.write_region(a.region(), 0, &[7; 8]).expect("write");
    converged(&[&a, &b]);

    rt.block_on(a.repl().forget(TENANT, REGION)).expect("forget");
    assert!(rt.block_on(a.repl().record(TENANT, REGION)).is_err(), "the record is gone");
    assert_eq!(a.repl().role(TENANT, REGION), None);
    let left = rt.block_on(a.repl().retained(TENANT, REGION)).expect("count");
    assert_eq!(left, 1, "its messages are purged but the last, which the next region's log follows");
    a.broker.destroy_region(a.region()).expect("destroy");
    rt.block_on(b.repl().forget(TENANT, REGION)).expect("forget");
    b.broker.destroy_region(b.region()).expect("destroy");
    // The same name again: a new log, and nothing of the old region shows.
    a.share(&rt, RegionSpec::new(REGION, SIZE, Mode::Handle));
    b.follow(&rt);
    let (_, bytes) = converged(&[&a, &b]);
    assert!(bytes.iter().all(|x| *x == 0), "the old region's bytes came back");
}
