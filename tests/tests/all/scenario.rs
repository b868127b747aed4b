//! The scenario runner and the five built-in scenarios, each run at a reduced size in every mode it
//! declares. The tests assert the apps' functional results (never timings): every sample seen in order
//! or counted as missed, the pipeline's output equal to the expected transformation (computed here,
//! independently of the broker and the guests), the attacks refused and the trusted results unchanged,
//! a victim's results right under a noisy neighbour. Scenario files with mistakes get errors that name
//! the file, the line and the field.

use broker::Mode;
use broker_scenario::metrics::{CollectProgress, NoProgress};
use broker_scenario::report::{CheckOutcome, PhaseReport, ScenarioReport};
use broker_scenario::spec::{UploadSource, Work};
use broker_scenario::RunOptions;

/// A quick run: every duration and iteration count scaled down 50 times.
const SCALE: f64 = 0.02;

fn run_builtin(name: &str, modes: Option<Vec<Mode>>) -> ScenarioReport {
    let s = broker_scenario::load(name).expect("built-in scenario validates");
    let report = broker_scenario::run(
        &s,
        &RunOptions { modes, scale: SCALE, workers: None, ..RunOptions::default() },
        &NoProgress,
    )
    .expect("scenario runs");
    assert!(!report.runs.is_empty());
    report
}

fn phase<'r>(report: &'r ScenarioReport, mode: &str, name: &str) -> &'r PhaseReport {
    let run = report.runs.iter().find(|r| r.mode == mode).unwrap_or_else(|| panic!("no run in {mode} mode"));
    run.phases.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no phase {name}"))
}

fn check_value(p: &PhaseReport, name_contains: &str) -> (Option<i64>, CheckOutcome) {
    let c = p
        .checks
        .iter()
        .find(|c| c.name.contains(name_contains))
        .unwrap_or_else(|| panic!("no check {name_contains:?} in {:?}", p.checks));
    (c.value, c.outcome)
}

fn ops(p: &PhaseReport, actor: &str) -> u64 {
    p.actors.iter().find(|a| a.name == actor).map_or_else(|| panic!("no actor {actor}"), |a| a.ops)
}

// ----- an independent implementation of the pipeline's data and transformation -----

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn expected_pipeline_checksum(blocks: u64, block_bytes: u64) -> i64 {
    let mut acc = 0u64;
    for i in 0..blocks {
        let mut sum = 0u64;
        for w in 0..block_bytes / 8 {
            let y = mix((i << 32) | w).rotate_left(13) ^ 0xA5A5_5A5A_DEAD_BEEF;
            sum = sum.wrapping_add((w + 1).wrapping_mul(y));
        }
        acc = acc.wrapping_mul(31).wrapping_add(sum);
    }
    i64::from_le_bytes(acc.to_le_bytes())
}

fn expected_sensor_sum(n: u64) -> i64 {
    let total: u64 = (0..n)
        .map(|i| {
            let x = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % 1000
        })
        .sum();
    i64::try_from(total).expect("small")
}

/// The named test for the `scenario_pipeline` guest: the pipeline scenario in all three modes; the
/// consumer's checksum equals the transformation of every block produced.
#[test]
pub(crate) fn scenario_pipeline() {
    let report = run_builtin("pipeline", None);
    assert_eq!(
        report.runs.iter().map(|r| r.mode.as_str()).collect::<Vec<_>>(),
        ["handle", "mirror", "shared"]
    );
    for mode in ["handle", "mirror", "shared"] {
        let p = phase(&report, mode, "stream");
        let blocks = ops(p, "blocks");
        assert!(blocks >= 1, "{mode}: at least one block went through");
        assert_eq!(p.actors[0].errors, 0, "{mode}: {:?}", p.actors[0].first_error);
        let (value, outcome) = check_value(p, "checksum");
        assert_eq!(value, Some(expected_pipeline_checksum(blocks, 256 << 10)), "{mode}");
        assert_eq!(outcome, CheckOutcome::Pass, "{mode}");
        let a = &p.actors[0];
        assert!(a.mb_per_sec.is_some_and(|m| m > 0.0));
        assert_eq!(a.latency.count, blocks, "{mode}: one latency sample per block");
        if mode == "shared" {
            assert!(a.bytes_copied_per_op == 0.0, "shared mode copies nothing: {}", a.bytes_copied_per_op);
        } else {
            // Handle and mirror mode copy each block in and out of both regions.
            assert!(a.bytes_copied_per_op >= f64::from(4 * (256 << 10)), "{mode}: {}", a.bytes_copied_per_op);
            assert!(a.host_calls_per_op >= 4.0, "{mode}: {}", a.host_calls_per_op);
        }
    }
    assert!(report.ok());
}

