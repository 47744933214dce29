//! SVG charts with labelled axes, ticks and a legend (plotters' SVG backend: text is written as SVG
//! `<text>`, so no system fonts are needed), the progress bar of the application examples
//! (indicatif: drawn on stderr, hidden when stderr is not a terminal or under `--json`), and CSV
//! writing. Errors come back as `metagrad::Error::Invalid` naming the file.

use metagrad::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One line (or set of points) of a chart.
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// (x, y) points, in order of x for a line.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a label and points.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points }
    }

    /// y values against their index 0, 1, 2, ...
    pub fn indexed(label: impl Into<String>, ys: &[f64]) -> Series {
        Series::new(label, ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect())
    }
}

/// What a chart draws: lines through the points, or the points alone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Lines through each series' points.
    Line,
    /// A dot at each point, with its series' label as the legend.
    Points,
}

/// One panel: title, axis labels and series.
pub struct Panel<'a> {
    /// The title above the panel.
    pub title: &'a str,
    /// The x axis label (with units).
    pub x_label: &'a str,
    /// The y axis label (with units).
    pub y_label: &'a str,
    /// The series drawn.
    pub series: Vec<Series>,
    /// Lines or points.
    pub mark: Mark,
    /// Text labels placed beside single points (for a scatter of named configurations).
    pub annotations: Vec<(f64, f64, String)>,
}

impl<'a> Panel<'a> {
    /// A line panel.
    pub fn lines(title: &'a str, x_label: &'a str, y_label: &'a str, series: Vec<Series>) -> Panel<'a> {
        Panel { title, x_label, y_label, series, mark: Mark::Line, annotations: Vec::new() }
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid { op: "plot", msg: format!("{}: {e}", path.display()) }
}

/// The range of `v` padded by `frac` of it on each side (a unit range around a constant).
fn padded(v: impl Iterator<Item = f64>, frac: f64) -> (f64, f64) {
    let (lo, hi) = v.filter(|x| x.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { frac * (hi - lo) } else { 0.5 * lo.abs().max(1.0) };
    (lo - pad, hi + pad)
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x33, 0x66, 0xcc),
    RGBColor(0xcc, 0x33, 0x33),
    RGBColor(0x33, 0x99, 0x44),
    RGBColor(0x99, 0x66, 0x00),
    RGBColor(0x88, 0x44, 0xaa),
    RGBColor(0x66, 0x66, 0x66),
];

/// A tick label: integers without decimals, else three significant decimals.
fn tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Writes the panels side by side, each 560×400 pixels, as one SVG file.
pub fn svg(path: &Path, panels: &[Panel<'_>]) -> Result<()> {
    let width = 560 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| io_err(path, e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, p) in areas.iter().zip(panels) {
        // Room on the right for the annotations beside points.
        let x_pad = if p.annotations.is_empty() { 0.05 } else { 0.15 };
        let (x0, x1) = padded(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0)), x_pad);
        let (y0, y1) = padded(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)), 0.05);
        // And room at the top for the legend, so it covers no point.
        let legend = p.series.len() > 1 || p.mark == Mark::Points;
        let y1 = if legend { y1 + 0.08 * p.series.len() as f64 * (y1 - y0) } else { y1 };
        let mut chart = ChartBuilder::on(area)
            .caption(p.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| io_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(p.x_label)
            .y_desc(p.y_label)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| io_err(path, e))?;
        for (i, s) in p.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let drawn = match p.mark {
                Mark::Line => chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2))),
                Mark::Points => chart.draw_series(s.points.iter().map(|&q| Circle::new(q, 4, c.filled()))),
            }
            .map_err(|e| io_err(path, e))?;
            drawn.label(s.label.as_str()).legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], c.filled()));
        }
        chart
            .draw_series(p.annotations.iter().map(|(x, y, t)| Text::new(t.clone(), (*x, *y), ("sans-serif", 11))))
            .map_err(|e| io_err(path, e))?;
        if legend {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| io_err(path, e))?;
        }
    }
    root.present().map_err(|e| io_err(path, e))
}

/// Writes a CSV file: a header line and one line per row.
pub fn csv(path: &Path, header: &str, rows: impl IntoIterator<Item = String>) -> Result<()> {
    let mut s = String::from(header);
    s.push('\n');
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| io_err(path, e))
}

/// Creates the output directory.
pub fn out_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| io_err(path, e))
}

/// A progress bar over `len` units on stderr; hidden when `hidden` (the `--json` mode) or when stderr
/// is not a terminal (indicatif's own check), so logs get only the finished lines.
pub fn progress(len: u64, what: &str, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})") {
        bar.set_style(style.progress_chars("#>."));
    }
    bar.set_prefix(what.to_string());
    bar
}
