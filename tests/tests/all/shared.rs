//! Shared mode: zero-copy windows, cross-instance atomics, revocation during active use and the
//! unmapping of revoked windows, bad map requests, memory growth, no leaked mappings, and the SPSC ring.
//! Visibility, rights (a store into a read-only window traps), revocation and sub-ranges are checked in
//! every mode by the conformance suite (`conformance.rs`).

use std::sync::Arc;

use broker::{Broker, Error, InstanceError, Mode, RegionId, RegionSpec, Rights, TenantId};
use broker_tests::{args, broker, call, code, handle, start, tenant, watchdog, Status};

const PAGE: u64 = 4096;
// Indexes into shared_app's region names.
const DATA: i32 = 0;
const ALPHA_DATA: i32 = 1;

fn setup(size: u64) -> (Broker, TenantId, RegionId) {
    let b = broker();
    let t = tenant(&b, "alpha");
    let r = b
        .create_region(t, RegionSpec::new("data", size, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    (b, t, r)
}

fn host_u64(b: &Broker, r: RegionId, at: u64) -> u64 {
    let mut w = [0u8; 8];
    b.read_region(r, at, &mut w).expect("host read");
    u64::from_le_bytes(w)
}

/// The named test for the `shared_app` guest: two instances see each other's stores through their
/// windows, the host sees them too, and host writes reach the windows with no copy.
#[test]
pub(crate) fn shared_app() {
    let (b, t, r) = setup(2 * PAGE);
    let a = start(&b, t, "shared_app", "a");
    let c = start(&b, t, "shared_app", "c");
    assert_eq!(call(&b, a, "map", args![DATA]), 0);
    assert_eq!(call(&b, c, "map", args![DATA]), 0);
    assert_eq!(b.window_count(), 2);
    assert_eq!(call(&b, a, "store", args![0, 0i64, 41i64]), 0);
    assert_eq!(call(&b, c, "load", args![0, 0i64]), 41);
    assert_eq!(host_u64(&b, r, 0), 41);
    b.write_region(r, PAGE, &7u64.to_le_bytes()).expect("host write");
    assert_eq!(call(&b, a, "load", args![0, i64::try_from(PAGE).expect("small")]), 7);
    assert_eq!(call(&b, c, "poke", args![0, 100i64, 5]), 0);
    assert_eq!(call(&b, a, "sum", args![0]), 41 + 7 + 5);
    assert_eq!(b.region_traffic(r).expect("traffic").bytes_in, 8, "only the host's write copied anything");
    assert_eq!(call(&b, a, "unmap", args![0]), 0);
    assert_eq!(call(&b, c, "unmap", args![0]), 0);
    assert_eq!(b.window_count(), 0);
}

#[test]
fn atomic_counter_from_two_apps_is_exact() {
    watchdog(120, || {
        let (b, t, r) = setup(PAGE);
        let b = Arc::new(b);
        let apps: Vec<_> = (0..2).map(|i| start(&b, t, "shared_app", &format!("app{i}"))).collect();
        for a in &apps {
            assert_eq!(call(&b, *a, "map", args![DATA]), 0);
        }
        let n = 200_000;
        let threads: Vec<_> = apps
            .iter()
            .map(|a| {
                let (b, a) = (Arc::clone(&b), *a);
                std::thread::spawn(move || call(&b, a, "add_many", args![0, 0i64, n]))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), 0);
        }
        assert_eq!(host_u64(&b, r, 0), 2 * n as u64);
    });
}

#[test]
fn revoking_during_active_use_traps_with_the_region_name() {
    watchdog(120, || {
        let b = Arc::new(broker());
        let alpha = tenant(&b, "alpha");
        let beta = tenant(&b, "beta");
        let r = b
            .create_region(alpha, RegionSpec::new("data", PAGE, Mode::Shared).with_members(Rights::ALL))
            .expect("region");
        let reader = start(&b, beta, "shared_app", "reader");
        let grant = b.grant(r, reader, Rights::READ | Rights::WRITE | Rights::MAP, 0, None).expect("grant");
        assert_eq!(call(&b, reader, "map", args![ALPHA_DATA]), 0);
        let bb = Arc::clone(&b);
        let spin = std::thread::spawn(move || bb.call(reader, "watch_forever", args![0]));
        while host_u64(&b, r, 8) != 1 {
            std::thread::yield_now();
        }
        // The guest is reading its window in a loop right now.
        b.revoke_grant(grant).expect("revoke");
        let err = spin.join().expect("thread").expect_err("the next access must trap");
        let Error::Instance(InstanceError::Trapped { message }) = &err else {
            panic!("expected a trap, got {err:?}")
        };
        assert!(message.contains("region alpha/data") && message.contains("revoked"), "{message}");
        assert_eq!(b.window_count(), 0);
    });
}

#[test]
fn closing_or_destroying_unmaps_and_later_accesses_trap() {
    let (b, t, r) = setup(PAGE);
    let a = start(&b, t, "shared_app", "a");
    let h = handle(call(&b, a, "open_raw", args![DATA]));
    let p = i32::try_from(call(&b, a, "alloc_pages", args![1])).expect("address");
    assert_eq!(call(&b, a, "map_raw", args![h, p, 4096, 1]), 0);
    b.write_region(r, 0, &[42]).expect("host write");
    assert_eq!(call(&b, a, "peek", args![p]), 42);
    b.destroy_region(r).expect("destroy");
    assert_eq!(b.window_count(), 0);
    let err = b.call(a, "peek", args![p]).expect_err("revoked pages trap");
    assert!(err.to_string().contains("revoked"), "{err}");
    // After a restart the app gets fresh memory; unmapping a revoked window gives the pages back.
    b.restart_instance(a).expect("restart");
    let r2 = b
        .create_region(t, RegionSpec::new("data", PAGE, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    let h = handle(call(&b, a, "open_raw", args![DATA]));
    let p = i32::try_from(call(&b, a, "alloc_pages", args![1])).expect("address");
    assert_eq!(call(&b, a, "map_raw", args![h, p, 4096, 1]), 0);
    b.revoke_all(r2).expect("revoke");
    assert_eq!(call(&b, a, "unmap_raw", args![h, p]), 0, "a revoked window can still be unmapped");
    assert_eq!(call(&b, a, "peek", args![p]), 0, "its pages are plain zeroed memory again");
}

#[test]
fn bad_map_requests_are_refused() {
    let (b, t, _) = setup(3 * PAGE);
    b.create_region(t, RegionSpec::new("flag", PAGE, Mode::Handle).with_members(Rights::ALL))
        .expect("handle-mode region");
    let a = start(&b, t, "shared_app", "a");
    let h = handle(call(&b, a, "open_raw", args![DATA]));
    let p = i32::try_from(call(&b, a, "alloc_pages", args![8])).expect("address");
    let len = 3 * 4096;
    let mem = i32::try_from(call(&b, a, "grow", args![0]) * 65536).expect("small");

    assert_eq!(call(&b, a, "map_raw", args![h, p + 1, len, 1]), code(Status::Unaligned));
    assert_eq!(call(&b, a, "map_raw", args![h, p, len - 4096, 1]), code(Status::InvalidArgument));
    assert_eq!(call(&b, a, "map_raw", args![h, p, len + 4096, 1]), code(Status::InvalidArgument));
    assert_eq!(call(&b, a, "map_raw", args![h, p, len, 0x10]), code(Status::InvalidArgument), "unknown flag");
    assert_eq!(call(&b, a, "map_raw", args![h, mem - 4096, len, 1]), code(Status::BadPointer), "past memory");
    assert_eq!(call(&b, a, "map_raw", args![h, -4096, len, 1]), code(Status::BadPointer));
    assert_eq!(call(&b, a, "map_raw", args![0, p, len, 1]), code(Status::InvalidHandle));
    assert_eq!(b.window_count(), 0, "no refused request mapped anything");

    assert_eq!(call(&b, a, "map_raw", args![h, p, len, 1]), 0);
    assert_eq!(call(&b, a, "map_raw", args![h, p + 4 * 4096, len, 1]), code(Status::Busy), "double map");
    let h2 = handle(call(&b, a, "open_raw", args![DATA]));
    assert_eq!(call(&b, a, "map_raw", args![h2, p + 4096, len, 1]), code(Status::Busy), "overlap");
    assert_eq!(call(&b, a, "unmap_raw", args![h, p + 4096]), code(Status::NotFound));
    assert_eq!(call(&b, a, "unmap_raw", args![h, p]), 0);
    assert_eq!(call(&b, a, "unmap_raw", args![h, p]), code(Status::NotFound));

    // Sub-ranges: page-aligned ones map only their pages; unaligned ones are refused.
    let sub = handle(call(&b, a, "restrict", args![h, 0x1f, 4096i64, 4096i64]));
    assert_eq!(call(&b, a, "map_raw", args![sub, p, 4096, 1]), 0);
    b.write_region(b.region_id(t, "data").expect("id"), 4096, &[77]).expect("write");
    assert_eq!(call(&b, a, "peek", args![p]), 77, "the window starts at the sub-range");
    let odd = handle(call(&b, a, "restrict", args![h, 0x1f, 100i64, 4096i64]));
    assert_eq!(call(&b, a, "map_raw", args![odd, p + 4 * 4096, 4096, 1]), code(Status::Unaligned));
    let no_map = handle(call(&b, a, "restrict", args![h, 0x3, 0i64, -1i64]));
    assert_eq!(call(&b, a, "map_raw", args![no_map, p + 4 * 4096, len, 0]), code(Status::PermissionDenied));
    let ro = handle(call(&b, a, "restrict", args![h, 0x5, 0i64, -1i64]));
    assert_eq!(call(&b, a, "map_raw", args![ro, p + 4 * 4096, len, 1]), code(Status::PermissionDenied));
    // Closed handles and other modes.
    assert_eq!(call(&b, a, "close", args![h2]), 0);
    assert_eq!(call(&b, a, "map_raw", args![h2, p + 4 * 4096, len, 1]), code(Status::StaleHandle));
    let plain = handle(call(&b, a, "open_raw", args![2]));
    assert_eq!(call(&b, a, "map_raw", args![plain, p + 4 * 4096, 4096, 0]), code(Status::WrongMode));
}

#[test]
fn memory_grow_after_mapping_keeps_windows_intact() {
    let (b, t, r) = setup(PAGE);
    let a = start(&b, t, "shared_app", "a");
    let c = start(&b, t, "shared_app", "c");
    assert_eq!(call(&b, a, "map", args![DATA]), 0);
    assert_eq!(call(&b, c, "map", args![DATA]), 0);
    assert_eq!(call(&b, a, "store", args![0, 16i64, 5i64]), 0);
    let before = call(&b, a, "grow", args![0]);
    assert_eq!(call(&b, a, "grow", args![20]), before);
    assert_eq!(call(&b, a, "load", args![0, 16i64]), 5);
    assert_eq!(call(&b, c, "store", args![0, 16i64, 6i64]), 0);
    assert_eq!(call(&b, a, "load", args![0, 16i64]), 6, "still the same pages after growth");
    assert_eq!(host_u64(&b, r, 16), 6);
}

fn region_mappings(name: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("procfs");
    maps.lines().filter(|l| l.contains(&format!("broker-region-{name} "))).count()
}

#[test]
fn a_thousand_cycles_leave_no_mapping_behind() {
    // A name no other test uses, so parallel tests cannot disturb the count.
    let b = broker();
    let t = tenant(&b, "alpha");
    let name = "leakcheck-6d1f";
    b.create_region(t, RegionSpec::new(name, 2 * PAGE, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    let baseline = region_mappings(name);
    assert_eq!(baseline, 1, "the broker's own mapping");
    b.create_region(t, RegionSpec::new("data", 2 * PAGE, Mode::Shared).with_members(Rights::ALL))
        .expect("region");
    let a = start(&b, t, "shared_app", "a");
    // 900 map/unmap cycles inside one instance...
    for _ in 0..9 {
        assert_eq!(call(&b, a, "cycle", args![DATA, 100]), 0);
    }
    // ...and 100 instances that map the leak-check region and are torn down with the window mapped.
    let region = b.region_id(t, name).expect("id");
    for i in 0..100 {
        let inst = start(&b, t, "shared_app", &format!("tmp{i}"));
        b.grant(region, inst, Rights::ALL, 0, None).expect("grant");
        let h = handle(call(&b, inst, "open_raw", args![5]));
        let p = i32::try_from(call(&b, inst, "alloc_pages", args![2])).expect("address");
        assert_eq!(call(&b, inst, "map_raw", args![h, p, 8192, 1]), 0);
        assert_eq!(region_mappings(name), baseline + 1);
        b.stop_instance(inst).expect("stop");
        assert_eq!(region_mappings(name), baseline, "stopping unmaps the window");
        b.delete_instance(inst).expect("delete");
    }
    assert_eq!(region_mappings(name), baseline);
    assert_eq!(b.window_count(), 0);
    assert_eq!(b.region_info(b.region_id(t, "data").expect("id")).expect("info").version, 0);
    let mut counter = [0u8; 8];
    b.read_region(b.region_id(t, "data").expect("id"), 0, &mut counter).expect("read");
    assert_eq!(u64::from_le_bytes(counter), 900, "every cycle really mapped the region");
}

#[test]
fn spsc_ring_streams_between_apps_parking_or_polling() {
    for park in [1, 0] {
        watchdog(120, move || {
            let b = Arc::new(broker());
            let t = tenant(&b, "alpha");
            b.create_region(t, RegionSpec::new("ring", 4 * PAGE, Mode::Shared).with_members(Rights::ALL))
                .expect("region");
            let producer = start(&b, t, "shared_app", "producer");
            let consumer = start(&b, t, "shared_app", "consumer");
            let count = 5_000;
            let bb = Arc::clone(&b);
            let c = std::thread::spawn(move || call(&bb, consumer, "consume", args![3, count, park]));
            assert_eq!(call(&b, producer, "produce", args![3, count, 100]), i64::from(count));
            assert_eq!(
                c.join().expect("consumer"),
                i64::from(count),
                "every message arrived intact (park={park})"
            );
        });
    }
}
