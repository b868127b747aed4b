//! Tenants and their quotas.
//!
//! A tenant owns regions, modules and instances, and every resource it consumes is counted against its
//! [`Quotas`]: region bytes, region count, instance count, handle count, linear-memory bytes and shared
//! windows (each costs the process kernel mappings, a resource the whole process has a fixed amount of).
//! Consumption goes through a [`Reservation`] that is released on drop unless committed, so an operation
//! that fails half-way gives everything back and nothing is ever partly created.
//!
//! Two quotas are not resources: `max_workers` caps how many workers the tenant occupies at once, and
//! `cpu_shares` is its weight when workers are shared out among tenants by CPU time. Besides the
//! counters of [`Resource`]s, a tenant counts the events queued for its instances (a gauge for
//! [`Usage::events`], not a quota).
//!
//! **Invariant:** a tenant's usage never exceeds its quota at the moment of reservation (a quota lowered
//! later does not evict anything; it only refuses new reservations).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::name::Name;

/// Identifies a tenant for the lifetime of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub(crate) u64);

impl TenantId {
    /// The raw id, for display and the control API.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant#{}", self.0)
    }
}

/// A resource counted against a tenant's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Total bytes of regions the tenant owns.
    RegionBytes,
    /// Number of regions the tenant owns.
    Regions,
    /// Number of instances the tenant runs.
    Instances,
    /// Number of capabilities held by the tenant's instances or granted by them.
    Handles,
    /// Total linear-memory bytes of the tenant's instances.
    MemoryBytes,
    /// Shared windows of the tenant's instances, revoked ones not yet unmapped included.
    Windows,
    /// Shared windows of one instance (a limit per instance, counted by the capability space).
    InstanceWindows,
    /// Modules loaded.
    Modules,
    /// Bytes of the modules' wasm.
    ModuleBytes,
    /// Bytes of the modules' compiled code.
    CompiledBytes,
    /// Native trampolines (C function pointers into app callbacks) held: the process has a fixed pool.
    Trampolines,
    /// Region watches registered by the tenant's apps (each costs a watcher on the region and
    /// callbacks queued for the app).
    Watches,
    /// Bytes of the log rings that keep the output of the tenant's WASI apps.
    LogBytes,
}

impl Resource {
    const ALL: [Resource; 13] = [
        Resource::RegionBytes,
        Resource::Regions,
        Resource::Instances,
        Resource::Handles,
        Resource::MemoryBytes,
        Resource::Windows,
        Resource::InstanceWindows,
        Resource::Modules,
        Resource::ModuleBytes,
        Resource::CompiledBytes,
        Resource::Trampolines,
        Resource::Watches,
        Resource::LogBytes,
    ];

    fn index(self) -> usize {
        match self {
            Resource::RegionBytes => 0,
            Resource::Regions => 1,
            Resource::Instances => 2,
            Resource::Handles => 3,
            Resource::MemoryBytes => 4,
            Resource::Windows => 5,
            Resource::InstanceWindows => 6,
            Resource::Modules => 7,
            Resource::ModuleBytes => 8,
            Resource::CompiledBytes => 9,
            Resource::Trampolines => 10,
            Resource::Watches => 11,
            Resource::LogBytes => 12,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::RegionBytes => "region bytes",
            Resource::Regions => "regions",
            Resource::Instances => "instances",
            Resource::Handles => "handles",
            Resource::MemoryBytes => "memory bytes",
            Resource::Windows => "shared windows",
            Resource::InstanceWindows => "shared windows per instance",
            Resource::Modules => "modules",
            Resource::ModuleBytes => "module bytes",
            Resource::CompiledBytes => "compiled code bytes",
            Resource::Trampolines => "native trampolines",
            Resource::Watches => "region watches",
            Resource::LogBytes => "log bytes",
        })
    }
}

