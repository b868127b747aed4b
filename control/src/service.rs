//! The tonic implementation of `broker.v1.Broker` over [`ControlPlane`].
//!
//! Each RPC authenticates the caller, scopes the request to a tenant (a tenant token may only name its
//! own tenant), validates every field into domain types, calls the broker (on a blocking thread when
//! guest code runs), records the change in the state store, and converts the answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use broker_proto::pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{self, Auth, Identity};
use super::convert::{self, quotas_from, quotas_to, usage_to};
use super::status::ApiError;
use super::store::{GrantRecord, InstanceRecord, RegionRecord, Store, TenantRecord};
use broker::region::{Change, WatchId};
use broker::{Backing, Broker, Error, GrantId, InstanceId, Quotas, RegionId, RegionSpec, Rights, TenantId};

/// The longest region read the API serves in one message.
pub const MAX_READ_BYTES: u64 = 16 << 20;

/// Watch events buffered per stream before changes are merged.
const WATCH_QUEUE: usize = 256;

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
    auth: Auth,
    store: Option<Store>,
    state_dir: Option<PathBuf>,
    grants: Mutex<HashMap<u64, ApiGrant>>,
    /// Held across every change to the API's grants that touches the broker and the record in turn
    /// (grant, revoke, the re-grant after a restart, member rights), so a revoke is never undone by a
    /// restart re-applying a grant it read just before, and the store agrees with what is live.
    grant_changes: Mutex<()>,
    next_grant: AtomicU64,
    watches: Mutex<WatchRegistry>,
    /// Compilations the daemon runs at once (on the blocking pool, never on the async runtime).
    compiles: Arc<tokio::sync::Semaphore>,
    /// Per tenant, compilations at once ([`COMPILES_PER_TENANT`]): one tenant's uploads queue behind
    /// each other, not in front of everyone else's.
    tenant_compiles: Mutex<HashMap<TenantId, Arc<tokio::sync::Semaphore>>>,
}

/// Rights bits from a request field; unknown bits are refused, naming the field.
fn rights_field(field: &'static str, bits: u32) -> ApiResult<Rights> {
    Rights::from_bits(bits).ok_or(ApiError::InvalidField { field, reason: format!("unknown bits {bits:#x}") })
}

/// Compilations one tenant may run at once.
pub const COMPILES_PER_TENANT: usize = 1;

/// Compilations the daemon runs at once: all but one core, so compiling never takes the whole machine.
fn compile_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The open watch streams, so a shutdown can end them: a stream never ends by itself, and a graceful
/// drain waits for every open stream.
#[derive(Default)]
struct WatchRegistry {
    open: HashMap<WatchId, RegionId>,
    closed: bool,
    /// Scenario runs streaming to clients, by a run number; shutdown cancels them.
    scenarios: HashMap<u64, broker_scenario::Cancel>,
    next_scenario: u64,
}

type ApiResult<T> = Result<T, ApiError>;

fn record_quotas(t: &TenantRecord) -> Quotas {
    t.quotas
}

fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
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

