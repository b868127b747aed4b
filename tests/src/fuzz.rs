//! A fuzz driver for the host ABI: sequences of [`AbiOp`]s, each a call of one raw import ([`IMPORTS`]:
//! those of `broker_v1` and of the UI toolkit extension, `broker_ui_v1`) made by the `fuzz_driver` guest
//! with arguments derived from six integers, run against a real broker (the extension turned on) while
//! the invariants a hostile app must never break are checked after every call.
//!
//! The same driver serves the proptest suite (`tests/tests/all/fuzz.rs`, through [`ops`]) and the
//! cargo-fuzz target (`fuzz/fuzz_targets/abi.rs`, through `arbitrary`). [`run`] sets up the regions and
//! instances, plays the sequence and reports the first broken invariant:
//!
//! - no call makes the broker panic, and the only traps are memory faults inside shared windows and
//!   epoch interruptions (the instance is then restarted and the run goes on);
//! - every call returns a documented status (or, for `abi_version`, the version);
//! - the regions the driver cannot write ("owner/ro", granted to it read-only, and "owner/rw", not
//!   granted at all) keep their bytes and their version;
//! - the broker writes nothing outside the guest ranges it was given (the guest checks guard zones);
//! - once the instances are stopped, no shared window, capability or quota charge outlives them, and
//!   once the regions are destroyed too, the broker is empty again.

use broker::{
    Broker, Error, InstanceConfig, InstanceError, InstanceId, Mode, RegionId, RegionSpec, Rights, RunState,
    TenantId, Usage, Val,
};
use broker_abi::Status;
use parking_lot::Mutex;
use proptest::prelude::*;
use std::sync::OnceLock;

/// Every import the `fuzz_driver` guest calls, in the numbering of its `op` export: the functions of
/// `broker_abi::func::ALL` and `broker_abi::ui_func::ALL`, in the order they had when both were one list.
/// The order is the wire format of [`AbiOp::func`] (and so of the seed corpus in `fuzz/corpus/abi/`):
/// append, never reorder.
pub const IMPORTS: [&str; 34] = {
    use broker_abi::{func, ui_func};
    [
        func::ABI_VERSION,
        func::NOP,
        func::REGION_OPEN,
        func::REGION_CREATE,
        func::HANDLE_CLOSE,
        func::HANDLE_INFO,
        func::REGION_READ,
        func::REGION_WRITE,
        func::HANDLE_RESTRICT,
        func::HANDLE_GRANT,
        func::HANDLE_REVOKE,
        func::MIRROR_ACQUIRE,
        func::MIRROR_REFRESH,
        func::MIRROR_COMMIT,
        func::REGION_MAP,
        func::REGION_UNMAP,
        func::REGION_WAIT,
        func::REGION_NOTIFY,
        func::REGION_WATCH,
        func::REGION_UNWATCH,
        ui_func::UI_CREATE,
        ui_func::UI_SET,
        ui_func::UI_GET,
        ui_func::UI_SET_TEXT,
        ui_func::UI_GET_TEXT,
        ui_func::UI_ON_EVENT,
        ui_func::UI_SEND,
        ui_func::UI_DELETE,
        func::FN_OPEN,
        func::FN_CALL,
        func::FN_CLOSE,
        func::MIRROR_HINT,
        func::REGION_READV,
        func::REGION_WRITEV,
    ]
};

/// Number of imports an [`AbiOp`] chooses from (`func % FUNCS`), in the order of [`IMPORTS`].
pub const FUNCS: usize = IMPORTS.len();

/// What the guest's `op` returns when a call changed one of its guard zones.
const GUARD_BROKEN: i32 = 0x4755_4152;
/// What the guest's `op` returns before its `setup` ran.
const NOT_SET_UP: i32 = 0x4e4f_5355;

/// Size of the read-only region "owner/ro".
const RO_SIZE: usize = 4096;

/// One call of a raw import: `IMPORTS[func % FUNCS]` with arguments derived from `args`
/// by the `fuzz_driver` guest (see its module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, arbitrary::Arbitrary)]
pub struct AbiOp {
    /// The import, modulo [`FUNCS`].
    pub func: u8,
    /// The raw material of the import's arguments.
    pub args: [i64; 6],
}

