//! Replicated regions: one home writes, every other node keeps a replica, through JetStream.
//!
//! - **The log.** Every committed change at the home (handle writes, mirror commits, host and gRPC
//!   writes: whatever publishes a [`broker::Change`]) is captured in version order while the writer
//!   still holds the region's lock and published to the stream [`CHANGES_STREAM`] on the region's
//!   subject, as its version and bytes ([`crate::wire`]). Each publish expects the subject's last
//!   sequence to be the one the home published before (`Nats-Expected-Last-Subject-Sequence`, the
//!   compare-and-set on revision that KV's `update` is built on), so a home that lost its lease can
//!   never append: it is fenced, and steps down.
//! - **Replicas** apply the subject's messages in order with [`broker::Broker::apply_replicated`]; a
//!   replica that starts (or restarts) begins at the last snapshot the record names and catches up
//!   before it is handed out; one that falls behind resumes after the last message it applied.
//!   Versions never go backwards.
//! - **Writes from replicas** go to the home as NATS requests carrying the writer's check (the
//!   region's conflict policy, see [`broker::Check`]); the home applies them with the same rules as a
//!   local commit, answers once the change is in the stream, and the replica returns once the change
//!   has landed locally.
//! - **The lease.** The KV bucket [`REGIONS_BUCKET`] holds each region's record: its home and epoch.
//!   The home is alive while its node record (membership) is; a replica that has seen it absent for
//!   `takeover_after` while connected takes the region over with a compare-and-set on the record's
//!   revision (exactly one wins), jumps the version past anything the old home may have written
//!   unpublished, and publishes a snapshot from which everyone, the old home included, continues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context::Publish, kv, stream};
use broker::{Accepted, Broker, Mode, Proposal, Refused, RegionId, RegionSpec, Span, Upstream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::wire::{self, ChangeMsg, Reply};
use crate::{js_err, ClusterError};

/// The KV bucket of replicated regions' records (home, epoch, last snapshot).
pub const REGIONS_BUCKET: &str = "broker_regions";

/// The stream of every replicated region's changes, one subject per region.
pub const CHANGES_STREAM: &str = "BROKER_CHANGES";

/// How far a takeover moves the version: past any version the old home may have given out without
/// publishing it, so the old home, stepping down, accepts the new home's snapshot over its own bytes.
pub const TAKEOVER_GAP: u64 = 1 << 32;

/// How long a replica may take to catch up with the stream before it is handed out.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest region replication takes: a snapshot copies it whole, under its writer lock.
pub const MAX_REPLICATED_SIZE: u64 = 256 << 20;

/// The most changes a home puts in one message.
const MAX_BATCH: usize = 4096;

/// How long a publish waits for the stream's acknowledgement before it is sent again.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

/// How replication behaves.
#[derive(Debug, Clone)]
pub struct ReplicationOptions {
    /// How long a write from a replica waits for the home's answer, and then for its change to land.
    pub propose_timeout: Duration,
    /// How long a replica must see the home's node record absent (while itself connected) before it
    /// takes the region over. At least the node TTL, so a home that was only cut off from NATS for a
    /// while beats again first.
    pub takeover_after: Duration,
    /// How often each node checks its regions' records and their homes.
    pub check_every: Duration,
    /// Bytes of changes a home queues while it cannot publish; past this it drops the queue and
    /// publishes one snapshot when it can again.
    pub queue_limit: u64,
    /// Bytes of changes a home publishes before it publishes a snapshot of the region, records it as
    /// where replicas start, and purges the region's older messages from the stream: what bounds the
    /// stream. At least the region's size is used, so a snapshot never costs more than the changes it
    /// replaces.
    pub snapshot_after: u64,
    /// Keeps this node's replicated regions apart from other namespaces' of the same names on one
    /// NATS server (empty, the default: the daemons' namespace). Scenario runs use one each.
    pub namespace: String,
}

impl Default for ReplicationOptions {
    fn default() -> ReplicationOptions {
        ReplicationOptions {
            propose_timeout: Duration::from_secs(5),
            takeover_after: crate::DEFAULT_NODE_TTL + Duration::from_secs(2),
            check_every: Duration::from_millis(500),
            queue_limit: 64 << 20,
            snapshot_after: 16 << 20,
            namespace: String::new(),
        }
    }
}

/// A replicated region's record in [`REGIONS_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// The owner tenant's name (the same on every node).
    pub tenant: String,
    /// The region's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// `handle` or `mirror`.
    pub mode: String,
    /// Its conflict policy.
    pub policy: String,
    /// The node that writes it.
    pub home: String,
    /// Advanced by every takeover.
    pub epoch: u64,
    /// The stream sequence of the first message of the last snapshot (0: none yet).
    pub snapshot_seq: u64,
    /// Its namespace (see [`ReplicationOptions::namespace`]).
    #[serde(default)]
    pub namespace: String,
    /// The rights every app of the tenant opens it with by name (rights bits), on every node.
    #[serde(default)]
    pub members: u32,
}

/// What a node is for a replicated region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It writes the region and publishes its changes.
    Home,
    /// It keeps a replica; writes go to `home`.
    Replica {
        /// The home node.
        home: String,
    },
}

/// The key of a region in the bucket and in subjects: `tenant/name` in hex (names may hold '.').
pub fn region_key(tenant: &str, name: &str) -> String {
    namespaced_key("", tenant, name)
}

/// As [`region_key`] within a namespace (see [`ReplicationOptions::namespace`]).
fn namespaced_key(namespace: &str, tenant: &str, name: &str) -> String {
    let full = if namespace.is_empty() {
        format!("{tenant}/{name}")
    } else {
        format!("{namespace}:{tenant}/{name}")
    };
    full.bytes().map(|b| format!("{b:02x}")).collect()
}

fn change_subject(key: &str) -> String {
    format!("broker.change.{key}")
}

fn write_subject(key: &str) -> String {
    format!("broker.write.{key}")
}

/// A node's replication of regions: one per broker that joins a cluster.
pub struct Replication {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    /// Counts reconnections (see `connect_client`).
    reconnects: tokio::sync::watch::Receiver<u64>,
    js: jetstream::Context,
    node: String,
    broker: Arc<Broker>,
    regions_kv: kv::Store,
    nodes_kv: kv::Store,
    stream: stream::Stream,
    options: ReplicationOptions,
    rt: tokio::runtime::Handle,
    regions: parking_lot::Mutex<HashMap<String, Arc<Replicated>>>,
    /// Set by [`Replication::shutdown`]: background passes stop.
    closed: AtomicBool,
    /// Keys being shared or followed now (see [`Inner::setting_up`]).
    busy: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// When `follow_everything` may try a key that failed again (doubling up to a minute).
    retry: parking_lot::Mutex<HashMap<String, (Instant, Duration)>>,
}

/// One replicated region on this node.
struct Replicated {
    key: String,
    region: RegionId,
    /// Stream sequence of the last message this node applied or published for the region.
    applied_seq: AtomicU64,
    /// Stream sequence of the last message a replica's follower read (past `applied_seq` while a
    /// change's chunks are still arriving).
    seen_seq: AtomicU64,
    /// The version landed here, for writers waiting for their change ([`ToHome::propose`]).
    landed: parking_lot::Mutex<u64>,
    landed_cv: parking_lot::Condvar,
    state: parking_lot::Mutex<State>,
    /// Stops the lease task when the region stops being replicated.
    stopped: AtomicBool,
    /// Held through every change of role (become home or replica, take over, step down), so two of
    /// them (the lease task's and a fenced publisher's) never interleave.
    transition: tokio::sync::Mutex<()>,
}