impl ControlPlane {
    /// A control plane over `broker`, with `admin_token`; with a state dir, everything persisted there is
    /// restored into the broker first (tenants, tokens, modules, regions, instances, grants).
    ///
    /// # Errors
    /// [`ApiError::Store`] if the state store cannot be opened or read.
    pub fn open(
        broker: Arc<Broker>,
        admin_token: &str,
        state_dir: Option<PathBuf>,
    ) -> ApiResult<ControlPlane> {
        let store = match &state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir.join("regions"))
                    .map_err(|e| ApiError::Store(format!("{}: {e}", dir.display())))?;
                Some(Store::open(dir)?)
            }
            None => None,
        };
        let cp = ControlPlane {
            broker,
            auth: Auth::new(auth::hash(admin_token)),
            store,
            state_dir,
            grants: Mutex::new(HashMap::new()),
            grant_changes: Mutex::new(()),
            next_grant: AtomicU64::new(1),
            watches: Mutex::new(WatchRegistry::default()),
            compiles: Arc::new(tokio::sync::Semaphore::new(compile_slots())),
            tenant_compiles: Mutex::new(HashMap::new()),
        };
        cp.restore()?;
        Ok(cp)
    }

    /// The broker this control plane drives.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
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
            ..record_quotas(t)
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
        for (key, r) in store.regions()? {
            let Some((t, n)) = split(&key) else { continue };
            let Some(tid) = self.broker.tenant_id(t) else { continue };
            let (Ok(mode), Ok(policy)) = (r.mode.parse(), r.policy.parse()) else { continue };
            // Unknown bits (a record from a newer version) keep the ones this version knows.
            let members = Rights::from_bits(r.member_rights & Rights::ALL.bits()).unwrap_or(Rights::NONE);
            let mut spec = RegionSpec::new(n, r.size, mode).with_policy(policy).with_members(members);
            if r.persistent {
                spec = spec.persistent(self.region_path(t, n)?);
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
            let Some((t, n)) = split(&key) else { continue };
            let Some(tid) = self.broker.tenant_id(t) else { continue };
            let config = broker::InstanceConfig {
                call_timeout: std::time::Duration::from_millis(r.call_timeout_ms),
                max_memory_bytes: r.max_memory_bytes,
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
        // later created under that name, which was never granted, and no revoke could reach it.
        let mut dropped = Vec::new();
        for (id, g) in grants {
            if let Err(e) = self.apply_grant(id, &g) {
                tracing::warn!(grant = id, error = %e, "could not restore grant: dropped");
                dropped.push(id);
            }
        }
        store.delete_grants(&dropped)?;
        for (name, t) in &tenants {
            if let Some(tid) = self.broker.tenant_id(name) {
                self.broker.set_quotas(tid, record_quotas(t))?;
            }
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

    fn region_path(&self, tenant: &str, name: &str) -> ApiResult<PathBuf> {
        let dir = self
            .state_dir
            .as_ref()
            .ok_or_else(|| {
                ApiError::Precondition("persistent regions need the daemon to run with --state-dir".into())
            })?
            .join("regions")
            .join(tenant);
        std::fs::create_dir_all(&dir).map_err(|e| {
            tracing::error!(dir = %dir.display(), "cannot create a tenant's regions directory: {e}");
            // The client learns what failed, not where the daemon keeps its files.
            ApiError::Store(format!("cannot create the regions directory of tenant {tenant}: {e}"))
        })?;
        Ok(dir.join(format!("{name}.region")))
    }

    fn identify<T>(&self, req: &Request<T>) -> ApiResult<Identity> {
        self.auth.identify(req.metadata())
    }

    fn admin(who: &Identity) -> ApiResult<()> {
        match who {
            Identity::Admin => Ok(()),
            Identity::Tenant(_) => Err(ApiError::PermissionDenied("this call needs the admin token".into())),
        }
    }

    fn tenant_id(&self, name: &str) -> ApiResult<TenantId> {
        self.broker.tenant_id(name).ok_or_else(|| Error::TenantNotFound(name.to_owned()).into())
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
        Ok((self.tenant_id(name)?, name.to_owned()))
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

    /// The region a request's `region` field names.
    fn region_ref(
        &self,
        who: &Identity,
        r: Option<&pb::RegionRef>,
    ) -> ApiResult<(TenantId, String, RegionId)> {
        let r = r.ok_or(ApiError::MissingField("region"))?;
        let (tid, tname) = self.scope(who, &r.tenant)?;
        Ok((tid, tname, self.region_id(tid, "region.name", &r.name)?))
    }

    /// The region a request that is itself a `RegionRef` names (its field is `name`).
    fn region_of(&self, who: &Identity, r: &pb::RegionRef) -> ApiResult<(TenantId, String, RegionId)> {
        let (tid, tname) = self.scope(who, &r.tenant)?;
        Ok((tid, tname, self.region_id(tid, "name", &r.name)?))
    }

    fn save_tenant(&self, name: &str) -> ApiResult<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let tid = self.tenant_id(name)?;
        let quotas = self.broker.tenant_info(tid)?.quotas;
        let tokens = self.auth.tenant_hashes(name).iter().map(auth::to_hex).collect();
        store.put_tenant(name, &TenantRecord { quotas, tokens })
    }

    fn tenant_msg(&self, tid: TenantId) -> ApiResult<pb::Tenant> {
        let t = self.broker.tenant_info(tid)?;
        Ok(pb::Tenant { name: t.name, quotas: Some(quotas_to(&t.quotas)), usage: Some(usage_to(&t.usage)) })
    }

    fn region_msg(&self, tenant: &str, id: RegionId) -> ApiResult<pb::Region> {
        let info = self.broker.region_info(id)?;
        let backing = match info.backing {
            Backing::Ephemeral => pb::Backing::Ephemeral,
            Backing::Persistent(_) => pb::Backing::Persistent,
        };
        Ok(pb::Region {
            tenant: tenant.to_owned(),
            name: info.name,
            size: info.size,
            mode: convert::mode_to(info.mode).into(),
            policy: convert::policy_to(info.policy).into(),
            backing: backing.into(),
            version: info.version,
            member_rights: info.members.bits(),
        })
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
            Some(store) if !ids.is_empty() => store.delete_grants(&ids),
            _ => Ok(()),
        }
    }
}

/// The tonic service: a cheap handle over a shared [`ControlPlane`].
#[derive(Clone)]
pub struct ControlService {
    plane: Arc<ControlPlane>,
}

impl ControlService {
    /// Wraps a control plane.
    pub fn new(plane: Arc<ControlPlane>) -> ControlService {
        ControlService { plane }
    }
}

/// Runs blocking broker work (guest code) off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Store(format!("worker task failed: {e}")))?
}

fn ok<T>(r: ApiResult<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// A server stream of region changes that unregisters its watcher when the client goes away.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<pb::RegionEvent, Status>>,
    plane: Arc<ControlPlane>,
    region: RegionId,
    watch: WatchId,
    /// The stream's unit of the region tenant's `watches` quota, given back when it ends.
    _charge: broker::tenant::Reservation,
}

impl Stream for WatchStream {
    type Item = Result<pb::RegionEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.plane.watches.lock().open.remove(&self.watch);
        self.plane.broker.unwatch_region(self.region, self.watch);
    }
}

