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
    rpc!(d, admin, create_tenant, pb::CreateTenantRequest { name: name.into(), quotas: None })
        .expect("tenant");
    let t = rpc!(d, admin, issue_token, pb::IssueTokenRequest { tenant: name.into(), rotate: false })
        .expect("token");
    d.client(Some(&t.token))
}

fn region(d: &Daemon, c: &Client, name: &str, size: u64, mode: pb::Mode, backing: pb::Backing) -> pb::Region {
    let msg = pb::CreateRegionRequest {
        tenant: String::new(),
        name: name.into(),
        size,
        mode: mode.into(),
        policy: 0,
        backing: backing.into(),
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
    let quotas =
        pb::Quotas { region_bytes: 100, regions: 1, instances: 1, handles: 10, memory_bytes: 1 << 30 };
    let updated =
        rpc!(d, admin, set_quotas, pb::SetQuotasRequest { tenant: "t".into(), quotas: Some(quotas) })
            .expect("quotas");
    assert_eq!(updated.quotas.map(|q| q.regions), Some(1));
    let too_big = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "r".into(),
        size: 101,
        mode: 0,
        policy: 0,
        backing: 0,
    };
    assert_eq!(code(rpc!(d, t, create_region, too_big)), Code::ResourceExhausted);
    region(&d, &t, "r", 100, pb::Mode::Handle, pb::Backing::Ephemeral);
    let second = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "s".into(),
        size: 1,
        mode: 0,
        policy: 0,
        backing: 0,
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
        config: Some(pb::InstanceConfig { call_timeout_ms: 10 * 3_600_000, max_memory_bytes: 0 }),
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
    rpc!(d, t, stop_instance, pb::InstanceRef { tenant: String::new(), name: "i".into() }).expect("stop");
    assert!(rpc!(d, t, list_instances, pb::ListInstancesRequest { tenant: String::new() })
        .expect("list")
        .instances
        .is_empty());
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
        mode: 0,
        policy: 0,
        backing: 0,
    };
    assert_eq!(code(rpc!(d, alpha, create_region, zero)), Code::InvalidArgument);
    let bad_mode = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "z".into(),
        size: 1,
        mode: 99,
        policy: 0,
        backing: 0,
    };
    assert_eq!(code(rpc!(d, alpha, create_region, bad_mode)), Code::InvalidArgument);
    let persistent = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "z".into(),
        size: 1,
        mode: 0,
        policy: 0,
        backing: pb::Backing::Persistent.into(),
    };
    assert_eq!(code(rpc!(d, alpha, create_region, persistent)), Code::FailedPrecondition, "no state dir");
    let dup = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "data".into(),
        size: 1,
        mode: 0,
        policy: 0,
        backing: 0,
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
    let dir = std::env::temp_dir().join(format!("broker-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_talks_to_the_daemon() {
    let d = Daemon::start(None);
    let run = |args: &[&str]| -> (bool, String) {
        let mut full = vec!["broker"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--addr", &d.addr, "--token", &d.admin]);
        let cli = broker::control::cli::Cli::try_parse_from(full).expect("valid arguments");
        let mut out = Vec::new();
        let ok = broker::control::cli::run(cli, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        match ok {
            Ok(true) => (true, text),
            Ok(false) => (false, text),
            Err(e) => (false, e.to_string()),
        }
    };
    let (ok, text) = run(&["tenant", "create", "acme", "--regions", "3"]);
    assert!(ok, "{text}");
    assert!(text.contains("acme") && text.contains("0/3"), "{text}");
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
    // A wrong address fails with a connection hint.
    let cli = broker::control::cli::Cli::try_parse_from([
        "broker",
        "tenant",
        "list",
        "--addr",
        "http://127.0.0.1:1",
        "--token",
        "x",
    ])
    .expect("args");
    let err = broker::control::cli::run(cli, &mut Vec::new()).expect_err("nothing listens there");
    assert!(err.to_string().contains("is `broker serve` running"), "{err}");
}