impl AbiOp {
    /// An op calling import `name` (a name from [`IMPORTS`]).
    ///
    /// # Panics
    /// If `name` is not an import of ABI v1 or of its UI toolkit extension.
    pub fn new(name: &str, args: [i64; 6]) -> AbiOp {
        let func = IMPORTS.iter().position(|f| *f == name).expect("an import of broker_v1 or broker_ui_v1");
        AbiOp { func: u8::try_from(func).expect("fewer than 256 imports"), args }
    }

    /// The name of the import this op calls.
    pub fn import(&self) -> &'static str {
        IMPORTS[usize::from(self.func) % FUNCS]
    }
}

/// One op, with arguments drawn from the whole `i64` range (their low bits pick the argument classes).
pub fn op() -> impl Strategy<Value = AbiOp> {
    (any::<u8>(), any::<[i64; 6]>()).prop_map(|(func, args)| AbiOp { func, args })
}

/// Sequences of up to 64 ops.
pub fn ops() -> impl Strategy<Value = Vec<AbiOp>> {
    proptest::collection::vec(op(), 0..=64)
}

/// How [`Fuzzer::run`] drives the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep every guest range the broker copies from or into (buffers, names, out-pointers) away from
    /// the shared windows the driver mapped.
    ///
    /// This works around a known broker crash: a host function that copies into a read-only window, or
    /// from or into a revoked one, faults in host code and kills the whole process (`guest_ptr` checks
    /// ranges against the memory's size, not against the windows' protections). With it set, the rest
    /// of the ABI can be fuzzed in-process; [`run`] leaves it unset, so the cargo-fuzz target finds the
    /// crash until it is fixed.
    pub avoid_window_pointers: bool,
}

/// What a run did, for tests that want to know the fuzzer reached something.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Ops that returned `OK` (or the version), per import, in the order of [`IMPORTS`].
    pub succeeded: Vec<u32>,
    /// Guest traps the driver accepted (faults in shared windows, interruptions) and restarted after.
    pub restarts: u32,
    /// What each op returned, `None` where the guest trapped.
    pub statuses: Vec<Option<i32>>,
}

/// A broker with the UI toolkit extension, the tenants "owner" and "t" and the `fuzz_driver` module
/// loaded into "t", reused by many runs (compiling the guest dominates the cost of a fresh broker).
///
/// Each run creates the regions and instances it needs and, whatever happens, stops and destroys them
/// again, checking that the broker is then exactly as empty as before: no region, capability, window,
/// toolkit object or quota charge survives a run. So runs are independent (a failing sequence fails the
/// same way on a fresh fuzzer) and a leak fails the run that caused it.
pub struct Fuzzer {
    b: Broker,
    t: TenantId,
    owner: TenantId,
}

impl Default for Fuzzer {
    fn default() -> Fuzzer {
        Fuzzer::new()
    }
}

impl Fuzzer {
    /// A broker with two workers and the UI toolkit extension, the two tenants and the guest module.
    ///
    /// # Panics
    /// If the broker, the tenants or the module cannot be set up.
    pub fn new() -> Fuzzer {
        let b = crate::broker_with_ui();
        let owner = crate::tenant(&b, "owner");
        let t = crate::tenant(&b, "t");
        let (_, path) =
            broker_guests::ALL.iter().find(|(n, _)| *n == "fuzz_driver").expect("the fuzz_driver guest");
        let wasm = broker_guests::read(path).expect("guest built");
        b.load_module(t, "fuzz_driver", &wasm).expect("fuzz_driver loads");
        Fuzzer { b, t, owner }
    }

