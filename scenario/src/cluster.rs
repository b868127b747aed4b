//! Scenarios across several brokers (`nodes`, issue 19): one broker per node in this process, joined
//! through a NATS JetStream server (the caller's, or a `nats-server` the run starts on a free loopback
//! port with a temporary store), each node with its replication; replicated regions are shared from
//! their node and followed on every other.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::{Broker, Error, RegionId};
use broker_cluster::{JoinOptions, Membership, NodeLoad, Replication, ReplicationOptions};

use crate::run::RunError;

/// A run's cluster: its NATS server (if the run started it), a runtime for replication, and each
/// node's replication. Dropped after the run's brokers' last call.
pub(crate) struct ClusterRun {
    replications: Vec<Replication>,
    /// Each node's membership: a home is alive to its replicas while its record is.
    memberships: Vec<Membership>,
    /// The regions shared, by node: their records are deleted when the run ends.
    shared: parking_lot::Mutex<Vec<(usize, String, String)>>,
    rt: tokio::runtime::Runtime,
    _nats: Option<LocalNats>,
}

fn failed(step: String, why: impl std::fmt::Display) -> RunError {
    RunError::Setup { step, source: Error::InvalidArgument { field: "nodes", reason: why.to_string() } }
}

impl ClusterRun {
    /// Starts replication on every node, against `nats` or a server of its own.
    pub(crate) fn start(
        names: &[String],
        nodes: &[Arc<Broker>],
        nats: Option<&str>,
    ) -> Result<ClusterRun, RunError> {
        let own = match nats {
            Some(_) => None,
            None => Some(LocalNats::start().map_err(|e| failed("starting nats-server".into(), e))?),
        };
        let url = nats.map(str::to_owned).or_else(|| own.as_ref().map(|n| n.url.clone())).unwrap_or_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| failed("starting the cluster's runtime".into(), e))?;
        // Node names and a namespace of this run's own: runs may share the server the caller gives.
        let run = format!(
            "{:x}-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() % 1_000_000)
        );
        let options =
            ReplicationOptions { namespace: format!("scenario-{run}"), ..ReplicationOptions::default() };
        let mut replications = Vec::new();
        let mut memberships = Vec::new();
        for (name, broker) in names.iter().zip(nodes) {
            let node = format!("{name}-{run}");
            let m = rt
                .block_on(Membership::join(
                    &url,
                    &node,
                    &format!("scenario:{node}"),
                    JoinOptions::default(),
                    NodeLoad::default,
                ))
                .map_err(|e| failed(format!("joining node {name} to the cluster at {url}"), e))?;
            memberships.push(m);
            let r = rt
                .block_on(Replication::start(&url, &node, Arc::clone(broker), options.clone()))
                .map_err(|e| failed(format!("joining node {name} to the cluster at {url}"), e))?;
            replications.push(r);
        }
        Ok(ClusterRun {
            replications,
            memberships,
            shared: parking_lot::Mutex::new(Vec::new()),
            rt,
            _nats: own,
        })
    }

    /// Makes region `tenant/name` of node `node` replicated, that node its home.
    pub(crate) fn share(&self, node: usize, tenant: &str, name: &str) -> Result<(), RunError> {
        let r = self.replications.get(node).ok_or_else(|| failed(format!("node {node}"), "no such node"))?;
        self.rt
            .block_on(r.share(tenant, name))
            .map(|_| self.shared.lock().push((node, tenant.to_owned(), name.to_owned())))
            .map_err(|e| failed(format!("replicating region {tenant}/{name}"), e))
    }

    /// Builds node `node`'s replica of `tenant/name`; returns its id there.
    pub(crate) fn follow(&self, node: usize, tenant: &str, name: &str) -> Result<RegionId, RunError> {
        let r = self.replications.get(node).ok_or_else(|| failed(format!("node {node}"), "no such node"))?;
        self.rt
            .block_on(r.follow(tenant, name))
            .map_err(|e| failed(format!("following region {tenant}/{name}"), e))
    }
}

impl Drop for ClusterRun {
    fn drop(&mut self) {
        // A server the caller gave keeps no record of the run: each home forgets its regions and
        // each node leaves.
        for (node, tenant, name) in self.shared.lock().drain(..) {
            if let Some(r) = self.replications.get(node) {
                let _ = self.rt.block_on(r.forget(&tenant, &name));
            }
        }
        for r in &self.replications {
            r.shutdown();
        }
        for m in self.memberships.drain(..) {
            let _ = self.rt.block_on(m.leave());
        }
    }
}

/// Distinguishes runs in one process that share a NATS server.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A `nats-server -js` the run started, killed when dropped.
struct LocalNats {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl LocalNats {
    fn start() -> Result<LocalNats, String> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("this scenario runs a cluster and needs nats-server (apt-get install nats-server), or the URL of a NATS server with JetStream")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let store = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let mut nats = LocalNats { child, url: format!("nats://127.0.0.1:{port}"), _store: store };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || matches!(nats.child.try_wait(), Ok(Some(_))) {
                return Err(format!("{bin} did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