/// The server stream of `RunScenario`: progress messages, then the report.
pub type ScenarioStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ScenarioProgress, Status>>;

/// Forwards a scenario run's progress to its gRPC stream; a client that went away cancels the run.
struct StreamProgress {
    tx: mpsc::Sender<Result<pb::ScenarioProgress, Status>>,
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
        let update = pb::ScenarioProgress { done, total, message, ..Default::default() };
        if self.tx.blocking_send(Ok(update)).is_err() {
            // The client went away: nobody will read the report.
            self.cancel.cancel();
        }
    }
}

/// Validates a `RunScenario` request into a scenario and run options.
fn scenario_request(
    req: &pb::RunScenarioRequest,
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

#[tonic::async_trait]
impl pb::broker_server::Broker for ControlService {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let p = &self.plane;
        ok((|| {
            Self::check_admin(p, &req)?;
            let r = req.get_ref();
            name_field("name", &r.name)?;
            let quotas = r.quotas.as_ref().map_or_else(|| Ok(Quotas::default()), quotas_from)?;
            let tid = p.broker.create_tenant(&r.name, quotas)?;
            p.auth.set_tenant(&r.name, Vec::new());
            p.save_tenant(&r.name)?;
            tracing::info!(tenant = %r.name, "tenant created");
            p.tenant_msg(tid)
        })())
    }

    async fn set_quotas(&self, req: Request<pb::SetQuotasRequest>) -> Result<Response<pb::Tenant>, Status> {
        let p = &self.plane;
        ok((|| {
            Self::check_admin(p, &req)?;
            let r = req.get_ref();
            let q = r.quotas.as_ref().ok_or(ApiError::MissingField("quotas"))?;
            let tid = p.named_tenant(&r.tenant)?;
            p.broker.set_quotas(tid, quotas_from(q)?)?;
            p.save_tenant(&r.tenant)?;
            p.tenant_msg(tid)
        })())
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let tenants = p
                .broker
                .tenants()
                .into_iter()
                .filter(|t| match &who {
                    Identity::Admin => true,
                    Identity::Tenant(own) => &t.name == own,
                })
                .map(|t| pb::Tenant {
                    name: t.name,
                    quotas: Some(quotas_to(&t.quotas)),
                    usage: Some(usage_to(&t.usage)),
                })
                .collect();
            Ok(pb::ListTenantsResponse { tenants })
        })())
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            Self::check_admin(p, &req)?;
            let r = req.get_ref();
            p.named_tenant(&r.tenant)?;
            let token = auth::new_token()?;
            let mut hashes = if r.rotate { Vec::new() } else { p.auth.tenant_hashes(&r.tenant) };
            hashes.push(auth::hash(&token));
            p.auth.set_tenant(&r.tenant, hashes);
            p.save_tenant(&r.tenant)?;
            tracing::info!(tenant = %r.tenant, rotate = r.rotate, "token issued");
            Ok(pb::IssueTokenResponse { token })
        })())
    }

    async fn upload_module(
        &self,
        req: Request<pb::UploadModuleRequest>,
    ) -> Result<Response<pb::Module>, Status> {
        let p = Arc::clone(&self.plane);
        let checked = (|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            name_field("name", &r.name)?;
            if r.wasm.is_empty() {
                return Err(ApiError::MissingField("wasm"));
            }
            Ok((tid, tname))
        })();
        let (tid, tname) = match checked {
            Ok(v) => v,
            Err(e) => return ok(Err(e)),
        };
        let r = req.into_inner();
        // Compiling is CPU-bound work of up to seconds: the request waits on the blocking pool, at most
        // one per tenant and `compile_slots` in all, so uploads never hold the async runtime (every
        // other tenant's RPCs); the compile itself runs on a worker as the tenant's turn.
        let mine = Arc::clone(
            p.tenant_compiles
                .lock()
                .entry(tid)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(COMPILES_PER_TENANT))),
        );
        let closed = |_| ApiError::Store("the daemon is shutting down".into());
        let own = match mine.acquire_owned().await.map_err(closed) {
            Ok(permit) => permit,
            Err(e) => return ok(Err(e)),
        };
        let slot = match Arc::clone(&p.compiles).acquire_owned().await.map_err(closed) {
            Ok(permit) => permit,
            Err(e) => return ok(Err(e)),
        };
        ok(blocking(move || {
            let _permits = (own, slot);
            p.broker.load_module(tid, &r.name, &r.wasm).map_err(|e| match e {
                Error::InvalidModule { reason, .. } => ApiError::InvalidField { field: "wasm", reason },
                e => e.into(),
            })?;
            if let Some(store) = &p.store {
                store.put_module(&format!("{tname}/{}", r.name), &r.wasm)?;
            }
            let info = p.broker.modules(tid).into_iter().find(|m| m.name == r.name);
            let (size, exports) = info.map_or((0, Vec::new()), |m| (m.size, m.exports));
            Ok(pb::Module { tenant: tname, name: r.name, size, exports })
        })
        .await)
    }

    async fn list_modules(
        &self,
        req: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let (tid, tname) = p.scope(&who, &req.get_ref().tenant)?;
            let modules = p
                .broker
                .modules(tid)
                .into_iter()
                .map(|m| pb::Module { tenant: tname.clone(), name: m.name, size: m.size, exports: m.exports })
                .collect();
            Ok(pb::ListModulesResponse { modules })
        })())
    }

    async fn delete_module(&self, req: Request<pb::ModuleRef>) -> Result<Response<pb::Empty>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            name_field("name", &r.name)?;
            p.broker.unload_module(tid, &r.name)?;
            if let Some(store) = &p.store {
                store.delete_module(&format!("{tname}/{}", r.name))?;
            }
            Ok(pb::Empty {})
        })())
    }

    async fn start_instance(
        &self,
        req: Request<pb::StartInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            name_field("module", &r.module)?;
            name_field("name", &r.name)?;
            let config = convert::instance_config_from(r.config.as_ref())?;
            let id = p.broker.start_instance(tid, &r.module, &r.name, config.clone())?;
            if let Some(store) = &p.store {
                let rec = InstanceRecord {
                    module: r.module.clone(),
                    call_timeout_ms: u64::try_from(config.call_timeout.as_millis()).unwrap_or(u64::MAX),
                    max_memory_bytes: config.max_memory_bytes,
                    stopped: false,
                };
                store.put_instance(&format!("{tname}/{}", r.name), &rec)?;
            }
            Ok(convert::instance_to(&tname, &r.name, &p.broker.instance_info(id)?.status))
        })
        .await)
    }

    async fn call_instance(
        &self,
        req: Request<pb::CallInstanceRequest>,
    ) -> Result<Response<pb::CallInstanceResponse>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, _) = p.scope(&who, &r.tenant)?;
            let id = p.instance_id(tid, "instance", &r.instance)?;
            if r.export.is_empty() {
                return Err(ApiError::MissingField("export"));
            }
            let args = r.args.iter().map(convert::value_from).collect::<ApiResult<Vec<_>>>()?;
            let results = p.broker.call(id, &r.export, &args)?;
            Ok(pb::CallInstanceResponse {
                results: results.iter().map(convert::value_to).collect::<ApiResult<_>>()?,
            })
        })
        .await)
    }

    async fn stop_instance(&self, req: Request<pb::InstanceRef>) -> Result<Response<pb::Empty>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            let id = p.instance_id(tid, "name", &r.name)?;
            // Stopped even when a window derived from its capabilities could not be revoked (that
            // instance is being stopped): record it as stopped, then report that failure. Its API
            // grants are kept, to be applied again when it restarts.
            let stopped = p.broker.stop_instance(id);
            if let Err(e @ Error::InstanceNotFound(_)) = stopped {
                return Err(e.into());
            }
            if let Some(store) = &p.store {
                store.set_instance_stopped(&format!("{tname}/{}", r.name), true)?;
            }
            stopped?;
            Ok(pb::Empty {})
        })
        .await)
    }

    async fn delete_instance(&self, req: Request<pb::InstanceRef>) -> Result<Response<pb::Empty>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            let id = p.instance_id(tid, "name", &r.name)?;
            // Gone from the broker even when a window could not be revoked: finish forgetting it (its
            // record and the API grants to it), then report that failure.
            let deleted = p.broker.delete_instance(id);
            if let Err(e @ Error::InstanceNotFound(_)) = deleted {
                return Err(e.into());
            }
            if let Some(store) = &p.store {
                store.delete_instance(&format!("{tname}/{}", r.name))?;
            }
            p.forget_grants_to(&tname, &r.name)?;
            deleted?;
            tracing::info!(tenant = %tname, instance = %r.name, "instance deleted");
            Ok(pb::Empty {})
        })
        .await)
    }

    async fn restart_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::Instance>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            let id = p.instance_id(tid, "name", &r.name)?;
            p.broker.restart_instance(id)?;
            // A restart drops every capability the instance held: give it its API grants back.
            p.reapply_grants_to(&tname, &r.name)?;
            if let Some(store) = &p.store {
                store.set_instance_stopped(&format!("{tname}/{}", r.name), false)?;
            }
            Ok(convert::instance_to(&tname, &r.name, &p.broker.instance_info(id)?.status))
        })
        .await)
    }

    async fn get_instance(&self, req: Request<pb::InstanceRef>) -> Result<Response<pb::Instance>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            let id = p.instance_id(tid, "name", &r.name)?;
            Ok(convert::instance_to(&tname, &r.name, &p.broker.instance_info(id)?.status))
        })())
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let (tid, tname) = p.scope(&who, &req.get_ref().tenant)?;
            let instances = p
                .broker
                .instances(tid)
                .iter()
                .map(|i| convert::instance_to(&tname, &i.name, &i.status))
                .collect();
            Ok(pb::ListInstancesResponse { instances })
        })())
    }

    async fn create_region(
        &self,
        req: Request<pb::CreateRegionRequest>,
    ) -> Result<Response<pb::Region>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (tid, tname) = p.scope(&who, &r.tenant)?;
            let mode = convert::mode_from(r.mode)?;
            let policy = convert::policy_from(r.policy)?;
            let persistent = convert::persistent_from(r.backing)?;
            if r.size == 0 {
                return Err(ApiError::InvalidField {
                    field: "size",
                    reason: "must be at least 1 byte".into(),
                });
            }
            name_field("name", &r.name)?;
            let members = rights_field("member_rights", r.member_rights)?;
            let mut spec =
                RegionSpec::new(r.name.clone(), r.size, mode).with_policy(policy).with_members(members);
            if persistent {
                spec = spec.persistent(p.region_path(&tname, &r.name)?);
            }
            let id = p.broker.create_region(tid, spec)?;
            if let Some(store) = &p.store {
                let rec = RegionRecord {
                    size: r.size,
                    mode: mode.to_string(),
                    policy: policy.to_string(),
                    persistent,
                    member_rights: members.bits(),
                };
                store.put_region(&format!("{tname}/{}", r.name), &rec)?;
            }
            p.region_msg(&tname, id)
        })())
    }

    async fn set_member_rights(
        &self,
        req: Request<pb::SetMemberRightsRequest>,
    ) -> Result<Response<pb::Region>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let region = r.region.as_ref().ok_or(ApiError::MissingField("region"))?;
            let rights = rights_field("rights", r.rights)?;
            let (_, tname, id) = p.region_of(&who, region)?;
            // Revoking the old membership may unmap windows: off the async runtime.
            let _changing = p.grant_changes.lock();
            p.broker.set_members(id, rights)?;
            if let Some(store) = &p.store {
                store.set_region_members(&format!("{tname}/{}", region.name), rights.bits())?;
            }
            p.region_msg(&tname, id)
        })
        .await)
    }

    async fn get_region(&self, req: Request<pb::RegionRef>) -> Result<Response<pb::Region>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let (_, tname, id) = p.region_of(&who, req.get_ref())?;
            p.region_msg(&tname, id)
        })())
    }

    async fn list_regions(
        &self,
        req: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::ListRegionsResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let (tid, tname) = p.scope(&who, &req.get_ref().tenant)?;
            let regions =
                p.broker.regions(tid).iter().map(|r| p.region_msg(&tname, r.id)).collect::<ApiResult<_>>()?;
            Ok(pb::ListRegionsResponse { regions })
        })())
    }

    async fn read_region(
        &self,
        req: Request<pb::ReadRegionRequest>,
    ) -> Result<Response<pb::ReadRegionResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (_, _, id) = p.region_ref(&who, r.region.as_ref())?;
            if r.len > MAX_READ_BYTES {
                return Err(ApiError::InvalidField {
                    field: "len",
                    reason: format!("at most {MAX_READ_BYTES} bytes per read"),
                });
            }
            let mut data = vec![0u8; usize::try_from(r.len).unwrap_or(0)];
            let version = p.broker.read_region_versioned(id, r.offset, &mut data)?;
            Ok(pb::ReadRegionResponse { data, version })
        })())
    }

    async fn write_region(
        &self,
        req: Request<pb::WriteRegionRequest>,
    ) -> Result<Response<pb::WriteRegionResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (_, _, id) = p.region_ref(&who, r.region.as_ref())?;
            let version = p.broker.write_region(id, r.offset, &r.data)?;
            Ok(pb::WriteRegionResponse { version })
        })())
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (_, rtenant, region) = p.region_ref(&who, r.region.as_ref())?;
            let (itenant, iname) = match r.instance.split_once('/') {
                Some((t, n)) => (t.to_owned(), n.to_owned()),
                None => (rtenant.clone(), r.instance.clone()),
            };
            let rec = GrantRecord {
                region_tenant: rtenant,
                region: r.region.as_ref().map(|x| x.name.clone()).unwrap_or_default(),
                instance_tenant: itenant,
                instance: iname,
                rights: r.rights,
                offset: r.offset,
                len: r.len,
            };
            let id = p.next_grant.fetch_add(1, Ordering::Relaxed);
            let _changing = p.grant_changes.lock();
            p.apply_grant(id, &rec)?;
            if let Some(store) = &p.store {
                store.put_grant(id, &rec)?;
            }
            let _ = region;
            Ok(pb::GrantResponse { grant_id: id })
        })())
    }

    async fn revoke(&self, req: Request<pb::RevokeRequest>) -> Result<Response<pb::Empty>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (_, _, region) = p.region_ref(&who, r.region.as_ref())?;
            let _changing = p.grant_changes.lock();
            if r.grant_id == 0 {
                p.broker.revoke_all(region)?;
                return p.drop_grants_where(|g| g.region == region).map(|()| pb::Empty {});
            }
            let grant = {
                let grants = p.grants.lock();
                match grants.get(&r.grant_id) {
                    Some(g) if g.region == region => g.grant,
                    _ => return Err(Error::GrantNotFound(r.grant_id).into()),
                }
            };
            // The grant may already be gone (its instance restarted or stopped): forget it either way.
            // Anything else (a window that could not be taken away) fails the revoke: never report
            // success while the grantee may still have access.
            match p.broker.revoke_grant(grant) {
                Ok(()) | Err(Error::GrantNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let id = r.grant_id;
            p.drop_grants_where(|g| g.grant == grant).map(|()| {
                tracing::info!(grant = id, "grant revoked");
                pb::Empty {}
            })
        })())
    }

    async fn destroy_region(&self, req: Request<pb::RegionRef>) -> Result<Response<pb::Empty>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let r = req.get_ref();
            let (_, tname, id) = p.region_of(&who, r)?;
            let backing = p.broker.region_info(id)?.backing;
            // The region is gone from the broker even when a window of it could not be revoked (its
            // instance is being stopped): finish forgetting it, then report that failure.
            let destroyed = p.broker.destroy_region(id);
            if let Err(e @ Error::RegionNotFound(_)) = destroyed {
                return Err(e.into());
            }
            p.drop_grants_where(|g| g.region == id)?;
            if let Some(store) = &p.store {
                store.delete_region(&format!("{tname}/{}", r.name))?;
            }
            if let Backing::Persistent(path) = backing {
                broker::region::remove_persistent_files(&path);
            }
            destroyed?;
            Ok(pb::Empty {})
        })())
    }

    async fn flush_region(
        &self,
        req: Request<pb::RegionRef>,
    ) -> Result<Response<pb::FlushRegionResponse>, Status> {
        let p = Arc::clone(&self.plane);
        ok(blocking(move || {
            let who = p.identify(&req)?;
            let (_, _, id) = p.region_of(&who, req.get_ref())?;
            Ok(pb::FlushRegionResponse { persistent: p.broker.flush_region(id)? })
        })
        .await)
    }

    type WatchRegionStream = WatchStream;

    async fn watch_region(&self, req: Request<pb::RegionRef>) -> Result<Response<WatchStream>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let (tid, tname, id) = p.region_of(&who, req.get_ref())?;
            // Registered under the lock that `end_watches` takes, so no stream opens after shutdown began.
            let mut watches = p.watches.lock();
            if watches.closed {
                return Err(ApiError::ShuttingDown);
            }
            // A stream costs a watcher on the region, as a guest's watch does: it counts against the
            // same quota, so a tenant cannot open streams without bound.
            let charge = p.broker.reserve(tid, broker::tenant::Resource::Watches, 1)?;
            let (tx, rx) = mpsc::channel(WATCH_QUEUE);
            let missed = Arc::new(AtomicU64::new(0));
            let region_name = req.get_ref().name.clone();
            let watch = p.broker.watch_region(
                id,
                Arc::new(move |c: &Change| {
                    let event = pb::RegionEvent {
                        tenant: tname.clone(),
                        region: region_name.clone(),
                        version: c.version,
                        offset: c.offset,
                        len: c.len,
                        missed: missed.swap(0, Ordering::Relaxed),
                    };
                    // Never block the writer: a slow client loses events, counted in the next one.
                    if let Err(mpsc::error::TrySendError::Full(Ok(e))) = tx.try_send(Ok(event)) {
                        missed.fetch_add(1 + e.missed, Ordering::Relaxed);
                    }
                }),
            )?;
            watches.open.insert(watch, id);
            Ok(WatchStream { rx, plane: Arc::clone(p), region: id, watch, _charge: charge })
        })())
    }

    type RunScenarioStream = ScenarioStream;

    async fn run_scenario(
        &self,
        req: Request<pb::RunScenarioRequest>,
    ) -> Result<Response<ScenarioStream>, Status> {
        let p = &self.plane;
        let (scenario, opts, run_id) = (|| {
            let who = p.identify(&req)?;
            ControlPlane::admin(&who)?;
            let (scenario, opts) = scenario_request(req.get_ref())?;
            // Registered under the lock `end_watches` takes, so shutdown cancels every run it did not refuse.
            let mut w = p.watches.lock();
            if w.closed {
                return Err(ApiError::ShuttingDown);
            }
            let run_id = w.next_scenario;
            w.next_scenario += 1;
            w.scenarios.insert(run_id, opts.cancel.clone());
            Ok((scenario, opts, run_id))
        })()
        .map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(64);
        let plane = Arc::clone(p);
        tokio::task::spawn_blocking(move || {
            let progress =
                StreamProgress { tx: tx.clone(), last: Mutex::new((0, 0)), cancel: opts.cancel.clone() };
            let last = match broker_scenario::run(&scenario, &opts, &progress) {
                Ok(report) => {
                    let (done, total) = *progress.last.lock();
                    serde_json::to_string(&report)
                        .map(|report_json| pb::ScenarioProgress {
                            done,
                            total,
                            message: format!("scenario {} finished", report.scenario),
                            report_json,
                            ok: report.ok(),
                            report_text: report.render(),
                        })
                        .map_err(|e| Status::from(ApiError::Store(format!("encoding the report: {e}"))))
                }
                Err(e) => {
                    Err(Status::from(ApiError::Precondition(format!("the scenario could not run: {e}"))))
                }
            };
            plane.watches.lock().scenarios.remove(&run_id);
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn stats(&self, req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let p = &self.plane;
        ok((|| {
            let who = p.identify(&req)?;
            let (tid, _) = p.scope(&who, &req.get_ref().tenant)?;
            let regions = p
                .broker
                .regions(tid)
                .into_iter()
                .map(|r| {
                    let traffic = p.broker.region_traffic(r.id).ok();
                    pb::RegionStats {
                        name: r.name,
                        version: r.version,
                        traffic: traffic.as_ref().map(convert::traffic_to),
                    }
                })
                .collect();
            let instances = p
                .broker
                .instances(tid)
                .into_iter()
                .map(|i| pb::InstanceStats {
                    name: i.name,
                    calls: i.status.calls,
                    traps: i.status.traps,
                    handles: p.broker.handle_count(i.id).map_or(0, |n| u64::try_from(n).unwrap_or(u64::MAX)),
                    traffic: p.broker.instance_traffic(i.id).ok().as_ref().map(convert::traffic_to),
                    windows: u64::try_from(p.broker.windows_of(i.id).unwrap_or(0)).unwrap_or(u64::MAX),
                })
                .collect();
            Ok(pb::StatsResponse { tenant: Some(p.tenant_msg(tid)?), regions, instances })
        })())
    }
}

impl ControlService {
    fn check_admin<T>(p: &ControlPlane, req: &Request<T>) -> ApiResult<()> {
        ControlPlane::admin(&p.identify(req)?)
    }
}

impl ControlPlane {
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
