//! The control plane's domain: [`ControlPlane`], the one handle through which the API acts on the broker.
//!
//! Every public method takes the authenticated caller ([`Identity`]) and domain-typed arguments, and
//! answers domain types or an [`ApiError`]; nothing here knows gRPC or protobuf (the adapter,
//! `service.rs`, converts at the edge). A method first scopes the call: an admin-only call refuses a
//! tenant, and a call on a tenant's objects acts on the named tenant for the admin and on the caller's
//! own for a tenant token (which may not name another). Then it checks every field, in the order the
//! API documents, each error naming its field; runs the broker operation; and records the change in the
//! state store before answering. The plane also owns what outlives a call: the token hashes ([`Auth`],
//! shared with the authentication interceptor), the API's grants (re-applied when an instance restarts),
//! the restore at start-up, the compile slots, and the open watch streams and scenario runs that a
//! shutdown ends.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use super::auth::{self, Auth, Identity};
use super::status::{ApiError, ApiResult};
use super::store::{GrantRecord, InstanceRecord, RegionRecord, Store, TenantRecord};
use broker::mode::ConflictPolicy;
use broker::region::{Change, WatchId};
use broker::wasi::{DirGrant, InstanceLog, LogLine, WasiConfig};
use broker::{
    Backing, Broker, Error, GrantId, InstanceConfig, InstanceError, InstanceId, InstanceInfo, Mode,
    ModuleInfo, Quotas, RegionId, RegionInfo, RegionSpec, Rights, TenantId, TenantInfo, TrafficStats, Val,
};

/// The longest region read the API serves in one message.
pub const MAX_READ_BYTES: u64 = 16 << 20;

/// Compilations one tenant may run at once.
pub const COMPILES_PER_TENANT: usize = 1;

/// The longest call deadline a client may ask for.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Watch events buffered per stream before changes are merged.
const WATCH_QUEUE: usize = 256;

/// Progress messages of a scenario run buffered before the run waits for its client.
const SCENARIO_QUEUE: usize = 64;

/// A tenant's object as the API reports it: with the name of the tenant that owns it, since the API
/// names every object by tenant and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned<T> {
    /// The owner tenant's name.
    pub tenant: String,
    /// The object (or the list of them).
    pub value: T,
}

/// A region named by a request: its tenant (empty for a tenant token's own) and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRef<'a> {
    /// The owner tenant; a tenant token may leave it empty or name itself.
    pub tenant: &'a str,
    /// The region's name within its tenant.
    pub name: &'a str,
}

/// A region to create. The wire-level choices (mode, policy, backing) are already domain values; the
/// rest is checked by [`ControlPlane::create_region`], in this order: size, name, member rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRegion {
    /// The region's name within its tenant.
    pub name: String,
    /// Size in bytes, at least 1.
    pub size: u64,
    /// How apps reach it.
    pub mode: Mode,
    /// How a mirror commit resolves conflicting writes.
    pub policy: ConflictPolicy,
    /// Whether its bytes live in a file under the state dir (and survive a restart).
    pub persistent: bool,
    /// Rights bits every app of the tenant opens it with by name; unknown bits are refused.
    pub member_rights: u32,
    /// Replicated across the cluster, with this node as its home (needs [`ControlPlane::set_cluster`]).
    pub replicated: bool,
}

/// An instance to start, with the limits the caller asks for (`None`: the broker's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    /// The module it runs.
    pub module: String,
    /// The instance's name within its tenant.
    pub name: String,
    /// Each call's deadline, at most an hour (and the tenant's `max_call_timeout_ms`).
    pub call_timeout: Option<Duration>,
    /// The cap on its linear memory, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// A WASI app's arguments.
    pub args: Vec<String>,
    /// A WASI app's environment, as `NAME=value`.
    pub env: Vec<String>,
    /// A WASI app's log ring in bytes.
    pub log_bytes: Option<u64>,
    /// Directories a WASI app may use.
    pub dirs: Vec<DirGrant>,
}

/// A grant to make on a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    /// The receiving instance: `name` in the region's tenant, or `tenant/name` in another.
    pub instance: String,
    /// Rights bits; unknown bits are refused.
    pub rights: u32,
    /// Start of the granted range.
    pub offset: u64,
    /// Length of the range, or to the end of the region.
    pub len: Option<u64>,
}

/// Bytes read from a region, and the region's version they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionBytes {
    /// The bytes.
    pub data: Vec<u8>,
    /// The version the read saw.
    pub version: u64,
}

/// A tenant's figures: itself, and each region's and instance's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStats {
    /// The tenant, its quotas and usage.
    pub tenant: TenantInfo,
    /// Its regions.
    pub regions: Vec<RegionStats>,
    /// Its instances.
    pub instances: Vec<InstanceStats>,
}

/// One region's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStats {
    /// The region's name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// Bytes and commits through it, if the region was still there to ask.
    pub traffic: Option<TrafficStats>,
}

/// One instance's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    /// The instance's name.
    pub name: String,
    /// Calls made to it.
    pub calls: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Capability handles it holds.
    pub handles: u64,
    /// Bytes and host calls through it, if the instance was still there to ask.
    pub traffic: Option<TrafficStats>,
    /// Shared-mode windows mapped into it.
    pub windows: u64,
}

/// A change to a watched region, as a watch stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEvent {
    /// The region's tenant.
    pub tenant: String,
    /// The region's name.
    pub region: String,
    /// The region's version after the change.
    pub version: u64,
    /// Start of the changed bytes.
    pub offset: u64,
    /// Number of changed bytes.
    pub len: u64,
    /// Changes dropped before this one because the client read too slowly.
    pub missed: u64,
}

/// A scenario to run: exactly one of `builtin` and `toml`, checked by [`ControlPlane::run_scenario`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScenarioRequest {
    /// The name of a built-in scenario, or empty.
    pub builtin: String,
    /// A scenario file's text, or empty; its modules must name guest apps, not paths.
    pub toml: String,
    /// The modes to run it under (all of the file's if empty).
    pub modes: Vec<String>,
    /// How much to scale its work by, in (0, 1000]; 0 means 1.
    pub scale: f64,
}

/// One message of a scenario run: progress, or (last) the report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScenarioProgress {
    /// Steps done.
    pub done: u64,
    /// Steps in all.
    pub total: u64,
    /// What is happening.
    pub message: String,
    /// The report, in the last message of a run that finished.
    pub report: Option<ScenarioReport>,
}

/// The report of a finished scenario run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioReport {
    /// The report as JSON.
    pub json: String,
    /// Whether every check passed.
    pub ok: bool,
    /// The report as a text table.
    pub text: String,
}

/// A scenario run's messages, ending with the report or the error that stopped the run.
pub type ScenarioRun = ReceiverStream<ApiResult<ScenarioProgress>>;

/// A grant made through the API: the broker's grant and the request it came from, kept in memory
/// (and mirrored in the store, if any) so a restarted instance gets its grants back.
struct ApiGrant {
    grant: GrantId,
    region: RegionId,
    record: GrantRecord,
}

