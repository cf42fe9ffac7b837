//! Plots of a comparison or a capacity search (plotters): CDFs and time series, SVG by default or PNG.
//!
//! What every figure keeps to, so a reader trusts it at a glance:
//! - up to [`MAX_OVERLAID`] series share one chart, each with its own colour (a qualitative palette) and
//!   dash pattern, so no two lines look alike even printed in grey; past that, small multiples: one panel
//!   per series, drawn in colour over the others in light grey, on shared axes;
//! - ticks at round values only: 1, 2 and 5 x 10^k on a log axis, multiples of 1, 2 or 5 x 10^k on a linear
//!   one, integers on a count axis, printed with at most a few significant digits;
//! - a line at zero sits visibly above the x axis (the y range starts a little below zero);
//! - with several seeds, each line is the mean across seeds and a shaded band spans their minimum and
//!   maximum ([`quantile_band`], [`hold_band`]);
//! - every axis names its quantity and unit.
//!
//! Text needs a TrueType font. servesim looks for one at `SERVESIM_FONT`, then at common system paths
//! (DejaVu Sans, Liberation Sans, Noto Sans, Arial); without one, plots are skipped with a message and
//! the CSVs are still written.

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font once; returns the path used, or an explanation.
pub fn ensure_font() -> Result<&'static Path, String> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = std::env::var("SERVESIM_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps a 'static reference; the font lives for the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(PathBuf::from(p));
                }
            }
        }
        Err("no TrueType font found for plot text; set SERVESIM_FONT=/path/to/font.ttf".into())
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// The most series overlaid on one chart; more are drawn as small multiples.
pub const MAX_OVERLAID: usize = 8;

/// Matplotlib's `tab10` without its grey (kept for the other series in small multiples): distinct hues
/// that stay apart for the common forms of colour blindness in pairs of neighbours.
const PALETTE: [RGBColor; MAX_OVERLAID] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Dash patterns (dash, gap in pixels; `None` solid), cycled beside the colours.
const DASHES: [Option<(i32, i32)>; 4] = [None, Some((12, 6)), Some((3, 4)), Some((18, 5))];

const OTHER: RGBColor = RGBColor(200, 200, 200);

/// The colour and dash of series `i` on an overlaid chart.
pub fn style(i: usize) -> (RGBColor, Option<(i32, i32)>) {
    (PALETTE[i % PALETTE.len()], DASHES[i % DASHES.len()])
}

/// Points of a line, (x, y), in drawing order.
pub type Points = Vec<(f64, f64)>;

/// One named line, with a band around it where several seeds ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub line: Points,
    /// The band's two edges (lower, upper), each in drawing order; filled as one polygon.
    pub band: Option<(Points, Points)>,
}

impl Series {
    /// A line without a band.
    pub fn line(name: impl Into<String>, line: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            line,
            band: None,
        }
    }
}

/// A line chart of several series.
pub struct Chart<'a> {
    pub title: &'a str,
    /// A line under the title (what the lines and bands are); empty for none.
    pub note: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub series: &'a [Series],
    /// x on a log scale (latency CDFs span decades).
    pub log_x: bool,
    /// y counts things: integer ticks.
    pub integer_y: bool,
}

const SIZE: (u32, u32) = (900, 560);

/// The pixel size of `chart`: taller for small multiples.
fn size(chart: &Chart) -> (u32, u32) {
    let n = chart.series.len();
    if n <= MAX_OVERLAID {
        SIZE
    } else {
        let rows = n.div_ceil(GRID_COLUMNS) as u32;
        (SIZE.0, 90 + 240 * rows)
    }
}

const GRID_COLUMNS: usize = 3;

/// Draws `chart` to `path`.
pub fn lines(path: &Path, format: Format, chart: &Chart) -> Result<(), String> {
    ensure_font()?;
    match format {
        Format::Svg => draw(
            SVGBackend::new(path, size(chart)).into_drawing_area(),
            chart,
        ),
        Format::Png => draw(
            BitMapBackend::new(path, size(chart)).into_drawing_area(),
            chart,
        ),
    }
}

/// `chart` as an SVG document (for a page that inlines its figures).
pub fn lines_svg(chart: &Chart) -> Result<String, String> {
    ensure_font()?;
    let mut s = String::new();
    draw(
        SVGBackend::with_string(&mut s, size(chart)).into_drawing_area(),
        chart,
    )?;
    Ok(s)
}