    /// Plays `ops` and checks the invariants after every op and at the end; see the module docs.
    ///
    /// # Errors
    /// The first broken invariant, naming the op (its index, import and arguments).
    pub fn run(&self, ops: &[AbiOp], options: Options) -> Result<Report, String> {
        let mut report = Report { succeeded: vec![0; FUNCS], restarts: 0, statuses: Vec::new() };
        let outcome = match World::new(self, options) {
            Ok(mut world) => {
                let played = ops.iter().enumerate().try_for_each(|(i, op)| {
                    world
                        .play(op, &mut report)
                        .map_err(|e| format!("op {i} ({} {:?}): {e}", op.import(), op.args))
                });
                let finished = world.finish().map_err(|e| format!("after {} ops: {e}", ops.len()));
                played.and(finished)
            }
            Err(e) => Err(format!("setting up: {e}")),
        };
        let cleaned = self.clean_up().map_err(|e| format!("cleaning up after {} ops: {e}", ops.len()));
        outcome.and(cleaned).map(|()| report)
    }

    /// Stops every instance and destroys every region, then checks that nothing is left.
    fn clean_up(&self) -> Result<(), String> {
        let b = &self.b;
        for tenant in [self.t, self.owner] {
            for i in b.instances(tenant) {
                b.delete_instance(i.id).map_err(fail("deleting an instance"))?;
            }
            for r in b.regions(tenant) {
                b.destroy_region(r.id).map_err(fail("destroying a region"))?;
            }
            // Modules stay loaded for the next run; everything else must be back.
            let usage = b.tenant_usage(tenant).map_err(fail("usage"))?;
            let usage = Usage { modules: 0, module_bytes: 0, compiled_bytes: 0, ..usage };
            if usage != Usage::default() {
                return Err(format!("an empty tenant still uses {usage:?}"));
            }
        }
        let left = (b.capability_count(), b.window_count(), b.ui().map_or(0, broker::Ui::object_count));
        if left != (0, 0, 0) {
            return Err(format!("capabilities, windows and toolkit objects left over: {left:?}"));
        }
        Ok(())
    }
}

/// One run's regions and instances, and what it checks.
struct World<'f> {
    b: &'f Broker,
    t: TenantId,
    owner: TenantId,
    ro: RegionId,
    driver: InstanceId,
    reader: InstanceId,
    /// Regions the driver may not change: "owner/ro" (granted read-only) and "owner/rw" (not granted),
    /// with their bytes and version.
    frozen: Vec<(RegionId, Vec<u8>, u64)>,
    usage_t: Usage,
    usage_owner: Usage,
    options: Options,
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(Error) -> String {
    move |e| format!("{what}: {e}")
}

