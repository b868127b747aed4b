//! Membership through a real NATS JetStream server on loopback (issue 19): nodes join with
//! heartbeats, `status` lists them with their load, a node that leaves goes at once and one that stops
//! beating expires after the TTL; bad names, taken names and unreachable servers are refused.

/// A real `nats-server` for tests (shared with the CLI's process tests).
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::time::{Duration, Instant};

use broker_cluster::{ClusterError, JoinOptions, Membership, NodeLoad};
use nats::Nats;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn load(tenants: &[&str], instances: u64) -> NodeLoad {
    NodeLoad { tenants: tenants.iter().map(|t| (*t).to_string()).collect(), instances, regions: 1 }
}

#[test]
fn nodes_join_with_their_load_and_leave_at_once() {
    let nats = Nats::start();
    runtime().block_on(async {
        let a = Membership::join(&nats.url, "node-a", "127.0.0.1:7001", JoinOptions::default(), || {
            load(&["acme"], 3)
        })
        .await
        .expect("a joins");
        let b = Membership::join(&nats.url, "node-b", "127.0.0.1:7002", JoinOptions::default(), || {
            load(&["globex", "initech"], 5)
        })
        .await
        .expect("b joins");
        let nodes = broker_cluster::status(&nats.url).await.expect("status");
        let seen: Vec<(&str, &str, &[String], u64)> = nodes
            .iter()
            .map(|n| (n.node.as_str(), n.address.as_str(), n.load.tenants.as_slice(), n.load.instances))
            .collect();
        assert_eq!(seen.len(), 2, "{nodes:?}");
        assert_eq!((seen[0].0, seen[0].1, seen[0].3), ("node-a", "127.0.0.1:7001", 3));
        assert_eq!(seen[0].2, ["acme".to_string()]);
        assert_eq!((seen[1].0, seen[1].1, seen[1].3), ("node-b", "127.0.0.1:7002", 5));
        a.leave().await.expect("a leaves");
        let nodes = broker_cluster::status(&nats.url).await.expect("status");
        assert_eq!(nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), ["node-b"]);
        // A restarted node (same name, same address) takes its record back.
        let b2 =
            Membership::join(&nats.url, "node-b", "127.0.0.1:7002", JoinOptions::default(), || load(&[], 0))
                .await
                .expect("b rejoins");
        drop(b);
        let nodes = broker_cluster::status(&nats.url).await.expect("status");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].load.instances, 0, "the new run's record");
        b2.leave().await.expect("leave");
    });
}

#[test]
fn a_node_that_stops_beating_expires() {
    let nats = Nats::start();
    runtime().block_on(async {
        let options = JoinOptions { heartbeat: Duration::from_millis(200), ttl: Duration::from_secs(2) };
        let alive = Membership::join(&nats.url, "alive", "127.0.0.1:7001", options.clone(), || load(&[], 1))
            .await
            .expect("joins");
        let gone = Membership::join(&nats.url, "gone", "127.0.0.1:7002", options, || load(&[], 1))
            .await
            .expect("joins");
        // Stops its heartbeat without deleting its record: as a killed node.
        drop(gone);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = broker_cluster::status(&nats.url).await.expect("status");
            let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
            if names == ["alive"] {
                break;
            }
            assert!(names.contains(&"alive"), "a node that beats stays: {names:?}");
            assert!(Instant::now() < deadline, "the silent node never expired: {names:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        alive.leave().await.expect("leave");
    });
}

#[test]
fn bad_names_taken_names_and_unreachable_servers_are_refused() {
    let nats = Nats::start();
    runtime().block_on(async {
        for name in ["", "has space", "dots.are.key.separators", "a/b", &"x".repeat(65), "*", ">"] {
            let joined =
                Membership::join(&nats.url, name, "127.0.0.1:1", JoinOptions::default(), NodeLoad::default)
                    .await;
            assert!(
                matches!(joined, Err(ClusterError::InvalidNodeName { .. })),
                "{name:?}: {:?}",
                joined.err()
            );
        }
        let first =
            Membership::join(&nats.url, "n1", "127.0.0.1:7001", JoinOptions::default(), NodeLoad::default)
                .await
                .expect("joins");
        let taken =
            Membership::join(&nats.url, "n1", "127.0.0.1:9999", JoinOptions::default(), NodeLoad::default)
                .await;
        assert!(
            matches!(&taken, Err(ClusterError::NameTaken { address, .. }) if address == "127.0.0.1:7001"),
            "{:?}",
            taken.err()
        );
        first.leave().await.expect("leave");
        // Nothing listens on a port just freed.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let url = format!("nats://127.0.0.1:{port}");
        let refused =
            Membership::join(&url, "n2", "127.0.0.1:1", JoinOptions::default(), NodeLoad::default).await;
        assert!(matches!(refused, Err(ClusterError::Connect { .. })), "{:?}", refused.err());
        assert!(matches!(broker_cluster::status(&url).await, Err(ClusterError::Connect { .. })));
    });
}