/// The drawn ranges (x0, x1, y0, y1) of `series` with bands: log x keeps positive x only and pads a
/// little; y starts at zero or below and a little under its lowest value, so a line at zero clears the
/// axis.
fn bounds(series: &[Series], log_x: bool) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| {
        s.line
            .iter()
            .chain(s.band.iter().flat_map(|(lo, hi)| lo.iter().chain(hi)))
    });
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, f64::NEG_INFINITY);
    for &(x, y) in pts {
        if (log_x && x <= 0.0) || !x.is_finite() || !y.is_finite() {
            continue;
        }
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1) = (if log_x { 1e-3 } else { 0.0 }, 1.0);
    }
    if x1 <= x0 {
        x1 = if log_x { x0 * 10.0 } else { x0 + 1.0 };
    }
    if log_x {
        (x0, x1) = (x0 / 1.15, x1 * 1.15);
    }
    if !y1.is_finite() || y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let span = y1 - y0;
    (x0, x1, y0 - 0.03 * span, y1 + 0.05 * span)
}

/// Round ticks in `[lo, hi]`: multiples of a step of 1, 2 or 5 x 10^k, five to ten of them; with
/// `integer`, the step is at least 1. Each tick is `k * step` for an integer k, so none accumulates
/// rounding error.
pub fn linear_ticks(lo: f64, hi: f64, integer: bool) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    if !(raw > 0.0 && raw.is_finite()) {
        return vec![if integer { lo.round() } else { lo }];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw * 0.999)
        .unwrap_or(10.0 * mag);
    if integer {
        step = step.max(1.0).round();
    }
    let (k0, k1) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    if step.is_nan() || step <= 0.0 || k1.saturating_sub(k0) > 100 {
        // A span too small for f64 to step through (about 1e-300): no ticks rather than billions.
        return Vec::new();
    }
    (k0..=k1).map(|k| k as f64 * step).collect()
}

/// Round ticks in `[lo, hi]` (positive) for a log axis: 1, 2 and 5 x 10^k, or only the powers of ten where
/// those would be more than ten, or linear round ticks where the range is under a decade's few.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let pow = |e: i32| {
        if e < 0 {
            1.0 / 10f64.powi(-e)
        } else {
            10f64.powi(e)
        }
    };
    let decade = |ms: &[f64]| -> Vec<f64> {
        let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (e0..=e1)
            .flat_map(|e| ms.iter().map(move |m| m * pow(e)))
            .filter(|&v| v >= lo && v <= hi)
            .collect()
    };
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return vec![];
    }
    let mut t = decade(&[1.0, 2.0, 5.0]);
    if t.len() > 10 {
        t = decade(&[1.0]);
    }
    if t.len() > 10 {
        // Past ten decades, every k-th power of ten.
        let k = t.len().div_ceil(10);
        t = t.into_iter().step_by(k).collect();
    }
    if t.len() < 3 {
        t = linear_ticks(lo, hi, false)
            .into_iter()
            .filter(|&v| v > 0.0)
            .collect();
    }
    t
}

/// An axis with ticks at the given values only (plotters' own choice puts log ticks at values such as
/// 0.23000000000000001 and lets labels overlap); labels come from the mesh's formatter ([`tick_label`] at
/// [`tick_decimals`]).
struct Ticked<R> {
    inner: R,
    ticks: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold mesh lines at the ticks; no light ones between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> std::ops::Range<i32> {
        self.inner.axis_pixel_range(limit)
    }
}

/// A linear axis over `lo..hi` ticked at `ticks`.
fn linear_axis(lo: f64, hi: f64, ticks: Vec<f64>) -> Ticked<RangedCoordf64> {
    Ticked {
        inner: (lo..hi).into(),
        ticks,
    }
}

/// A log axis over `lo..hi` (positive) ticked at `ticks` ([`log_ticks`]).
fn log_axis(lo: f64, hi: f64, ticks: Vec<f64>) -> Ticked<LogCoord<f64>> {
    Ticked {
        inner: (lo..hi).log_scale().into(),
        ticks,
    }
}