/// The control plane's state: the broker, tokens, the state store and the API's grant ids.
pub struct ControlPlane {
    broker: Arc<Broker>,
    /// Shared with the authentication interceptor, which identifies every caller through it.
    auth: Arc<Auth>,
    store: Option<Store>,
    grants: Mutex<HashMap<u64, ApiGrant>>,
    /// Held across every change to the API's grants that touches the broker and the record in turn
    /// (grant, revoke, the re-grant after a restart, member rights), so a revoke is never undone by a
    /// restart re-applying a grant it read just before, and the store agrees with what is live.
    grant_changes: Mutex<()>,
    next_grant: AtomicU64,
    /// Stored grants that could not be restored although their region and instance are still stored
    /// (a module this daemon refused, say), kept for a start that brings them back. Creating a region
    /// or an instance under one's name deletes it: it was never granted to the new object.
    kept_grants: Mutex<Vec<(u64, GrantRecord)>>,
    watches: Mutex<WatchRegistry>,
    /// Compilations the daemon runs at once (on the blocking pool, never on the async runtime).
    compiles: Arc<tokio::sync::Semaphore>,
    /// Per tenant, compilations at once ([`COMPILES_PER_TENANT`]): one tenant's uploads queue behind
    /// each other, not in front of everyone else's.
    tenant_compiles: Mutex<HashMap<TenantId, Arc<tokio::sync::Semaphore>>>,
    /// The daemon's cluster, if it joined one (`broker serve --cluster`).
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
}

/// Where a tenant lives in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The node's name.
    pub node: String,
    /// Its control API's address (`host:port`).
    pub address: String,
}

/// What the plane needs of the cluster its daemon joined; implemented over `broker-cluster` by the
/// daemon (`cli/src/cluster.rs`), so the plane's code knows nothing of NATS.
pub trait Cluster: Send + Sync {
    /// Makes a region just created on this node a replicated one with this node as its home. Blocks
    /// until the cluster has it (or refused it).
    ///
    /// # Errors
    /// Why it could not (NATS unreachable, the name replicated from another node).
    fn share(&self, tenant: &str, region: &str) -> Result<(), String>;

    /// Another live node that holds `tenant`, if one does.
    fn locate_tenant(&self, tenant: &str) -> Option<NodeAddress>;

    /// Stops replicating a region about to be destroyed on this node (a no-op for one that is not
    /// replicated); at its home, the cluster forgets it, so no node follows it any more.
    ///
    /// # Errors
    /// Why the cluster could not be told (the region is then not destroyed).
    fn forget(&self, tenant: &str, region: &str) -> Result<(), String>;
}

/// Rights bits from a request field; unknown bits are refused, naming the field.
pub(crate) fn rights_field(field: &'static str, bits: u32) -> ApiResult<Rights> {
    Rights::from_bits(bits).ok_or(ApiError::InvalidField { field, reason: format!("unknown bits {bits:#x}") })
}

/// Compilations the daemon runs at once: all but one core, so compiling never takes the whole machine.
fn compile_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Runs blocking broker work (guest code, compiling, the disk) on the blocking pool, off the async
/// runtime.
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))?
}

/// The open watch streams, so a shutdown can end them: a stream never ends by itself, and a graceful
/// drain waits for every open stream.
#[derive(Default)]
struct WatchRegistry {
    open: HashMap<WatchId, RegionId>,
    closed: bool,
    /// Set at shutdown: ends the log streams that follow an instance's output.
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    /// Scenario runs streaming to clients, by a run number; shutdown cancels them.
    scenarios: HashMap<u64, broker_scenario::Cancel>,
    next_scenario: u64,
}

fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// The store key of a tenant's object.
fn store_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// Checks a name field of a request against the naming rules: empty is a missing field, anything else
/// the rules refuse an invalid one, and either error names the field.
fn name_field(field: &'static str, value: &str) -> ApiResult<()> {
    match broker::name::Name::new(value) {
        Ok(_) => Ok(()),
        Err(broker::name::NameError::Empty) => Err(ApiError::MissingField(field)),
        Err(e) => Err(ApiError::InvalidField { field, reason: e.to_string() }),
    }
}

/// Quotas a request sets: `cpu_shares` must be 1 to [`Quotas::MAX_CPU_SHARES`] (the scheduler divides
/// by it); the field is named as the request nests it.
fn quotas_field(quotas: Quotas) -> ApiResult<Quotas> {
    Quotas::check_cpu_shares(quotas.cpu_shares)
        .map_err(|e| ApiError::InvalidField { field: "quotas.cpu_shares", reason: e.to_string() })?;
    Ok(quotas)
}

/// Refuses a tenant the calls that need the admin token.
fn admin(who: &Identity) -> ApiResult<()> {
    match who {
        Identity::Admin => Ok(()),
        Identity::Tenant(_) => Err(ApiError::PermissionDenied("this call needs the admin token".into())),
    }
}

impl ControlPlane {
    /// A control plane over `broker`, with `admin_token`; with a state dir, everything persisted there is
    /// restored into the broker first (tenants, tokens, modules, regions, instances, grants).
    ///
    /// # Errors
    /// [`ApiError::Store`] if the state store cannot be opened or read.
    pub fn open(
        broker: Arc<Broker>,
        admin_token: &str,
        state_dir: Option<std::path::PathBuf>,
    ) -> ApiResult<ControlPlane> {
        let store = state_dir.as_deref().map(Store::open).transpose()?;
        let cp = ControlPlane {
            broker,
            auth: Arc::new(Auth::new(auth::hash(admin_token))),
            store,
            grants: Mutex::new(HashMap::new()),
            grant_changes: Mutex::new(()),
            next_grant: AtomicU64::new(1),
            kept_grants: Mutex::new(Vec::new()),
            watches: Mutex::new(WatchRegistry::default()),
            compiles: Arc::new(tokio::sync::Semaphore::new(compile_slots())),
            tenant_compiles: Mutex::new(HashMap::new()),
            cluster: std::sync::OnceLock::new(),
        };
        cp.restore()?;
        Ok(cp)
    }

