//! Unit tests of the bench's argument parsing and recommendation rule (the matrix itself runs in
//! `tests/tests/all/bench.rs`, with real guests).

use std::time::Duration;

use super::*;
use crate::metrics::Latency;

#[test]
fn sizes_parse_with_binary_units() {
    for (s, n) in
        [("4096", 4096), ("8B", 8), ("4KiB", 4096), ("64kib", 65536), ("1MiB", 1 << 20), ("1GiB", 1 << 30)]
    {
        assert_eq!(parse_size(s), Ok(n), "{s}");
        assert_eq!(parse_size(&format_size(n)), Ok(n), "{s} round-trips");
    }
    assert_eq!(format_size(4104), "4104B");
}

#[test]
fn bad_sizes_name_the_value_and_the_problem() {
    for (s, problem) in [
        ("12XB", "suffix"),
        ("4KB", "suffix"),
        ("", "suffix"),
        ("-4KiB", "suffix"),
        ("0", "at least 8"),
        ("2GiB", "1GiB"),
        ("99999999999999GiB", "1GiB"),
        ("4097", "multiple of 8"),
    ] {
        let e = parse_size(s).expect_err(s);
        assert!(matches!(&e, BenchArgError::Size { value, .. } if value == s), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("{s:?}")) && text.contains(problem), "{s}: {text}");
    }
}

#[test]
fn readers_modes_and_patterns_are_checked() {
    assert_eq!(parse_readers("8"), Ok(8));
    for bad in ["0", "65", "two", "-1"] {
        assert_eq!(parse_readers(bad), Err(BenchArgError::Readers { value: bad.into() }));
    }
    assert_eq!(parse_mode("mirror"), Ok(Mode::Mirror));
    assert!(parse_mode("copy").expect_err("unknown").to_string().contains("\"copy\""));
    assert_eq!("write1".parse::<Pattern>(), Ok(Pattern::Write1));
    assert_eq!("seq".parse::<Pattern>(), Err(BenchArgError::Pattern { value: "seq".into() }));
}

#[test]
fn configs_validate_every_list_and_the_cell_time() {
    BenchConfig::standard().validate().expect("standard matrix is valid");
    BenchConfig::quick().validate().expect("quick matrix is valid");
    let empty = BenchConfig { readers: vec![], ..BenchConfig::quick() };
    assert_eq!(empty.validate(), Err(BenchArgError::Empty { what: "readers" }));
    let zero = BenchConfig { readers: vec![1, 0], ..BenchConfig::quick() };
    assert_eq!(zero.validate(), Err(BenchArgError::Readers { value: "0".into() }));
    let odd = BenchConfig { sizes: vec![4095], ..BenchConfig::quick() };
    assert!(matches!(odd.validate(), Err(BenchArgError::Size { .. })));
    let long = BenchConfig { cell: Duration::from_secs(61), ..BenchConfig::quick() };
    assert_eq!(long.validate(), Err(BenchArgError::CellTime { ms: 61_000 }));
    let twice = BenchConfig { modes: vec![Mode::Shared, Mode::Handle, Mode::Shared], ..BenchConfig::quick() };
    assert_eq!(twice.normalized().modes, [Mode::Shared, Mode::Handle]);
    assert_eq!(BenchConfig::standard().cell_count(), 5 * 3 * 3 * 4);
}

#[test]
fn filled_words_sum_to_the_expected_checksum() {
    let words: Vec<u64> = (0..512).map(fill_word).collect();
    assert_eq!(expected_checksum(4096), words.iter().fold(0u64, |a, w| a.wrapping_add(*w)));
    assert_ne!(fill_word(0), fill_word(1));
}

fn cell(subject: Subject, ns: f64, commits: u64, conflicts: u64) -> Cell {
    let m =
        model::Measured { ops: 1000, wall: Duration::from_nanos(1000 * ns as u64), per_op: Latency::new() };
    let mut c = Cell::new(subject, 1 << 20, Pattern::Random, 1, &m);
    c.commits = commits;
    c.conflicts = conflicts;
    c
}

fn recommend_for(cells: Vec<Cell>) -> Recommendation {
    let config = BenchConfig {
        modes: Mode::ALL.to_vec(),
        sizes: vec![1 << 20],
        patterns: vec![Pattern::Random],
        readers: vec![1],
        cell: Duration::from_millis(1),
    };
    let report = Report::new(Machine::this(), &config, cells);
    assert_eq!(report.recommendations.len(), 1);
    report.recommendations[0].clone()
}

#[test]
fn handle_wins_when_within_the_slack_of_the_fastest() {
    let r = recommend_for(vec![
        cell(Subject::Native, 10.0, 0, 0),
        cell(Subject::Mode(Mode::Handle), 19.0, 0, 0),
        cell(Subject::Mode(Mode::Mirror), 11.0, 0, 0),
        cell(Subject::Mode(Mode::Shared), 10.0, 0, 0),
    ]);
    assert_eq!(r.mode, Mode::Handle);
    assert!(r.reason.starts_with("handle 1.9x native; mirror 1.1x, shared 1.0x; within 2x"), "{}", r.reason);
}

#[test]
fn mirror_wins_when_handle_is_slow_and_commits_rarely_conflict() {
    let r = recommend_for(vec![
        cell(Subject::Native, 10.0, 0, 0),
        cell(Subject::Mode(Mode::Handle), 120.0, 0, 0),
        cell(Subject::Mode(Mode::Mirror), 12.0, 100, 1),
        cell(Subject::Mode(Mode::Shared), 10.0, 0, 0),
    ]);
    assert_eq!(r.mode, Mode::Mirror);
    assert!(
        r.reason.starts_with("mirror 1.2x native; handle 12.0x (over 2x the fastest), shared 1.0x;"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("1 of 101 commits conflicted"), "{}", r.reason);
}

#[test]
fn shared_wins_only_when_the_others_are_slow_or_conflict() {
    let r = recommend_for(vec![
        cell(Subject::Native, 10.0, 0, 0),
        cell(Subject::Mode(Mode::Handle), 120.0, 0, 0),
        cell(Subject::Mode(Mode::Mirror), 12.0, 50, 50),
        cell(Subject::Mode(Mode::Shared), 10.0, 0, 0),
    ]);
    assert_eq!(r.mode, Mode::Shared);
    assert!(
        r.reason.starts_with(
            "shared 1.0x native; handle 12.0x (over 2x the fastest), mirror 1.2x (50 of 100 commits conflicted);"
        ),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("any writer can corrupt"), "{}", r.reason);
}

#[test]
fn a_single_mode_is_recommended_even_without_native() {
    let r = recommend_for(vec![cell(Subject::Mode(Mode::Mirror), 12.0, 0, 0)]);
    assert_eq!(r.mode, Mode::Mirror);
    assert!(r.reason.contains("12.0 ns/op"), "{}", r.reason);
}
