//! Grouped bar charts as SVG, drawn with plotters' SVG backend alone.
//!
//! No font backend is compiled in: plotters then estimates text extents from the font size and the SVG
//! carries plain `<text>` elements that the viewer renders, so charts need no system fonts and render
//! the same on a fresh machine. Group labels are drawn horizontally, and the canvas widens with the
//! number of groups so they never overlap.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::prelude::*;

/// One series of a bar chart: one value per group, in the groups' order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `values[i]` is this series' bar in group `i`.
    pub values: Vec<f64>,
}

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// There is nothing to draw.
    #[error("a chart needs at least one group and one series")]
    Empty,
    /// A series has a value count different from the number of groups.
    #[error("series {series:?} has {values} values for {groups} groups")]
    LengthMismatch {
        /// The series' name.
        series: String,
        /// How many values it has.
        values: usize,
        /// How many groups there are.
        groups: usize,
    },
    /// Plotters failed to lay the chart out.
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    /// The SVG file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Grouped bar chart: one group per entry of `groups`, one bar per series in each group (`values[i]`
/// belongs to `groups[i]`). `log_y` uses a log10 axis (values <= 0 are drawn as missing); non-finite
/// values are always missing. Writes an SVG file to `path`.
///
/// # Errors
/// [`ChartError::Empty`], [`ChartError::LengthMismatch`], [`ChartError::Draw`], [`ChartError::Write`].
pub fn bar_chart_svg(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
    log_y: bool,
) -> Result<(), ChartError> {
    let svg = render_svg(title, y_label, groups, series, log_y)?;
    std::fs::write(path, svg).map_err(|source| ChartError::Write { path: path.to_owned(), source })
}

/// Renders the chart of [`bar_chart_svg`] into a string.
///
/// # Errors
/// As [`bar_chart_svg`], except [`ChartError::Write`].
pub(super) fn render_svg(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
    log_y: bool,
) -> Result<String, ChartError> {
    if groups.is_empty() || series.is_empty() {
        return Err(ChartError::Empty);
    }
    if let Some(s) = series.iter().find(|s| s.values.len() != groups.len()) {
        return Err(ChartError::LengthMismatch {
            series: s.name.clone(),
            values: s.values.len(),
            groups: groups.len(),
        });
    }
    let drawable = |v: f64| v.is_finite() && (!log_y || v > 0.0);
    let values = series.iter().flat_map(|s| s.values.iter().copied()).filter(|v| drawable(*v));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let layout = Layout::new(title, groups, series);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (layout.width, layout.height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let spec = Spec { title, y_label, groups, series, log_y };
        // Headroom above the tallest bar keeps the legend (upper right) clear of the bars.
        let legend = Layout::legend_fraction(series.len());
        if log_y {
            let (lo, hi) = if lo.is_finite() { (lo / 2.0, hi) } else { (1.0, 10.0) };
            let span = (hi / lo).log10().max(1.0);
            let hi = hi * 10f64.powf(span * legend / (1.0 - legend));
            draw(&root, &spec, (lo..hi).log_scale(), lo)?;
        } else {
            let hi = if hi.is_finite() && hi > 0.0 { hi / (1.0 - legend) } else { 1.0 };
            let lo = if lo.is_finite() { lo.min(0.0) * 1.1 } else { 0.0 };
            draw(&root, &spec, lo..hi, 0.0)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

fn draw_error<E: std::error::Error + Send + Sync>(
    e: plotters::drawing::DrawingAreaErrorKind<E>,
) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Canvas size: wide enough for every group's bars and its label side by side.
struct Layout {
    width: u32,
    height: u32,
}

/// Approximate width of a character of the 13 px label font, in pixels.
const CHAR_PX: usize = 7;

impl Layout {
    fn new(title: &str, groups: &[String], series: &[Series]) -> Layout {
        let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(0);
        let group_px = (series.len() * 14 + 24).max(longest * CHAR_PX + 16);
        // The 20 px title is about 11 px a character.
        let title_px = title.chars().count() * 11 + 40;
        let width = (groups.len() * group_px + 120).max(title_px).clamp(480, 20_000);
        Layout { width: u32::try_from(width).unwrap_or(20_000), height: 480 }
    }

    /// The share of the plot's height the legend needs: 20 px a series plus a frame, of about 380 px.
    fn legend_fraction(series: usize) -> f64 {
        (index_f64(series * 20 + 30) / 380.0).min(0.6)
    }
}

struct Spec<'a> {
    title: &'a str,
    y_label: &'a str,
    groups: &'a [String],
    series: &'a [Series],
    log_y: bool,
}

/// The x axis: `[0, groups)`, group `i` spanning `[i, i+1)`, with one key point (and so one label) at
/// each group's centre.
struct GroupAxis {
    groups: usize,
}

impl Ranged for GroupAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let width = f64::from(limit.1 - limit.0);
        let at = f64::from(limit.0) + width * value / index_f64(self.groups.max(1));
        // Pixel coordinates of a canvas at most 20,000 px wide: the rounded value fits an i32.
        at.round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.groups).map(|g| index_f64(g) + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..index_f64(self.groups)
    }
}

