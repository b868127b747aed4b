//! The runtime: runaway guests are interrupted, traps stay inside their instance, memory growth is
//! bounded, and other instances keep serving throughout.

use std::time::Duration;

use broker::{Error, InstanceConfig, InstanceError, Mode, Quotas, RegionSpec, RunState};
use broker_tests::{args, broker, call, start, start_with, tenant, watchdog};

/// The named test for the `runtime_misbehave` guest: a runaway guest is stopped by its call deadline
/// with a clear error, and the instance reports it.
#[test]
pub(crate) fn runtime_misbehave() {
    watchdog(60, || {
        let b = broker();
        let t = tenant(&b, "t");
        let timeout = Duration::from_millis(100);
        let spinner = start_with(
            &b,
            t,
            "runtime_misbehave",
            "spinner",
            InstanceConfig { call_timeout: timeout, ..InstanceConfig::default() },
        );
        let err = b.call(spinner, "spin", &[]).expect_err("a runaway call cannot succeed");
        assert_eq!(err, Error::Instance(InstanceError::Interrupted { timeout }));
        let status = b.instance_status(spinner).expect("status");
        assert_eq!(status.state, RunState::Trapped);
        assert_eq!(status.traps, 1);
        assert!(status.last_trap.as_deref().is_some_and(|m| m.contains("deadline")), "{status:?}");
        assert_eq!(
            b.call(spinner, "ping", &[]).err(),
            Some(Error::Instance(InstanceError::NotRunning { state: RunState::Trapped }))
        );
        b.restart_instance(spinner).expect("restart");
        assert_eq!(call(&b, spinner, "ping", args![]), 7);
    });
}

#[test]
fn runaway_guest_is_interrupted_while_another_instance_keeps_serving() {
    watchdog(60, || {
        let b = std::sync::Arc::new(broker());
        // A tenant the operator lets ask for hour-long calls.
        let t = b
            .create_tenant(
                "t",
                broker::Quotas { max_call_timeout_ms: 3_600_000, ..broker::Quotas::default() },
            )
            .expect("tenant");
        let flag = b.create_region(t, RegionSpec::new("flag", 8, Mode::Handle)).expect("region");
        // A deadline far beyond the test: only the host's interrupt can end this call.
        let long = InstanceConfig { call_timeout: Duration::from_secs(3600), ..InstanceConfig::default() };
        let spinner = start_with(&b, t, "runtime_misbehave", "spinner", long);
        let other = start(&b, t, "handle_app", "other");

        let bb = std::sync::Arc::clone(&b);
        let spin = std::thread::spawn(move || bb.call(spinner, "spin_signal", &[]));
        // Wait until the guest is inside its loop (it sets the flag just before).
        let mut word = [0u8; 8];
        while word == [0; 8] {
            b.read_region(flag, 0, &mut word).expect("read flag");
            std::thread::yield_now();
        }
        // The spinner occupies one worker; the other instance is served meanwhile, repeatedly.
        for _ in 0..100 {
            assert_eq!(call(&b, other, "ping", args![]), 1);
        }
        assert!(!spin.is_finished(), "only the interrupt below can end the runaway call");
        b.interrupt(spinner).expect("interrupt");
        let outcome = spin.join().expect("caller thread");
        assert_eq!(outcome.err(), Some(Error::Instance(InstanceError::Killed)));
        assert_eq!(b.instance_status(spinner).expect("status").state, RunState::Trapped);
        assert_eq!(call(&b, other, "ping", args![]), 1);
    });
}

#[test]
fn a_trap_leaves_other_instances_untouched_and_can_be_restarted() {
    let b = broker();
    let t = tenant(&b, "t");
    let data = b.create_region(t, RegionSpec::new("data", 64, Mode::Handle)).expect("region");
    let victim = start(&b, t, "runtime_misbehave", "victim");
    let bystander = start(&b, t, "handle_app", "bystander");
    let h = call(&b, bystander, "open", args![0]);
    assert!(h > 0);
    let h = i32::try_from(h).expect("small handle");
    assert_eq!(call(&b, bystander, "store_u64", args![h, 0i64, 99i64]), 0);

    let err = b.call(victim, "trap", &[]).expect_err("trap");
    let Error::Instance(InstanceError::Trapped { message }) = &err else {
        panic!("expected a trap, got {err:?}")
    };
    assert!(message.contains("unreachable"), "{message}");
    let status = b.instance_status(victim).expect("status");
    assert_eq!((status.state, status.traps), (RunState::Trapped, 1));
    assert_eq!(status.last_trap.as_deref(), Some(err.to_string().as_str()));

    // The bystander's state, handles and region are intact.
    assert_eq!(call(&b, bystander, "load_u64", args![h, 0i64]), 99);
    let mut word = [0u8; 8];
    b.read_region(data, 0, &mut word).expect("read");
    assert_eq!(u64::from_le_bytes(word), 99);

    b.restart_instance(victim).expect("restart");
    assert_eq!(call(&b, victim, "ping", args![]), 7);
    let status = b.instance_status(victim).expect("status");
    assert_eq!((status.state, status.restarts), (RunState::Running, 1));
}

