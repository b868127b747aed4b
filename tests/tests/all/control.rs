//! The gRPC control API on a real server bound to 127.0.0.1:0: authentication and tenant isolation,
//! every resource's RPCs with their bad inputs and precise status codes, the watch stream, health and
//! reflection, persistence across a restart, and the CLI against the same server.

use broker_proto::pb;
use broker_tests::{Client, Daemon};
use clap::Parser as _;
use tonic::Code;

macro_rules! rpc {
    ($d:expr, $c:expr, $method:ident, $msg:expr) => {
        $d.rt.block_on(async { $c.inner.clone().$method($c.req($msg)).await }).map(|r| r.into_inner())
    };
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

fn region_ref(tenant: &str, name: &str) -> pb::RegionRef {
    pb::RegionRef { tenant: tenant.into(), name: name.into() }
}

/// Creates tenant `name` and returns a client holding a fresh token of it.
fn tenant(d: &Daemon, admin: &Client, name: &str) -> Client {
    tenant_with(d, admin, name, None)
}

/// As [`tenant`], with `quotas` (`None`: the broker's defaults).
fn tenant_with(d: &Daemon, admin: &Client, name: &str, quotas: Option<pb::Quotas>) -> Client {
    rpc!(d, admin, create_tenant, pb::CreateTenantRequest { name: name.into(), quotas }).expect("tenant");
    let t = rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: name.into(), rotate: false })
        .expect("token");
    d.client(Some(&t.token))
}

/// Quotas small enough for one test's tenant, with the given optional fields set.
fn small_quotas(extra: pb::Quotas) -> pb::Quotas {
    pb::Quotas {
        region_bytes: 1 << 20,
        regions: 4,
        instances: 4,
        handles: 64,
        memory_bytes: 1 << 30,
        ..extra
    }
}

fn region(d: &Daemon, c: &Client, name: &str, size: u64, mode: pb::Mode, backing: pb::Backing) -> pb::Region {
    let msg = pb::CreateRegionRequest {
        tenant: String::new(),
        name: name.into(),
        size,
        mode: mode.into(),
        policy: 0,
        backing: backing.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    rpc!(d, c, create_region, msg).expect("region")
}

fn upload(d: &Daemon, c: &Client, name: &str, wasm: &[u8]) {
    let msg = pb::UploadModuleRequest { tenant: String::new(), name: name.into(), wasm: wasm.to_vec() };
    rpc!(d, c, upload_module, msg).expect("module");
}

fn start(d: &Daemon, c: &Client, module: &str, name: &str) {
    let msg = pb::StartInstanceRequest {
        tenant: String::new(),
        module: module.into(),
        name: name.into(),
        config: None,
    };
    rpc!(d, c, start_instance, msg).expect("instance");
}

fn call(
    d: &Daemon,
    c: &Client,
    instance: &str,
    export: &str,
    args: Vec<pb::Value>,
) -> Result<Vec<pb::Value>, tonic::Status> {
    let msg = pb::CallInstanceRequest {
        tenant: String::new(),
        instance: instance.into(),
        export: export.into(),
        args,
    };
    rpc!(d, c, call_instance, msg).map(|r| r.results)
}

fn i32v(v: i32) -> pb::Value {
    pb::Value { value: Some(pb::value::Value::I32(v)) }
}

fn i64v(v: i64) -> pb::Value {
    pb::Value { value: Some(pb::value::Value::I64(v)) }
}

fn as_i64(vals: &[pb::Value]) -> i64 {
    match vals {
        [pb::Value { value: Some(pb::value::Value::I64(v)) }] => *v,
        other => panic!("expected one i64, got {other:?}"),
    }
}

#[test]
fn authentication_and_tenant_isolation() {
    let d = Daemon::start(None);
    let anon = d.client(None);
    let wrong = d.client(Some("not-a-token"));
    let admin = d.client(Some(&d.admin));
    assert_eq!(code(rpc!(d, anon, list_tenants, pb::ListTenantsRequest {})), Code::Unauthenticated);
    assert_eq!(code(rpc!(d, wrong, list_tenants, pb::ListTenantsRequest {})), Code::Unauthenticated);

    let a = tenant(&d, &admin, "a");
    let b = tenant(&d, &admin, "b");
    region(&d, &b, "secret", 64, pb::Mode::Handle, pb::Backing::Ephemeral);
    // Admin-only calls refuse tenant tokens.
    assert_eq!(
        code(rpc!(d, a, create_tenant, pb::CreateTenantRequest { name: "c".into(), quotas: None })),
        Code::PermissionDenied
    );
    assert_eq!(
        code(rpc!(d, a, issue_token, pb::IssueTokenRequest { tenant: "a".into(), rotate: false })),
        Code::PermissionDenied
    );
    // A sees only itself and cannot name B.
    let visible = rpc!(d, a, list_tenants, pb::ListTenantsRequest {}).expect("list").tenants;
    assert_eq!(visible.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(
        code(rpc!(d, a, list_regions, pb::ListRegionsRequest { tenant: "b".into() })),
        Code::PermissionDenied
    );
    assert_eq!(code(rpc!(d, a, get_region, region_ref("b", "secret"))), Code::PermissionDenied);
    let read = pb::ReadRegionRequest { region: Some(region_ref("b", "secret")), offset: 0, len: 8 };
    assert_eq!(code(rpc!(d, a, read_region, read)), Code::PermissionDenied);
    assert_eq!(
        code(rpc!(d, a, get_region, region_ref("", "secret"))),
        Code::NotFound,
        "A has no region of that name"
    );
    assert!(rpc!(d, a, list_regions, pb::ListRegionsRequest { tenant: String::new() })
        .expect("list")
        .regions
        .is_empty());
    // The admin must name the tenant.
    assert_eq!(
        code(rpc!(d, admin, list_regions, pb::ListRegionsRequest { tenant: String::new() })),
        Code::InvalidArgument
    );
    assert_eq!(
        rpc!(d, admin, list_regions, pb::ListRegionsRequest { tenant: "b".into() })
            .expect("list")
            .regions
            .len(),
        1
    );

    // Rotation revokes earlier tokens.
    let fresh = rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "a".into(), rotate: true })
        .expect("rotate");
    assert_eq!(code(rpc!(d, a, list_tenants, pb::ListTenantsRequest {})), Code::Unauthenticated);
    let a2 = d.client(Some(&fresh.token));
    assert!(rpc!(d, a2, list_tenants, pb::ListTenantsRequest {}).is_ok());
}

#[test]
fn tenants_and_quotas_bad_inputs() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let t = tenant(&d, &admin, "t");
    assert_eq!(
        code(rpc!(d, admin, create_tenant, pb::CreateTenantRequest { name: "t".into(), quotas: None })),
        Code::AlreadyExists
    );
    assert_eq!(
        code(rpc!(
            d,
            admin,
            create_tenant,
            pb::CreateTenantRequest { name: "bad name".into(), quotas: None }
        )),
        Code::InvalidArgument
    );
    assert_eq!(
        code(rpc!(d, admin, set_quotas, pb::SetQuotasRequest { tenant: "t".into(), quotas: None })),
        Code::InvalidArgument
    );
    assert_eq!(
        code(rpc!(
            d,
            admin,
            set_quotas,
            pb::SetQuotasRequest { tenant: "nobody".into(), quotas: Some(pb::Quotas::default()) }
        )),
        Code::NotFound
    );
    assert_eq!(
        code(rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "nobody".into(), rotate: false })),
        Code::NotFound
    );
    // As a client built before window quotas existed sends it: no window fields.
    let quotas = pb::Quotas {
        region_bytes: 100,
        regions: 1,
        instances: 1,
        handles: 10,
        memory_bytes: 1 << 30,
        ..Default::default()
    };
    let updated =
        rpc!(d, admin, set_quotas, pb::SetQuotasRequest { tenant: "t".into(), quotas: Some(quotas) })
            .expect("quotas");
    assert_eq!(updated.quotas.map(|q| q.regions), Some(1));
    assert_eq!(
        updated.quotas.and_then(|q| q.windows),
        Some(broker::Quotas::DEFAULT_WINDOWS),
        "absent: default"
    );
    let too_big = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "r".into(),
        size: 101,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: 0,
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, t, create_region, too_big)), Code::ResourceExhausted);
    region(&d, &t, "r", 100, pb::Mode::Handle, pb::Backing::Ephemeral);
    let second = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "s".into(),
        size: 1,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: 0,
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, t, create_region, second)), Code::ResourceExhausted);
}

#[test]
fn modules_and_instances() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let t = tenant(&d, &admin, "t");
    let empty = pb::UploadModuleRequest { tenant: String::new(), name: "m".into(), wasm: Vec::new() };
    assert_eq!(code(rpc!(d, t, upload_module, empty)), Code::InvalidArgument);
    let junk = pb::UploadModuleRequest { tenant: String::new(), name: "m".into(), wasm: b"junk".to_vec() };
    assert_eq!(code(rpc!(d, t, upload_module, junk)), Code::InvalidArgument);
    upload(&d, &t, "misbehave", broker_guests::RUNTIME_MISBEHAVE_WASM);
    let modules =
        rpc!(d, t, list_modules, pb::ListModulesRequest { tenant: String::new() }).expect("list").modules;
    assert!(modules[0].exports.iter().any(|e| e == "trap"));
    let dup = pb::UploadModuleRequest {
        tenant: String::new(),
        name: "misbehave".into(),
        wasm: broker_guests::RUNTIME_MISBEHAVE_WASM.to_vec(),
    };
    assert_eq!(code(rpc!(d, t, upload_module, dup)), Code::AlreadyExists);

    let nomod = pb::StartInstanceRequest {
        tenant: String::new(),
        module: "nope".into(),
        name: "i".into(),
        config: None,
    };
    assert_eq!(code(rpc!(d, t, start_instance, nomod)), Code::NotFound);
    let long = pb::StartInstanceRequest {
        tenant: String::new(),
        module: "misbehave".into(),
        name: "i".into(),
        config: Some(pb::InstanceConfig { call_timeout_ms: 10 * 3_600_000, ..Default::default() }),
    };
    assert_eq!(code(rpc!(d, t, start_instance, long)), Code::InvalidArgument);
    start(&d, &t, "misbehave", "i");
    assert_eq!(as_i64(&call(&d, &t, "i", "ping", vec![]).expect("ping")), 7);
    assert_eq!(code(call(&d, &t, "i", "nope", vec![])), Code::NotFound);
    assert_eq!(code(call(&d, &t, "i", "ping", vec![i32v(1)])), Code::InvalidArgument);
    assert_eq!(code(call(&d, &t, "i", "ping", vec![pb::Value { value: None }])), Code::InvalidArgument);
    assert_eq!(code(call(&d, &t, "i", "", vec![])), Code::InvalidArgument);
    assert_eq!(code(call(&d, &t, "ghost", "ping", vec![])), Code::NotFound);
    // A trap aborts the call and leaves the instance trapped until restarted.
    assert_eq!(code(call(&d, &t, "i", "trap", vec![])), Code::Aborted);
    let status = rpc!(d, t, get_instance, pb::InstanceRef { tenant: String::new(), name: "i".into() })
        .expect("status");
    assert_eq!(status.state, i32::from(pb::InstanceState::Trapped));
    assert!(status.last_trap.contains("unreachable"), "{}", status.last_trap);
    assert_eq!(code(call(&d, &t, "i", "ping", vec![])), Code::FailedPrecondition);
    rpc!(d, t, restart_instance, pb::InstanceRef { tenant: String::new(), name: "i".into() })
        .expect("restart");
    assert_eq!(as_i64(&call(&d, &t, "i", "ping", vec![]).expect("ping")), 7);
    // Stopped, the instance stays listed, refuses calls and holds its module; restarted, it answers.
    let iref = |name: &str| pb::InstanceRef { tenant: String::new(), name: name.into() };
    let list = || {
        rpc!(d, t, list_instances, pb::ListInstancesRequest { tenant: String::new() })
            .expect("list")
            .instances
    };
    let stopped = i32::from(pb::InstanceState::Stopped);
    rpc!(d, t, stop_instance, iref("i")).expect("stop");
    assert_eq!(rpc!(d, t, get_instance, iref("i")).expect("status").state, stopped);
    assert_eq!(list().iter().map(|i| (i.name.as_str(), i.state)).collect::<Vec<_>>(), [("i", stopped)]);
    let err = call(&d, &t, "i", "ping", vec![]).expect_err("a stopped instance refuses calls");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("stopped"), "{}", err.message());
    rpc!(d, t, stop_instance, iref("i")).expect("stopping a stopped instance is a no-op");
    let module = || pb::ModuleRef { tenant: String::new(), name: "misbehave".into() };
    let err = rpc!(d, t, delete_module, module()).expect_err("a stopped instance holds its module");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("instances i;"), "the message lists it: {}", err.message());
    let restarted = rpc!(d, t, restart_instance, iref("i")).expect("restart");
    assert_eq!((restarted.state, restarted.restarts), (i32::from(pb::InstanceState::Running), 2));
    assert_eq!(as_i64(&call(&d, &t, "i", "ping", vec![]).expect("ping")), 7);
    // Deleted, running or stopped, it is gone.
    start(&d, &t, "misbehave", "j");
    rpc!(d, t, stop_instance, iref("j")).expect("stop");
    rpc!(d, t, delete_instance, iref("i")).expect("delete a running instance");
    rpc!(d, t, delete_instance, iref("j")).expect("delete a stopped instance");
    assert!(list().is_empty());
    for gone in ["i", "j"] {
        assert_eq!(code(rpc!(d, t, get_instance, iref(gone))), Code::NotFound);
        assert_eq!(code(rpc!(d, t, stop_instance, iref(gone))), Code::NotFound);
        assert_eq!(code(rpc!(d, t, restart_instance, iref(gone))), Code::NotFound);
        assert_eq!(code(rpc!(d, t, delete_instance, iref(gone))), Code::NotFound);
        assert_eq!(code(call(&d, &t, gone, "ping", vec![])), Code::NotFound);
    }
    rpc!(d, t, delete_module, pb::ModuleRef { tenant: String::new(), name: "misbehave".into() })
        .expect("delete");
    assert_eq!(
        code(rpc!(d, t, delete_module, pb::ModuleRef { tenant: String::new(), name: "misbehave".into() })),
        Code::NotFound
    );
}

