//! Guest-proof isolation (issue 13): no wasm instruction on a shared window takes the process down,
//! revocation fails closed, map/unmap churn costs the process no kernel mappings, and MAP alone does not
//! read. The attacker is `isolation_ops`, a guest of raw instructions (`guests/wat/isolation_ops.wat`).
//!
//! Tests that count every mapping of the process, or push the process to the kernel's limit on
//! mappings, run in a child process of their own (this test binary, re-run with a filter), because the
//! other tests of this binary create and drop mappings concurrently.

use std::sync::Arc;

use broker::{
    Broker, Error, GrantId, InstanceError, InstanceId, Mode, RegionId, RegionSpec, Rights, TenantId,
};
use broker_tests::{args, broker, call, code, handle, start, tenant, watchdog, Status};

const PAGE: i32 = 4096;
/// Where the attacker maps its windows (1 MiB into its 4 MiB memory).
const WINDOW: i32 = 0x10_0000;
/// Where the attacker keeps ordinary bytes.
const SCRATCH: i32 = 0x8_0000;
/// Where the attacker writes region names.
const NAME: i32 = 0x100;

/// The instructions of `isolation_ops`' `op` export.
mod op {
    pub const LOAD: i32 = 0;
    pub const STORE: i32 = 1;
    pub const FILL: i32 = 2;
    pub const COPY_INTO: i32 = 3;
    pub const COPY_OUT: i32 = 4;
    pub const INIT: i32 = 5;
    pub const RMW_ADD: i32 = 6;
    pub const V128_STORE: i32 = 9;
    pub const STORE8: i32 = 10;
    pub const NOP_HOST_CALL: i32 = 12;
    pub const WASI_RANDOM_GET: i32 = 14;
    pub const WASI_CLOCK_TIME_GET: i32 = 15;
}

/// Opens `owner/name` in an `isolation_ops` instance; returns the handle.
fn open(b: &Broker, inst: InstanceId, qualified: &str) -> i32 {
    for (i, byte) in qualified.bytes().enumerate() {
        let at = NAME + i32::try_from(i).expect("short name");
        assert_eq!(call(b, inst, "op", args![op::STORE8, at, i32::from(byte), 0]), 0);
    }
    let len = i32::try_from(qualified.len()).expect("short name");
    handle(call(b, inst, "open", args![NAME, len]))
}

struct Setup {
    b: Arc<Broker>,
    owner: TenantId,
    region: RegionId,
    attacker: InstanceId,
    bystander: InstanceId,
}

