//! What a scenario run reports: per mode, per phase and per actor the figures the scenario asked for,
//! the tallies (e.g. attacks refused) and the outcome of every check; rendered as a terminal table, a
//! JSON file and an SVG chart comparing the modes.

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
    /// One run per mode.
    pub runs: Vec<ModeRun>,
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
        let mut out = format!("scenario {} (scale {}, {} cores)\n", self.scenario, self.scale, self.cores);
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

    /// For an actor that runs in several phases (the trusted group alone, then under attack): its ops/s
    /// in each, relative to the first.
    fn render_across_phases(&self) -> String {
        let mut out = String::new();
        for run in &self.runs {
            let mut names: Vec<&str> = Vec::new();
            for a in run.phases.iter().flat_map(|p| &p.actors) {
                if !names.contains(&a.name.as_str()) {
                    names.push(&a.name);
                }
            }
            for name in names {
                let per_phase: Vec<(&str, f64)> = run
                    .phases
                    .iter()
                    .filter_map(|p| {
                        p.actors.iter().find(|a| a.name == name).map(|a| (p.name.as_str(), a.ops_per_sec))
                    })
                    .collect();
                let Some(&(_, first)) = per_phase.first().filter(|_| per_phase.len() > 1) else {
                    continue;
                };
                let parts: Vec<String> = per_phase
                    .iter()
                    .map(|(phase, v)| {
                        let ratio = if first > 0.0 { format!(" ({:.2}x)", v / first) } else { String::new() };
                        format!("{phase} {}{ratio}", format_count(*v))
                    })
                    .collect();
                let _ = writeln!(out, "  {} {name}: ops/s by phase: {}", run.mode, parts.join(", "));
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