    /// The broker this control plane drives.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The token hashes, for the authentication interceptor (which must see tokens change at run time).
    pub(crate) fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    fn restore(&self) -> ApiResult<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let tenants = store.tenants()?;
        // Everything stored is restored whatever the quotas say now: an operator may have lowered a
        // quota below what the tenant already holds, which blocks new allocations but must never drop
        // or hide what is there. So while restoring, the limits on stored things (regions, modules,
        // instances, grants, their sizes and call deadlines) are lifted, and memory too while regions
        // come back (each region's page-version table is charged to it). The limits on what guest code
        // takes as it runs (memory, windows, trampolines, watches) are not lifted for instances: start
        // functions run during the restore, and lifting memory would let a tenant take more than its
        // quota at every daemon start. An instance that cannot start within them comes back stopped
        // (listed, restartable), not hidden. The tenant's own quotas apply once everything is back,
        // blocking only new allocations.
        let restoring = |t: &TenantRecord| Quotas {
            region_bytes: u64::MAX,
            regions: u64::MAX,
            instances: u64::MAX,
            handles: u64::MAX,
            modules: u64::MAX,
            module_bytes: u64::MAX,
            compiled_bytes: u64::MAX,
            max_call_timeout_ms: u64::MAX,
            log_bytes: u64::MAX,
            ..t.quotas
        };
        for (name, t) in &tenants {
            self.broker.create_tenant(name, Quotas { memory_bytes: u64::MAX, ..restoring(t) })?;
            self.auth.set_tenant(name, t.tokens.iter().filter_map(|h| auth::from_hex(h)).collect());
        }
        for (key, wasm) in store.modules()? {
            let Some((t, m)) = split(&key) else { continue };
            if let Some(tid) = self.broker.tenant_id(t) {
                if let Err(e) = self.broker.load_module(tid, m, &wasm) {
                    tracing::warn!(module = %key, error = %e, "could not restore module");
                }
            }
        }
        // What the store holds, restored or not: a grant is dropped only when what it names is gone
        // from the store, never because something it names could not come back this time (a module
        // refused by this daemon's configuration, say), which a later start may bring back.
        let mut stored = HashSet::new();
        for (key, r) in store.regions()? {
            stored.insert(("region", key.clone()));
            let Some((t, n)) = split(&key) else { continue };
            let Some(tid) = self.broker.tenant_id(t) else { continue };
            let (Ok(mode), Ok(policy)) = (r.mode.parse(), r.policy.parse()) else { continue };
            // Unknown bits (a record from a newer version) keep the ones this version knows.
            let members = Rights::from_bits(r.member_rights & Rights::ALL.bits()).unwrap_or(Rights::NONE);
            let mut spec = RegionSpec::new(n, r.size, mode).with_policy(policy).with_members(members);
            if r.persistent {
                spec = spec.persistent(store.region_path(t, n)?);
            }
            if let Err(e) = self.broker.create_region(tid, spec) {
                tracing::warn!(region = %key, error = %e, "could not restore region");
            }
        }
        for (name, t) in &tenants {
            if let Some(tid) = self.broker.tenant_id(name) {
                self.broker.set_quotas(tid, restoring(t))?;
            }
        }
        for (key, r) in store.instances()? {
            stored.insert(("instance", key.clone()));
            let Some((t, n)) = split(&key) else { continue };
            let Some(tid) = self.broker.tenant_id(t) else { continue };
            let config = InstanceConfig {
                call_timeout: Duration::from_millis(r.call_timeout_ms),
                max_memory_bytes: r.max_memory_bytes,
                wasi: WasiConfig { args: r.args, env: r.env, log_bytes: r.log_bytes, dirs: r.dirs },
            };
            // A stopped instance comes back stopped: registered (its name taken, its grants kept for
            // when it restarts), not run.
            let restored = if r.stopped {
                self.broker.create_stopped_instance(tid, &r.module, n, config.clone())
            } else {
                self.broker.start_instance(tid, &r.module, n, config.clone()).or_else(|e| {
                    // It could not run (its tenant's memory quota was lowered, say): it comes back
                    // stopped, so it is listed and restartable rather than hidden.
                    tracing::warn!(instance = %key, error = %e, "could not start a restored instance: stopped");
                    self.broker.create_stopped_instance(tid, &r.module, n, config)
                })
            };
            if let Err(e) = restored {
                tracing::warn!(instance = %key, error = %e, "could not restore instance");
            }
        }
        let grants = store.grants()?;
        let max_id = grants.iter().map(|(id, _)| *id).max().unwrap_or(0);
        self.next_grant.store(max_id + 1, Ordering::Relaxed);
        // A grant whose region, instance or tenant is gone (a region an app created is not stored, so
        // it does not survive a restart) is dropped from the store: kept, it would name whatever is
        // later created under that name, which was never granted, and no revoke could reach it. One
        // whose region and instance are still stored but could not be restored is kept for the start
        // that brings them back; until then nothing can be created under their names (the store holds
        // them), so it names nothing else.
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        for (id, g) in grants {
            if let Err(e) = self.apply_grant(id, &g) {
                let region = ("region", format!("{}/{}", g.region_tenant, g.region));
                let instance = ("instance", format!("{}/{}", g.instance_tenant, g.instance));
                let known = |t: &str| tenants.iter().any(|(n, _)| n == t);
                let tenants = known(&g.region_tenant) && known(&g.instance_tenant);
                if tenants && stored.contains(&region) && stored.contains(&instance) {
                    tracing::warn!(grant = id, error = %e, "could not restore grant: kept for a later start");
                    kept.push((id, g));
                } else {
                    tracing::warn!(grant = id, error = %e, "could not restore grant: dropped");
                    dropped.push(id);
                }
            }
        }
        store.delete_grants(&dropped)?;
        *self.kept_grants.lock() = kept;
        for (name, t) in &tenants {
            if let Some(tid) = self.broker.tenant_id(name) {
                self.broker.set_quotas(tid, t.quotas)?;
            }
        }
        Ok(())
    }

    /// Deletes the kept grants (see `kept_grants`) that `names` a new object's name: the record about to
    /// be written replaces the one they were kept for.
    fn forget_kept_grants(&self, names: impl Fn(&GrantRecord) -> bool) -> ApiResult<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let mut kept = self.kept_grants.lock();
        let gone: Vec<u64> = kept.iter().filter(|(_, g)| names(g)).map(|(id, _)| *id).collect();
        if !gone.is_empty() {
            store.delete_grants(&gone)?;
            kept.retain(|(id, _)| !gone.contains(id));
        }
        Ok(())
    }

    fn apply_grant(&self, id: u64, g: &GrantRecord) -> ApiResult<()> {
        let rt = self.tenant_id(&g.region_tenant)?;
        let region = self.region_id(rt, "region.name", &g.region)?;
        name_field("instance", &g.instance)?;
        let it = self.tenant_id(&g.instance_tenant)?;
        let instance = self.instance_id(it, "instance", &g.instance)?;
        let rights = rights_field("rights", g.rights)?;
        let grant = self.broker.grant(region, instance, rights, g.offset, g.len)?;
        self.grants.lock().insert(id, ApiGrant { grant, region, record: g.clone() });
        Ok(())
    }

    fn tenant_id(&self, name: &str) -> ApiResult<TenantId> {
        self.broker.tenant_id(name).ok_or_else(|| Error::TenantNotFound(name.to_owned()).into())
    }

    /// A tenant this node lacks: another node's address if the cluster places it there (the answer to
    /// a call that reached the wrong node), else not found.
    fn not_here(&self, tenant: &str) -> ApiError {
        match self.cluster.get().and_then(|c| c.locate_tenant(tenant)) {
            Some(NodeAddress { node, address }) => {
                ApiError::WrongNode { tenant: tenant.to_owned(), node, address }
            }
            None => Error::TenantNotFound(tenant.to_owned()).into(),
        }
    }

    /// Joins the plane to its daemon's cluster: replicated regions and answers for other nodes'
    /// tenants. Set once, at start (a second call is ignored).
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The tenant a request acts on: the named one for the admin, the caller's own for a tenant.
    fn scope(&self, who: &Identity, tenant: &str) -> ApiResult<(TenantId, String)> {
        let name = match who {
            Identity::Admin => {
                name_field("tenant", tenant)?;
                tenant
            }
            Identity::Tenant(own) if tenant.is_empty() || tenant == own => own.as_str(),
            Identity::Tenant(_) => {
                return Err(ApiError::PermissionDenied(
                    "a tenant token may only act on its own tenant".into(),
                ));
            }
        };
        // Only the tenant a call acts on is looked up in the cluster (and only the admin names one
        // this node may lack): a tenant token learns nothing of where other tenants live.
        let id = self.broker.tenant_id(name).ok_or_else(|| self.not_here(name))?;
        Ok((id, name.to_owned()))
    }

    /// A tenant named by an admin-only request's `tenant` field.
    fn named_tenant(&self, name: &str) -> ApiResult<TenantId> {
        name_field("tenant", name)?;
        self.tenant_id(name)
    }

    /// The region `name` (from request field `field`) of a tenant.
    fn region_id(&self, tenant: TenantId, field: &'static str, name: &str) -> ApiResult<RegionId> {
        name_field(field, name)?;
        self.broker.region_id(tenant, name).ok_or_else(|| Error::RegionNotFound(name.to_owned()).into())
    }

    /// The instance `name` (from request field `field`) of a tenant.
    fn instance_id(&self, tenant: TenantId, field: &'static str, name: &str) -> ApiResult<InstanceId> {
        name_field(field, name)?;
        self.broker.instance_id(tenant, name).ok_or_else(|| Error::InstanceNotFound(name.to_owned()).into())
    }

    /// The region a request names, scoped to the caller; `field` is how the request names its name
    /// (`name` when the request is the reference, `region.name` when it nests one).
    fn region(
        &self,
        who: &Identity,
        field: &'static str,
        r: RegionRef<'_>,
    ) -> ApiResult<(TenantId, String, RegionId)> {
        let (tid, tname) = self.scope(who, r.tenant)?;
        let id = self.region_id(tid, field, r.name)?;
        Ok((tid, tname, id))
    }

    fn save_tenant(&self, name: &str) -> ApiResult<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let tid = self.tenant_id(name)?;
        let quotas = self.broker.tenant_info(tid)?.quotas;
        let tokens = self.auth.tenant_hashes(name).iter().map(auth::to_hex).collect();
        Ok(store.put_tenant(name, &TenantRecord { quotas, tokens })?)
    }

    fn region_info(&self, tenant: &str, id: RegionId) -> ApiResult<Owned<RegionInfo>> {
        Ok(Owned { tenant: tenant.to_owned(), value: self.broker.region_info(id)? })
    }

    fn instance_info(&self, tenant: &str, id: InstanceId) -> ApiResult<Owned<InstanceInfo>> {
        Ok(Owned { tenant: tenant.to_owned(), value: self.broker.instance_info(id)? })
    }

    fn drop_grants_where(&self, pred: impl Fn(&ApiGrant) -> bool) -> ApiResult<()> {
        let ids: Vec<u64> = {
            let mut grants = self.grants.lock();
            let ids: Vec<u64> = grants.iter().filter(|(_, g)| pred(g)).map(|(id, _)| *id).collect();
            for id in &ids {
                grants.remove(id);
            }
            ids
        };
        match &self.store {
            Some(store) if !ids.is_empty() => Ok(store.delete_grants(&ids)?),
            _ => Ok(()),
        }
    }

    /// The API grants to one instance, from memory: the store only mirrors them, and a daemon without
    /// a state dir must give a restarted instance its grants back all the same.
    fn grants_to(&self, tenant: &str, instance: &str) -> Vec<(u64, GrantRecord)> {
        self.grants
            .lock()
            .iter()
            .filter(|(_, g)| g.record.instance_tenant == tenant && g.record.instance == instance)
            .map(|(id, g)| (*id, g.record.clone()))
            .collect()
    }

    fn forget_grants_to(&self, tenant: &str, instance: &str) -> ApiResult<()> {
        self.drop_grants_where(|g| g.record.instance_tenant == tenant && g.record.instance == instance)
    }

    fn reapply_grants_to(&self, tenant: &str, instance: &str) -> ApiResult<()> {
        let _changing = self.grant_changes.lock();
        for (id, g) in self.grants_to(tenant, instance) {
            self.apply_grant(id, &g)?;
        }
        Ok(())
    }

    /// Ends every open watch stream and scenario run and refuses new ones: called when the daemon starts
    /// shutting down, because a stream never ends by itself and a graceful drain waits for every open
    /// stream.
    pub fn end_watches(&self) {
        let open = {
            let mut w = self.watches.lock();
            w.closed = true;
            if let Some(shutdown) = &w.shutdown {
                shutdown.send_replace(true);
            }
            for cancel in w.scenarios.values() {
                cancel.cancel();
            }
            std::mem::take(&mut w.open)
        };
        // Removing the watcher drops its sender, so the stream yields its last events and ends.
        for (watch, region) in open {
            self.broker.unwatch_region(region, watch);
        }
    }
}

