//! The malicious-app suite: a hostile app of one tenant attacks the broker while a well-behaved app of
//! another tenant runs its workload on the other worker.
//!
//! Every attack is one row of [`ATTACKS`]. For each, a fresh broker runs the victim's workload alone
//! (the baseline), then again and again while the attack runs on its own thread, and checks that the
//! broker stopped the attacker with the exact status or trap the row names, that every victim result
//! equals the baseline, that stopping the attacker gives back every window, capability and quota unit
//! it took, and that new instances still start and answer afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::{
    Broker, Error, InstanceConfig, InstanceError, InstanceId, Mode, Quotas, RegionId, RegionSpec, Rights,
    RunState, TenantId, Usage,
};
use broker_tests::{args, broker_with_ui, call, code, start_with, watchdog, Status};

/// The victim's workload seed.
const SEED: i64 = 0x5eed;
/// The attacker tenant's handle quota: storms run into it.
const HANDLE_QUOTA: u64 = 4096;
/// The attacker's own memory cap, below its tenant's quota of twice as much.
const ATTACKER_MEMORY: u64 = 4 << 20;
/// The call deadline of attackers that are expected to finish (or trap) on their own.
const DEADLINE: Duration = Duration::from_secs(5);
/// The call deadline of the runaway attacker.
const SHORT_DEADLINE: Duration = Duration::from_millis(200);
/// Writes of the watch flood.
const FLOOD_WRITES: i32 = 20_000;

/// A broker with a victim tenant and an attacker tenant, each with its own regions and app.
struct World {
    b: Broker,
    victims: TenantId,
    mallory: TenantId,
    victim: InstanceId,
    attacker: InstanceId,
    /// The victim's shared region, `victims/window`.
    window: RegionId,
    /// The attacker's shared region, `mallory/arena`.
    arena: RegionId,
}

impl World {
    fn usage(&self, tenant: TenantId) -> Usage {
        self.b.tenant_usage(tenant).expect("usage")
    }

    fn attack(&self, export: &str, args: &[broker::Val]) -> Result<i64, Error> {
        self.b.call_i64(self.attacker, export, args)
    }
}

