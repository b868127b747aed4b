//! The runtime: runaway guests are interrupted, traps stay inside their instance, memory growth is
//! bounded, and other instances keep serving throughout.

use std::time::Duration;

use broker::{Error, InstanceConfig, InstanceError, Mode, Quotas, RegionSpec, Rights, RunState};
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
        let flag = b
            .create_region(t, RegionSpec::new("flag", 8, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
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
    let data = b
        .create_region(t, RegionSpec::new("data", 64, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
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
    b.delete_instance(i).expect("delete");
    assert!(matches!(b.call(i, "ping", &[]), Err(Error::InstanceNotFound(_))));
    assert!(matches!(b.stop_instance(i), Err(Error::InstanceNotFound(_))));
    assert!(matches!(b.delete_instance(i), Err(Error::InstanceNotFound(_))));
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
    let stopped = b.tenant_usage(t).expect("usage");
    assert_eq!(
        (stopped.memory_bytes, stopped.instances),
        (0, 2),
        "stopping frees the instances' memory; stopped, they still hold their names and quota slots"
    );
    b.delete_instance(bomber).expect("delete");
    b.delete_instance(second).expect("delete");
    let usage = b.tenant_usage(t).expect("usage");
    let module_only = broker::Usage {
        modules: usage.modules,
        module_bytes: usage.module_bytes,
        compiled_bytes: usage.compiled_bytes,
        ..broker::Usage::default()
    };
    assert_eq!(usage, module_only, "deleting gives everything back but the loaded module");
    b.unload_module(t, "runtime_misbehave").expect("unload");
    assert!(b.tenant_usage(t).expect("usage") == broker::Usage::default(), "unloading gives the module back");
}

/// Interrupts the calls it holds when dropped, so a failing test does not leave hour-long spinners
/// behind to starve the tests that run after it.
struct Interrupts(std::sync::Arc<broker::Broker>, Vec<broker::InstanceId>);

impl Drop for Interrupts {
    fn drop(&mut self) {
        for &i in &self.1 {
            let _ = self.0.interrupt(i);
        }
    }
}

/// A tenant whose instances may run calls of up to an hour, and that config.
fn hour_tenant(b: &broker::Broker, name: &str, max_workers: u64) -> (broker::TenantId, InstanceConfig) {
    let quotas = Quotas { max_workers, max_call_timeout_ms: 3_600_000, ..Quotas::default() };
    let t = b.create_tenant(name, quotas).expect("tenant");
    (t, InstanceConfig { call_timeout: Duration::from_secs(3600), ..InstanceConfig::default() })
}

/// Calls `export(slot)` on each instance on a thread of its own, with slots 1, 2, ...
fn spin_all(
    b: &std::sync::Arc<broker::Broker>,
    instances: &[broker::InstanceId],
    export: &'static str,
) -> Vec<std::thread::JoinHandle<Result<Vec<wasmtime::Val>, Error>>> {
    instances
        .iter()
        .zip(1..)
        .map(|(&s, slot)| {
            let bb = std::sync::Arc::clone(b);
            std::thread::spawn(move || bb.call(s, export, &[wasmtime::Val::I32(slot)]))
        })
        .collect()
}

/// Waits until every word `1..=threads.len()` of the region `flag` is non-zero (each call raised its
/// flag), failing at once if a call ended instead.
fn wait_raised<T>(b: &broker::Broker, flag: broker::RegionId, threads: &[std::thread::JoinHandle<T>]) {
    let mut words = vec![0u8; (threads.len() + 1) * 8];
    loop {
        b.read_region(flag, 0, &mut words).expect("read flags");
        if words.chunks(8).skip(1).all(|w| w != [0; 8]) {
            return;
        }
        assert!(threads.iter().all(|t| !t.is_finished()), "a call ended before raising its flag");
        std::thread::yield_now();
    }
}

/// Starts `n` instances of `runtime_misbehave` named `{prefix}1..` with `config`.
fn misbehavers(
    b: &broker::Broker,
    t: broker::TenantId,
    prefix: &str,
    n: usize,
    config: &InstanceConfig,
) -> Vec<broker::InstanceId> {
    (1..=n).map(|i| start_with(b, t, "runtime_misbehave", &format!("{prefix}{i}"), config.clone())).collect()
}

/// Issue 14: a tenant capped at one worker spins in two instances with hour-long deadlines on a
/// two-worker broker: the two calls take turns on its one worker (both get to run: each raises its own
/// flag inside its loop), and another tenant's calls are served meanwhile. Ordered by events: only the
/// test's interrupts end the spinners. (That the capped tenant never occupies two workers at once is
/// the scheduler's unit test `a_tenant_at_its_worker_cap_waits_while_others_run`.)
#[test]
fn r14_a_capped_tenants_spinners_share_its_worker_while_a_victim_is_served() {
    spinners_and_a_victim(1, 2);
}

/// Issue 14: with no worker cap, a tenant spins in more instances than there are workers, each with an
/// hour-long deadline. Calls are preempted at epoch ticks, so every spinner gets to run (each raises
/// its own flag once inside its loop, which with three spinners on two workers only happens if running
/// calls give their workers up), and another tenant's calls are served meanwhile. Ordered by events:
/// only the test's interrupts end the spinners.
#[test]
fn r14_a_victim_is_served_while_spinners_hold_every_worker_for_an_hour() {
    spinners_and_a_victim(0, 3);
}

/// A tenant with `max_workers` (0: no cap) spins in `spinners` instances with hour-long deadlines on a
/// two-worker broker: every spinner raises its own flag inside its loop, another tenant's calls are
/// served meanwhile, and only the test's interrupts end the spinners.
fn spinners_and_a_victim(max_workers: u64, spinners: usize) {
    watchdog(120, move || {
        let b = std::sync::Arc::new(broker());
        let (evil, hour) = hour_tenant(&b, "evil", max_workers);
        let acme = tenant(&b, "acme");
        let flag = b
            .create_region(evil, RegionSpec::new("flag", 64, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
        let spinners = misbehavers(&b, evil, "s", spinners, &hour);
        let victim = start(&b, acme, "handle_app", "victim");
        let _guard = Interrupts(std::sync::Arc::clone(&b), spinners.clone());
        let threads = spin_all(&b, &spinners, "spin_signal_at");
        wait_raised(&b, flag, &threads);
        for _ in 0..100 {
            assert_eq!(call(&b, victim, "ping", args![]), 1);
        }
        for (&s, t) in spinners.iter().zip(threads) {
            b.interrupt(s).expect("interrupt");
            assert_eq!(t.join().expect("thread").err(), Some(Error::Instance(InstanceError::Killed)));
        }
        assert_eq!(call(&b, victim, "ping", args![]), 1);
    });
}

/// Issue 14: calls parked in `region_wait` hold no worker. More instances than there are workers wait
/// in a loop (a design that pinned a worker per wait would never run the last one, nor the victim);
/// the victim's calls are served; and a change of the word ends the waits.
#[test]
fn r14_waiting_calls_hold_no_worker() {
    watchdog(120, || {
        let b = std::sync::Arc::new(broker());
        let (waits, hour) = hour_tenant(&b, "waits", 0);
        let acme = tenant(&b, "acme");
        let flag = b
            .create_region(waits, RegionSpec::new("flag", 64, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
        let waiters = misbehavers(&b, waits, "w", 3, &hour);
        let victim = start(&b, acme, "handle_app", "victim");
        let _guard = Interrupts(std::sync::Arc::clone(&b), waiters.clone());
        let threads = spin_all(&b, &waiters, "wait_signal_at");
        wait_raised(&b, flag, &threads);
        for _ in 0..100 {
            assert_eq!(call(&b, victim, "ping", args![]), 1);
        }
        // The waits return once the word changes (each re-checks it within a second).
        b.write_region(flag, 0, &1u64.to_ne_bytes()).expect("write");
        for t in threads {
            match t.join().expect("thread").expect("wait returns").as_slice() {
                [wasmtime::Val::I64(timeouts)] => assert!(*timeouts >= 0, "a wait failed: {timeouts}"),
                other => panic!("unexpected results {other:?}"),
            }
        }
    });
}

/// Issue 14: a parked wait is woken by another app's `region_notify` (it returns OK although the word
/// never changed: only a notify ends it early) and by the host's interrupt (the call ends `Killed`,
/// where an interrupt that did not wake it would let it time out and return normally).
#[test]
fn r14_a_parked_wait_is_woken_by_notify_and_by_interrupt() {
    watchdog(120, || {
        let b = std::sync::Arc::new(broker());
        let (t, hour) = hour_tenant(&b, "waits", 0);
        let flag = b
            .create_region(t, RegionSpec::new("flag", 64, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
        let apps = misbehavers(&b, t, "w", 2, &hour);
        let _guard = Interrupts(std::sync::Arc::clone(&b), apps.clone());

        // Notify: the waiter raises its flag just before parking, so the notifier keeps notifying until
        // the wait returns; a notify that lands before it parks is simply not the one that wakes it.
        let threads = spin_all(&b, &apps[..1], "wait_once_at");
        wait_raised(&b, flag, &threads);
        while !threads[0].is_finished() {
            assert_eq!(call(&b, apps[1], "notify", args![]), 0);
        }
        let woken = threads.into_iter().next().expect("one").join().expect("thread");
        assert!(
            matches!(woken.as_deref(), Ok([wasmtime::Val::I64(0)])),
            "a notified wait returns OK, not BROKER_ERR_TIMED_OUT: {woken:?}"
        );

        // Interrupt: the second waiter is interrupted while parked.
        b.write_region(flag, 0, &[0; 64]).expect("lower the flags");
        let threads = spin_all(&b, &apps[1..], "wait_once_at");
        wait_raised(&b, flag, &threads);
        b.interrupt(apps[1]).expect("interrupt");
        let killed = threads.into_iter().next().expect("one").join().expect("thread");
        assert_eq!(killed.err(), Some(Error::Instance(InstanceError::Killed)));
        assert_eq!(b.instance_status(apps[1]).expect("status").state, RunState::Trapped);
        assert_eq!(call(&b, apps[0], "ping", args![]), 7, "the notified app still answers");
    });
}

/// Issue 15, item 5: stopping keeps an instance (stopped, restartable, listed, its name and quota slot
/// taken) while freeing its memory and capabilities; deleting removes it, stopped or running.
#[test]
fn r15_stop_keeps_the_instance_restartable_and_delete_removes_it() {
    let b = broker();
    let t = tenant(&b, "t");
    b.create_region(t, RegionSpec::new("data", 64, Mode::Handle).with_members(Rights::ALL)).expect("region");
    let base = b.tenant_usage(t).expect("usage");
    let i = start(&b, t, "handle_app", "i");
    assert!(call(&b, i, "open", args![0]) > 0);
    assert_eq!(b.handle_count(i).expect("handles"), 1);

    b.stop_instance(i).expect("stop");
    let status = b.instance_status(i).expect("a stopped instance is still there");
    assert_eq!(status.state, RunState::Stopped);
    assert_eq!(
        b.call(i, "ping", &[]).err(),
        Some(Error::Instance(InstanceError::NotRunning { state: RunState::Stopped }))
    );
    assert_eq!(b.instance_id(t, "i"), Some(i), "it keeps its name");
    assert!(matches!(
        b.start_instance(t, "handle_app", "i", InstanceConfig::default()),
        Err(Error::InstanceExists(_))
    ));
    let listed: Vec<_> = b.instances(t).into_iter().map(|x| (x.name, x.status.state)).collect();
    assert_eq!(listed, [("i".to_owned(), RunState::Stopped)]);
    assert_eq!((b.handle_count(i).expect("handles"), b.windows_of(i).expect("windows")), (0, 0));
    let stopped = b.tenant_usage(t).expect("usage");
    assert_eq!(
        (stopped.memory_bytes, stopped.handles, stopped.windows, stopped.instances),
        (base.memory_bytes, base.handles, base.windows, 1),
        "its memory and handles are freed; its quota slot is kept"
    );
    b.stop_instance(i).expect("stopping a stopped instance changes nothing");
    assert_eq!(b.instance_status(i).expect("status"), status);
    assert_eq!(
        b.unload_module(t, "handle_app").err(),
        Some(Error::ModuleInUse { module: "handle_app".into(), instances: vec!["i".into()] }),
        "a module stays while a stopped instance of it could be restarted"
    );

    b.restart_instance(i).expect("restart");
    let status = b.instance_status(i).expect("status");
    assert_eq!((status.state, status.restarts), (RunState::Running, 1));
    assert_eq!(call(&b, i, "ping", args![]), 1);
    assert!(call(&b, i, "open", args![0]) > 0, "the restarted instance opens regions again");

    let j = start(&b, t, "handle_app", "j");
    b.stop_instance(i).expect("stop");
    b.delete_instance(i).expect("delete a stopped instance");
    b.delete_instance(j).expect("delete a running instance");
    for gone in [i, j] {
        assert!(matches!(b.instance_status(gone), Err(Error::InstanceNotFound(_))));
        assert!(matches!(b.call(gone, "ping", &[]), Err(Error::InstanceNotFound(_))));
        assert!(matches!(b.stop_instance(gone), Err(Error::InstanceNotFound(_))));
        assert!(matches!(b.restart_instance(gone), Err(Error::InstanceNotFound(_))));
        assert!(matches!(b.delete_instance(gone), Err(Error::InstanceNotFound(_))));
    }
    assert_eq!((b.instance_id(t, "i"), b.instance_id(t, "j")), (None, None), "deleting frees the names");
    let usage = b.tenant_usage(t).expect("usage");
    assert_eq!((usage.instances, usage.memory_bytes, usage.handles), (0, base.memory_bytes, base.handles));
    b.unload_module(t, "handle_app").expect("no instance of it is left");
    let again = start(&b, t, "handle_app", "i");
    assert_ne!(again, i, "the name now belongs to a new instance");
}

/// Issue 15, item 5: stopping ends the call in progress at once (the host's interrupt), and the
/// instance is then stopped, not trapped, until restarted.
#[test]
fn r15_stopping_interrupts_the_running_call() {
    watchdog(60, || {
        let b = std::sync::Arc::new(broker());
        let t = b
            .create_tenant("t", Quotas { max_call_timeout_ms: 3_600_000, ..Quotas::default() })
            .expect("tenant");
        let flag = b
            .create_region(t, RegionSpec::new("flag", 8, Mode::Handle).with_members(Rights::ALL))
            .expect("region");
        // A deadline far beyond the test: only the stop can end this call.
        let long = InstanceConfig { call_timeout: Duration::from_secs(3600), ..InstanceConfig::default() };
        let spinner = start_with(&b, t, "runtime_misbehave", "spinner", long);
        let bb = std::sync::Arc::clone(&b);
        let spin = std::thread::spawn(move || bb.call(spinner, "spin_signal", &[]));
        let mut word = [0u8; 8];
        while word == [0; 8] {
            b.read_region(flag, 0, &mut word).expect("read flag");
            std::thread::yield_now();
        }
        b.stop_instance(spinner).expect("stop");
        let outcome = spin.join().expect("caller thread");
        assert_eq!(outcome.err(), Some(Error::Instance(InstanceError::Killed)));
        assert_eq!(b.instance_status(spinner).expect("status").state, RunState::Stopped);
        b.restart_instance(spinner).expect("restart");
        assert_eq!(call(&b, spinner, "ping", args![]), 7);
    });
}

/// Issue 15, item 5: an instance registered stopped (how a control plane restores a stopped one) takes
/// its name and quota slot but runs nothing and holds no memory until restarted; regions granted to it
/// meanwhile go with the restart, as every capability it held does.
#[test]
fn r15_an_instance_registered_stopped_runs_only_once_restarted() {
    let b = broker();
    let t = tenant(&b, "t");
    let data = b
        .create_region(t, RegionSpec::new("data", 64, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.load_module(t, "app", broker_guests::HANDLE_APP_WASM).expect("module");
    let base = b.tenant_usage(t).expect("usage");
    let config = InstanceConfig::default;
    let i = b.create_stopped_instance(t, "app", "i", config()).expect("registered");
    let status = b.instance_status(i).expect("status");
    assert_eq!((status.state, status.calls, status.restarts), (RunState::Stopped, 0, 0));
    assert_eq!(
        b.call(i, "ping", &[]).err(),
        Some(Error::Instance(InstanceError::NotRunning { state: RunState::Stopped }))
    );
    let usage = b.tenant_usage(t).expect("usage");
    assert_eq!((usage.instances, usage.memory_bytes), (1, base.memory_bytes));
    assert!(matches!(b.create_stopped_instance(t, "nope", "x", config()), Err(Error::ModuleNotFound(_))));
    assert!(matches!(b.create_stopped_instance(t, "app", "i", config()), Err(Error::InstanceExists(_))));
    assert!(matches!(b.create_stopped_instance(t, "app", "a b", config()), Err(Error::InvalidName { .. })));
    assert_eq!(b.instances(t).len(), 1, "a refused registration leaves nothing");

    let caps = b.capability_count();
    b.grant(data, i, Rights::READ, 0, None).expect("a stopped instance can be granted a region");
    assert_eq!(b.capability_count(), caps + 1);
    b.restart_instance(i).expect("restart");
    assert_eq!(b.capability_count(), caps, "the restart dropped the grant");
    assert_eq!(call(&b, i, "ping", args![]), 1);
    assert_eq!(b.instance_status(i).expect("status").state, RunState::Running);
}
