//! The bench's results: every [`Cell`], the recommendation per (size, pattern, readers), and the
//! machine they were measured on; rendered as a terminal table, a JSON file with the same figures and
//! one SVG chart per pattern.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::{bar_chart_svg, format_count, format_ns, Series, Table};
use broker::mode::Mode;

use super::config::{format_size, BenchConfig, Pattern};
use super::model::{Cell, Machine, Settings, Subject};
use super::recommend::{recommend, Recommendation};
use super::BenchError;

/// A bench run's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What it measured.
    pub settings: Settings,
    /// Every cell, natives included, in the order measured.
    pub cells: Vec<Cell>,
    /// One per (size, pattern, readers), in matrix order.
    pub recommendations: Vec<Recommendation>,
}

/// Paths a report was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The JSON file.
    pub json: PathBuf,
    /// One SVG chart per pattern.
    pub charts: Vec<PathBuf>,
}

impl Report {
    /// Fills in the ratios to native and derives the recommendations.
    pub(super) fn new(machine: Machine, config: &BenchConfig, mut cells: Vec<Cell>) -> Report {
        // Matrix order: size, pattern, readers as configured, then native and the modes in ABI order.
        let position = |c: &Cell| {
            let index = |found: Option<usize>| found.unwrap_or(usize::MAX);
            (
                index(config.sizes.iter().position(|s| *s == c.size)),
                index(config.patterns.iter().position(|p| *p == c.pattern)),
                index(config.readers.iter().position(|r| *r == c.readers)),
                match c.subject {
                    Subject::Native => 0,
                    Subject::Mode(m) => 1 + index(Mode::ALL.iter().position(|x| *x == m)),
                },
            )
        };
        cells.sort_by_key(position);
        let natives: Vec<(u64, Pattern, usize, f64)> = cells
            .iter()
            .filter(|c| c.subject == Subject::Native)
            .map(|c| (c.size, c.pattern, c.readers, c.ns_per_op))
            .collect();
        for cell in cells.iter_mut().filter(|c| c.subject != Subject::Native) {
            let native = natives.iter().find(|(s, p, r, _)| cell.is(*s, *p, *r));
            cell.ratio_to_native = native.map(|(.., ns)| cell.ns_per_op / ns.max(1e-3));
        }
        let mut recommendations = Vec::new();
        for &size in &config.sizes {
            for &pattern in &config.patterns {
                for &readers in &config.readers {
                    let key: Vec<&Cell> = cells.iter().filter(|c| c.is(size, pattern, readers)).collect();
                    recommendations.extend(recommend(&key));
                }
            }
        }
        let settings = Settings {
            modes: config.modes.iter().map(ToString::to_string).collect(),
            sizes: config.sizes.clone(),
            patterns: config.patterns.iter().map(ToString::to_string).collect(),
            readers: config.readers.clone(),
            cell_ms: config.cell.as_millis(),
            conflict_policy: "merge",
        };
        Report { machine, settings, cells, recommendations }
    }

    /// The cell of `subject` at (size, pattern, readers), if measured.
    pub fn cell(&self, subject: Subject, size: u64, pattern: Pattern, readers: usize) -> Option<&Cell> {
        self.cells.iter().find(|c| c.subject == subject && c.is(size, pattern, readers))
    }

    /// The figures as a table, followed by the recommendations.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "size",
            "pattern",
            "readers",
            "mode",
            "ops/s",
            "MB/s",
            "per op",
            "x native",
            "conflicts",
        ]);
        for c in &self.cells {
            t.row(vec![
                c.size_label.clone(),
                c.pattern.to_string(),
                c.readers.to_string(),
                c.subject.to_string(),
                format_count(c.ops_per_sec),
                format!("{:.1}", c.mb_per_sec),
                format_ns(c.ns_per_op),
                c.ratio_to_native.map_or_else(|| "1.0x".to_owned(), |r| format!("{r:.1}x")),
                if c.commits + c.conflicts > 0 {
                    format!("{}/{}", c.conflicts, c.commits + c.conflicts)
                } else {
                    String::new()
                },
            ]);
        }
        let mut r = Table::new(&["size", "pattern", "readers", "use", "why"]);
        for rec in &self.recommendations {
            r.row(vec![
                format_size(rec.size),
                rec.pattern.to_string(),
                rec.readers.to_string(),
                rec.mode.to_string(),
                rec.reason.clone(),
            ]);
        }
        format!(
            "{}\nRecommendations (the most isolated mode within {}x of the fastest):\n{}",
            t.render(),
            super::recommend::ISOLATION_SLACK,
            r.render()
        )
    }

    /// Writes `bench.json` and one `bench-<pattern>.svg` per pattern into `dir` (created if missing).
    ///
    /// # Errors
    /// [`BenchError::Io`], [`BenchError::Chart`].
    pub fn write(&self, dir: &Path) -> Result<Written, BenchError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BenchError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json = dir.join("bench.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| BenchError::Json(e.to_string()))?;
        std::fs::write(&json, text + "\n").map_err(io(&json))?;
        let mut charts = Vec::new();
        let mut patterns: Vec<Pattern> = self.cells.iter().map(|c| c.pattern).collect();
        patterns.sort();
        patterns.dedup();
        for pattern in patterns {
            let path = dir.join(format!("bench-{pattern}.svg"));
            self.chart(pattern, &path)?;
            charts.push(path);
        }
        Ok(Written { json, charts })
    }

    /// One group per (size, readers), one bar per subject: nanoseconds per 8-byte word, log scale.
    fn chart(&self, pattern: Pattern, path: &Path) -> Result<(), BenchError> {
        let mut keys: Vec<(u64, usize)> = Vec::new();
        let mut subjects: Vec<Subject> = Vec::new();
        for c in self.cells.iter().filter(|c| c.pattern == pattern) {
            if !keys.contains(&(c.size, c.readers)) {
                keys.push((c.size, c.readers));
            }
            if !subjects.contains(&c.subject) {
                subjects.push(c.subject);
            }
        }
        // Native first, so the baseline is the leftmost bar of every group.
        subjects.sort_by_key(|s| *s != Subject::Native);
        let groups: Vec<String> = keys.iter().map(|(s, r)| format!("{} r{r}", format_size(*s))).collect();
        let series: Vec<Series> = subjects
            .iter()
            .map(|&subject| Series {
                name: subject.to_string(),
                values: keys
                    .iter()
                    .map(|&(s, r)| self.cell(subject, s, pattern, r).map_or(f64::NAN, Cell::ns_per_word))
                    .collect(),
            })
            .collect();
        let title = format!("{pattern}: ns per 8-byte word touched (lower is better)");
        bar_chart_svg(path, &title, "ns per 8-byte word (log)", &groups, &series, true)?;
        Ok(())
    }
}