/// The decimals an axis's labels need to tell its ticks apart: those of the smallest gap between
/// neighbouring ticks (0.5 apart: one; 200 apart: none; 0.01, 0.02, 0.05 on a log axis: two), or of the
/// one tick's own size.
pub fn tick_decimals(ticks: &[f64]) -> usize {
    let gap = ticks
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .filter(|g| *g > 0.0)
        .fold(f64::INFINITY, f64::min);
    let scale = if gap.is_finite() {
        gap
    } else {
        ticks.first().map_or(1.0, |v| v.abs() / 100.0)
    };
    if !(scale > 0.0 && scale.is_finite()) {
        return 0;
    }
    // A gap of 0.30000000000000004 is 0.3: round before taking the magnitude.
    (-(scale * (1.0 + 1e-9)).log10().floor()).clamp(0.0, 12.0) as usize
}

/// A tick label with `decimals` places, trailing zeros dropped (`0.23`, `700`, `0.0005`), no float noise.
pub fn tick_label(v: f64, decimals: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let d = decimals;
    let s = format!("{v:.d$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// Fills `root` white and draws `chart`'s title and note above: the area left for the plot.
fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let area = root.titled(chart.title, ("sans-serif", 24))?;
    if chart.note.is_empty() {
        Ok(area)
    } else {
        area.titled(chart.note, ("sans-serif", 15))
    }
}

/// Draws the series' legend of `c` at `position` in a boxed, translucent frame.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    c: &mut ChartContext<'a, DB, CT>,
    font: u32,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    c.configure_series_labels()
        .label_font(("sans-serif", font))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("plot {}: {x:?}", chart.title);
    let area = titled(&root, chart).map_err(e)?;
    let n = chart.series.len();
    if n <= MAX_OVERLAID {
        panel(&area, chart, None)?;
    } else {
        let rows = n.div_ceil(GRID_COLUMNS);
        for (i, a) in area
            .split_evenly((rows, GRID_COLUMNS))
            .iter()
            .enumerate()
            .take(n)
        {
            panel(a, chart, Some(i))?;
        }
    }
    root.present().map_err(e)
}

/// One chart of `chart`'s series on `area`: all in their own styles with a legend (`highlight` None), or
/// series `highlight` in colour over the others in grey, captioned with its name.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    highlight: Option<usize>,
) -> Result<(), String> {
    let Chart {
        title,
        x_desc,
        y_desc,
        series,
        log_x,
        integer_y,
        ..
    } = *chart;
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("plot {title}: {x:?}");
    let (x0, x1, y0, y1) = bounds(series, log_x);
    let y_ticks = linear_ticks(y0, y1, integer_y);
    let dy = tick_decimals(&y_ticks);
    let x_ticks = if log_x {
        log_ticks(x0, x1)
    } else {
        linear_ticks(x0, x1, false)
    };
    let dx = tick_decimals(&x_ticks);
    let small = highlight.is_some();
    let mut b = ChartBuilder::on(area);
    b.margin(if small { 8 } else { 16 })
        .x_label_area_size(if small { 36 } else { 48 })
        .y_label_area_size(if small { 56 } else { 72 });
    if let Some(h) = highlight {
        b.caption(&series[h].name, ("sans-serif", 15));
    }
    let (label_size, desc_size) = if small { (12, 13) } else { (15, 17) };
    // Series in drawing order: in small multiples the highlighted one last, on top.
    let mut order: Vec<usize> = (0..series.len())
        .filter(|&i| Some(i) != highlight)
        .collect();
    order.extend(highlight);
    let keep = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter()
            .copied()
            .filter(|&(x, y)| (!log_x || x > 0.0) && x.is_finite() && y.is_finite())
            .collect()
    };
    macro_rules! body {
        ($chart:expr) => {{
            let mut c = $chart;
            c.configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&|v| tick_label(*v, dx))
                .y_label_formatter(&|v| tick_label(*v, dy))
                .label_style(("sans-serif", label_size))
                .axis_desc_style(("sans-serif", desc_size))
                .draw()
                .map_err(e)?;
            for &i in &order {
                let s = &series[i];
                let (colour, dash, width) = match highlight {
                    None => (style(i).0, style(i).1, 2),
                    Some(h) if h == i => (PALETTE[0], None, 2),
                    Some(_) => (OTHER, None, 1),
                };
                if let (Some((lo, hi)), true) =
                    (&s.band, highlight.is_none() || highlight == Some(i))
                {
                    let mut poly = keep(lo);
                    poly.extend(keep(hi).into_iter().rev());
                    c.draw_series([Polygon::new(poly, colour.mix(0.18).filled())])
                        .map_err(e)?;
                }
                let pts = keep(&s.line);
                let st = colour.stroke_width(width);
                let anno = match dash {
                    None => c.draw_series(LineSeries::new(pts, st)).map_err(e)?,
                    Some((d, g)) => c
                        .draw_series(DashedLineSeries::new(pts, d, g, st))
                        .map_err(e)?,
                };
                if highlight.is_none() {
                    anno.label(s.name.as_str()).legend(move |(x, y)| {
                        let st = colour.stroke_width(3);
                        let path = vec![(x, y), (x + 24, y)];
                        match dash {
                            None => PathElement::new(path, st).into_dyn(),
                            Some((d, g)) => DashedPathElement::new(path, d, g, st).into_dyn(),
                        }
                    });
                }
            }
            if highlight.is_none() && !series.is_empty() {
                let position = if log_x {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperLeft
                };
                legend(&mut c, 16, position).map_err(e)?;
            }
        }};
    }
    let y = linear_axis(y0, y1, y_ticks);
    if log_x {
        let x = log_axis(x0, x1, x_ticks);
        body!(b.build_cartesian_2d(x, y).map_err(e)?);
    } else {
        body!(b
            .build_cartesian_2d(linear_axis(x0, x1, x_ticks), y)
            .map_err(e)?);
    }
    Ok(())
}