/// The named test for the `scenario_nanoapp` guest: the sensor hub; every nanoapp accounts for every
/// sample (seen in order, or missed and counted) and read the values the sensor wrote.
#[test]
pub(crate) fn scenario_nanoapp() {
    let report = run_builtin("sensor-hub", None);
    for run in &report.runs {
        let p = phase(&report, &run.mode, "stream");
        let samples = ops(p, "sensor");
        assert!(samples >= 1);
        for k in 0..4 {
            let app = format!("nanoapp-{k} ");
            let get = |what: &str| {
                p.checks
                    .iter()
                    .find(|c| c.name.starts_with(&app) && c.name.contains(what))
                    .unwrap_or_else(|| panic!("{app}{what}"))
            };
            let accounted = get("accounted");
            assert_eq!(accounted.value, Some(i64::try_from(samples).expect("small")), "{} {app}", run.mode);
            assert_eq!(get("out of order").value, Some(0));
            assert_eq!(get("callbacks").value, Some(0));
            let missed = get("samples missed").value.expect("reported");
            let sum = get("values");
            if missed == 0 {
                assert_eq!(sum.value, Some(expected_sensor_sum(samples)), "{} {app}", run.mode);
                assert_eq!(sum.outcome, CheckOutcome::Pass);
            } else {
                assert_eq!(sum.outcome, CheckOutcome::Skipped, "a sum over missed samples cannot hold");
            }
        }
        let feed = &p.actors[0];
        assert_eq!(feed.latency_kind, "write to acknowledgement");
        assert!(feed.latency.count >= 1, "{}: acknowledgements were timed", run.mode);
    }
    assert!(report.ok());
}

/// The named test for the `scenario_widgets` guest: the ui-toolkit scenario; every click reaches the
/// app's callback through the C toolkit and the counter widget shows them all.
#[test]
pub(crate) fn scenario_widgets() {
    let report = run_builtin("ui-toolkit", None);
    assert_eq!(report.runs.len(), 3);
    for run in &report.runs {
        let p = phase(&report, &run.mode, "frames");
        let frames = i64::try_from(ops(p, "frame")).expect("small");
        assert!(frames >= 1);
        assert_eq!(check_value(p, "reached").0, Some(frames), "{}", run.mode);
        assert_eq!(check_value(p, "counter widget").0, Some(frames), "{}", run.mode);
        assert_eq!(check_value(p, "without error").0, Some(0));
    }
    // Shared-mode widgets are written in place: fewer host calls per frame than handle mode.
    let calls = |mode: &str| phase(&report, mode, "frames").actors[0].host_calls_per_op;
    assert!(calls("shared") < calls("handle"), "shared {} vs handle {}", calls("shared"), calls("handle"));
    assert!(report.ok());
}

/// The named test for the `scenario_attacker` guest: mixed trust; the attacks are refused, none gets
/// through, and the trusted pipeline's results are right alone and under attack.
#[test]
pub(crate) fn scenario_attacker() {
    let report = run_builtin("mixed-trust", None);
    assert_eq!(report.runs.len(), 1, "every region's mode is fixed: one run");
    for name in ["alone", "attack"] {
        let p = phase(&report, "shared", name);
        let blocks = ops(p, "trusted");
        assert!(blocks >= 1);
        assert_eq!(
            check_value(p, "trusted checksum").0,
            Some(expected_pipeline_checksum(blocks, 64 << 10)),
            "{name}"
        );
    }
    let p = phase(&report, "shared", "attack");
    assert_eq!(check_value(p, "forged-handle attacks that got through").0, Some(0));
    assert_eq!(check_value(p, "out-of-bounds attacks that got through").0, Some(0));
    let refused = p.tallies.get("attacks_refused").copied().unwrap_or(0);
    let attempts = ops(p, "forger") * (64 * 2 + 4) + ops(p, "prober") * 4 * 12;
    assert_eq!(u64::try_from(refused).expect("positive"), attempts, "every attack was refused and counted");
    let writes = p.tallies.get("inbox_writes").copied().unwrap_or(0);
    assert_eq!(writes, i64::try_from(ops(p, "flooder") * 256).expect("small"));
    // Every flooded change reached the trusted consumer, delivered or merged: none lost, none extra.
    assert_eq!(check_value(p, "inbox changes").0, Some(writes));
    assert!(report.ok());
}

