//! Tenants and quotas: every quota refuses with a typed error, and nothing is partly created.

use broker::{Error, InstanceConfig, Mode, Quotas, RegionSpec, Resource, Rights, Usage};
use broker_tests::{args, broker, call, code, handle, start, Status};

fn quota_of(e: &Error) -> Option<Resource> {
    match e {
        Error::Quota(q) => Some(q.resource),
        _ => None,
    }
}

#[test]
fn region_quotas_refuse_and_leave_nothing_behind() {
    let b = broker();
    let t = b
        .create_tenant("t", Quotas { regions: 2, region_bytes: 10_000, ..Quotas::default() })
        .expect("tenant");
    b.create_region(t, RegionSpec::new("a", 6000, Mode::Handle).with_members(Rights::ALL)).expect("fits");
    let err = b
        .create_region(t, RegionSpec::new("b", 5000, Mode::Handle).with_members(Rights::ALL))
        .expect_err("bytes");
    assert_eq!(quota_of(&err), Some(Resource::RegionBytes));
    assert_eq!(b.region_id(t, "b"), None);
    b.create_region(t, RegionSpec::new("b", 4000, Mode::Handle).with_members(Rights::ALL)).expect("fits");
    let err = b
        .create_region(t, RegionSpec::new("c", 1, Mode::Handle).with_members(Rights::ALL))
        .expect_err("count");
    assert_eq!(quota_of(&err), Some(Resource::Regions));
    // Each region's page-version table (8 bytes per 4 KiB page: 2 pages and 1) is host memory.
    assert_eq!(
        b.tenant_usage(t).expect("usage"),
        Usage { region_bytes: 10_000, regions: 2, memory_bytes: 8 * (2 + 1), ..Usage::default() }
    );

    // Raising the quota lets the same request through.
    b.set_quotas(t, Quotas { regions: 3, region_bytes: 10_001, ..Quotas::default() }).expect("set");
    b.create_region(t, RegionSpec::new("c", 1, Mode::Handle).with_members(Rights::ALL)).expect("fits now");
}

/// Issue 15: a region's page-version table (a `u64` per 4 KiB page) is charged to its owner's
/// `memory_bytes`, refused like any other allocation over the quota, and given back with the region.
#[test]
fn a_regions_page_version_table_is_charged_to_its_owners_memory() {
    let b = broker();
    let mib = 1u64 << 20;
    let table = mib / 4096 * 8;
    let t = b
        .create_tenant("t", Quotas { memory_bytes: table + table / 2, ..Quotas::default() })
        .expect("tenant");
    let r =
        b.create_region(t, RegionSpec::new("a", mib, Mode::Handle).with_members(Rights::ALL)).expect("fits");
    assert_eq!(b.tenant_usage(t).expect("usage").memory_bytes, table);
    let err = b
        .create_region(t, RegionSpec::new("b", mib, Mode::Mirror).with_members(Rights::ALL))
        .expect_err("a second table is over");
    assert_eq!(quota_of(&err), Some(Resource::MemoryBytes));
    assert_eq!(b.region_id(t, "b"), None, "nothing is left of the refused region");
    assert_eq!(b.tenant_usage(t).expect("usage").regions, 1);
    b.destroy_region(r).expect("destroy");
    assert_eq!(b.tenant_usage(t).expect("usage").memory_bytes, 0, "given back with the region");
    b.create_region(t, RegionSpec::new("b", mib, Mode::Mirror).with_members(Rights::ALL))
        .expect("fits again");
}

/// Issue 14: `cpu_shares` is a weight the scheduler divides by, so 0 and values above the maximum are
/// refused by the embedding API too, not only at the control plane; a refused change keeps the old value.
#[test]
fn r14_cpu_shares_outside_one_to_the_maximum_are_refused() {
    let b = broker();
    let shares = |cpu_shares| Quotas { cpu_shares, ..Quotas::default() };
    let refused = |value: u64| Error::InvalidArgument {
        field: "cpu_shares",
        reason: format!("cpu_shares {value} is out of range: a weight is 1 to {}", Quotas::MAX_CPU_SHARES),
    };
    for bad in [0, Quotas::MAX_CPU_SHARES + 1, u64::MAX] {
        assert_eq!(b.create_tenant("t", shares(bad)).err(), Some(refused(bad)));
    }
    assert_eq!(b.tenant_id("t"), None, "nothing was created");
    let t = b.create_tenant("t", shares(1)).expect("the smallest weight");
    b.set_quotas(t, shares(Quotas::MAX_CPU_SHARES)).expect("the largest weight");
    assert_eq!(b.set_quotas(t, shares(0)).err(), Some(refused(0)));
    assert_eq!(b.tenant_info(t).expect("info").quotas.cpu_shares, Quotas::MAX_CPU_SHARES);
}