/// Limits on what a tenant may consume. Stored by name (serde); a quota missing from a stored
/// record takes its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Quotas {
    /// Total bytes of regions.
    pub region_bytes: u64,
    /// Number of regions.
    pub regions: u64,
    /// Number of instances.
    pub instances: u64,
    /// Number of capabilities (open handles and outstanding grants).
    pub handles: u64,
    /// Host memory on the tenant's behalf: its instances' linear memories, its mirrors' shadow copies
    /// and its regions' page-version tables (8 bytes per 4 KiB page).
    pub memory_bytes: u64,
    /// Shared windows of all the tenant's instances (revoked ones not yet unmapped included).
    pub windows: u64,
    /// Shared windows of any one instance.
    pub windows_per_instance: u64,
    /// Modules loaded.
    pub modules: u64,
    /// Bytes of wasm of all loaded modules.
    pub module_bytes: u64,
    /// Bytes of compiled code of all loaded modules.
    pub compiled_bytes: u64,
    /// The longest call deadline the tenant's instances may ask for, in milliseconds.
    pub max_call_timeout_ms: u64,
    /// Native trampolines the tenant's apps may hold at once, for UI toolkit callbacks (the broker's
    /// pool has `UiConfig::trampolines`, `ext::ui::DEFAULT_TRAMPOLINES` by default).
    pub trampolines: u64,
    /// Workers the tenant's instances may occupy at once; 0: no cap (all of them).
    pub max_workers: u64,
    /// The tenant's weight when worker time is shared out among tenants: the scheduler charges a
    /// tenant the worker time it used divided by this weight and runs the least-charged tenant next
    /// (as Linux CFS does with cgroup `cpu.shares`), so a tenant with twice the shares of another gets
    /// twice its CPU time when both are busy. A weight, not a resource: nothing is reserved against it.
    /// Valid values are 1 to [`Quotas::MAX_CPU_SHARES`] (see [`Quotas::check_cpu_shares`]).
    pub cpu_shares: u64,
    /// Region watches the tenant's apps may hold at once.
    pub watches: u64,
    /// Bytes of log rings (the kept stdout and stderr of its WASI apps, each instance's ring reserved
    /// whole when the instance is created).
    pub log_bytes: u64,
}

impl Quotas {
    /// Default for [`Quotas::windows`]: with at most three kernel mappings per window, the default
    /// tenant can hold under 1/20 of Linux's default limit of 65,530 mappings per process.
    pub const DEFAULT_WINDOWS: u64 = 1024;
    /// Default for [`Quotas::windows_per_instance`].
    pub const DEFAULT_WINDOWS_PER_INSTANCE: u64 = 256;
    /// Default for [`Quotas::modules`].
    pub const DEFAULT_MODULES: u64 = 32;
    /// Default for [`Quotas::module_bytes`]: 64 MiB of wasm.
    pub const DEFAULT_MODULE_BYTES: u64 = 64 << 20;
    /// Default for [`Quotas::compiled_bytes`]: 256 MiB of compiled code.
    pub const DEFAULT_COMPILED_BYTES: u64 = 256 << 20;
    /// Default for [`Quotas::max_call_timeout_ms`]: one minute.
    pub const DEFAULT_MAX_CALL_TIMEOUT_MS: u64 = 60_000;
    /// Default for [`Quotas::trampolines`]: a quarter of a broker's default pool
    /// (`ext::ui::DEFAULT_TRAMPOLINES`).
    pub const DEFAULT_TRAMPOLINES: u64 = 16;
    /// Default for [`Quotas::watches`].
    pub const DEFAULT_WATCHES: u64 = 256;
    /// Default for [`Quotas::log_bytes`]: 4 MiB, 64 instances' default rings.
    pub const DEFAULT_LOG_BYTES: u64 = 4 << 20;
    /// Default for [`Quotas::cpu_shares`]: every tenant that is not given a weight has the same one
    /// (1024, the cgroup default, which leaves room to weigh a tenant below the default).
    pub const DEFAULT_CPU_SHARES: u64 = 1024;
    /// The largest [`Quotas::cpu_shares`], 64 times the default; the smallest is 1. The bound keeps a
    /// weighted charge (time divided by shares) meaningful and a weight of 0, a division by zero, out.
    pub const MAX_CPU_SHARES: u64 = 65_536;