/// Issue 14: noisy-neighbor at a small scale. The victim's pipeline is right alone and under attack;
/// the attacker's spinners, uploads and trampoline grab all ran; the attacker got exactly its share of
/// trampolines (its quota in the file) and the victim still registers a callback and has it called;
/// the report compares the victim's ops/s and p99 across the phases, in the table and the JSON. The
/// figures themselves are wall-clock measurements and are not asserted.
#[test]
fn r14_noisy_neighbor_reports_the_victim_alone_and_under_attack() {
    let report = run_builtin("noisy-neighbor", None);
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.runs.len(), 1, "every region's mode is fixed: one run");
    for name in ["alone", "attack"] {
        let p = phase(&report, "shared", name);
        let blocks = ops(p, "pipeline");
        assert!(blocks >= 1 && ops(p, "ping") >= 1, "{name}");
        assert_eq!(
            check_value(p, "victim checksum").0,
            Some(expected_pipeline_checksum(blocks, 64 << 10)),
            "{name}"
        );
    }
    let attack = phase(&report, "shared", "attack");
    for actor in ["spinners", "uploader", "grabber"] {
        assert!(ops(attack, actor) >= 1, "{actor} ran");
    }
    assert_eq!(attack.tallies.get("trampolines_grabbed"), Some(&16), "the attacker's quota, then refused");
    assert_eq!(check_value(attack, "victim toolkit object").1, CheckOutcome::Pass);
    assert_eq!(check_value(attack, "victim callbacks").0, Some(1));

    // Both victim actors are compared across the two phases, with ratios to the first.
    for actor in ["pipeline", "ping"] {
        let a = report.across_phases.iter().find(|a| a.actor == actor).unwrap_or_else(|| panic!("{actor}"));
        let phases: Vec<&str> = a.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(phases, ["alone", "attack"], "{actor}");
        assert!(a.phases.iter().all(|p| p.ops_ratio.is_some() && p.p99_ratio.is_some()), "{actor}");
    }
    assert!(
        report.across_phases.iter().all(|a| a.actor == "pipeline" || a.actor == "ping"),
        "only actors of several phases are compared"
    );
    let text = report.render();
    for line in ["shared pipeline: ops/s by phase: alone", "shared ping: p99 by phase: alone"] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    let json = serde_json::to_value(&report).expect("encodes");
    let ping = json["across_phases"]
        .as_array()
        .and_then(|list| list.iter().find(|a| a["actor"] == "ping"))
        .expect("ping compared in the JSON");
    assert_eq!(ping["phases"][1]["phase"], "attack");
    assert!(ping["phases"][1]["p99_ratio"].is_f64() && ping["phases"][1]["ops_ratio"].is_f64(), "{ping}");
}

#[test]
fn the_documented_example_validates_and_runs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/example.toml");
    let s = broker_scenario::load(path).expect("example validates");
    assert_eq!(s.name, "example");
    assert_eq!(s.tenants[0].quotas.cpu_shares, 2048, "the documented weight is read");
    let progress = CollectProgress::new();
    let report = broker_scenario::run(
        &s,
        &RunOptions {
            modes: Some(vec![Mode::Mirror]),
            scale: 1.0,
            workers: Some(2),
            ..RunOptions::default()
        },
        &progress,
    )
    .expect("runs");
    assert!(report.ok(), "{}", report.render());
    let lines = progress.lines();
    assert!(lines.iter().any(|l| l.contains("example") && l.contains("mirror")), "{lines:?}");
    let text = report.render();
    assert!(text.contains("ops/s") && text.contains("mirror"), "{text}");
}

#[test]
fn reports_are_written_as_json_and_svg() {
    let s = broker_scenario::load("pipeline").expect("valid");
    let report = broker_scenario::run(
        &s,
        &RunOptions { modes: Some(vec![Mode::Shared]), scale: 0.01, workers: None, ..RunOptions::default() },
        &NoProgress,
    )
    .expect("runs");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let files = report.write_files(&dir).expect("written");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("json file")).expect("parses");
    assert_eq!(json["scenario"], "pipeline");
    assert_eq!(json["runs"][0]["mode"], "shared");
    assert_eq!(json["runs"][0]["phases"][0]["actors"][0]["ops"], report.runs[0].phases[0].actors[0].ops);
    assert!(json["runs"][0]["phases"][0]["actors"][0]["latency"]["p999_ns"].is_u64());
    let svg = std::fs::read_to_string(&files[1]).expect("svg file");
    assert!(svg.contains("<svg") && svg.contains("shared"), "{svg}");
}

// ----- validation -----

const GOOD: &str = r#"
name = "t"
[[tenant]]
name = "a"
[[module]]
tenant = "a"
name = "m"
guest = "scenario_pipeline"
[[region]]
tenant = "a"
name = "stage1"
size = "4KiB"
[[instance]]
tenant = "a"
name = "i"
module = "m"
[[phase]]
name = "p"
[[phase.actor]]
name = "x"
iterations = 3
steps = [{ call = "a/i", export = "take_checksum" }]
"#;