#[test]
fn region_creation_bad_inputs() {
    let b = broker();
    let t = b.create_tenant("t", Quotas::default()).expect("tenant");
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(RegionSpec, Expect)> = vec![
        (RegionSpec::new("", 1, Mode::Handle).with_members(Rights::ALL), |e| {
            matches!(e, Error::InvalidName { .. })
        }),
        (RegionSpec::new("a/b", 1, Mode::Handle).with_members(Rights::ALL), |e| {
            matches!(e, Error::InvalidName { .. })
        }),
        (RegionSpec::new("x", 0, Mode::Handle).with_members(Rights::ALL), |e| {
            matches!(e, Error::Region(broker::region::RegionError::ZeroSize))
        }),
        (RegionSpec::new("x", u64::MAX, Mode::Handle).with_members(Rights::ALL), |e| {
            matches!(e, Error::Region(broker::region::RegionError::TooLarge { .. }))
        }),
    ];
    for (spec, expected) in cases {
        let err = b.create_region(t, spec.clone()).expect_err("refused");
        assert!(expected(&err), "{spec:?} gave {err:?}");
    }
    // Every mode is implemented now; the error stays for future modes and says what it means.
    assert!(Error::ModeNotSupported(broker::mode::ModeNotSupported(Mode::Shared))
        .to_string()
        .contains("not supported"));
    assert_eq!(b.tenant_usage(t).expect("usage"), Usage::default());
    b.create_region(t, RegionSpec::new("x", 1, Mode::Handle).with_members(Rights::ALL)).expect("valid");
    assert!(matches!(
        b.create_region(t, RegionSpec::new("x", 1, Mode::Handle).with_members(Rights::ALL)),
        Err(Error::RegionExists(_))
    ));
    // The same name in another tenant is a different region.
    let u = b.create_tenant("u", Quotas::default()).expect("tenant");
    b.create_region(u, RegionSpec::new("x", 1, Mode::Handle).with_members(Rights::ALL))
        .expect("per-tenant names");
    assert!(matches!(b.create_tenant("u", Quotas::default()), Err(Error::TenantExists(_))));
    assert!(matches!(b.create_tenant("bad name", Quotas::default()), Err(Error::InvalidName { .. })));
}

#[test]
fn instance_quota_refuses_and_frees_the_name() {
    let b = broker();
    let t = b.create_tenant("t", Quotas { instances: 1, ..Quotas::default() }).expect("tenant");
    let first = start(&b, t, "runtime_misbehave", "one");
    let err = b.start_instance(t, "runtime_misbehave", "two", InstanceConfig::default()).expect_err("quota");
    assert_eq!(quota_of(&err), Some(Resource::Instances));
    assert_eq!(b.instance_id(t, "two"), None);
    // A stopped instance keeps its name and can be restarted, so it keeps its slot too.
    b.stop_instance(first).expect("stop");
    let err = b
        .start_instance(t, "runtime_misbehave", "two", InstanceConfig::default())
        .expect_err("a stopped instance still counts");
    assert_eq!(quota_of(&err), Some(Resource::Instances));
    b.delete_instance(first).expect("delete");
    assert_eq!(b.instance_id(t, "one"), None, "deleting frees the name");
    b.start_instance(t, "runtime_misbehave", "two", InstanceConfig::default()).expect("room again");
    assert!(matches!(
        b.start_instance(t, "runtime_misbehave", "two", InstanceConfig::default()),
        Err(Error::Quota(_) | Error::InstanceExists(_))
    ));
}

#[test]
fn instance_start_bad_inputs() {
    let b = broker();
    let t = b.create_tenant("t", Quotas::default()).expect("tenant");
    assert!(matches!(
        b.start_instance(t, "nope", "i", InstanceConfig::default()),
        Err(Error::ModuleNotFound(_))
    ));
    assert!(matches!(b.load_module(t, "junk", b"not wasm"), Err(Error::InvalidModule { .. })));
    // A module importing something the broker does not provide is refused at load time.
    let foreign = wasm_importing("env", "system");
    let err = b.load_module(t, "foreign", &foreign).expect_err("foreign import");
    assert!(err.to_string().contains("env::system"), "{err}");
    // A module importing a broker function with the wrong signature is refused at start.
    let wrong_sig = wasm_importing(broker_abi::MODULE, broker_abi::func::NOP);
    b.load_module(t, "wrong-sig", &wrong_sig).expect("names are fine");
    assert!(matches!(
        b.start_instance(t, "wrong-sig", "i", InstanceConfig::default()),
        Err(Error::InvalidModule { .. })
    ));
    // Only the module that loaded is charged; the refused ones left nothing behind.
    let usage = b.tenant_usage(t).expect("usage");
    let loaded = Usage {
        modules: 1,
        module_bytes: u64::try_from(wrong_sig.len()).expect("small"),
        compiled_bytes: usage.compiled_bytes,
        ..Usage::default()
    };
    assert_eq!(usage, loaded, "nothing else was charged");
}

