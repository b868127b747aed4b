//! Brokers on several hosts, joined through NATS JetStream (issue 19).
//!
//! The engine does the distributed work: a broker joins a cluster by writing its node record into a
//! JetStream key-value bucket whose entries expire ([`NODES_BUCKET`], `max_age` = the node TTL) and
//! rewriting it every heartbeat; a node that stops (killed, cut off) disappears when its last record
//! expires. There is no membership protocol of our own: the bucket's contents are the membership.
//!
//! This is the first part of issue 19: the engine, joining, heartbeats and `broker cluster status`.
//! Placement of tenants on nodes is what each node reports; replicated regions come next.

#![forbid(unsafe_code)]

pub mod replication;
mod wire;

pub use replication::{region_key, RegionRecord, Replication, ReplicationOptions, Role};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// The KV bucket of node records.
pub const NODES_BUCKET: &str = "broker_nodes";

/// How often a node rewrites its record, by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a node record lives without a heartbeat, by default (the bucket's `max_age`).
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(10);

/// Longest node name (it is a KV key).
pub const MAX_NODE_NAME: usize = 64;

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server could not be reached.
    #[error("cannot reach NATS at {url}: {reason}")]
    Connect {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A node name that cannot be a key.
    #[error("invalid node name {name:?}: 1 to {MAX_NODE_NAME} of a-z, A-Z, 0-9, '-' and '_'")]
    InvalidNodeName {
        /// The name given.
        name: String,
    },
    /// Another live node holds the name.
    #[error("node name {name:?} is taken by the live node at {address}")]
    NameTaken {
        /// The name.
        name: String,
        /// The address of the node holding it.
        address: String,
    },
    /// JetStream refused or failed an operation.
    #[error("JetStream {operation}: {reason}")]
    JetStream {
        /// What was being done.
        operation: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A replicated region cannot be shared or followed as asked.
    #[error("replication: {0}")]
    Replication(String),
    /// The local broker refused an operation replication needed.
    #[error("broker: {0}")]
    Broker(#[from] Box<broker::Error>),
    /// A node record that is not one (written by something else).
    #[error("node record {key:?} is malformed: {reason}")]
    BadRecord {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl ClusterError {
    pub(crate) fn broker(e: broker::Error) -> ClusterError {
        ClusterError::Broker(Box::new(e))
    }
}

fn js_err(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> ClusterError {
    move |e| ClusterError::JetStream { operation, reason: e.to_string() }
}

/// A node's load as it reports it with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The tenants that live on the node.
    pub tenants: Vec<String>,
    /// Instances running on it.
    pub instances: u64,
    /// Regions it holds.
    pub regions: u64,
}

/// One node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its name (`--node`).
    pub node: String,
    /// Where its control API listens (`host:port`).
    pub address: String,
    /// An id of this run of the node: a restarted node with the same name and address takes its
    /// record over; another run elsewhere is refused.
    pub incarnation: u64,
    /// When it last wrote its record, in milliseconds since the Unix epoch.
    pub heartbeat_ms: u64,
    /// Its load.
    pub load: NodeLoad,
}

/// How a node joins.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// How often it rewrites its record.
    pub heartbeat: Duration,
    /// How long its record lives without a heartbeat (the bucket's `max_age`; the first node to
    /// create the bucket sets it).
    pub ttl: Duration,
}

impl Default for JoinOptions {
    fn default() -> JoinOptions {
        JoinOptions { heartbeat: DEFAULT_HEARTBEAT, ttl: DEFAULT_NODE_TTL }
    }
}

/// Connects to NATS at `url` and returns the JetStream context.
///
/// # Errors
/// [`ClusterError::Connect`].
pub async fn connect(url: &str) -> Result<jetstream::Context, ClusterError> {
    Ok(jetstream::new(connect_client(url).await?.0))
}

/// Connects to NATS at `url`; the client reconnects for ever, at most half a second apart, after the
/// server goes away.
/// The receiver counts the connections made after the first: a consumer that was reading when the
/// server went away starts again from where it was rather than wait for its heartbeat to lapse.
async fn connect_client(
    url: &str,
) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>), ClusterError> {
    let (reconnects, rx) = tokio::sync::watch::channel(0u64);
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Connected) {
                reconnects.send_modify(|n| *n += 1);
            }
            std::future::ready(())
        })
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| Duration::from_millis(50 * attempts.min(10) as u64))
        .connect(url)
        .await
        .map_err(|e| ClusterError::Connect { url: url.to_string(), reason: e.to_string() })?;
    Ok((client, rx))
}

/// The node bucket, created with `ttl` as its entries' lifetime if it does not exist yet.
async fn nodes_bucket(js: &jetstream::Context, ttl: Duration) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(NODES_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: NODES_BUCKET.to_string(),
        description: "broker nodes: one record per live node, expiring without heartbeats".into(),
        history: 1,
        max_age: ttl,
        ..kv::Config::default()
    })
    .await
    .map_err(|e| js_err("create the node bucket")(&e))
}

