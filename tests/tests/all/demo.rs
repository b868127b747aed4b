//! The built-in demo that `broker demo` runs, checked end to end.

use broker_cli::demo;

fn sum_of_squares_below(n: i64) -> i64 {
    (n - 1) * n * (2 * n - 1) / 6
}

/// The named test for the `demo_producer` guest (and, through it, the whole demo).
#[test]
pub(crate) fn demo_producer() {
    let mut out = Vec::new();
    let report = demo::run(500, &mut out).expect("demo runs");
    assert_eq!(report.consumer_sum, sum_of_squares_below(500));
    assert_eq!(report.host_sum, report.consumer_sum);
    assert!(report.ok());
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.contains("BROKER_ERR_PERMISSION_DENIED"), "{text}");
    assert!(text.lines().count() >= 6, "progress is printed step by step:\n{text}");
}

/// The named test for the `demo_consumer` guest: its write attempt is refused.
#[test]
pub(crate) fn demo_consumer() {
    let report = demo::run(1, &mut std::io::sink()).expect("demo runs");
    assert_eq!(report.consumer_sum, 0);
    assert_eq!(report.tamper_status, i64::from(broker_abi::Status::PermissionDenied.code()));
}