    /// Checks a [`Quotas::cpu_shares`] value, for every boundary that takes one from outside (the
    /// control API, scenario files, [`crate::Broker::create_tenant`]).
    ///
    /// # Errors
    /// [`CpuSharesError`] when `shares` is 0 or above [`Quotas::MAX_CPU_SHARES`].
    pub fn check_cpu_shares(shares: u64) -> Result<u64, CpuSharesError> {
        if (1..=Quotas::MAX_CPU_SHARES).contains(&shares) {
            Ok(shares)
        } else {
            Err(CpuSharesError { shares })
        }
    }
}

/// How a quota's value is written: boundaries that take quotas from people (scenario files, CLI flags)
/// accept sizes such as `"64MiB"` for byte quotas, and check a weight's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// A number of things.
    Count,
    /// A number of bytes.
    Bytes,
    /// Milliseconds.
    Millis,
    /// A scheduling weight ([`Quotas::cpu_shares`]), checked by [`Quotas::check_cpu_shares`].
    Weight,
}

/// One field of [`Quotas`], so that code handling every quota alike (scenario files, the CLI's flags
/// and JSON) lists them nowhere else: [`Quotas::FIELDS`] is the one list.
#[derive(Clone, Copy)]
pub struct QuotaField {
    /// The field's name, as in `Quotas`, the proto, the store and scenario files.
    pub name: &'static str,
    /// What it limits, in a line.
    pub help: &'static str,
    /// How its value is written and checked.
    pub kind: QuotaKind,
    get: fn(&Quotas) -> u64,
    set: fn(&mut Quotas, u64),
}

impl fmt::Debug for QuotaField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaField").field("name", &self.name).field("kind", &self.kind).finish()
    }
}

impl QuotaField {
    /// The field's value in `quotas`.
    pub fn get(&self, quotas: &Quotas) -> u64 {
        (self.get)(quotas)
    }

    /// Sets the field in `quotas`, checked for its kind (a weight must be in range).
    ///
    /// # Errors
    /// [`CpuSharesError`] for a weight out of range; `quotas` is unchanged then.
    pub fn set(&self, quotas: &mut Quotas, value: u64) -> Result<(), CpuSharesError> {
        if self.kind == QuotaKind::Weight {
            Quotas::check_cpu_shares(value)?;
        }
        (self.set)(quotas, value);
        Ok(())
    }
}

/// A [`QuotaField`] entry: the field's name, kind and help, with its accessors.
macro_rules! quota_field {
    ($name:ident, $kind:ident, $help:literal) => {
        QuotaField {
            name: stringify!($name),
            help: $help,
            kind: QuotaKind::$kind,
            get: |q| q.$name,
            set: |q, v| q.$name = v,
        }
    };
}