/// Tenant `alpha` owns a shared region of `pages` pages filled with 0x11; tenant `evil` runs the
/// attacker; tenant `other` runs a bystander whose calls must keep answering.
fn setup(pages: u64) -> Setup {
    let b = Arc::new(broker());
    let owner = tenant(&b, "alpha");
    let evil = tenant(&b, "evil");
    let other = tenant(&b, "other");
    let size = pages * 4096;
    let region = b
        .create_region(owner, RegionSpec::new("data", size, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    let fill = vec![0x11u8; usize::try_from(size).expect("small")];
    b.write_region(region, 0, &fill).expect("fill");
    let attacker = start(&b, evil, "isolation_ops", "attacker");
    let bystander = start(&b, other, "isolation_ops", "bystander");
    Setup { b, owner, region, attacker, bystander }
}

impl Setup {
    fn grant(&self, rights: Rights, page: u64, pages: u64) -> GrantId {
        self.b.grant(self.region, self.attacker, rights, page * 4096, Some(pages * 4096)).expect("grant")
    }

    fn region_bytes(&self) -> Vec<u8> {
        let size = self.b.region_info(self.region).expect("info").size;
        let mut out = vec![0u8; usize::try_from(size).expect("small")];
        self.b.read_region(self.region, 0, &mut out).expect("host read");
        out
    }

    /// The bystander (another tenant) still gets answers.
    fn bystander_answers(&self) {
        assert_eq!(call(&self.b, self.bystander, "op", args![op::NOP_HOST_CALL, 0, 0, 0]), 0);
    }
}

fn trap_message(outcome: Result<Vec<broker::Val>, Error>) -> String {
    match outcome {
        Err(Error::Instance(InstanceError::Trapped { message })) => message,
        other => panic!("expected a trap, got {other:?}"),
    }
}

/// The named test for the `isolation_ops` guest: bulk-memory instructions (run by wasmtime as host-side
/// helpers) and WASI calls writing where the guest points (wasmtime-wasi's host code) over a read-only
/// window and over a revoked one trap the attacker only; the region keeps its bytes, and another
/// tenant's call still answers.
#[test]
pub(crate) fn isolation_ops() {
    watchdog(120, || {
        let s = setup(2);
        let before = s.region_bytes();
        // Read-only: fill, copy into and init trap; copying out (a read) works and reads the region.
        // WASI calls write where the guest points with wasmtime-wasi's own code, as the bulk-memory
        // helpers do: into its own memory that is fine, into a window it may not write it traps.
        for kind in [op::WASI_RANDOM_GET, op::WASI_CLOCK_TIME_GET] {
            assert_eq!(call(&s.b, s.attacker, "op", args![kind, SCRATCH, 0, 64]), 0, "kind {kind}");
        }
        let read_only = [op::FILL, op::COPY_INTO, op::INIT, op::STORE, op::V128_STORE, op::RMW_ADD];
        for kind in read_only.into_iter().chain([op::WASI_RANDOM_GET, op::WASI_CLOCK_TIME_GET]) {
            let g = s.grant(Rights::READ | Rights::MAP, 0, 2);
            let h = open(&s.b, s.attacker, "alpha/data");
            assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, 2 * PAGE, 0]), 0);
            assert_eq!(call(&s.b, s.attacker, "op", args![op::COPY_OUT, WINDOW, SCRATCH, 64]), 0);
            assert_eq!(call(&s.b, s.attacker, "op", args![op::LOAD, SCRATCH, 0, 0]), 0x1111_1111);
            let message = trap_message(s.b.call(s.attacker, "op", args![kind, WINDOW + 8, SCRATCH, 100]));
            assert!(
                message.contains("read-only shared window of region alpha/data"),
                "kind {kind}: {message}"
            );
            assert_eq!(s.region_bytes(), before, "kind {kind} changed the region through a read-only window");
            s.bystander_answers();
            s.b.restart_instance(s.attacker).expect("restart");
            assert!(matches!(s.b.revoke_grant(g), Err(Error::GrantNotFound(_))), "grants go with a restart");
        }
        // Revoked: every access traps, both directions of memory.copy included.
        let revoked = [op::FILL, op::COPY_INTO, op::COPY_OUT, op::INIT, op::LOAD, op::STORE];
        for kind in revoked.into_iter().chain([op::WASI_RANDOM_GET, op::WASI_CLOCK_TIME_GET]) {
            let g = s.grant(Rights::READ | Rights::WRITE | Rights::MAP, 0, 2);
            let h = open(&s.b, s.attacker, "alpha/data");
            assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, 2 * PAGE, 1]), 0);
            s.b.revoke_grant(g).expect("revoke");
            let message = trap_message(s.b.call(s.attacker, "op", args![kind, WINDOW + PAGE, SCRATCH, 100]));
            assert!(
                message.contains("region alpha/data") && message.contains("revoked"),
                "kind {kind}: {message}"
            );
            assert_eq!(s.region_bytes(), before, "kind {kind} reached a revoked window");
            s.bystander_answers();
            s.b.restart_instance(s.attacker).expect("restart");
        }
        // Host calls refuse the same windows with a status, without trapping.
        let _g = s.grant(Rights::READ | Rights::MAP, 0, 2);
        let h = open(&s.b, s.attacker, "alpha/data");
        assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, 2 * PAGE, 0]), 0);
        assert_eq!(call(&s.b, s.attacker, "read", args![h, WINDOW, 16]), code(Status::BadPointer));
        assert_eq!(call(&s.b, s.attacker, "write", args![h, WINDOW, 16]), code(Status::PermissionDenied));
        assert_eq!(s.b.window_count(), 1);
        assert_eq!(
            s.b.tenant_usage(s.b.instance_info(s.attacker).expect("info").tenant).expect("usage").windows,
            1
        );
    });
}

#[test]
fn map_without_read_is_refused() {
    let s = setup(1);
    s.grant(Rights::MAP, 0, 1);
    let h = open(&s.b, s.attacker, "alpha/data");
    assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, PAGE, 0]), code(Status::PermissionDenied));
    assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, PAGE, 1]), code(Status::PermissionDenied));
    assert_eq!(s.b.window_count(), 0);
    // With READ it maps read-only; a writable window needs WRITE as well.
    s.grant(Rights::READ | Rights::MAP, 0, 1);
    let h = open(&s.b, s.attacker, "alpha/data");
    assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, PAGE, 1]), code(Status::PermissionDenied));
    assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, PAGE, 0]), 0);
    assert_eq!(s.b.window_count(), 1);
    s.grant(Rights::READ | Rights::WRITE | Rights::MAP, 0, 1);
    let h = open(&s.b, s.attacker, "alpha/data");
    assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW + PAGE, PAGE, 1]), 0);
    assert_eq!(s.b.window_count(), 2);
    let _ = s.owner;
}