/// What the broker must have done to the attacker's main call.
#[derive(Debug)]
enum Expect {
    /// The call returned exactly this (the attacker got only the error codes it deserved).
    Returns(i64),
    /// The attacker trapped with a message containing this text.
    Trap(&'static str),
    /// The call ran past its deadline and was interrupted.
    Interrupted,
}

/// One attack: how the attacker's instance is configured, what it does, and how it must end.
struct Attack {
    name: &'static str,
    call_timeout: Duration,
    /// Runs on its own thread while the victim works; may assert more on the way.
    run: fn(&World) -> Result<i64, Error>,
    expect: Expect,
}

const ATTACKS: &[Attack] = &[
    Attack {
        name: "forged and stale handles on every handle-taking import",
        call_timeout: DEADLINE,
        run: forged_and_stale_handles,
        expect: Expect::Returns(0),
    },
    Attack {
        name: "wild pointers and overflowing lengths on every pointer-taking import",
        call_timeout: DEADLINE,
        run: wild_pointers,
        expect: Expect::Returns(0),
    },
    Attack {
        name: "store into a read-only shared window",
        call_timeout: DEADLINE,
        run: write_read_only_window,
        expect: Expect::Trap("fault in the read-only shared window of region victims/window"),
    },
    Attack {
        name: "map, unmap and remap the same buffer in a tight loop",
        call_timeout: DEADLINE,
        run: map_churn,
        expect: Expect::Returns(0),
    },
    Attack {
        name: "map and unmap while the host revokes",
        call_timeout: DEADLINE,
        run: map_while_revoked,
        expect: Expect::Returns(0),
    },
    Attack {
        name: "null, out-of-range and wrongly typed callbacks",
        call_timeout: DEADLINE,
        run: bad_callbacks,
        expect: Expect::Returns(0),
    },
    Attack { name: "infinite loop", call_timeout: SHORT_DEADLINE, run: spin, expect: Expect::Interrupted },
    Attack {
        name: "memory bomb",
        call_timeout: DEADLINE,
        run: memory_bomb,
        expect: Expect::Returns(ATTACKER_MEMORY as i64),
    },
    Attack {
        name: "stack overflow",
        call_timeout: DEADLINE,
        run: stack_overflow,
        expect: Expect::Trap("wasm trap: call stack exhausted"),
    },
    Attack { name: "watch flood", call_timeout: DEADLINE, run: watch_flood, expect: Expect::Returns(0) },
    Attack {
        name: "grant storm",
        call_timeout: DEADLINE,
        run: grant_storm,
        expect: Expect::Returns(HANDLE_QUOTA as i64 - 1),
    },
    Attack {
        name: "restrict chains thousands deep",
        call_timeout: DEADLINE,
        run: restrict_chain,
        expect: Expect::Returns(HANDLE_QUOTA as i64 - 1),
    },
    Attack {
        name: "a watch callback that writes the region it watches (a callback loop)",
        call_timeout: DEADLINE,
        run: echo_watch,
        expect: Expect::Trap("callback loop"),
    },
    Attack {
        name: "a toolkit callback that fires the event it handles (a callback loop)",
        call_timeout: DEADLINE,
        run: echo_ui,
        expect: Expect::Trap("callback loop"),
    },
];

fn forged_and_stale_handles(w: &World) -> Result<i64, Error> {
    let stale = w.attack("stale", args![256])?;
    assert_eq!(stale, 0, "closed handles must only ever be stale (last surprise {:#x})", surprise(w));
    let forged = w.attack("sweep", args![0x9E37_79B9_7F4A_7C15u64 as i64, 10_000, 4_096])?;
    assert_eq!(forged, 0, "forged handles must be invalid or stale (last surprise {:#x})", surprise(w));
    assert_eq!(w.b.handle_count(w.attacker).expect("count"), 0, "no probe created a handle");
    Ok(forged)
}

fn surprise(w: &World) -> i64 {
    w.attack("last_surprise", args![]).unwrap_or(-1)
}

fn wild_pointers(w: &World) -> Result<i64, Error> {
    let outcome = w.attack("bad_pointers", args![])?;
    // On failure: case number (from 1) in the high half, the status it got in the low half.
    let (case, status) = (outcome >> 32, i32::try_from(outcome & 0xffff_ffff).unwrap_or(0));
    assert_eq!(outcome, 0, "case {case} got status {status} ({:?})", Status::from_code(status));
    assert_eq!(w.b.handle_count(w.attacker).expect("count"), 0, "no refused call left a handle");
    assert_eq!(w.b.region_id(w.mallory, "made-by-attacker"), None, "no refused create left a region");
    assert_eq!(
        w.b.ui().expect("the UI extension").object_count(),
        0,
        "no refused call left a toolkit object"
    );
    Ok(outcome)
}

fn write_read_only_window(w: &World) -> Result<i64, Error> {
    w.b.grant(w.window, w.attacker, Rights::READ | Rights::MAP, 0, None).expect("grant");
    w.attack("write_read_only", args![])
}

fn map_churn(w: &World) -> Result<i64, Error> {
    let unexpected = w.attack("map_churn", args![500])?;
    let mut counter = [0u8; 8];
    w.b.read_region(w.arena, 0, &mut counter).expect("read");
    assert_eq!(u64::from_le_bytes(counter), 500, "every cycle really mapped the region");
    Ok(unexpected)
}

fn map_while_revoked(w: &World) -> Result<i64, Error> {
    let (started, done) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let revoker = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                w.b.revoke_all(w.arena).expect("revoke");
                started.store(true, Ordering::Release);
                std::thread::yield_now();
            }
        });
        // The revoker is looping before the attacker starts, so the two really overlap.
        while !started.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let outcome = w.attack("map_race", args![2_000]);
        done.store(true, Ordering::Release);
        revoker.join().expect("revoker");
        // Every answer was OK or StaleHandle: the high half counts the others.
        outcome.map(|v| v >> 32)
    })
}

