//! The state shared by the host API and every instance's host functions: the registries (tenants,
//! regions, modules, instance names), the capability space, the shared windows and the host services.
//!
//! [`Core`] sits below [`crate::Broker`] (the embedding API), [`crate::abi`] (the host functions guests
//! call) and the extensions in [`crate::ext`] (which keep their own state): it knows nothing of any of
//! them. Lock order: the registry, then the capability space, then the window registry; never the
//! reverse.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use wasmtime::Module;

use crate::capability::{CapError, CapSpace};
use crate::error::Error;
use crate::mode::shared::Windows;
use crate::mode::{ConflictPolicy, Mode};
use crate::name::Name;
use crate::region::{Backing, PageVersions, Region, RegionError, RegionId, MAX_REGION_SIZE};
use crate::runtime::InstanceId;
use crate::tenant::{Resource, Tenant, TenantId};

/// A compiled module and what it costs its tenant.
pub(crate) struct LoadedModule {
    pub(crate) module: Module,
    pub(crate) size: u64,
    /// Bytes of compiled code, charged to the tenant's `compiled_bytes` quota.
    pub(crate) compiled: u64,
}

/// Everything the broker knows by id and by name: tenants, regions, modules and instance names.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) tenants: HashMap<TenantId, Arc<Tenant>>,
    pub(crate) tenant_names: HashMap<Name, TenantId>,
    /// By id: looked up on every host read and write; ids are the broker's, so a fast hasher is safe.
    pub(crate) regions: FxHashMap<RegionId, Arc<Region>>,
    pub(crate) region_names: HashMap<(TenantId, Name), RegionId>,
    pub(crate) modules: HashMap<(TenantId, Name), LoadedModule>,
    pub(crate) instance_names: HashMap<(TenantId, Name), InstanceId>,
}

/// A host service apps can open by name as a function handle and call with argument and result bytes.
pub type ServiceFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// A registered host service and who may use it.
pub(crate) struct Service {
    /// Tenants allowed to open it; `None` means every tenant.
    pub(crate) allowed: Option<Vec<TenantId>>,
    pub(crate) f: ServiceFn,
}

impl Service {
    pub(crate) fn allows(&self, tenant: TenantId) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(&tenant))
    }

    pub(crate) fn call(&self, args: &[u8]) -> Result<Vec<u8>, String> {
        (self.f)(args)
    }
}

/// The state shared by the host API and every instance's host functions.
///
/// Lock order: `registry`, then `caps`, then `windows` (then an instance's memory fence, then a
/// region); never hold a later one while taking an earlier one.
pub(crate) struct Core {
    pub(crate) registry: RwLock<Registry>,
    pub(crate) caps: Mutex<CapSpace>,
    /// Every shared window, each hung off the capability it was mapped through (`mode::shared`); its
    /// lock is taken only with `caps` held, or alone.
    pub(crate) windows: Windows,
    next_id: AtomicU64,
    /// Host services by name: the embedder's, and those of the extensions it turned on.
    pub(crate) services: RwLock<HashMap<String, Arc<Service>>>,
    /// Deadlines of waiting calls, fired by the epoch ticker.
    pub(crate) timers: Arc<crate::runtime::Timers>,
}

/// A name from an API argument, or the error that names it.
pub(crate) fn name(s: &str) -> Result<Name, Error> {
    Name::new(s).map_err(|source| Error::InvalidName { name: s.to_owned(), source })
}

impl Core {
    /// Empty registries, capability space and services, with the broker's timers.
    pub(crate) fn new(timers: Arc<crate::runtime::Timers>) -> Core {
        Core {
            registry: RwLock::new(Registry::default()),
            caps: Mutex::new(CapSpace::new()),
            windows: Windows::new(),
            next_id: AtomicU64::new(0),
            services: RwLock::new(HashMap::new()),
            timers,
        }
    }

    /// Registers a host service apps can open by name (`fn_open`); `allowed` limits which tenants may
    /// (`None`: every tenant).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is empty, too long or already registered.
    pub(crate) fn add_service(
        &self,
        service_name: &str,
        allowed: Option<Vec<TenantId>>,
        f: ServiceFn,
    ) -> Result<(), Error> {
        if service_name.is_empty() || service_name.len() > crate::name::MAX_LEN {
            return Err(Error::InvalidArgument { field: "service name", reason: "1 to 256 bytes".into() });
        }
        let mut services = self.services.write();
        if services.contains_key(service_name) {
            return Err(Error::InvalidArgument {
                field: "service name",
                reason: format!("{service_name:?} is already registered"),
            });
        }
        services.insert(service_name.to_owned(), Arc::new(Service { allowed, f }));
        Ok(())
    }