/// Tenants and tokens: the admin's calls, and the tenant list every caller may read its part of.
impl ControlPlane {
    /// Creates a tenant with `quotas` (the defaults if `None`), with no tokens yet.
    ///
    /// # Errors
    /// PermissionDenied for a tenant; InvalidArgument naming `name` or `quotas.cpu_shares`; the broker's
    /// refusal (the tenant exists); a store failure.
    pub fn create_tenant(&self, who: &Identity, name: &str, quotas: Option<Quotas>) -> ApiResult<TenantInfo> {
        admin(who)?;
        name_field("name", name)?;
        let quotas = quotas.map_or(Ok(Quotas::default()), quotas_field)?;
        let tid = self.broker.create_tenant(name, quotas)?;
        self.auth.set_tenant(name, Vec::new());
        self.save_tenant(name)?;
        tracing::info!(tenant = %name, "tenant created");
        Ok(self.broker.tenant_info(tid)?)
    }

    /// Replaces a tenant's quotas (required: `None` is the missing field `quotas`).
    ///
    /// # Errors
    /// PermissionDenied for a tenant; InvalidArgument naming `quotas`, `tenant` or `quotas.cpu_shares`;
    /// NotFound for an unknown tenant; a store failure.
    pub fn set_quotas(&self, who: &Identity, tenant: &str, quotas: Option<Quotas>) -> ApiResult<TenantInfo> {
        admin(who)?;
        let quotas = quotas.ok_or(ApiError::MissingField("quotas"))?;
        let tid = self.named_tenant(tenant)?;
        self.broker.set_quotas(tid, quotas_field(quotas)?)?;
        self.save_tenant(tenant)?;
        Ok(self.broker.tenant_info(tid)?)
    }

    /// Every tenant for the admin; a tenant's own entry alone for a tenant.
    pub fn list_tenants(&self, who: &Identity) -> Vec<TenantInfo> {
        self.broker
            .tenants()
            .into_iter()
            .filter(|t| match who {
                Identity::Admin => true,
                Identity::Tenant(own) => &t.name == own,
            })
            .collect()
    }

    /// Issues a new token for a tenant (which replaces all its tokens with `rotate`) and returns it: the
    /// only time the token itself is seen, since the broker keeps its hash alone.
    ///
    /// # Errors
    /// PermissionDenied for a tenant; InvalidArgument naming `tenant`; NotFound for an unknown tenant;
    /// Internal without randomness; a store failure.
    pub fn issue_token(&self, who: &Identity, tenant: &str, rotate: bool) -> ApiResult<String> {
        admin(who)?;
        self.named_tenant(tenant)?;
        let token = auth::new_token()?;
        let mut hashes = if rotate { Vec::new() } else { self.auth.tenant_hashes(tenant) };
        hashes.push(auth::hash(&token));
        self.auth.set_tenant(tenant, hashes);
        self.save_tenant(tenant)?;
        tracing::info!(tenant = %tenant, rotate, "token issued");
        Ok(token)
    }
}

