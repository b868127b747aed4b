//! What a scenario run reports: per mode, per phase and per actor the figures the scenario asked for,
//! the tallies (e.g. attacks refused) and the outcome of every check, and for an actor that runs in
//! several phases (a victim alone, then under attack) its throughput and p99 latency in each relative to
//! the first; rendered as a terminal table, a JSON file and an SVG chart comparing the modes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::{
    bar_chart_svg, format_bytes, format_count, format_ns, ChartError, LatencySummary, Series, Table,
};

/// The report of one scenario, every mode it ran.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub scenario: String,
    /// What it models.
    pub description: String,
    /// The figures the scenario asked for (see `spec::Figure`).
    pub figures: Vec<String>,
    /// The scale factor the run used.
    pub scale: f64,
    /// Cores of the machine.
    pub cores: usize,
    /// Worker threads of each run's broker.
    pub workers: usize,
    /// Per mode, every actor that ran in several phases, compared across them.
    pub across_phases: Vec<AcrossPhases>,
    /// One run per mode.
    pub runs: Vec<ModeRun>,
}

/// One actor that ran in several phases of one mode's run (the same name in each), with its figures
/// in each phase relative to the first: measured in one run, the ratios are steadier than the figures.
#[derive(Debug, Clone, Serialize)]
pub struct AcrossPhases {
    /// The mode of the run.
    pub mode: String,
    /// The actor's name.
    pub actor: String,
    /// Its figures in each phase it ran in, in phase order.
    pub phases: Vec<PhaseFigures>,
}

/// An actor's figures in one phase, and their ratio to its first phase's.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    /// The phase's name.
    pub phase: String,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// p99 latency in nanoseconds (`None`: no operation completed).
    pub p99_ns: Option<u64>,
    /// `ops_per_sec` over the first phase's (`None` where that made no operation).
    pub ops_ratio: Option<f64>,
    /// `p99_ns` over the first phase's (`None` where either has no latency).
    pub p99_ratio: Option<f64>,
}

/// For every run, the actors that ran in several of its phases: their ops/s and p99 in each phase,
/// relative to the first phase they ran in.
pub fn compare_phases(runs: &[ModeRun]) -> Vec<AcrossPhases> {
    let mut out = Vec::new();
    for run in runs {
        let mut names: Vec<&str> = Vec::new();
        for a in run.phases.iter().flat_map(|p| &p.actors) {
            if !names.contains(&a.name.as_str()) {
                names.push(&a.name);
            }
        }
        for name in names {
            let found: Vec<(&str, &ActorReport)> = run
                .phases
                .iter()
                .filter_map(|p| p.actors.iter().find(|a| a.name == name).map(|a| (p.name.as_str(), a)))
                .collect();
            let Some(&(_, first)) = found.first().filter(|_| found.len() > 1) else { continue };
            let p99 = |a: &ActorReport| (a.latency.count > 0).then_some(a.latency.p99_ns);
            #[allow(clippy::cast_precision_loss, reason = "a ratio for people")]
            let phases = found
                .iter()
                .map(|(phase, a)| PhaseFigures {
                    phase: (*phase).to_owned(),
                    ops_per_sec: a.ops_per_sec,
                    p99_ns: p99(a),
                    ops_ratio: (first.ops_per_sec > 0.0).then(|| a.ops_per_sec / first.ops_per_sec),
                    p99_ratio: match (p99(a), p99(first)) {
                        (Some(v), Some(base)) if base > 0 => Some(v as f64 / base as f64),
                        _ => None,
                    },
                })
                .collect();
            out.push(AcrossPhases { mode: run.mode.clone(), actor: name.to_owned(), phases });
        }
    }
    out
}

/// One mode's run.
#[derive(Debug, Clone, Serialize)]
pub struct ModeRun {
    /// The mode of the `auto` regions.
    pub mode: String,
    /// The phases, in order.
    pub phases: Vec<PhaseReport>,
    /// Peak resident memory of the process during this run (`None` where the kernel cannot reset it).
    pub peak_rss_bytes: Option<u64>,
    /// Wall time of the run, setup included.
    pub seconds: f64,
}

/// One phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// The phase's name.
    pub name: String,
    /// Its actors' figures.
    pub actors: Vec<ActorReport>,
    /// Sums of step results by tally name.
    pub tallies: BTreeMap<String, i64>,
    /// Its checks.
    pub checks: Vec<CheckReport>,
}