#[test]
fn regions_grants_and_watch() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let alpha = tenant(&d, &admin, "alpha");
    let beta = tenant(&d, &admin, "beta");
    region(&d, &alpha, "data", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    let info = rpc!(d, alpha, get_region, region_ref("", "data")).expect("info");
    assert_eq!(
        (info.size, info.backing),
        (4096, i32::from(pb::Backing::Ephemeral)),
        "ephemeral is the default and says so"
    );

    // Bad inputs.
    let zero = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "z".into(),
        size: 0,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: 0,
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, alpha, create_region, zero)), Code::InvalidArgument);
    let bad_mode = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "z".into(),
        size: 1,
        mode: 99,
        policy: 0,
        backing: 0,
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, alpha, create_region, bad_mode)), Code::InvalidArgument);
    let persistent = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "z".into(),
        size: 1,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: pb::Backing::Persistent.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, alpha, create_region, persistent)), Code::FailedPrecondition, "no state dir");
    let dup = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "data".into(),
        size: 1,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: 0,
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, alpha, create_region, dup)), Code::AlreadyExists);
    assert_eq!(
        code(rpc!(d, alpha, read_region, pb::ReadRegionRequest { region: None, offset: 0, len: 1 })),
        Code::InvalidArgument
    );
    let huge = pb::ReadRegionRequest { region: Some(region_ref("", "data")), offset: 0, len: 1 << 40 };
    assert_eq!(code(rpc!(d, alpha, read_region, huge)), Code::InvalidArgument);
    let past =
        pb::WriteRegionRequest { region: Some(region_ref("", "data")), offset: 4095, data: vec![1, 2] };
    assert_eq!(code(rpc!(d, alpha, write_region, past)), Code::InvalidArgument);

    // A native producer writes; an app of another tenant reads through an API grant.
    let w = pb::WriteRegionRequest {
        region: Some(region_ref("", "data")),
        offset: 0,
        data: 42u64.to_le_bytes().to_vec(),
    };
    assert_eq!(rpc!(d, alpha, write_region, w).expect("write").version, 1);
    upload(&d, &beta, "app", broker_guests::HANDLE_APP_WASM);
    start(&d, &beta, "app", "reader");
    let bad_rights = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/reader".into(),
        rights: 0x100,
        offset: 0,
        len: None,
    };
    assert_eq!(code(rpc!(d, alpha, grant, bad_rights)), Code::InvalidArgument);
    let nobody = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/nobody".into(),
        rights: 1,
        offset: 0,
        len: None,
    };
    assert_eq!(code(rpc!(d, alpha, grant, nobody)), Code::NotFound);
    let out_of_range = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/reader".into(),
        rights: 1,
        offset: 4000,
        len: Some(200),
    };
    assert_eq!(code(rpc!(d, alpha, grant, out_of_range)), Code::InvalidArgument);
    let g = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/reader".into(),
        rights: 1,
        offset: 0,
        len: None,
    };
    let grant = rpc!(d, alpha, grant, g).expect("grant").grant_id;
    let h = as_i64(&call(&d, &beta, "reader", "open", vec![i32v(1)]).expect("open"));
    assert!(h > 0);
    let h = i32::try_from(h).expect("handle");
    assert_eq!(as_i64(&call(&d, &beta, "reader", "load_u64", vec![i32v(h), i64v(0)]).expect("load")), 42);
    // Beta cannot grant or revoke alpha's region.
    let steal = pb::RevokeRequest { region: Some(region_ref("alpha", "data")), grant_id: grant };
    assert_eq!(code(rpc!(d, beta, revoke, steal)), Code::PermissionDenied);
    assert_eq!(
        code(rpc!(
            d,
            alpha,
            revoke,
            pb::RevokeRequest { region: Some(region_ref("", "data")), grant_id: 999 }
        )),
        Code::NotFound
    );
    rpc!(d, alpha, revoke, pb::RevokeRequest { region: Some(region_ref("", "data")), grant_id: grant })
        .expect("revoke");
    let stale = i64::from(broker_abi::Status::StaleHandle.code());
    assert_eq!(as_i64(&call(&d, &beta, "reader", "load_u64", vec![i32v(h), i64v(0)]).expect("load")), stale);
    // The reader's host calls are counted: an open and two loads at least.
    let beta_stats = rpc!(d, beta, stats, pb::StatsRequest { tenant: String::new() }).expect("stats");
    let reader = beta_stats.instances.iter().find(|i| i.name == "reader").expect("the reader");
    assert!(reader.traffic.as_ref().is_some_and(|t| t.host_calls >= 3), "{:?}", reader.traffic);

    // The watch stream reports each change with its version and range.
    let mut stream =
        d.rt.block_on(async { alpha.inner.clone().watch_region(alpha.req(region_ref("", "data"))).await })
            .expect("watch")
            .into_inner();
    for (i, off) in [(2u64, 8u64), (3, 100)] {
        let w =
            pb::WriteRegionRequest { region: Some(region_ref("", "data")), offset: off, data: vec![7; 4] };
        assert_eq!(rpc!(d, alpha, write_region, w).expect("write").version, i);
        let e = d.rt.block_on(stream.message()).expect("stream").expect("event");
        assert_eq!((e.version, e.offset, e.len, e.missed), (i, off, 4, 0));
    }
    drop(stream);

    let stats = rpc!(d, alpha, stats, pb::StatsRequest { tenant: String::new() }).expect("stats");
    assert_eq!(stats.regions[0].traffic.as_ref().map(|t| t.bytes_in), Some(8 + 4 + 4));
    rpc!(d, alpha, destroy_region, region_ref("", "data")).expect("destroy");
    assert_eq!(code(rpc!(d, alpha, get_region, region_ref("", "data"))), Code::NotFound);
    assert_eq!(code(rpc!(d, alpha, destroy_region, region_ref("", "data"))), Code::NotFound);
}

#[test]
fn health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let d = Daemon::start(None);
    d.rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(d.addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: "broker.v1.Broker".into() })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(status.status, i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving));
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.message().await.expect("stream").expect("response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected {response:?}")
        };
        assert!(list.service.iter().any(|s| s.name == "broker.v1.Broker"), "{list:?}");
    });
}

#[test]
fn state_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let (alpha_token, beta_token);
    {
        let d = Daemon::start(Some(dir.clone()));
        let admin = d.client(Some(&d.admin));
        let alpha = tenant(&d, &admin, "alpha");
        let beta = tenant(&d, &admin, "beta");
        alpha_token =
            rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "alpha".into(), rotate: false })
                .expect("token")
                .token;
        beta_token =
            rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "beta".into(), rotate: false })
                .expect("token")
                .token;
        region(&d, &alpha, "data", 10_000, pb::Mode::Mirror, pb::Backing::Persistent);
        region(&d, &alpha, "scratch", 256, pb::Mode::Handle, pb::Backing::Ephemeral);
        for (name, byte) in [("data", 9u8), ("scratch", 5)] {
            let w = pb::WriteRegionRequest {
                region: Some(region_ref("", name)),
                offset: 100,
                data: vec![byte; 8],
            };
            rpc!(d, alpha, write_region, w).expect("write");
        }
        assert!(rpc!(d, alpha, flush_region, region_ref("", "data")).expect("flush").persistent);
        assert!(!rpc!(d, alpha, flush_region, region_ref("", "scratch")).expect("flush").persistent);
        upload(&d, &beta, "app", broker_guests::HANDLE_APP_WASM);
        start(&d, &beta, "app", "reader");
        let g = pb::GrantRequest {
            region: Some(region_ref("", "data")),
            instance: "beta/reader".into(),
            rights: 1,
            offset: 0,
            len: Some(16),
        };
        rpc!(d, alpha, grant, g).expect("grant");
        d.stop();
    }
    let d = Daemon::start(Some(dir.clone()));
    let alpha = d.client(Some(&alpha_token));
    let beta = d.client(Some(&beta_token));
    let read = |name: &str| {
        let r = pb::ReadRegionRequest { region: Some(region_ref("", name)), offset: 100, len: 8 };
        rpc!(d, alpha, read_region, r).expect("read").data
    };
    assert_eq!(read("data"), vec![9; 8], "the flushed persistent region kept its bytes");
    assert_eq!(read("scratch"), vec![0; 8], "the ephemeral region came back empty");
    let info = rpc!(d, alpha, get_region, region_ref("", "data")).expect("info");
    assert_eq!((info.mode, info.backing), (i32::from(pb::Mode::Mirror), i32::from(pb::Backing::Persistent)));
    // The instance is running again, and the grant (16 bytes, read-only) was re-applied to it.
    let instances = rpc!(d, beta, list_instances, pb::ListInstancesRequest { tenant: String::new() })
        .expect("list")
        .instances;
    assert_eq!(instances.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["reader"]);
    let h = as_i64(&call(&d, &beta, "reader", "open", vec![i32v(1)]).expect("open"));
    assert!(h > 0, "beta/reader can open alpha/data again: {h}");
    let h = i32::try_from(h).expect("handle");
    assert_eq!(as_i64(&call(&d, &beta, "reader", "info_len", vec![i32v(h)]).expect("info")), 16);
    assert_eq!(as_i64(&call(&d, &beta, "reader", "info_rights", vec![i32v(h)]).expect("info")), 1);
    d.stop();
}