/// Draws `chart`'s series as dots on log-log axes with the line y = x (predicted against measured), to
/// `path` as SVG. Series past [`MAX_OVERLAID`] share colours.
pub fn scatter(path: &Path, chart: &Chart) -> Result<(), String> {
    ensure_font()?;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let e = |x: DrawingAreaErrorKind<std::io::Error>| format!("plot {}: {x:?}", chart.title);
    let area = titled(&root, chart).map_err(e)?;
    let vals = chart
        .series
        .iter()
        .flat_map(|s| s.line.iter().flat_map(|&(x, y)| [x, y]))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo / 1.2, hi * 1.2)
    } else if lo.is_finite() {
        (lo / 10.0, lo * 10.0)
    } else {
        (1e-3, 1.0)
    };
    let d = tick_decimals(&log_ticks(lo, hi));
    let mut c = ChartBuilder::on(&area)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            log_axis(lo, hi, log_ticks(lo, hi)),
            log_axis(lo, hi, log_ticks(lo, hi)),
        )
        .map_err(e)?;
    c.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .x_label_formatter(&|v| tick_label(*v, d))
        .y_label_formatter(&|v| tick_label(*v, d))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(e)?;
    c.draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.stroke_width(1)))
        .map_err(e)?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = style(i).0;
        c.draw_series(
            s.line
                .iter()
                .filter(|&&(x, y)| x > 0.0 && y > 0.0)
                .map(|&(x, y)| Circle::new((x, y), 2, colour.filled())),
        )
        .map_err(e)?
        .label(s.name.as_str())
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    legend(&mut c, 16, SeriesLabelPosition::UpperLeft).map_err(e)?;
    root.present().map_err(e)
}

/// The empirical CDF of `values` as plot points (sorted value, fraction at or below).
pub fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    // At most ~2,000 points per curve: enough for a smooth line, small files.
    let step = (v.len() / 2000).max(1);
    let mut pts: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect();
    if let Some(&last) = v.last() {
        pts.push((last, 1.0));
    }
    pts
}

/// Levels at which [`quantile_band`] reads each seed's quantiles.
pub const BAND_LEVELS: usize = 400;