impl Quotas {
    /// Every quota, in the order the control API's `Quotas` message declares them.
    pub const FIELDS: [QuotaField; 16] = [
        quota_field!(region_bytes, Bytes, "Total bytes of the tenant's regions."),
        quota_field!(regions, Count, "Number of regions."),
        quota_field!(instances, Count, "Number of instances."),
        quota_field!(handles, Count, "Number of capabilities (open handles and outstanding grants)."),
        quota_field!(
            memory_bytes,
            Bytes,
            "Host memory on the tenant's behalf: linear memories, mirror shadows, page-version tables."
        ),
        quota_field!(
            windows,
            Count,
            "Shared windows of all the tenant's instances (each costs kernel mappings)."
        ),
        quota_field!(windows_per_instance, Count, "Shared windows of any one instance."),
        quota_field!(modules, Count, "Modules loaded."),
        quota_field!(
            module_bytes,
            Bytes,
            "Bytes of wasm of all loaded modules (an upload over it is refused before compiling)."
        ),
        quota_field!(compiled_bytes, Bytes, "Bytes of compiled code of all loaded modules."),
        quota_field!(
            max_call_timeout_ms,
            Millis,
            "The longest call deadline an instance of the tenant may ask for."
        ),
        quota_field!(
            trampolines,
            Count,
            "Native trampolines (toolkit event callbacks) the tenant's apps may hold."
        ),
        quota_field!(max_workers, Count, "Workers the tenant's instances may occupy at once (0: no cap)."),
        quota_field!(watches, Count, "Region watches the tenant's apps may hold."),
        quota_field!(log_bytes, Bytes, "Bytes of log rings keeping the output of the tenant's WASI apps."),
        quota_field!(
            cpu_shares,
            Weight,
            "The tenant's weight for CPU time among busy tenants, 1 to 65536 (default 1024)."
        ),
    ];

    /// The quota called `name`, if there is one.
    pub fn field(name: &str) -> Option<&'static QuotaField> {
        Quotas::FIELDS.iter().find(|f| f.name == name)
    }
}

/// A [`Quotas::cpu_shares`] value outside 1 to [`Quotas::MAX_CPU_SHARES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cpu_shares {shares} is out of range: a weight is 1 to {max}", max = Quotas::MAX_CPU_SHARES)]
pub struct CpuSharesError {
    /// The refused value.
    pub shares: u64,
}

impl Default for Quotas {
    /// Generous defaults for a development broker: 256 MiB of regions, 64 regions, 16 instances,
    /// 4096 handles, 1 GiB of linear memory, 1024 shared windows (256 per instance), 32 modules of
    /// 64 MiB of wasm and 256 MiB of compiled code in all, calls of at most a minute, 16 native
    /// trampolines, 256 region watches, 4 MiB of log rings, no cap on workers, and a CPU weight of 1024 shares.
    fn default() -> Quotas {
        Quotas {
            region_bytes: 256 << 20,
            regions: 64,
            instances: 16,
            handles: 4096,
            memory_bytes: 1 << 30,
            windows: Quotas::DEFAULT_WINDOWS,
            windows_per_instance: Quotas::DEFAULT_WINDOWS_PER_INSTANCE,
            modules: Quotas::DEFAULT_MODULES,
            module_bytes: Quotas::DEFAULT_MODULE_BYTES,
            compiled_bytes: Quotas::DEFAULT_COMPILED_BYTES,
            max_call_timeout_ms: Quotas::DEFAULT_MAX_CALL_TIMEOUT_MS,
            trampolines: Quotas::DEFAULT_TRAMPOLINES,
            max_workers: 0,
            watches: Quotas::DEFAULT_WATCHES,
            log_bytes: Quotas::DEFAULT_LOG_BYTES,
            cpu_shares: Quotas::DEFAULT_CPU_SHARES,
        }
    }
}

impl Quotas {
    fn limit(&self, r: Resource) -> u64 {
        match r {
            Resource::RegionBytes => self.region_bytes,
            Resource::Regions => self.regions,
            Resource::Instances => self.instances,
            Resource::Handles => self.handles,
            Resource::MemoryBytes => self.memory_bytes,
            Resource::Windows => self.windows,
            Resource::InstanceWindows => self.windows_per_instance,
            Resource::Modules => self.modules,
            Resource::ModuleBytes => self.module_bytes,
            Resource::CompiledBytes => self.compiled_bytes,
            Resource::Trampolines => self.trampolines,
            Resource::Watches => self.watches,
            Resource::LogBytes => self.log_bytes,
        }
    }
}

