//! `broker serve --cluster`: the daemon's side of a cluster. It joins (membership), replicates regions
//! (`broker_cluster::Replication`, following every replicated region whose tenant the node has) and
//! lends the control plane what it needs of both ([`broker_control::Cluster`]).

use std::sync::Arc;
use std::time::Duration;

use broker::Broker;
use broker_cluster::{JoinOptions, Membership, NodeLoad, NodeRecord, Replication, ReplicationOptions};
use broker_control::{Cluster, NodeAddress};

/// A daemon's place in its cluster, until [`Joined::leave`].
pub struct Joined {
    membership: Membership,
    replication: Arc<Replication>,
    nodes: Arc<parking_lot::Mutex<Vec<NodeRecord>>>,
    refresh: tokio::task::JoinHandle<()>,
    node: String,
    rt: tokio::runtime::Handle,
}

impl Joined {
    /// Joins the cluster at `url` as `node` (reachable at `address`) and starts replicating. Runs on the
    /// daemon's tokio runtime.
    ///
    /// # Errors
    /// Why the cluster could not be joined, as text for the command line.
    pub async fn join(url: &str, node: &str, address: &str, broker: Arc<Broker>) -> Result<Joined, String> {
        let reporting = Arc::clone(&broker);
        let load = move || node_load(&reporting);
        let membership = Membership::join(url, node, address, JoinOptions::default(), load)
            .await
            .map_err(|e| e.to_string())?;
        let replication = Replication::start(url, node, broker, ReplicationOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        replication.follow_everything();
        let nodes = Arc::new(parking_lot::Mutex::new(membership.nodes().await.unwrap_or_default()));
        let (view, n) = (membership.view(), Arc::clone(&nodes));
        // Where tenants live, for calls that reach the wrong node: refreshed with the heartbeats.
        let refresh = tokio::spawn(async move {
            loop {
                tokio::time::sleep(broker_cluster::DEFAULT_HEARTBEAT).await;
                if let Ok(list) = view.list().await {
                    *n.lock() = list;
                }
            }
        });
        Ok(Joined {
            membership,
            replication: Arc::new(replication),
            nodes,
            refresh,
            node: node.into(),
            rt: tokio::runtime::Handle::current(),
        })
    }

    /// What the control plane uses of the cluster.
    pub fn plane_cluster(&self) -> Arc<dyn Cluster> {
        Arc::new(PlaneCluster {
            replication: Arc::clone(&self.replication),
            nodes: Arc::clone(&self.nodes),
            node: self.node.clone(),
            rt: self.rt.clone(),
        })
    }

    /// Stops replicating and leaves: the node's record goes at once.
    pub async fn leave(self) {
        self.refresh.abort();
        // What this node's homes acknowledged goes out before replication stops.
        if !self.replication.drain(Duration::from_secs(5)).await {
            tracing::warn!(
                "leaving the cluster with changes not yet published: NATS did not take them within 5 s"
            );
        }
        self.replication.shutdown();
        if let Err(e) = self.membership.leave().await {
            tracing::warn!("leaving the cluster: {e} (the node's record expires on its own)");
        }
    }
}

/// What a node reports with each heartbeat: its tenants, instances and regions.
fn node_load(broker: &Broker) -> NodeLoad {
    let tenants = broker.tenants();
    let (mut instances, mut regions) = (0u64, 0u64);
    for t in &tenants {
        instances += u64::try_from(broker.instances(t.id).len()).unwrap_or(u64::MAX);
        regions += u64::try_from(broker.regions(t.id).len()).unwrap_or(u64::MAX);
    }
    NodeLoad { tenants: tenants.into_iter().map(|t| t.name).collect(), instances, regions }
}

struct PlaneCluster {
    replication: Arc<Replication>,
    nodes: Arc<parking_lot::Mutex<Vec<NodeRecord>>>,
    node: String,
    rt: tokio::runtime::Handle,
}

impl PlaneCluster {
    /// Runs `op` on the daemon's runtime and waits for it here, at most `within`: the plane calls on
    /// the blocking pool, never on the runtime.
    fn wait<F>(&self, within: Duration, op: impl FnOnce(Arc<Replication>) -> F) -> Result<(), String>
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = op(Arc::clone(&self.replication));
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(within)
            .unwrap_or_else(|_| Err(format!("the cluster did not answer in {} s", within.as_secs())))
    }
}

impl Cluster for PlaneCluster {
    fn share(&self, tenant: &str, region: &str) -> Result<(), String> {
        let (t, r) = (tenant.to_string(), region.to_string());
        // Longer than a catch-up may take (a home restarting reads its stream first).
        self.wait(Duration::from_secs(70), |repl| async move {
            repl.share(&t, &r).await.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    fn forget(&self, tenant: &str, region: &str) -> Result<(), String> {
        let (t, r) = (tenant.to_string(), region.to_string());
        self.wait(Duration::from_secs(10), |repl| async move {
            repl.forget(&t, &r).await.map_err(|e| e.to_string())
        })
    }

    fn locate_tenant(&self, tenant: &str) -> Option<NodeAddress> {
        self.nodes
            .lock()
            .iter()
            .find(|n| n.node != self.node && n.load.tenants.iter().any(|t| t == tenant))
            .map(|n| NodeAddress { node: n.node.clone(), address: n.address.clone() })
    }
}