fn bad_callbacks(w: &World) -> Result<i64, Error> {
    let outcome = w.attack("bad_callbacks", args![])?;
    let (case, status) = (outcome >> 32, i32::try_from(outcome & 0xffff_ffff).unwrap_or(0));
    assert_eq!(outcome, 0, "case {case} got status {status} ({:?})", Status::from_code(status));
    assert_eq!(w.b.ui().expect("the UI extension").object_count(), 0);
    Ok(outcome)
}

fn spin(w: &World) -> Result<i64, Error> {
    w.attack("spin", args![])
}

fn memory_bomb(w: &World) -> Result<i64, Error> {
    // The tenant's memory also holds its regions' page-version tables (8 bytes per 4 KiB page).
    let tables = broker_tests::page_tables(&w.b, w.mallory);
    let initial = w.usage(w.mallory).memory_bytes - tables;
    let pages = w.attack("memory_bomb", args![])?;
    assert_eq!(
        w.usage(w.mallory).memory_bytes,
        ATTACKER_MEMORY + tables,
        "the instance cap stopped the bomb"
    );
    // The memory the attacker's instance ended up with: exactly its cap.
    Ok(i64::try_from(initial).expect("small") + pages * 65536)
}

fn stack_overflow(w: &World) -> Result<i64, Error> {
    w.attack("recurse", args![1i64 << 40])
}

fn watch_flood(w: &World) -> Result<i64, Error> {
    let outcome = w.attack("watch_flood", args![FLOOD_WRITES])?;
    // The writes all happened during that one call, so the queue filled up and merged the rest.
    let capacity = i64::try_from(broker::runtime::events::WATCH_SOURCE_CAPACITY).expect("small");
    let writes = i64::from(FLOOD_WRITES);
    assert_eq!(w.attack("flood_calls", args![])?, capacity, "the queue held exactly the watch's capacity");
    assert_eq!(w.attack("flood_missed", args![])?, writes - capacity, "the rest was merged and counted");
    let (delivered, dead, merged) = w.b.event_counts(w.attacker).expect("counts");
    assert_eq!((delivered, dead, merged), (capacity as u64, 0, (writes - capacity) as u64));
    Ok(outcome)
}

fn grant_storm(w: &World) -> Result<i64, Error> {
    let granted = w.attack("grant_storm", args![3 * HANDLE_QUOTA as i32])?;
    assert_eq!(w.attack("last_status", args![])?, code(Status::QuotaExceeded));
    assert_eq!(w.attack("storm_unexpected", args![])?, 0, "every refusal was QuotaExceeded");
    // Charged to the granter, never to the victim they are aimed at (whose own handles come and go
    // meanwhile, so its usage is checked once the attacker has stopped).
    assert_eq!(w.usage(w.mallory).handles, HANDLE_QUOTA, "the grants are charged to the granter");
    Ok(granted)
}

fn restrict_chain(w: &World) -> Result<i64, Error> {
    let depth = w.attack("restrict_chain", args![3 * HANDLE_QUOTA as i32, 1])?;
    assert_eq!(depth, HANDLE_QUOTA as i64 - 1, "the chain grows until the handle quota is used up");
    assert_eq!(w.attack("last_status", args![])?, code(Status::QuotaExceeded));
    assert_eq!(w.b.handle_count(w.attacker).expect("count"), 0, "closing the root removed the whole chain");
    assert_eq!(w.usage(w.mallory).handles, 0, "and gave its quota back");
    // Again, and this time left for the broker to clean up when the attacker is stopped.
    let depth = w.attack("restrict_chain", args![3 * HANDLE_QUOTA as i32, 0])?;
    assert_eq!(w.usage(w.mallory).handles, HANDLE_QUOTA);
    Ok(depth)
}

/// Windows, capabilities and both tenants' usage: what stopping the attacker must restore.
#[derive(Debug, PartialEq)]
struct Accounts {
    windows: usize,
    capabilities: usize,
    victims: Usage,
    mallory: Usage,
}

