//! The benchmark guests work (the criterion benches themselves run once under `cargo test` too), and
//! `broker bench` measures every cell of its matrix, checks scans against the bytes written, and
//! recommends a mode per cell.

use std::time::Duration;

use broker::{Mode, RegionSpec, Rights};
use broker_scenario::bench::{self, BenchArgError, BenchConfig, BenchError, Pattern, Subject};
use broker_scenario::metrics::CollectProgress;
use broker_tests::{args, broker, call, code, handle, start, tenant, watchdog, Status};

/// The named test for the `bench_handle` guest: its loops run and return OK, and the write loop really
/// writes.
#[test]
pub(crate) fn bench_handle() {
    let b = broker();
    let t = tenant(&b, "t");
    let region = b
        .create_region(t, RegionSpec::new("bench", 1 << 20, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
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
                .with_members(Rights::ALL)
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

/// The wrapping sum of a region's little-endian u64s, read through the host API.
fn host_checksum(b: &broker::Broker, region: broker::RegionId, size: usize) -> u64 {
    let mut bytes = vec![0u8; size];
    b.read_region(region, 0, &mut bytes).expect("read");
    bytes
        .chunks_exact(8)
        .fold(0u64, |sum, w| sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes"))))
}

fn as_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// The named test for the `bench_matrix` guest: the same exports run in every mode, a scan sums the
/// bytes the host wrote, and after `write1` (committed in mirror mode) a scan sums what the region
/// holds.
#[test]
pub(crate) fn bench_matrix() {
    const SIZE: usize = 8192;
    for mode in Mode::ALL {
        let b = broker();
        let t = tenant(&b, "t");
        let g = start(&b, t, "bench_matrix", "g");
        assert_eq!(call(&b, g, "scan", args![1]), code(Status::NotFound), "{mode}: nothing opened yet");
        assert_eq!(call(&b, g, "open", args![]), code(Status::NotFound), "{mode}: no region yet");
        let region = b
            .create_region(t, RegionSpec::new("bench", SIZE as u64, mode).with_members(Rights::ALL))
            .expect("region");
        let fill: Vec<u8> = (0..SIZE as u64 / 8).flat_map(|i| bench::fill_word(i).to_le_bytes()).collect();
        b.write_region(region, 0, &fill).expect("fill");
        assert_eq!(call(&b, g, "open", args![]), 0, "{mode}");
        assert_eq!(call(&b, g, "scan", args![2]), 0, "{mode}");
        assert_eq!(as_u64(call(&b, g, "checksum", args![])), bench::expected_checksum(SIZE as u64), "{mode}");
        assert_eq!(call(&b, g, "random", args![100, 7i64]), 0, "{mode}");
        assert_eq!(call(&b, g, "write1", args![3000, 7i64]), 0, "{mode}");
        assert_eq!(call(&b, g, "conflicts", args![]), 0, "{mode}: a single writer never conflicts");
        let after = host_checksum(&b, region, SIZE);
        assert_ne!(after, bench::expected_checksum(SIZE as u64), "{mode}: 1% of 3000 accesses are stores");
        assert_eq!(call(&b, g, "scan", args![1]), 0, "{mode}");
        assert_eq!(as_u64(call(&b, g, "checksum", args![])), after, "{mode}: the scan sees the stores");
    }
}

/// `handover` (the peers benchmark's broker side) adds 1 to every u64 of the payload and leaves the
/// rest of the region alone, in every mode; a length that is negative, not a multiple of 8 or past the
/// region is refused and changes nothing.
#[test]
fn bench_matrix_handover_adds_one_to_every_word_of_the_payload_in_every_mode() {
    const SIZE: usize = 3 * 4096;
    const PAYLOAD: usize = 4096 + 72;
    for mode in Mode::ALL {
        let b = broker();
        let t = tenant(&b, "t");
        let g = start(&b, t, "bench_matrix", "g");
        assert_eq!(call(&b, g, "handover", args![8]), code(Status::NotFound), "{mode}: nothing opened yet");
        let region = b
            .create_region(t, RegionSpec::new("bench", SIZE as u64, mode).with_members(Rights::ALL))
            .expect("region");
        let words: Vec<u64> = (0..SIZE as u64 / 8).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b.write_region(region, 0, &bytes).expect("fill");
        assert_eq!(call(&b, g, "open", args![]), 0, "{mode}");
        for bad in [-8, 12, SIZE as i32 + 8, i32::MIN] {
            assert_eq!(call(&b, g, "handover", args![bad]), code(Status::OutOfBounds), "{mode}: len {bad}");
        }
        let region_words = |b: &broker::Broker| {
            let mut now = vec![0u8; SIZE];
            b.read_region(region, 0, &mut now).expect("read");
            now.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8"))).collect::<Vec<_>>()
        };
        assert_eq!(region_words(&b), words, "{mode}: a refused handover changes nothing");
        for round in 1..=2u64 {
            assert_eq!(call(&b, g, "handover", args![PAYLOAD as i32]), 0, "{mode}");
            let now = region_words(&b);
            for (i, (was, is)) in words.iter().zip(&now).enumerate() {
                let expected = if i < PAYLOAD / 8 { was.wrapping_add(round) } else { *was };
                assert_eq!(*is, expected, "{mode}: word {i} after handover {round}");
            }
        }
    }
}

fn tiny_matrix() -> BenchConfig {
    BenchConfig {
        modes: Mode::ALL.to_vec(),
        sizes: vec![4 << 10, 64 << 10],
        patterns: Pattern::ALL.to_vec(),
        readers: vec![1, 2],
        cell: Duration::from_millis(5),
    }
}

/// The matrix measures every (mode or native, size, pattern, readers) cell; every scan, in every mode
/// and natively, returns the checksum of the bytes the host wrote; each (size, pattern, readers) gets
/// a recommended mode with a reason; the JSON has the same cells and the charts are SVG.
#[test]
fn bench_runs_the_whole_matrix_and_recommends_a_mode_per_cell() {
    let config = tiny_matrix();
    let expected_cells = config.cell_count();
    let (report, lines) = watchdog(300, move || {
        let progress = CollectProgress::new();
        let report = bench::run(&config, &progress).expect("bench runs");
        (report, progress.lines())
    });
    let config = tiny_matrix();
    assert_eq!(expected_cells, 2 * 3 * 2 * 4);
    assert_eq!(report.cells.len(), expected_cells);
    for &size in &config.sizes {
        for &pattern in &config.patterns {
            for &readers in &config.readers {
                let native = report.cell(Subject::Native, size, pattern, readers).expect("native cell");
                assert!(native.ratio_to_native.is_none());
                for subject in [
                    Subject::Native,
                    Subject::Mode(Mode::Handle),
                    Subject::Mode(Mode::Mirror),
                    Subject::Mode(Mode::Shared),
                ] {
                    let cell = report
                        .cell(subject, size, pattern, readers)
                        .unwrap_or_else(|| panic!("{subject} {size} {pattern} r{readers} missing"));
                    assert!(cell.ops > 0 && cell.ops_per_sec > 0.0 && cell.ns_per_op > 0.0, "{cell:?}");
                    if subject != Subject::Native {
                        assert!(cell.ratio_to_native.is_some_and(|r| r > 0.0), "{cell:?}");
                    }
                    if pattern == Pattern::Scan {
                        assert_eq!(cell.checksum, native.checksum, "{subject} {size} r{readers}");
                        assert_eq!(cell.checksum, Some(bench::expected_checksum(size)), "{subject} {size}");
                    }
                    if subject != Subject::Mode(Mode::Mirror) {
                        assert_eq!((cell.commits, cell.conflicts), (0, 0), "only mirrors commit: {cell:?}");
                    }
                }
                let mirror =
                    report.cell(Subject::Mode(Mode::Mirror), size, pattern, readers).expect("mirror");
                if pattern == Pattern::Write1 {
                    assert!(mirror.commits > 0, "mirror write1 commits: {mirror:?}");
                }
                let rec = report
                    .recommendations
                    .iter()
                    .find(|r| r.size == size && r.pattern == pattern && r.readers == readers)
                    .expect("a recommendation per cell");
                assert!(Mode::ALL.contains(&rec.mode));
                assert!(rec.reason.starts_with(&format!("{} ", rec.mode)), "{}", rec.reason);
                assert!(rec.reason.contains("x native"), "{}", rec.reason);
            }
        }
    }
    assert_eq!(report.recommendations.len(), 2 * 3 * 2);

    assert_eq!(lines.first().map(String::as_str), Some("broker bench: 48 steps"));
    assert!(lines.iter().any(|l| l.starts_with("[48/48] ")), "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("done"));

    let table = report.render();
    assert!(
        table.contains("Recommendations") && table.contains("64KiB") && table.contains("native"),
        "{table}"
    );

    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let written = report.write(&dir).expect("report written");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written.json).expect("json file"))
            .expect("valid json");
    assert_eq!(json["cells"].as_array().map(Vec::len), Some(expected_cells));
    assert_eq!(json["recommendations"].as_array().map(Vec::len), Some(12));
    assert!(json["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
    assert_eq!(json["cells"][0]["mode"], "native");
    assert_eq!(written.charts.len(), 3);
    for chart in &written.charts {
        let svg = std::fs::read_to_string(chart).expect("chart file");
        assert!(
            svg.contains("<svg") && svg.contains("native") && svg.contains("shared"),
            "{}",
            chart.display()
        );
    }
}

/// Bad settings are refused before anything runs, and the error names the value.
#[test]
fn bench_refuses_bad_arguments_naming_the_value() {
    use broker_cli::cli::Cli;
    use clap::Parser;

    assert!(matches!(bench::parse_size("12XB"), Err(BenchArgError::Size { value, .. }) if value == "12XB"));
    let zero = BenchConfig { readers: vec![0], ..tiny_matrix() };
    let e = bench::run(&zero, &broker_scenario::metrics::NoProgress).expect_err("0 readers");
    assert!(matches!(&e, BenchError::Arg(BenchArgError::Readers { value }) if value == "0"), "{e:?}");

    for (args, value) in [
        (&["--sizes", "4KiB,12XB"][..], "12XB"),
        (&["--readers", "1,0"][..], "\"0\""),
        (&["--patterns", "scan,zigzag"][..], "zigzag"),
        (&["--modes", "copy"][..], "copy"),
        (&["--cell-ms", "0"][..], "0"),
    ] {
        let argv = ["broker", "bench"].iter().chain(args).copied();
        let e = Cli::try_parse_from(argv).expect_err("refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{args:?}: {e}");
        assert!(e.to_string().contains(value), "{args:?}: {e}");
    }
    Cli::try_parse_from(["broker", "bench", "--quick", "--sizes", "4KiB,1MiB", "--readers", "1,2"])
        .expect("valid");
}