/// What a tenant consumes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Total bytes of regions.
    pub region_bytes: u64,
    /// Number of regions.
    pub regions: u64,
    /// Number of instances.
    pub instances: u64,
    /// Number of capabilities.
    pub handles: u64,
    /// Host memory in use (see [`Quotas::memory_bytes`]).
    pub memory_bytes: u64,
    /// Shared windows (revoked ones not yet unmapped included).
    pub windows: u64,
    /// Modules loaded.
    pub modules: u64,
    /// Bytes of wasm of the loaded modules.
    pub module_bytes: u64,
    /// Bytes of compiled code of the loaded modules.
    pub compiled_bytes: u64,
    /// Native trampolines held.
    pub trampolines: u64,
    /// Region watches held.
    pub watches: u64,
    /// Bytes of log rings.
    pub log_bytes: u64,
    /// Events (watch notifications, native callbacks) queued for delivery to the tenant's instances
    /// right now: queued and not yet taken for delivery, or dropped with their queue.
    pub events: u64,
}

/// A reservation was refused because it would exceed the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded for {resource}: {in_use} in use + {requested} requested > limit {limit}")]
pub struct QuotaError {
    /// Which resource.
    pub resource: Resource,
    /// The quota.
    pub limit: u64,
    /// In use before the request.
    pub in_use: u64,
    /// The amount requested.
    pub requested: u64,
}

/// A tenant: its name, quotas and live usage counters.
#[derive(Debug)]
pub struct Tenant {
    id: TenantId,
    name: Name,
    quotas: RwLock<Quotas>,
    used: [AtomicU64; 13],
    /// Events queued for the tenant's instances: a gauge, not a quota, so kept apart from `used`.
    events: AtomicU64,
    /// How many of its apps' output lines may still go to the host's `tracing` output.
    log_trace: Mutex<TraceBucket>,
}

/// A token bucket for the output lines a tenant's apps send to `tracing` (see
/// [`crate::wasi::log::TRACE_LINES_PER_SEC`]).
#[derive(Debug)]
struct TraceBucket {
    tokens: u32,
    refilled: std::time::Instant,
    /// Lines left out since the last one traced.
    skipped: u64,
}

impl Tenant {
    pub(crate) fn new(id: TenantId, name: Name, quotas: Quotas) -> Arc<Tenant> {
        Arc::new(Tenant {
            id,
            name,
            quotas: RwLock::new(quotas),
            used: Default::default(),
            events: AtomicU64::new(0),
            log_trace: Mutex::new(TraceBucket {
                tokens: crate::wasi::log::TRACE_BURST,
                refilled: std::time::Instant::now(),
                skipped: 0,
            }),
        })
    }

    /// The tenant's id.
    pub fn id(&self) -> TenantId {
        self.id
    }