impl Accounts {
    fn of(b: &Broker, victims: TenantId, mallory: TenantId) -> Accounts {
        Accounts {
            windows: b.window_count(),
            capabilities: b.capability_count(),
            victims: b.tenant_usage(victims).expect("usage"),
            mallory: b.tenant_usage(mallory).expect("usage"),
        }
    }
}

/// Starts a callback that re-triggers itself, then waits for the broker to stop the app as a callback
/// loop (the wait is bounded by the case's watchdog); the app's toolkit objects are removed afterwards,
/// as an operator would, since objects outlive their app.
fn echo_loop(w: &World, export: &str) -> Result<i64, Error> {
    assert_eq!(w.b.call_i64(w.attacker, export, &[])?, 0, "the set-up call itself succeeds");
    loop {
        let status = w.b.instance_status(w.attacker)?;
        if status.state == RunState::Trapped {
            for r in w.b.regions(w.mallory) {
                if r.name.starts_with("ui.") {
                    w.b.destroy_region(r.id)?;
                }
            }
            return Err(Error::Instance(InstanceError::Trapped {
                message: status.last_trap.unwrap_or_default(),
            }));
        }
        std::thread::yield_now();
    }
}

fn echo_watch(w: &World) -> Result<i64, Error> {
    echo_loop(w, "echo_watch")
}

fn echo_ui(w: &World) -> Result<i64, Error> {
    echo_loop(w, "echo_ui")
}

fn small(call_timeout: Duration) -> InstanceConfig {
    InstanceConfig { call_timeout, max_memory_bytes: ATTACKER_MEMORY, ..InstanceConfig::default() }
}