/// Modules and instances.
impl ControlPlane {
    /// Compiles and stores a module. Compiling is CPU-bound work of up to seconds: the call waits on the
    /// blocking pool, at most [`COMPILES_PER_TENANT`] per tenant and all cores but one in all, so uploads
    /// never hold the async runtime (every other tenant's calls); the compile itself runs on a worker as
    /// the tenant's turn.
    ///
    /// # Panics
    /// If polled outside a Tokio runtime (the compile is spawned on its blocking pool).
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name` or `wasm` (empty, or not a module the broker
    /// accepts); the broker's refusal (exists, quotas); a store failure.
    pub async fn upload_module(
        self: &Arc<Self>,
        who: &Identity,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
    ) -> ApiResult<Owned<ModuleInfo>> {
        let (tid, tname) = self.scope(who, tenant)?;
        name_field("name", name)?;
        if wasm.is_empty() {
            return Err(ApiError::MissingField("wasm"));
        }
        let mine = Arc::clone(
            self.tenant_compiles
                .lock()
                .entry(tid)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(COMPILES_PER_TENANT))),
        );
        // The semaphores are never closed; were one closed, the daemon would be going away.
        let own = mine.acquire_owned().await.map_err(|_| ApiError::ShuttingDown)?;
        let slot = Arc::clone(&self.compiles).acquire_owned().await.map_err(|_| ApiError::ShuttingDown)?;
        let plane = Arc::clone(self);
        let name = name.to_owned();
        on_blocking_pool(move || {
            let _permits = (own, slot);
            plane.broker.load_module(tid, &name, &wasm).map_err(|e| match e {
                Error::InvalidModule { reason, .. } => ApiError::InvalidField { field: "wasm", reason },
                e => e.into(),
            })?;
            if let Some(store) = &plane.store {
                store.put_module(&store_key(&tname, &name), &wasm)?;
            }
            let info = plane.broker.modules(tid).into_iter().find(|m| m.name == name);
            let value = info.unwrap_or(ModuleInfo { name, size: 0, exports: Vec::new() });
            Ok(Owned { tenant: tname, value })
        })
        .await
    }

    /// A tenant's modules.
    ///
    /// # Errors
    /// The scope's refusals.
    pub fn list_modules(&self, who: &Identity, tenant: &str) -> ApiResult<Owned<Vec<ModuleInfo>>> {
        let (tid, tname) = self.scope(who, tenant)?;
        Ok(Owned { tenant: tname, value: self.broker.modules(tid) })
    }

    /// Unloads and forgets a module.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; the broker's refusal (not found, in use);
    /// a store failure.
    pub fn delete_module(&self, who: &Identity, tenant: &str, name: &str) -> ApiResult<()> {
        let (tid, tname) = self.scope(who, tenant)?;
        name_field("name", name)?;
        self.broker.unload_module(tid, name)?;
        if let Some(store) = &self.store {
            store.delete_module(&store_key(&tname, name))?;
        }
        Ok(())
    }

    /// Starts an instance (its start function runs: call it off the async runtime) and records it.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `module`, `name` or `config.call_timeout_ms` (above
    /// an hour); the broker's refusal (no module, exists, quotas, the start function trapped); a store
    /// failure.
    pub fn start_instance(
        &self,
        who: &Identity,
        tenant: &str,
        new: &NewInstance,
    ) -> ApiResult<Owned<InstanceInfo>> {
        let (tid, tname) = self.scope(who, tenant)?;
        name_field("module", &new.module)?;
        name_field("name", &new.name)?;
        let mut config = InstanceConfig::default();
        if let Some(t) = new.call_timeout {
            if t > MAX_CALL_TIMEOUT {
                return Err(ApiError::InvalidField {
                    field: "config.call_timeout_ms",
                    reason: "at most one hour".into(),
                });
            }
            config.call_timeout = t;
        }
        if let Some(bytes) = new.max_memory_bytes {
            config.max_memory_bytes = bytes;
        }
        if !new.dirs.is_empty() && !matches!(who, Identity::Admin) {
            return Err(ApiError::PermissionDenied(
                "config.dirs: only the operator (the admin token) grants a WASI app directories".into(),
            ));
        }
        config.wasi = wasi_config(new)?;
        let id = self.broker.start_instance(tid, &new.module, &new.name, config.clone())?;
        if let Some(store) = &self.store {
            let rec = InstanceRecord {
                module: new.module.clone(),
                call_timeout_ms: u64::try_from(config.call_timeout.as_millis()).unwrap_or(u64::MAX),
                max_memory_bytes: config.max_memory_bytes,
                stopped: false,
                args: config.wasi.args.clone(),
                env: config.wasi.env.clone(),
                log_bytes: config.wasi.log_bytes,
                dirs: config.wasi.dirs.clone(),
            };
            self.forget_kept_grants(|g| g.instance_tenant == tname && g.instance == new.name)?;
            store.put_instance(&store_key(&tname, &new.name), &rec)?;
        }
        self.instance_info(&tname, id)
    }

    /// Calls an export of an instance (guest code: call it off the async runtime). `args` may still be
    /// in their wire form: they are converted only after the instance and export are checked, so a
    /// request's errors come in the order its fields are.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `instance`, `export` or the arguments; the broker's
    /// refusal (not found, stopped, trapped, bad arguments).
    pub fn call_instance<A>(
        &self,
        who: &Identity,
        tenant: &str,
        instance: &str,
        export: &str,
        args: A,
    ) -> ApiResult<Vec<Val>>
    where
        A: TryInto<Vec<Val>>,
        A::Error: Into<ApiError>,
    {
        let (tid, tname) = self.scope(who, tenant)?;
        let id = self.instance_id(tid, "instance", instance)?;
        if export.is_empty() {
            return Err(ApiError::MissingField("export"));
        }
        let args = args.try_into().map_err(Into::into)?;
        let called = self.broker.call(id, export, &args);
        // A WASI app that exited stopped itself: recorded like a stop, so a daemon restart keeps it
        // stopped.
        if let (Err(Error::Instance(InstanceError::Exited { .. })), Some(store)) = (&called, &self.store) {
            store.set_instance_stopped(&store_key(&tname, instance), true)?;
        }
        Ok(called?)
    }

    /// Stops an instance and records it stopped; its API grants are kept for when it restarts. Stopped
    /// even when a window derived from its capabilities could not be revoked: recorded, then that
    /// failure reported.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; the broker's refusal; a store failure.
    pub fn stop_instance(&self, who: &Identity, tenant: &str, name: &str) -> ApiResult<()> {
        let (tid, tname) = self.scope(who, tenant)?;
        let id = self.instance_id(tid, "name", name)?;
        let stopped = self.broker.stop_instance(id);
        if let Err(e @ Error::InstanceNotFound(_)) = stopped {
            return Err(e.into());
        }
        if let Some(store) = &self.store {
            store.set_instance_stopped(&store_key(&tname, name), true)?;
        }
        Ok(stopped?)
    }

    /// Deletes an instance, its record and the API grants to it. Gone from the broker even when a
    /// window could not be revoked: forgotten, then that failure reported.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; the broker's refusal; a store failure.
    pub fn delete_instance(&self, who: &Identity, tenant: &str, name: &str) -> ApiResult<()> {
        let (tid, tname) = self.scope(who, tenant)?;
        let id = self.instance_id(tid, "name", name)?;
        let deleted = self.broker.delete_instance(id);
        if let Err(e @ Error::InstanceNotFound(_)) = deleted {
            return Err(e.into());
        }
        if let Some(store) = &self.store {
            store.delete_instance(&store_key(&tname, name))?;
        }
        self.forget_grants_to(&tname, name)?;
        deleted?;
        tracing::info!(tenant = %tname, instance = %name, "instance deleted");
        Ok(())
    }

    /// Restarts an instance (guest code: call it off the async runtime) and gives it its API grants
    /// back, since a restart drops every capability it held.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; the broker's refusal; a store failure.
    pub fn restart_instance(
        &self,
        who: &Identity,
        tenant: &str,
        name: &str,
    ) -> ApiResult<Owned<InstanceInfo>> {
        let (tid, tname) = self.scope(who, tenant)?;
        let id = self.instance_id(tid, "name", name)?;
        self.broker.restart_instance(id)?;
        self.reapply_grants_to(&tname, name)?;
        if let Some(store) = &self.store {
            store.set_instance_stopped(&store_key(&tname, name), false)?;
        }
        self.instance_info(&tname, id)
    }

    /// An instance's state and counters.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; NotFound.
    pub fn get_instance(&self, who: &Identity, tenant: &str, name: &str) -> ApiResult<Owned<InstanceInfo>> {
        let (tid, tname) = self.scope(who, tenant)?;
        let id = self.instance_id(tid, "name", name)?;
        self.instance_info(&tname, id)
    }

    /// A WASI app's output: the lines its log ring holds (the last `tail` of them if `tail > 0`),
    /// then, if `follow`, each line as it is written, until the reader goes, the instance is deleted
    /// or the daemon shuts down. Runs on the async runtime (it only reads the ring and waits).
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `instance.name`; NotFound; FailedPrecondition if
    /// the instance is not a WASI app; Unavailable once shutdown began.
    pub fn instance_logs(
        &self,
        who: &Identity,
        tenant: &str,
        name: &str,
        follow: bool,
        tail: u32,
    ) -> ApiResult<LogLines> {
        let (tid, _) = self.scope(who, tenant)?;
        let id = self.instance_id(tid, "instance.name", name)?;
        let log = self.broker.instance_log(id)?.ok_or_else(|| {
            ApiError::Precondition(format!("instance {name} is not a WASI app: it has no output to show"))
        })?;
        let shutdown = {
            let mut w = self.watches.lock();
            if w.closed {
                return Err(ApiError::ShuttingDown);
            }
            w.shutdown.get_or_insert_with(|| tokio::sync::watch::channel(false).0).subscribe()
        };
        // A stream costs a unit of the tenant's `watches` quota while it lasts, as a region watch does.
        let charge = self.broker.reserve(tid, broker::tenant::Resource::Watches, 1)?;
        let from = log.next_seq().saturating_sub(u64::from(tail));
        let (tx, lines) = mpsc::channel(LOG_QUEUE);
        tokio::spawn(stream_log(log, if tail == 0 { 0 } else { from }, follow, tx, shutdown, charge));
        Ok(LogLines { lines })
    }

    /// A tenant's instances.
    ///
    /// # Errors
    /// The scope's refusals.
    pub fn list_instances(&self, who: &Identity, tenant: &str) -> ApiResult<Owned<Vec<InstanceInfo>>> {
        let (tid, tname) = self.scope(who, tenant)?;
        Ok(Owned { tenant: tname, value: self.broker.instances(tid) })
    }
}

/// Regions, grants and watches.
impl ControlPlane {
    /// Creates a region and records it. `region` may still be in its wire form: it is converted only
    /// after the caller is scoped, so a caller learns nothing about its fields from a tenant it may not
    /// act on, and a request's errors come in the order its fields are.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming a field (`mode`, `policy`, `backing` from the
    /// conversion, then `size`, `name`, `member_rights`); FailedPrecondition for a persistent region
    /// without a state dir; the broker's refusal (exists, quotas); a store failure.
    pub fn create_region<R>(&self, who: &Identity, tenant: &str, region: R) -> ApiResult<Owned<RegionInfo>>
    where
        R: TryInto<NewRegion>,
        R::Error: Into<ApiError>,
    {
        let (tid, tname) = self.scope(who, tenant)?;
        let r: NewRegion = region.try_into().map_err(Into::into)?;
        if r.size == 0 {
            return Err(ApiError::InvalidField { field: "size", reason: "must be at least 1 byte".into() });
        }
        name_field("name", &r.name)?;
        let members = rights_field("member_rights", r.member_rights)?;
        let cluster = if r.replicated {
            let cluster = self.cluster.get().ok_or_else(|| {
                ApiError::Precondition("replicated regions need the daemon to run with --cluster".into())
            })?;
            if r.mode == Mode::Shared {
                return Err(ApiError::InvalidField {
                    field: "mode",
                    reason: "shared mode is node-local: a replicated region is in handle or mirror mode"
                        .into(),
                });
            }
            if r.persistent {
                return Err(ApiError::InvalidField {
                    field: "backing",
                    reason:
                        "a replicated region is kept by the cluster's stream; it cannot be persistent too"
                            .into(),
                });
            }
            Some(cluster)
        } else {
            None
        };
        let mut spec =
            RegionSpec::new(r.name.clone(), r.size, r.mode).with_policy(r.policy).with_members(members);
        if r.persistent {
            let store = self.store.as_ref().ok_or_else(|| {
                ApiError::Precondition("persistent regions need the daemon to run with --state-dir".into())
            })?;
            spec = spec.persistent(store.region_path(&tname, &r.name)?);
        }
        let id = self.broker.create_region(tid, spec)?;
        if let Some(cluster) = cluster {
            // Kept by the cluster, not the state store: a restarted node gets it back from the stream.
            if let Err(why) = cluster.share(&tname, &r.name) {
                let _ = self.broker.destroy_region(id);
                return Err(ApiError::Unavailable(format!("the cluster did not take the region: {why}")));
            }
            return self.region_info(&tname, id);
        }
        if let Some(store) = &self.store {
            let rec = RegionRecord {
                size: r.size,
                mode: r.mode.to_string(),
                policy: r.policy.to_string(),
                persistent: r.persistent,
                member_rights: members.bits(),
            };
            self.forget_kept_grants(|g| g.region_tenant == tname && g.region == r.name)?;
            store.put_region(&store_key(&tname, &r.name), &rec)?;
        }
        self.region_info(&tname, id)
    }

    /// Sets the rights every app of the region's tenant opens it with by name. Revoking the old
    /// membership may unmap windows: call it off the async runtime.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; NotFound; the broker's refusal; a store
    /// failure.
    pub fn set_member_rights(
        &self,
        who: &Identity,
        region: RegionRef<'_>,
        rights: Rights,
    ) -> ApiResult<Owned<RegionInfo>> {
        let (_, tname, id) = self.region(who, "name", region)?;
        let _changing = self.grant_changes.lock();
        self.broker.set_members(id, rights)?;
        if let Some(store) = &self.store {
            store.set_region_members(&store_key(&tname, region.name), rights.bits())?;
        }
        self.region_info(&tname, id)
    }

    /// A region's metadata.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; NotFound.
    pub fn get_region(&self, who: &Identity, region: RegionRef<'_>) -> ApiResult<Owned<RegionInfo>> {
        let (_, tname, id) = self.region(who, "name", region)?;
        self.region_info(&tname, id)
    }

    /// A tenant's regions.
    ///
    /// # Errors
    /// The scope's refusals; NotFound for a region destroyed while listing.
    pub fn list_regions(&self, who: &Identity, tenant: &str) -> ApiResult<Owned<Vec<RegionInfo>>> {
        let (tid, tname) = self.scope(who, tenant)?;
        let value = self
            .broker
            .regions(tid)
            .iter()
            .map(|r| self.broker.region_info(r.id))
            .collect::<Result<_, _>>()?;
        Ok(Owned { tenant: tname, value })
    }

    /// Reads `len` bytes at `offset` of a region (the request's `region`), at most [`MAX_READ_BYTES`].
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `region.name` or `len`, or for a range outside the
    /// region; NotFound.
    pub fn read_region(
        &self,
        who: &Identity,
        region: RegionRef<'_>,
        offset: u64,
        len: u64,
    ) -> ApiResult<RegionBytes> {
        let (_, _, id) = self.region(who, "region.name", region)?;
        if len > MAX_READ_BYTES {
            return Err(ApiError::InvalidField {
                field: "len",
                reason: format!("at most {MAX_READ_BYTES} bytes per read"),
            });
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let version = self.broker.read_region_versioned(id, offset, &mut data)?;
        Ok(RegionBytes { data, version })
    }

    /// Writes `data` at `offset` of a region (the request's `region`) and returns its new version.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `region.name`, or for a range outside the region;
    /// NotFound.
    pub fn write_region(
        &self,
        who: &Identity,
        region: RegionRef<'_>,
        offset: u64,
        data: &[u8],
    ) -> ApiResult<u64> {
        let (_, _, id) = self.region(who, "region.name", region)?;
        // Answered on the async runtime: apps' callbacks must not run on its thread.
        Ok(self.broker.write_region_queued(id, offset, data)?)
    }

    /// Grants an instance (of the region's tenant, or `tenant/name` of another) access to a range of a
    /// region (the request's `region`), records the grant and returns its id.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `region.name`, `instance` or `rights`, or for a
    /// range outside the region; NotFound for the region, the instance or its tenant; a store failure.
    pub fn grant(&self, who: &Identity, region: RegionRef<'_>, grant: &NewGrant) -> ApiResult<u64> {
        let (_, rtenant, _) = self.region(who, "region.name", region)?;
        let (itenant, iname) = match grant.instance.split_once('/') {
            Some((t, n)) => (t.to_owned(), n.to_owned()),
            None => (rtenant.clone(), grant.instance.clone()),
        };
        let rec = GrantRecord {
            region_tenant: rtenant,
            region: region.name.to_owned(),
            instance_tenant: itenant,
            instance: iname,
            rights: grant.rights,
            offset: grant.offset,
            len: grant.len,
        };
        let id = self.next_grant.fetch_add(1, Ordering::Relaxed);
        let _changing = self.grant_changes.lock();
        self.apply_grant(id, &rec)?;
        if let Some(store) = &self.store {
            store.put_grant(id, &rec)?;
        }
        Ok(id)
    }

    /// Revokes one grant on a region (the request's `region`), or every grant on it for id 0. A grant
    /// already gone (its instance restarted or stopped) is forgotten all the same; anything else (a
    /// window that could not be taken away) fails the revoke, never reporting success while the
    /// grantee may still have access.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `region.name`; NotFound for the region or a grant
    /// not on it; the broker's refusal; a store failure.
    pub fn revoke(&self, who: &Identity, region: RegionRef<'_>, grant_id: u64) -> ApiResult<()> {
        let (_, _, region) = self.region(who, "region.name", region)?;
        let _changing = self.grant_changes.lock();
        if grant_id == 0 {
            self.broker.revoke_all(region)?;
            return self.drop_grants_where(|g| g.region == region);
        }
        let grant = {
            let grants = self.grants.lock();
            match grants.get(&grant_id) {
                Some(g) if g.region == region => g.grant,
                _ => return Err(Error::GrantNotFound(grant_id).into()),
            }
        };
        match self.broker.revoke_grant(grant) {
            Ok(()) | Err(Error::GrantNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.drop_grants_where(|g| g.grant == grant)?;
        tracing::info!(grant = grant_id, "grant revoked");
        Ok(())
    }

    /// Destroys a region, the grants on it, its record and (if persistent) its files. Gone from the
    /// broker even when a window of it could not be revoked: forgotten, then that failure reported.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; NotFound; the broker's refusal; a store
    /// failure.
    pub fn destroy_region(&self, who: &Identity, region: RegionRef<'_>) -> ApiResult<()> {
        let (_, tname, id) = self.region(who, "name", region)?;
        let backing = self.broker.region_info(id)?.backing;
        if let Some(cluster) = self.cluster.get() {
            // A replicated region stops being replicated first (at its home, the cluster forgets it).
            cluster.forget(&tname, region.name).map_err(ApiError::Unavailable)?;
        }
        let destroyed = self.broker.destroy_region(id);
        if let Err(e @ Error::RegionNotFound(_)) = destroyed {
            return Err(e.into());
        }
        self.drop_grants_where(|g| g.region == id)?;
        if let Some(store) = &self.store {
            store.delete_region(&store_key(&tname, region.name))?;
        }
        if let Backing::Persistent(path) = backing {
            broker::region::remove_persistent_files(&path);
        }
        Ok(destroyed?)
    }

    /// Makes a region's bytes durable (the disk: call it off the async runtime); whether it is
    /// persistent.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; NotFound; the broker's refusal.
    pub fn flush_region(&self, who: &Identity, region: RegionRef<'_>) -> ApiResult<bool> {
        let (_, _, id) = self.region(who, "name", region)?;
        Ok(self.broker.flush_region(id)?)
    }

    /// Opens a stream of a region's changes. It costs a unit of the region tenant's `watches` quota, as
    /// a guest's watch does, until it is dropped; a slow reader loses events, counted in the next one;
    /// a shutdown ([`ControlPlane::end_watches`]) ends it.
    ///
    /// # Errors
    /// The scope's refusals; InvalidArgument naming `name`; NotFound; ResourceExhausted past the
    /// `watches` quota; Unavailable once shutdown began.
    pub fn watch_region(self: &Arc<Self>, who: &Identity, region: RegionRef<'_>) -> ApiResult<Watch> {
        let (tid, tname, id) = self.region(who, "name", region)?;
        // Registered under the lock that `end_watches` takes, so no stream opens after shutdown began.
        let mut watches = self.watches.lock();
        if watches.closed {
            return Err(ApiError::ShuttingDown);
        }
        let charge = self.broker.reserve(tid, broker::tenant::Resource::Watches, 1)?;
        let (tx, events) = mpsc::channel(WATCH_QUEUE);
        let missed = Arc::new(AtomicU64::new(0));
        let region_name = region.name.to_owned();
        let watch = self.broker.watch_region(
            id,
            Arc::new(move |c: &Change| {
                let event = RegionEvent {
                    tenant: tname.clone(),
                    region: region_name.clone(),
                    version: c.version,
                    offset: c.offset,
                    len: c.len,
                    missed: missed.swap(0, Ordering::Relaxed),
                };
                // Never block the writer: a slow client loses events, counted in the next one.
                if let Err(mpsc::error::TrySendError::Full(e)) = tx.try_send(event) {
                    missed.fetch_add(1 + e.missed, Ordering::Relaxed);
                }
            }),
        )?;
        watches.open.insert(watch, id);
        Ok(Watch { events, plane: Arc::clone(self), region: id, watch, _charge: charge })
    }

    /// A tenant's figures: its quotas and usage, and each region's and instance's traffic.
    ///
    /// # Errors
    /// The scope's refusals.
    pub fn stats(&self, who: &Identity, tenant: &str) -> ApiResult<TenantStats> {
        let (tid, _) = self.scope(who, tenant)?;
        let regions = self
            .broker
            .regions(tid)
            .into_iter()
            .map(|r| RegionStats {
                traffic: self.broker.region_traffic(r.id).ok(),
                name: r.name,
                version: r.version,
            })
            .collect();
        let instances = self
            .broker
            .instances(tid)
            .into_iter()
            .map(|i| InstanceStats {
                calls: i.status.calls,
                traps: i.status.traps,
                handles: self.broker.handle_count(i.id).map_or(0, |n| u64::try_from(n).unwrap_or(u64::MAX)),
                traffic: self.broker.instance_traffic(i.id).ok(),
                windows: u64::try_from(self.broker.windows_of(i.id).unwrap_or(0)).unwrap_or(u64::MAX),
                name: i.name,
            })
            .collect();
        Ok(TenantStats { tenant: self.broker.tenant_info(tid)?, regions, instances })
    }
}

/// Scenarios.
impl ControlPlane {
    /// Starts a scenario run on the blocking pool (each run builds brokers of its own) and returns its
    /// messages: progress, then the report or the error that stopped it. A reader that goes away
    /// cancels the run, and so does a shutdown.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (the run is spawned on its blocking pool).
    ///
    /// # Errors
    /// PermissionDenied for a tenant; InvalidArgument naming `builtin`, `toml`, `modes` or `scale`;
    /// Unavailable once shutdown began.
    pub fn run_scenario(
        self: &Arc<Self>,
        who: &Identity,
        request: &ScenarioRequest,
    ) -> ApiResult<ScenarioRun> {
        admin(who)?;
        let (scenario, opts) = scenario_request(request)?;
        // Registered under the lock `end_watches` takes, so shutdown cancels every run it did not refuse.
        let run_id = {
            let mut w = self.watches.lock();
            if w.closed {
                return Err(ApiError::ShuttingDown);
            }
            let run_id = w.next_scenario;
            w.next_scenario += 1;
            w.scenarios.insert(run_id, opts.cancel.clone());
            run_id
        };
        let (tx, rx) = mpsc::channel(SCENARIO_QUEUE);
        let plane = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let progress =
                StreamProgress { tx: tx.clone(), last: Mutex::new((0, 0)), cancel: opts.cancel.clone() };
            let last = match broker_scenario::run(&scenario, &opts, &progress) {
                Ok(report) => {
                    let (done, total) = *progress.last.lock();
                    serde_json::to_string(&report)
                        .map(|json| ScenarioProgress {
                            done,
                            total,
                            message: format!("scenario {} finished", report.scenario),
                            report: Some(ScenarioReport { json, ok: report.ok(), text: report.render() }),
                        })
                        .map_err(|e| ApiError::Internal(format!("encoding the report: {e}")))
                }
                Err(e) => Err(ApiError::Precondition(format!("the scenario could not run: {e}"))),
            };
            plane.watches.lock().scenarios.remove(&run_id);
            let _ = tx.blocking_send(last);
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// A stream of a region's changes that unregisters its watcher (and gives back its unit of the
/// `watches` quota) when dropped.
pub struct Watch {
    events: mpsc::Receiver<RegionEvent>,
    plane: Arc<ControlPlane>,
    region: RegionId,
    watch: WatchId,
    /// The stream's unit of the region tenant's `watches` quota, given back when it ends.
    _charge: broker::tenant::Reservation,
}

impl Stream for Watch {
    type Item = RegionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RegionEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.plane.watches.lock().open.remove(&self.watch);
        self.plane.broker.unwatch_region(self.region, self.watch);
    }
}

/// The WASI settings of an instance to start, checked.
fn wasi_config(new: &NewInstance) -> ApiResult<WasiConfig> {
    let mut env = Vec::with_capacity(new.env.len());
    for e in &new.env {
        let Some((k, v)) = e.split_once('=') else {
            return Err(ApiError::InvalidField {
                field: "config.env",
                reason: format!("{e:?} is not NAME=value"),
            });
        };
        env.push((k.to_owned(), v.to_owned()));
    }
    let config = WasiConfig {
        args: new.args.clone(),
        env,
        log_bytes: new.log_bytes.unwrap_or(broker::wasi::DEFAULT_LOG_BYTES),
        dirs: new.dirs.clone(),
    };
    config.check().map_err(|(field, reason)| {
        let field = match field {
            "log_bytes" => "config.log_bytes",
            "env" => "config.env",
            "dirs" => "config.dirs",
            _ => "config.args",
        };
        ApiError::InvalidField { field, reason }
    })?;
    Ok(config)
}

/// Lines a log stream sends ahead of a slow reader (at most 4 KiB each).
const LOG_QUEUE: usize = 16;

/// The lines of an instance's output, as [`ControlPlane::instance_logs`] streams them.
pub struct LogLines {
    lines: mpsc::Receiver<LogEntry>,
}

/// A line of an instance's output, and how many lines before it were lost to the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The line.
    pub line: LogLine,
    /// Lines before it the ring no longer held when the stream reached them.
    pub lost: u64,
}

impl Stream for LogLines {
    type Item = LogEntry;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LogEntry>> {
        self.lines.poll_recv(cx)
    }
}

/// Sends `log`'s lines from `seq` on into `tx`, then (if `follow`) each new one, until the reader
/// goes, the log goes (its instance was deleted) or `shutdown` is set; `_charge` is the stream's unit of
/// its tenant's `watches` quota, given back when it ends. A line the ring dropped before
/// it was sent is counted in the next line's `lost`.
async fn stream_log(
    log: Arc<InstanceLog>,
    seq: u64,
    follow: bool,
    tx: mpsc::Sender<LogEntry>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    _charge: broker::tenant::Reservation,
) {
    // Only a weak reference is held across awaits: a deleted instance's log goes (and its charge with
    // it) whatever its readers do, and the sender `changed` waits on goes with it.
    let mut changed = log.follow();
    let mut cursor = broker::wasi::log::LogCursor::at_seq(seq);
    let weak = Arc::downgrade(&log);
    drop(log);
    loop {
        // A slot in the queue first, then one line: a reader that reads nothing holds one queue of
        // lines at most, never the log.
        let Ok(permit) = tx.reserve().await else { return };
        let Some(log) = weak.upgrade() else { return };
        // Marked seen before reading, so a line written after the read wakes the wait below.
        changed.borrow_and_update();
        let read = log.read_from(cursor, 1);
        drop(log);
        cursor = read.cursor;
        if let Some(line) = read.lines.into_iter().next() {
            permit.send(LogEntry { line, lost: read.lost });
            continue;
        }
        drop(permit);
        if !follow || *shutdown.borrow() {
            return;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
            () = tx.closed() => return,
        }
    }
}

/// Forwards a scenario run's progress to its stream; a reader that went away cancels the run.
struct StreamProgress {
    tx: mpsc::Sender<ApiResult<ScenarioProgress>>,
    last: Mutex<(u64, u64)>,
    cancel: broker_scenario::Cancel,
}

impl broker_scenario::metrics::ProgressSink for StreamProgress {
    fn event(&self, event: broker_scenario::metrics::ProgressEvent<'_>) {
        use broker_scenario::metrics::ProgressEvent;
        let (done, total, message) = {
            let mut last = self.last.lock();
            match event {
                ProgressEvent::Start { total, label } => {
                    *last = (0, total);
                    (0, total, label.to_owned())
                }
                ProgressEvent::Advance { done, total, message } => {
                    *last = (done, total);
                    (done, total, message.to_owned())
                }
                ProgressEvent::Line(line) => (last.0, last.1, line.to_owned()),
                ProgressEvent::Finish => return,
            }
        };
        let update = ScenarioProgress { done, total, message, report: None };
        if self.tx.blocking_send(Ok(update)).is_err() {
            // The reader went away: nobody will read the report.
            self.cancel.cancel();
        }
    }
}

/// Validates a scenario request into a scenario and run options.
fn scenario_request(
    req: &ScenarioRequest,
) -> ApiResult<(broker_scenario::Scenario, broker_scenario::RunOptions)> {
    use broker_scenario::spec::ModuleSource;
    let invalid = |field: &'static str, reason: String| ApiError::InvalidField { field, reason };
    let s = match (req.builtin.is_empty(), req.toml.is_empty()) {
        (false, true) => broker_scenario::builtin::builtin_text(&req.builtin)
            .ok_or_else(|| {
                let known: Vec<_> = broker_scenario::BUILTINS.iter().map(|(n, _)| *n).collect();
                invalid(
                    "builtin",
                    format!("no built-in scenario {:?} (known: {})", req.builtin, known.join(", ")),
                )
            })
            .and_then(|text| {
                broker_scenario::parse(text, &req.builtin, None)
                    .map_err(|e| invalid("builtin", e.to_string()))
            })?,
        (true, false) => {
            let s = broker_scenario::parse(&req.toml, "request.toml", None)
                .map_err(|e| invalid("toml", e.to_string()))?;
            if let Some(m) = s.modules.iter().find(|m| matches!(m.source, ModuleSource::File(_))) {
                return Err(invalid(
                    "toml",
                    format!(
                        "module {}/{}: over gRPC, modules must name a guest app, not a path",
                        m.tenant, m.name
                    ),
                ));
            }
            s
        }
        _ => return Err(invalid("builtin", "give exactly one of `builtin` and `toml`".into())),
    };
    let modes = if req.modes.is_empty() {
        None
    } else {
        Some(broker_scenario::spec::parse_modes(&req.modes.join(",")).map_err(|e| invalid("modes", e))?)
    };
    let scale = if req.scale == 0.0 { 1.0 } else { req.scale };
    if !(scale.is_finite() && scale > 0.0 && scale <= 1000.0) {
        return Err(invalid("scale", format!("{} is not in (0, 1000]", req.scale)));
    }
    Ok((s, broker_scenario::RunOptions { modes, scale, ..broker_scenario::RunOptions::default() }))
}