fn check_node_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidNodeName { name: name.to_string() })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A node's membership: its heartbeat runs until [`Membership::leave`] (or until dropped, when its
/// record expires after the TTL, as a killed node's does).
pub struct Membership {
    store: kv::Store,
    node: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Joins the cluster at `url` as `node`, reachable at `address`, reporting `load()` with every
    /// heartbeat. Must be called on a tokio runtime (the heartbeat is a task on it).
    ///
    /// # Errors
    /// [`ClusterError::InvalidNodeName`]; [`ClusterError::NameTaken`] if a live node of another
    /// address holds the name; [`ClusterError::Connect`] and [`ClusterError::JetStream`].
    pub async fn join(
        url: &str,
        node: &str,
        address: &str,
        options: JoinOptions,
        load: impl Fn() -> NodeLoad + Send + Sync + 'static,
    ) -> Result<Membership, ClusterError> {
        check_node_name(node)?;
        let js = connect(url).await?;
        let store = nodes_bucket(&js, options.ttl).await?;
        if let Some(entry) = store.entry(node).await.map_err(|e| js_err("read a node record")(&e))? {
            if entry.operation == kv::Operation::Put {
                if let Ok(other) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                    if other.address != address {
                        return Err(ClusterError::NameTaken {
                            name: node.to_string(),
                            address: other.address,
                        });
                    }
                }
            }
        }
        let incarnation = now_ms();
        let (name, at) = (node.to_string(), address.to_string());
        let record = move |load: NodeLoad| NodeRecord {
            node: name.clone(),
            address: at.clone(),
            incarnation,
            heartbeat_ms: now_ms(),
            load,
        };
        let first = serde_json::to_vec(&record(load())).unwrap_or_default();
        store.put(node, first.into()).await.map_err(|e| js_err("write the node record")(&e))?;
        let (beat, name) = (store.clone(), node.to_string());
        let heartbeat = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(options.heartbeat);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let bytes = serde_json::to_vec(&record(load())).unwrap_or_default();
                // A missed heartbeat (NATS away for a moment) is retried at the next tick; the record
                // expires only after the TTL without any.
                // Bounded by the heartbeat: a put sent while the server was away must not hold back the
                // first one after it returns (a replica counts the time the record is missing).
                match tokio::time::timeout(options.heartbeat, beat.put(&name, bytes.into())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(node = %name, "cluster heartbeat: {e}"),
                    Err(_) => tracing::warn!(node = %name, "cluster heartbeat timed out"),
                }
            }
        });
        Ok(Membership { store, node: node.to_string(), heartbeat })
    }

    /// Leaves the cluster: stops the heartbeat and deletes the node's record at once.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`] if the record could not be deleted (it then expires after the TTL).
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.heartbeat.abort();
        self.store.delete(&self.node).await.map_err(|e| js_err("delete the node record")(&e))
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The live nodes of the cluster at `url`, by name.
///
/// # Errors
/// [`ClusterError::Connect`], [`ClusterError::JetStream`], [`ClusterError::BadRecord`].
pub async fn status(url: &str) -> Result<Vec<NodeRecord>, ClusterError> {
    let js = connect(url).await?;
    let Ok(store) = js.get_key_value(NODES_BUCKET).await else {
        return Ok(Vec::new());
    };
    nodes_in(&store).await
}

/// A replicated region as `broker cluster status` shows it: its record, and how many messages of it
/// the change stream holds (its last snapshot and the changes since; `None` if they could not be
/// counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// The region's record (home, epoch, last snapshot).
    #[serde(flatten)]
    pub record: RegionRecord,
    /// Its messages in the stream.
    pub messages: Option<u64>,
}

/// The replicated regions of the cluster at `url`, with their homes and what the stream holds of each.
///
/// # Errors
/// [`ClusterError::Connect`], [`ClusterError::JetStream`].
pub async fn regions(url: &str) -> Result<Vec<RegionStatus>, ClusterError> {
    let js = connect(url).await?;
    let Ok(store) = js.get_key_value(replication::REGIONS_BUCKET).await else {
        return Ok(Vec::new());
    };
    let stream = js.get_stream(replication::CHANGES_STREAM).await.ok();
    let mut out = Vec::new();
    // The daemons' namespace: scenario runs that shared the server keep theirs apart.
    for record in replication::records_in(&store).await?.into_iter().filter(|r| r.namespace.is_empty()) {
        let messages = match &stream {
            Some(s) => replication::retained_in(s, &region_key(&record.tenant, &record.name)).await.ok(),
            None => None,
        };
        out.push(RegionStatus { record, messages });
    }
    Ok(out)
}

impl Membership {
    /// The live nodes, as [`status`] lists them, through this node's connection.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`], [`ClusterError::BadRecord`].
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        nodes_in(&self.store).await
    }

    /// A handle that lists the live nodes through this node's connection, for a task that outlives
    /// a borrow of the membership (which [`Membership::leave`] consumes).
    pub fn view(&self) -> Nodes {
        Nodes(self.store.clone())
    }
}

/// Lists the live nodes (see [`Membership::view`]).
#[derive(Clone)]
pub struct Nodes(kv::Store);

impl Nodes {
    /// The live nodes, by name.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`], [`ClusterError::BadRecord`].
    pub async fn list(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        nodes_in(&self.0).await
    }
}

async fn nodes_in(store: &kv::Store) -> Result<Vec<NodeRecord>, ClusterError> {
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys.try_collect().await.map_err(|e| js_err("list the nodes")(&e))?,
        Err(e) => return Err(js_err("list the nodes")(&e)),
    };
    let mut nodes = Vec::new();
    for key in keys {
        let Some(value) = store.get(&key).await.map_err(|e| js_err("read a node record")(&e))? else {
            continue;
        };
        let record: NodeRecord = serde_json::from_slice(&value)
            .map_err(|e| ClusterError::BadRecord { key: key.clone(), reason: e.to_string() })?;
        nodes.push(record);
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}
