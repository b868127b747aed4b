//! The embedding API: [`Broker`] ties tenants, regions, capabilities and the runtime together.
//!
//! The state host functions need ([`crate::registry::Core`]: registries and the capability space) is
//! shared with every instance; the runtime (engine, worker pool, instance cells) stays in [`Broker`],
//! so instances never keep the pool alive.

use std::collections::HashSet;
use std::sync::Arc;

use broker_abi::LEN_TO_END;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use wasmtime::{ExternType, Linker, Val};

use crate::abi;
use crate::capability::{CapId, Rights};
use crate::error::Error;
use crate::ext::ui::{Ui, UiConfig};
use crate::name::Name;
use crate::region::{
    Accepted, Proposal, Refused, Region, RegionId, RegionInfo, RegionSpec, Span, TrafficStats, Upstream,
    WatchFn, WatchId,
};
use crate::registry::{name, Core, LoadedModule, ServiceFn};
use crate::runtime::{
    CellParts, EngineHandle, InstanceCell, InstanceConfig, InstanceError, InstanceId, InstanceState,
    InstanceStatus, WorkerPool,
};
use crate::tenant::{Quotas, Resource, Tenant, TenantId, Usage};
use crate::wasi::InstanceLog;

/// Broker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Worker threads that run instances.
    pub workers: usize,
    /// The UI toolkit extension (the native C toolkit under the `broker_ui_v1` imports, with its pool of
    /// native trampolines): on with `Some`, off with `None`. Off, the broker offers no `ui_*` import and
    /// refuses modules that import one, and [`Broker::ui`] is `None`.
    pub ui: Option<UiConfig>,
    /// How the workers (which also compile modules) share the host's CPUs with the threads that feed them. `Normal`
    /// by default for an embedded broker (threads of the embedding program that busy-wait would starve
    /// idle-class workers); `broker serve` defaults to `Idle`.
    pub worker_priority: crate::runtime::WorkerPriority,
    /// Where WASI apps' granted directories live (`<app data>/<tenant>/<path>`): none by default, and
    /// then an instance given directories is refused. `broker serve` uses `<state dir>/app-data`.
    pub app_data: Option<std::path::PathBuf>,
    /// Whether [`Broker::write_region`] runs the watch callbacks it triggers on the calling thread, for
    /// apps idle at the time, before it returns (on by default): a callback then costs about a call
    /// rather than a worker's wake-up and two context switches. Each runs as a turn of its app, never
    /// beside the app's calls, and moves to a worker at an epoch tick once 1 ms old. Off, every
    /// callback goes through the app's worker, as [`Broker::write_region_queued`] always does.
    pub callbacks_on_writer: bool,
}

impl Default for BrokerConfig {
    /// One worker per available core, at least two (so a runaway guest never blocks every instance), no
    /// extension (an embedder turns on what its apps need), and normal-class (niced) workers.
    fn default() -> BrokerConfig {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        BrokerConfig {
            workers: cores.max(2),
            ui: None,
            worker_priority: crate::runtime::WorkerPriority::Normal,
            app_data: None,
            callbacks_on_writer: true,
        }
    }
}

/// Identifies a grant the host made, so it can revoke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantId(CapId);

impl GrantId {
    /// The raw id.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// A module as the host API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The module's name within its tenant.
    pub name: String,
    /// Size of the wasm bytes.
    pub size: u64,
    /// Names of the exported functions.
    pub exports: Vec<String>,
}

/// A tenant as the host API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// The tenant's id.
    pub id: TenantId,
    /// Its name.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// What it uses now.
    pub usage: Usage,
}

/// An instance as the host API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance's id.
    pub id: InstanceId,
    /// Its name within its tenant.
    pub name: String,
    /// The owner tenant.
    pub tenant: TenantId,
    /// State and counters.
    pub status: InstanceStatus,
}

/// Checks the quotas that are not plain limits, whoever built them: a weight of 0 would make the
/// scheduler divide by zero.
fn check_quotas(q: &Quotas) -> Result<(), Error> {
    Quotas::check_cpu_shares(q.cpu_shares)
        .map(drop)
        .map_err(|e| Error::InvalidArgument { field: "cpu_shares", reason: e.to_string() })
}

/// A broker: tenants, modules, instances and regions, and the runtime that runs the instances.
///
/// Dropping it stops every instance and unmaps every region.
pub struct Broker {
    core: Arc<Core>,
    linker: Linker<InstanceState>,
    /// Ids are the broker's, so a fast hasher is safe.
    cells: RwLock<FxHashMap<InstanceId, Arc<InstanceCell>>>,
    pool: WorkerPool,
    /// WASI's import names and the runtime of its timers: dropped after the pool, whose workers poll
    /// WASI futures.
    wasi: WasiHost,
    engine: EngineHandle,
    /// The UI toolkit extension, if the config turned it on.
    ui: Option<Arc<Ui>>,
    /// See [`BrokerConfig::callbacks_on_writer`].
    callbacks_on_writer: bool,
}

/// What the broker keeps for WASI (see [`crate::wasi`]).
struct WasiHost {
    /// The functions wasmtime-wasi defines under [`crate::wasi::MODULE`].
    names: HashSet<String>,
    /// See [`BrokerConfig::app_data`].
    app_data: Option<std::path::PathBuf>,
    _context: crate::wasi::AsyncContext,
}

