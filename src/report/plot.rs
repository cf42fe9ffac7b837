//! Plots of a comparison (plotters): CDFs and time series, SVG by default or PNG.
//!
//! Text needs a TrueType font. servesim looks for one at `SERVESIM_FONT`, then at common system paths
//! (DejaVu Sans, Liberation Sans, Noto Sans, Arial); without one, plots are skipped with a message and
//! the CSVs are still written.

use plotters::coord::Shift;
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

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// One named line: (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// A line chart of several series. `log_x` puts x on a log scale (latency CDFs span decades).
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub series: &'a [Series],
    pub log_x: bool,
}

/// Draws `chart` to `path`.
pub fn lines(path: &Path, format: Format, chart: &Chart) -> Result<(), String> {
    ensure_font()?;
    let size = (900, 560);
    match format {
        Format::Svg => draw(SVGBackend::new(path, size).into_drawing_area(), chart),
        Format::Png => draw(BitMapBackend::new(path, size).into_drawing_area(), chart),
    }
}

fn bounds(series: &[Series], log_x: bool) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, f64::NEG_INFINITY);
    for &(x, y) in pts {
        if log_x && x <= 0.0 {
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
    if !y1.is_finite() || y1 <= y0 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1 * 1.05)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let Chart {
        title,
        x_desc,
        y_desc,
        series,
        log_x,
    } = *chart;
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| format!("plot {title}: {x:?}");
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1, y0, y1) = bounds(series, log_x);
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .draw()
                .map_err(e)?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let c = color(i);
                let pts: Vec<(f64, f64)> = pts
                    .iter()
                    .copied()
                    .filter(|&(x, _)| !log_x || x > 0.0)
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(e)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
                    });
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(if log_x {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperLeft
                })
                .draw()
                .map_err(e)?;
        }};
    }
    if log_x {
        body!(b
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(e)?);
    } else {
        body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?);
    }
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