    /// The tenant's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Whether one more output line of the tenant's apps may go to `tracing`: `Some(lines left out
    /// since the last one)`, or `None` (counted as left out). The clock is read only once in every
    /// 64 refusals, so an app printing in a loop costs little here.
    pub(crate) fn trace_line(&self) -> Option<u64> {
        let mut b = self.log_trace.lock();
        if b.tokens == 0 && b.skipped.is_multiple_of(64) {
            let now = std::time::Instant::now();
            let per_sec = u64::from(crate::wasi::log::TRACE_LINES_PER_SEC);
            let earned = u64::try_from(now.duration_since(b.refilled).as_millis()).unwrap_or(u64::MAX)
                * per_sec
                / 1000;
            if earned > 0 {
                b.tokens = u32::try_from(earned).unwrap_or(u32::MAX).min(crate::wasi::log::TRACE_BURST);
                b.refilled = now;
            }
        }
        if b.tokens == 0 {
            b.skipped += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.skipped))
    }

    /// The current quotas.
    pub fn quotas(&self) -> Quotas {
        *self.quotas.read()
    }

    pub(crate) fn set_quotas(&self, q: Quotas) {
        *self.quotas.write() = q;
    }

    /// A snapshot of current usage.
    pub fn usage(&self) -> Usage {
        let g = |r: Resource| self.used[r.index()].load(Ordering::Acquire);
        Usage {
            region_bytes: g(Resource::RegionBytes),
            regions: g(Resource::Regions),
            instances: g(Resource::Instances),
            handles: g(Resource::Handles),
            memory_bytes: g(Resource::MemoryBytes),
            windows: g(Resource::Windows),
            modules: g(Resource::Modules),
            module_bytes: g(Resource::ModuleBytes),
            compiled_bytes: g(Resource::CompiledBytes),
            trampolines: g(Resource::Trampolines),
            watches: g(Resource::Watches),
            log_bytes: g(Resource::LogBytes),
            events: self.events.load(Ordering::Relaxed),
        }
    }

    /// Counts `n` events queued for delivery to one of the tenant's instances.
    ///
    /// Called on every event, so it is one atomic update. The counter is a statistic that publishes no
    /// other memory, hence `Relaxed`; it saturates rather than wraps.
    pub(crate) fn events_queued(&self, n: u64) {
        let _ = self.events.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_add(n)));
    }

    /// Counts `n` queued events gone: taken for delivery, or dropped with their queue (an instance that
    /// stopped, trapped or restarted). Saturates at 0, as [`Tenant::release`] does.
    pub(crate) fn events_taken(&self, n: u64) {
        let _ = self.events.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(n)));
    }

    /// Reserves `amount` of `resource`; the reservation is returned on drop unless committed.
    ///
    /// # Errors
    /// [`QuotaError`] when the tenant's usage plus `amount` would exceed its quota; nothing is reserved.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        resource: Resource,
        amount: u64,
    ) -> Result<Reservation, QuotaError> {
        self.try_add(resource, amount)?;
        Ok(Reservation { tenant: Arc::clone(self), resource, amount })
    }

    /// Adds to usage without a guard; pair with [`Tenant::release`].
    pub(crate) fn try_add(&self, resource: Resource, amount: u64) -> Result<(), QuotaError> {
        let limit = self.quotas.read().limit(resource);
        let counter = &self.used[resource.index()];
        let mut cur = counter.load(Ordering::Acquire);
        loop {
            let next = cur.checked_add(amount).filter(|n| *n <= limit).ok_or(QuotaError {
                resource,
                limit,
                in_use: cur,
                requested: amount,
            })?;
            match counter.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back `amount` of `resource` reserved earlier.
    pub(crate) fn release(&self, resource: Resource, amount: u64) {
        let counter = &self.used[resource.index()];
        // Saturate rather than wrap: a release can never exceed what was reserved, and if a bug made it
        // do so, the counter staying at 0 is the safe side.
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(c.saturating_sub(amount)));
    }

    /// Whether all counters are zero (every resource was given back, and no event is counted as queued),
    /// for leak checks in tests.
    pub fn is_idle(&self) -> bool {
        Resource::ALL.iter().all(|r| self.used[r.index()].load(Ordering::Acquire) == 0)
            && self.events.load(Ordering::Relaxed) == 0
    }
}

/// A quota reservation: released on drop unless [`Reservation::commit`]ted.
#[derive(Debug)]
#[must_use = "a reservation is released when dropped"]
pub struct Reservation {
    tenant: Arc<Tenant>,
    resource: Resource,
    amount: u64,
}