#[test]
fn bad_calls_are_refused_without_harming_the_instance() {
    let b = broker();
    let t = tenant(&b, "t");
    let i = start(&b, t, "runtime_misbehave", "i");
    assert_eq!(
        b.call(i, "no_such_export", &[]).err(),
        Some(Error::Instance(InstanceError::NoSuchExport("no_such_export".into())))
    );
    assert!(matches!(b.call(i, "ping", args![1]), Err(Error::Instance(InstanceError::BadArguments { .. }))));
    assert!(matches!(
        b.call(i, "grow", args![1i64]),
        Err(Error::Instance(InstanceError::BadArguments { .. }))
    ));
    assert!(
        matches!(b.call(i, "memory", &[]), Err(Error::Instance(InstanceError::NoSuchExport(_)))),
        "a memory is not a function"
    );
    assert_eq!(b.instance_status(i).expect("status").state, RunState::Running);
    assert_eq!(call(&b, i, "ping", args![]), 7);
    b.stop_instance(i).expect("stop");
    assert!(matches!(b.call(i, "ping", &[]), Err(Error::InstanceNotFound(_))));
    assert!(matches!(b.stop_instance(i), Err(Error::InstanceNotFound(_))));
    assert!(matches!(b.restart_instance(i), Err(Error::InstanceNotFound(_))));
}

#[test]
fn memory_bomb_is_capped_by_instance_and_tenant_limits() {
    let b = broker();
    let quota = 8 << 20;
    let t = b.create_tenant("t", Quotas { memory_bytes: quota, ..Quotas::default() }).expect("tenant");
    let cap = InstanceConfig { max_memory_bytes: 4 << 20, ..InstanceConfig::default() };
    let bomber = start_with(&b, t, "runtime_misbehave", "bomber", cap.clone());
    let gained = call(&b, bomber, "bomb", args![]);
    assert!(gained > 0);
    assert_eq!(call(&b, bomber, "grow", args![1]), -1, "further growth is refused, not trapped");
    assert_eq!(b.instance_status(bomber).expect("status").state, RunState::Running);
    let used = b.tenant_usage(t).expect("usage").memory_bytes;
    assert_eq!(used, 4 << 20, "the instance cap stopped the bomb");

    // A second bomber hits the tenant's quota instead.
    let second = start_with(&b, t, "runtime_misbehave", "second", cap);
    call(&b, second, "bomb", args![]);
    assert_eq!(b.tenant_usage(t).expect("usage").memory_bytes, quota);
    // No room is left for a third instance's initial memory: refused with a quota error, nothing created.
    let err = b
        .start_instance(t, "runtime_misbehave", "third", InstanceConfig::default())
        .expect_err("no memory left");
    assert!(matches!(err, Error::Quota(q) if q.resource == broker::Resource::MemoryBytes), "{err:?}");
    assert_eq!(b.instance_id(t, "third"), None);
    assert_eq!(b.tenant_usage(t).expect("usage").instances, 2);

    b.stop_instance(bomber).expect("stop");
    b.stop_instance(second).expect("stop");
    let usage = b.tenant_usage(t).expect("usage");
    let module_only = broker::Usage {
        modules: usage.modules,
        module_bytes: usage.module_bytes,
        compiled_bytes: usage.compiled_bytes,
        ..broker::Usage::default()
    };
    assert_eq!(usage, module_only, "stopping gives everything back but the loaded module");
    b.unload_module(t, "runtime_misbehave").expect("unload");
    assert!(b.tenant_usage(t).expect("usage") == broker::Usage::default(), "unloading gives the module back");
}

/// Issue 14: a tenant capped at one worker spins in two instances with hour-long deadlines on a
/// two-worker broker: its second call waits for its first, and another tenant's calls are served
/// meanwhile. Ordered by events: each spinner raises a flag once inside its loop, and only the test's
/// interrupt ends it.
#[test]
fn r14_a_tenant_capped_at_one_worker_cannot_take_every_worker() {
    watchdog(120, || {
        let b = std::sync::Arc::new(broker());
        let capped =
            broker::Quotas { max_workers: 1, max_call_timeout_ms: 3_600_000, ..broker::Quotas::default() };
        let evil = b.create_tenant("evil", capped).expect("tenant");
        let acme = tenant(&b, "acme");
        let flag = b.create_region(evil, RegionSpec::new("flag", 8, Mode::Handle)).expect("region");
        let hour = InstanceConfig { call_timeout: Duration::from_secs(3600), ..InstanceConfig::default() };
        let spinners: Vec<_> =
            ["s1", "s2"].iter().map(|n| start_with(&b, evil, "runtime_misbehave", n, hour.clone())).collect();
        let victim = start(&b, acme, "handle_app", "victim");
        let raised = |b: &broker::Broker| {
            let mut word = [0u8; 8];
            b.read_region(flag, 0, &mut word).expect("read flag");
            word != [0; 8]
        };
        let spin = |i: usize| {
            let (bb, s) = (std::sync::Arc::clone(&b), spinners[i]);
            std::thread::spawn(move || bb.call(s, "spin_signal", &[]))
        };
        let first = spin(0);
        while !raised(&b) {
            std::thread::yield_now();
        }
        b.write_region(flag, 0, &[0; 8]).expect("lower the flag");
        let second = spin(1);
        // The second spinner is queued behind the first (evil's one worker); the other worker serves
        // acme, again and again.
        for _ in 0..100 {
            assert_eq!(call(&b, victim, "ping", args![]), 1);
        }
        assert!(!raised(&b), "the second spinner ran although its tenant was at its worker cap");
        b.interrupt(spinners[0]).expect("interrupt");
        assert_eq!(first.join().expect("thread").err(), Some(Error::Instance(InstanceError::Killed)));
        // Now the second one gets the worker.
        while !raised(&b) {
            std::thread::yield_now();
        }
        b.interrupt(spinners[1]).expect("interrupt");
        assert_eq!(second.join().expect("thread").err(), Some(Error::Instance(InstanceError::Killed)));
        assert_eq!(call(&b, victim, "ping", args![]), 1);
    });
}