enum State {
    Home(HomeTasks),
    Replica { home: String, follower: tokio::task::JoinHandle<()> },
    Idle,
}

struct HomeTasks {
    watch: broker::region::WatchId,
    publisher: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    outbox: Arc<Outbox>,
}

/// Changes captured at the home, waiting to be published.
struct Outbox {
    tx: mpsc::UnboundedSender<ChangeMsg>,
    bytes: AtomicU64,
    overflow: AtomicBool,
    /// What the stream acknowledged (request replies wait for their version).
    published: tokio::sync::watch::Sender<Published>,
}

/// The home's publication so far.
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    /// The highest version in the stream.
    version: u64,
    /// Another node took the region over: nothing more of this home's gets in.
    fenced: bool,
}

impl Replication {
    /// Starts replication for the broker `node` at `url`: creates the bucket and stream if needed.
    /// Must be called on a multi-threaded tokio runtime, which runs its tasks.
    ///
    /// # Errors
    /// [`ClusterError::Connect`], [`ClusterError::JetStream`], [`ClusterError::InvalidNodeName`].
    pub async fn start(
        url: &str,
        node: &str,
        broker: Arc<Broker>,
        options: ReplicationOptions,
    ) -> Result<Replication, ClusterError> {
        crate::check_node_name(node)?;
        let (client, reconnects) = crate::connect_client(url).await?;
        let js = jetstream::new(client.clone());
        let regions_kv = match js.get_key_value(REGIONS_BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: REGIONS_BUCKET.into(),
                    description: "replicated regions: home, epoch and last snapshot of each".into(),
                    history: 1,
                    ..kv::Config::default()
                })
                .await
                .map_err(|e| js_err("create the region bucket")(&e))?,
        };
        let nodes_kv = crate::nodes_bucket(&js, crate::DEFAULT_NODE_TTL).await?;
        let stream = js
            .get_or_create_stream(stream::Config {
                name: CHANGES_STREAM.into(),
                description: Some("changes of replicated regions, one subject per region".into()),
                subjects: vec!["broker.change.>".into()],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..stream::Config::default()
            })
            .await
            .map_err(|e| js_err("create the change stream")(&e))?;
        Ok(Replication {
            inner: Arc::new(Inner {
                client,
                reconnects,
                js,
                node: node.into(),
                broker,
                regions_kv,
                nodes_kv,
                stream,
                options,
                rt: tokio::runtime::Handle::current(),
                regions: parking_lot::Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                busy: parking_lot::Mutex::new(std::collections::HashSet::new()),
                retry: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Makes `region` (of tenant `tenant`, on this node's broker) a replicated region with this node as
    /// its home, or, if this node was its home before (a restart), catches up and becomes it again.
    ///
    /// # Errors
    /// [`ClusterError::Broker`] for an unknown region; [`ClusterError::Replication`] for a shared-mode
    /// region (shared mode is node-local) or one another node is home of (follow it instead).
    pub async fn share(&self, tenant: &str, name: &str) -> Result<RegionId, ClusterError> {
        self.inner.share(tenant, name).await
    }

    /// Keeps a replica of the replicated region `tenant/name` on this node, creating the local region
    /// (owned by the local tenant of that name, which must exist) if it does not exist. Returns once the
    /// replica has caught up with everything the stream held when it started.
    ///
    /// # Errors
    /// [`ClusterError::Replication`] if no such region is replicated, or the local one differs in size or
    /// mode; [`ClusterError::Broker`] if the tenant is missing or the region cannot be created.
    pub async fn follow(&self, tenant: &str, name: &str) -> Result<RegionId, ClusterError> {
        self.inner.follow(tenant, name).await
    }

    /// Follows, from now on, every replicated region of the cluster whose tenant this node has (and
    /// takes back the ones it is home of after a restart), checking the record bucket every
    /// `check_every`: what a daemon in a cluster runs. The task ends with the replication.
    pub fn follow_everything(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.options.check_every;
        self.inner.rt.spawn(async move {
            loop {
                {
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.closed.load(Ordering::Acquire) {
                        return;
                    }
                    inner.sync_once().await;
                }
                tokio::time::sleep(every.max(Duration::from_millis(100))).await;
            }
        });
    }

    /// Waits (at most `within`) until every region this node is home of has published what it
    /// captured: a graceful shutdown loses no write it acknowledged while NATS is reachable. Returns
    /// whether every home got there in time (or learnt it was deposed: nothing more of it goes out).
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let homes: Vec<Arc<Replicated>> = self.inner.regions.lock().values().cloned().collect();
        let mut all = true;
        for rep in homes {
            let waiting = match &*rep.state.lock() {
                State::Home(tasks) => Some(tasks.outbox.published.subscribe()),
                _ => None,
            };
            let (Some(mut published), Ok(info)) = (waiting, self.inner.broker.region_info(rep.region)) else {
                continue;
            };
            let done = tokio::time::timeout_at(
                deadline,
                published.wait_for(|p| p.version >= info.version || p.fenced),
            )
            .await;
            all &= matches!(done, Ok(Ok(_)));
        }
        all
    }

    /// Stops replicating `tenant/name` on this node; if this node is its home, deletes its record, so
    /// no node follows it any more (a region being destroyed), and purges its messages but the last
    /// from the stream. The local region stays as it is.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`] if the record could not be deleted.
    pub async fn forget(&self, tenant: &str, name: &str) -> Result<(), ClusterError> {
        let key = self.inner.key(tenant, name);
        self.inner.untrack(&key);
        self.inner.retry.lock().remove(&key);
        match self.inner.record(&key).await {
            Ok((record, _)) if record.home == self.inner.node => {
                // Its last message stays: a region created again under the name starts after it, so
                // its messages' ids (`key-version-last`) never repeat the old ones' within the
                // stream's duplicate window. Read before the record goes, so a region shared again
                // meanwhile keeps everything of its own.
                let last = self.inner.last_seq(&key).await;
                self.inner
                    .regions_kv
                    .delete(&key)
                    .await
                    .map_err(|e| js_err("delete the region record")(&e))?;
                if let Ok(last) = last {
                    self.inner.purge_before(&key, last).await;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// How many of the region's messages the stream holds now: after compaction, its last snapshot
    /// and the changes since (see [`ReplicationOptions::snapshot_after`]).
    ///
    /// # Errors
    /// [`ClusterError::JetStream`].
    pub async fn retained(&self, tenant: &str, name: &str) -> Result<u64, ClusterError> {
        retained_in(&self.inner.stream, &self.inner.key(tenant, name)).await
    }

    /// Every replicated region's record, by key.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`].
    pub async fn records(&self) -> Result<Vec<RegionRecord>, ClusterError> {
        self.inner.records().await
    }

    /// What this node is for the replicated region `tenant/name`, if it replicates it.
    pub fn role(&self, tenant: &str, name: &str) -> Option<Role> {
        let rep = self.inner.regions.lock().get(&self.inner.key(tenant, name)).cloned()?;
        let state = rep.state.lock();
        match &*state {
            State::Home(_) => Some(Role::Home),
            State::Replica { home, .. } => Some(Role::Replica { home: home.clone() }),
            State::Idle => None,
        }
    }

    /// The record of a replicated region.
    ///
    /// # Errors
    /// [`ClusterError::Replication`] if there is none; [`ClusterError::JetStream`].
    pub async fn record(&self, tenant: &str, name: &str) -> Result<RegionRecord, ClusterError> {
        Ok(self.inner.record(&self.inner.key(tenant, name)).await?.0)
    }

    /// Stops replicating every region (their tasks end; the regions stay as they are).
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let all: Vec<_> = self.inner.regions.lock().drain().map(|(_, r)| r).collect();
        for rep in all {
            rep.stopped.store(true, Ordering::Release);
            self.inner.stop_role(&rep);
        }
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Every well-formed region record in `store`, by tenant and name.
pub(crate) async fn records_in(store: &kv::Store) -> Result<Vec<RegionRecord>, ClusterError> {
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => {
            futures::TryStreamExt::try_collect(keys).await.map_err(|e| js_err("list the regions")(&e))?
        }
        Err(e) => return Err(js_err("list the regions")(&e)),
    };
    let mut out = Vec::new();
    for key in keys {
        if let Ok(Some(value)) = store.get(&key).await {
            if let Ok(record) = serde_json::from_slice::<RegionRecord>(&value) {
                out.push(record);
            }
        }
    }
    out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    Ok(out)
}

/// How many messages of the region `key` the change stream holds: the pending count of an ephemeral
/// consumer of its subject, deleted after (or gone by itself 10 s after an error).
pub(crate) async fn retained_in(stream: &stream::Stream, key: &str) -> Result<u64, ClusterError> {
    let count = js_err("count a region's messages");
    let config = consumer::pull::Config {
        filter_subject: change_subject(key),
        deliver_policy: consumer::DeliverPolicy::All,
        inactive_threshold: Duration::from_secs(10),
        ..Default::default()
    };
    let mut consumer = stream.create_consumer(config).await.map_err(|e| count(&e))?;
    let info = consumer.info().await.map_err(|e| count(&e))?;
    let (pending, name) = (info.num_pending, info.name.clone());
    let _ = stream.delete_consumer(&name).await;
    Ok(pending)
}

fn encode(record: &RegionRecord) -> bytes::Bytes {
    serde_json::to_vec(record).unwrap_or_default().into()
}

/// A replica's upstream while it is being built: every write is refused until it follows its home.
#[derive(Debug)]
struct CatchingUp;

impl Upstream for CatchingUp {
    fn propose(&self, _: Proposal) -> Result<Accepted, Refused> {
        Err(Refused::Unavailable("the replica is catching up with its home".into()))
    }

    fn home(&self) -> String {
        "(catching up)".into()
    }
}

/// A key being shared or followed by this node; released on drop.
struct SettingUp<'a>(&'a parking_lot::Mutex<std::collections::HashSet<String>>, String);

impl Drop for SettingUp<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl Inner {
    /// Marks `key` as being set up (shared or followed): a second setup of it at once is refused.
    fn setting_up(&self, key: &str) -> Result<SettingUp<'_>, ClusterError> {
        if !self.busy.lock().insert(key.to_owned()) {
            return Err(ClusterError::Replication("the region is being set up already".into()));
        }
        Ok(SettingUp(&self.busy, key.to_owned()))
    }

    /// The key of `tenant/name` in this node's namespace.
    fn key(&self, tenant: &str, name: &str) -> String {
        namespaced_key(&self.options.namespace, tenant, name)
    }

    /// Makes `region` (of tenant `tenant`, on this node's broker) a replicated region with this node as
    /// its home, or, if this node was its home before (a restart), catches up and becomes it again.
    ///
    /// # Errors
    /// [`ClusterError::Broker`] for an unknown region; [`ClusterError::Replication`] for a shared-mode
    /// region (shared mode is node-local) or one another node is home of (follow it instead).
    async fn share(self: &Arc<Self>, tenant: &str, name: &str) -> Result<RegionId, ClusterError> {
        let inner = self;
        let _busy = self.setting_up(&self.key(tenant, name))?;
        let (_, region) = inner.local_region(tenant, name)?;
        let info = inner.broker.region_info(region).map_err(ClusterError::broker)?;
        if info.mode == Mode::Shared {
            return Err(ClusterError::Replication(format!(
                "{tenant}/{name} is a shared-mode region: shared mode is node-local and cannot be replicated; use handle or mirror mode"
            )));
        }
        if info.size > MAX_REPLICATED_SIZE {
            return Err(ClusterError::Replication(format!(
                "{tenant}/{name} is {} bytes; a replicated region holds at most {MAX_REPLICATED_SIZE} (its snapshots are copied whole)",
                info.size
            )));
        }
        let key = self.key(tenant, name);
        // Messages of an older region of the same name stay in the stream: this one starts after them.
        let last = inner.last_seq(&key).await?;
        let record = RegionRecord {
            tenant: tenant.into(),
            name: name.into(),
            size: info.size,
            mode: info.mode.to_string(),
            policy: info.policy.to_string(),
            home: inner.node.clone(),
            epoch: 1,
            snapshot_seq: last + 1,
            namespace: inner.options.namespace.clone(),
            members: info.members.bits(),
        };
        match inner.regions_kv.create(&key, encode(&record)).await {
            Ok(revision) => {
                let rep = inner.track(&key, region);
                rep.applied_seq.store(last, Ordering::Release);
                rep.seen_seq.store(last, Ordering::Release);
                let _turn = rep.transition.lock().await;
                if let Err(e) = inner.become_home(&rep, record, revision, false).await {
                    inner.untrack(&key);
                    // Nobody else was told of it: the record goes too, so no node follows it.
                    let _ = inner.regions_kv.delete(&key).await;
                    return Err(e);
                }
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let (existing, revision) = inner.record(&key).await?;
                if existing.home != inner.node {
                    return Err(ClusterError::Replication(format!(
                        "{tenant}/{name} is already replicated with node {:?} as its home: follow it",
                        existing.home
                    )));
                }
                if (existing.size, &existing.mode, &existing.policy)
                    != (record.size, &record.mode, &record.policy)
                {
                    return Err(ClusterError::Replication(format!(
                        "{tenant}/{name} is replicated as {} bytes, {} mode, {}; the local one is {} bytes, {} mode, {}",
                        existing.size, existing.mode, existing.policy, record.size, record.mode, record.policy
                    )));
                }
                // A restart of the home: catch up with what it published before, then write again.
                let rep = inner.track(&key, region);
                let _turn = rep.transition.lock().await;
                let back = match inner.catch_up(&rep, &existing).await {
                    Ok(()) => inner.become_home(&rep, existing, revision, false).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = back {
                    inner.untrack(&key);
                    return Err(e);
                }
            }
            Err(e) => return Err(js_err("create the region record")(&e)),
        }
        let rep = inner.regions.lock().get(&key).cloned();
        let Some(rep) = rep else {
            return Err(ClusterError::Replication(format!("{tenant}/{name} stopped being replicated")));
        };
        Inner::spawn_lease(inner, &rep);
        Ok(region)
    }

    /// Keeps a replica of the replicated region `tenant/name` on this node, creating the local region
    /// (owned by the local tenant of that name, which must exist) if it does not exist. Returns once the
    /// replica has caught up with everything the stream held when it started.
    ///
    /// # Errors
    /// [`ClusterError::Replication`] if no such region is replicated, or the local one differs in size or
    /// mode; [`ClusterError::Broker`] if the tenant is missing or the region cannot be created.
    async fn follow(self: &Arc<Self>, tenant: &str, name: &str) -> Result<RegionId, ClusterError> {
        let inner = self;
        let key = self.key(tenant, name);
        let (record, _) = inner.record(&key).await?;
        if record.size == 0 || record.size > MAX_REPLICATED_SIZE {
            return Err(ClusterError::BadRecord { key, reason: format!("size {}", record.size) });
        }
        let tid = inner
            .broker
            .tenant_id(tenant)
            .ok_or_else(|| ClusterError::Replication(format!("no tenant {tenant:?} on this node")))?;
        let busy = self.setting_up(&key)?;
        let mut caught_up = 0;
        let created;
        let region = match inner.broker.region_id(tid, name) {
            // The home's own region after a restart is shared again, with its record checked.
            Some(_) if record.home == inner.node => {
                drop(busy);
                return Box::pin(self.share(tenant, name)).await;
            }
            // A region of this name that replication did not build holds bytes and versions of its
            // own, which the home's changes could not be told apart from: refused.
            Some(_) => {
                return Err(ClusterError::Replication(format!(
                    "{tenant}/{name} exists on this node already; a replica is built by the cluster (destroy the local one first)"
                )))
            }
            None => {
                let mode = record.mode.parse::<Mode>().map_err(ClusterError::Replication)?;
                let policy = record.policy.parse().map_err(ClusterError::Replication)?;
                // Built from the stream before it exists here, so no app ever sees it behind.
                let image = if record.home == inner.node {
                    None
                } else {
                    Some(inner.image(&key, record.snapshot_seq, record.size).await?)
                };
                let members = broker::Rights::from_bits(record.members).unwrap_or(broker::Rights::NONE);
                let spec = RegionSpec::new(name, record.size, mode).with_policy(policy).with_members(members);
                let r = inner.broker.create_region(tid, spec).map_err(ClusterError::broker)?;
                created = Some(r);
                if let Some((version, bytes, done)) = image {
                    // No write may land here before the replica follows its home.
                    let _ = inner.broker.set_upstream(r, Some(Arc::new(CatchingUp)));
                    if version > 0 {
                        let spans = [Span { offset: 0, bytes }];
                        if let Err(e) = inner.broker.apply_replicated(r, version, &spans) {
                            let _ = inner.broker.destroy_region(r);
                            return Err(ClusterError::broker(e));
                        }
                    }
                    caught_up = done;
                }
                r
            }
        };
        // A region this call created goes again if the rest fails, so the next pass starts afresh.
        let undo = |inner: &Arc<Inner>| {
            if let Some(r) = created {
                let _ = inner.broker.destroy_region(r);
            }
        };
        if record.home == inner.node {
            drop(busy);
            let shared = Box::pin(self.share(tenant, name)).await;
            if shared.is_err() {
                undo(inner);
            }
            return shared;
        }
        let rep = inner.track(&key, region);
        rep.applied_seq.store(caught_up, Ordering::Release);
        rep.seen_seq.store(caught_up, Ordering::Release);
        *rep.landed.lock() = inner.broker.region_info(region).map_or(0, |i| i.version);
        {
            let _turn = rep.transition.lock().await;
            Inner::become_replica(inner, &rep, &record.home, record.snapshot_seq);
        }
        // Every message read (a change the stream ends in the middle of, its home killed between its
        // chunks, is superseded by the next home's snapshot).
        let caught = match inner.last_seq(&key).await {
            Ok(target) => Inner::wait_for(&rep.seen_seq, target).await,
            Err(e) => Err(e),
        };
        if let Err(e) = caught {
            inner.untrack(&key);
            undo(inner);
            return Err(e);
        }
        Inner::spawn_lease(inner, &rep);
        Ok(region)
    }

    /// One pass of [`Replication::follow_everything`].
    async fn sync_once(self: &Arc<Self>) {
        let Ok(records) = self.records().await else { return };
        for record in records {
            if record.namespace != self.options.namespace {
                continue;
            }
            let key = self.key(&record.tenant, &record.name);
            if self.regions.lock().contains_key(&key) || self.broker.tenant_id(&record.tenant).is_none() {
                continue;
            }
            if self.retry.lock().get(&key).is_some_and(|(at, _)| Instant::now() < *at) {
                continue;
            }
            let followed = self.follow(&record.tenant, &record.name).await;
            if followed.is_ok() {
                self.retry.lock().remove(&key);
            } else {
                // A key that fails (a quota, a bad record) is tried again later and later, not every pass.
                let mut retry = self.retry.lock();
                let wait = retry
                    .get(&key)
                    .map_or(Duration::from_secs(1), |(_, w)| (*w * 2).min(Duration::from_secs(60)));
                retry.insert(key.clone(), (Instant::now() + wait, wait));
            }
            if let Err(e) = followed {
                tracing::warn!(node = %self.node, tenant = %record.tenant, region = %record.name, "cannot follow: {e}");
            }
        }
    }

    async fn records(&self) -> Result<Vec<RegionRecord>, ClusterError> {
        records_in(&self.regions_kv).await
    }

    fn local_region(&self, tenant: &str, name: &str) -> Result<(broker::TenantId, RegionId), ClusterError> {
        let t = self
            .broker
            .tenant_id(tenant)
            .ok_or_else(|| ClusterError::Replication(format!("no tenant {tenant:?} on this node")))?;
        let r = self
            .broker
            .region_id(t, name)
            .ok_or_else(|| ClusterError::Replication(format!("no region {tenant}/{name} on this node")))?;
        Ok((t, r))
    }

    fn track(&self, key: &str, region: RegionId) -> Arc<Replicated> {
        let rep = Arc::new(Replicated {
            key: key.into(),
            region,
            applied_seq: AtomicU64::new(0),
            seen_seq: AtomicU64::new(0),
            landed: parking_lot::Mutex::new(0),
            landed_cv: parking_lot::Condvar::new(),
            state: parking_lot::Mutex::new(State::Idle),
            stopped: AtomicBool::new(false),
            transition: tokio::sync::Mutex::new(()),
        });
        if let Some(old) = self.regions.lock().insert(key.into(), Arc::clone(&rep)) {
            old.stopped.store(true, Ordering::Release);
            self.stop_role(&old);
        }
        rep
    }

    fn untrack(&self, key: &str) {
        if let Some(rep) = self.regions.lock().remove(key) {
            rep.stopped.store(true, Ordering::Release);
            self.stop_role(&rep);
        }
    }

    async fn record(&self, key: &str) -> Result<(RegionRecord, u64), ClusterError> {
        let entry = self.regions_kv.entry(key).await.map_err(|e| js_err("read a region record")(&e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&e.value)
                    .map_err(|err| ClusterError::BadRecord { key: key.into(), reason: err.to_string() })?;
                Ok((record, e.revision))
            }
            _ => Err(ClusterError::Replication(format!("no replicated region has the key {key}"))),
        }
    }

    /// The stream sequence of the region's last message (0 if none).
    async fn last_seq(&self, key: &str) -> Result<u64, ClusterError> {
        match self.stream.get_last_raw_message_by_subject(&change_subject(key)).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(js_err("read the region's last change")(&e)),
        }
    }

    async fn wait_for(seq: &AtomicU64, target: u64) -> Result<(), ClusterError> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while seq.load(Ordering::Acquire) < target {
            if Instant::now() > deadline {
                return Err(ClusterError::Replication(format!(
                    "the replica did not catch up with the stream (at {} of {target})",
                    seq.load(Ordering::Acquire)
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Applies the stream from the record's snapshot up to its end, without changing roles.
    async fn catch_up(
        self: &Arc<Self>,
        rep: &Arc<Replicated>,
        record: &RegionRecord,
    ) -> Result<(), ClusterError> {
        let target = self.last_seq(&rep.key).await?;
        let follower =
            tokio::spawn(Inner::follow_stream(Arc::clone(self), Arc::clone(rep), record.snapshot_seq));
        let caught = Inner::wait_for(&rep.seen_seq, target).await;
        follower.abort();
        let _ = follower.await;
        caught
    }

    fn stop_role(&self, rep: &Replicated) {
        let old = std::mem::replace(&mut *rep.state.lock(), State::Idle);
        match old {
            State::Home(tasks) => {
                self.broker.unwatch_region(rep.region, tasks.watch);
                tasks.publisher.abort();
                tasks.server.abort();
            }
            State::Replica { follower, .. } => follower.abort(),
            State::Idle => {}
        }
    }

    /// Makes this node the region's home: captures its changes, publishes them after `applied_seq`,
    /// and serves writes from replicas. Its first change is a snapshot (the whole region, stamped with
    /// a new version; past [`TAKEOVER_GAP`] more on a takeover), from which new replicas start.
    async fn become_home(
        self: &Arc<Self>,
        rep: &Arc<Replicated>,
        mut record: RegionRecord,
        revision: u64,
        takeover: bool,
    ) -> Result<(), ClusterError> {
        self.stop_role(rep);
        let region = self.broker.region_ref(rep.region).map_err(ClusterError::broker)?;
        // Followers start at the next message: the snapshot below, or a write captured just before it.
        record.home = self.node.clone();
        record.snapshot_seq = rep.applied_seq.load(Ordering::Acquire) + 1;
        self.regions_kv
            .update(&rep.key, encode(&record), revision)
            .await
            .map_err(|e| js_err("record the home")(&e))?;

        let (tx, rx) = mpsc::unbounded_channel();
        let (published, _) =
            tokio::sync::watch::channel(Published { version: region.version(), fenced: false });
        let outbox =
            Arc::new(Outbox { tx, bytes: AtomicU64::new(0), overflow: AtomicBool::new(false), published });
        let weak: Weak<broker::region::Region> = Arc::downgrade(&region);
        let (captured, limit) = (Arc::clone(&outbox), self.options.queue_limit);
        // The watcher goes first, so no write of this node's is missed: every change from here on is
        // captured under the writer's lock, in version order.
        let watch = self
            .broker
            .watch_region(
                rep.region,
                Arc::new(move |c: &broker::region::Change| capture(&weak, &captured, limit, c)),
            )
            .map_err(ClusterError::broker)?;
        let _ = self.broker.set_upstream(rep.region, None);
        let version = self
            .broker
            .restamp_region(rep.region, |v| if takeover { v + TAKEOVER_GAP } else { v + 1 })
            .map_err(ClusterError::broker)?;
        let publisher =
            tokio::spawn(Inner::publish_changes(Arc::clone(self), Arc::clone(rep), Arc::clone(&outbox), rx));
        let server =
            tokio::spawn(Inner::serve_writes(Arc::clone(self), Arc::clone(rep), Arc::clone(&outbox)));
        *rep.state.lock() = State::Home(HomeTasks { watch, publisher, server, outbox });
        tracing::info!(node = %self.node, key = %rep.key, version, "home of a replicated region");
        Ok(())
    }

    /// Makes this node a replica: writes go to `home`, changes come from the stream after `from`
    /// (or the last applied message, if later).
    fn become_replica(self: &Arc<Self>, rep: &Arc<Replicated>, home: &str, from: u64) {
        self.stop_role(rep);
        let up: Arc<dyn Upstream> = Arc::new(ToHome {
            inner: Arc::downgrade(self),
            rep: Arc::downgrade(rep),
            home: home.into(),
            subject: write_subject(&rep.key),
        });
        let _ = self.broker.set_upstream(rep.region, Some(up));
        let start = from.max(rep.applied_seq.load(Ordering::Acquire) + 1);
        let follower = tokio::spawn(Inner::follow_stream(Arc::clone(self), Arc::clone(rep), start));
        *rep.state.lock() = State::Replica { home: home.into(), follower };
    }

    /// Publishes one message on the region's subject, expecting `last` as the subject's last sequence;
    /// retries while NATS is away. Returns the message's sequence.
    async fn publish(
        &self,
        key: &str,
        payload: bytes::Bytes,
        version: u64,
        last: u64,
    ) -> Result<u64, Fenced> {
        let id = format!("{key}-{version}-{last}");
        let mut backoff = Duration::from_millis(20);
        loop {
            let publish = Publish::build()
                .payload(payload.clone())
                .message_id(&id)
                .expected_last_subject_sequence(last);
            // A publish whose acknowledgement was lost is sent again: the message id makes the
            // stream answer with the first one's sequence instead of storing it twice.
            let acked = match self.js.send_publish(change_subject(key), publish).await {
                Ok(ack) => tokio::time::timeout(PUBLISH_TIMEOUT, ack).await.ok(),
                Err(e) => Some(Err(e)),
            };
            match acked {
                None => tracing::debug!(key, "publish not acknowledged in time, sending it again"),
                Some(Ok(ack)) => return Ok(ack.sequence),
                Some(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    return Err(Fenced);
                }
                Some(Err(e)) => {
                    tracing::debug!(key, "publish failed, retrying: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The home's publisher: changes in version order, each expecting the last one's sequence; a
    /// snapshot once `snapshot_after` bytes have gone by, behind which the stream is purged.
    async fn publish_changes(
        self: Arc<Self>,
        rep: Arc<Replicated>,
        outbox: Arc<Outbox>,
        mut rx: mpsc::UnboundedReceiver<ChangeMsg>,
    ) {
        let size = |m: &ChangeMsg| m.spans.iter().map(|s| s.bytes.len() as u64).sum::<u64>();
        let taken = |m: &ChangeMsg| {
            let n = size(m);
            let _ =
                outbox.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
        };
        let region_size = self.broker.region_info(rep.region).map_or(0, |i| i.size);
        let snapshot_after = self.options.snapshot_after.max(region_size).max(1);
        // Bytes published since the last compaction; the home's first snapshot (its restamp) compacts
        // at once, behind the previous home's messages.
        let (mut since_compaction, mut compacted) = (0u64, false);
        // The version of the last snapshot this publisher read from the region: changes captured up
        // to it are in it, and are not published again.
        let mut covered = 0u64;
        let mut carried: Option<ChangeMsg> = None;
        loop {
            let mut msg = match carried.take() {
                Some(m) => m,
                // The change that overflowed went out in the last batch, and nothing is captured
                // until the snapshot below: do not wait for more.
                None if outbox.overflow.load(Ordering::Acquire) => {
                    ChangeMsg { snapshot: false, last: true, version: 0, spans: Vec::new() }
                }
                None => match rx.recv().await {
                    Some(m) => {
                        taken(&m);
                        m
                    }
                    None => return,
                },
            };
            if outbox.overflow.swap(false, Ordering::AcqRel) {
                // Changes were dropped while the stream was away: one snapshot replaces them all.
                while rx.try_recv().is_ok() {}
                outbox.bytes.store(0, Ordering::Release);
                let Some(snapshot) = self.snapshot(&rep).await else { return };
                covered = snapshot.version;
                msg = snapshot;
            } else if msg.version <= covered {
                continue;
            }
            // Small changes queued behind this one (written while the last publish was in flight) go
            // with it in one message: one acknowledgement for all of them.
            let mut batch = Vec::new();
            let mut total = size(&msg);
            if !msg.snapshot && total < wire::MAX_CHUNK as u64 {
                while let Ok(next) = rx.try_recv() {
                    taken(&next);
                    if next.version <= covered {
                        continue;
                    }
                    let n = size(&next);
                    if next.snapshot || total + n > wire::MAX_CHUNK as u64 || batch.len() >= MAX_BATCH {
                        carried = Some(next);
                        break;
                    }
                    total += n;
                    batch.push(next);
                }
            }
            let snapshot = msg.snapshot;
            let (version, payloads): (u64, Vec<bytes::Bytes>) = if batch.is_empty() {
                (msg.version, encode_chunks(msg))
            } else {
                batch.insert(0, msg);
                let last = batch.last().map_or(0, |m| m.version);
                (last, vec![wire::encode_batch(&batch).into()])
            };
            let Some(first) = self.publish_all(&rep, &outbox, version, payloads).await else { return };
            since_compaction = since_compaction.saturating_add(total);
            if (snapshot && !compacted) || since_compaction >= snapshot_after {
                let at = if snapshot {
                    first
                } else {
                    // Enough has gone by: a snapshot (the region as it is now, at its version) lets
                    // the stream forget everything before it. Changes still queued that it holds
                    // are dropped: a home writing faster than it publishes catches up here.
                    let Some(snap) = self.snapshot(&rep).await else { return };
                    covered = snap.version;
                    let version = snap.version;
                    let Some(first) = self.publish_all(&rep, &outbox, version, encode_chunks(snap)).await
                    else {
                        return;
                    };
                    first
                };
                (since_compaction, compacted) = (0, true);
                self.compact(&rep, at).await;
            }
        }
    }

    /// The whole region at its version, as a snapshot message (`None` once the region is gone). Read
    /// on a blocking thread: up to [`MAX_REPLICATED_SIZE`] copied under the region's read lock, which
    /// waits for any writer, would hold up the runtime's other tasks.
    async fn snapshot(&self, rep: &Replicated) -> Option<ChangeMsg> {
        let region = self.broker.region_ref(rep.region).ok()?;
        let read = tokio::task::spawn_blocking(move || {
            let mut bytes = vec![0; usize::try_from(region.size()).ok()?];
            let version = region.read_versioned(0, &mut bytes).ok()?;
            Some(ChangeMsg { snapshot: true, last: true, version, spans: vec![Span { offset: 0, bytes }] })
        });
        read.await.ok().flatten()
    }

    /// Publishes `payloads` (one change's chunks, or one batch, of `version`) in order. Returns the
    /// first one's stream sequence, or `None` if another node took the region over meanwhile: this
    /// node steps down, and its publisher ends.
    async fn publish_all(
        self: &Arc<Self>,
        rep: &Arc<Replicated>,
        outbox: &Outbox,
        version: u64,
        payloads: Vec<bytes::Bytes>,
    ) -> Option<u64> {
        let mut first = None;
        for payload in payloads {
            loop {
                let last = rep.applied_seq.load(Ordering::Acquire);
                let Err(Fenced) = self.publish(&rep.key, payload.clone(), version, last).await.map(|seq| {
                    rep.applied_seq.store(seq, Ordering::Release);
                    rep.seen_seq.store(seq, Ordering::Release);
                    first.get_or_insert(seq);
                }) else {
                    break;
                };
                // Someone appended. The record says who writes the region: another node (this one
                // was deposed: step down), or still this one (a deposed home's last change got in
                // before this home's first, or a resend outlived the stream's duplicate window): go
                // on after it.
                match self.record(&rep.key).await {
                    Ok((record, _)) if record.home == self.node => match self.last_seq(&rep.key).await {
                        Ok(l) => {
                            rep.applied_seq.store(l, Ordering::Release);
                            rep.seen_seq.store(l, Ordering::Release);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    },
                    Ok(_) => {
                        tracing::warn!(node = %self.node, key = %rep.key, "fenced: another node took the region over");
                        outbox.published.send_modify(|p| p.fenced = true);
                        let inner = Arc::clone(self);
                        let rep = Arc::clone(rep);
                        tokio::spawn(async move { inner.step_down(&rep).await });
                        return None;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        outbox.published.send_modify(|p| p.version = p.version.max(version));
        first
    }

    /// After a snapshot published at stream sequence `at`: records it as where replicas start (a
    /// compare-and-set on the record's revision, so a home deposed meanwhile changes nothing), then
    /// purges the region's messages before it. A replica resuming from a purged message reads on
    /// from the snapshot, which holds everything before it; one that starts reads the record first.
    async fn compact(&self, rep: &Replicated, at: u64) {
        let Ok((mut record, revision)) = self.record(&rep.key).await else { return };
        if record.home != self.node || record.snapshot_seq > at {
            return;
        }
        if record.snapshot_seq < at {
            record.snapshot_seq = at;
            if let Err(e) = self.regions_kv.update(&rep.key, encode(&record), revision).await {
                tracing::debug!(key = %rep.key, "not compacting: the record changed meanwhile ({e})");
                return;
            }
        }
        // (If the purge fails, the next snapshot's takes these too.)
        self.purge_before(&rep.key, at).await;
    }

    /// Purges the region's messages before stream sequence `seq`.
    async fn purge_before(&self, key: &str, seq: u64) {
        // Nothing is before the subject's first message; and the server reads a purge up to sequence
        // 1 as one without a sequence, which would take the whole subject.
        if seq <= 1 {
            return;
        }
        match self.stream.purge().filter(change_subject(key)).sequence(seq).await {
            Ok(p) => tracing::debug!(key, purged = p.purged, seq, "purged the region's older messages"),
            Err(e) => tracing::debug!(key, "purging the region's older messages failed: {e}"),
        }
    }

    /// The home's side of writes from replicas: one queue group, so a proposal reaches one node even
    /// while a deposed home has not yet noticed.
    async fn serve_writes(self: Arc<Self>, rep: Arc<Replicated>, outbox: Arc<Outbox>) {
        let mut sub = loop {
            match self.client.queue_subscribe(write_subject(&rep.key), "home".into()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(key = %rep.key, "cannot serve writes yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else { continue };
            let (reply, expires) = match wire::decode_proposal(&msg.payload) {
                Err(e) => (Reply::Refused(e.to_string()), 0),
                Ok((_, expires)) if crate::now_ms() > expires => {
                    (Reply::Refused("the proposal expired before it arrived (NATS was away?)".into()), 0)
                }
                Ok((p, expires)) => match self.broker.apply_proposal(rep.region, &p) {
                    Err(e) => (Reply::Refused(e.to_string()), 0),
                    Ok(Err(Refused::Conflict { current })) => (Reply::Conflict(current), 0),
                    Ok(Err(e)) => (Reply::Refused(e.to_string()), 0),
                    Ok(Ok(a)) => (Reply::Accepted(a), expires),
                },
            };
            // Answered once the change is in the stream, or at the proposal's expiry if the stream is
            // slow (it is written here and queued: accepted, as a local write is), or refused if this
            // node lost the region meanwhile (its unpublished changes are dropped). In the background:
            // the next proposal need not wait for this one's acknowledgement.
            let (client, mut published) = (self.client.clone(), outbox.published.subscribe());
            tokio::spawn(async move {
                let reply = match reply {
                    Reply::Accepted(a) if a.version > a.previous => {
                        let wait = Duration::from_millis(expires.saturating_sub(crate::now_ms()));
                        let outcome = tokio::time::timeout(
                            wait,
                            published.wait_for(|p| p.version >= a.version || p.fenced),
                        )
                        .await;
                        match outcome {
                            Ok(Ok(p)) if p.version < a.version => Reply::Refused(
                                "this node lost the region to another home; the write was not kept".into(),
                            ),
                            Ok(Err(_)) => Reply::Refused(
                                "this node stopped being the region's home before the write was published"
                                    .into(),
                            ),
                            // Published, or still queued when the proposal expired (written here, and
                            // sent once the stream takes it: accepted, as a local write is).
                            Ok(Ok(_)) | Err(_) => Reply::Accepted(a),
                        }
                    }
                    other => other,
                };
                let _ = client.publish(reply_to, wire::encode_reply(&reply).into()).await;
            });
        }
    }

    /// An ordered consumer of the region's subject from stream sequence `from`.
    async fn messages_from(&self, key: &str, from: u64) -> Result<consumer::pull::Ordered, ClusterError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: change_subject(key),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..Default::default()
        };
        let consumer =
            self.stream.create_consumer(config).await.map_err(|e| js_err("follow a region")(&e))?;
        consumer.messages().await.map_err(|e| js_err("follow a region")(&e))
    }

    /// The region as the stream has it, from the snapshot at `from` to the stream's end now: its
    /// version, its bytes and the sequence of the last message of the last whole change read. A new
    /// replica is built from this before anyone can see it, so it never shows an older version.
    async fn image(&self, key: &str, from: u64, size: u64) -> Result<(u64, Vec<u8>, u64), ClusterError> {
        let mut target = self.last_seq(key).await?;
        let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
        let (mut version, mut done) = (0u64, from.saturating_sub(1));
        if target < from.max(1) {
            return Ok((version, bytes, target));
        }
        let mut messages = self.messages_from(key, from).await?;
        let mut parts = Assembler::default();
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        let mut seen = 0;
        loop {
            if seen >= target {
                if parts.is_idle() {
                    break;
                }
                // The messages up to `target` were purged behind a snapshot that is still arriving in
                // chunks: read it whole if the stream has it (a change the stream ends in, its home
                // killed between chunks, is left for the next home's snapshot).
                let now = self.last_seq(key).await?;
                if now <= seen {
                    break;
                }
                target = now;
            }
            let next = tokio::time::timeout_at(deadline, messages.next()).await;
            let Ok(Some(Ok(msg))) = next else {
                return Err(ClusterError::Replication(format!(
                    "catching up with the stream failed at {seen} of {target}"
                )));
            };
            let Ok(seq) = msg.info().map(|i| i.stream_sequence) else { continue };
            // An ordered consumer rebuilt before its first message starts from the stream's
            // beginning: what comes before `from` (an older region's last message) is not this one's.
            if seq < from {
                continue;
            }
            seen = seq;
            match wire::decode_message(&msg.payload) {
                Ok(changes) => {
                    for change in changes {
                        let Some((v, spans)) = parts.take(change, size) else { continue };
                        if v > version {
                            for span in &spans {
                                let at = usize::try_from(span.offset).unwrap_or(usize::MAX);
                                let dst =
                                    at.checked_add(span.bytes.len()).and_then(|end| bytes.get_mut(at..end));
                                if let Some(dst) = dst {
                                    dst.copy_from_slice(&span.bytes);
                                }
                            }
                            version = v;
                        }
                    }
                    if parts.is_idle() {
                        done = seq;
                    }
                }
                Err(e) => {
                    tracing::warn!(key, seq, "skipping a malformed change: {e}");
                    if parts.is_idle() {
                        done = seq;
                    }
                }
            }
        }
        Ok((version, bytes, done))
    }

    /// A replica's follower: applies the region's changes in order from `start`, forever.
    async fn follow_stream(self: Arc<Self>, rep: Arc<Replicated>, start: u64) {
        let size = self.broker.region_info(rep.region).map_or(0, |i| i.size);
        loop {
            // Every (re)start reads from the first message after the last whole change applied.
            let mut parts = Assembler::default();
            let from = start.max(rep.applied_seq.load(Ordering::Acquire) + 1);
            let mut messages = match self.messages_from(&rep.key, from).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(key = %rep.key, "cannot follow yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut reconnects = self.reconnects.clone();
            reconnects.mark_unchanged();
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    // The server came back: its pull requests are gone; start again where we were.
                    _ = reconnects.changed() => break,
                };
                let Some(next) = next else { break };
                let msg = match next {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(key = %rep.key, "follow: {e}");
                        break;
                    }
                };
                let Ok(seq) = msg.info().map(|i| i.stream_sequence) else { continue };
                if seq <= rep.applied_seq.load(Ordering::Acquire) {
                    continue;
                }
                rep.seen_seq.fetch_max(seq, Ordering::AcqRel);
                match wire::decode_message(&msg.payload) {
                    Ok(changes) => {
                        for change in changes {
                            let Some((version, spans)) = parts.take(change, size) else { continue };
                            if let Err(e) = self.broker.apply_replicated(rep.region, version, &spans) {
                                tracing::warn!(key = %rep.key, "a change that does not fit the region: {e}");
                            }
                        }
                        if parts.is_idle() {
                            rep.applied_seq.store(seq, Ordering::Release);
                            let landed = self.broker.region_info(rep.region).map_or(0, |i| i.version);
                            *rep.landed.lock() = landed;
                            rep.landed_cv.notify_all();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(key = %rep.key, seq, "skipping a malformed change: {e}");
                        if parts.is_idle() {
                            rep.applied_seq.store(seq, Ordering::Release);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn_lease(self: &Arc<Self>, rep: &Arc<Replicated>) {
        tokio::spawn(Inner::lease(Arc::clone(self), Arc::clone(rep)));
    }

    /// Watches the region's record and its home: a home steps down when the record names another; a
    /// replica takes over when the home's node has been gone for `takeover_after` while this node was
    /// connected.
    async fn lease(self: Arc<Self>, rep: Arc<Replicated>) {
        let mut absent_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(self.options.check_every).await;
            if rep.stopped.load(Ordering::Acquire) {
                return;
            }
            if self.client.connection_state() != async_nats::connection::State::Connected {
                absent_since = None;
                continue;
            }
            let Ok((record, revision)) = self.record(&rep.key).await else {
                absent_since = None;
                continue;
            };
            let home = matches!(&*rep.state.lock(), State::Home(_));
            if home {
                if record.home != self.node {
                    self.step_down(&rep).await;
                }
                continue;
            }
            if record.home == self.node {
                // The record names this node but it does not write: a takeover that won the record
                // and then failed. Try again (nobody else will: this node beats).
                let _turn = rep.transition.lock().await;
                if !matches!(&*rep.state.lock(), State::Home(_)) {
                    if let Err(e) = self.become_home(&rep, record, revision, true).await {
                        tracing::warn!(node = %self.node, key = %rep.key, "becoming the home again failed: {e}");
                    }
                }
                continue;
            }
            if let State::Replica { home, .. } = &mut *rep.state.lock() {
                home.clone_from(&record.home);
            }
            // Only a record the server says is gone counts as absent; an error tells nothing.
            match self.nodes_kv.get(&record.home).await {
                Ok(Some(_)) => absent_since = None,
                Ok(None) => {
                    let since = *absent_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.options.takeover_after {
                        absent_since = None;
                        self.take_over(&rep, record, revision).await;
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Takes the region over from a dead home: reads the stream to its end, checks the home is still
    /// gone, wins the record by compare-and-set on its revision, and becomes the home (a losing node
    /// stays a replica of the winner).
    async fn take_over(self: &Arc<Self>, rep: &Arc<Replicated>, mut record: RegionRecord, mut revision: u64) {
        let _turn = rep.transition.lock().await;
        let Ok(target) = self.last_seq(&rep.key).await else { return };
        // Every message read (a change the dead home left half-published is abandoned: the snapshot
        // below, at a higher version, replaces it everywhere).
        if Inner::wait_for(&rep.seen_seq, target).await.is_err() {
            return;
        }
        // Catching up took time: the home may have come back meanwhile.
        if !matches!(self.nodes_kv.get(&record.home).await, Ok(None)) {
            return;
        }
        let (old, epoch) = (record.home.clone(), record.epoch);
        let mut tries = 0;
        let revision = loop {
            let mine = RegionRecord { home: self.node.clone(), epoch: epoch + 1, ..record.clone() };
            if let Ok(won) = self.regions_kv.update(&rep.key, encode(&mine), revision).await {
                record = mine;
                break won;
            }
            // The record changed. A compaction by the old home (cut off from membership, still
            // publishing) moves only its snapshot: try again on the new revision. Another home or
            // epoch is another node's takeover (or the old home's return): it stands.
            match self.record(&rep.key).await {
                Ok((now, r))
                    if (now.home.as_str(), now.epoch) == (old.as_str(), epoch)
                        && r != revision
                        && tries < 8 =>
                {
                    (record, revision, tries) = (now, r, tries + 1);
                }
                _ => {
                    tracing::info!(node = %self.node, key = %rep.key, "another node took the region over first");
                    return;
                }
            }
        };
        self.stop_role(rep);
        rep.applied_seq.store(rep.seen_seq.load(Ordering::Acquire), Ordering::Release);
        match self.become_home(rep, record, revision, true).await {
            Ok(()) => tracing::warn!(node = %self.node, key = %rep.key, from = %old, "took the region over"),
            // The record names this node: the lease task tries again.
            Err(e) => tracing::warn!(node = %self.node, key = %rep.key, "takeover failed, retrying: {e}"),
        }
    }

    /// Stops being the home (another node holds the record now): changes not yet published are lost to
    /// the cluster, and the region follows the new home from its snapshot.
    async fn step_down(self: &Arc<Self>, rep: &Arc<Replicated>) {
        let _turn = rep.transition.lock().await;
        let dropped = match &*rep.state.lock() {
            State::Home(tasks) => {
                // Writes waiting for their publication are told they were not kept.
                tasks.outbox.published.send_modify(|p| p.fenced = true);
                tasks.outbox.bytes.load(Ordering::Acquire)
            }
            _ => return,
        };
        let Ok((record, _)) = self.record(&rep.key).await else { return };
        if record.home == self.node {
            return;
        }
        tracing::warn!(
            node = %self.node, key = %rep.key, new_home = %record.home, unpublished_bytes = dropped,
            "stepping down: another node took the region over"
        );
        self.become_replica(rep, &record.home, record.snapshot_seq);
    }
}

/// Puts a region's messages back together into whole changes (a large change comes in chunks of one
/// version, the last marked).
#[derive(Default)]
struct Assembler {
    pending: Option<(u64, Vec<Span>, u64)>,
}

impl Assembler {
    /// Takes the next message; returns the change it completes. A chunk of another version drops the
    /// unfinished one (its writer died or was fenced mid-change); chunks of one version past twice the
    /// region's size are dropped too (a stream this broker did not write).
    fn take(&mut self, change: ChangeMsg, size: u64) -> Option<(u64, Vec<Span>)> {
        let len: u64 = change.spans.iter().map(|s| s.bytes.len() as u64).sum();
        let (spans, total) = match self.pending.take() {
            Some((v, mut spans, total)) if v == change.version => {
                spans.extend(change.spans);
                (spans, total + len)
            }
            _ => (change.spans, len),
        };
        if change.last {
            return Some((change.version, spans));
        }
        if total <= size.saturating_mul(2).saturating_add(wire::MAX_CHUNK as u64) {
            self.pending = Some((change.version, spans, total));
        }
        None
    }

    fn is_idle(&self) -> bool {
        self.pending.is_none()
    }
}

/// A home's publisher lost the compare-and-set: another node appended to the region's subject.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("another node appended to the region's stream: this node is not its home")]
struct Fenced;

/// The home's watcher: copies the change's bytes (the writer still holds the lock, so they are the
/// change's own) into the outbox, in version order.
fn capture(region: &Weak<broker::region::Region>, outbox: &Outbox, limit: u64, c: &broker::region::Change) {
    // A write of no bytes still took a version: it goes out too (as an empty span), so replicas reach
    // the home's version and a drain is not left waiting for it.
    if outbox.overflow.load(Ordering::Acquire) {
        return;
    }
    let Some(region) = region.upgrade() else { return };
    let mut bytes = vec![0; usize::try_from(c.len).unwrap_or(0)];
    if region.memory().copy_out(c.offset, &mut bytes).is_err() {
        return;
    }
    if outbox.bytes.fetch_add(c.len, Ordering::AcqRel) + c.len > limit {
        outbox.overflow.store(true, Ordering::Release);
    }
    // A change of the whole region (a home's restamp) is a snapshot: a replica can start from it.
    let snapshot = c.offset == 0 && c.len == region.size();
    let msg =
        ChangeMsg { snapshot, last: true, version: c.version, spans: vec![Span { offset: c.offset, bytes }] };
    let _ = outbox.tx.send(msg);
}

/// A change as the messages that carry it: chunks of at most [`wire::MAX_CHUNK`] bytes, encoded.
fn encode_chunks(change: ChangeMsg) -> Vec<bytes::Bytes> {
    let parts = wire::chunks(change.snapshot, change.version, change.spans);
    parts.iter().map(|p| wire::encode_change(p).into()).collect()
}

/// A replica's way to its home: NATS requests on the region's write subject.
struct ToHome {
    inner: Weak<Inner>,
    rep: Weak<Replicated>,
    home: String,
    subject: String,
}

impl std::fmt::Debug for ToHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ToHome({})", self.home)
    }
}

impl Upstream for ToHome {
    fn propose(&self, proposal: Proposal) -> Result<Accepted, Refused> {
        let (Some(inner), Some(rep)) = (self.inner.upgrade(), self.rep.upgrade()) else {
            return Err(Refused::Unavailable("replication has stopped on this node".into()));
        };
        let timeout = inner.options.propose_timeout;
        let home = &self.home;
        if inner.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Refused::Unavailable(format!("home {home:?} is unreachable: NATS is away")));
        }
        // Half the wait: a home that takes it late still answers before the writer gives up.
        let expires = crate::now_ms() + u64::try_from(timeout.as_millis() / 2).unwrap_or(u64::MAX);
        let payload: bytes::Bytes = wire::encode_proposal(&proposal, expires).into();
        let limit = inner.client.server_info().max_payload;
        if payload.len() > limit {
            return Err(Refused::Unavailable(format!(
                "a write of {} bytes to a replica is larger than the cluster's message limit ({limit} bytes): write it in smaller pieces",
                payload.len()
            )));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (client, subject) = (inner.client.clone(), self.subject.clone());
        inner.rt.spawn(async move {
            let answer = tokio::time::timeout(timeout, client.request(subject, payload)).await;
            let _ = tx.send(answer);
        });
        let answer = match rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(Ok(msg))) => wire::decode_reply(&msg.payload)
                .map_err(|e| Refused::Unavailable(format!("home {home:?} answered: {e}")))?,
            Ok(Ok(Err(e))) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(Refused::Unavailable(format!(
                    "home {home:?} is down and no node has taken over yet"
                )));
            }
            Ok(Ok(Err(e))) => return Err(Refused::Unavailable(format!("home {home:?}: {e}"))),
            Ok(Err(_)) | Err(_) => {
                return Err(Refused::Unavailable(format!("home {home:?} did not answer in {timeout:?}")));
            }
        };
        // The version the answer names has come back through the stream before the write returns
        // (read-your-writes; a conflict's version, so the writer can refresh to it), unless that
        // takes longer than the wait: the caller sees the replica's own version then.
        let until_landed = |version: u64| {
            let mut landed = rep.landed.lock();
            let deadline = Instant::now() + timeout;
            while *landed < version {
                if rep.landed_cv.wait_until(&mut landed, deadline).timed_out() {
                    break;
                }
            }
        };
        match answer {
            Reply::Conflict(current) => {
                until_landed(current);
                Err(Refused::Conflict { current })
            }
            Reply::Refused(why) => Err(Refused::Unavailable(format!("home {home:?}: {why}"))),
            Reply::Accepted(a) => {
                until_landed(a.version);
                Ok(a)
            }
        }
    }

    fn home(&self) -> String {
        self.home.clone()
    }
}
