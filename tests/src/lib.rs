//! Harness for the integration tests: builds brokers, tenants and instances of the repository's real
//! guest apps, and calls exports with terse helpers, so each test reads as the scenario it checks.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use broker::{Broker, BrokerConfig, InstanceConfig, InstanceId, Quotas, TenantId, Val};
pub use broker_abi::Status;

/// A broker with two workers, as on the CI machine.
pub fn broker() -> Broker {
    Broker::new(BrokerConfig { workers: 2 }).expect("broker starts")
}

/// Creates a tenant with default quotas.
pub fn tenant(b: &Broker, name: &str) -> TenantId {
    b.create_tenant(name, Quotas::default()).expect("tenant created")
}

/// Starts an instance of a guest (loading its module into the tenant under the guest's name first).
pub fn start(b: &Broker, tenant: TenantId, guest: &str, instance: &str) -> InstanceId {
    start_with(b, tenant, guest, instance, InstanceConfig::default())
}

/// As [`start`], with an explicit config.
pub fn start_with(
    b: &Broker,
    tenant: TenantId,
    guest: &str,
    instance: &str,
    config: InstanceConfig,
) -> InstanceId {
    let (_, path) = broker_guests::ALL.iter().find(|(n, _)| *n == guest).expect("a guest of this repository");
    let wasm = broker_guests::read(path).expect("guest built");
    match b.load_module(tenant, guest, &wasm) {
        Ok(()) | Err(broker::Error::ModuleExists(_)) => {}
        Err(e) => panic!("loading {guest}: {e}"),
    }
    b.start_instance(tenant, guest, instance, config).expect("instance starts")
}

/// An argument for [`call`].
pub trait Arg {
    /// The wasm value.
    fn val(self) -> Val;
}

impl Arg for i32 {
    fn val(self) -> Val {
        Val::I32(self)
    }
}

impl Arg for i64 {
    fn val(self) -> Val {
        Val::I64(self)
    }
}

impl Arg for u32 {
    fn val(self) -> Val {
        Val::I32(i32::from_ne_bytes(self.to_ne_bytes()))
    }
}

/// Builds an argument list: `args![h, 0i64, 8]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::Arg::val($a)),*] };
}

/// Calls an export returning one integer and unwraps the broker-level result.
pub fn call(b: &Broker, inst: InstanceId, export: &str, args: &[Val]) -> i64 {
    b.call_i64(inst, export, args).unwrap_or_else(|e| panic!("calling {export}: {e}"))
}

/// The code of a status, as the guests return it.
pub fn code(s: Status) -> i64 {
    i64::from(s.code())
}

/// A handle returned by a guest export (non-negative), as the `i32` the guests take back.
pub fn handle(v: i64) -> i32 {
    assert!(
        v > 0,
        "expected a handle, got status {v} ({:?})",
        i32::try_from(v).ok().and_then(Status::from_code)
    );
    i32::from_ne_bytes(u32::try_from(v).expect("handles are u32").to_ne_bytes())
}

/// Runs `f` on a thread and fails the test if it does not finish within `secs` seconds.
pub fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs)).expect("test did not finish in time: deadlock?")
}