/// A minimal module importing `module::name` as a `(i32) -> ()` function, encoded by hand.
fn wasm_importing(module: &str, name: &str) -> Vec<u8> {
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    // Type section: one type (i32) -> ().
    out.extend([1, 5, 1, 0x60, 1, 0x7f, 0]);
    let mut import = vec![1];
    for s in [module, name] {
        import.push(u8::try_from(s.len()).expect("short"));
        import.extend(s.as_bytes());
    }
    import.extend([0, 0]);
    out.push(2);
    out.push(u8::try_from(import.len()).expect("short"));
    out.extend(import);
    out
}

#[test]
fn handle_quota_is_enforced_on_guest_opens() {
    let b = broker();
    let t = b.create_tenant("t", Quotas { handles: 3, ..Quotas::default() }).expect("tenant");
    b.create_region(t, RegionSpec::new("data", 64, Mode::Handle).with_members(Rights::ALL)).expect("region");
    let app = start(&b, t, "handle_app", "app");
    let hs: Vec<i32> = (0..3).map(|_| handle(call(&b, app, "open", args![0]))).collect();
    assert_eq!(call(&b, app, "open", args![0]), code(Status::QuotaExceeded));
    assert_eq!(call(&b, app, "restrict", args![hs[0], 1, 0i64, -1i64]), code(Status::QuotaExceeded));
    assert_eq!(b.handle_count(app).expect("count"), 3);
    assert_eq!(call(&b, app, "close", args![hs[1]]), 0);
    handle(call(&b, app, "open", args![0]));
    // Churning opens and closes never leaks quota.
    assert_eq!(call(&b, app, "close", args![hs[0]]), 0);
    assert_eq!(call(&b, app, "churn", args![0, 10_000]), 10_000);
    assert_eq!(b.tenant_usage(t).expect("usage").handles, 2);
}

#[test]
fn guest_region_creation_counts_against_the_quota() {
    let b = broker();
    let t =
        b.create_tenant("t", Quotas { regions: 1, region_bytes: 8192, ..Quotas::default() }).expect("tenant");
    let app = start(&b, t, "handle_app", "app");
    let h = handle(call(&b, app, "create", args![5, 4096i64, 0]));
    assert_eq!(call(&b, app, "info_len", args![h]), 4096);
    assert_eq!(
        call(&b, app, "create", args![5, 4096i64, 0]),
        code(Status::QuotaExceeded),
        "the count quota is checked first"
    );
    assert_eq!(call(&b, app, "create", args![0, 4096i64, 0]), code(Status::QuotaExceeded));
    assert_eq!(call(&b, app, "create", args![4, 16i64, 0]), code(Status::InvalidArgument), "empty name");
    assert_eq!(call(&b, app, "create", args![1, 16i64, 0]), code(Status::InvalidArgument), "qualified name");
    assert_eq!(call(&b, app, "open_long_name", args![]), code(Status::InvalidArgument));
    assert_eq!(
        b.tenant_usage(t).expect("usage"),
        Usage {
            region_bytes: 4096,
            regions: 1,
            handles: 1,
            instances: 1,
            memory_bytes: b.tenant_usage(t).expect("usage").memory_bytes,
            windows: 0,
            modules: 1,
            module_bytes: u64::try_from(broker_guests::HANDLE_APP_WASM.len()).expect("small"),
            compiled_bytes: b.tenant_usage(t).expect("usage").compiled_bytes,
            trampolines: 0,
            watches: 0,
            log_bytes: 0,
            events: 0,
        }
    );
    // A handle quota of zero: the created region cannot be held, so it is not created at all.
    let u = b.create_tenant("u", Quotas { handles: 0, ..Quotas::default() }).expect("tenant");
    let app_u = start(&b, u, "handle_app", "app");
    assert_eq!(call(&b, app_u, "create", args![5, 4096i64, 0]), code(Status::QuotaExceeded));
    assert_eq!(b.region_id(u, "scratch"), None);
    assert_eq!(
        (b.tenant_usage(u).expect("usage").regions, b.tenant_usage(u).expect("usage").region_bytes),
        (0, 0)
    );
}