/// A CDF across seeds: one seed, its empirical CDF ([`cdf_points`]); several, at each of
/// [`BAND_LEVELS`] levels q the mean of the seeds' q-quantiles (the line: the quantile average) and
/// their minimum and maximum (the band). Quantile q of n sorted values is the ceil(q n)-th.
pub fn quantile_band(name: &str, samples: &[Vec<f64>]) -> Series {
    let sorted: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| {
            let mut v: Vec<f64> = s.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .filter(|v| !v.is_empty())
        .collect();
    if sorted.len() <= 1 {
        return Series::line(name, cdf_points(sorted.first().map_or(&[], |v| v)));
    }
    let (mut line, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
    for l in 1..=BAND_LEVELS {
        let q = l as f64 / BAND_LEVELS as f64;
        let xs = sorted
            .iter()
            .map(|v| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
        let (mut sum, mut min, mut max) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
        for x in xs {
            sum += x;
            min = min.min(x);
            max = max.max(x);
        }
        line.push((sum / sorted.len() as f64, q));
        lo.push((min, q));
        hi.push((max, q));
    }
    Series {
        name: name.into(),
        line,
        band: Some((lo, hi)),
    }
}

/// A time series across seeds, each seed's `(t, y)` rows holding their value until the next row and
/// ending at its last row: one seed, its rows; several, at every row time of any seed the mean (the line)
/// and minimum and maximum (the band) over the seeds still running then.
pub fn hold_band(name: &str, seeds: &[Vec<(f64, f64)>]) -> Series {
    let seeds: Vec<&Vec<(f64, f64)>> = seeds.iter().filter(|s| !s.is_empty()).collect();
    if seeds.len() <= 1 {
        return Series::line(name, seeds.first().map_or(Vec::new(), |s| (*s).clone()));
    }
    let mut times: Vec<f64> = seeds.iter().flat_map(|s| s.iter().map(|p| p.0)).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let (mut line, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
    for t in times {
        let (mut sum, mut n, mut min, mut max) = (0.0, 0usize, f64::INFINITY, f64::NEG_INFINITY);
        for s in &seeds {
            if t > s[s.len() - 1].0 {
                continue;
            }
            // The last row at or before t (rows are in time order).
            let i = s.partition_point(|p| p.0 <= t);
            if i == 0 {
                continue;
            }
            let y = s[i - 1].1;
            sum += y;
            n += 1;
            min = min.min(y);
            max = max.max(y);
        }
        if n > 0 {
            line.push((t, sum / n as f64));
            lo.push((t, min));
            hi.push((t, max));
        }
    }
    Series {
        name: name.into(),
        line,
        band: Some((lo, hi)),
    }
}

/// One group of probes on a capacity plot: points `(x, y, passed)`, the answer's x and its interval.
pub struct ProbeSeries {
    pub name: String,
    pub points: Vec<(f64, f64, bool)>,
    pub answer: Option<f64>,
    pub band: Option<(f64, f64)>,
}

/// One panel of a capacity plot: a criterion's measured values against the searched quantity, with the
/// criterion's target as a dashed line.
pub struct ProbePanel {
    pub title: String,
    pub y_desc: String,
    pub target: f64,
    pub series: Vec<ProbeSeries>,
}

/// Draws `panels` one above another to `path`: each probe a dot (passed: every criterion met and stable)
/// or a cross (failed), the target a dashed line, each series' answer a vertical line over its shaded
/// interval. y is logarithmic when every value is positive and they span more than 20x (an overloaded
/// probe's latency is orders of magnitude past the target). `legend_low`: the legend goes to the lower
/// right (where a load sweep has no probes), else to the upper right (where a replica sweep has none).
/// `integer_x`: x counts replicas (integer ticks).
pub fn probe_panels(
    path: &Path,
    format: Format,
    x_desc: &str,
    panels: &[ProbePanel],
    legend_low: bool,
    integer_x: bool,
) -> Result<(), String> {
    ensure_font()?;
    let size = (900, 60 + 400 * panels.len().max(1) as u32);
    match format {
        Format::Svg => draw_panels(
            SVGBackend::new(path, size).into_drawing_area(),
            x_desc,
            panels,
            legend_low,
            integer_x,
        ),
        Format::Png => draw_panels(
            BitMapBackend::new(path, size).into_drawing_area(),
            x_desc,
            panels,
            legend_low,
            integer_x,
        ),
    }
}

/// [`probe_panels`] as an SVG document (for a page that inlines its figures).
pub fn probe_panels_svg(
    x_desc: &str,
    panels: &[ProbePanel],
    legend_low: bool,
    integer_x: bool,
) -> Result<String, String> {
    ensure_font()?;
    let mut s = String::new();
    let size = (900, 60 + 400 * panels.len().max(1) as u32);
    draw_panels(
        SVGBackend::with_string(&mut s, size).into_drawing_area(),
        x_desc,
        panels,
        legend_low,
        integer_x,
    )?;
    Ok(s)
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    x_desc: &str,
    panels: &[ProbePanel],
    legend_low: bool,
    integer_x: bool,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("capacity plot: {x:?}");
    root.fill(&WHITE).map_err(e)?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, p) in areas.into_iter().zip(panels) {
        let xs = p
            .series
            .iter()
            .flat_map(|s| {
                s.points
                    .iter()
                    .map(|q| q.0)
                    .chain(s.answer)
                    .chain(s.band.map(|b| b.0))
            })
            .chain(p.series.iter().filter_map(|s| s.band.map(|b| b.1)));
        let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        let pad = ((x1 - x0) * 0.05).max(x1.abs() * 0.01).max(1e-9);
        let (x0, x1) = ((x0 - pad).max(0.0), x1 + pad);
        let ys: Vec<f64> = p
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|q| q.1))
            .chain([p.target])
            .filter(|y| y.is_finite())
            .collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_y = lo > 0.0 && hi / lo > 20.0;
        let (y0, y1) = if log_y {
            (lo / 1.5, hi * 1.5)
        } else {
            (0.0f64.min(lo), if hi > 0.0 { hi * 1.1 } else { 1.0 })
        };
        let x_ticks = linear_ticks(x0, x1, integer_x);
        let y_ticks = if log_y {
            log_ticks(y0, y1)
        } else {
            linear_ticks(y0, y1, false)
        };
        let (dx, dy) = (tick_decimals(&x_ticks), tick_decimals(&y_ticks));
        let mut b = ChartBuilder::on(&area);
        b.caption(&p.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(72);
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(p.y_desc.as_str())
                    .x_label_formatter(&|v| tick_label(*v, dx))
                    .y_label_formatter(&|v| tick_label(*v, dy))
                    .label_style(("sans-serif", 14))
                    .axis_desc_style(("sans-serif", 16))
                    .draw()
                    .map_err(e)?;
                for (i, s) in p.series.iter().enumerate() {
                    let c = style(i).0;
                    if let Some((lo, hi)) = s.band {
                        chart
                            .draw_series([Rectangle::new(
                                [(lo, y0), (hi, y1)],
                                c.mix(0.12).filled(),
                            )])
                            .map_err(e)?;
                    }
                    if let Some(a) = s.answer {
                        chart
                            .draw_series(LineSeries::new([(a, y0), (a, y1)], c.stroke_width(2)))
                            .map_err(e)?;
                    }
                    chart
                        .draw_series(
                            s.points
                                .iter()
                                .filter(|q| q.2)
                                .map(|q| Circle::new((q.0, q.1), 4, c.filled())),
                        )
                        .map_err(e)?
                        .label(format!("{} (dot: passed, cross: failed)", s.name))
                        .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
                    chart
                        .draw_series(
                            s.points
                                .iter()
                                .filter(|q| !q.2)
                                .map(|q| Cross::new((q.0, q.1), 5, c.stroke_width(2))),
                        )
                        .map_err(e)?;
                }
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x0, p.target), (x1, p.target)],
                        8,
                        6,
                        BLACK.stroke_width(2),
                    ))
                    .map_err(e)?
                    .label(format!("target {}", p.target))
                    .legend(|(x, y)| {
                        DashedPathElement::new(
                            vec![(x, y), (x + 24, y)],
                            8,
                            6,
                            BLACK.stroke_width(2),
                        )
                    });
                let position = if legend_low {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperRight
                };
                legend(&mut chart, 14, position).map_err(e)?;
            }};
        }
        let x = linear_axis(x0, x1, x_ticks);
        if log_y {
            let y = log_axis(y0, y1, y_ticks);
            body!(b.build_cartesian_2d(x, y).map_err(e)?);
        } else {
            body!(b
                .build_cartesian_2d(x, linear_axis(y0, y1, y_ticks))
                .map_err(e)?);
        }
    }
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element of an SVG document.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    /// `attr="value"` of an SVG element's opening tag.
    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let i = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(&tag[i..i + tag[i..].find('"')?])
    }

    /// The opening tags of every `<kind` element.
    fn tags<'a>(svg: &'a str, kind: &str) -> Vec<&'a str> {
        svg.split(&format!("<{kind} "))
            .skip(1)
            .map(|t| &t[..t.find('>').unwrap_or(t.len())])
            .collect()
    }

    /// Significant digits of a number as printed: `0.0500` has 3, `700` has 1, `12.5` has 3.
    fn significant(label: &str) -> usize {
        let digits: String = label.chars().filter(char::is_ascii_digit).collect();
        let d = digits.trim_start_matches('0');
        if label.contains('.') {
            d.len()
        } else {
            d.trim_end_matches('0').len()
        }
    }

    #[test]
    fn ticks_are_round_values_with_few_digits() {
        // 1-2-5 per decade between 7.1 ms and 2.3 s.
        assert_eq!(
            log_ticks(0.0071, 2.3),
            [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
        );
        // Four decades would give 12 ticks of 1-2-5: powers of ten only.
        assert_eq!(log_ticks(0.001, 10.0), [0.001, 0.01, 0.1, 1.0, 10.0]);
        // Inside one small stretch of a decade: linear round values (step 0.005 for a span of 0.03).
        assert_eq!(
            log_ticks(0.051, 0.081)
                .iter()
                .map(|&v| tick_label(v, 3))
                .collect::<Vec<_>>(),
            ["0.055", "0.06", "0.065", "0.07", "0.075", "0.08"]
        );
        // Counts 0..700: a sixth of the span is 116.7, and the first 1-2-5 step at or above it is 200;
        // integers print without a decimal point.
        let t = linear_ticks(0.0, 700.0, true);
        assert_eq!(t, [0.0, 200.0, 400.0, 600.0]);
        assert_eq!(tick_decimals(&t), 0);
        assert_eq!(tick_label(t[3], 0), "600");
        // A count axis up to 3: a 0.5 step is raised to 1.
        assert_eq!(linear_ticks(0.0, 3.0, true), [0.0, 1.0, 2.0, 3.0]);
        // Float noise never reaches a label.
        assert_eq!(tick_label(0.23 + 1e-16, 2), "0.23");
        assert_eq!(tick_label(0.07 * 3.0, 2), "0.21");
        assert_eq!(tick_label(0.1 + 0.2, 1), "0.3");
        assert_eq!(tick_label(0.0005, 4), "0.0005");
        assert_eq!(tick_label(-0.0, 0), "0");
        assert_eq!(tick_label(12345.0, 0), "12345");
        // Decimals follow the gap between ticks, so neighbours never print alike: 99.5 ... 101 in halves
        // (by three significant digits 100.5 would read 100), 1-2-5 ticks from 0.01.
        let t = linear_ticks(99.4, 101.2, false);
        let labels: Vec<String> = t
            .iter()
            .map(|&v| tick_label(v, tick_decimals(&t)))
            .collect();
        assert_eq!(labels, ["99.5", "100", "100.5", "101"]);
        let t = log_ticks(0.0071, 2.3);
        assert_eq!(tick_decimals(&t), 2);
        assert_eq!(tick_label(t[3], 2), "0.1");
        // Fifteen decades: at most ten ticks; a span too small to step through: none.
        assert!(log_ticks(1e-6, 1e9).len() <= 10);
        assert!(linear_ticks(0.0, 1e-320, false).len() <= 101);
    }

    #[test]
    fn a_line_at_zero_clears_the_axis() {
        let flat = [Series::line("off", vec![(0.0, 0.0), (10.0, 0.0)])];
        let (_, _, y0, y1) = bounds(&flat, false);
        assert!(y0 < 0.0 && y1 > 0.0, "{y0} {y1}");
        let frac = [Series::line("on", vec![(0.0, 0.2), (10.0, 0.9)])];
        // The range starts at zero (not at 0.2) less 3% of the span 0.9.
        let (_, _, y0, _) = bounds(&frac, false);
        assert!((y0 + 0.027).abs() < 1e-12, "{y0}");
    }

    fn chart_svg(series: &[Series], log_x: bool) -> String {
        lines_svg(&Chart {
            title: "t",
            note: "",
            x_desc: "latency (s)",
            y_desc: "fraction of requests",
            series,
            log_x,
            integer_y: false,
        })
        .expect("a font is available on this machine")
    }

    #[test]
    fn every_series_has_its_own_colour_and_dash_and_ticks_read_cleanly() {
        // Eight CDF-like series spanning 2 ms to 23 s.
        let series: Vec<Series> = (0..MAX_OVERLAID)
            .map(|i| {
                let scale = 0.002 * 3f64.powi(i as i32);
                Series::line(
                    format!("v{i}"),
                    (0..200)
                        .map(|k| (scale * (1.0 + k as f64 / 20.0), k as f64 / 199.0))
                        .collect(),
                )
            })
            .collect();
        let svg = chart_svg(&series, true);
        // Data lines are 2 px wide, legend samples 3 px: one colour per series among each.
        let strokes = |w: &str| -> std::collections::BTreeMap<String, usize> {
            let mut m = std::collections::BTreeMap::new();
            for t in tags(&svg, "polyline") {
                if attr(t, "stroke-width") == Some(w) {
                    *m.entry(attr(t, "stroke").unwrap().to_string()).or_insert(0) += 1;
                }
            }
            m
        };
        let data = strokes("2");
        assert_eq!(data.len(), MAX_OVERLAID, "{data:?}");
        assert_eq!(strokes("3").len(), MAX_OVERLAID);
        // Solid lines are one polyline; dashed ones many short ones. Series i has dash i % 4: four
        // series of each kind and dash, three of them dashed in each group of four.
        for (i, c) in PALETTE.iter().enumerate() {
            let hex = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
            let n = data[&hex];
            if DASHES[i % DASHES.len()].is_none() {
                assert_eq!(n, 1, "series {i} solid");
            } else {
                assert!(n > 5, "series {i} dashed: {n} pieces");
            }
        }
        // Every numeric label is a round value of at most 3 significant digits.
        let numeric: Vec<String> = texts(&svg)
            .into_iter()
            .filter(|t| t.parse::<f64>().is_ok())
            .collect();
        assert!(numeric.len() >= 8, "{numeric:?}");
        for t in &numeric {
            assert!(significant(t) <= 2, "{t} in {numeric:?}");
        }
        assert!(numeric.contains(&"0.01".to_string()) && numeric.contains(&"10".to_string()));
    }

    #[test]
    fn many_series_become_small_multiples_each_captioned() {
        let series: Vec<Series> = (0..11)
            .map(|i| Series::line(format!("rate={i}"), vec![(0.0, i as f64), (5.0, 1.0)]))
            .collect();
        let svg = chart_svg(&series, false);
        let t = texts(&svg);
        for i in 0..11 {
            assert!(t.contains(&format!("rate={i}")), "caption {i}");
        }
        // Each panel draws its series in colour and the ten others in grey: 11 coloured lines, 110 grey.
        let lines = tags(&svg, "polyline");
        let grey = format!("#{:02X}{:02X}{:02X}", OTHER.0, OTHER.1, OTHER.2);
        assert_eq!(
            lines
                .iter()
                .filter(|l| attr(l, "stroke") == Some(&grey))
                .count(),
            110
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| attr(l, "stroke") == Some("#1F77B4"))
                .count(),
            11
        );
    }

    #[test]
    fn seeds_give_a_mean_line_and_a_min_max_band() {
        // Three seeds of 4 values: quantile q = 1/4 reads the first of each sorted seed.
        let s = quantile_band("a", &[vec![4.0, 1.0, 2.0, 3.0], vec![2.0; 4], vec![5.0; 4]]);
        let (lo, hi) = s.band.clone().unwrap();
        let at = |pts: &[(f64, f64)], q: f64| pts.iter().find(|p| p.1 == q).unwrap().0;
        // q = 0.25: seeds give 1, 2, 5: mean 8/3, min 1, max 5. q = 1: 4, 2, 5: mean 11/3.
        assert!((at(&s.line, 0.25) - 8.0 / 3.0).abs() < 1e-12);
        assert_eq!((at(&lo, 0.25), at(&hi, 0.25)), (1.0, 5.0));
        assert!((at(&s.line, 1.0) - 11.0 / 3.0).abs() < 1e-12);
        // Time series: seed A holds 1 from t=0 and 3 from t=2 until its end at 4; seed B holds 5 until 3.
        let h = hold_band(
            "b",
            &[
                vec![(0.0, 1.0), (2.0, 3.0), (4.0, 3.0)],
                vec![(0.0, 5.0), (3.0, 5.0)],
            ],
        );
        // At t = 2: mean (3 + 5) / 2; at t = 4 only A runs.
        assert_eq!(h.line, [(0.0, 3.0), (2.0, 4.0), (3.0, 4.0), (4.0, 3.0)]);
        let (lo, hi) = h.band.clone().unwrap();
        assert_eq!(lo[1], (2.0, 3.0));
        assert_eq!(hi[1], (2.0, 5.0));
        // Drawn, each band is one translucent polygon in its series' colour.
        let svg = chart_svg(&[s, h], true);
        let polys = tags(&svg, "polygon");
        assert_eq!(polys.len(), 2);
        assert_eq!(attr(polys[0], "fill"), Some("#1F77B4"));
        assert_eq!(attr(polys[1], "fill"), Some("#FF7F0E"));
        // One seed: no band.
        assert!(quantile_band("c", &[vec![1.0, 2.0]]).band.is_none());
    }
}