impl Broker {
    /// Starts a broker with its engine, epoch ticker and worker pool, and the extensions its config
    /// turns on (the UI toolkit with its trampoline pool).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `trampolines` if the UI extension's [`UiConfig::trampolines`]
    /// is 0 or above [`crate::ext::ui::MAX_TRAMPOLINES`], or if the engine or threads cannot be
    /// created; naming `page size` on a host whose pages are not the ABI's [`broker_abi::PAGE_SIZE`]
    /// (shared windows map whole host pages at the ABI's page boundaries).
    pub fn new(config: BrokerConfig) -> Result<Broker, Error> {
        let host_page = rustix::param::page_size();
        if host_page != crate::region::PAGE_SIZE as usize {
            return Err(Error::InvalidArgument {
                field: "page size",
                reason: format!(
                    "the host's pages are {host_page} bytes; the broker needs {}",
                    broker_abi::PAGE_SIZE
                ),
            });
        }
        // Checked first: a bad setting is refused before any thread starts.
        let trampolines = config.ui.as_ref().map(UiConfig::pool).transpose()?;
        let engine = EngineHandle::new()?;
        let mut linker = Linker::new(&engine.engine);
        let host_functions =
            |e: wasmtime::Error| Error::InvalidArgument { field: "host functions", reason: e.to_string() };
        abi::add_to_linker(&mut linker).map_err(host_functions)?;
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, InstanceState::wasi).map_err(host_functions)?;
        let wasi = WasiHost {
            names: crate::wasi::names(&engine.engine).map_err(host_functions)?,
            app_data: config.app_data.clone(),
            _context: crate::wasi::AsyncContext::new()
                .map_err(|e| Error::InvalidArgument { field: "workers", reason: e.to_string() })?,
        };
        let pool = WorkerPool::new(
            config.workers,
            engine.engine.clone(),
            config.worker_priority,
            wasi._context.handle(),
        )
        .map_err(|e| Error::InvalidArgument { field: "workers", reason: e.to_string() })?;
        let core = Arc::new(Core::new(Arc::clone(&engine.timers)));
        let ui = trampolines.map(|pool| Ui::install(&mut linker, &core, pool)).transpose()?;
        Ok(Broker {
            core,
            linker,
            cells: RwLock::new(FxHashMap::default()),
            pool,
            wasi,
            engine,
            ui,
            callbacks_on_writer: config.callbacks_on_writer,
        })
    }

    // ----- tenants -----

    /// Creates a tenant.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::TenantExists`], and [`Error::InvalidArgument`] naming
    /// `cpu_shares` if the quotas' [`Quotas::cpu_shares`] is not a valid weight.
    pub fn create_tenant(&self, tenant_name: &str, quotas: Quotas) -> Result<TenantId, Error> {
        let n = name(tenant_name)?;
        check_quotas(&quotas)?;
        let mut reg = self.core.registry.write();
        if reg.tenant_names.contains_key(&n) {
            return Err(Error::TenantExists(n.to_string()));
        }
        let id = TenantId(self.core.fresh_id());
        reg.tenant_names.insert(n.clone(), id);
        reg.tenants.insert(id, Tenant::new(id, n, quotas));
        Ok(id)
    }

    /// Looks a tenant up by name.
    pub fn tenant_id(&self, tenant_name: &str) -> Option<TenantId> {
        let n = Name::new(tenant_name).ok()?;
        self.core.registry.read().tenant_names.get(&n).copied()
    }

    /// Replaces a tenant's quotas; existing resources stay, new reservations see the new limits.
    ///
    /// # Errors
    /// [`Error::TenantNotFound`], and [`Error::InvalidArgument`] naming `cpu_shares` if
    /// [`Quotas::cpu_shares`] is not a valid weight.
    pub fn set_quotas(&self, tenant: TenantId, quotas: Quotas) -> Result<(), Error> {
        check_quotas(&quotas)?;
        self.core.tenant(tenant)?.set_quotas(quotas);
        Ok(())
    }

    /// What a tenant consumes now.
    ///
    /// # Errors
    /// [`Error::TenantNotFound`].
    pub fn tenant_usage(&self, tenant: TenantId) -> Result<Usage, Error> {
        Ok(self.core.tenant(tenant)?.usage())
    }

    // ----- modules -----

    /// Compiles and stores a module for a tenant, refusing imports the broker does not provide: functions
    /// of `broker_v1`, and of `broker_ui_v1` only while the UI toolkit extension is on.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::TenantNotFound`], [`Error::ModuleExists`]; [`Error::InvalidModule`]
    /// if it does not compile or imports something else, naming the import (for an extension that is
    /// off: `imports broker_ui_v1::ui_create, which the broker does not provide: its UI toolkit extension
    /// is turned off`).
    pub fn load_module(&self, tenant: TenantId, module_name: &str, wasm: &[u8]) -> Result<(), Error> {
        let n = name(module_name)?;
        let t = self.core.tenant(tenant)?;
        if self.core.registry.read().modules.contains_key(&(tenant, n.clone())) {
            return Err(Error::ModuleExists(n.to_string()));
        }
        // Quotas first, so a module over them costs no compilation.
        let size = u64::try_from(wasm.len()).unwrap_or(u64::MAX);
        let count = t.reserve(Resource::Modules, 1)?;
        let bytes = t.reserve(Resource::ModuleBytes, size)?;
        let invalid = |reason: String| Error::InvalidModule { name: module_name.to_owned(), reason };
        // On a worker, as a turn of the tenant: compiling is CPU-bound for up to seconds (see
        // `runtime::pool`). The task owns what it compiles, so the bytes are copied once (a memcpy
        // next to a compile).
        let engine = self.engine.engine.clone();
        let owned = wasm.to_vec();
        let compiled =
            self.pool.run_task(&t, move || wasmtime::Module::new(&engine, &owned)).ok_or_else(|| {
                invalid(
                    "compilation did not finish: the broker is shutting down, or the compiler failed".into(),
                )
            })?;
        let module = compiled.map_err(|e| invalid(format!("{e:#}")))?;
        let code = module.image_range();
        let compiled =
            u64::try_from((code.end as usize).saturating_sub(code.start as usize)).unwrap_or(u64::MAX);
        let code_charge = t.reserve(Resource::CompiledBytes, compiled)?;
        for import in module.imports() {
            if !self.provides(import.module(), import.name()) || !matches!(import.ty(), ExternType::Func(_)) {
                let (module, name) = (import.module(), import.name());
                // The one import an operator can fix by turning something on says so.
                let off = module == broker_abi::UI_MODULE && self.ui.is_none();
                let why = if off { ": its UI toolkit extension is turned off" } else { "" };
                return Err(invalid(format!(
                    "imports {module}::{name}, which the broker does not provide{why}"
                )));
            }
        }
        let mut reg = self.core.registry.write();
        if reg.modules.contains_key(&(tenant, n.clone())) {
            return Err(Error::ModuleExists(n.to_string()));
        }
        reg.modules.insert((tenant, n), LoadedModule { module, size, compiled });
        count.commit();
        bytes.commit();
        code_charge.commit();
        Ok(())
    }

    /// Removes a module and gives its quota back.
    ///
    /// # Errors
    /// [`Error::ModuleNotFound`]; [`Error::ModuleInUse`], listing them, while any instance of the module
    /// exists, stopped ones included since they can be restarted ([`Broker::delete_instance`] them
    /// first).
    pub fn unload_module(&self, tenant: TenantId, module_name: &str) -> Result<(), Error> {
        let n = name(module_name)?;
        let mut users: Vec<String> = self
            .cells
            .read()
            .values()
            .filter(|c| c.tenant.id() == tenant && c.status().module == n.as_str())
            .map(|c| c.name.to_string())
            .collect();
        if !users.is_empty() {
            users.sort();
            return Err(Error::ModuleInUse { module: n.to_string(), instances: users });
        }
        let removed = self
            .core
            .registry
            .write()
            .modules
            .remove(&(tenant, n))
            .ok_or_else(|| Error::ModuleNotFound(module_name.to_owned()))?;
        if let Ok(t) = self.core.tenant(tenant) {
            t.release(Resource::Modules, 1);
            t.release(Resource::ModuleBytes, removed.size);
            t.release(Resource::CompiledBytes, removed.compiled);
        }
        Ok(())
    }

    // ----- instances -----

    /// Instantiates a tenant's module as a named instance, charged to the tenant's instance and memory
    /// quotas.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::TenantNotFound`], [`Error::ModuleNotFound`],
    /// [`Error::InstanceExists`], [`Error::Quota`], [`Error::InvalidModule`] (imports with wrong
    /// signatures), [`Error::Instance`]. Nothing remains on error.
    pub fn start_instance(
        &self,
        tenant: TenantId,
        module_name: &str,
        instance_name: &str,
        config: InstanceConfig,
    ) -> Result<InstanceId, Error> {
        self.add_instance(tenant, module_name, instance_name, config, true)
    }

    /// Registers a named instance of a tenant's module without running it: it is stopped (as if
    /// started and then [`Broker::stop_instance`]d, minus the run: no start function, no memory) until
    /// [`Broker::restart_instance`]. A control plane restores a stopped instance with it. It takes the
    /// name and counts against the tenant's `instances` quota as a stopped instance does.
    ///
    /// # Errors
    /// As [`Broker::start_instance`], less the errors of running it. Nothing remains on error.
    pub fn create_stopped_instance(
        &self,
        tenant: TenantId,
        module_name: &str,
        instance_name: &str,
        config: InstanceConfig,
    ) -> Result<InstanceId, Error> {
        self.add_instance(tenant, module_name, instance_name, config, false)
    }

    /// Registers an instance, and runs it if `run`.
    fn add_instance(
        &self,
        tenant: TenantId,
        module_name: &str,
        instance_name: &str,
        config: InstanceConfig,
        run: bool,
    ) -> Result<InstanceId, Error> {
        let (mn, inn) = (name(module_name)?, name(instance_name)?);
        let t = self.core.tenant(tenant)?;
        let cap = t.quotas().max_call_timeout_ms;
        if config.call_timeout > std::time::Duration::from_millis(cap) {
            return Err(Error::InvalidArgument {
                field: "call_timeout",
                reason: format!(
                    "{} ms exceeds the tenant's cap max_call_timeout_ms = {cap}",
                    config.call_timeout.as_millis()
                ),
            });
        }
        let module = self
            .core
            .registry
            .read()
            .modules
            .get(&(tenant, mn.clone()))
            .map(|m| m.module.clone())
            .ok_or_else(|| Error::ModuleNotFound(module_name.to_owned()))?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| Error::InvalidModule { name: module_name.to_owned(), reason: format!("{e:#}") })?;
        let log = if crate::wasi::imports_wasi(&module) {
            config.wasi.check().map_err(|(field, reason)| Error::InvalidArgument { field, reason })?;
            if !config.wasi.dirs.is_empty() && self.wasi.app_data.is_none() {
                return Err(Error::InvalidArgument {
                    field: "dirs",
                    reason: "this broker has no app data directory (BrokerConfig::app_data; broker serve \
                             --state-dir gives one)"
                        .into(),
                });
            }
            let charge = t.reserve(Resource::LogBytes, config.wasi.log_bytes)?;
            let capacity = usize::try_from(config.wasi.log_bytes).unwrap_or(usize::MAX);
            Some(InstanceLog::new(Arc::clone(&t), inn.as_str(), capacity, charge))
        } else {
            None
        };
        let slot = t.reserve(Resource::Instances, 1)?;
        let id = InstanceId(self.core.fresh_id());
        {
            let mut reg = self.core.registry.write();
            let key = (tenant, inn.clone());
            if reg.instance_names.contains_key(&key) {
                return Err(Error::InstanceExists(format!("{}/{inn}", t.name())));
            }
            reg.instance_names.insert(key, id);
        }
        let (core, pool) = (Arc::clone(&self.core), self.pool.handle());
        let wasi_root = self.wasi.app_data.as_ref().map(|d| d.join(t.name().as_str()));
        let parts = CellParts {
            wasi_root,
            id,
            name: inn.clone(),
            tenant: Arc::clone(&t),
            module: mn,
            config,
            pre,
            core,
            pool,
            log,
        };
        let cell = if run { InstanceCell::start(parts) } else { Ok(InstanceCell::stopped(parts)) };
        match cell {
            Ok(cell) => {
                self.cells.write().insert(id, cell);
                slot.commit();
                Ok(id)
            }
            Err(e) => {
                // A failed start held no capability that could have a window.
                let _ = self.core.forget_instance(id);
                self.core.registry.write().instance_names.remove(&(tenant, inn));
                Err(e)
            }
        }
    }

    /// The output of a WASI app (`None` for an instance of another module): read it, or follow it.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn instance_log(&self, instance: InstanceId) -> Result<Option<Arc<InstanceLog>>, Error> {
        Ok(self.cell(instance)?.log())
    }

    fn cell(&self, id: InstanceId) -> Result<Arc<InstanceCell>, Error> {
        self.cells.read().get(&id).cloned().ok_or_else(|| Error::InstanceNotFound(id.to_string()))
    }

    /// Looks an instance up by tenant and name.
    pub fn instance_id(&self, tenant: TenantId, instance_name: &str) -> Option<InstanceId> {
        let n = Name::new(instance_name).ok()?;
        self.core.registry.read().instance_names.get(&(tenant, n)).copied()
    }

    /// Calls an exported function on the instance's worker and waits for its results.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], or [`Error::Instance`] with the trap, interruption or argument error;
    /// [`InstanceError::NotRunning`] (with the state) if the instance is trapped or stopped.
    pub fn call(&self, instance: InstanceId, export: &str, args: &[Val]) -> Result<Vec<Val>, Error> {
        Ok(self.cell(instance)?.call(&self.pool, export, args)?)
    }

    /// The parameter types of an instance's export, so a caller holding plain integers (a scenario file,
    /// say) can build arguments of the right width.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], or [`InstanceError::NoSuchExport`].
    pub fn export_params(&self, instance: InstanceId, export: &str) -> Result<Vec<wasmtime::ValType>, Error> {
        self.cell(instance)?
            .export_params(export)
            .ok_or_else(|| InstanceError::NoSuchExport(export.to_owned()).into())
    }

    /// Calls an export that returns one `i64` (the convention of the repository's guests).
    ///
    /// # Errors
    /// As [`Broker::call`], and [`InstanceError::BadArguments`] if the export does not return one `i64`.
    pub fn call_i64(&self, instance: InstanceId, export: &str, args: &[Val]) -> Result<i64, Error> {
        match self.call(instance, export, args)?.as_slice() {
            [Val::I64(v)] => Ok(*v),
            [Val::I32(v)] => Ok(i64::from(*v)),
            other => Err(InstanceError::BadArguments {
                export: export.to_owned(),
                expected: "one i64 result".into(),
                got: format!("{} results", other.len()),
            }
            .into()),
        }
    }

    /// Interrupts the call the instance is running (a runaway guest, say) at the next epoch tick; the
    /// call fails with [`InstanceError::Killed`] and the instance must be restarted. A no-op when idle.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn interrupt(&self, instance: InstanceId) -> Result<(), Error> {
        self.cell(instance)?.interrupt();
        Ok(())
    }

    /// An instance's state, counters and last trap.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn instance_status(&self, instance: InstanceId) -> Result<InstanceStatus, Error> {
        Ok(self.cell(instance)?.status())
    }

    /// Re-instantiates an instance: a trapped or stopped one runs again, a running one starts afresh.
    /// Its old capabilities are all revoked, grants it received while stopped included; it keeps its id
    /// and name.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], or instantiation errors (a stopped instance stays stopped then).
    pub fn restart_instance(&self, instance: InstanceId) -> Result<(), Error> {
        self.cell(instance)?.restart(&self.pool)
    }

    /// Stops an instance: its call in progress is interrupted, the calls queued behind it are refused,
    /// and its store goes with every capability it held, so its memory and windows are freed. It stays
    /// registered, stopped: it keeps its name, module and config, shows [`crate::RunState::Stopped`] in
    /// [`Broker::instance_status`], refuses calls with [`InstanceError::NotRunning`], and
    /// [`Broker::restart_instance`] runs it again. Because it keeps its name and can be restarted, it
    /// still counts against the tenant's `instances` quota; [`Broker::delete_instance`] releases that.
    /// Stopping a stopped instance changes nothing.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`]; [`Error::Capability`] if a window of another instance derived from
    /// this one's capabilities could not be revoked (that instance is being stopped; this one is
    /// stopped either way).
    pub fn stop_instance(&self, instance: InstanceId) -> Result<(), Error> {
        self.cell(instance)?.stop(&self.pool)
    }

    /// Deletes an instance, stopping it first if it runs (as [`Broker::stop_instance`]): its name is
    /// freed, its slot of the tenant's `instances` quota released, and grants to it are gone.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`]; [`Error::Capability`] as for [`Broker::stop_instance`] (the
    /// instance is deleted either way).
    pub fn delete_instance(&self, instance: InstanceId) -> Result<(), Error> {
        let cell = self
            .cells
            .write()
            .remove(&instance)
            .ok_or_else(|| Error::InstanceNotFound(instance.to_string()))?;
        let stopped = cell.delete(&self.pool);
        let removed = self.core.forget_instance(instance).map_err(Error::from).and(stopped);
        self.core.registry.write().instance_names.remove(&(cell.tenant.id(), cell.name.clone()));
        cell.tenant.release(Resource::Instances, 1);
        // Its log ring's charge goes back now, not when the last reader (or the worker that ran its
        // last job) lets go of the log.
        if let Some(log) = cell.log() {
            log.close();
        }
        // Deleted either way; a window of another instance derived from this one's capabilities that
        // could not be revoked is reported (that instance is being stopped).
        removed
    }

    /// Reserves `amount` of a tenant's `resource` for something the embedder holds on the tenant's
    /// behalf (the control plane's watch streams); given back when the reservation drops.
    ///
    /// # Errors
    /// [`Error::TenantNotFound`], [`Error::Quota`] when the tenant has no room left.
    pub fn reserve(
        &self,
        tenant: TenantId,
        resource: Resource,
        amount: u64,
    ) -> Result<crate::tenant::Reservation, Error> {
        Ok(self.core.tenant(tenant)?.reserve(resource, amount)?)
    }

    /// Shared windows an instance holds, revoked ones not yet unmapped included (what its window quota
    /// counts).
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn windows_of(&self, instance: InstanceId) -> Result<usize, Error> {
        self.cell(instance)?;
        Ok(self.core.windows.windows_of(instance))
    }

    /// Number of open handles an instance holds.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn handle_count(&self, instance: InstanceId) -> Result<usize, Error> {
        self.cell(instance)?;
        Ok(self.core.caps.lock().handles_of(instance))
    }

    // ----- regions -----

    /// Creates a region owned by a tenant.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::TenantNotFound`], [`Error::ModeNotSupported`], [`Error::Quota`],
    /// [`Error::RegionExists`], [`Error::Region`]. Nothing remains on error.
    pub fn create_region(&self, tenant: TenantId, spec: RegionSpec) -> Result<RegionId, Error> {
        let n = name(&spec.name)?;
        let t = self.core.tenant(tenant)?;
        let region = self.core.create_region(&t, n, spec.size, spec.mode, spec.policy, spec.backing)?;
        if spec.members != Rights::NONE {
            // The capability space is released before the destroy, which takes the registry (the lock
            // order: registry, then capability space).
            let set = self.core.caps.lock().set_members(region.id(), spec.members);
            if let Err(e) = set {
                let _ = self.core.destroy_region(region.id());
                return Err(e.into());
            }
        }
        Ok(region.id())
    }

    /// Sets what every app of the region's owner tenant may open it with by name (`Rights::NONE`: only
    /// the instances it is granted to). Handles opened through the old member rights are revoked,
    /// windows included, as a revoked grant's are: apps open the region again.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`]; [`crate::capability::CapError::NotRevoked`] if a window could not be
    /// revoked (its instance is being stopped; the new rights are in place).
    pub fn set_members(&self, region: RegionId, rights: Rights) -> Result<(), Error> {
        self.core.region(region)?;
        Ok(self.core.caps.lock().set_members(region, rights)?)
    }

    /// Destroys a region: every capability to it is revoked first, then its memory is unmapped once no
    /// call is using it.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`].
    pub fn destroy_region(&self, region: RegionId) -> Result<(), Error> {
        self.core.destroy_region(region)
    }

    /// Looks a region up by owner and name.
    pub fn region_id(&self, tenant: TenantId, region_name: &str) -> Option<RegionId> {
        let n = Name::new(region_name).ok()?;
        self.core.registry.read().region_names.get(&(tenant, n)).copied()
    }

    /// A region's metadata.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`].
    pub fn region_info(&self, region: RegionId) -> Result<RegionInfo, Error> {
        let info = self.core.region(region)?.info();
        Ok(self.with_members(info))
    }

    /// `info` with its member rights, which the capability space keeps.
    fn with_members(&self, mut info: RegionInfo) -> RegionInfo {
        let caps = self.core.caps.lock();
        info.members =
            caps.members(info.id).and_then(|m| caps.cap(m).ok()).map_or(Rights::NONE, |c| c.rights);
        info
    }

    /// The region itself, for embedders that measure its mapping directly (the native baseline of
    /// `broker bench` reads it as host code would, with no capability in between).
    ///
    /// # Errors
    /// [`Error::RegionNotFound`].
    pub fn region_ref(&self, region: RegionId) -> Result<Arc<Region>, Error> {
        self.core.region(region)
    }

    /// Reads region bytes from the host side.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`], [`Error::Region`] when out of bounds.
    pub fn read_region(&self, region: RegionId, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        Ok(self.core.region(region)?.read(offset, buf)?)
    }

    /// As [`Broker::read_region`], and returns the version the bytes belong to (never a newer one, even
    /// with writes running concurrently).
    ///
    /// # Errors
    /// As [`Broker::read_region`].
    pub fn read_region_versioned(&self, region: RegionId, offset: u64, buf: &mut [u8]) -> Result<u64, Error> {
        Ok(self.core.region(region)?.read_versioned(offset, buf)?)
    }

    /// Writes region bytes from the host side (a native producer); returns the new version.
    ///
    /// With [`BrokerConfig::callbacks_on_writer`] (the default), the watch callbacks this write triggers
    /// in apps that are idle run on this thread before it returns (together for about an epoch tick and
    /// a millisecond at most; one still running then goes on on a worker, and the rest are handed to
    /// the workers). So the caller must not hold a lock that a host
    /// service it registered ([`Broker::register_service`]) takes, and must not be on an async
    /// runtime's thread: [`Broker::write_region_queued`] is for those callers.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`], [`Error::Region`] when out of bounds; nothing is written then.
    pub fn write_region(&self, region: RegionId, offset: u64, data: &[u8]) -> Result<u64, Error> {
        let region = self.core.region(region)?;
        // Off, a queued scope: a scope another broker's write opened on this thread must not take these.
        let _scope = if self.callbacks_on_writer {
            crate::runtime::CallbacksHere::begin()
        } else {
            crate::runtime::CallbacksHere::queued()
        };
        Ok(region.write(offset, data)?)
    }

    /// As [`Broker::write_region`], but every watch callback it triggers runs on its app's worker, never
    /// on this thread: for callers on an async runtime (the gRPC service) or holding locks.
    ///
    /// # Errors
    /// As [`Broker::write_region`].
    pub fn write_region_queued(&self, region: RegionId, offset: u64, data: &[u8]) -> Result<u64, Error> {
        let region = self.core.region(region)?;
        // Shadows a scope the caller may be inside (a host watcher of another region writing this one).
        let _queued = crate::runtime::CallbacksHere::queued();
        Ok(region.write(offset, data)?)
    }

    /// Makes a region a replica whose writes go to `upstream` (its home, on another broker), or
    /// (`None`) its own home again; see [`crate::region::Upstream`]. Shared-mode regions cannot be
    /// replicas: their apps' stores bypass every write path.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`]; [`Error::InvalidArgument`] for a shared-mode region.
    pub fn set_upstream(&self, region: RegionId, upstream: Option<Arc<dyn Upstream>>) -> Result<(), Error> {
        let region = self.core.region(region)?;
        if upstream.is_some() && region.mode() == crate::Mode::Shared {
            return Err(Error::InvalidArgument {
                field: "mode",
                reason: "shared mode is node-local: a shared-mode region cannot be a replica".into(),
            });
        }
        region.set_upstream(upstream);
        Ok(())
    }

    /// Applies a change its home made to a replica region, at the home's version (ignored, returning
    /// false, at or below the replica's version). Watch callbacks it triggers run on their apps'
    /// workers, as for [`Broker::write_region_queued`].
    ///
    /// # Errors
    /// [`Error::RegionNotFound`], [`Error::Region`] for a span out of bounds (nothing is written).
    pub fn apply_replicated(&self, region: RegionId, version: u64, spans: &[Span]) -> Result<bool, Error> {
        let region = self.core.region(region)?;
        let _queued = crate::runtime::CallbacksHere::queued();
        Ok(region.apply_replicated(version, spans)?)
    }

    /// Stamps a region with a new version without changing its bytes (see
    /// [`crate::region::Region::restamp`]); watch callbacks run on their apps' workers.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`].
    pub fn restamp_region(&self, region: RegionId, next: impl FnOnce(u64) -> u64) -> Result<u64, Error> {
        let region = self.core.region(region)?;
        let _queued = crate::runtime::CallbacksHere::queued();
        Ok(region.restamp(next))
    }

    /// Applies a replica's proposal at the region's home (see [`crate::region::Region::apply_proposal`]);
    /// watch callbacks run on their apps' workers.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`]; the proposal's [`Refused`] (nothing written).
    pub fn apply_proposal(
        &self,
        region: RegionId,
        proposal: &Proposal,
    ) -> Result<Result<Accepted, Refused>, Error> {
        let region = self.core.region(region)?;
        let _queued = crate::runtime::CallbacksHere::queued();
        Ok(region.apply_proposal(proposal))
    }

    /// Grants an instance `rights` over `[offset, offset+len)` of a region (`len: None` = to the end).
    /// The instance opens it as `"<owner tenant>/<region>"`. A trapped or stopped instance can be
    /// granted a region too, but its restart drops the grant, as it drops every capability it held.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`], [`Error::InstanceNotFound`], [`Error::Capability`] for a bad range,
    /// [`Error::Quota`] (grants count against the owner's handle quota).
    pub fn grant(
        &self,
        region: RegionId,
        instance: InstanceId,
        rights: Rights,
        offset: u64,
        len: Option<u64>,
    ) -> Result<GrantId, Error> {
        if rights == Rights::NONE {
            return Err(Error::InvalidArgument {
                field: "rights",
                reason: "a grant needs at least one right (read, write, map, grant, watch)".into(),
            });
        }
        let r = self.core.region(region)?;
        self.cell(instance)?;
        let owner = self.core.tenant(r.owner())?;
        let bad = |_| Error::InvalidArgument { field: "offset", reason: "exceeds i64".into() };
        let offset = i64::try_from(offset).map_err(bad)?;
        let len = match len {
            None => LEN_TO_END,
            Some(l) => i64::try_from(l)
                .map_err(|_| Error::InvalidArgument { field: "len", reason: "exceeds i64".into() })?,
        };
        let mut caps = self.core.caps.lock();
        let root = caps.root(region).ok_or_else(|| Error::RegionNotFound(region.to_string()))?;
        let id = caps.derive_grant(root, rights, offset, len, instance, &owner)?;
        Ok(GrantId(id))
    }

    /// Revokes a grant and everything derived from it.
    ///
    /// # Errors
    /// [`Error::GrantNotFound`] if it is already gone.
    pub fn revoke_grant(&self, grant: GrantId) -> Result<(), Error> {
        let mut caps = self.core.caps.lock();
        caps.cap(grant.0).map_err(|_| Error::GrantNotFound(grant.get()))?;
        Ok(caps.revoke_node(grant.0)?)
    }

    /// Revokes every capability to a region: every handle, grant and window (the region itself stays,
    /// and so do its member rights: apps of its tenant may open it again). Returns how many
    /// capabilities were revoked.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`]; [`crate::capability::CapError::NotRevoked`] if a window could not be
    /// revoked (its instance is being stopped).
    pub fn revoke_all(&self, region: RegionId) -> Result<usize, Error> {
        let mut caps = self.core.caps.lock();
        let root = caps.root(region).ok_or_else(|| Error::RegionNotFound(region.to_string()))?;
        let members = caps.members(region).and_then(|m| caps.cap(m).ok()).map(|c| c.rights);
        // Its creator's right to open it again by name is a capability too.
        caps.clear_creator(region);
        let revoked = caps.revoke_children(root);
        // The membership went with the rest (so did every handle opened through it): put it back.
        let restored = members.map_or(Ok(()), |rights| caps.set_members(region, rights));
        let revoked = revoked?;
        restored?;
        Ok(revoked.saturating_sub(usize::from(members.is_some())))
    }

    /// What crossed a region's boundary: bytes in and out, pages refreshed, commits, conflicts.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`].
    pub fn region_traffic(&self, region: RegionId) -> Result<TrafficStats, Error> {
        Ok(self.core.region(region)?.traffic())
    }

    /// What an instance copied through its host calls, over all its restarts.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn instance_traffic(&self, instance: InstanceId) -> Result<TrafficStats, Error> {
        Ok(self.cell(instance)?.traffic.stats())
    }

    /// Every tenant, sorted by name.
    pub fn tenants(&self) -> Vec<TenantInfo> {
        let reg = self.core.registry.read();
        let mut out: Vec<TenantInfo> = reg
            .tenants
            .values()
            .map(|t| TenantInfo {
                id: t.id(),
                name: t.name().to_string(),
                quotas: t.quotas(),
                usage: t.usage(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One tenant's name, quotas and usage.
    ///
    /// # Errors
    /// [`Error::TenantNotFound`].
    pub fn tenant_info(&self, tenant: TenantId) -> Result<TenantInfo, Error> {
        let t = self.core.tenant(tenant)?;
        Ok(TenantInfo { id: t.id(), name: t.name().to_string(), quotas: t.quotas(), usage: t.usage() })
    }

    /// A tenant's modules, sorted by name.
    pub fn modules(&self, tenant: TenantId) -> Vec<ModuleInfo> {
        let reg = self.core.registry.read();
        let mut out: Vec<ModuleInfo> = reg
            .modules
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|((_, n), m)| ModuleInfo {
                name: n.to_string(),
                size: m.size,
                exports: m
                    .module
                    .exports()
                    .filter(|e| matches!(e.ty(), ExternType::Func(_)))
                    .map(|e| e.name().to_owned())
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One instance's name, tenant and status.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn instance_info(&self, instance: InstanceId) -> Result<InstanceInfo, Error> {
        let cell = self.cell(instance)?;
        Ok(InstanceInfo {
            id: instance,
            name: cell.name.to_string(),
            tenant: cell.tenant.id(),
            status: cell.status(),
        })
    }

    /// A tenant's instances, sorted by name.
    pub fn instances(&self, tenant: TenantId) -> Vec<InstanceInfo> {
        let cells: Vec<Arc<InstanceCell>> =
            self.cells.read().values().filter(|c| c.tenant.id() == tenant).cloned().collect();
        let mut out: Vec<InstanceInfo> = cells
            .iter()
            .map(|c| InstanceInfo { id: c.id, name: c.name.to_string(), tenant, status: c.status() })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A tenant's regions, sorted by name.
    pub fn regions(&self, tenant: TenantId) -> Vec<RegionInfo> {
        let infos: Vec<RegionInfo> = {
            let reg = self.core.registry.read();
            reg.regions.values().filter(|r| r.owner() == tenant).map(|r| r.info()).collect()
        };
        // The registry before the capability space (the lock order), never both at once here.
        let mut out: Vec<RegionInfo> = infos.into_iter().map(|i| self.with_members(i)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Makes a persistent region durable (msync); returns false for an ephemeral region.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`], [`Error::Region`] if the sync fails.
    pub fn flush_region(&self, region: RegionId) -> Result<bool, Error> {
        Ok(self.core.region(region)?.flush()?)
    }

    /// Flushes every persistent region (on shutdown); returns how many were flushed.
    ///
    /// # Errors
    /// The first flush that failed (the others are still attempted).
    pub fn flush_all(&self) -> Result<usize, Error> {
        let regions: Vec<Arc<Region>> = self.core.registry.read().regions.values().cloned().collect();
        let mut flushed = 0;
        let mut first_error = None;
        for r in regions {
            match r.flush() {
                Ok(true) => flushed += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(flushed), |e| Err(e.into()))
    }

    /// Calls `f` after every change to the region (see [`crate::region::Change`]).
    ///
    /// # Errors
    /// [`Error::RegionNotFound`].
    pub fn watch_region(&self, region: RegionId, f: WatchFn) -> Result<WatchId, Error> {
        Ok(self.core.region(region)?.watch(f))
    }

    /// Removes a watcher (a no-op if the region is gone).
    pub fn unwatch_region(&self, region: RegionId, watch: WatchId) {
        if let Ok(r) = self.core.region(region) {
            r.unwatch(watch);
        }
    }

    /// Registers a host service apps can open by name (`fn_open`) and call; `allowed` limits which
    /// tenants may open it (`None`: every tenant).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is empty or already registered.
    pub fn register_service(
        &self,
        service_name: &str,
        allowed: Option<Vec<TenantId>>,
        f: ServiceFn,
    ) -> Result<(), Error> {
        self.core.add_service(service_name, allowed, f)
    }

    /// The UI toolkit extension, while [`BrokerConfig::ui`] turned it on: its events
    /// ([`Ui::send`]), trampoline pool ([`Ui::trampolines`]) and objects ([`Ui::object_count`]).
    pub fn ui(&self) -> Option<&Ui> {
        self.ui.as_deref()
    }

    /// Whether this broker offers the import `module::name`: the core ABI always, an extension's only
    /// while it is on.
    fn provides(&self, module: &str, name: &str) -> bool {
        match module {
            broker_abi::MODULE => broker_abi::func::ALL.contains(&name),
            broker_abi::UI_MODULE => self.ui.is_some() && broker_abi::ui_func::ALL.contains(&name),
            crate::wasi::MODULE => self.wasi.names.contains(name),
            _ => false,
        }
    }

    /// Events delivered to an instance's callbacks, events that could not be delivered, and events
    /// merged away because it fell behind.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`].
    pub fn event_counts(&self, instance: InstanceId) -> Result<(u64, u64, u64), Error> {
        Ok(self.cell(instance)?.event_counts())
    }

    /// Number of shared windows mapped into instances right now, for leak checks.
    pub fn window_count(&self) -> usize {
        self.core.windows.count()
    }

    /// Number of live capabilities in the broker (roots included), for leak checks.
    pub fn capability_count(&self) -> usize {
        self.core.caps.lock().len()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Stop instances before the pool goes, so their stores drop on a worker, in order. Calls in
        // progress (a spinning app, a parked wait) are interrupted first rather than waited for.
        let cells: Vec<_> = self.cells.write().drain().map(|(_, c)| c).collect();
        for cell in &cells {
            cell.close();
        }
        for cell in cells {
            // Every instance stops; a window that could not be revoked belongs to one of them anyway.
            if let Err(e) = cell.stop(&self.pool) {
                tracing::warn!(instance = %cell.id, "{e}");
            }
        }
    }
}