#[test]
fn cli_talks_to_the_daemon() {
    let d = Daemon::start(None);
    let run = |args: &[&str]| -> (bool, String) {
        let mut full = vec!["broker"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--addr", &d.addr, "--token", &d.admin]);
        let cli = broker_cli::cli::Cli::try_parse_from(full).expect("valid arguments");
        let mut out = Vec::new();
        let ok = broker_cli::cli::run(cli, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        match ok {
            Ok(true) => (true, text),
            Ok(false) => (false, text),
            Err(e) => (false, e.to_string()),
        }
    };
    let (ok, text) = run(&["tenant", "create", "acme", "--regions", "3", "--cpu-shares", "2048"]);
    assert!(ok, "{text}");
    assert!(text.contains("acme") && text.contains("0/3"), "{text}");
    let (ok, text) = run(&["tenant", "list", "--json"]);
    assert!(ok, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json[0]["quotas"]["cpu_shares"], 2048);
    assert_eq!(json[0]["quotas"]["regions"], 3);
    assert_eq!(json[0]["usage"]["events"], 0);
    let (ok, text) = run(&["tenant", "quotas", "acme", "--cpu-shares", "0"]);
    assert!(!ok && text.contains("quotas.cpu_shares") && text.contains("1 to 65536"), "{text}");
    let (ok, text) = run(&["tenant", "quotas", "acme", "--instances", "2", "--json"]);
    assert!(ok, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json[0]["quotas"]["cpu_shares"], 2048, "unset flags keep their value");
    let (ok, text) =
        run(&["region", "create", "data", "--size", "4096", "--mode", "mirror", "--tenant", "acme"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["region", "write", "data", "--hex", "2a2b", "--tenant", "acme"]);
    assert!(ok && text.contains("version 1"), "{text}");
    let (ok, text) = run(&["region", "list", "--tenant", "acme", "--json"]);
    assert!(ok, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json[0]["name"], "data");
    assert_eq!(json[0]["mode"], "MODE_MIRROR");
    assert_eq!(json[0]["version"], 1);
    let (ok, text) = run(&["region", "read", "data", "--len", "3", "--tenant", "acme"]);
    assert!(ok && text.trim() == "2a2b00", "{text}");
    let (ok, text) = run(&["region", "info", "missing", "--tenant", "acme"]);
    assert!(!ok && text.contains("not found") && text.contains("hint:"), "errors say what to do: {text}");
    let (ok, text) = run(&["region", "write", "data", "--hex", "zz", "--tenant", "acme"]);
    assert!(!ok && text.contains("bad hex"), "{text}");
    // An instance's life: stopped (listed, holding its module), then deleted.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let wasm = tmp.path().join("app.wasm");
    std::fs::write(&wasm, broker_guests::HANDLE_APP_WASM).expect("write the module");
    let (ok, text) = run(&["module", "upload", "app", &wasm.to_string_lossy(), "--tenant", "acme"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["instance", "start", "i", "--module", "app", "--tenant", "acme"]);
    assert!(ok && text.contains("running"), "{text}");
    let (ok, text) = run(&["instance", "stop", "i", "--tenant", "acme"]);
    assert!(ok && text.contains("stopped instance i"), "{text}");
    let (ok, text) = run(&["instance", "status", "i", "--tenant", "acme", "--json"]);
    assert!(ok, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json[0]["state"], "stopped");
    let (ok, text) = run(&["module", "delete", "app", "--tenant", "acme"]);
    assert!(!ok && text.contains("instances i") && text.contains("hint:"), "{text}");
    let (ok, text) = run(&["instance", "delete", "i", "--tenant", "acme"]);
    assert!(ok && text.contains("deleted instance i"), "{text}");
    let (ok, text) = run(&["instance", "status", "i", "--tenant", "acme"]);
    assert!(!ok && text.contains("not found"), "{text}");
    let (ok, text) = run(&["module", "delete", "app", "--tenant", "acme"]);
    assert!(ok, "{text}");
    for (verb, says) in [("stop", "until `restart`"), ("delete", "quota are freed")] {
        let help = broker_cli::cli::Cli::try_parse_from(["broker", "instance", verb, "--help"])
            .expect_err("--help prints the help")
            .to_string();
        assert!(help.contains(says), "`broker instance {verb} --help` explains it:\n{help}");
    }
    // A wrong address fails with a connection hint.
    let cli = broker_cli::cli::Cli::try_parse_from([
        "broker",
        "tenant",
        "list",
        "--addr",
        "http://127.0.0.1:1",
        "--token",
        "x",
    ])
    .expect("args");
    let err = broker_cli::cli::run(cli, &mut Vec::new()).expect_err("nothing listens there");
    assert!(err.to_string().contains("is `broker serve` running"), "{err}");
}

// Every RPC of the service, table-driven: who may call it, and what each request field may hold.

/// One RPC with a fixed request, called as whichever client the test passes.
type Call<'a> = Box<dyn Fn(&Client) -> Result<(), tonic::Status> + 'a>;

/// A row of an RPC table, named after the RPC: `row!(d, get_region, region_ref("alpha", "data"))`.
macro_rules! row {
    ($d:expr, $method:ident, $msg:expr) => {
        (
            rpc_name(stringify!($method)),
            Box::new(move |c: &Client| rpc!($d, c, $method, $msg).map(drop)) as Call<'_>,
        )
    };
}

/// The RPCs of `broker.v1.Broker`, read from the proto itself, so a table that misses one fails.
fn proto_rpcs() -> Vec<&'static str> {
    include_str!("../../../proto/broker.proto")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect()
}

/// `create_tenant` -> `CreateTenant`.
fn rpc_name(method: &str) -> String {
    method
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Everything a tenant owns, as the API reports it: compared before and after an attack.
fn tenant_view(
    d: &Daemon,
    admin: &Client,
    owner: &Client,
) -> (Vec<pb::Tenant>, pb::StatsResponse, Vec<pb::Module>, Vec<pb::Instance>, Vec<pb::Region>) {
    let tenants = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("tenants").tenants;
    let stats = rpc!(d, owner, stats, pb::StatsRequest { tenant: String::new() }).expect("stats");
    let modules =
        rpc!(d, owner, list_modules, pb::ListModulesRequest { tenant: String::new() }).expect("list").modules;
    let instances = rpc!(d, owner, list_instances, pb::ListInstancesRequest { tenant: String::new() })
        .expect("list")
        .instances;
    let regions =
        rpc!(d, owner, list_regions, pb::ListRegionsRequest { tenant: String::new() }).expect("list").regions;
    (tenants, stats, modules, instances, regions)
}

#[test]
fn every_rpc_needs_a_valid_token_and_keeps_tenants_apart() {
    let daemon = Daemon::start(None);
    let d = &daemon;
    let admin = d.client(Some(&d.admin));
    // alpha owns a module, an instance and a region; beta's app holds a read grant on that region.
    let alpha = tenant(d, &admin, "alpha");
    let beta = tenant(d, &admin, "beta");
    let mallory = tenant(d, &admin, "mallory");
    upload(d, &alpha, "app", broker_guests::HANDLE_APP_WASM);
    start(d, &alpha, "app", "worker");
    region(d, &alpha, "data", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    let bytes: Vec<u8> = (1..=8).collect();
    let w = pb::WriteRegionRequest { region: Some(region_ref("", "data")), offset: 0, data: bytes.clone() };
    assert_eq!(rpc!(d, alpha, write_region, w).expect("write").version, 1);
    upload(d, &beta, "app", broker_guests::HANDLE_APP_WASM);
    start(d, &beta, "app", "reader");
    let g = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/reader".into(),
        rights: 1,
        offset: 0,
        len: None,
    };
    let grant_id = rpc!(d, alpha, grant, g).expect("grant").grant_id;
    let h = as_i64(&call(d, &beta, "reader", "open", vec![i32v(1)]).expect("open alpha/data"));
    let h = i32::try_from(h).expect("a handle");
    let expected = i64::from_le_bytes(bytes.clone().try_into().expect("8 bytes"));
    assert_eq!(
        as_i64(&call(d, &beta, "reader", "load_u64", vec![i32v(h), i64v(0)]).expect("load")),
        expected
    );
    // mallory has objects of its own, so nothing below fails for want of them.
    upload(d, &mallory, "app", broker_guests::HANDLE_APP_WASM);
    start(d, &mallory, "app", "spy");
    let stale_token = mallory.clone();
    let fresh = rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "mallory".into(), rotate: true })
        .expect("rotate");
    let mallory = d.client(Some(&fresh.token));
    let before = tenant_view(d, &admin, &alpha);

    // Every RPC, naming alpha's objects, with the most damaging request it takes.
    let alpha_ref = || region_ref("alpha", "data");
    let wasm = broker_guests::HANDLE_APP_WASM;
    let quotas = Some(pb::Quotas::default());
    let table: Vec<(String, Call<'_>)> = vec![
        row!(d, create_tenant, pb::CreateTenantRequest { name: "alpha2".into(), quotas: None }),
        row!(d, set_quotas, pb::SetQuotasRequest { tenant: "alpha".into(), quotas }),
        row!(d, list_tenants, pb::ListTenantsRequest {}),
        row!(d, issue_token, pb::IssueTokenRequest { tenant: "alpha".into(), rotate: true }),
        row!(
            d,
            upload_module,
            pb::UploadModuleRequest { tenant: "alpha".into(), name: "evil".into(), wasm: wasm.to_vec() }
        ),
        row!(d, list_modules, pb::ListModulesRequest { tenant: "alpha".into() }),
        row!(d, delete_module, pb::ModuleRef { tenant: "alpha".into(), name: "app".into() }),
        row!(
            d,
            start_instance,
            pb::StartInstanceRequest {
                tenant: "alpha".into(),
                module: "app".into(),
                name: "evil".into(),
                config: None
            }
        ),
        row!(
            d,
            call_instance,
            pb::CallInstanceRequest {
                tenant: "alpha".into(),
                instance: "worker".into(),
                export: "ping".into(),
                args: Vec::new()
            }
        ),
        row!(d, stop_instance, pb::InstanceRef { tenant: "alpha".into(), name: "worker".into() }),
        row!(d, restart_instance, pb::InstanceRef { tenant: "alpha".into(), name: "worker".into() }),
        row!(d, delete_instance, pb::InstanceRef { tenant: "alpha".into(), name: "worker".into() }),
        row!(d, get_instance, pb::InstanceRef { tenant: "alpha".into(), name: "worker".into() }),
        row!(d, list_instances, pb::ListInstancesRequest { tenant: "alpha".into() }),
        row!(
            d,
            instance_logs,
            pb::InstanceLogsRequest {
                instance: Some(pb::InstanceRef { tenant: "alpha".into(), name: "worker".into() }),
                follow: true,
                tail: 0
            }
        ),
        row!(
            d,
            create_region,
            pb::CreateRegionRequest {
                tenant: "alpha".into(),
                name: "evil".into(),
                size: 64,
                mode: pb::Mode::Handle.into(),
                policy: 0,
                backing: 0,
                member_rights: broker_abi::rights::ALL,
                replication: 0,
            }
        ),
        row!(
            d,
            set_member_rights,
            pb::SetMemberRightsRequest { region: Some(alpha_ref()), rights: broker_abi::rights::ALL }
        ),
        row!(d, get_region, alpha_ref()),
        row!(d, list_regions, pb::ListRegionsRequest { tenant: "alpha".into() }),
        row!(d, read_region, pb::ReadRegionRequest { region: Some(alpha_ref()), offset: 0, len: 8 }),
        row!(
            d,
            write_region,
            pb::WriteRegionRequest { region: Some(alpha_ref()), offset: 0, data: vec![0xff; 8] }
        ),
        row!(
            d,
            grant,
            pb::GrantRequest {
                region: Some(alpha_ref()),
                instance: "mallory/spy".into(),
                rights: 0x1f,
                offset: 0,
                len: None
            }
        ),
        row!(d, revoke, pb::RevokeRequest { region: Some(alpha_ref()), grant_id }),
        row!(d, destroy_region, alpha_ref()),
        row!(d, flush_region, alpha_ref()),
        row!(d, watch_region, alpha_ref()),
        row!(d, stats, pb::StatsRequest { tenant: "alpha".into() }),
        row!(d, run_scenario, pb::RunScenarioRequest { builtin: "pipeline".into(), ..Default::default() }),
    ];
    let mut names: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut all = proto_rpcs();
    all.sort_unstable();
    assert_eq!(names, all, "the table has one row per RPC of broker.v1.Broker");

    // Calls that need the admin token; ListTenants answers a tenant with its own entry only.
    let admin_only = ["CreateTenant", "SetQuotas", "IssueToken", "RunScenario"];
    let own_only = ["ListTenants"];
    let anonymous = d.client(None);
    let wrong = d.client(Some(&format!("brk_{}", "0".repeat(64))));
    for (rpc, call) in &table {
        for (who, client) in
            [("no token", &anonymous), ("a wrong token", &wrong), ("a rotated token", &stale_token)]
        {
            let got = call(client).map_err(|s| s.code());
            assert_eq!(got, Err(Code::Unauthenticated), "{rpc} with {who}");
        }
        for (who, client) in [("mallory", &mallory), ("beta, which holds a grant on alpha/data", &beta)] {
            let got = call(client).map_err(|s| s.code());
            if own_only.contains(&rpc.as_str()) {
                assert_eq!(got, Ok(()), "{rpc} as {who}");
            } else {
                let why = if admin_only.contains(&rpc.as_str()) {
                    "an admin-only call"
                } else {
                    "naming alpha's objects"
                };
                assert_eq!(got, Err(Code::PermissionDenied), "{rpc} as {who}: {why}");
            }
        }
    }
    // Admin-only calls refuse a tenant token even when it names its own tenant.
    let own_quotas = pb::SetQuotasRequest { tenant: "mallory".into(), quotas: Some(pb::Quotas::default()) };
    assert_eq!(code(rpc!(d, mallory, set_quotas, own_quotas)), Code::PermissionDenied);
    let own_token = pb::IssueTokenRequest { tenant: "mallory".into(), rotate: false };
    assert_eq!(code(rpc!(d, mallory, issue_token, own_token)), Code::PermissionDenied);
    let listed = rpc!(d, mallory, list_tenants, pb::ListTenantsRequest {}).expect("list").tenants;
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["mallory"]);

    // Nothing changed: same tenants, quotas and usage; same module, instance (running, same call count),
    // region (same version and traffic); alpha's token still works; beta's grant still reads the bytes.
    let after = tenant_view(d, &admin, &alpha);
    assert_eq!(after, before);
    let (_, _, modules, instances, regions) = &after;
    assert_eq!(modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["app"]);
    assert_eq!(
        instances.iter().map(|i| (i.name.as_str(), i.state)).collect::<Vec<_>>(),
        [("worker", i32::from(pb::InstanceState::Running))]
    );
    assert_eq!(regions.iter().map(|r| (r.name.as_str(), r.version)).collect::<Vec<_>>(), [("data", 1)]);
    let read = pb::ReadRegionRequest { region: Some(region_ref("", "data")), offset: 0, len: 4096 };
    let mut want = bytes;
    want.resize(4096, 0);
    assert_eq!(rpc!(d, alpha, read_region, read).expect("read").data, want);
    assert_eq!(
        as_i64(&call(d, &beta, "reader", "load_u64", vec![i32v(h), i64v(0)]).expect("load")),
        expected
    );
    assert!(as_i64(&call(d, &alpha, "worker", "ping", Vec::new()).expect("the worker still answers")) > 0);
}

/// Checks that a call was refused with `want`, and that the message names `field` (as the server
/// writes field names: in backticks) when given; returns what is wrong, if anything.
fn refusal_mismatch(
    rpc: &str,
    request: &str,
    got: Result<(), tonic::Status>,
    want: Code,
    field: Option<&str>,
) -> Option<String> {
    let status = match got {
        Ok(()) => return Some(format!("{rpc}({request}) succeeded; expected {want:?}")),
        Err(s) => s,
    };
    if status.code() != want {
        return Some(format!(
            "{rpc}({request}): got {:?} {:?}; expected {want:?}",
            status.code(),
            status.message()
        ));
    }
    let quoted = format!("`{}`", field?);
    (!status.message().contains(&quoted))
        .then(|| format!("{rpc}({request}): the message should name {quoted}: {:?}", status.message()))
}

/// One row of the bad-input table: calls `method` with `msg` as `client` and checks the code (and the
/// field the message must name); evaluates to the RPC's name and what went wrong, if anything.
macro_rules! bad {
    ($d:expr, $client:expr, $method:ident, $msg:expr, $code:ident $(, $field:literal)?) => {{
        let msg = $msg;
        let mut shown = format!("{msg:?}");
        if shown.len() > 160 {
            shown = format!("{}...", shown.chars().take(160).collect::<String>());
        }
        let got = rpc!($d, $client, $method, msg).map(drop);
        let field: Option<&str> = None $(.or(Some($field)))?;
        (stringify!($method), refusal_mismatch(stringify!($method), &shown, got, Code::$code, field))
    }};
}

#[test]
fn every_request_field_is_validated() {
    let daemon = Daemon::start(None);
    let d = &daemon;
    let admin = d.client(Some(&d.admin));
    let t = tenant(d, &admin, "t");
    upload(d, &t, "app", broker_guests::HANDLE_APP_WASM);
    start(d, &t, "app", "inst");
    region(d, &t, "data", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    let wasm = || broker_guests::HANDLE_APP_WASM.to_vec();
    let data = || Some(region_ref("", "data"));
    let quotas = || Some(pb::Quotas::default());
    let long = "x".repeat(300);
    let scenario_of = |builtin: &str, scale: f64| pb::RunScenarioRequest {
        builtin: builtin.into(),
        scale,
        ..pb::RunScenarioRequest::default()
    };
    let create_tenant = |name: &str| pb::CreateTenantRequest { name: name.into(), quotas: None };
    let upload_req = |tenant: &str, name: &str, wasm: Vec<u8>| pb::UploadModuleRequest {
        tenant: tenant.into(),
        name: name.into(),
        wasm,
    };
    let start_req = |module: &str, name: &str, call_timeout_ms: u64| pb::StartInstanceRequest {
        tenant: String::new(),
        module: module.into(),
        name: name.into(),
        config: Some(pb::InstanceConfig { call_timeout_ms, ..Default::default() }),
    };
    let call_req = |instance: &str, export: &str, args: Vec<pb::Value>| pb::CallInstanceRequest {
        tenant: String::new(),
        instance: instance.into(),
        export: export.into(),
        args,
    };
    let inst = |name: &str| pb::InstanceRef { tenant: String::new(), name: name.into() };
    let wasi_req = |args: Vec<String>, env: Vec<String>, log_bytes: u64| pb::StartInstanceRequest {
        tenant: String::new(),
        module: "app".into(),
        name: "w".into(),
        config: Some(pb::InstanceConfig { args, env, log_bytes, ..Default::default() }),
    };
    let dirs_req = |path: &str| pb::StartInstanceRequest {
        tenant: "t".into(),
        module: "app".into(),
        name: "w".into(),
        config: Some(pb::InstanceConfig {
            dirs: vec![pb::DirGrant { path: path.into(), guest_path: "/d".into(), writable: true }],
            ..Default::default()
        }),
    };
    let logs_req =
        |instance: Option<pb::InstanceRef>| pb::InstanceLogsRequest { instance, follow: false, tail: 0 };
    let members = |region: Option<pb::RegionRef>, rights: u32| pb::SetMemberRightsRequest { region, rights };
    let create_region =
        |name: &str, size: u64, mode: i32, policy: i32, backing: i32| pb::CreateRegionRequest {
            tenant: String::new(),
            name: name.into(),
            size,
            mode,
            policy,
            backing,
            member_rights: broker_abi::rights::ALL,
            replication: 0,
        };
    let read =
        |region: Option<pb::RegionRef>, offset: u64, len: u64| pb::ReadRegionRequest { region, offset, len };
    let write = |region: Option<pb::RegionRef>, offset: u64, data: Vec<u8>| pb::WriteRegionRequest {
        region,
        offset,
        data,
    };
    let grant =
        |region: Option<pb::RegionRef>, instance: &str, rights: u32, offset: u64, len: Option<u64>| {
            pb::GrantRequest { region, instance: instance.into(), rights, offset, len }
        };
    let quota_req = |tenant: &str, quotas| pb::SetQuotasRequest { tenant: tenant.into(), quotas };
    let shares = |cpu_shares: u64| Some(pb::Quotas { cpu_shares: Some(cpu_shares), ..pb::Quotas::default() });
    let create_weighted =
        |cpu_shares: u64| pb::CreateTenantRequest { name: "w".into(), quotas: shares(cpu_shares) };
    let token_req = |tenant: &str| pb::IssueTokenRequest { tenant: tenant.into(), rotate: false };
    let module_ref = |name: &str| pb::ModuleRef { tenant: String::new(), name: name.into() };
    let modules_of = |tenant: &str| pb::ListModulesRequest { tenant: tenant.into() };
    let instances_of = |tenant: &str| pb::ListInstancesRequest { tenant: tenant.into() };
    let regions_of = |tenant: &str| pb::ListRegionsRequest { tenant: tenant.into() };
    let revoke_req = |region: Option<pb::RegionRef>, grant_id| pb::RevokeRequest { region, grant_id };
    let stats_of = |tenant: &str| pb::StatsRequest { tenant: tenant.into() };
    let no_value = pb::Value { value: None };
    let over_an_hour = 3_600_001;
    let persistent = i32::from(pb::Backing::Persistent);

    let covered = [
        bad!(d, admin, create_tenant, create_tenant(""), InvalidArgument, "name"),
        bad!(d, admin, create_tenant, create_tenant("a/b"), InvalidArgument, "name"),
        bad!(d, admin, create_tenant, create_tenant("two words"), InvalidArgument, "name"),
        bad!(d, admin, create_tenant, create_tenant(&long), InvalidArgument, "name"),
        bad!(d, admin, create_tenant, create_weighted(0), InvalidArgument, "quotas.cpu_shares"),
        bad!(d, admin, create_tenant, create_weighted(65_537), InvalidArgument, "quotas.cpu_shares"),
        bad!(d, admin, create_tenant, create_weighted(u64::MAX), InvalidArgument, "quotas.cpu_shares"),
        bad!(d, admin, set_quotas, quota_req("t", shares(0)), InvalidArgument, "quotas.cpu_shares"),
        bad!(d, admin, set_quotas, quota_req("t", shares(65_537)), InvalidArgument, "quotas.cpu_shares"),
        bad!(d, admin, set_quotas, quota_req("t", None), InvalidArgument, "quotas"),
        bad!(d, admin, set_quotas, quota_req("", quotas()), InvalidArgument, "tenant"),
        bad!(d, admin, set_quotas, quota_req("nobody", quotas()), NotFound),
        bad!(d, admin, issue_token, token_req(""), InvalidArgument, "tenant"),
        bad!(d, admin, issue_token, token_req("nobody"), NotFound),
        bad!(d, t, upload_module, upload_req("", "m", Vec::new()), InvalidArgument, "wasm"),
        bad!(d, t, upload_module, upload_req("", "", wasm()), InvalidArgument, "name"),
        bad!(d, t, upload_module, upload_req("", "a/b", wasm()), InvalidArgument, "name"),
        bad!(d, t, upload_module, upload_req("", "a b", wasm()), InvalidArgument, "name"),
        bad!(d, t, upload_module, upload_req("", "m", b"\0asm junk".to_vec()), InvalidArgument, "wasm"),
        bad!(d, admin, upload_module, upload_req("", "m", wasm()), InvalidArgument, "tenant"),
        bad!(d, admin, upload_module, upload_req("nobody", "m", wasm()), NotFound),
        bad!(d, admin, list_modules, modules_of(""), InvalidArgument, "tenant"),
        bad!(d, admin, list_modules, modules_of("nobody"), NotFound),
        bad!(d, t, delete_module, module_ref(""), InvalidArgument, "name"),
        bad!(d, t, delete_module, module_ref("a/b"), InvalidArgument, "name"),
        bad!(d, t, delete_module, module_ref("nope"), NotFound),
        bad!(d, t, start_instance, start_req("", "i", 0), InvalidArgument, "module"),
        bad!(d, t, start_instance, start_req("a b", "i", 0), InvalidArgument, "module"),
        bad!(d, t, start_instance, start_req("nope", "i", 0), NotFound),
        bad!(d, t, start_instance, start_req("app", "", 0), InvalidArgument, "name"),
        bad!(d, t, start_instance, start_req("app", "x/y", 0), InvalidArgument, "name"),
        bad!(
            d,
            t,
            start_instance,
            start_req("app", "i", over_an_hour),
            InvalidArgument,
            "config.call_timeout_ms"
        ),
        bad!(d, t, start_instance, start_req("app", "inst", 0), AlreadyExists),
        bad!(
            d,
            t,
            start_instance,
            wasi_req(vec![], vec!["NO_EQUALS".into()], 0),
            InvalidArgument,
            "config.env"
        ),
        bad!(d, t, start_instance, wasi_req(vec!["a\0".into()], vec![], 0), InvalidArgument, "config.args"),
        bad!(d, t, start_instance, wasi_req(vec![], vec![], 1), InvalidArgument, "config.log_bytes"),
        bad!(d, admin, start_instance, dirs_req("../up"), InvalidArgument, "config.dirs"),
        bad!(d, t, start_instance, dirs_req("ok"), PermissionDenied),
        bad!(d, t, instance_logs, logs_req(None), InvalidArgument, "instance"),
        bad!(d, t, instance_logs, logs_req(Some(inst(""))), InvalidArgument, "instance.name"),
        bad!(d, t, instance_logs, logs_req(Some(inst("nope"))), NotFound),
        bad!(d, t, instance_logs, logs_req(Some(inst("inst"))), FailedPrecondition),
        bad!(d, t, call_instance, call_req("", "ping", Vec::new()), InvalidArgument, "instance"),
        bad!(d, t, call_instance, call_req("a b", "ping", Vec::new()), InvalidArgument, "instance"),
        bad!(d, t, call_instance, call_req("nope", "ping", Vec::new()), NotFound),
        bad!(d, t, call_instance, call_req("inst", "", Vec::new()), InvalidArgument, "export"),
        bad!(d, t, call_instance, call_req("inst", "nope", Vec::new()), NotFound),
        bad!(d, t, call_instance, call_req("inst", "open", vec![no_value]), InvalidArgument, "args"),
        bad!(d, t, call_instance, call_req("inst", "open", Vec::new()), InvalidArgument),
        bad!(d, t, call_instance, call_req("inst", "open", vec![i64v(0)]), InvalidArgument),
        bad!(d, t, stop_instance, inst(""), InvalidArgument, "name"),
        bad!(d, t, stop_instance, inst("a/b"), InvalidArgument, "name"),
        bad!(d, t, stop_instance, inst("nope"), NotFound),
        bad!(d, t, restart_instance, inst(""), InvalidArgument, "name"),
        bad!(d, t, delete_instance, inst(""), InvalidArgument, "name"),
        bad!(d, t, delete_instance, inst("a/b"), InvalidArgument, "name"),
        bad!(d, t, delete_instance, inst("nope"), NotFound),
        bad!(d, t, restart_instance, inst("nope"), NotFound),
        bad!(d, t, get_instance, inst(""), InvalidArgument, "name"),
        bad!(d, t, get_instance, inst("a b"), InvalidArgument, "name"),
        bad!(d, t, get_instance, inst("nope"), NotFound),
        bad!(d, admin, list_instances, instances_of(""), InvalidArgument, "tenant"),
        bad!(d, admin, list_instances, instances_of("nobody"), NotFound),
        bad!(d, t, create_region, create_region("", 64, 1, 0, 0), InvalidArgument, "name"),
        bad!(d, t, create_region, create_region("a/b", 64, 1, 0, 0), InvalidArgument, "name"),
        bad!(d, t, create_region, create_region("a b", 64, 1, 0, 0), InvalidArgument, "name"),
        bad!(d, t, create_region, create_region("r", 0, 1, 0, 0), InvalidArgument, "size"),
        bad!(d, t, create_region, create_region("r", 64, 99, 0, 0), InvalidArgument, "mode"),
        bad!(d, t, create_region, create_region("r", 64, -1, 0, 0), InvalidArgument, "mode"),
        bad!(d, t, create_region, create_region("r", 64, 0, 0, 0), InvalidArgument, "mode"),
        bad!(d, t, create_region, create_region("r", 64, 1, 99, 0), InvalidArgument, "policy"),
        bad!(d, t, create_region, create_region("r", 64, 1, 0, 99), InvalidArgument, "backing"),
        bad!(d, t, create_region, create_region("r", 64, 1, 0, persistent), FailedPrecondition),
        bad!(d, t, create_region, create_region("data", 64, 1, 0, 0), AlreadyExists),
        bad!(d, t, get_region, region_ref("", ""), InvalidArgument, "name"),
        bad!(d, t, get_region, region_ref("", "a b"), InvalidArgument, "name"),
        bad!(d, t, get_region, region_ref("", "nope"), NotFound),
        bad!(d, admin, get_region, region_ref("", "data"), InvalidArgument, "tenant"),
        bad!(d, admin, list_regions, regions_of(""), InvalidArgument, "tenant"),
        bad!(d, admin, list_regions, regions_of("nobody"), NotFound),
        bad!(d, t, read_region, read(None, 0, 8), InvalidArgument, "region"),
        bad!(d, t, read_region, read(Some(region_ref("", "")), 0, 8), InvalidArgument, "region.name"),
        bad!(d, t, read_region, read(Some(region_ref("", "nope")), 0, 8), NotFound),
        bad!(d, t, read_region, read(data(), 0, (16 << 20) + 1), InvalidArgument, "len"),
        bad!(d, t, read_region, read(data(), 4096, 1), InvalidArgument),
        bad!(d, t, read_region, read(data(), 4000, 200), InvalidArgument),
        bad!(d, t, read_region, read(data(), u64::MAX, 2), InvalidArgument),
        bad!(d, t, write_region, write(None, 0, vec![1]), InvalidArgument, "region"),
        bad!(d, t, write_region, write(Some(region_ref("", "")), 0, vec![1]), InvalidArgument, "region.name"),
        bad!(d, t, write_region, write(data(), 4095, vec![1, 2]), InvalidArgument),
        bad!(d, t, write_region, write(data(), u64::MAX, vec![1]), InvalidArgument),
        bad!(d, t, write_region, write(data(), 0, vec![0; 4097]), InvalidArgument),
        bad!(d, t, grant, grant(None, "inst", 1, 0, None), InvalidArgument, "region"),
        bad!(d, t, grant, grant(data(), "", 1, 0, None), InvalidArgument, "instance"),
        bad!(d, t, grant, grant(data(), "t/", 1, 0, None), InvalidArgument, "instance"),
        bad!(d, t, grant, grant(data(), "a b", 1, 0, None), InvalidArgument, "instance"),
        bad!(d, t, grant, grant(data(), "nope", 1, 0, None), NotFound),
        bad!(d, t, grant, grant(data(), "nobody/inst", 1, 0, None), NotFound),
        bad!(d, t, grant, grant(data(), "inst", 0x100, 0, None), InvalidArgument, "rights"),
        bad!(d, t, grant, grant(data(), "inst", 1, 4097, None), InvalidArgument),
        bad!(d, t, grant, grant(data(), "inst", 1, 4000, Some(200)), InvalidArgument),
        bad!(d, t, revoke, revoke_req(None, 1), InvalidArgument, "region"),
        bad!(d, t, revoke, revoke_req(data(), 999), NotFound),
        bad!(d, t, destroy_region, region_ref("", ""), InvalidArgument, "name"),
        bad!(d, t, destroy_region, region_ref("", "nope"), NotFound),
        bad!(
            d,
            t,
            create_region,
            pb::CreateRegionRequest { member_rights: 1 << 8, ..create_region("r", 64, 1, 0, 0) },
            InvalidArgument,
            "member_rights"
        ),
        bad!(d, t, set_member_rights, members(None, 1), InvalidArgument, "region"),
        bad!(d, t, set_member_rights, members(data(), 1 << 8), InvalidArgument, "rights"),
        bad!(d, t, set_member_rights, members(Some(region_ref("", "nope")), 1), NotFound),
        bad!(d, t, set_member_rights, members(Some(region_ref("", "a b")), 1), InvalidArgument, "name"),
        bad!(d, t, flush_region, region_ref("", ""), InvalidArgument, "name"),
        bad!(d, t, flush_region, region_ref("", "nope"), NotFound),
        bad!(d, t, watch_region, region_ref("", ""), InvalidArgument, "name"),
        bad!(d, t, watch_region, region_ref("", "nope"), NotFound),
        bad!(d, admin, stats, stats_of(""), InvalidArgument, "tenant"),
        bad!(d, admin, stats, stats_of("nobody"), NotFound),
        bad!(d, admin, run_scenario, pb::RunScenarioRequest::default(), InvalidArgument, "builtin"),
        bad!(d, admin, run_scenario, scenario_of("nope", 1.0), InvalidArgument, "builtin"),
        bad!(d, admin, run_scenario, scenario_of("pipeline", -2.0), InvalidArgument, "scale"),
    ];
    let failures: Vec<&str> = covered.iter().filter_map(|(_, failure)| failure.as_deref()).collect();
    assert!(failures.is_empty(), "{} bad-input cases failed:\n{}", failures.len(), failures.join("\n"));
    // Every RPC whose request has a field is covered (ListTenants takes none).
    for rpc in proto_rpcs() {
        let has_case = covered.iter().any(|(m, _)| rpc_name(m) == rpc);
        assert!(has_case || rpc == "ListTenants", "no bad-input case for {rpc}");
    }
    // None of it changed anything.
    let regions =
        rpc!(d, t, list_regions, pb::ListRegionsRequest { tenant: String::new() }).expect("list").regions;
    assert_eq!(regions.iter().map(|r| (r.name.as_str(), r.version)).collect::<Vec<_>>(), [("data", 0)]);
    let instances = rpc!(d, t, list_instances, pb::ListInstancesRequest { tenant: String::new() })
        .expect("list")
        .instances;
    assert_eq!(instances.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["inst"]);
    let modules =
        rpc!(d, t, list_modules, pb::ListModulesRequest { tenant: String::new() }).expect("list").modules;
    assert_eq!(modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["app"]);
    let tenants = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("list").tenants;
    assert_eq!(tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["t"]);
}

#[test]
fn full_lifecycle_over_the_api() {
    let daemon = Daemon::start(None);
    let d = &daemon;
    let admin = d.client(Some(&d.admin));
    let usage = |who: &Client| {
        let t = rpc!(d, who, stats, pb::StatsRequest { tenant: String::new() }).expect("stats").tenant;
        t.and_then(|t| t.usage).expect("usage")
    };
    // Tenants and tokens: alpha owns the region, beta runs the app that reads it.
    let alpha = tenant(d, &admin, "alpha");
    let beta = tenant(d, &admin, "beta");
    // Module upload.
    let module = rpc!(
        d,
        beta,
        upload_module,
        pb::UploadModuleRequest {
            tenant: String::new(),
            name: "app".into(),
            wasm: broker_guests::HANDLE_APP_WASM.to_vec()
        }
    )
    .expect("upload");
    assert_eq!((module.tenant.as_str(), module.name.as_str()), ("beta", "app"));
    assert!(module.exports.iter().any(|e| e == "load_u64"), "{:?}", module.exports);
    // Region, written by a native producer.
    let created = region(d, &alpha, "data", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    assert_eq!((created.tenant.as_str(), created.size, created.version), ("alpha", 4096, 0));
    let write = |offset: u64, value: u64| {
        let w = pb::WriteRegionRequest {
            region: Some(region_ref("", "data")),
            offset,
            data: value.to_le_bytes().to_vec(),
        };
        rpc!(d, alpha, write_region, w).expect("write").version
    };
    assert_eq!(write(0, 42), 1);
    // Instance.
    let started = rpc!(
        d,
        beta,
        start_instance,
        pb::StartInstanceRequest {
            tenant: String::new(),
            module: "app".into(),
            name: "reader".into(),
            config: None
        }
    )
    .expect("start");
    assert_eq!(started.state, i32::from(pb::InstanceState::Running));
    assert_eq!(usage(&beta).instances, 1);
    // Before the grant, the app cannot open alpha's region.
    let not_found = i64::from(broker_abi::Status::NotFound.code());
    assert_eq!(as_i64(&call(d, &beta, "reader", "open", vec![i32v(1)]).expect("open")), not_found);
    // Grant, then a call that reads the region.
    let g = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/reader".into(),
        rights: 1,
        offset: 0,
        len: None,
    };
    let grant_id = rpc!(d, alpha, grant, g).expect("grant").grant_id;
    let h = i32::try_from(as_i64(&call(d, &beta, "reader", "open", vec![i32v(1)]).expect("open")))
        .expect("handle");
    assert!(h > 0);
    let load = || as_i64(&call(d, &beta, "reader", "load_u64", vec![i32v(h), i64v(0)]).expect("load"));
    assert_eq!(load(), 42);
    // A write shows up in the app and on the watch stream.
    let mut watch =
        d.rt.block_on(alpha.inner.clone().watch_region(alpha.req(region_ref("", "data"))))
            .expect("watch")
            .into_inner();
    assert_eq!(write(0, 43), 2);
    let event = d.rt.block_on(watch.message()).expect("stream").expect("an event");
    assert_eq!(
        (event.tenant.as_str(), event.region.as_str(), event.version, event.offset, event.len, event.missed),
        ("alpha", "data", 2, 0, 8, 0)
    );
    assert_eq!(load(), 43);
    // A restart drops the app's handles; the API grant comes back with it.
    let restarted =
        rpc!(d, beta, restart_instance, pb::InstanceRef { tenant: String::new(), name: "reader".into() })
            .expect("restart");
    assert_eq!((restarted.state, restarted.restarts), (i32::from(pb::InstanceState::Running), 1));
    let h = i32::try_from(as_i64(&call(d, &beta, "reader", "open", vec![i32v(1)]).expect("open")))
        .expect("handle");
    assert!(h > 0, "the grant survives a restart of its instance");
    let load = || as_i64(&call(d, &beta, "reader", "load_u64", vec![i32v(h), i64v(0)]).expect("load"));
    assert_eq!(load(), 43);
    let stats = rpc!(d, alpha, stats, pb::StatsRequest { tenant: String::new() }).expect("stats");
    assert_eq!(stats.regions[0].version, 2);
    let beta_stats = rpc!(d, beta, stats, pb::StatsRequest { tenant: String::new() }).expect("stats");
    assert!(beta_stats.instances[0].traffic.as_ref().is_some_and(|t| t.bytes_out >= 8), "{beta_stats:?}");
    // Revoke: the app's handle goes stale.
    let revoke = pb::RevokeRequest { region: Some(region_ref("", "data")), grant_id };
    rpc!(d, alpha, revoke, revoke).expect("revoke");
    assert_eq!(load(), i64::from(broker_abi::Status::StaleHandle.code()));
    let again = pb::RevokeRequest { region: Some(region_ref("", "data")), grant_id };
    assert_eq!(code(rpc!(d, alpha, revoke, again)), Code::NotFound, "a grant is revoked once");
    // Stop: the instance stays, stopped, in its quota slot. Delete: it is gone.
    let reader = || pb::InstanceRef { tenant: String::new(), name: "reader".into() };
    rpc!(d, beta, stop_instance, reader()).expect("stop");
    let stopped = rpc!(d, beta, get_instance, reader()).expect("a stopped instance is still there");
    assert_eq!(stopped.state, i32::from(pb::InstanceState::Stopped));
    assert_eq!(usage(&beta).instances, 1);
    rpc!(d, beta, delete_instance, reader()).expect("delete");
    assert_eq!(code(rpc!(d, beta, get_instance, reader())), Code::NotFound);
    assert_eq!(usage(&beta).instances, 0);
    // Destroy: the watch stream ends.
    rpc!(d, alpha, destroy_region, region_ref("", "data")).expect("destroy");
    assert_eq!(d.rt.block_on(watch.message()).expect("the stream ends cleanly"), None);
    assert_eq!(usage(&alpha), pb::Usage::default(), "the region's bytes are given back");
    // Delete the module.
    rpc!(d, beta, delete_module, pb::ModuleRef { tenant: String::new(), name: "app".into() })
        .expect("delete");
    assert!(rpc!(d, beta, list_modules, pb::ListModulesRequest { tenant: String::new() })
        .expect("list")
        .modules
        .is_empty());
    assert_eq!(usage(&beta), pb::Usage::default());
}

#[test]
fn sixteen_clients_at_once() {
    const CLIENTS: u64 = 16;
    const ITERATIONS: u64 = 40;
    let daemon = Daemon::start(None);
    let d = &daemon;
    let admin = d.client(Some(&d.admin));
    let t = tenant(d, &admin, "t");
    region(d, &t, "slots", CLIENTS * 8, pb::Mode::Handle, pb::Backing::Ephemeral);
    upload(d, &t, "app", broker_guests::RUNTIME_MISBEHAVE_WASM);
    start(d, &t, "app", "pinger");

    // Each client owns an 8-byte slot: it writes its iteration count there, reads it back, calls the
    // instance and asks for stats, on its own connection, all at once.
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let issue = pb::IssueTokenRequest { tenant: "t".into(), rotate: false };
            d.client(Some(&rpc!(d, admin, issue_token, issue).expect("token").token))
        })
        .collect();
    let outcome = d.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (slot, c) in (0u64..).zip(clients) {
            tasks.spawn(async move {
                let mut api = c.inner.clone();
                let slot_ref = || Some(region_ref("", "slots"));
                for i in 1..=ITERATIONS {
                    let w = pb::WriteRegionRequest {
                        region: slot_ref(),
                        offset: slot * 8,
                        data: i.to_le_bytes().to_vec(),
                    };
                    api.write_region(c.req(w)).await.map_err(|e| format!("client {slot} write {i}: {e}"))?;
                    let r = pb::ReadRegionRequest { region: slot_ref(), offset: slot * 8, len: 8 };
                    let data = api
                        .read_region(c.req(r))
                        .await
                        .map_err(|e| format!("client {slot} read {i}: {e}"))?
                        .into_inner()
                        .data;
                    if data != i.to_le_bytes() {
                        return Err(format!("client {slot} read {data:?} after writing {i}"));
                    }
                    if i % 4 == 0 {
                        let call = pb::CallInstanceRequest {
                            tenant: String::new(),
                            instance: "pinger".into(),
                            export: "ping".into(),
                            args: Vec::new(),
                        };
                        let results = api
                            .call_instance(c.req(call))
                            .await
                            .map_err(|e| format!("client {slot} call {i}: {e}"))?
                            .into_inner()
                            .results;
                        if as_i64(&results) != 7 {
                            return Err(format!("client {slot} ping returned {results:?}"));
                        }
                        api.stats(c.req(pb::StatsRequest { tenant: String::new() }))
                            .await
                            .map_err(|e| format!("client {slot} stats {i}: {e}"))?;
                    }
                }
                Ok::<u64, String>(slot)
            });
        }
        // A watchdog against deadlock, not a timing assertion.
        tokio::time::timeout(std::time::Duration::from_secs(120), async {
            let mut done = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                done.push(joined.expect("the client task did not panic"));
            }
            done
        })
        .await
        .expect("the clients finished: deadlock?")
    });
    let mut finished: Vec<u64> =
        outcome.into_iter().collect::<Result<_, _>>().unwrap_or_else(|e| panic!("{e}"));
    finished.sort_unstable();
    assert_eq!(finished, (0..CLIENTS).collect::<Vec<_>>());

    // Every slot holds its client's last count; no write was lost or torn.
    let all = pb::ReadRegionRequest { region: Some(region_ref("", "slots")), offset: 0, len: CLIENTS * 8 };
    let read = rpc!(d, t, read_region, all).expect("read");
    let slots: Vec<u64> =
        read.data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    assert_eq!(slots, (0..CLIENTS).map(|_| ITERATIONS).collect::<Vec<_>>());
    assert_eq!(read.version, CLIENTS * ITERATIONS, "one version per write");
    let stats =
        rpc!(d, t, stats, pb::StatsRequest { tenant: String::new() }).expect("the daemon still answers");
    assert_eq!(stats.instances[0].calls, CLIENTS * (ITERATIONS / 4));
    assert_eq!(stats.regions[0].traffic.as_ref().map(|t| t.bytes_in), Some(CLIENTS * ITERATIONS * 8));
    assert_eq!(as_i64(&call(d, &t, "pinger", "ping", Vec::new()).expect("ping")), 7);
}