/// A y-axis tick: `0`, `250`, `12.5`, `45k`, `1.2M`, `3G`: SI suffixes beyond four digits with up to
/// two significant decimals, so neighbouring ticks (450k, 400k) never print the same label.
fn axis_number(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1e9 {
        format!("{}G", trim(format!("{:.2}", v / 1e9)))
    } else if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else if a < 0.01 {
        format!("{v:.1e}")
    } else {
        trim(format!("{v:.2}"))
    }
}

fn index_f64(i: usize) -> f64 {
    f64::from(u32::try_from(i).unwrap_or(u32::MAX))
}

fn draw<Y>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    spec: &Spec<'_>,
    y: Y,
    base: f64,
) -> Result<(), ChartError>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let n = spec.groups.len();
    let x = GroupAxis { groups: n };
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(draw_error)?;
    let label = |x: &f64| {
        // Labels sit at group centres (i + 0.5); anything else gets no label.
        let i = (*x - 0.5).round();
        if i >= 0.0 && (*x - 0.5 - i).abs() < 1e-6 {
            spec.groups.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&label)
        .x_label_style(("sans-serif", 13))
        .y_desc(spec.y_label)
        .y_label_formatter(&|v: &f64| axis_number(*v))
        .y_label_style(("sans-serif", 13))
        .draw()
        .map_err(draw_error)?;
    let count = spec.series.len();
    // Bars fill 80% of a group; 10% padding on each side separates groups.
    let slot = 0.8 / index_f64(count);
    for (s, series) in spec.series.iter().enumerate() {
        let color = Palette99::pick(s).to_rgba();
        let bars = series.values.iter().enumerate().filter_map(|(g, &v)| {
            let drawable = v.is_finite() && (!spec.log_y || v > 0.0);
            drawable.then(|| {
                let x0 = index_f64(g) + 0.1 + index_f64(s) * slot;
                Rectangle::new([(x0, base), (x0 + slot * 0.9, v)], color.filled())
            })
        });
        chart
            .draw_series(bars)
            .map_err(draw_error)?
            .label(series.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

#[cfg(test)]
mod axis_tests {
    use super::axis_number;

    #[test]
    fn neighbouring_ticks_get_different_labels() {
        let ticks = [350_000.0, 400_000.0, 450_000.0, 15_000.0, 20_000.0, 25_000.0, 1_250_000.0];
        let labels: Vec<String> = ticks.iter().map(|v| axis_number(*v)).collect();
        assert_eq!(labels, ["350k", "400k", "450k", "15k", "20k", "25k", "1.25M"]);
        assert_eq!(axis_number(0.0), "0");
        assert_eq!(axis_number(2500.0), "2500");
        assert_eq!(axis_number(12.5), "12.5");
        assert_eq!(axis_number(3e9), "3G");
    }
}
