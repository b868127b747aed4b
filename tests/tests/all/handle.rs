//! Handle mode: which instance a grant reaches, stale handles, host grants' bad inputs, and every bad
//! input a guest can pass to the ABI. Visibility, rights, delegation, revocation and sub-ranges are
//! checked in every mode by the conformance suite (`conformance.rs`).

use std::time::Duration;

use broker::{Broker, InstanceConfig, InstanceId, Mode, RegionId, RegionSpec, Rights, TenantId};
use broker_tests::{args, broker, call, code, handle, start, start_with, tenant, Status};

const READ: i32 = 1;
const ALL: i32 = 0x1f;

// Indexes into handle_app's name tables.
const DATA: i32 = 0;
const ALPHA_DATA: i32 = 1;
const ALPHA_SECRET: i32 = 6;
const TO_BETA_READER: i32 = 1;

struct World {
    b: Broker,
    alpha: TenantId,
    data: RegionId,
    writer: InstanceId,
    reader: InstanceId,
    relay: InstanceId,
}

/// Tenant alpha owns region "data" (4 KiB) and runs "writer"; tenant beta runs "reader" and "relay".
fn world() -> World {
    let b = broker();
    let alpha = tenant(&b, "alpha");
    let beta = tenant(&b, "beta");
    let data = b
        .create_region(alpha, RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.create_region(alpha, RegionSpec::new("secret", 64, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    let writer = start(&b, alpha, "handle_app", "writer");
    let reader = start(&b, beta, "handle_app", "reader");
    let relay = start(&b, beta, "handle_app", "relay");
    World { b, alpha, data, writer, reader, relay }
}

fn host_u64(w: &World, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    w.b.read_region(w.data, offset, &mut b).expect("host read");
    u64::from_le_bytes(b)
}

/// The named test for the `handle_app` guest: a grant to another tenant's app reaches that app alone,
/// with exactly the rights granted, and shows it nothing else of the granting tenant's.
#[test]
pub(crate) fn handle_app() {
    let w = world();
    let hw = handle(call(&w.b, w.writer, "open", args![DATA]));
    assert_eq!(call(&w.b, w.writer, "store_u64", args![hw, 0i64, 42i64]), 0);
    assert_eq!(call(&w.b, w.writer, "grant", args![hw, TO_BETA_READER, READ, 0i64, -1i64]), 0);

    let hr = handle(call(&w.b, w.reader, "open", args![ALPHA_DATA]));
    assert_eq!(call(&w.b, w.reader, "load_u64", args![hr, 0i64]), 42);
    assert_eq!(call(&w.b, w.reader, "info_rights", args![hr]), i64::from(READ));
    assert_eq!(call(&w.b, w.reader, "open", args![ALPHA_SECRET]), code(Status::NotFound));
    assert_eq!(
        call(&w.b, w.reader, "open", args![DATA]),
        code(Status::NotFound),
        "beta has no region of its own named data"
    );
    assert_eq!(
        call(&w.b, w.relay, "open", args![ALPHA_DATA]),
        code(Status::NotFound),
        "the grant went to reader only"
    );
}

#[test]
fn stale_handle_after_close() {
    let w = world();
    let h = handle(call(&w.b, w.writer, "open", args![DATA]));
    assert_eq!(call(&w.b, w.writer, "close", args![h]), 0);
    assert_eq!(call(&w.b, w.writer, "load_u64", args![h, 0i64]), code(Status::StaleHandle));
    assert_eq!(call(&w.b, w.writer, "close", args![h]), code(Status::StaleHandle));
    // The slot is reused with a new generation: the old value stays stale, and the new one works.
    let h2 = handle(call(&w.b, w.writer, "open", args![DATA]));
    assert_ne!(h, h2);
    assert_eq!(call(&w.b, w.writer, "load_u64", args![h, 0i64]), code(Status::StaleHandle));
    assert_eq!(call(&w.b, w.writer, "store_u64", args![h2, 0i64, 5i64]), 0);
    assert_eq!(w.b.handle_count(w.writer).expect("count"), 1);
}

#[test]
fn host_grant_bad_inputs() {
    let w = world();
    assert!(matches!(
        w.b.grant(w.data, w.reader, Rights::READ, 4000, Some(200)),
        Err(broker::Error::Capability(broker::capability::CapError::OutOfBounds { .. }))
    ));
    assert!(matches!(
        w.b.grant(w.data, w.reader, Rights::READ, u64::MAX, None),
        Err(broker::Error::InvalidArgument { field: "offset", .. })
    ));
    assert!(matches!(
        w.b.write_region(w.data, 4095, &[1, 2]),
        Err(broker::Error::Region(broker::region::RegionError::OutOfBounds { .. }))
    ));
    assert_eq!(host_u64(&w, 4088), 0, "a refused host write leaves the region untouched");
}

/// Runs the attacker's sweep and returns (attacker, own handle).
fn attacker(w: &World) -> (InstanceId, i32) {
    // The sweep makes 100,000 host calls: on a loaded 2-core machine in a debug build that nears the
    // default 5 s deadline, which this test is not about.
    let config = InstanceConfig { call_timeout: Duration::from_secs(60), ..InstanceConfig::default() };
    let a = start_with(&w.b, w.alpha, "handle_attacker", "attacker", config);
    // The attacker's grants target "reader" in its own tenant.
    start(&w.b, w.alpha, "handle_app", "reader");
    let own = handle(call(&w.b, a, "open_data", args![]));
    (a, own)
}

/// The named test for the `handle_attacker` guest: a guest sweeping forged handle values never gets
/// anything but InvalidHandle or StaleHandle, and no region byte changes.
#[test]
pub(crate) fn handle_attacker() {
    let w = world();
    let pattern: Vec<u8> = (0..4096u32).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect();
    w.b.write_region(w.data, 0, &pattern).expect("host write");
    // Other instances hold live handles with small values; they must be unreachable from the attacker.
    handle(call(&w.b, w.writer, "open", args![DATA]));
    handle(call(&w.b, w.writer, "open", args![DATA]));
    let (a, own) = attacker(&w);
    let unexpected = call(&w.b, a, "sweep", args![0x9E37_79B9_7F4A_7C15u64 as i64, 100_000, 70_000, own]);
    assert_eq!(unexpected, 0, "forged handles must only ever get InvalidHandle or StaleHandle");
    let mut after = vec![0u8; 4096];
    w.b.read_region(w.data, 0, &mut after).expect("host read");
    assert_eq!(after, pattern, "no forged handle wrote anything");
    assert_eq!(w.b.handle_count(a).expect("count"), 1, "the sweep created no handle");
}

#[test]
fn offsets_and_lengths_that_overflow_are_refused() {
    let w = world();
    let (a, h) = attacker(&w);
    let scratch = i32::try_from(call(&w.b, a, "scratch", args![])).expect("pointer");
    let oob = code(Status::OutOfBounds);
    let cases: &[(i64, i32, i64)] = &[
        (i64::MAX, 8, oob),
        (i64::MIN, 8, oob),
        (-1, 8, oob),
        (4089, 8, oob),
        (4096, 1, oob),
        (0, -1, oob), // u32::MAX bytes: past the capability before the pointer is even looked at
        (4088, 8, 0),
        (0, 0, 0),
        (4096, 0, 0),
    ];
    for &(offset, len, want) in cases {
        assert_eq!(
            call(&w.b, a, "read_raw", args![h, offset, scratch, len]),
            want,
            "read at {offset} len {len}"
        );
        assert_eq!(
            call(&w.b, a, "write_raw", args![h, offset, scratch, len]),
            want,
            "write at {offset} len {len}"
        );
    }
    assert_eq!(call(&w.b, a, "restrict_raw", args![h, READ, 0i64, -2i64]), oob);
    assert_eq!(call(&w.b, a, "restrict_raw", args![h, READ, 4097i64, -1i64]), oob);
    assert_eq!(call(&w.b, a, "restrict_raw", args![h, READ, i64::MIN, 1i64]), oob);
    assert_eq!(call(&w.b, a, "restrict_raw", args![h, READ, 1i64, i64::MAX]), oob);
    assert_eq!(
        call(&w.b, a, "restrict_raw", args![h, READ, 4096i64, -1i64]),
        0,
        "an empty range at the end is fine"
    );
    assert_eq!(call(&w.b, a, "restrict_raw", args![h, 0x100, 0i64, -1i64]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "grant_raw", args![h, 0x20, 0i64, -1i64]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "grant_raw", args![h, READ, 4000i64, 100i64]), oob);
    assert_eq!(w.b.handle_count(a).expect("count"), 1, "no refused call left a handle behind");
}

#[test]
fn out_of_bounds_guest_pointers_are_refused() {
    let w = world();
    let (a, h) = attacker(&w);
    let mem = call(&w.b, a, "memory_bytes", args![]);
    let scratch = i32::try_from(call(&w.b, a, "scratch", args![])).expect("pointer");
    let end = i32::try_from(mem).expect("memory below 2 GiB");
    let bad = code(Status::BadPointer);

    w.b.write_region(w.data, 0, b"data").expect("host write");
    for (ptr, len) in [(end - 4, 8), (end, 1), (-1, 8), (-8, 16), (i32::MAX, 8)] {
        assert_eq!(call(&w.b, a, "read_raw", args![h, 0i64, ptr, len]), bad, "read into {ptr:#x}+{len}");
        assert_eq!(call(&w.b, a, "write_raw", args![h, 0i64, ptr, len]), bad, "write from {ptr:#x}+{len}");
    }
    assert_eq!(
        call(&w.b, a, "read_raw", args![h, 0i64, end - 8, 8]),
        0,
        "the last 8 bytes of memory are valid"
    );
    assert_eq!(call(&w.b, a, "info_raw", args![h, end - 39]), bad);
    assert_eq!(call(&w.b, a, "info_raw", args![h, end - 40]), 0);

    // Names: bad pointer, too long, not UTF-8, empty; and a bad out-pointer creates no handle.
    assert_eq!(call(&w.b, a, "read_raw", args![h, 0i64, scratch, 4]), 0, "scratch now holds \"data\"");
    assert_eq!(call(&w.b, a, "open_raw", args![-1, 4, scratch + 64]), bad);
    assert_eq!(call(&w.b, a, "open_raw", args![scratch, 300, scratch + 64]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "open_raw", args![scratch, 0, scratch + 64]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "open_raw", args![scratch, 4, end - 2]), bad);
    assert_eq!(call(&w.b, a, "open_raw", args![scratch, 4, -1]), bad);
    assert_eq!(w.b.handle_count(a).expect("count"), 1, "refused opens created no handle");
    assert_eq!(call(&w.b, a, "open_raw", args![scratch, 4, scratch + 64]), 0);
    assert_eq!(w.b.handle_count(a).expect("count"), 2);
    assert_eq!(call(&w.b, a, "open_not_utf8", args![]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "grant_target_raw", args![h, -1, 6]), bad);
    assert_eq!(call(&w.b, a, "grant_target_raw", args![h, scratch, 0]), code(Status::InvalidArgument));

    let mut head = [0u8; 4];
    w.b.read_region(w.data, 0, &mut head).expect("host read");
    assert_eq!(&head, b"data", "refused writes changed nothing");
    assert_eq!(
        call(&w.b, a, "scratch_sum", args![4]),
        i64::from(b"data".iter().map(|b| u32::from(*b)).sum::<u32>())
    );
}

#[test]
fn guest_created_regions_are_checked() {
    let w = world();
    let (a, _) = attacker(&w);
    let inval = code(Status::InvalidArgument);
    assert_eq!(call(&w.b, a, "create_raw", args![-5i64, 0]), inval);
    assert_eq!(call(&w.b, a, "create_raw", args![0i64, 0]), inval);
    assert_eq!(call(&w.b, a, "create_raw", args![4096i64, 7]), inval);
    assert_eq!(call(&w.b, a, "create_raw", args![i64::MAX, 0]), inval, "larger than any region");
    assert_eq!(call(&w.b, a, "create_raw", args![1i64 << 40, 0]), code(Status::QuotaExceeded));
    assert_eq!(w.b.region_id(w.alpha, "made-by-attacker"), None, "no refused create left a region");
    assert_eq!(call(&w.b, a, "create_raw", args![4096i64, 0]), 0);
    assert_eq!(call(&w.b, a, "create_raw", args![4096i64, 0]), code(Status::AlreadyExists));
    let id = w.b.region_id(w.alpha, "made-by-attacker").expect("created");
    assert_eq!(w.b.region_info(id).expect("info").size, 4096);
    let _ = ALL;
}

/// A versioned host read returns the version its bytes belong to, even with a writer running: write k
/// stores k and makes version k, so every (bytes, version) pair must agree.
#[test]
fn versioned_reads_pair_bytes_with_their_version() {
    let b = std::sync::Arc::new(broker());
    let t = tenant(&b, "alpha");
    let r = b
        .create_region(t, RegionSpec::new("data", 64, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    let writer = {
        let b = std::sync::Arc::clone(&b);
        std::thread::spawn(move || {
            for k in 1..=2_000u64 {
                assert_eq!(b.write_region(r, 0, &k.to_le_bytes()).expect("write"), k);
            }
        })
    };
    let mut seen = 0;
    while !writer.is_finished() || seen == 0 {
        let mut word = [0u8; 8];
        let version = b.read_region_versioned(r, 0, &mut word).expect("read");
        assert_eq!(u64::from_le_bytes(word), version, "bytes and version from the same moment");
        seen += 1;
    }
    writer.join().expect("writer");
}

/// `region_readv`/`region_writev`: several ranges in one call through the safe library; with raw
/// lists, every entry is checked before anything is copied (a bad entry anywhere leaves the region
/// and the app's buffers as they were), the count is bounded, and a write of several ranges is one
/// change with one version.
#[test]
fn vectored_reads_and_writes_check_every_entry_first() {
    let w = world();
    let h = handle(call(&w.b, w.writer, "open", args![DATA]));
    assert_eq!(call(&w.b, w.writer, "vectored", args![h]), 21);
    let mut got = [0u8; 12];
    w.b.read_region(w.data, 10, &mut got).expect("read");
    assert_eq!(got, [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 5, 6]);

    let pattern: Vec<u8> = (0..4096u32).map(|i| u8::try_from(i % 251).unwrap_or(0) | 1).collect();
    w.b.write_region(w.data, 0, &pattern).expect("host write");
    let (a, own) = attacker(&w);
    let scratch = i32::try_from(call(&w.b, a, "scratch", args![])).expect("pointer");
    let list = i32::try_from(call(&w.b, a, "iov_list", args![])).expect("pointer");
    // Two good entries: 8 bytes at 0 into scratch, 4 bytes at 100 into scratch + 8.
    call(&w.b, a, "iov_set", args![0, 0i64, scratch, 8]);
    call(&w.b, a, "iov_set", args![1, 100i64, scratch + 8, 4]);
    assert_eq!(call(&w.b, a, "readv_raw", args![own, list, 2]), 0);
    let sum = |bytes: &[u8]| bytes.iter().map(|&b| i64::from(b)).sum::<i64>();
    let expected = sum(&pattern[..8]) + sum(&pattern[100..104]);
    assert_eq!(call(&w.b, a, "scratch_sum", args![12]), expected);

    // writev: both ranges land, as one version.
    let version = w.b.region_info(w.data).expect("info").version;
    call(&w.b, a, "iov_set", args![0, 200i64, scratch, 4]);
    call(&w.b, a, "iov_set", args![1, 300i64, scratch + 4, 4]);
    assert_eq!(call(&w.b, a, "writev_raw", args![own, list, 2]), 0);
    assert_eq!(w.b.region_info(w.data).expect("info").version, version + 1, "one change");
    let mut now = vec![0u8; 4096];
    w.b.read_region(w.data, 0, &mut now).expect("read");
    assert_eq!(&now[200..204], &pattern[..4]);
    assert_eq!(&now[300..304], &pattern[4..8]);

    // Bad entries anywhere in the list: refused, nothing written.
    let before = now.clone();
    let oob = code(Status::OutOfBounds);
    let bad_ptr = code(Status::BadPointer);
    let cases: &[(i64, i32, i32, i64)] = &[
        (4093, scratch, 8, oob),     // past the range
        (i64::MIN, scratch, 8, oob), // a negative offset
        (0, -16, 32, bad_ptr),       // past the app's memory
        (0, scratch, -1, oob),       // u32::MAX bytes
    ];
    call(&w.b, a, "iov_set", args![0, 400i64, scratch, 8]);
    for &(offset, ptr, len, want) in cases {
        call(&w.b, a, "iov_set", args![1, offset, ptr, len]);
        assert_eq!(call(&w.b, a, "writev_raw", args![own, list, 2]), want, "writev {offset} {ptr} {len}");
        assert_eq!(call(&w.b, a, "readv_raw", args![own, list, 2]), want, "readv {offset} {ptr} {len}");
    }
    w.b.read_region(w.data, 0, &mut now).expect("read");
    assert_eq!(now, before, "a refused writev wrote nothing, its good first entry included");
    assert_eq!(w.b.region_info(w.data).expect("info").version, version + 1);
    // The list itself: a wild pointer, a count past the bound, a count past the list's end (reads
    // whatever follows it in the app's memory: its own business, still checked entry by entry).
    assert_eq!(call(&w.b, a, "readv_raw", args![own, -8, 2]), bad_ptr);
    assert_eq!(call(&w.b, a, "readv_raw", args![own, list, 257]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "writev_raw", args![own, list, -1]), code(Status::InvalidArgument));
    assert_eq!(call(&w.b, a, "readv_raw", args![own, list, 0]), 0, "an empty list is fine");
    // Forged handles.
    assert_eq!(call(&w.b, a, "readv_raw", args![0x7fff_0000, list, 1]), code(Status::InvalidHandle));
}