    /// Removes every capability `instance` holds, and so every window mapped through them, then forgets
    /// its revoked windows, all under the capability space's lock. The caller drops the instance's store
    /// (and memory) next; removing an instance twice is a no-op.
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] as for [`CapSpace::remove_instance`].
    pub(crate) fn remove_instance(&self, instance: InstanceId) -> Result<(), CapError> {
        let mut caps = self.caps.lock();
        let removed = caps.remove_instance(instance);
        self.windows.forget_instance(instance);
        removed
    }

    /// As [`Core::remove_instance`], and drops the instance's handle table and inbox (it is deleted).
    ///
    /// # Errors
    /// As [`Core::remove_instance`].
    pub(crate) fn forget_instance(&self, instance: InstanceId) -> Result<(), CapError> {
        let mut caps = self.caps.lock();
        let removed = caps.forget_instance(instance);
        self.windows.forget_instance(instance);
        removed
    }

    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn tenant(&self, id: TenantId) -> Result<Arc<Tenant>, Error> {
        self.registry.read().tenants.get(&id).cloned().ok_or_else(|| Error::TenantNotFound(id.to_string()))
    }

    pub(crate) fn region(&self, id: RegionId) -> Result<Arc<Region>, Error> {
        self.registry.read().regions.get(&id).cloned().ok_or_else(|| Error::RegionNotFound(id.to_string()))
    }

    /// Creates a region owned by `tenant`, charging its quota; nothing remains on error.
    pub(crate) fn create_region(
        &self,
        tenant: &Arc<Tenant>,
        name: Name,
        size: u64,
        mode: Mode,
        policy: ConflictPolicy,
        backing: Backing,
    ) -> Result<Arc<Region>, Error> {
        mode.ensure_supported()?;
        // Refuse impossible sizes before touching the quota, so the error names the real problem.
        if size == 0 {
            return Err(RegionError::ZeroSize.into());
        }
        if size > MAX_REGION_SIZE {
            return Err(RegionError::TooLarge { size }.into());
        }
        let count = tenant.reserve(Resource::Regions, 1)?;
        let bytes = tenant.reserve(Resource::RegionBytes, size)?;
        // The page-version table is the tenant's host memory too.
        let table = tenant.reserve(Resource::MemoryBytes, PageVersions::table_bytes(size))?;
        let mut reg = self.registry.write();
        let key = (tenant.id(), name);
        if reg.region_names.contains_key(&key) {
            return Err(Error::RegionExists(format!("{}/{}", tenant.name(), key.1)));
        }
        let id = RegionId(self.fresh_id());
        let region = Arc::new(Region::new(
            id,
            key.1.clone(),
            tenant.id(),
            tenant.name().clone(),
            size,
            mode,
            policy,
            backing,
        )?);
        reg.region_names.insert(key, id);
        reg.regions.insert(id, Arc::clone(&region));
        self.caps.lock().add_root(Arc::clone(&region));
        count.commit();
        bytes.commit();
        table.commit();
        Ok(region)
    }

    /// The region `name` of tenant `tenant`, if there is one.
    pub(crate) fn region_named(&self, tenant: TenantId, name: &Name) -> Option<RegionId> {
        self.registry.read().region_names.get(&(tenant, name.clone())).copied()
    }

    /// The tenant called `name`, if there is one.
    pub(crate) fn tenant_named(&self, name: &Name) -> Option<TenantId> {
        self.registry.read().tenant_names.get(name).copied()
    }

    /// The instance `name` of tenant `tenant`, if there is one.
    pub(crate) fn instance_named(&self, tenant: TenantId, name: &Name) -> Option<InstanceId> {
        self.registry.read().instance_names.get(&(tenant, name.clone())).copied()
    }

    /// Destroys a region: forgets its name, revokes every capability derived from it and gives its
    /// quota back.
    pub(crate) fn destroy_region(&self, id: RegionId) -> Result<(), Error> {
        let mut reg = self.registry.write();
        let region = reg.regions.remove(&id).ok_or_else(|| Error::RegionNotFound(id.to_string()))?;
        reg.region_names.remove(&(region.owner(), region.name().clone()));
        let owner = reg.tenants.get(&region.owner()).cloned();
        drop(reg);
        let removed = self.caps.lock().remove_region(id);
        if let Some(t) = owner {
            t.release(Resource::Regions, 1);
            t.release(Resource::RegionBytes, region.size());
            t.release(Resource::MemoryBytes, PageVersions::table_bytes(region.size()));
        }
        // A window that could not be revoked fails the destroy: its instance is being stopped.
        Ok(removed?)
    }
}