/// One actor's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ActorReport {
    /// The actor's name.
    pub name: String,
    /// Operations completed.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// How long it ran.
    pub seconds: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Megabytes (10^6 bytes) per second, where the actor declares bytes per operation.
    pub mb_per_sec: Option<f64>,
    /// Latency percentiles.
    pub latency: LatencySummary,
    /// What the latency measures.
    pub latency_kind: String,
    /// Bytes copied across the sandbox boundary per operation, by the observed instances.
    pub bytes_copied_per_op: f64,
    /// Host calls per operation, by the observed instances.
    pub host_calls_per_op: f64,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    /// The value is what was expected.
    Pass,
    /// It is not, or it could not be read.
    Fail,
    /// Its precondition did not hold (see the detail).
    Skipped,
    /// Reported without an expectation.
    Reported,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// What it checks.
    pub name: String,
    /// The value found.
    pub value: Option<i64>,
    /// The value expected.
    pub expected: Option<String>,
    /// The outcome.
    pub outcome: CheckOutcome,
    /// Why it failed or was skipped.
    pub detail: String,
}

impl ScenarioReport {
    /// Whether every check passed (or was skipped or reported) and no operation failed.
    pub fn ok(&self) -> bool {
        self.runs.iter().flat_map(|r| &r.phases).all(|p| {
            p.checks.iter().all(|c| c.outcome != CheckOutcome::Fail) && p.actors.iter().all(|a| a.errors == 0)
        })
    }

    fn shows(&self, figure: &str) -> bool {
        self.figures.iter().any(|f| f == figure)
    }

    /// The terminal table: one row per mode and actor, then tallies and checks.
    pub fn render(&self) -> String {
        let mut headers = vec!["mode", "phase/actor", "ops", "errors"];
        let wanted = [
            ("ops_per_sec", &["ops/s"][..]),
            ("mb_per_sec", &["MB/s"][..]),
            ("latency", &["p50", "p99", "p999"][..]),
            ("bytes_copied_per_op", &["copied B/op"][..]),
            ("host_calls_per_op", &["host calls/op"][..]),
            ("peak_rss", &["peak RSS"][..]),
        ];
        for (figure, cols) in wanted {
            if self.shows(figure) {
                headers.extend_from_slice(cols);
            }
        }
        let mut table = Table::new(&headers);
        for run in &self.runs {
            for phase in &run.phases {
                for a in &phase.actors {
                    let mut row =
                        vec![run.mode.clone(), format!("{}/{}", phase.name, a.name), a.ops.to_string()];
                    row.push(a.errors.to_string());
                    if self.shows("ops_per_sec") {
                        row.push(format_count(a.ops_per_sec));
                    }
                    if self.shows("mb_per_sec") {
                        row.push(a.mb_per_sec.map_or_else(|| "-".into(), |m| format!("{m:.1}")));
                    }
                    if self.shows("latency") {
                        for ns in [a.latency.p50_ns, a.latency.p99_ns, a.latency.p999_ns] {
                            row.push(if a.latency.count == 0 { "-".into() } else { format_ns(ns as f64) });
                        }
                    }
                    if self.shows("bytes_copied_per_op") {
                        row.push(format_bytes(a.bytes_copied_per_op));
                    }
                    if self.shows("host_calls_per_op") {
                        row.push(format!("{:.1}", a.host_calls_per_op));
                    }
                    if self.shows("peak_rss") {
                        row.push(run.peak_rss_bytes.map_or_else(|| "-".into(), |b| format_bytes(b as f64)));
                    }
                    table.row(row);
                }
            }
        }
        let mut out = format!(
            "scenario {} (scale {}, {} cores, {} workers)\n",
            self.scenario, self.scale, self.cores, self.workers
        );
        out.push_str(&table.render());
        out.push_str(&self.render_across_modes());
        out.push_str(&self.render_across_phases());
        for run in &self.runs {
            for phase in &run.phases {
                for a in phase.actors.iter().filter(|a| a.latency_kind != "per operation") {
                    let _ = writeln!(
                        out,
                        "  {} {}/{}: latency is {}",
                        run.mode, phase.name, a.name, a.latency_kind
                    );
                }
                for (name, value) in &phase.tallies {
                    let _ = writeln!(out, "  {} {}: {name} = {value}", run.mode, phase.name);
                }
                for a in phase.actors.iter().filter(|a| a.errors > 0) {
                    let _ = writeln!(
                        out,
                        "  {} {}/{}: {} errors, first: {}",
                        run.mode,
                        phase.name,
                        a.name,
                        a.errors,
                        a.first_error.as_deref().unwrap_or("?")
                    );
                }
                for c in &phase.checks {
                    let mark = match c.outcome {
                        CheckOutcome::Pass => "ok  ",
                        CheckOutcome::Fail => "FAIL",
                        CheckOutcome::Skipped => "skip",
                        CheckOutcome::Reported => "    ",
                    };
                    let value = c.value.map_or_else(|| "-".into(), |v| v.to_string());
                    let expected =
                        c.expected.as_ref().map_or_else(String::new, |e| format!(" (expected {e})"));
                    let detail = if c.detail.is_empty() { String::new() } else { format!(" - {}", c.detail) };
                    let _ = writeln!(
                        out,
                        "  {mark} {} {}: {}: {value}{expected}{detail}",
                        run.mode, phase.name, c.name
                    );
                }
            }
        }
        out
    }