/// The victim tenant with its regions and app, which has run its workload twice (so its memory is
/// warmed up and stays put); returns the broker (with the UI toolkit extension, which the attacker
/// attacks too), the tenant, the app, its `window` region and the baseline checksum.
fn victim_world() -> (Broker, TenantId, InstanceId, RegionId, i64) {
    let b = broker_with_ui();
    let victims =
        b.create_tenant("victims", Quotas { memory_bytes: 16 << 20, ..Quotas::default() }).expect("tenant");
    b.create_region(victims, RegionSpec::new("data", 16 << 10, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.create_region(victims, RegionSpec::new("mirror", 8 << 10, Mode::Mirror).with_members(Rights::ALL))
        .expect("region");
    let window = b
        .create_region(victims, RegionSpec::new("window", 8 << 10, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    let victim = start_with(&b, victims, "malicious_victim", "victim", small(DEADLINE));
    let baseline = call(&b, victim, "workload", args![SEED]);
    assert!(baseline > 0, "the workload failed alone: {baseline}");
    assert_eq!(call(&b, victim, "workload", args![SEED]), baseline, "the workload is deterministic");
    (b, victims, victim, window, baseline)
}

fn run(attack: &Attack) {
    let name = attack.name;
    let (b, victims, victim, window, baseline) = victim_world();
    let mallory = b
        .create_tenant(
            "mallory",
            Quotas { memory_bytes: 2 * ATTACKER_MEMORY, handles: HANDLE_QUOTA, ..Quotas::default() },
        )
        .expect("tenant");
    b.create_region(mallory, RegionSpec::new("loot", 4096, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.create_region(mallory, RegionSpec::new("echo", 4096, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.create_region(mallory, RegionSpec::new("mirrored", 4096, Mode::Mirror).with_members(Rights::ALL))
        .expect("region");
    let arena = b
        .create_region(mallory, RegionSpec::new("arena", 8192, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    // The attacker's module is loaded before the snapshot: stopping an instance leaves its module.
    b.load_module(mallory, "malicious_app", broker_guests::MALICIOUS_APP_WASM).expect("module");
    let before = Accounts::of(&b, victims, mallory);
    let attacker = start_with(&b, mallory, "malicious_app", "attacker", small(attack.call_timeout));
    let w = World { b, victims, mallory, victim, attacker, window, arena };

    let (outcome, victim_runs) = std::thread::scope(|s| {
        let attacking = s.spawn(|| (attack.run)(&w));
        let mut runs = 0;
        loop {
            // Checked before the run, so the victim always runs once more after the attack ended.
            let finished = attacking.is_finished();
            let result = call(&w.b, w.victim, "workload", args![SEED]);
            assert_eq!(result, baseline, "[{name}] the victim's result changed under attack (run {runs})");
            runs += 1;
            if finished {
                break;
            }
        }
        (attacking.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), runs)
    });

    // (a) The attacker was stopped, with exactly the status or trap the row names.
    let status = w.b.instance_status(w.attacker).expect("status");
    match (&attack.expect, &outcome) {
        (Expect::Returns(want), Ok(got)) => {
            assert_eq!(got, want, "[{name}] the attack's result");
            assert_eq!((status.state, status.traps), (RunState::Running, 0), "[{name}] {status:?}");
        }
        (Expect::Trap(text), Err(Error::Instance(InstanceError::Trapped { message }))) => {
            assert!(message.contains(text), "[{name}] the trap says {message:?}");
            assert_eq!((status.state, status.traps), (RunState::Trapped, 1), "[{name}] {status:?}");
        }
        (Expect::Interrupted, Err(Error::Instance(InstanceError::Interrupted { timeout }))) => {
            assert_eq!(*timeout, attack.call_timeout, "[{name}]");
            assert_eq!((status.state, status.traps), (RunState::Trapped, 1), "[{name}] {status:?}");
            assert!(
                status.last_trap.as_deref().is_some_and(|m| m.contains("deadline")),
                "[{name}] {status:?}"
            );
        }
        (want, got) => panic!("[{name}] expected {want:?}, got {got:?}"),
    }
    assert!(victim_runs >= 1);
    let victim_status = w.b.instance_status(w.victim).expect("status");
    assert_eq!((victim_status.state, victim_status.traps), (RunState::Running, 0), "[{name}]");

    // (d) Deleting the attacker gives back every window, capability and quota unit it took.
    w.b.delete_instance(w.attacker).expect("delete");
    assert_eq!(
        Accounts::of(&w.b, w.victims, w.mallory),
        before,
        "[{name}] resources after the attacker was deleted"
    );

    // (b) The broker is up: new instances of both tenants start and answer, with the same result.
    let fresh = start_with(&w.b, w.victims, "malicious_victim", "fresh", small(DEADLINE));
    assert_eq!(call(&w.b, fresh, "workload", args![SEED]), baseline, "[{name}] a fresh victim");
    let again = start_with(&w.b, w.mallory, "malicious_app", "again", small(DEADLINE));
    assert_eq!(call(&w.b, again, "ping", args![]), 7, "[{name}] a fresh app of the attacker's tenant");
    // (c) And the victim, which kept running throughout, still gets its baseline.
    assert_eq!(call(&w.b, w.victim, "workload", args![SEED]), baseline, "[{name}] the victim afterwards");
}

/// The named test for the `malicious_app` guest: every attack of [`ATTACKS`], one fresh broker each.
#[test]
pub(crate) fn malicious_app() {
    for attack in ATTACKS {
        watchdog(60, move || run(attack));
    }
}

/// The named test for the `malicious_victim` guest: its workload is deterministic across runs and
/// instances, depends on its seed, and leaves no handle, window or capability behind.
#[test]
pub(crate) fn malicious_victim() {
    let (b, victims, victim, _, baseline) = victim_world();
    let roots = b.capability_count();
    assert_eq!(roots, 6, "only the three regions' roots and their memberships are left");
    assert_eq!(b.window_count(), 0);
    assert_eq!(b.handle_count(victim).expect("count"), 0);
    assert_eq!(b.tenant_usage(victims).expect("usage").handles, 0);
    let other = call(&b, victim, "workload", args![SEED + 1]);
    assert!(other > 0 && other != baseline, "the seed matters: {other}");
    let second = start_with(&b, victims, "malicious_victim", "second", small(DEADLINE));
    assert_eq!(call(&b, second, "workload", args![SEED]), baseline, "another instance gets the same result");
    assert_eq!(call(&b, victim, "workload", args![SEED]), baseline);
    assert_eq!(b.capability_count(), roots);
}
