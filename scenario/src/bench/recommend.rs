//! The rule that turns a (size, pattern, readers) row of measurements into a recommended mode, with a
//! one-sentence reason quoting the measured ratios.
//!
//! The modes trade speed for isolation, most isolated first: handle (every access is a checked,
//! revocable host call; the app holds no copy), mirror (the app works on a private copy; commits are
//! checked; no mapping is exposed, but each reader costs a region-sized copy plus the broker's shadow),
//! shared (the pages are mapped into every app: fastest, but any writer can corrupt what readers see).
//! The rule: **recommend the most isolated mode whose time per op is within [`ISOLATION_SLACK`] of the
//! fastest mode's**, where mirror also needs no more than [`CONFLICT_LIMIT`] of its commits refused.
//! So shared is picked only when both others are more than twice as slow (or mirror conflicts). The
//! rule assumes the access is on the app's hot path; an app touching a region rarely can afford handle
//! mode whatever the ratio.

use serde::Serialize;

use broker::mode::Mode;

use super::config::{format_size, Pattern};
use super::model::{display, Cell, Subject};
use crate::metrics::format_ns;

/// How much slower than the fastest mode a more isolated mode may be and still be recommended.
pub const ISOLATION_SLACK: f64 = 2.0;

/// The share of mirror commits that may be refused for conflicts before mirror is ruled out.
pub const CONFLICT_LIMIT: f64 = 0.10;

/// The mode recommended for one (size, pattern, readers) and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// Region size in bytes.
    pub size: u64,
    /// Access pattern.
    #[serde(serialize_with = "display")]
    pub pattern: Pattern,
    /// Concurrent readers.
    pub readers: usize,
    /// The recommended mode.
    #[serde(serialize_with = "display")]
    pub mode: Mode,
    /// One sentence, quoting the measured ratios.
    pub reason: String,
}

fn conflict_rate(c: &Cell) -> f64 {
    let attempts = c.commits + c.conflicts;
    if attempts == 0 {
        0.0
    } else {
        // Counts of a bench cell are far below 2^53: the conversion is exact.
        c.conflicts as f64 / attempts as f64
    }
}

/// `12.0x native`, or the time per op when no native cell was measured.
fn cost(c: &Cell) -> String {
    c.ratio_to_native.map_or_else(|| format!("{}/op", format_ns(c.ns_per_op)), |r| format!("{r:.1}x native"))
}

/// `12.0x`, or the time per op when no native cell was measured.
fn short_cost(c: &Cell) -> String {
    c.ratio_to_native.map_or_else(|| format!("{}/op", format_ns(c.ns_per_op)), |r| format!("{r:.1}x"))
}

/// 0 for the most isolated mode (handle), 2 for the least (shared): `Mode::ALL` is in that order.
fn isolation_rank(m: Mode) -> usize {
    Mode::ALL.iter().position(|x| *x == m).unwrap_or(usize::MAX)
}

fn mode_of(c: &Cell) -> Option<Mode> {
    match c.subject {
        Subject::Mode(m) => Some(m),
        Subject::Native => None,
    }
}

/// Applies the rule to the cells of one (size, pattern, readers); `None` if no mode was measured.
pub(super) fn recommend(cells: &[&Cell]) -> Option<Recommendation> {
    let modes: Vec<&Cell> = cells.iter().copied().filter(|c| mode_of(c).is_some()).collect();
    let fastest = *modes.iter().min_by(|a, b| a.ns_per_op.total_cmp(&b.ns_per_op))?;
    let slow = |c: &Cell| c.ns_per_op > ISOLATION_SLACK * fastest.ns_per_op;
    let conflicted = |c: &Cell| conflict_rate(c) > CONFLICT_LIMIT;
    let by_isolation: Vec<&Cell> =
        Mode::ALL.iter().filter_map(|m| modes.iter().copied().find(|c| mode_of(c) == Some(*m))).collect();
    let pick = by_isolation.iter().copied().find(|c| !slow(c) && !conflicted(c)).unwrap_or(fastest);
    let mode = mode_of(pick)?;

    // The other modes' costs, and why the more isolated ones lost.
    let others: Vec<String> = by_isolation
        .iter()
        .filter(|c| !std::ptr::eq(**c, pick))
        .map(|c| {
            let more_isolated = mode_of(c).map(isolation_rank) < Some(isolation_rank(mode));
            let lost = if !more_isolated {
                String::new()
            } else if conflicted(c) {
                format!(" ({} of {} commits conflicted)", c.conflicts, c.commits + c.conflicts)
            } else if slow(c) {
                format!(" (over {ISOLATION_SLACK}x the fastest)")
            } else {
                String::new()
            };
            format!("{} {}{lost}", c.subject, short_cost(c))
        })
        .collect();
    let virtue = match mode {
        Mode::Handle => format!(
            "within {ISOLATION_SLACK}x of the fastest, so every access stays checked and revocable, with no copy in the app"
        ),
        Mode::Mirror => {
            let mut v = format!(
                "reads hit a private copy (2 x {} per reader with the broker's shadow), no mapping exposed",
                format_size(pick.size)
            );
            if pick.conflicts > 0 {
                v.push_str(&format!(", {} of {} commits conflicted", pick.conflicts, pick.commits + pick.conflicts));
            }
            v
        }
        Mode::Shared => "trades isolation: any writer can corrupt what readers see".to_owned(),
    };
    let mut reason = format!("{mode} {}", cost(pick));
    if !others.is_empty() {
        reason.push_str("; ");
        reason.push_str(&others.join(", "));
    }
    reason.push_str("; ");
    reason.push_str(&virtue);
    Some(Recommendation { size: pick.size, pattern: pick.pattern, readers: pick.readers, mode, reason })
}