#[test]
fn run_scenario_streams_progress_then_the_report() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let req = pb::RunScenarioRequest {
        builtin: "pipeline".into(),
        modes: vec!["shared".into(), "handle".into()],
        scale: 0.01,
        ..Default::default()
    };
    let mut stream = rpc!(d, admin, run_scenario, req).expect("starts");
    let mut messages = Vec::new();
    while let Some(m) = d.rt.block_on(stream.message()).expect("stream stays healthy") {
        messages.push(m);
    }
    let last = messages.pop().expect("a final message");
    assert!(!messages.is_empty(), "progress came before the report");
    assert!(messages.iter().all(|m| m.report_json.is_empty() && m.total == 2), "{messages:?}");
    assert!(messages.iter().any(|m| m.message.contains("shared")), "{messages:?}");
    assert!(last.ok, "{}", last.report_text);
    assert_eq!((last.done, last.total), (2, 2));
    let report: serde_json::Value = serde_json::from_str(&last.report_json).expect("JSON report");
    let modes: Vec<&str> =
        report["runs"].as_array().expect("runs").iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["shared", "handle"]);
    assert!(last.report_text.contains("stream/blocks"), "{}", last.report_text);
    // The daemon's own broker is untouched: the scenario ran on a private one.
    let tenants = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("list").tenants;
    assert!(tenants.is_empty(), "{tenants:?}");
}