#[test]
fn a_copy_racing_a_revoke_never_kills_the_process() {
    watchdog(600, || {
        let s = setup(4);
        let before = s.region_bytes();
        let (mut completed, mut trapped, mut in_helper) = (0u32, 0u32, 0u32);
        for i in 0..10_000u32 {
            let g = s.grant(Rights::READ | Rights::WRITE | Rights::MAP, 0, 4);
            let h = open(&s.b, s.attacker, "alpha/data");
            assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, 4 * PAGE, 1]), 0);
            let (b, a) = (Arc::clone(&s.b), s.attacker);
            // Copy the window out, 16 KiB at a time, 8 times, while the owner revokes.
            let copier = std::thread::spawn(move || {
                b.call(a, "repeat", args![op::COPY_OUT, WINDOW, SCRATCH, 4 * PAGE, 8, 0, 0])
            });
            // Vary when the revoke lands: before the copy, in the middle of one, or after the call.
            for _ in 0..(i % 97) * 8 {
                std::thread::yield_now();
            }
            s.b.revoke_grant(g).expect("revoke reports success only when the window is gone");
            match copier.join().expect("copier") {
                Ok(_) => completed += 1,
                Err(e) => {
                    let message = trap_message(Err(e));
                    assert!(message.contains("region alpha/data"), "{message}");
                    trapped += 1;
                    in_helper += u32::from(message.contains("outside wasm code"));
                    s.b.restart_instance(s.attacker).expect("restart");
                    continue;
                }
            }
            // Not trapped: the window is revoked now, and the next access traps.
            assert_eq!(call(&s.b, s.attacker, "unmap", args![h, WINDOW]), 0);
            assert_eq!(call(&s.b, s.attacker, "close", args![h]), code(Status::StaleHandle));
        }
        eprintln!(
            "copy racing revoke: {completed} completed, {trapped} trapped, {in_helper} inside memory.copy"
        );
        assert_eq!(completed + trapped, 10_000);
        assert!(in_helper > 0, "no revoke landed inside a memory.copy: the race was never exercised");
        assert_eq!(s.region_bytes(), before);
        assert_eq!(s.b.window_count(), 0);
        s.bystander_answers();
    });
}

#[test]
fn window_quotas_bound_windows_per_instance_and_per_tenant() {
    let b = broker();
    let alpha = b
        .create_tenant(
            "alpha",
            broker::Quotas { windows: 3, windows_per_instance: 2, ..broker::Quotas::default() },
        )
        .expect("tenant");
    let r = b
        .create_region(alpha, RegionSpec::new("data", 4096, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    let i1 = start(&b, alpha, "isolation_ops", "i1");
    let i2 = start(&b, alpha, "isolation_ops", "i2");
    let mut handles = Vec::new();
    for inst in [i1, i2] {
        for _ in 0..3 {
            handles.push((inst, open(&b, inst, "alpha/data")));
        }
    }
    let map = |(inst, h): (InstanceId, i32), slot: i32| {
        call(&b, inst, "map", args![h, WINDOW + slot * PAGE, PAGE, 1])
    };
    assert_eq!(map(handles[0], 0), 0);
    assert_eq!(map(handles[1], 1), 0);
    assert_eq!(map(handles[2], 2), code(Status::QuotaExceeded), "two per instance");
    assert_eq!(map(handles[3], 0), 0);
    assert_eq!(map(handles[4], 1), code(Status::QuotaExceeded), "three per tenant");
    assert_eq!(b.tenant_usage(alpha).expect("usage").windows, 3);
    // A revoked window still holds its place until it is unmapped.
    b.revoke_all(r).expect("revoke");
    assert_eq!(b.window_count(), 0);
    assert_eq!(b.tenant_usage(alpha).expect("usage").windows, 3);
    assert_eq!(b.windows_of(i1).expect("i1"), 2);
    for (inst, h) in [handles[0], handles[1], handles[3]] {
        let slot = if h == handles[1].1 { 1 } else { 0 };
        assert_eq!(call(&b, inst, "unmap", args![h, WINDOW + slot * PAGE]), 0);
    }
    assert_eq!(b.tenant_usage(alpha).expect("usage").windows, 0);
}

// ----- tests that run in a child process -----

/// Set in the child process that runs one of the tests below alone.
const CHILD: &str = "BROKER_ISOLATION_CHILD";

/// Runs `body` in a fresh process of this test binary (so no other test changes the process's
/// mappings meanwhile): in the parent, spawns the child and checks it passed.
fn in_child_process(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("child runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child {test} failed ({}):\n{text}",
        out.status
    );
}

/// Every mapping of this process: every line of `/proc/self/maps`.
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").expect("procfs").lines().count()
}

/// The mappings the kernel counts against `vm.max_map_count` (`[vsyscall]` is listed but not counted).
fn counted_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("procfs")
        .lines()
        .filter(|l| !l.contains("[vsyscall]"))
        .count()
}