impl Reservation {
    /// Keeps the reserved amount in use; whoever owns the resource now releases it explicitly.
    pub(crate) fn commit(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.tenant.release(self.resource, self.amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_fields_cover_every_quota_once() {
        let mut q = Quotas::default();
        for (i, f) in Quotas::FIELDS.iter().enumerate() {
            f.set(&mut q, i as u64 + 1).expect("in range for every kind");
            assert_eq!(Quotas::field(f.name).map(|g| g.name), Some(f.name));
        }
        // Exhaustive: a new field of `Quotas` fails to compile here until it is listed in FIELDS.
        let Quotas {
            region_bytes,
            regions,
            instances,
            handles,
            memory_bytes,
            windows,
            windows_per_instance,
            modules,
            module_bytes,
            compiled_bytes,
            max_call_timeout_ms,
            trampolines,
            max_workers,
            cpu_shares,
            watches,
            log_bytes,
        } = q;
        let mut values = vec![
            region_bytes,
            regions,
            instances,
            handles,
            memory_bytes,
            windows,
            windows_per_instance,
            modules,
            module_bytes,
            compiled_bytes,
            max_call_timeout_ms,
            trampolines,
            max_workers,
            cpu_shares,
            watches,
            log_bytes,
        ];
        values.sort_unstable();
        assert_eq!(values, (1..=16).collect::<Vec<u64>>(), "every field was set through FIELDS, each once");
        let mut weight = Quotas::default();
        let shares = Quotas::field("cpu_shares").expect("listed");
        assert!(shares.set(&mut weight, 0).is_err(), "a weight is checked");
        assert_eq!(weight, Quotas::default(), "a refused value changes nothing");
        assert!(Quotas::field("nope").is_none());
    }

    fn tenant(handles: u64) -> Arc<Tenant> {
        let name = Name::new("t").expect("valid name");
        Tenant::new(TenantId(1), name, Quotas { handles, ..Quotas::default() })
    }

    #[test]
    fn reservations_are_released_unless_committed() {
        let t = tenant(3);
        {
            let _a = t.reserve(Resource::Handles, 2).expect("fits");
            assert_eq!(t.usage().handles, 2);
            let err = t.reserve(Resource::Handles, 2).expect_err("over quota");
            assert_eq!(err, QuotaError { resource: Resource::Handles, limit: 3, in_use: 2, requested: 2 });
        }
        assert_eq!(t.usage().handles, 0);
        t.reserve(Resource::Handles, 3).expect("fits").commit();
        assert_eq!(t.usage().handles, 3);
        t.release(Resource::Handles, 3);
        assert!(t.is_idle());
    }

    #[test]
    fn queued_events_are_counted_until_taken_and_saturate() {
        let t = tenant(1);
        assert_eq!(t.usage().events, 0);
        t.events_queued(3);
        t.events_queued(2);
        assert_eq!(t.usage().events, 5);
        assert!(!t.is_idle(), "queued events are not idle");
        t.events_taken(4);
        assert_eq!(t.usage().events, 1);
        t.events_taken(7);
        assert_eq!(t.usage().events, 0, "taking more than was queued stops at 0");
        assert!(t.is_idle());
        t.events_queued(u64::MAX);
        t.events_queued(1);
        assert_eq!(t.usage().events, u64::MAX, "queuing past the top stops there");
    }

    #[test]
    fn cpu_shares_are_one_to_the_maximum() {
        assert_eq!(Quotas::default().cpu_shares, Quotas::DEFAULT_CPU_SHARES);
        for ok in [1, Quotas::DEFAULT_CPU_SHARES, Quotas::MAX_CPU_SHARES] {
            assert_eq!(Quotas::check_cpu_shares(ok), Ok(ok));
        }
        for bad in [0, Quotas::MAX_CPU_SHARES + 1, u64::MAX] {
            assert_eq!(Quotas::check_cpu_shares(bad), Err(CpuSharesError { shares: bad }));
        }
        assert_eq!(
            CpuSharesError { shares: 0 }.to_string(),
            "cpu_shares 0 is out of range: a weight is 1 to 65536"
        );
    }

    #[test]
    fn overflowing_request_is_refused() {
        let t = tenant(u64::MAX);
        t.reserve(Resource::Handles, 1).expect("fits").commit();
        assert!(t.reserve(Resource::Handles, u64::MAX).is_err());
    }
}