#[test]
fn run_scenario_refuses_bad_requests_with_the_field() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let run = |req: pb::RunScenarioRequest| rpc!(d, admin, run_scenario, req).map(drop).expect_err("refused");
    let bad_toml = "name = \"x\"\n[[tenant]]\nname = \"a\"\n[[region]]\ntenant = \"a\"\nname = \"r\"\nsize = \"9 parsecs\"\n";
    let cases = [
        (pb::RunScenarioRequest::default(), "exactly one"),
        (
            pb::RunScenarioRequest { builtin: "pipeline".into(), toml: "x".into(), ..Default::default() },
            "exactly one",
        ),
        (pb::RunScenarioRequest { builtin: "nope".into(), ..Default::default() }, "known: pipeline"),
        (
            pb::RunScenarioRequest { toml: bad_toml.into(), ..Default::default() },
            "request.toml:7: region[0].size",
        ),
        (
            pb::RunScenarioRequest {
                builtin: "pipeline".into(),
                modes: vec!["warp".into()],
                ..Default::default()
            },
            "unknown mode",
        ),
        (pb::RunScenarioRequest { builtin: "pipeline".into(), scale: -1.0, ..Default::default() }, "scale"),
        (
            pb::RunScenarioRequest { builtin: "pipeline".into(), scale: f64::NAN, ..Default::default() },
            "scale",
        ),
    ];
    for (req, reason) in cases {
        let status = run(req);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(reason), "{reason}: {}", status.message());
    }
    // A module given by path (a real file) is refused over gRPC: the daemon reads no client-named files.
    let with_path = format!(
        "name = \"x\"\n[[tenant]]\nname = \"a\"\n[[module]]\ntenant = \"a\"\nname = \"m\"\npath = {:?}\n\
         [[instance]]\ntenant = \"a\"\nname = \"i\"\nmodule = \"m\"\n[[phase]]\nname = \"p\"\n\
         [[phase.actor]]\nname = \"x\"\niterations = 1\nsteps = [{{ call = \"a/i\", export = \"f\" }}]\n",
        broker_guests::SCENARIO_PIPELINE
    );
    let status = run(pb::RunScenarioRequest { toml: with_path, ..Default::default() });
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not a path"), "{}", status.message());
}