/// Mappings of the test region's memfd: the broker's own, plus one per live window of it.
fn region_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("procfs")
        .lines()
        .filter(|l| l.contains("memfd:broker-region-data"))
        .count()
}

#[test]
fn map_unmap_churn_leaves_the_process_mapping_count_where_it_started() {
    in_child_process("isolation::map_unmap_churn_leaves_the_process_mapping_count_where_it_started", || {
        let s = setup(4);
        let _g = s.grant(Rights::READ | Rights::WRITE | Rights::MAP, 0, 4);
        let h = open(&s.b, s.attacker, "alpha/data");
        // A thousand cycles first, so lazily created mappings exist before counting: each worker's
        // allocator arena appears with the first call that worker runs, and which worker takes a call
        // is the scheduler's choice.
        for _ in 0..1_000 {
            assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW, 4 * PAGE, 1]), 0);
            assert_eq!(call(&s.b, s.attacker, "unmap", args![h, WINDOW]), 0);
        }
        let start = mappings();
        let mut peak = start;
        for i in 0..100_000 {
            // Alternate places and protections, as churn by an attacker would.
            let at = WINDOW + (i % 7) * 4 * PAGE;
            let flags = i % 2;
            assert_eq!(call(&s.b, s.attacker, "map", args![h, at, 4 * PAGE, flags]), 0);
            assert_eq!(call(&s.b, s.attacker, "unmap", args![h, at]), 0);
            if i % 10_000 == 0 {
                peak = peak.max(mappings());
            }
        }
        let end = mappings();
        eprintln!("mappings: start {start}, peak {peak}, end {end}");
        assert_eq!(end, start, "100,000 map/unmap cycles changed the process's mapping count");
        assert!(peak <= start + 2, "churn grew the mapping count to {peak} from {start}");
        // Revoked windows cost mappings until unmapped, and give them back then.
        let g = s.grant(Rights::READ | Rights::MAP, 0, 4);
        let h2 = open(&s.b, s.attacker, "alpha/data");
        assert_eq!(call(&s.b, s.attacker, "map", args![h2, WINDOW, 4 * PAGE, 0]), 0);
        s.b.revoke_grant(g).expect("revoke");
        assert_eq!(call(&s.b, s.attacker, "unmap", args![h2, WINDOW]), 0);
        assert_eq!(mappings(), start);
    });
}

