//! Harness for the integration tests: builds brokers, tenants and instances of the repository's real
//! guest apps, and calls exports with terse helpers, so each test reads as the scenario it checks.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use broker::{Broker, BrokerConfig, InstanceConfig, InstanceId, Quotas, TenantId, UiConfig, Val};
pub use broker_abi::Status;

pub mod fuzz;

/// A broker with two workers, as on the CI machine, offering the scenarios' `sensor.sample` service
/// (the engine registers no services of its own) and no extension: an embedded broker's default, which
/// refuses apps that import the UI toolkit (see [`broker_with_ui`]).
pub fn broker() -> Broker {
    broker_from(BrokerConfig { workers: 2, ..BrokerConfig::default() })
}

/// As [`broker`], with the UI toolkit extension turned on (its default pool of trampolines), for tests
/// whose apps import `broker_ui_v1`: the toolkit's own, and hostile apps that attack it.
pub fn broker_with_ui() -> Broker {
    broker_from(BrokerConfig { workers: 2, ui: Some(UiConfig::default()), ..BrokerConfig::default() })
}

/// A broker of `config` offering the `sensor.sample` service.
fn broker_from(config: BrokerConfig) -> Broker {
    let b = Broker::new(config).expect("broker starts");
    let sensor = broker_scenario::expect::sensor_service();
    b.register_service(broker_scenario::expect::SENSOR_SERVICE, None, sensor).expect("sensor service");
    b
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

/// The memory a tenant's regions' page-version tables take (8 bytes per 4 KiB page), which its
/// `memory_bytes` usage includes beside its instances' memory.
pub fn page_tables(b: &Broker, t: TenantId) -> u64 {
    b.regions(t).iter().map(|r| r.size.div_ceil(4096) * 8).sum()
}

/// Makes a `handle_attacker` instance open `name` (`region_open` of its scratch buffer, where the name
/// is written eight bytes at a time); the handle, or the status.
pub fn open_in_attacker(b: &Broker, app: InstanceId, name: &str) -> i64 {
    for (i, chunk) in name.as_bytes().chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        let (at, n) = (i32::try_from(i * 8).expect("small"), i32::try_from(chunk.len()).expect("small"));
        assert_eq!(call(b, app, "scratch_put", args![at, i64::from_le_bytes(w), n]), 0);
    }
    call(b, app, "open_scratch", args![i32::try_from(name.len()).expect("short name")])
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

/// A real `broker serve` daemon on `127.0.0.1:0`, with its own runtime; stopped gracefully on drop.
pub struct Daemon {
    /// The runtime the server and test clients run on.
    pub rt: tokio::runtime::Runtime,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// The admin token.
    pub admin: String,
    /// The control plane (and through it the broker), for checks from the host side.
    pub plane: std::sync::Arc<broker_control::ControlPlane>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), broker_control::server::ServeError>>>,
}

impl Daemon {
    /// Starts a daemon, persisting into `state_dir` if given (WASI apps' directories under its
    /// `app-data`), with the UI toolkit extension on as `broker serve` has it by default. The listener is bound before the server task is spawned, so
    /// clients can connect at once (no sleeps).
    pub fn start(state_dir: Option<std::path::PathBuf>) -> Daemon {
        // As `broker serve` does: WASI apps' directories live in the state dir.
        let app_data = state_dir.as_ref().map(|d| d.join("app-data"));
        let config =
            BrokerConfig { workers: 2, ui: Some(UiConfig::default()), app_data, ..BrokerConfig::default() };
        Daemon::with_broker(broker_from(config), state_dir)
    }

    /// As [`Daemon::start`], serving `broker` (one built as `broker serve --no-ui` would, say).
    pub fn with_broker(broker: Broker, state_dir: Option<std::path::PathBuf>) -> Daemon {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let admin = "admin-secret-token".to_owned();
        let broker = std::sync::Arc::new(broker);
        let plane = std::sync::Arc::new(
            broker_control::ControlPlane::open(broker, &admin, state_dir.clone()).expect("control plane"),
        );
        let config = broker_control::ServeConfig { state_dir, ..broker_control::ServeConfig::default() };
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let p = std::sync::Arc::clone(&plane);
        let server = rt.spawn(async move {
            broker_control::serve(p, listener, &config, async {
                let _ = rx.await;
            })
            .await
        });
        Daemon { rt, addr, admin, plane, shutdown: Some(tx), server: Some(server) }
    }

    /// A client sending `token` as its bearer token (none if `None`).
    pub fn client(&self, token: Option<&str>) -> Client {
        let channel = self.rt.block_on(async {
            tonic::transport::Endpoint::from_shared(self.addr.clone())
                .expect("endpoint")
                .connect()
                .await
                .expect("connect")
        });
        Client {
            inner: broker_proto::pb::broker_client::BrokerClient::new(channel),
            token: token.map(str::to_owned),
        }
    }

    /// Stops the server gracefully (drain, flush) and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let outcome = self.rt.block_on(h).expect("server task");
            outcome.expect("server ends cleanly");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A gRPC client with a bearer token.
#[derive(Clone)]
pub struct Client {
    /// The generated client.
    pub inner: broker_proto::pb::broker_client::BrokerClient<tonic::transport::Channel>,
    token: Option<String>,
}

impl Client {
    /// Wraps a message in a request carrying the token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii token"));
        }
        r
    }
}