#[test]
fn shutting_down_cancels_a_running_scenario() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    // Ten times the pipeline's phases: minutes of work, unless the run is cancelled.
    let req = pb::RunScenarioRequest { builtin: "pipeline".into(), scale: 10.0, ..Default::default() };
    let mut stream = rpc!(d, admin, run_scenario, req).expect("starts");
    let first = d.rt.block_on(stream.message()).expect("healthy").expect("a progress message");
    assert!(first.report_json.is_empty());
    // What the daemon does when SIGTERM arrives.
    d.plane.end_watches();
    let end = broker_tests::watchdog(60, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            loop {
                match stream.message().await {
                    Ok(Some(m)) => assert!(m.report_json.is_empty(), "a cancelled run sends no report"),
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
    });
    let status = end.expect("the stream ends with the cancellation");
    assert!(status.message().contains("cancelled"), "{status:?}");
    // And no new run starts.
    let again = pb::RunScenarioRequest { builtin: "pipeline".into(), ..Default::default() };
    assert_eq!(code(rpc!(d, admin, run_scenario, again)), Code::Unavailable);
}

/// Issue 13, as reported: a tenant with only its token maps a read-only window of its own region and
/// runs `memory.fill` over it (wasmtime runs it as a host-side helper, which used to kill the daemon).
/// The daemon lives, the call ends with the attacker's trap, and another tenant's call still answers.
#[test]
fn r13_memory_fill_over_a_read_only_window_traps_only_the_attacker() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let evil = tenant(&d, &admin, "evil");
    let acme = tenant(&d, &admin, "acme");
    let ops = broker_guests::ISOLATION_OPS_WASM;
    for (c, who) in [(&evil, "evil"), (&acme, "acme")] {
        upload(&d, c, "ops", ops);
        start(&d, c, "ops", who);
    }
    region(&d, &evil, "data", 8192, pb::Mode::Shared, pb::Backing::Ephemeral);
    let grant = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "evil".into(),
        rights: 1 | 4,
        offset: 0,
        len: None,
    };
    rpc!(d, evil, grant, grant).expect("grant");
    // The guest writes "evil/data" into its memory byte by byte (op 10 = i32.store8) and opens it.
    for (i, byte) in b"evil/data".iter().enumerate() {
        let at = 0x100 + i32::try_from(i).expect("short");
        call(&d, &evil, "evil", "op", vec![i32v(10), i32v(at), i32v(i32::from(*byte)), i32v(0)])
            .expect("store8");
    }
    let opened = call(&d, &evil, "evil", "open", vec![i32v(0x100), i32v(9)]).expect("open");
    let Some(pb::Value { value: Some(pb::value::Value::I64(h)) }) = opened.first().cloned() else {
        panic!("open returned {opened:?}")
    };
    let h = i32::try_from(h).expect("a small handle");
    let mapped =
        call(&d, &evil, "evil", "map", vec![i32v(h), i32v(0x10_0000), i32v(8192), i32v(0)]).expect("map");
    assert_eq!(mapped.first().cloned().map(|v| v.value), Some(Some(pb::value::Value::I32(0))));
    // memory.fill (op 2) over the read-only window.
    let err = call(&d, &evil, "evil", "op", vec![i32v(2), i32v(0x10_0000), i32v(0x41), i32v(4096)])
        .expect_err("the fill traps");
    assert!(err.message().contains("read-only shared window of region evil/data"), "{}", err.message());
    // The daemon serves everyone still: another tenant's call, and the region's bytes are intact.
    let nop =
        call(&d, &acme, "acme", "op", vec![i32v(12), i32v(0), i32v(0), i32v(0)]).expect("bystander answers");
    assert_eq!(nop.first().cloned().map(|v| v.value), Some(Some(pb::value::Value::I32(0))));
    let read = rpc!(
        d,
        evil,
        read_region,
        pb::ReadRegionRequest { region: Some(region_ref("", "data")), offset: 0, len: 4096 }
    )
    .expect("read");
    assert!(read.data.iter().all(|b| *b == 0), "the fill reached the region");
}

/// A valid module with `functions` exported functions, each a little arithmetic: costly to compile.
fn big_module(functions: usize) -> Vec<u8> {
    let mut wat = String::from("(module\n");
    for i in 0..functions {
        wat.push_str(&format!(
            "(func (export \"f{i}\") (param i64) (result i64) local.get 0 i64.const {i} i64.mul i64.const 7 \
             i64.xor local.get 0 i64.add i64.const 3 i64.rotl)\n"
        ));
    }
    wat.push(')');
    wat::parse_str(&wat).expect("valid wat")
}

/// Issue 14: module quotas are checked before compiling (junk bytes over the byte quota are refused
/// for the quota, not for being junk), compiled code is charged, unloading gives it all back, and a
/// call deadline above the tenant's cap is refused naming the cap.
#[test]
fn r14_module_quotas_and_the_call_timeout_cap() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let quotas = small_quotas(pb::Quotas {
        modules: Some(2),
        module_bytes: Some(64 << 10),
        max_call_timeout_ms: Some(10_000),
        ..Default::default()
    });
    let t = tenant_with(&d, &admin, "t", Some(quotas));
    let junk =
        pb::UploadModuleRequest { tenant: String::new(), name: "junk".into(), wasm: vec![0xff; 65 << 10] };
    let err = rpc!(d, t, upload_module, junk).expect_err("over the byte quota");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("module bytes"), "{}", err.message());
    let ops = broker_guests::ISOLATION_OPS_WASM;
    upload(&d, &t, "a", ops);
    upload(&d, &t, "b", ops);
    let third = pb::UploadModuleRequest { tenant: String::new(), name: "c".into(), wasm: ops.to_vec() };
    let err = rpc!(d, t, upload_module, third.clone()).expect_err("over the module count");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    let tenants = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("tenants").tenants;
    let usage = tenants.iter().find(|x| x.name == "t").and_then(|x| x.usage).expect("usage");
    assert_eq!((usage.modules, usage.module_bytes), (2, 2 * u64::try_from(ops.len()).expect("small")));
    assert!(usage.compiled_bytes > 0, "compiled code is charged");
    rpc!(d, t, delete_module, pb::ModuleRef { tenant: String::new(), name: "a".into() }).expect("delete");
    rpc!(d, t, upload_module, third).expect("room again after a delete");

    let start = |ms: u64| pb::StartInstanceRequest {
        tenant: String::new(),
        module: "b".into(),
        name: format!("i{ms}"),
        config: Some(pb::InstanceConfig { call_timeout_ms: ms, ..Default::default() }),
    };
    let err = rpc!(d, t, start_instance, start(10_001)).expect_err("above the cap");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_call_timeout_ms = 10000"), "{}", err.message());
    rpc!(d, t, start_instance, start(10_000)).expect("at the cap");
}

/// Issue 14: a storm of expensive compiles by one tenant leaves another tenant's cheap RPCs answering
/// meanwhile (compiles run on the blocking pool, one per tenant at a time, never on the async runtime).
#[test]
fn r14_a_compile_storm_leaves_another_tenants_get_region_answering() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let storm = tenant(&d, &admin, "storm");
    let calm = tenant(&d, &admin, "calm");
    region(&d, &calm, "r", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    let wasm = big_module(20_000);
    let uploads = 4;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..uploads)
        .map(|i| {
            let (mut c, wasm, done) = (storm.inner.clone(), wasm.clone(), std::sync::Arc::clone(&done));
            let req =
                storm.req(pb::UploadModuleRequest { tenant: String::new(), name: format!("big{i}"), wasm });
            d.rt.spawn(async move {
                let r = c.upload_module(req).await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r.map(|_| ())
            })
        })
        .collect();
    // While the storm compiles, the calm tenant's reads answer, many times over.
    for _ in 0..20 {
        rpc!(d, calm, get_region, region_ref("", "r")).expect("get region answers");
    }
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst) < uploads,
        "every compile finished before the calm tenant's 20 reads: the storm was never under way"
    );
    for t in tasks {
        d.rt.block_on(t).expect("task").expect("upload");
    }
}

/// Issue 14: a watch stream costs a watcher on the region, so it counts against the tenant's `watches`
/// quota like a guest's watch: a tenant cannot open streams without bound.
#[test]
fn r14_watch_streams_count_against_the_watches_quota() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let quotas = small_quotas(pb::Quotas { watches: Some(1), ..Default::default() });
    let t = tenant_with(&d, &admin, "t", Some(quotas));
    region(&d, &t, "r", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    let first = rpc!(d, t, watch_region, region_ref("", "r")).expect("the first stream");
    let usage = |d: &Daemon| {
        let tenants = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("tenants").tenants;
        tenants.iter().find(|x| x.name == "t").and_then(|x| x.usage).expect("usage")
    };
    assert_eq!(usage(&d).watches, 1);
    let err = rpc!(d, t, watch_region, region_ref("", "r")).expect_err("a second stream is over the quota");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    drop(first);
}

/// Issue 14: the `cpu_shares` weight is optional (absent: 1024), refused outside 1 to 65536 with the
/// range in the message (nothing created, nothing changed), reported with the quotas, and persisted: a
/// restarted daemon has the same weights. `Usage.events` is reported (nothing queued here).
#[test]
fn r14_cpu_shares_round_trip_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let quotas =
        |cpu_shares: Option<u64>| Some(small_quotas(pb::Quotas { cpu_shares, ..Default::default() }));
    let shares_of = |d: &Daemon, admin: &Client| {
        let tenants = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("tenants").tenants;
        tenants
            .iter()
            .map(|t| (t.name.clone(), t.quotas.and_then(|q| q.cpu_shares), t.usage.map(|u| u.events)))
            .collect::<Vec<_>>()
    };
    {
        let d = Daemon::start(Some(dir.clone()));
        let admin = d.client(Some(&d.admin));
        for bad in [0, 65_537] {
            let create = pb::CreateTenantRequest { name: "heavy".into(), quotas: quotas(Some(bad)) };
            let err = rpc!(d, admin, create_tenant, create).expect_err("out of range");
            assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
            assert!(err.message().contains("`quotas.cpu_shares`"), "names the field: {}", err.message());
            assert!(err.message().contains("1 to 65536"), "gives the range: {}", err.message());
        }
        let created = rpc!(
            d,
            admin,
            create_tenant,
            pb::CreateTenantRequest { name: "heavy".into(), quotas: quotas(Some(4096)) }
        )
        .expect("a valid weight");
        assert_eq!(created.quotas.and_then(|q| q.cpu_shares), Some(4096));
        let plain =
            rpc!(d, admin, create_tenant, pb::CreateTenantRequest { name: "plain".into(), quotas: None })
                .expect("default quotas");
        assert_eq!(plain.quotas.and_then(|q| q.cpu_shares), Some(broker::Quotas::DEFAULT_CPU_SHARES));
        let light = pb::SetQuotasRequest { tenant: "plain".into(), quotas: quotas(Some(2)) };
        assert_eq!(
            rpc!(d, admin, set_quotas, light).expect("set").quotas.and_then(|q| q.cpu_shares),
            Some(2)
        );
        let refused = pb::SetQuotasRequest { tenant: "plain".into(), quotas: quotas(Some(0)) };
        assert_eq!(code(rpc!(d, admin, set_quotas, refused)), Code::InvalidArgument);
        let absent = pb::SetQuotasRequest { tenant: "heavy".into(), quotas: quotas(None) };
        assert_eq!(
            rpc!(d, admin, set_quotas, absent).expect("set").quotas.and_then(|q| q.cpu_shares),
            Some(broker::Quotas::DEFAULT_CPU_SHARES),
            "absent: the default, as for every optional quota"
        );
        let again = pb::SetQuotasRequest { tenant: "heavy".into(), quotas: quotas(Some(65_536)) };
        rpc!(d, admin, set_quotas, again).expect("the largest weight");
        assert_eq!(
            shares_of(&d, &admin),
            [("heavy".to_owned(), Some(65_536), Some(0)), ("plain".to_owned(), Some(2), Some(0))]
        );
        d.stop();
    }
    let d = Daemon::start(Some(dir.clone()));
    let admin = d.client(Some(&d.admin));
    assert_eq!(
        shares_of(&d, &admin),
        [("heavy".to_owned(), Some(65_536), Some(0)), ("plain".to_owned(), Some(2), Some(0))],
        "the weights survived the restart"
    );
    d.stop();
}