#[test]
fn revocation_under_mapping_pressure_never_reports_success_while_the_grantee_has_access() {
    in_child_process(
        "isolation::revocation_under_mapping_pressure_never_reports_success_while_the_grantee_has_access",
        || {
            let s = setup(3);
            // Three one-page windows of consecutive pages side by side: the kernel merges them into one
            // mapping, so revoking the middle one must split it, which the kernel refuses at its limit.
            let mut grants = Vec::new();
            for p in 0..3 {
                grants.push(s.grant(
                    Rights::READ | Rights::WRITE | Rights::MAP,
                    u64::try_from(p).expect("small"),
                    1,
                ));
                // The newest grant is the one a guest opens.
                let h = open(&s.b, s.attacker, "alpha/data");
                assert_eq!(call(&s.b, s.attacker, "map", args![h, WINDOW + p * PAGE, PAGE, 1]), 0);
            }
            // Fill the process's mappings up to the kernel's limit.
            let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
            loop {
                match memmap2::MmapMut::map_anon(4096) {
                    // Alternate protections so neighbours never merge: each costs one mapping.
                    Ok(m) if held.len().is_multiple_of(2) => match m.make_read_only() {
                        Ok(ro) => held.push(Box::new(ro)),
                        Err(_) => break,
                    },
                    Ok(m) => held.push(Box::new(m)),
                    Err(_) => break,
                }
            }
            // The kernel lets a mapping call go one past the limit; come back to exactly the limit, where
            // splitting a mapping in the middle is refused but replacing whole mappings is not.
            let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
                .expect("procfs")
                .trim()
                .parse()
                .expect("number");
            while counted_mappings() > limit && held.pop().is_some() {}
            assert_eq!(region_mappings(), 2, "the broker's own mapping and the three windows, merged");
            let outcome = s.b.revoke_grant(grants[1]);
            let windows_left = region_mappings() - 1;
            let at_limit = mappings();
            drop(held);
            eprintln!("revoke at the mapping limit ({at_limit} mappings): {outcome:?}");
            match &outcome {
                Ok(()) | Err(Error::Capability(broker::CapError::NotRevoked { .. })) => {}
                Err(e) => panic!("unexpected revoke outcome {e}"),
            }
            // Whatever was reported, the grantee cannot see the owner's later writes through the revoked
            // window, nor write the region through it.
            let page1 = 4096u64;
            s.b.write_region(s.region, page1, &[0x77; 4096]).expect("owner writes");
            let seen = s.b.call(s.attacker, "op", args![op::LOAD, WINDOW + PAGE, 0, 0]);
            assert!(
                !matches!(seen.as_deref(), Ok([broker::Val::I32(0x7777_7777)])),
                "the grantee still reads the region after revoke reported {outcome:?}"
            );
            eprintln!("the grantee loading through the revoked window: {seen:?}");
            // Revoking the middle window had to split the merged mapping, which the kernel refuses at its
            // limit: revocation took the fail-closed path (the memory scrubbed, or NotRevoked), and the
            // instance stops rather than runs.
            match &seen {
                Err(Error::Instance(InstanceError::Trapped { message })) => {
                    assert!(message.contains("could not be revoked"), "not the fail-closed path: {message}")
                }
                other => panic!("the grantee ran after a revoke at the mapping limit: {other:?}"),
            }
            if outcome.is_ok() {
                assert_eq!(
                    windows_left, 0,
                    "revoke reported success with the region still mapped in the grantee"
                );
            }
            let _ = s.b.call(s.attacker, "op", args![op::STORE, WINDOW + PAGE, 0x5555_5555, 0]);
            let mut after = [0u8; 4096];
            s.b.read_region(s.region, page1, &mut after).expect("host read");
            assert_eq!(after, [0x77; 4096], "the grantee wrote the region after revoke reported {outcome:?}");
            s.bystander_answers();
        },
    );
}

// ----- the instruction-level fuzzer -----

/// One fuzzer step: an instruction of `isolation_ops`, repeated `count` times over addresses in one
/// target (the attacker's own memory, its read-only window, its read-write window, which the host
/// revokes concurrently, or the page between them).
#[derive(Debug, Clone)]
struct Step {
    kind: i32,
    target: u8,
    offset: i32,
    b: i32,
    n: i32,
    count: i32,
    stride: i32,
}

fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    use proptest::prelude::*;
    let step =
        (0..16i32, 0..4u8, 0..(2 * PAGE), any::<i32>(), 0..(3 * PAGE), 1..2048i32, 0..512i32).prop_map(
            |(kind, target, offset, b, n, count, stride)| Step { kind, target, offset, b, n, count, stride },
        );
    proptest::collection::vec(step, 1..24)
}

/// Grants the attacker a read-only window of pages 0-1 (mapped at `WINDOW`) and a read-write one of
/// pages 2-3 (mapped at `WINDOW` + 3 pages); returns the read-write grant.
fn arm(s: &Setup) -> GrantId {
    // The newest grant is the one a guest opens: grant, open and map one window at a time.
    let _ro = s.grant(Rights::READ | Rights::MAP, 0, 2);
    let h_ro = open(&s.b, s.attacker, "alpha/data");
    assert_eq!(call(&s.b, s.attacker, "map", args![h_ro, WINDOW, 2 * PAGE, 0]), 0);
    let rw = s.grant(Rights::READ | Rights::WRITE | Rights::MAP, 2, 2);
    let h_rw = open(&s.b, s.attacker, "alpha/data");
    assert_eq!(call(&s.b, s.attacker, "map", args![h_rw, WINDOW + 3 * PAGE, 2 * PAGE, 1]), 0);
    rw
}

