//! Callbacks both ways: region watches delivered to app callbacks in version order with bounded
//! queues, the unchanged C toolkit firing events into app callbacks through native trampolines, and
//! host services called through function handles.

use std::sync::Arc;

use broker::{Broker, BrokerConfig, InstanceId, Mode, RegionId, RegionSpec, Rights, TenantId, Ui, UiConfig};
use broker_tests::{args, broker, broker_with_ui, call, code, start, tenant, watchdog, Status};
use parking_lot::Mutex;

/// The toolkit's C state and the trampoline table are process-wide: tests that register toolkit callbacks
/// take turns.
static TOOLKIT: Mutex<()> = Mutex::new(());

/// A broker with the UI toolkit extension (`callback_app` uses the toolkit too), tenant "alpha" with the
/// regions "data" and "flag" open to its apps, and a `callback_app` instance.
fn setup() -> (Broker, TenantId, RegionId, InstanceId) {
    let b = broker_with_ui();
    let (t, data, app) = alpha(&b);
    (b, t, data, app)
}

/// Tenant "alpha" with the regions "data" and "flag" open to its apps, and a `callback_app` instance.
fn alpha(b: &Broker) -> (TenantId, RegionId, InstanceId) {
    let t = tenant(b, "alpha");
    let data = b
        .create_region(t, RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.create_region(t, RegionSpec::new("flag", 64, Mode::Handle).with_members(Rights::ALL)).expect("region");
    let app = start(b, t, "callback_app", "app");
    (t, data, app)
}

/// The named test for the `callback_app` guest: host writes reach the app's watch callback, with its
/// user data, in version order, relative to the handle's range; unwatch and close end the watch.
#[test]
pub(crate) fn callback_app() {
    let (b, _, data, app) = setup();
    let h = call(&b, app, "watch", args![0, 7]);
    assert!(h > 0, "watch failed: {h}");
    for (i, off) in [0u64, 100, 4000].iter().enumerate() {
        assert_eq!(b.write_region(data, *off, &[1, 2, 3, 4]).expect("write"), i as u64 + 1);
    }
    // Deliveries are queued on the app's worker ahead of this call.
    assert_eq!(call(&b, app, "watch_calls", args![]), 3);
    assert_eq!(call(&b, app, "watch_user_data", args![]), 7);
    assert_eq!(call(&b, app, "watch_last_version", args![]), 3);
    assert_eq!(call(&b, app, "watch_out_of_order", args![]), 0);
    assert_eq!(call(&b, app, "watch_last_range", args![]), (4000 << 32) | 4);
    assert!(call(&b, app, "watch", args![0, 8]) > 0, "a second handle may watch the same region");
    b.write_region(data, 0, &[5]).expect("write");
    assert_eq!(call(&b, app, "watch_calls", args![]), 5, "both watches heard the write");
    assert_eq!(call(&b, app, "unwatch", args![]), 0);
    assert_eq!(call(&b, app, "unwatch", args![]), code(Status::NotFound));
    b.write_region(data, 0, &[9]).expect("write");
    let calls = call(&b, app, "watch_calls", args![]);
    assert_eq!(calls, 6, "only the second watch is left");
    assert_eq!(call(&b, app, "close_all", args![]), 0);
    b.write_region(data, 0, &[9]).expect("write");
    assert_eq!(call(&b, app, "watch_calls", args![]), calls, "closing the handles ended every watch");
    assert_eq!(b.region_info(data).expect("info").version, 6);
}

#[test]
fn callbacks_with_bad_indexes_or_signatures_are_refused() {
    let _turn = TOOLKIT.lock();
    let (b, t, _, app) = setup();
    let wrong = call(&b, app, "wrong_sig_index", args![]);
    assert!(wrong > 0);
    let wrong = i32::try_from(wrong).expect("small index");
    for index in [0, 1_000_000, wrong, -1] {
        assert_eq!(
            call(&b, app, "watch_raw", args![0, index]),
            code(Status::BadCallback),
            "watch with index {index}"
        );
    }
    assert!(call(&b, app, "ui_make", args![0, 1]) > 0);
    for index in [0, 1_000_000, wrong] {
        assert_eq!(
            call(&b, app, "ui_on_event_raw", args![0, index]),
            code(Status::BadCallback),
            "ui callback {index}"
        );
    }
    // Watching needs the watch right.
    let other = b.create_tenant("beta", broker::Quotas::default()).expect("tenant");
    let reader = start(&b, other, "callback_app", "reader");
    let data = b.region_id(t, "data").expect("id");
    b.grant(data, reader, Rights::READ, 0, None).expect("grant");
    assert_eq!(call(&b, reader, "watch", args![2, 0]), code(Status::PermissionDenied));
    b.grant(data, reader, Rights::READ | Rights::WATCH, 0, Some(8)).expect("grant");
    assert!(call(&b, reader, "watch", args![2, 0]) > 0);
    // The sub-range grant only hears about its own 8 bytes.
    b.write_region(data, 100, &[1]).expect("write");
    b.write_region(data, 4, &[1, 1, 1, 1, 1, 1]).expect("write");
    assert_eq!(call(&b, reader, "watch_calls", args![]), 1);
    assert_eq!(call(&b, reader, "watch_last_range", args![]), (4 << 32) | 4, "clipped to the range");
    b.stop_instance(app).expect("stop");
}

#[test]
fn a_watch_flood_is_bounded_merged_and_counted() {
    watchdog(120, || {
        let (b, t, data, app) = setup();
        let b = Arc::new(b);
        assert!(call(&b, app, "watch", args![0, 1]) > 0);
        let flag = b.region_id(t, "flag").expect("id");
        let bb = Arc::clone(&b);
        let busy = std::thread::spawn(move || bb.call_i64(app, "busy_until_flag", &[]));
        let mut started = [0u8; 8];
        while started == [0; 8] {
            b.read_region(flag, 8, &mut started).expect("read");
            std::thread::yield_now();
        }
        let writes = 5_000u64;
        for i in 0..writes {
            b.write_region(data, i % 4000, &[1]).expect("write");
        }
        let capacity = broker::runtime::events::WATCH_SOURCE_CAPACITY as u64;
        assert_eq!(
            b.tenant_usage(t).expect("usage").events,
            capacity,
            "the tenant's usage counts the events queued for its busy app"
        );
        b.write_region(flag, 0, &1u64.to_le_bytes()).expect("release");
        assert!(busy.join().expect("thread").expect("busy call") >= 0);
        let calls = u64::try_from(call(&b, app, "watch_calls", args![])).expect("count");
        assert_eq!(b.tenant_usage(t).expect("usage").events, 0, "delivered events leave the count");
        let missed = u64::try_from(call(&b, app, "watch_missed", args![])).expect("count");
        assert_eq!(calls, capacity, "the queue held exactly the watch's capacity while the app was busy");
        assert_eq!(calls + missed, writes, "every change was delivered or counted as missed");
        assert_eq!(call(&b, app, "watch_out_of_order", args![]), 0);
        assert_eq!(call(&b, app, "watch_last_version", args![]), i64::try_from(writes).expect("small"));
        let (delivered, _, merged) = b.event_counts(app).expect("counts");
        assert_eq!((delivered, merged), (calls, missed));
    });
}

/// The extension of a broker built with it.
fn ui(b: &Broker) -> &Ui {
    b.ui().expect("the broker has the UI toolkit extension")
}

fn ui_region(b: &Broker, t: TenantId) -> RegionId {
    b.regions(t).into_iter().find(|r| r.name.starts_with("ui.")).map(|r| r.id).expect("an object region")
}

#[test]
fn the_toolkit_fires_events_into_app_callbacks_in_order() {
    let _turn = TOOLKIT.lock();
    let (b, t, _, app) = setup();
    let h = call(&b, app, "ui_make", args![0, 42]);
    assert!(h > 0, "ui_make: {h}");
    let obj = ui_region(&b, t);
    let n = 20;
    for i in 0..n {
        assert_eq!(ui(&b).send(obj, 3, i).expect("send"), 1, "one callback registered");
    }
    assert_eq!(call(&b, app, "ui_events", args![]), i64::from(n));
    for k in 0..n {
        let e = call(&b, app, "ui_event", args![k]);
        assert_eq!(e, (42 << 48) | (3 << 32) | i64::from(k), "event {k} in order with its user data");
    }
    // The app fires events itself; they arrive after the call that fired them.
    assert_eq!(call(&b, app, "ui_fire", args![0, 4, 99]), 1);
    assert_eq!(call(&b, app, "ui_events", args![]), i64::from(n) + 1);
    assert_eq!(call(&b, app, "ui_event", args![n]), (42 << 48) | (4 << 32) | 99);
    b.stop_instance(app).expect("stop");
    assert_eq!(ui(&b).send(obj, 3, 0).expect("send"), 0, "stopping the app unregistered its callback");
}

#[test]
fn toolkit_objects_are_regions_in_every_mode() {
    let _turn = TOOLKIT.lock();
    for (mode, raw) in [(Mode::Handle, 0), (Mode::Mirror, 1), (Mode::Shared, 2)] {
        let (b, t, _, app) = setup();
        assert!(call(&b, app, "ui_make", args![raw, 1]) > 0, "{mode}");
        let obj = ui_region(&b, t);
        assert_eq!(b.region_info(obj).expect("info").mode, mode);
        assert_eq!(call(&b, app, "ui_set_value", args![0, 5]), 0);
        assert_eq!(call(&b, app, "ui_get_value", args![0]), 5);
        assert_eq!(call(&b, app, "ui_value_via_region", args![0]), 5, "the field is in the region");
        let mut v = [0u8; 4];
        b.read_region(obj, 16, &mut v).expect("read");
        assert_eq!(i32::from_le_bytes(v), 5);
        b.write_region(obj, 16, &9i32.to_le_bytes()).expect("write");
        assert_eq!(call(&b, app, "ui_get_value", args![0]), 9, "the region is the source of truth");
        assert_eq!(call(&b, app, "ui_text", args![0]), 13);
        assert_eq!(ui(&b).object_count(), 1);
        assert_eq!(call(&b, app, "ui_delete", args![0]), 0);
        assert_eq!(ui(&b).object_count(), 0);
        assert!(b.region_info(obj).is_err(), "deleting the object destroyed its region");
    }
}

/// Issue 15: `ui_delete` destroys the object's whole region, so it takes a capability over all of it
/// held by the owning tenant's app. A sub-range with every right, or another tenant's grant of the
/// whole object, is refused and the object lives on; the owner's own handle still deletes it.
#[test]
fn ui_delete_removes_only_what_its_capability_covers() {
    let _turn = TOOLKIT.lock();
    let (b, t, _, app) = setup();
    assert!(call(&b, app, "ui_make", args![0, 1]) > 0);
    let obj = ui_region(&b, t);
    let name = b.region_info(obj).expect("info").name;
    let number: i64 = name.strip_prefix("ui.").and_then(|n| n.parse().ok()).expect("named ui.<number>");

    // An app of another tenant holding a grant of the whole object, with every right.
    let other = tenant(&b, "beta");
    let m = start(&b, other, "callback_app", "m");
    b.grant(obj, m, Rights::ALL, 0, None).expect("grant");
    let (granted, whole) = (1, -1i64);
    let delete = call(&b, m, "ui_delete_opened", args![number, granted, 0i64, whole]);
    assert_eq!(delete, code(Status::PermissionDenied));
    // A sub-range of the object with every right, in its own tenant.
    let own = start(&b, t, "callback_app", "own");
    b.grant(obj, own, Rights::ALL, 0, None).expect("grant");
    let delete = call(&b, own, "ui_delete_opened", args![number, 0, 0i64, 16i64]);
    assert_eq!(delete, code(Status::PermissionDenied));
    assert_eq!(ui(&b).object_count(), 1);
    assert_eq!(call(&b, app, "ui_set_value", args![0, 5]), 0);
    assert_eq!(call(&b, app, "ui_get_value", args![0]), 5, "the object lives on");
    assert_eq!(call(&b, app, "ui_delete", args![0]), 0, "the owner's whole handle deletes it");
    assert_eq!(ui(&b).object_count(), 0);
}

#[test]
fn events_for_trapped_or_stopped_apps_are_counted_not_crashes() {
    let _turn = TOOLKIT.lock();
    let (b, t, data, app) = setup();
    assert!(call(&b, app, "ui_make", args![0, 1]) > 0);
    assert!(call(&b, app, "watch", args![0, 1]) > 0);
    let obj = ui_region(&b, t);
    let pool = ui(&b).trampolines();
    let dead_before = pool.dead_calls();
    assert!(b.call(app, "trap", &[]).is_err());
    assert_eq!(ui(&b).send(obj, 3, 1).expect("send"), 1, "the C library still calls the trampoline");
    assert_eq!(pool.dead_calls(), dead_before + 1, "which returns safely and is counted");
    b.write_region(data, 0, &[1]).expect("a write to a watched region of a trapped app is fine");
    let (_, dead, _) = b.event_counts(app).expect("counts");
    assert!(dead >= 1, "the watch event was counted as undeliverable");
    b.stop_instance(app).expect("stop");
    assert_eq!(ui(&b).send(obj, 3, 1).expect("send"), 0);
    b.write_region(data, 0, &[2]).expect("write after stop");
}

#[test]
fn trampoline_slots_run_out_and_are_reused() {
    let _turn = TOOLKIT.lock();
    // A broker with a pool of 20 (not a multiple of the 8 callbacks an object takes), and a tenant the
    // operator lets hold more than the whole pool, so the pool's size is what runs out.
    let ui_20 = Some(UiConfig { trampolines: 20 });
    let b = Broker::new(BrokerConfig { workers: 2, ui: ui_20, ..BrokerConfig::default() }).expect("broker");
    let more = broker::Quotas { trampolines: 21, ..broker::Quotas::default() };
    let t = b.create_tenant("alpha", more).expect("tenant");
    let app = start(&b, t, "callback_app", "app");
    let pool = ui(&b).trampolines();
    assert_eq!((pool.capacity(), pool.in_use()), (20, 0));
    let free = pool.capacity();
    // Objects take up to 8 callbacks each (the toolkit's limit); fill every free trampoline.
    let mut registered = 0;
    let mut objects = 0;
    while registered < free {
        assert!(call(&b, app, "ui_make", args![0, 0]) > 0);
        registered += 1;
        for _ in 0..7 {
            if registered == free {
                break;
            }
            assert_eq!(call(&b, app, "ui_on_event_again", args![objects]), 0);
            registered += 1;
        }
        objects += 1;
    }
    assert_eq!(pool.in_use(), pool.capacity());
    assert_eq!(b.tenant_usage(t).expect("usage").trampolines, 20, "the tenant's quota is not the limit");
    assert_eq!(call(&b, app, "ui_make", args![0, 0]), code(Status::QuotaExceeded), "no trampoline left");
    assert_eq!(
        ui(&b).object_count(),
        usize::try_from(objects).expect("small"),
        "the refused object was not kept"
    );
    // Deleting an object gives its trampolines back to the pool, so the next registration fits.
    assert_eq!(call(&b, app, "ui_delete", args![0]), 0);
    assert!(pool.in_use() < pool.capacity());
    assert!(call(&b, app, "ui_make", args![0, 0]) > 0);
    b.stop_instance(app).expect("stop");
}

#[test]
fn trampoline_pool_sizes_outside_one_to_the_maximum_are_refused() {
    let max = broker::ext::ui::MAX_TRAMPOLINES;
    for bad in [0, max + 1] {
        let config =
            BrokerConfig { workers: 2, ui: Some(UiConfig { trampolines: bad }), ..BrokerConfig::default() };
        let err = Broker::new(config).err();
        assert_eq!(
            err,
            Some(broker::Error::InvalidArgument {
                field: "trampolines",
                reason: format!("a pool holds 1 to {max} trampolines (the number compiled in), not {bad}"),
            })
        );
    }
    let config =
        BrokerConfig { workers: 2, ui: Some(UiConfig { trampolines: max }), ..BrokerConfig::default() };
    let largest = Broker::new(config).expect("the maximum is valid");
    assert_eq!(ui(&largest).trampolines().capacity(), max);
}

/// Issue 16: the toolkit is an extension its host turns on. A broker without it (an embedded broker's
/// default) has no [`Broker::ui`] and refuses to load an app that imports `broker_ui_v1`, naming the
/// import, with nothing charged to the tenant; with the extension on, the same bytes load, and its host
/// service comes with it.
#[test]
fn r16_a_broker_without_the_ui_extension_refuses_toolkit_apps() {
    let (_, path) = broker_guests::ALL.iter().find(|(n, _)| *n == "callback_app").expect("the guest");
    let wasm = broker_guests::read(path).expect("guest built");
    let off = broker();
    assert!(off.ui().is_none(), "the extension is off unless the host turns it on");
    let t = tenant(&off, "alpha");
    let err = off.load_module(t, "callback_app", &wasm).expect_err("a toolkit app is refused");
    let broker::Error::InvalidModule { name, reason } = &err else {
        panic!("expected InvalidModule, got {err:?}");
    };
    assert_eq!(name, "callback_app");
    let import = reason
        .strip_prefix("imports broker_ui_v1::")
        .and_then(|r| {
            r.strip_suffix(", which the broker does not provide: its UI toolkit extension is turned off")
        })
        .unwrap_or_else(|| panic!("the error names the extension's import: {err}"));
    assert!(broker_abi::ui_func::ALL.contains(&import), "{import} is a toolkit import");
    assert_eq!(
        err.to_string(),
        format!(
            "module callback_app is invalid: imports broker_ui_v1::{import}, which the broker does not provide: \
             its UI toolkit extension is turned off"
        )
    );
    let usage = off.tenant_usage(t).expect("usage");
    assert_eq!((usage.modules, usage.module_bytes, usage.compiled_bytes), (0, 0, 0), "nothing is charged");

    let on = broker_with_ui();
    let t = tenant(&on, "alpha");
    on.load_module(t, "callback_app", &wasm).expect("the extension provides every toolkit import");
    let app = on.start_instance(t, "callback_app", "app", broker::InstanceConfig::default()).expect("starts");
    assert!(call(&on, app, "ui_make", args![0, 1]) > 0, "the toolkit works");
    assert_eq!(ui(&on).object_count(), 1);
    assert_eq!(call(&on, app, "service", args![5]), 1, "the extension's toolkit.object_count service");
    on.stop_instance(app).expect("stop");
}

#[test]
fn host_services_are_function_handles() {
    let (b, t, _, app) = setup();
    let other = b.create_tenant("beta", broker::Quotas::default()).expect("tenant");
    b.register_service("test.secret", Some(vec![other]), Arc::new(|_: &[u8]| Ok(vec![1]))).expect("register");
    b.register_service("test.fail", None, Arc::new(|_: &[u8]| Err("sensor offline".into())))
        .expect("register");
    b.register_service("test.big", None, Arc::new(|_: &[u8]| Ok(vec![7; 100]))).expect("register");
    assert!(
        b.register_service("test.big", None, Arc::new(|_: &[u8]| Ok(vec![]))).is_err(),
        "names are unique"
    );
    for i in [0i64, 1, 41] {
        let x = (i as u64).wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        assert_eq!(call(&b, app, "sensor", args![i]), i64::try_from((x >> 33) % 1000).expect("small"));
    }
    assert_eq!(call(&b, app, "service", args![1]), code(Status::NotFound));
    assert_eq!(call(&b, app, "service", args![2]), code(Status::PermissionDenied), "alpha may not use it");
    let beta_app = start(&b, other, "callback_app", "b");
    assert_eq!(call(&b, beta_app, "service", args![2]), 1, "beta may");
    assert_eq!(call(&b, app, "service", args![3]), code(Status::ServiceFailed));
    assert_eq!(call(&b, app, "service", args![4]), code(Status::OutOfBounds), "100 bytes do not fit 8");
    assert_eq!(call(&b, app, "fn_call_raw", args![0]), code(Status::InvalidHandle));
    assert_eq!(
        call(&b, app, "fn_call_raw", args![1]),
        code(Status::StaleHandle),
        "closed when the HostFn dropped"
    );
    assert_eq!(call(&b, app, "fn_call_raw", args![999]), code(Status::InvalidHandle));
    let _ = t;
}

/// Issue 14: function handles are slots reused with a new generation, so open/close churn costs
/// nothing and a handle closed long ago never reaches a service opened later in its slot.
#[test]
fn r14_function_handle_churn_reuses_slots_with_new_generations() {
    let (b, t, _, app) = setup();
    b.register_service("test.fail", None, Arc::new(|_: &[u8]| Err("sensor offline".into())))
        .expect("register");
    let handles = |b: &Broker| b.tenant_usage(t).expect("usage").handles;
    let before = handles(&b);
    // Each call opens `test.fail` (a fresh handle), calls it and closes it: 5,000 generations of one
    // slot, more than it has (4,096), so it is retired and the next slot takes over.
    for _ in 0..5_000 {
        assert_eq!(call(&b, app, "service", args![3]), code(Status::ServiceFailed));
    }
    // Slot 0's first handle (value 1) and a later one (generation 7, value 7 << 20 | 1) are stale.
    assert_eq!(call(&b, app, "fn_call_raw", args![1]), code(Status::StaleHandle));
    assert_eq!(call(&b, app, "fn_call_raw", args![(7 << 20) | 1]), code(Status::StaleHandle));
    // A slot never used is not a handle at all.
    assert_eq!(call(&b, app, "fn_call_raw", args![3]), code(Status::InvalidHandle));
    // An open function handle counts against the tenant's handles; a closed one gives it back.
    assert_eq!(handles(&b), before, "closed function handles hold no charge");
    assert!(call(&b, app, "keep_service", args![0]) > 0);
    assert_eq!(handles(&b), before + 1, "an open function handle is charged");
}

/// Issue 14: function handles count against the handles quota: opening one beyond it is refused.
#[test]
fn r14_function_handles_are_refused_beyond_the_handles_quota() {
    let (b, t, _, app) = setup();
    let used = b.tenant_usage(t).expect("usage").handles;
    b.set_quotas(t, broker::Quotas { handles: used + 2, ..broker::Quotas::default() }).expect("quotas");
    assert!(call(&b, app, "keep_service", args![0]) > 0);
    assert!(call(&b, app, "keep_service", args![0]) > 0);
    assert_eq!(call(&b, app, "keep_service", args![0]), code(Status::QuotaExceeded));
    assert_eq!(b.tenant_usage(t).expect("usage").handles, used + 2, "the refused open holds nothing");
}

/// Issue 14: the trampoline pool is process-wide, but each tenant holds at most its quota of it: one
/// tenant registering every callback it can leaves another tenant's registrations working.
#[test]
fn r14_one_tenants_callbacks_leave_another_tenants_trampolines() {
    let _turn = TOOLKIT.lock();
    let b = broker_with_ui();
    let greedy = b
        .create_tenant("greedy", broker::Quotas { trampolines: 4, ..broker::Quotas::default() })
        .expect("tenant");
    let other = tenant(&b, "other");
    let hog = start(&b, greedy, "callback_app", "hog");
    let app = start(&b, other, "callback_app", "app");
    assert!(call(&b, hog, "ui_make", args![0, 0]) > 0);
    for _ in 0..3 {
        assert_eq!(call(&b, hog, "ui_on_event_again", args![0]), 0);
    }
    assert_eq!(
        call(&b, hog, "ui_on_event_again", args![0]),
        code(Status::QuotaExceeded),
        "greedy's share is 4"
    );
    assert_eq!(call(&b, hog, "ui_make", args![0, 0]), code(Status::QuotaExceeded));
    assert_eq!(b.tenant_usage(greedy).expect("usage").trampolines, 4);
    // The other tenant registers and its callback runs when the C library fires the event.
    assert!(call(&b, app, "ui_make", args![0, 7]) > 0);
    assert_eq!(call(&b, app, "ui_fire", args![0, 3, 1]), 1, "one callback ran");
    assert_eq!(b.tenant_usage(other).expect("usage").trampolines, 1);
    // Deleting the greedy tenant's object gives its trampolines back.
    assert_eq!(call(&b, hog, "ui_delete", args![0]), 0);
    assert_eq!(b.tenant_usage(greedy).expect("usage").trampolines, 0);
}

/// Issue 14: region watches count against the tenant's `watches` quota, charged per registration and
/// given back when the watch ends, so one tenant cannot register watchers without bound.
#[test]
fn r14_watches_count_against_the_tenants_quota() {
    let b = broker_with_ui();
    let t =
        b.create_tenant("alpha", broker::Quotas { watches: 2, ..broker::Quotas::default() }).expect("tenant");
    b.create_region(t, RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.create_region(t, RegionSpec::new("flag", 64, Mode::Handle).with_members(Rights::ALL)).expect("region");
    let app = start(&b, t, "callback_app", "app");
    assert!(call(&b, app, "watch", args![0, 1]) > 0);
    assert!(call(&b, app, "watch", args![1, 2]) > 0);
    assert_eq!(call(&b, app, "watch", args![0, 3]), code(Status::QuotaExceeded), "two watches at most");
    assert_eq!(b.tenant_usage(t).expect("usage").watches, 2);
    assert_eq!(call(&b, app, "unwatch", args![]), 0);
    assert_eq!(b.tenant_usage(t).expect("usage").watches, 1, "unwatching gives the watch back");
    assert!(call(&b, app, "watch", args![0, 4]) > 0, "room again");
    assert_eq!(call(&b, app, "close_all", args![]), 0);
    assert_eq!(b.tenant_usage(t).expect("usage").watches, 0, "closing the handles ends their watches");
}

/// Issue 15: once a revoke of the grant a watch was made through returns, no callback of that watch
/// runs, including for changes queued while the app was busy (they used to be delivered afterwards,
/// with a stale handle); the tenant's count of queued events drops with them.
#[test]
fn r15_no_callback_of_a_watch_runs_after_its_revoke_returns() {
    watchdog(120, || {
        let b = Arc::new(broker_with_ui());
        let alpha = tenant(&b, "alpha");
        let data = b
            .create_region(alpha, RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
        let beta = tenant(&b, "beta");
        let flag = b
            .create_region(beta, RegionSpec::new("flag", 64, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
        let app = start(&b, beta, "callback_app", "app");
        let grant = b.grant(data, app, Rights::READ | Rights::WATCH, 0, None).expect("grant");
        assert!(call(&b, app, "watch", args![2, 0]) > 0);
        let bb = Arc::clone(&b);
        let busy = std::thread::spawn(move || bb.call_i64(app, "busy_until_flag", &[]));
        let mut started = [0u8; 8];
        while started == [0; 8] {
            b.read_region(flag, 8, &mut started).expect("read");
            assert!(!busy.is_finished(), "the busy call ended early");
            std::thread::yield_now();
        }
        for i in 0..100u64 {
            b.write_region(data, i, &[1]).expect("write");
        }
        assert!(b.tenant_usage(beta).expect("usage").events > 0, "changes are queued while the app is busy");
        b.revoke_grant(grant).expect("revoke");
        assert_eq!(b.tenant_usage(beta).expect("usage").events, 0, "the revoke dropped the queued changes");
        b.write_region(flag, 0, &1u64.to_le_bytes()).expect("release");
        assert!(busy.join().expect("thread").expect("busy call") >= 0);
        assert_eq!(call(&b, app, "watch_calls", args![]), 0, "no callback ran after the revoke");
    });
}

/// A broker with the UI extension (`callback_app` imports it), `callbacks_on_writer` as given, and a
/// host service "test.thread" that records the thread each call of it runs on; tenant "alpha" with the
/// regions "data" and "flag", and a `callback_app` instance.
fn setup_threads(
    on_writer: bool,
) -> (Broker, TenantId, RegionId, InstanceId, Arc<Mutex<Vec<std::thread::ThreadId>>>) {
    let b = Broker::new(BrokerConfig {
        workers: 2,
        ui: Some(UiConfig::default()),
        callbacks_on_writer: on_writer,
        ..BrokerConfig::default()
    })
    .expect("broker");
    let threads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&threads);
    b.register_service(
        "test.thread",
        None,
        Arc::new(move |_: &[u8]| {
            seen.lock().push(std::thread::current().id());
            Ok(vec![])
        }),
    )
    .expect("register");
    let (t, data, app) = alpha(&b);
    (b, t, data, app, threads)
}

/// Waits until `n` calls of the "test.thread" service were recorded.
fn wait_for_calls(threads: &Mutex<Vec<std::thread::ThreadId>>, n: usize) {
    while threads.lock().len() < n {
        std::thread::yield_now();
    }
}

/// Issue 18: a host write runs the watch callback of an app that is idle on the writing thread, before
/// the write returns (no hop to a worker); callbacks still run one at a time, in version order.
#[test]
fn r18_an_idle_apps_watch_callback_runs_on_the_writing_thread() {
    watchdog(120, || {
        let (b, _, data, app, threads) = setup_threads(true);
        assert!(call(&b, app, "watch_with", args![0, 0, 6]) > 0);
        let me = std::thread::current().id();
        let writes = 50;
        let mut here = 0;
        for i in 0..writes {
            // Just after a call returns, the app's worker may still hold it for a moment; the write then
            // hands the callback to that worker. A short pause leaves the app idle.
            std::thread::sleep(std::time::Duration::from_millis(1));
            assert_eq!(b.write_region(data, 0, &[1]).expect("write"), i as u64 + 1);
            {
                let ran = threads.lock();
                if ran.len() == i + 1 && ran[i] == me {
                    here += 1;
                }
            }
            wait_for_calls(&threads, i + 1);
        }
        assert!(here > 0, "no callback ran on the writing thread in {writes} writes to an idle app");
        assert_eq!(call(&b, app, "watch_calls", args![]), writes as i64);
        assert_eq!(call(&b, app, "watch_out_of_order", args![]), 0, "callbacks came in version order");
        assert_eq!(b.event_counts(app).expect("counts"), (writes as u64, 0, 0));
    });
}

/// Issue 18: with `callbacks_on_writer` off, and through `write_region_queued` (the gRPC service's
/// write) whatever the setting, every watch callback runs on the app's worker.
#[test]
fn r18_queued_writes_run_callbacks_on_the_workers() {
    watchdog(120, || {
        let me = std::thread::current().id();
        for on_writer in [false, true] {
            let (b, _, data, app, threads) = setup_threads(on_writer);
            assert!(call(&b, app, "watch_with", args![0, 0, 6]) > 0);
            for i in 0..20 {
                std::thread::sleep(std::time::Duration::from_millis(1));
                if on_writer {
                    b.write_region_queued(data, 0, &[1]).expect("write");
                } else {
                    b.write_region(data, 0, &[1]).expect("write");
                }
                wait_for_calls(&threads, i + 1);
            }
            assert!(threads.lock().iter().all(|t| *t != me), "a callback ran on the writing thread");
            assert_eq!(call(&b, app, "watch_calls", args![]), 20);
        }
    });
}

/// Issue 18: a watch callback that does not end gives the writing thread back (it goes on on a worker,
/// within an epoch tick), never runs beside a call of its app (a call waits for it), and sends the
/// app's next callbacks to its worker, so a spinning app costs a writer one tick, not one per write.
#[test]
fn r18_a_spinning_callback_gives_the_writing_thread_back() {
    watchdog(120, || {
        let (b, t, data, app, threads) = setup_threads(true);
        let flag = b.region_id(t, "flag").expect("id");
        // Both callbacks call "test.thread" (the spinning one before it spins).
        assert!(call(&b, app, "watch_with", args![1, 0, 6]) > 0, "telling watch on flag");
        assert!(call(&b, app, "watch_with", args![0, 1, 0]) > 0, "spinning watch on data");
        // Leaves the app idle, so the callback starts on this thread.
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The callback spins until the flag is set, so this write returns only if it gave the thread back.
        b.write_region(data, 0, &[1]).expect("write");
        assert_eq!(b.event_counts(app).expect("counts").0, 0, "the callback is still running");
        wait_for_calls(&threads, 1);
        let me = std::thread::current().id();
        let spun_here = threads.lock()[0] == me;
        let b = Arc::new(b);
        let bb = Arc::clone(&b);
        let caller = std::thread::spawn(move || bb.call_i64(app, "spins_done", &[]));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!caller.is_finished(), "a call ran beside the app's callback");
        b.write_region(flag, 0, &1u64.to_le_bytes()).expect("release");
        assert_eq!(caller.join().expect("thread").expect("call"), 1, "the call ran after the callback");
        wait_for_calls(&threads, 2);
        for i in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            b.write_region(flag, 0, &1u64.to_le_bytes()).expect("write");
            wait_for_calls(&threads, i + 3);
        }
        // A worker still held the app when the spinning callback came (a loaded machine): it never ran
        // here, so nothing overran here either.
        if spun_here {
            assert!(
                threads.lock()[1..].iter().all(|t| *t != me),
                "after a callback overran here, the app's next callbacks go to its worker"
            );
        } else {
            eprintln!("the spinning callback started on a worker; the cooldown was not exercised");
        }
        assert_eq!(b.instance_status(app).expect("status").traps, 0);
    });
}

/// Issue 18: app code never runs on a thread that holds a region's lock. A host watcher of "flag"
/// writes "data" while the (queued) write of "flag" still holds it; the app's callback on "data" reads
/// "flag": run there, it would wait for that lock forever (and every user of "flag" with it). It goes
/// to the app's worker instead.
#[test]
fn r18_a_host_watcher_writing_another_region_never_runs_app_code_under_a_lock() {
    watchdog(120, || {
        let (b, t, data, app, _) = setup_threads(true);
        let b = Arc::new(b);
        let flag = b.region_id(t, "flag").expect("id");
        assert!(call(&b, app, "watch_with", args![0, 1, 0]) > 0, "spinning watch on data (reads flag)");
        let weak = Arc::downgrade(&b);
        b.watch_region(
            flag,
            Arc::new(move |_: &broker::region::Change| {
                if let Some(b) = weak.upgrade() {
                    b.write_region(data, 0, &[1]).expect("the watcher's write");
                }
            }),
        )
        .expect("watch");
        // Leaves the app idle, so nothing but the lock keeps its callback off this thread.
        std::thread::sleep(std::time::Duration::from_millis(20));
        // As the gRPC service writes: the watcher's `write_region` opens the only scope on this thread.
        b.write_region_queued(flag, 0, &1u64.to_le_bytes()).expect("write");
        while call(&b, app, "spins_done", args![]) != 1 {
            std::thread::yield_now();
        }
        assert_eq!(b.instance_status(app).expect("status").traps, 0);
    });
}