    /// For each phase/actor run in several modes: ops/s per mode relative to the fastest, the ratio an
    /// operator weighs against each mode's isolation.
    fn render_across_modes(&self) -> String {
        if self.runs.len() < 2 {
            return String::new();
        }
        let mut out = String::new();
        let Some(first) = self.runs.first() else { return out };
        for phase in &first.phases {
            for actor in &phase.actors {
                let per_mode: Vec<(&str, f64)> = self
                    .runs
                    .iter()
                    .filter_map(|r| {
                        let p = r.phases.iter().find(|p| p.name == phase.name)?;
                        p.actors
                            .iter()
                            .find(|a| a.name == actor.name)
                            .map(|a| (r.mode.as_str(), a.ops_per_sec))
                    })
                    .collect();
                let best = per_mode.iter().map(|(_, v)| *v).fold(0.0, f64::max);
                if best <= 0.0 {
                    continue;
                }
                let parts: Vec<String> =
                    per_mode.iter().map(|(m, v)| format!("{m} {:.2}x", v / best)).collect();
                let _ = writeln!(
                    out,
                    "  {}/{}: ops/s relative to the fastest mode: {}",
                    phase.name,
                    actor.name,
                    parts.join(", ")
                );
            }
        }
        out
    }

    /// For an actor that runs in several phases (a victim alone, then under attack): its ops/s and, where
    /// the report shows latency, its p99 in each, relative to the first.
    fn render_across_phases(&self) -> String {
        let mut out = String::new();
        let ratio = |r: Option<f64>| r.map_or_else(String::new, |r| format!(" ({r:.2}x)"));
        for a in &self.across_phases {
            let ops: Vec<String> = a
                .phases
                .iter()
                .map(|p| format!("{} {}{}", p.phase, format_count(p.ops_per_sec), ratio(p.ops_ratio)))
                .collect();
            let _ = writeln!(out, "  {} {}: ops/s by phase: {}", a.mode, a.actor, ops.join(", "));
            if self.shows("latency") && a.phases.iter().all(|p| p.p99_ns.is_some()) {
                #[allow(clippy::cast_precision_loss, reason = "figures for people")]
                let p99: Vec<String> = a
                    .phases
                    .iter()
                    .map(|p| {
                        let ns = p.p99_ns.unwrap_or(0) as f64;
                        format!("{} {}{}", p.phase, format_ns(ns), ratio(p.p99_ratio))
                    })
                    .collect();
                let _ = writeln!(out, "  {} {}: p99 by phase: {}", a.mode, a.actor, p99.join(", "));
            }
        }
        out
    }

    /// Writes `<dir>/<scenario>.json` and `<dir>/<scenario>.svg`; returns their paths.
    ///
    /// # Errors
    /// I/O errors, or the chart's.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{}.json", self.scenario));
        let text = serde_json::to_string_pretty(self).map_err(|e| ReportError::Json(e.to_string()))?;
        std::fs::write(&json, text)?;
        let svg = dir.join(format!("{}.svg", self.scenario));
        self.chart(&svg)?;
        Ok(vec![json, svg])
    }

    /// An SVG chart of ops/s per phase/actor, one bar per mode.
    ///
    /// # Errors
    /// The chart's errors.
    pub fn chart(&self, path: &Path) -> Result<(), ReportError> {
        let mut groups: Vec<String> = Vec::new();
        for run in &self.runs {
            for phase in &run.phases {
                for a in &phase.actors {
                    let g = format!("{}/{}", phase.name, a.name);
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
        let series: Vec<Series> = self
            .runs
            .iter()
            .map(|run| Series {
                name: run.mode.clone(),
                values: groups
                    .iter()
                    .map(|g| {
                        run.phases
                            .iter()
                            .flat_map(|p| p.actors.iter().map(move |a| (format!("{}/{}", p.name, a.name), a)))
                            .find(|(name, _)| name == g)
                            .map_or(0.0, |(_, a)| a.ops_per_sec)
                    })
                    .collect(),
            })
            .collect();
        let values: Vec<f64> =
            series.iter().flat_map(|s| s.values.iter().copied()).filter(|v| *v > 0.0).collect();
        let max = values.iter().copied().fold(0.0, f64::max);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let log_y = max > 0.0 && min.is_finite() && max / min > 50.0;
        let title = format!("{}: operations per second by mode", self.scenario);
        bar_chart_svg(path, &title, "ops/s", &groups, &series, log_y)?;
        Ok(())
    }
}

/// Writing a report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
    /// The JSON could not be produced.
    #[error("encoding the report: {0}")]
    Json(String),
    /// The chart could not be drawn.
    #[error("drawing the chart: {0}")]
    Chart(#[from] ChartError),
}