/// Runs one case: maps a read-only window (pages 0-1) and a read-write one (pages 2-3), then runs the
/// steps while another thread revokes the read-write grant after `revoke_after` host yields. Returns
/// how many instructions ran. Checks: the process lives (we are still here), every trap is an ordinary
/// trap (window faults name the region), the read-only pages never change, and the bystander answers.
fn fuzz_case(steps: &[Step], revoke_after: u32) -> Result<FuzzCount, String> {
    let s = setup(4);
    let ro_before = {
        let mut b = vec![0u8; 2 * 4096];
        s.b.read_region(s.region, 0, &mut b).map_err(|e| e.to_string())?;
        b
    };
    let current = Arc::new(parking_lot::Mutex::new(arm(&s)));
    let (b, latest) = (Arc::clone(&s.b), Arc::clone(&current));
    let revoker = std::thread::spawn(move || {
        for _ in 0..revoke_after {
            std::thread::yield_now();
        }
        let grant = *latest.lock();
        match b.revoke_grant(grant) {
            // Gone already if the attacker trapped and was restarted first.
            Ok(()) | Err(Error::GrantNotFound(_)) => Ok(()),
            Err(e) => Err(format!("revoke failed: {e}")),
        }
    });
    let mut count = FuzzCount::default();
    for st in steps {
        let base = match st.target {
            0 => SCRATCH,
            1 => WINDOW,
            2 => WINDOW + 3 * PAGE,
            _ => WINDOW + 2 * PAGE,
        };
        let outcome = s.b.call(
            s.attacker,
            "repeat",
            args![st.kind, base + st.offset, st.b, st.n, st.count, st.stride, 2 * PAGE - st.offset],
        );
        match outcome {
            Ok(v) => {
                count.instructions += match v.first() {
                    Some(broker::Val::I32(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                }
            }
            Err(Error::Instance(InstanceError::Trapped { message })) => {
                count.instructions += 1;
                count.traps += 1;
                if message.contains("outside wasm code") {
                    count.helper_faults += 1;
                }
                if message.contains("shared window") && !message.contains("alpha/data") {
                    return Err(format!("a window fault that does not name the region: {message}"));
                }
                s.b.restart_instance(s.attacker).map_err(|e| e.to_string())?;
                // A restart drops the attacker's capabilities: arm it again and carry on (the revoker takes
                // the newest read-write grant if it has not struck yet).
                *current.lock() = arm(&s);
            }
            Err(e) => return Err(format!("unexpected outcome {e}")),
        }
    }
    revoker.join().map_err(|_| "revoker panicked".to_string())??;
    let mut ro_after = vec![0u8; 2 * 4096];
    s.b.read_region(s.region, 0, &mut ro_after).map_err(|e| e.to_string())?;
    if ro_after != ro_before {
        return Err("pages the attacker could only read changed".into());
    }
    s.bystander_answers();
    Ok(count)
}

/// What one fuzzer case ran.
#[derive(Debug, Default)]
struct FuzzCount {
    instructions: u64,
    traps: u64,
    /// Traps from faults outside wasm code (bulk-memory helpers), which used to kill the process.
    helper_faults: u64,
}

/// Instructions at fuzzer-chosen addresses, inside read-only, read-write and revoked windows, while the
/// host revokes concurrently: 0 process crashes. Deterministic seed; `PROPTEST_CASES` runs more
/// (`scripts/stress.sh` does, and prints the instruction count).
#[test]
fn instruction_level_fuzzing_never_crashes_the_process() {
    use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48);
    let total = Arc::new(parking_lot::Mutex::new(FuzzCount::default()));
    let counted = Arc::clone(&total);
    let outcome = watchdog(900, move || {
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        runner
            .run(&(steps(), 0..2000u32), |(steps, revoke_after)| {
                let ran = fuzz_case(&steps, revoke_after).map_err(TestCaseError::fail)?;
                let mut c = counted.lock();
                c.instructions += ran.instructions;
                c.traps += ran.traps;
                c.helper_faults += ran.helper_faults;
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
    let c = total.lock();
    eprintln!(
        "instruction fuzzing: {cases} cases, {} instructions, {} traps ({} from faults in bulk-memory helpers), \
         0 process crashes",
        c.instructions, c.traps, c.helper_faults
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