impl<'f> World<'f> {
    /// Tenant "owner" owns "ro" (handle mode, a fixed pattern) and "rw"; tenant "t" owns "rw" (handle),
    /// "mi" (mirror) and "sh" (shared) and runs the instances "driver" and "reader" of `fuzz_driver`.
    /// The driver holds only a READ|MAP|WATCH grant of "owner/ro".
    fn new(f: &'f Fuzzer, options: Options) -> Result<World<'f>, String> {
        let (b, t, owner) = (&f.b, f.t, f.owner);
        let ro = b
            .create_region(owner, RegionSpec::new("ro", 4096, Mode::Handle).with_members(Rights::ALL))
            .map_err(fail("ro"))?;
        let pattern: Vec<u8> = (0..RO_SIZE).map(|i| u8::try_from(i * 7 % 251).unwrap_or(0) | 1).collect();
        b.write_region(ro, 0, &pattern).map_err(fail("ro pattern"))?;
        let owner_rw = b
            .create_region(owner, RegionSpec::new("rw", 4096, Mode::Handle).with_members(Rights::ALL))
            .map_err(fail("owner/rw"))?;
        b.create_region(t, RegionSpec::new("rw", 6000, Mode::Handle).with_members(Rights::ALL))
            .map_err(fail("rw"))?;
        b.create_region(t, RegionSpec::new("mi", 8192, Mode::Mirror).with_members(Rights::ALL))
            .map_err(fail("mi"))?;
        b.create_region(t, RegionSpec::new("sh", 8192, Mode::Shared).with_members(Rights::ALL))
            .map_err(fail("sh"))?;
        // Usage before the instances, less the regions' page-version tables (see `finish`).
        let usage_of = |tenant: TenantId| {
            let mut u = b.tenant_usage(tenant).map_err(fail("usage"))?;
            u.memory_bytes -= crate::page_tables(b, tenant);
            Ok::<Usage, String>(u)
        };
        let usage_t = usage_of(t)?;
        let usage_owner = usage_of(owner)?;
        let config = InstanceConfig::default();
        let driver = b
            .start_instance(t, "fuzz_driver", "driver", config.clone())
            .map_err(fail("starting the driver"))?;
        let reader =
            b.start_instance(t, "fuzz_driver", "reader", config).map_err(fail("starting the reader"))?;
        let version = |r: RegionId| b.region_info(r).map(|i| i.version).map_err(fail("region info"));
        let frozen = vec![(ro, pattern, version(ro)?), (owner_rw, vec![0; 4096], version(owner_rw)?)];
        let mut w = World { b, t, owner, ro, driver, reader, frozen, usage_t, usage_owner, options };
        w.set_up_driver()?;
        Ok(w)
    }

    /// Grants "owner/ro" to the (fresh) driver and lets it open its regions.
    fn set_up_driver(&mut self) -> Result<(), String> {
        let rights = Rights::READ | Rights::MAP | Rights::WATCH;
        self.b.grant(self.ro, self.driver, rights, 0, None).map_err(fail("granting ro"))?;
        match self.b.call_i64(self.driver, "setup", &[]) {
            Ok(4) => {}
            Ok(n) => return Err(format!("the driver opened {n} of its 4 regions")),
            Err(e) => return Err(format!("driver setup: {e}")),
        }
        let avoid = i32::from(self.options.avoid_window_pointers);
        self.b.call_i64(self.driver, "avoid_windows", &[Val::I32(avoid)]).map_err(fail("avoid_windows"))?;
        Ok(())
    }

    /// The regions the driver cannot write keep their bytes and version.
    fn check_frozen_regions(&self) -> Result<(), String> {
        for (r, bytes, version) in &self.frozen {
            let mut now = vec![0u8; bytes.len()];
            self.b.read_region(*r, 0, &mut now).map_err(fail("reading a frozen region"))?;
            let name = self.b.region_info(*r).map(|i| i.name).unwrap_or_default();
            if let Some(at) = now.iter().zip(bytes).position(|(a, b)| a != b) {
                return Err(format!("owner/{name}, which the driver cannot write, changed at byte {at}"));
            }
            let v = self.b.region_info(*r).map_err(fail("region info"))?.version;
            if v != *version {
                return Err(format!("the version of owner/{name} moved from {version} to {v}"));
            }
        }
        Ok(())
    }

    /// Accepts a trap only if it is a fault in a shared window or an interruption, then restarts.
    fn recover(&mut self, e: &InstanceError) -> Result<(), String> {
        let acceptable =
            |message: &str| message.contains("shared window of region") || message.contains("interrupted");
        let why = match e {
            InstanceError::Trapped { message } if acceptable(message) => None,
            InstanceError::Interrupted { .. } | InstanceError::Killed => None,
            InstanceError::NotRunning { state: RunState::Trapped } => {
                // The trap happened while callbacks were delivered between two calls.
                let status = self.b.instance_status(self.driver).map_err(fail("status"))?;
                let last = status.last_trap.unwrap_or_default();
                (!acceptable(&last)).then(|| format!("trapped between calls: {last}"))
            }
            InstanceError::ShuttingDown => {
                let status = self.b.instance_status(self.driver).map_err(fail("status"))?;
                Some(format!(
                    "the call never answered (a panic in the broker?); last trap: {}",
                    status.last_trap.unwrap_or_default()
                ))
            }
            other => Some(other.to_string()),
        };
        if let Some(why) = why {
            return Err(why);
        }
        self.b.restart_instance(self.driver).map_err(fail("restart"))?;
        self.set_up_driver()
    }

    fn play(&mut self, op: &AbiOp, report: &mut Report) -> Result<(), String> {
        let [a, b, c, d, e, f] = op.args;
        let args = [
            Val::I32(i32::from(op.func)),
            Val::I64(a),
            Val::I64(b),
            Val::I64(c),
            Val::I64(d),
            Val::I64(e),
            Val::I64(f),
        ];
        let rc = match self.b.call(self.driver, "op", &args) {
            Ok(v) => match v.as_slice() {
                [Val::I32(rc)] => *rc,
                other => return Err(format!("op returned {other:?}")),
            },
            Err(Error::Instance(e)) => {
                report.restarts += 1;
                report.statuses.push(None);
                return self.recover(&e);
            }
            Err(e) => return Err(format!("call failed: {e}")),
        };
        report.statuses.push(Some(rc));
        let func = usize::from(op.func) % FUNCS;
        let ok = if op.import() == broker_abi::func::ABI_VERSION {
            if rc != broker_abi::VERSION {
                return Err(format!("abi_version returned {rc}"));
            }
            true
        } else {
            match (rc, Status::from_code(rc)) {
                (GUARD_BROKEN, _) => {
                    return Err("the broker wrote guest memory outside the ranges it was given".into())
                }
                (NOT_SET_UP, _) => return Err("the driver was not set up".into()),
                (_, None) => return Err(format!("undocumented status {rc}")),
                (_, Some(s)) => s == Status::Ok,
            }
        };
        if ok {
            report.succeeded[func] += 1;
        }
        self.check_frozen_regions()
    }

    /// Deletes both instances and checks that nothing they held survives them.
    fn finish(self) -> Result<(), String> {
        let b = self.b;
        b.delete_instance(self.driver).map_err(fail("deleting the driver"))?;
        b.delete_instance(self.reader).map_err(fail("deleting the reader"))?;
        if b.window_count() != 0 {
            return Err(format!("{} shared windows outlived their instances", b.window_count()));
        }
        for (tenant, name, before) in [(self.t, "t", self.usage_t), (self.owner, "owner", self.usage_owner)] {
            let after = b.tenant_usage(tenant).map_err(fail("usage"))?;
            if after.handles != before.handles {
                return Err(format!(
                    "tenant {name} is charged {} handles after its instances stopped (the regions' roots \
                     need {})",
                    after.handles, before.handles
                ));
            }
            // Regions the driver created outlive it, and each holds a page-version table in the
            // tenant's memory (8 bytes per 4 KiB page): what must be gone is the instances' memory.
            let instance_memory = after.memory_bytes.checked_sub(crate::page_tables(b, tenant));
            if after.instances != before.instances || instance_memory != Some(before.memory_bytes) {
                return Err(format!("tenant {name} still uses {after:?} after its instances stopped"));
            }
        }
        // Each region's root, and its membership if the tenant's apps may open it.
        let regions: Vec<_> = b.regions(self.t).into_iter().chain(b.regions(self.owner)).collect();
        let roots = regions.len() + regions.iter().filter(|r| r.members != Rights::NONE).count();
        if b.capability_count() != roots {
            return Err(format!(
                "{} capabilities outlived the instances ({roots} regions' roots and memberships remain)",
                b.capability_count()
            ));
        }
        self.check_frozen_regions()
    }
}

/// Plays `ops` (see [`Fuzzer::run`]) with every pointer class enabled.
///
/// # Errors
/// The first broken invariant, naming the op (its index, import and arguments).
///
/// # Panics
/// If the broker or the guest cannot be set up at all (a harness problem, not a finding).
pub fn run(ops: &[AbiOp]) -> Result<(), String> {
    run_with(ops, Options::default()).map(|_| ())
}

/// As [`run`], with options, and says what the run reached. Runs share one process-wide [`Fuzzer`]
/// (one at a time), which is as good as a fresh broker because every run leaves it empty.
///
/// # Errors
/// As [`run`].
///
/// # Panics
/// As [`run`].
pub fn run_with(ops: &[AbiOp], options: Options) -> Result<Report, String> {
    static SHARED: OnceLock<Mutex<Fuzzer>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(Fuzzer::new())).lock().run(ops, options)
}