fn parse_err(text: &str) -> broker_scenario::SpecError {
    broker_scenario::parse(text, "bad.toml", None).expect_err("must be refused")
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

#[test]
fn a_good_file_validates() {
    let s = broker_scenario::parse(GOOD, "good.toml", None).expect("valid");
    assert_eq!(s.modes, Mode::ALL.to_vec(), "all modes by default");
    assert_eq!(s.regions[0].size, 4096);
    assert_eq!(s.phases[0].actors[0].amount, broker_scenario::spec::Amount::Iterations(3));
}

#[test]
fn validation_errors_name_the_file_the_line_and_the_field() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, field, reason fragment)
        ("size = \"4KiB\"", "size = \"12XB\"", "region[0].size", "not a size"),
        ("size = \"4KiB\"", "size = -5", "region[0].size", "negative"),
        ("size = \"4KiB\"", "size = 0", "region[0].size", "1 byte"),
        (
            "call = \"a/i\"",
            "call = \"a/nobody\"",
            "phase[0].actor[0].steps[0].call",
            "no instance \"a/nobody\"",
        ),
        ("module = \"m\"", "module = \"missing\"", "instance[0].module", "declares no module"),
        ("guest = \"scenario_pipeline\"", "guest = \"no_such_app\"", "module[0].guest", "no guest app"),
        ("iterations = 3", "iterations = 0", "phase[0].actor[0].iterations", "at least 1"),
        ("iterations = 3", "iterations = 3\nduration = \"1s\"", "phase[0].actor[0]", "exactly one of"),
        ("iterations = 3", "duration = \"10 parsecs\"", "phase[0].actor[0].duration", "unknown unit"),
        ("name = \"x\"", "name = \"x\"\nconcurrency = 0", "phase[0].actor[0].concurrency", "1 to 64"),
        ("name = \"x\"", "name = \"x\"\nrate = -3.0", "phase[0].actor[0].rate", "0.001 to 1e9"),
        ("name = \"x\"", "name = \"x\"\nrate = 1e-300", "phase[0].actor[0].rate", "0.001 to 1e9"),
        ("iterations = 3", "duration = \"99999999999999s\"", "phase[0].actor[0].duration", "7 days"),
        (
            "export = \"take_checksum\"",
            "export = \"f\", args = [\"{j}\"]",
            "phase[0].actor[0].steps[0].args[0]",
            "not an argument",
        ),
        ("size = \"4KiB\"", "size = \"4KiB\"\nmode = \"turbo\"", "region[0].mode", "auto"),
        ("size = \"4KiB\"", "size = \"4KiB\"\npolicy = \"yolo\"", "region[0].policy", "reject"),
        (
            "name = \"t\"",
            "name = \"t\"\nmodes = [\"handle\", \"psychic\"]",
            "modes[1]",
            "handle, mirror or shared",
        ),
        ("name = \"t\"", "name = \"t\"\nreport = [\"vibes\"]", "report[0]", "unknown figure"),
        (
            "tenant = \"a\"\nname = \"stage1\"",
            "tenant = \"b\"\nname = \"stage1\"",
            "region[0].tenant",
            "no tenant \"b\"",
        ),
        (
            "name = \"p\"",
            "name = \"p\"\n[[phase.check]]\nname = \"c\"\ntally = \"t\"\nexpect = { ops = \"ghost\" }",
            "phase[0].check[0].expect",
            "no actor \"ghost\"",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { regions = 2, cpu_shares = 0 }",
            "tenant[0].quotas.cpu_shares",
            "1 to 65536",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { cpu_shares = 65537 }",
            "tenant[0].quotas.cpu_shares",
            "out of range",
        ),
        ("name = \"t\"", "name = \"t\"\nbogus = 1", "(syntax)", "unknown field"),
        // Issue 19: scenarios across nodes.
        ("name = \"t\"", "name = \"t\"\nnodes = [\"x\"]", "nodes", "at least two nodes"),
        ("name = \"t\"", "name = \"t\"\nnodes = [\"x\", \"x\"]", "nodes[1]", "declared twice"),
        (
            "size = \"4KiB\"",
            "size = \"4KiB\"\nreplication = \"cluster\"",
            "region[0].replication",
            "declare the scenario's nodes",
        ),
        (
            "size = \"4KiB\"",
            "size = \"4KiB\"\nreplication = \"galaxy\"",
            "region[0].replication",
            "node or cluster",
        ),
        ("size = \"4KiB\"", "size = \"4KiB\"\nnode = \"x\"", "region[0].node", "not one of"),
        ("module = \"m\"", "module = \"m\"\nnode = \"x\"", "instance[0].node", "not one of"),
        // Issue 14's keys: instance call deadlines, per-thread instances, uploads, the newer quotas.
        (
            "module = \"m\"",
            "module = \"m\"\ncall_timeout = \"abc\"",
            "instance[0].call_timeout",
            "not a duration",
        ),
        (
            "module = \"m\"",
            "module = \"m\"\ncall_timeout = \"0s\"",
            "instance[0].call_timeout",
            "longer than 0",
        ),
        (
            "module = \"m\"",
            "module = \"m\"\ncall_timeout = \"2m\"",
            "instance[0].call_timeout",
            "max_call_timeout_ms = 60000",
        ),
        (
            "call = \"a/i\"",
            "call = \"a/i{thread}\"",
            "phase[0].actor[0].steps[0].call",
            "no instance \"a/i0\"",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"b\", size = \"1MiB\" }",
            "phase[0].actor[0].upload.tenant",
            "no tenant \"b\"",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"a\", guest = \"no_such_app\" }",
            "phase[0].actor[0].upload.guest",
            "no guest app",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"a\", size = 0 }",
            "phase[0].actor[0].upload.size",
            "1 byte to 1GiB",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"a\", size = \"2GiB\" }",
            "phase[0].actor[0].upload.size",
            "1 byte to 1GiB",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"a\", size = \"12XB\" }",
            "phase[0].actor[0].upload.size",
            "not a size",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"a\", size = \"1MiB\", guest = \"scenario_pipeline\" }",
            "phase[0].actor[0].upload",
            "exactly one of `guest`",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "upload = { tenant = \"a\" }",
            "phase[0].actor[0].upload",
            "exactly one of `guest`",
        ),
        (
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]\nupload = { tenant = \"a\", size = 1 }",
            "phase[0].actor[0]",
            "exactly one of `steps`",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { module_bytes = \"12XB\" }",
            "tenant[0].quotas.module_bytes",
            "not a size",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { compiled_bytes = -1 }",
            "tenant[0].quotas.compiled_bytes",
            "negative",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { trampolines = -1 }",
            "tenant[0].quotas.trampolines",
            "must not be negative",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { regions = \"64MiB\" }",
            "tenant[0].quotas.regions",
            "whole number",
        ),
        (
            "name = \"a\"",
            "name = \"a\"\nquotas = { lollipops = 3 }",
            "tenant[0].quotas.lollipops",
            "no quota \"lollipops\" (known: region_bytes, regions,",
        ),
        ("[[phase]]", "[[phase]\n", "(syntax)", ""),
    ];
    for (from, to, field, reason) in cases {
        assert!(GOOD.contains(from), "bad case {from:?}");
        let text = GOOD.replacen(from, to, 1);
        let e = parse_err(&text);
        assert_eq!(e.file, "bad.toml");
        assert_eq!(&e.field, field, "{to:?}: {e}");
        assert!(e.reason.contains(reason), "{to:?}: {e}");
        // The line that holds the offending key: the leaf of the field path, without its index.
        let leaf = field.rsplit('.').next().unwrap_or(field).split('[').next().unwrap_or(field);
        let first_new_line = to.lines().find(|l| l.contains(leaf)).unwrap_or(to.lines().next().unwrap_or(""));
        if *field == "phase[0].actor[0]" {
            // A problem of the whole entry points at its header.
            assert_eq!(e.line, line_of(&text, "[[phase.actor]]"), "{to:?}: {e}");
        } else if *field != "(syntax)" {
            assert_eq!(e.line, line_of(&text, first_new_line.trim()), "{to:?}: {e}");
        }
        assert!(e.to_string().starts_with(&format!("bad.toml:{}: {field}: ", e.line)), "{e}");
    }
}

