//! Unit tests of the metrics module: percentiles of known distributions, merging, table layout, chart
//! files and progress collection.

use std::time::Duration;

use super::*;

/// `got` is within 0.1% (three significant figures) of `want`.
fn close(got: u64, want: u64) -> bool {
    got.abs_diff(want) * 1000 <= want
}

#[test]
fn percentiles_of_a_uniform_distribution() {
    let mut l = Latency::new();
    for i in 1..=10_000u64 {
        l.record_ns(i * 1000);
    }
    let s = l.summary();
    assert_eq!(s.count, 10_000);
    assert!(close(s.p50_ns, 5_000_000), "{s:?}");
    assert!(close(s.p99_ns, 9_900_000), "{s:?}");
    assert!(close(s.p999_ns, 9_990_000), "{s:?}");
    assert!(close(s.max_ns, 10_000_000), "{s:?}");
}

#[test]
fn an_empty_histogram_summarises_to_zeros() {
    assert_eq!(Latency::default().summary(), LatencySummary::default());
    assert!(Latency::new().is_empty());
}

#[test]
fn durations_above_sixty_seconds_saturate() {
    let mut l = Latency::new();
    l.record(Duration::from_secs(3600));
    l.record(Duration::from_nanos(0));
    let s = l.summary();
    assert_eq!(s.count, 2);
    assert!(close(s.max_ns, latency::MAX_NS), "{s:?}");
}

#[test]
fn merge_adds_both_distributions() {
    let (mut fast, mut slow) = (Latency::new(), Latency::new());
    for _ in 0..900 {
        fast.record(Duration::from_micros(10));
    }
    for _ in 0..100 {
        slow.record(Duration::from_millis(10));
    }
    fast.merge(&slow);
    let s = fast.summary();
    assert_eq!(s.count, 1000);
    assert!(close(s.p50_ns, 10_000), "{s:?}");
    assert!(close(s.p99_ns, 10_000_000), "{s:?}");
    assert_eq!(slow.count(), 100, "the source is unchanged");
}

#[test]
fn vm_hwm_is_parsed_in_bytes() {
    let status = "Name:\tbroker\nVmPeak:\t  9999 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
    assert_eq!(rss::parse_vm_hwm(status), Some(1234 * 1024));
    assert_eq!(rss::parse_vm_hwm("VmRSS: 1 kB\n"), None);
    if std::path::Path::new("/proc/self/status").exists() {
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }
}

#[test]
fn tables_pad_columns_and_right_align_numbers() {
    let mut t = Table::new(&["mode", "ops/s", "ratio"]);
    t.row(vec!["handle".into(), "1200".into(), "12.5x".into()]);
    t.row(vec!["shared".into(), "98000000".into(), "1.0x".into()]);
    t.row(vec!["mirror".into()]);
    assert_eq!(
        t.render(),
        "mode       ops/s  ratio\n\
         ------  --------  -----\n\
         handle      1200  12.5x\n\
         shared  98000000   1.0x\n\
         mirror\n"
    );
    assert_eq!(t.len(), 3);
}

#[test]
fn numbers_with_units_are_numeric_and_words_are_not() {
    for n in ["12", "-3.5", "1,024", "1.2x", "64 KiB", "97%"] {
        assert!(table::numeric_looking(n), "{n}");
    }
    for w in ["handle", "", "x2", "3 of 4 cells"] {
        assert!(!table::numeric_looking(w), "{w}");
    }
}

#[test]
fn bar_charts_are_svg_files_naming_every_series() {
    let dir = std::env::temp_dir().join(format!("broker-metrics-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let groups: Vec<String> = ["4KiB scan", "64KiB scan", "1MiB <scan>"].map(String::from).to_vec();
    let series = vec![
        Series { name: "handle".into(), values: vec![10.0, 100.0, 1000.0] },
        Series { name: "native".into(), values: vec![1.0, 0.0, f64::NAN] },
    ];
    for log in [true, false] {
        let path = dir.join(format!("chart-{log}.svg"));
        bar_chart_svg(&path, "modes", "ns per op", &groups, &series, log).expect("chart written");
        let svg = std::fs::read_to_string(&path).expect("chart readable");
        assert!(svg.contains("<svg"), "{svg}");
        for name in ["handle", "native", "64KiB scan", "1MiB &lt;scan&gt;", "ns per op"] {
            assert!(svg.contains(name), "{name} missing from the chart");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bar_charts_refuse_mismatched_or_empty_input() {
    let groups = vec!["a".to_owned(), "b".to_owned()];
    let short = vec![Series { name: "s".into(), values: vec![1.0] }];
    let path = std::path::Path::new("/nonexistent/never-written.svg");
    assert!(matches!(
        bar_chart_svg(path, "t", "y", &groups, &short, false),
        Err(ChartError::LengthMismatch { values: 1, groups: 2, .. })
    ));
    assert!(matches!(bar_chart_svg(path, "t", "y", &[], &short, false), Err(ChartError::Empty)));
    let ok = vec![Series { name: "s".into(), values: vec![1.0, 2.0] }];
    assert!(matches!(bar_chart_svg(path, "t", "y", &groups, &ok, false), Err(ChartError::Write { .. })));
}

#[test]
fn collect_progress_records_every_event_in_order() {
    let p = CollectProgress::new();
    let sink: &dyn ProgressSink = &p;
    sink.event(ProgressEvent::Start { total: 2, label: "bench" });
    sink.event(ProgressEvent::Advance { done: 1, total: 2, message: "4KiB scan" });
    sink.event(ProgressEvent::Line("note"));
    sink.event(ProgressEvent::Advance { done: 2, total: 2, message: "64KiB scan" });
    sink.event(ProgressEvent::Finish);
    NoProgress.event(ProgressEvent::Finish);
    assert_eq!(p.lines(), ["bench: 2 steps", "[1/2] 4KiB scan", "note", "[2/2] 64KiB scan", "done"]);
}