/// Issue 14: `broker serve --trampolines N` reaches the broker's config, which refuses a pool size the C
/// table cannot hold, before anything listens.
#[test]
fn r14_serve_refuses_a_trampoline_pool_outside_the_compiled_range() {
    for bad in ["0", "1025"] {
        let args = ["broker", "serve", "--listen", "127.0.0.1:0", "--trampolines", bad];
        let cli = broker_cli::cli::Cli::try_parse_from(args).expect("valid arguments");
        let mut out = Vec::new();
        let err = broker_cli::cli::run(cli, &mut out).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("invalid trampolines") && text.contains("1 to 1024"), "{text}");
        assert!(out.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&out));
    }
}

/// Issue 16: the toolkit is an extension the daemon has on by default. A daemon whose broker has it off
/// (`broker serve --no-ui`) refuses the upload of a toolkit app with INVALID_ARGUMENT naming the
/// import and keeps nothing; the default daemon takes the same bytes.
#[test]
fn r16_uploads_of_toolkit_apps_need_the_ui_extension() {
    let wasm = broker_guests::CALLBACK_APP_WASM;
    let d = Daemon::with_broker(broker_tests::broker(), None);
    let admin = d.client(Some(&d.admin));
    let t = tenant(&d, &admin, "t");
    let msg = pb::UploadModuleRequest { tenant: String::new(), name: "app".into(), wasm: wasm.to_vec() };
    let err = rpc!(d, t, upload_module, msg).expect_err("refused without the extension");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let message = err.message();
    assert!(message.starts_with("invalid field `wasm`: imports broker_ui_v1::ui_"), "{message}");
    assert!(
        message.ends_with(", which the broker does not provide: its UI toolkit extension is turned off"),
        "{message}"
    );
    let listed = rpc!(d, t, list_modules, pb::ListModulesRequest { tenant: String::new() }).expect("list");
    assert!(listed.modules.is_empty(), "nothing was kept: {listed:?}");
    d.stop();

    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let t = tenant(&d, &admin, "t");
    upload(&d, &t, "app", wasm);
    start(&d, &t, "app", "app-1");
    d.stop();
}

/// Issue 15: `.` and `..` are never names (they would be path components in the state dir), a grant
/// needs a right, a region needs a mode, and an error about a file shows no server path.
#[test]
fn r15_reserved_names_empty_grants_unspecified_modes_and_no_server_paths() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let d = Daemon::start(Some(dir.clone()));
    let admin = d.client(Some(&d.admin));
    for bad in [".", ".."] {
        let err = rpc!(d, admin, create_tenant, pb::CreateTenantRequest { name: bad.into(), quotas: None })
            .expect_err("reserved");
        assert_eq!(err.code(), Code::InvalidArgument, "tenant {bad:?}: {}", err.message());
        assert!(err.message().contains("reserved"), "{}", err.message());
    }
    let t = tenant(&d, &admin, "t");
    for bad in [".", ".."] {
        let r = pb::CreateRegionRequest {
            tenant: String::new(),
            name: bad.into(),
            size: 4096,
            mode: pb::Mode::Handle.into(),
            policy: 0,
            backing: pb::Backing::Persistent.into(),
            member_rights: broker_abi::rights::ALL,
            replication: 0,
        };
        assert_eq!(code(rpc!(d, t, create_region, r)), Code::InvalidArgument, "region {bad:?}");
        let m = pb::UploadModuleRequest {
            tenant: String::new(),
            name: bad.into(),
            wasm: broker_guests::ISOLATION_OPS_WASM.to_vec(),
        };
        assert_eq!(code(rpc!(d, t, upload_module, m)), Code::InvalidArgument, "module {bad:?}");
    }
    upload(&d, &t, "ops", broker_guests::ISOLATION_OPS_WASM);
    for bad in [".", ".."] {
        let s = pb::StartInstanceRequest {
            tenant: String::new(),
            module: "ops".into(),
            name: bad.into(),
            config: None,
        };
        assert_eq!(code(rpc!(d, t, start_instance, s)), Code::InvalidArgument, "instance {bad:?}");
    }
    let tdir = dir.join("regions").join("t");
    assert!(!tdir.join("..region").exists() && !tdir.join("...region").exists(), "no file was made for them");

    // A region needs a mode: MODE_UNSPECIFIED (0, a client's default) is refused, naming the field.
    let unspecified = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "r".into(),
        size: 4096,
        mode: pb::Mode::Unspecified.into(),
        policy: 0,
        backing: pb::Backing::Ephemeral.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    let err = rpc!(d, t, create_region, unspecified).expect_err("no mode");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("mode") && err.message().contains("MODE_HANDLE"), "{}", err.message());

    // A grant with no rights is refused; nothing is granted.
    region(&d, &t, "r", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    start(&d, &t, "ops", "app");
    let none = pb::GrantRequest {
        region: Some(region_ref("", "r")),
        instance: "app".into(),
        rights: 0,
        offset: 0,
        len: None,
    };
    let err = rpc!(d, t, grant, none).expect_err("no rights");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("rights"), "{}", err.message());

    // A persistent region whose file cannot be created: the error names the file, not where it is.
    std::fs::create_dir_all(dir.join("regions").join("t").join("blocked.region"))
        .expect("a directory in the way");
    let blocked = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "blocked".into(),
        size: 4096,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: pb::Backing::Persistent.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    let err = rpc!(d, t, create_region, blocked).expect_err("the file is a directory");
    assert!(err.message().contains("blocked.region"), "{}", err.message());
    let root = dir.to_string_lossy().into_owned();
    assert!(!err.message().contains(&root), "a server path in an error: {}", err.message());

    // A module is not deleted from under the instances that run it.
    let ops = || pb::ModuleRef { tenant: String::new(), name: "ops".into() };
    let err = rpc!(d, t, delete_module, ops()).expect_err("in use");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("app"), "the message lists the instances: {}", err.message());
    let app = || pb::InstanceRef { tenant: String::new(), name: "app".into() };
    rpc!(d, t, stop_instance, app()).expect("stop");
    let err = rpc!(d, t, delete_module, ops()).expect_err("a stopped instance can be restarted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("app"), "the message lists the stopped instance: {}", err.message());
    rpc!(d, t, delete_instance, app()).expect("delete");
    rpc!(d, t, delete_module, ops()).expect("no instance of it is left");
    drop(d);
}

/// Issue 15: lowering a tenant's quotas below what it holds blocks new allocations only, and a
/// restart brings back everything it held (a persistent region with its bytes, an instance), with the
/// lowered quotas in force.
#[test]
fn r15_quotas_lowered_below_usage_hide_nothing_after_a_restart() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let token;
    {
        let d = Daemon::start(Some(dir.clone()));
        let admin = d.client(Some(&d.admin));
        let t = tenant_with(&d, &admin, "t", Some(small_quotas(pb::Quotas::default())));
        token = rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "t".into(), rotate: false })
            .expect("token")
            .token;
        region(&d, &t, "keep", 4096, pb::Mode::Handle, pb::Backing::Persistent);
        let write = pb::WriteRegionRequest {
            region: Some(region_ref("", "keep")),
            offset: 0,
            data: b"still here".to_vec(),
        };
        rpc!(d, t, write_region, write).expect("write");
        rpc!(d, t, flush_region, region_ref("", "keep")).expect("flush");
        upload(&d, &t, "ops", broker_guests::ISOLATION_OPS_WASM);
        start(&d, &t, "ops", "app");
        let lowered =
            pb::Quotas { region_bytes: 0, regions: 0, instances: 0, ..small_quotas(pb::Quotas::default()) };
        rpc!(d, admin, set_quotas, pb::SetQuotasRequest { tenant: "t".into(), quotas: Some(lowered) })
            .expect("lowering below usage blocks new allocations only");
    }
    let d = Daemon::start(Some(dir.clone()));
    let t = d.client(Some(&token));
    let read = rpc!(
        d,
        t,
        read_region,
        pb::ReadRegionRequest { region: Some(region_ref("", "keep")), offset: 0, len: 10 }
    )
    .expect("the region came back");
    assert_eq!(read.data, b"still here");
    rpc!(d, t, get_instance, pb::InstanceRef { tenant: String::new(), name: "app".into() })
        .expect("the instance came back");
    let more = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "more".into(),
        size: 4096,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: pb::Backing::Ephemeral.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    assert_eq!(code(rpc!(d, t, create_region, more)), Code::ResourceExhausted, "the lowered quota holds");
    drop(d);
}

/// Issue 15: concurrent flushes of one persistent region all succeed while writes go on, and what a
/// restart finds is the last flushed bytes.
#[test]
fn r15_concurrent_flushes_of_one_region_are_safe() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let token;
    {
        let d = Daemon::start(Some(dir.clone()));
        let admin = d.client(Some(&d.admin));
        let t = tenant(&d, &admin, "t");
        token = rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: "t".into(), rotate: false })
            .expect("token")
            .token;
        region(&d, &t, "r", 1 << 16, pb::Mode::Handle, pb::Backing::Persistent);
        let write = |byte: u8| pb::WriteRegionRequest {
            region: Some(region_ref("", "r")),
            offset: 0,
            data: vec![byte; 1 << 16],
        };
        std::thread::scope(|s| {
            let flushers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..10 {
                            assert!(rpc!(d, t, flush_region, region_ref("", "r")).expect("flush").persistent);
                        }
                    })
                })
                .collect();
            for byte in 1..=20u8 {
                rpc!(d, t, write_region, write(byte)).expect("write");
            }
            for f in flushers {
                f.join().expect("a flusher");
            }
        });
        assert!(rpc!(d, t, flush_region, region_ref("", "r")).expect("flush").persistent);
    }
    let d = Daemon::start(Some(dir.clone()));
    let t = d.client(Some(&token));
    let read = rpc!(
        d,
        t,
        read_region,
        pb::ReadRegionRequest { region: Some(region_ref("", "r")), offset: 0, len: 1 << 16 }
    )
    .expect("read");
    assert!(read.data.iter().all(|b| *b == 20), "the last flushed bytes came back whole");
    drop(d);
}

/// Issue 15, item 5: a stopped instance keeps its API grants (a restart applies them again), a deleted
/// one loses them (a new instance of the same name gets none, and the grant id is gone), and another
/// tenant's token can neither stop nor delete it.
#[test]
fn r15_stop_keeps_api_grants_for_the_restart_and_delete_forgets_them() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let alpha = tenant(&d, &admin, "alpha");
    let beta = tenant(&d, &admin, "beta");
    region(&d, &alpha, "data", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    upload(&d, &beta, "app", broker_guests::HANDLE_APP_WASM);
    start(&d, &beta, "app", "reader");
    let g = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "beta/reader".into(),
        rights: 1,
        offset: 0,
        len: None,
    };
    let grant_id = rpc!(d, alpha, grant, g).expect("grant").grant_id;
    let open = || as_i64(&call(&d, &beta, "reader", "open", vec![i32v(1)]).expect("open alpha/data"));
    assert!(open() > 0);

    // alpha owns the region granted to beta/reader, not the instance.
    let theirs = || pb::InstanceRef { tenant: "beta".into(), name: "reader".into() };
    assert_eq!(code(rpc!(d, alpha, stop_instance, theirs())), Code::PermissionDenied);
    assert_eq!(code(rpc!(d, alpha, delete_instance, theirs())), Code::PermissionDenied);
    let state = |c: &Client| rpc!(d, c, get_instance, theirs()).expect("status").state;
    assert_eq!(state(&admin), i32::from(pb::InstanceState::Running));

    let reader = || pb::InstanceRef { tenant: String::new(), name: "reader".into() };
    rpc!(d, beta, stop_instance, reader()).expect("stop");
    assert_eq!(state(&beta), i32::from(pb::InstanceState::Stopped));
    rpc!(d, beta, restart_instance, reader()).expect("restart");
    assert!(open() > 0, "the restart applied the API grant again");

    // The admin may delete any tenant's instance.
    rpc!(d, admin, delete_instance, theirs()).expect("delete");
    start(&d, &beta, "app", "reader");
    assert_eq!(open(), i64::from(broker_abi::Status::NotFound.code()), "a new instance gets no old grant");
    let revoke = pb::RevokeRequest { region: Some(region_ref("", "data")), grant_id };
    assert_eq!(code(rpc!(d, alpha, revoke, revoke)), Code::NotFound, "the grant was forgotten");
}