/// Issue 14: the keys a noisy neighbour needs validate into the types the runner uses: every tenant
/// quota, an instance's call deadline (within its tenant's cap), a step whose instance is each
/// thread's own, and an upload of a generated module or a guest app (within the tenant's module bytes).
#[test]
fn r14_quotas_call_timeouts_per_thread_calls_and_uploads_validate() {
    let text = GOOD
        .replacen(
            "name = \"a\"",
            "name = \"a\"\nquotas = { max_call_timeout_ms = 120000, trampolines = 2, max_workers = 1, modules = 3, \
             module_bytes = \"8MiB\", compiled_bytes = \"64MiB\", watches = 5, windows = 7, windows_per_instance = 3 }",
            1,
        )
        .replace(
            "name = \"i\"\nmodule = \"m\"",
            "name = \"i0\"\nmodule = \"m\"\ncall_timeout = \"2m\"\n[[instance]]\ntenant = \"a\"\nname = \"i1\"\nmodule = \"m\"",
        )
        .replace(
            "steps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "concurrency = 2\nsteps = [{ call = \"a/i{thread}\", export = \"take_checksum\" }]\n\
             [[phase.actor]]\nname = \"up\"\niterations = 1\nupload = { tenant = \"a\", size = \"1MiB\" }\n\
             [[phase.actor]]\nname = \"up-guest\"\niterations = 1\nupload = { tenant = \"a\", guest = \"scenario_pipeline\" }",
        );
    let s = broker_scenario::parse(&text, "good.toml", None).expect("valid");
    let q = s.tenants[0].quotas;
    assert_eq!(
        (
            q.max_call_timeout_ms,
            q.trampolines,
            q.max_workers,
            q.modules,
            q.watches,
            q.windows,
            q.windows_per_instance
        ),
        (120_000, 2, 1, 3, 5, 7, 3)
    );
    assert_eq!((q.module_bytes, q.compiled_bytes), (8 << 20, 64 << 20));
    assert_eq!(s.instances[0].call_timeout, Some(std::time::Duration::from_secs(120)));
    assert_eq!(s.instances[1].call_timeout, None, "the broker's default");
    let actors = &s.phases[0].actors;
    let Work::Calls(steps) = &actors[0].work else { panic!("calls") };
    assert_eq!(steps[0].per_thread, [0, 1], "thread t calls a/i<t>");
    assert_eq!((steps[0].instance(0), steps[0].instance(1)), (0, 1));
    assert_eq!(actors[0].observe, [0, 1], "both threads' instances are observed");
    assert_eq!(actors[1].work, Work::Upload { tenant: "a".into(), module: UploadSource::Generated(1 << 20) });
    assert_eq!(
        actors[2].work,
        Work::Upload { tenant: "a".into(), module: UploadSource::Guest("scenario_pipeline".into()) }
    );

    // Over the tenant's caps, said at validation with the line, rather than by the broker at setup.
    let over = text.replace("call_timeout = \"2m\"", "call_timeout = \"121s\"");
    let e = parse_err(&over);
    assert_eq!((e.field.as_str(), e.line), ("instance[0].call_timeout", line_of(&over, "121s")), "{e}");
    assert!(e.reason.contains("max_call_timeout_ms = 120000"), "{e}");
    let over = text.replace("size = \"1MiB\"", "size = \"9MiB\"");
    let e = parse_err(&over);
    assert_eq!(e.field, "phase[0].actor[1].upload.size", "{e}");
    assert!(e.reason.contains("module_bytes = 8388608"), "{e}");
    let over = text
        .replace("module_bytes = \"8MiB\"", "module_bytes = 1024")
        .replace("size = \"1MiB\"", "size = 1000");
    let e = parse_err(&over);
    assert_eq!(e.field, "phase[0].actor[2].upload.guest", "{e}");
    assert!(e.reason.contains("module_bytes = 1024"), "{e}");
}

/// Issue 14: an upload actor loads its module under a fresh name and unloads it, operation after
/// operation, so the tenant's module quota is never used up; a call on `{thread}` instances reaches
/// each thread's own.
#[test]
fn r14_uploads_and_per_thread_calls_run() {
    let text = GOOD
        .replacen("name = \"a\"", "name = \"a\"\nquotas = { modules = 3 }", 1)
        .replace("name = \"i\"", "name = \"i0\"\nmodule = \"m\"\n[[instance]]\ntenant = \"a\"\nname = \"i1\"")
        .replace(
            "iterations = 3\nsteps = [{ call = \"a/i\", export = \"take_checksum\" }]",
            "iterations = 4\nconcurrency = 2\nsteps = [{ call = \"a/i{thread}\", export = \"take_checksum\" }]\n\
             [[phase.actor]]\nname = \"up\"\niterations = 3\nupload = { tenant = \"a\", guest = \"scenario_pipeline\" }\n\
             [[phase.actor]]\nname = \"up-generated\"\niterations = 2\nupload = { tenant = \"a\", size = \"64KiB\" }",
        );
    let s = broker_scenario::parse(&text, "t.toml", None).expect("valid");
    let report = broker_scenario::run(
        &s,
        &RunOptions { modes: Some(vec![Mode::Handle]), workers: Some(2), ..RunOptions::default() },
        &NoProgress,
    )
    .expect("runs");
    assert!(report.ok(), "{}", report.render());
    let p = &report.runs[0].phases[0];
    // The tenant holds one module of its own and may hold three: the two upload actors' five uploads
    // pass only if each is unloaded again.
    assert_eq!((ops(p, "x"), ops(p, "up"), ops(p, "up-generated")), (4, 3, 2));
    assert_eq!(report.workers, 2);
    assert!(report.render().contains("2 workers"));
}

#[test]
fn a_grant_outside_the_region_or_of_no_rights_is_refused() {
    let with = |grant: &str| format!("{GOOD}\n[[grant]]\nregion = \"a/stage1\"\nto = \"a/i\"\n{grant}\n");
    let e = parse_err(&with("rights = [\"read\"]\noffset = 8192"));
    assert_eq!(e.field, "grant[0]");
    assert!(e.reason.contains("does not fit"), "{e}");
    let e = parse_err(&with("rights = []"));
    assert_eq!(e.field, "grant[0].rights");
    let e = parse_err(&with("rights = [\"telepathy\"]"));
    assert_eq!(e.field, "grant[0].rights[0]");
    broker_scenario::parse(&with("rights = [\"read\", \"map\"]\noffset = 0\nlen = 4096"), "ok.toml", None)
        .expect("fits");
}

#[test]
fn unknown_scenarios_and_bad_options_are_refused() {
    let e = broker_scenario::load("no-such-scenario").expect_err("unknown");
    let text = e.to_string();
    assert!(text.contains("pipeline") && text.contains("sensor-hub"), "lists the built-ins: {text}");
    let s = broker_scenario::parse(GOOD, "good.toml", None).expect("valid");
    for scale in [0.0, -1.0, f64::NAN, 1e9] {
        let e = broker_scenario::run(
            &s,
            &RunOptions { modes: None, scale, workers: None, ..RunOptions::default() },
            &NoProgress,
        )
        .expect_err("bad scale");
        assert!(e.to_string().contains("scale"), "{e}");
    }
    let e = broker_scenario::run(
        &s,
        &RunOptions { modes: None, scale: 1.0, workers: Some(0), ..RunOptions::default() },
        &NoProgress,
    )
    .expect_err("no workers");
    assert!(e.to_string().contains("workers"), "{e}");
    assert!(broker_scenario::spec::parse_modes("handle,bogus").is_err());
    assert_eq!(
        broker_scenario::spec::parse_modes("shared, handle").expect("ok"),
        vec![Mode::Shared, Mode::Handle]
    );
}

#[test]
fn an_export_with_the_wrong_arguments_fails_the_run_with_its_name() {
    // `take_checksum` takes no arguments: passing one is an error in every operation, reported.
    let text = GOOD.replace("export = \"take_checksum\"", "export = \"take_checksum\", args = [1]");
    let s = broker_scenario::parse(&text, "t.toml", None).expect("valid syntax");
    let report = broker_scenario::run(
        &s,
        &RunOptions { modes: Some(vec![Mode::Handle]), scale: 1.0, workers: None, ..RunOptions::default() },
        &NoProgress,
    )
    .expect("runs");
    let a = &report.runs[0].phases[0].actors[0];
    assert_eq!((a.ops, a.errors), (0, 3));
    assert!(a.first_error.as_deref().is_some_and(|e| e.contains("take_checksum")), "{:?}", a.first_error);
    assert!(!report.ok());
}

#[test]
fn the_cli_lists_shows_checks_and_runs_scenarios() {
    use broker_cli::cli::{run, Cli};
    use clap::Parser;
    let cli = |args: &[&str]| {
        let mut out = Vec::new();
        let ok = run(Cli::parse_from(std::iter::once("broker").chain(args.iter().copied())), &mut out);
        (ok, String::from_utf8(out).expect("utf-8"))
    };
    let (ok, text) = cli(&["scenario", "list"]);
    assert!(ok.expect("runs"));
    for (name, _) in broker_scenario::BUILTINS {
        assert!(text.contains(name), "{text}");
    }
    let (ok, text) = cli(&["scenario", "show", "sensor-hub"]);
    assert!(ok.expect("runs") && text.contains("[[phase.actor]]"));
    let (ok, _) = cli(&["scenario", "show", "nope"]);
    assert!(ok.is_err());
    let (ok, text) = cli(&["scenario", "check", "mixed-trust"]);
    assert!(ok.expect("runs") && text.contains("ok"), "{text}");

    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    let out = dir.to_string_lossy().into_owned();
    let (ok, text) = cli(&[
        "scenario",
        "run",
        "pipeline",
        "--modes",
        "handle,shared",
        "--scale",
        "0.01",
        "--quiet",
        "--out",
        &out,
    ]);
    assert!(ok.expect("runs"), "{text}");
    assert!(text.contains("handle") && text.contains("shared") && !text.contains("mirror "), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(dir.join("pipeline.json").is_file() && dir.join("pipeline.svg").is_file());
    let (ok, _) = cli(&["scenario", "run", "pipeline", "--modes", "fast", "--quiet", "--out", &out]);
    assert!(ok.expect_err("bad mode").to_string().contains("--modes"));
}

#[test]
fn a_cancelled_run_stops_early_with_cancelled() {
    // A minute of work per mode, unless cancelled.
    let text = GOOD.replace("iterations = 3", "duration = \"60s\"");
    let s = broker_scenario::parse(&text, "t.toml", None).expect("valid");
    let opts = RunOptions::default();
    let cancel = opts.cancel.clone();
    let progress = std::sync::Arc::new(CollectProgress::new());
    let p = std::sync::Arc::clone(&progress);
    let run = std::thread::spawn(move || broker_scenario::run(&s, &opts, p.as_ref()));
    // Cancel once the run is under way (its first progress event is the start).
    while progress.lines().is_empty() {
        std::thread::yield_now();
    }
    cancel.cancel();
    let outcome = broker_tests::watchdog(60, move || run.join().expect("no panic"));
    assert!(matches!(outcome, Err(broker_scenario::RunError::Cancelled)), "{outcome:?}");
}

#[test]
fn a_module_can_be_a_wasm_file_next_to_the_scenario() {
    // A scenario directory of its own: the .toml and the app's .wasm side by side.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("app.wasm"), broker_guests::SCENARIO_PIPELINE_WASM).expect("wasm");
    let text = GOOD.replace("guest = \"scenario_pipeline\"", "path = \"app.wasm\"");
    std::fs::write(dir.join("s.toml"), &text).expect("toml");
    let path = dir.join("s.toml");
    let s = broker_scenario::load(path.to_str().expect("utf-8 path")).expect("validates");
    assert_eq!(s.modules[0].source, broker_scenario::spec::ModuleSource::File(dir.join("app.wasm")));
    let report = broker_scenario::run(
        &s,
        &RunOptions { modes: Some(vec![Mode::Shared]), ..RunOptions::default() },
        &NoProgress,
    )
    .expect("runs");
    assert_eq!(report.runs[0].phases[0].actors[0].ops, 3);
    assert!(report.ok());
    // A path that is not there is refused at validation, naming the field.
    std::fs::remove_file(dir.join("app.wasm")).expect("remove");
    let e = broker_scenario::load(path.to_str().expect("utf-8 path")).expect_err("missing file");
    assert!(e.to_string().contains("module[0].path"), "{e}");
}

#[test]
fn scenario_files_can_name_every_scenario_guest_and_only_guests_of_this_build() {
    let scenario_guests: Vec<&str> =
        broker_guests::ALL.iter().map(|(n, _)| *n).filter(|n| n.starts_with("scenario_")).collect();
    assert!(scenario_guests.len() >= 4, "{scenario_guests:?}");
    for name in &scenario_guests {
        assert!(broker_scenario::guest(name).is_some(), "{name} is not in broker_scenario::GUESTS");
    }
    for (name, bytes) in broker_scenario::GUESTS {
        let (_, path) = broker_guests::ALL.iter().find(|(n, _)| n == name).expect("a guest of this build");
        assert_eq!(*bytes, std::fs::read(path).expect("built").as_slice(), "{name}'s embedded bytes");
    }
    assert!(broker_scenario::guest("malicious_app").is_none(), "hostile test guests are not embedded");
}

/// Issue 19: a scenario across nodes refuses a shared replicated region and a grant of a node-local
/// region to an instance on another node; the built-in cross-node pipeline runs its three apps on three
/// brokers joined through a real nats-server, and the consumer's checksum is the host's in both modes.
#[test]
fn cross_node_scenarios_check_placement_and_run_on_three_brokers() {
    let nodes = GOOD.replacen("name = \"t\"", "name = \"t\"\nnodes = [\"x\", \"y\"]", 1);
    let shared =
        nodes.replacen("size = \"4KiB\"", "size = \"4KiB\"\nmode = \"shared\"\nreplication = \"cluster\"", 1);
    let e = parse_err(&shared);
    assert!(e.to_string().contains("region[0].replication") && e.to_string().contains("node-local"), "{e}");
    let apart = nodes.replacen("size = \"4KiB\"", "size = \"4KiB\"\nnode = \"x\"", 1).replacen(
        "module = \"m\"",
        "module = \"m\"\nnode = \"y\"",
        1,
    ) + "[[grant]]\nregion = \"a/stage1\"\nto = \"a/i\"\nrights = [\"read\"]\n";
    let e = parse_err(&apart);
    assert!(e.to_string().contains("grant[0].to") && e.to_string().contains("not replicated"), "{e}");
    let replicated = apart.replacen("node = \"x\"", "node = \"x\"\nreplication = \"cluster\"", 1);
    broker_scenario::parse(&replicated, "ok.toml", None)
        .expect("a replicated region may be granted anywhere");

    let nats = crate::nats::Nats::start();
    let s = broker_scenario::load("cross-node").expect("built-in scenario validates");
    assert_eq!(s.nodes, ["edge-a", "core", "edge-b"]);
    let report = broker_scenario::run(
        &s,
        &RunOptions { scale: SCALE, nats: Some(nats.url.clone()), ..RunOptions::default() },
        &NoProgress,
    )
    .expect("scenario runs");
    assert_eq!(report.runs.iter().map(|r| r.mode.as_str()).collect::<Vec<_>>(), ["handle", "mirror"]);
    for mode in ["handle", "mirror"] {
        let p = phase(&report, mode, "stream");
        assert!(p.actors[0].ops > 0 && p.actors[0].errors == 0, "{mode}: {:?}", p.actors[0]);
        let (value, outcome) = check_value(p, "checksum");
        assert_eq!(outcome, CheckOutcome::Pass, "{mode}: checksum {value:?}");
    }
}
