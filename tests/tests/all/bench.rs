//! The benchmark guest works (the criterion bench itself runs once under `cargo test` too).

use broker::{Mode, RegionSpec};
use broker_tests::{args, broker, call, handle, start, tenant};

/// The named test for the `bench_handle` guest: its loops run and return OK, and the write loop really
/// writes.
#[test]
pub(crate) fn bench_handle() {
    let b = broker();
    let t = tenant(&b, "t");
    let region = b.create_region(t, RegionSpec::new("bench", 1 << 20, Mode::Handle)).expect("region");
    let g = start(&b, t, "bench_handle", "g");
    let h = handle(call(&b, g, "open_bench", args![]));
    assert_eq!(call(&b, g, "nop_loop", args![100]), 0);
    assert_eq!(call(&b, g, "read_loop", args![h, 4096, 10]), 0);
    assert_eq!(call(&b, g, "write_loop", args![h, 1 << 20, 2]), 0);
    assert_eq!(b.region_info(region).expect("info").version, 2);
    assert_eq!(call(&b, g, "read_loop", args![0, 8, 1]), i64::from(broker_abi::Status::InvalidHandle.code()));
}

/// The named test for the `bench_mirror` guest: its loops run and return OK.
#[test]
pub(crate) fn bench_mirror() {
    let b = broker();
    let t = tenant(&b, "t");
    let region = b
        .create_region(
            t,
            RegionSpec::new("bench", 16 * 4096, Mode::Mirror)
                .with_policy(broker::mode::ConflictPolicy::LastWriterWins),
        )
        .expect("region");
    let g = start(&b, t, "bench_mirror", "g");
    assert_eq!(call(&b, g, "setup", args![]), 0);
    assert_eq!(call(&b, g, "acquire_loop", args![3]), 0);
    assert_eq!(call(&b, g, "refresh_loop", args![10]), 0);
    assert_eq!(call(&b, g, "commit_loop", args![4, 3]), 0);
    assert_eq!(b.region_traffic(region).expect("traffic").bytes_in, 3 * 4 * 4096);
    assert_eq!(call(&b, g, "commit_refresh_loop", args![16, 2]), 0);
    // Each refresh of B copies all 16 pages: the first also picks up the pages of the earlier commits.
    assert_eq!(b.region_traffic(region).expect("traffic").pages_refreshed, 2 * 16);
}