/// Issue 15, item 1, through the daemon with a tenant token only: a region the tenant creates without
/// member rights is closed to its own apps until it grants them; a read-only grant is read-only, and
/// revoking it takes the access away; member rights open it to every app of the tenant, and changing
/// them revokes what was opened through the old ones.
#[test]
fn r15_a_tenant_token_gives_its_apps_only_what_it_grants() {
    use broker_abi::{rights, Status};
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let t = tenant(&d, &admin, "alpha");
    upload(&d, &t, "app", broker_guests::HANDLE_APP_WASM);
    start(&d, &t, "app", "reader");
    start(&d, &t, "app", "writer");
    let create = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "data".into(),
        size: 4096,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: 0,
        member_rights: 0,
        replication: 0,
    };
    assert_eq!(rpc!(d, t, create_region, create).expect("create").member_rights, 0);
    let status = |s: Status| i64::from(s.code());
    let i = |v: i64| pb::Value { value: Some(pb::value::Value::I64(v)) };
    let i32v = |v: i32| pb::Value { value: Some(pb::value::Value::I32(v)) };
    let run = |inst: &str, export: &str, args: Vec<pb::Value>| {
        as_i64(&call(&d, &t, inst, export, args).expect(export))
    };
    // handle_app's region 0 is "data".
    assert_eq!(run("reader", "open", vec![i32v(0)]), status(Status::PermissionDenied), "nothing granted yet");

    let grant = pb::GrantRequest {
        region: Some(region_ref("", "data")),
        instance: "reader".into(),
        rights: rights::READ,
        offset: 0,
        len: None,
    };
    let grant_id = rpc!(d, t, grant, grant).expect("grant").grant_id;
    let h = i32::try_from(run("reader", "open", vec![i32v(0)])).expect("a handle");
    assert!(h > 0, "the grant opens it: {h}");
    assert_eq!(run("reader", "load_u64", vec![i32v(h), i(0)]), 0);
    assert_eq!(run("reader", "store_u64", vec![i32v(h), i(0), i(5)]), status(Status::PermissionDenied));
    assert_eq!(run("writer", "open", vec![i32v(0)]), status(Status::PermissionDenied), "writer has nothing");
    rpc!(d, t, revoke, pb::RevokeRequest { region: Some(region_ref("", "data")), grant_id }).expect("revoke");
    assert_eq!(run("reader", "load_u64", vec![i32v(h), i(0)]), status(Status::StaleHandle), "revoked");

    let open_to = |rights: u32| {
        let req = pb::SetMemberRightsRequest { region: Some(region_ref("", "data")), rights };
        rpc!(d, t, set_member_rights, req).expect("set member rights").member_rights
    };
    assert_eq!(open_to(rights::READ | rights::WRITE), rights::READ | rights::WRITE);
    let w = i32::try_from(run("writer", "open", vec![i32v(0)])).expect("a handle");
    assert_eq!(run("writer", "store_u64", vec![i32v(w), i(0), i(5)]), 0);
    assert_eq!(run("reader", "load_u64", vec![i32v(h), i(0)]), status(Status::StaleHandle), "still revoked");
    assert_eq!(open_to(0), 0);
    assert_eq!(run("writer", "load_u64", vec![i32v(w), i(0)]), status(Status::StaleHandle));
    assert_eq!(run("writer", "open", vec![i32v(0)]), status(Status::PermissionDenied));
    let info = rpc!(d, t, get_region, region_ref("", "data")).expect("info");
    assert_eq!((info.member_rights, info.version), (0, 1), "one write got through, under member rights");
}

/// A grant through the API of a region an app created (which is not stored, so it does not survive a
/// restart) is dropped at the restart, not kept by name: a region later created under that name is
/// not the one granted, and the other tenant's app cannot open it.
#[test]
fn r15_a_grant_whose_region_is_gone_after_a_restart_is_dropped_not_reused_by_name() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let i32v = |v: i32| pb::Value { value: Some(pb::value::Value::I32(v)) };
    let i64v = |v: i64| pb::Value { value: Some(pb::value::Value::I64(v)) };
    let (alpha_token, beta_token);
    {
        let d = Daemon::start(Some(dir.clone()));
        let admin = d.client(Some(&d.admin));
        let alpha = tenant(&d, &admin, "alpha");
        let beta = tenant(&d, &admin, "beta");
        let token = |name: &str| {
            rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: name.into(), rotate: false })
                .expect("token")
                .token
        };
        (alpha_token, beta_token) = (token("alpha"), token("beta"));
        for c in [&alpha, &beta] {
            upload(&d, c, "app", broker_guests::HANDLE_APP_WASM);
        }
        start(&d, &alpha, "app", "maker");
        start(&d, &beta, "app", "reader");
        // The maker app creates "data" (handle_app's region 0) itself.
        let made =
            as_i64(&call(&d, &alpha, "maker", "create", vec![i32v(0), i64v(4096), i32v(0)]).expect("create"));
        assert!(made > 0, "created: {made}");
        let grant = pb::GrantRequest {
            region: Some(region_ref("", "data")),
            instance: "beta/reader".into(),
            rights: broker_abi::rights::READ,
            offset: 0,
            len: None,
        };
        rpc!(d, alpha, grant, grant).expect("grant");
        // beta's reader opens "alpha/data" (handle_app's region 1).
        assert!(as_i64(&call(&d, &beta, "reader", "open", vec![i32v(1)]).expect("open")) > 0);
    }
    let d = Daemon::start(Some(dir.clone()));
    let alpha = d.client(Some(&alpha_token));
    let beta = d.client(Some(&beta_token));
    region(&d, &alpha, "data", 4096, pb::Mode::Handle, pb::Backing::Ephemeral);
    let opened = as_i64(&call(&d, &beta, "reader", "open", vec![i32v(1)]).expect("open"));
    assert_eq!(
        opened,
        i64::from(broker_abi::Status::NotFound.code()),
        "the new alpha/data was never granted"
    );
    drop(d);
    // Nor after another restart: the record is gone, not waiting for the name.
    let d = Daemon::start(Some(dir.clone()));
    let beta = d.client(Some(&beta_token));
    let opened = as_i64(&call(&d, &beta, "reader", "open", vec![i32v(1)]).expect("open"));
    assert_eq!(opened, i64::from(broker_abi::Status::NotFound.code()));
    drop(d);
}

/// A WASI app over gRPC with a tenant token: its arguments and environment come from the request, its
/// output comes back through `InstanceLogs` (the lines kept, then followed as it writes), `proc_exit`
/// is ABORTED and stops it; and the bad cases: bad settings name their field, a module that is not a
/// WASI app has no logs, and another tenant cannot read them.
#[test]
fn r17_a_wasi_apps_output_is_read_and_followed_over_grpc() {
    let d = Daemon::start(None);
    let admin = d.client(Some(&d.admin));
    let acme = tenant(&d, &admin, "acme");
    let other = tenant(&d, &admin, "other");
    upload(&d, &acme, "app", broker_guests::WASI_STD_APP_WASM);
    let start_msg =
        |name: &str, args: Vec<String>, env: Vec<String>, log_bytes: u64| pb::StartInstanceRequest {
            tenant: String::new(),
            module: "app".into(),
            name: name.into(),
            config: Some(pb::InstanceConfig { args, env, log_bytes, ..Default::default() }),
        };
    let msg = start_msg("a", vec!["app".into(), "-v".into()], vec!["MODE=test".into()], 0);
    rpc!(d, acme, start_instance, msg).expect("start");
    assert_eq!(as_i64(&call(&d, &acme, "a", "args_env", vec![]).expect("call")), 3);

    let logs = |c: &Client, name: &str, follow: bool, tail: u32| {
        let r = pb::InstanceLogsRequest {
            instance: Some(pb::InstanceRef { tenant: String::new(), name: name.into() }),
            follow,
            tail,
        };
        let mut inner = c.inner.clone();
        d.rt.block_on(async move { inner.instance_logs(c.req(r)).await }).map(tonic::Response::into_inner)
    };
    let text = |l: &pb::LogLine| String::from_utf8_lossy(&l.text).into_owned();
    let mut kept = logs(&acme, "a", false, 0).expect("logs");
    let mut got = Vec::new();
    while let Some(l) = d.rt.block_on(kept.message()).expect("stream") {
        assert_eq!(l.stream, i32::from(pb::LogStream::Stdout));
        got.push(text(&l));
    }
    assert_eq!(got, ["arg app", "arg -v", "env MODE=test"], "without follow the stream ends");

    // Following: the last line kept, then each new one as it is written.
    let mut follow = logs(&acme, "a", true, 1).expect("follow");
    let first = d.rt.block_on(follow.message()).expect("stream").expect("line");
    assert_eq!((first.seq, text(&first)), (2, "env MODE=test".to_owned()));
    assert_eq!(as_i64(&call(&d, &acme, "a", "hello", vec![]).expect("call")), 2);
    let out = d.rt.block_on(follow.message()).expect("stream").expect("line");
    let err = d.rt.block_on(follow.message()).expect("stream").expect("line");
    assert_eq!((out.seq, text(&out)), (3, "hello from a std wasm32-wasip1 app".to_owned()));
    assert_eq!(
        (err.stream, text(&err)),
        (i32::from(pb::LogStream::Stderr), "and a line on stderr".to_owned())
    );

    // proc_exit: ABORTED, and the instance is stopped; deleting it ends the follower.
    let quit = call(&d, &acme, "a", "quit", vec![i32v(3)]).expect_err("exit");
    assert_eq!(quit.code(), Code::Aborted, "{quit:?}");
    assert!(quit.message().contains("status 3"), "{quit:?}");
    let status = rpc!(d, acme, get_instance, pb::InstanceRef { tenant: String::new(), name: "a".into() });
    assert_eq!(status.expect("instance").state, i32::from(pb::InstanceState::Stopped));
    let exiting = d.rt.block_on(follow.message()).expect("stream").expect("line");
    assert_eq!(text(&exiting), "exiting with 3");
    rpc!(d, acme, delete_instance, pb::InstanceRef { tenant: String::new(), name: "a".into() })
        .expect("delete");
    assert!(
        d.rt.block_on(follow.message()).expect("stream").is_none(),
        "the follower ends with the instance"
    );

    // Bad settings, each naming its field; nothing is started.
    for (msg, field) in [
        (start_msg("b", vec![], vec!["NOEQUALS".into()], 0), "config.env"),
        (start_msg("b", vec!["a\0b".into()], vec![], 0), "config.args"),
        (start_msg("b", vec![], vec![], 100), "config.log_bytes"),
        (start_msg("b", vec![], vec![], 1 << 40), "config.log_bytes"),
    ] {
        let e = rpc!(d, acme, start_instance, msg).expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    // A module that is not a WASI app has no logs; another tenant cannot read acme's.
    upload(&d, &acme, "plain", broker_guests::HANDLE_APP_WASM);
    start(&d, &acme, "plain", "p");
    assert_eq!(logs(&acme, "p", false, 0).map(|_| ()).expect_err("no logs").code(), Code::FailedPrecondition);
    let msg = start_msg("c", vec![], vec![], 0);
    rpc!(d, acme, start_instance, msg).expect("start");
    let r = pb::InstanceLogsRequest {
        instance: Some(pb::InstanceRef { tenant: "acme".into(), name: "c".into() }),
        follow: false,
        tail: 0,
    };
    let mut inner = other.inner.clone();
    let denied = d.rt.block_on(async move { inner.instance_logs(other.req(r)).await }).map(|_| ());
    assert_eq!(denied.expect_err("another tenant").code(), Code::PermissionDenied);
    let missing = logs(&acme, "nobody", false, 0).map(|_| ()).expect_err("no such instance");
    assert_eq!(missing.code(), Code::NotFound);
}

/// Log streams are bounded like watches (each holds a unit of the tenant's `watches` quota) and hold
/// no log: a deleted instance's ring goes back to its tenant while an unread follower is still open,
/// and that follower ends. Only the operator grants directories. A restart after the tenant's
/// `log_bytes` quota was lowered below what it holds brings every instance back.
#[test]
fn r17_log_streams_are_bounded_and_restores_keep_instances_over_a_lowered_log_quota() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let d = Daemon::start(Some(tmp.path().to_path_buf()));
    let admin = d.client(Some(&d.admin));
    let quotas = pb::Quotas { watches: Some(2), ..small_quotas(pb::Quotas::default()) };
    let acme = tenant_with(&d, &admin, "acme", Some(quotas));
    upload(&d, &acme, "app", broker_guests::WASI_STD_APP_WASM);
    start(&d, &acme, "app", "a");
    start(&d, &acme, "app", "b");
    let follow = |c: &Client, name: &str| {
        let r = pb::InstanceLogsRequest {
            instance: Some(pb::InstanceRef { tenant: "acme".into(), name: name.into() }),
            follow: true,
            tail: 0,
        };
        let mut inner = c.inner.clone();
        d.rt.block_on(async move { inner.instance_logs(c.req(r)).await }).map(tonic::Response::into_inner)
    };
    // Lines the follower never reads.
    assert_eq!(as_i64(&call(&d, &acme, "a", "flood", vec![i32v(1000)]).expect("flood")), 1000);
    let mut first = follow(&acme, "a").expect("first stream");
    let _second = follow(&acme, "a").expect("second stream");
    let third = follow(&acme, "b").map(|_| ()).expect_err("over the watches quota");
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    let usage = || {
        let t = rpc!(d, admin, list_tenants, pb::ListTenantsRequest {}).expect("tenants").tenants;
        t.into_iter().find(|t| t.name == "acme").and_then(|t| t.usage).expect("usage")
    };
    assert_eq!(usage().log_bytes, 2 * broker::wasi::DEFAULT_LOG_BYTES);
    rpc!(d, acme, delete_instance, pb::InstanceRef { tenant: String::new(), name: "a".into() })
        .expect("delete");
    assert_eq!(usage().log_bytes, broker::wasi::DEFAULT_LOG_BYTES, "open followers do not pin a deleted log");
    // The unread follower gets what was queued, then ends.
    let mut got = 0;
    while let Some(_line) = d.rt.block_on(first.message()).expect("stream") {
        got += 1;
        assert!(got <= 1000);
    }
    assert!(got > 0);

    // Only the operator grants directories.
    let msg = |name: &str| pb::StartInstanceRequest {
        tenant: "acme".into(),
        module: "app".into(),
        name: name.into(),
        config: Some(pb::InstanceConfig {
            dirs: vec![pb::DirGrant { path: "files".into(), guest_path: "/data".into(), writable: true }],
            ..Default::default()
        }),
    };
    let denied =
        rpc!(d, acme, start_instance, msg("c")).expect_err("a tenant cannot grant itself a directory");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    rpc!(d, admin, start_instance, msg("c")).expect("the operator can");

    // Lower log_bytes below what acme holds (two rings), then restart: both instances come back.
    let lowered = pb::Quotas { log_bytes: Some(0), watches: Some(2), ..small_quotas(pb::Quotas::default()) };
    rpc!(d, admin, set_quotas, pb::SetQuotasRequest { tenant: "acme".into(), quotas: Some(lowered) })
        .expect("lowering is accepted");
    drop((first, _second));
    d.stop();
    let d = Daemon::start(Some(tmp.path().to_path_buf()));
    let admin = d.client(Some(&d.admin));
    let listed = rpc!(d, admin, list_instances, pb::ListInstancesRequest { tenant: "acme".into() })
        .expect("list")
        .instances;
    let mut names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["b", "c"], "no instance lost to the lowered quota");
}
