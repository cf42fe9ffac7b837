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
pub fn probe_panels(
    path: &Path,
    format: Format,
    x_desc: &str,
    panels: &[ProbePanel],
    legend_low: bool,
) -> Result<(), String> {
    ensure_font()?;
    let size = (900, 60 + 400 * panels.len().max(1) as u32);
    match format {
        Format::Svg => draw_panels(
            SVGBackend::new(path, size).into_drawing_area(),
            x_desc,
            panels,
            legend_low,
        ),
        Format::Png => draw_panels(
            BitMapBackend::new(path, size).into_drawing_area(),
            x_desc,
            panels,
            legend_low,
        ),
    }
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    x_desc: &str,
    panels: &[ProbePanel],
    legend_low: bool,
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
                    .label_style(("sans-serif", 14))
                    .axis_desc_style(("sans-serif", 16))
                    .draw()
                    .map_err(e)?;
                for (i, s) in p.series.iter().enumerate() {
                    let c = color(i);
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
                        PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(2))
                    });
                chart
                    .configure_series_labels()
                    .label_font(("sans-serif", 14))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(if legend_low {
                        SeriesLabelPosition::LowerRight
                    } else {
                        SeriesLabelPosition::UpperRight
                    })
                    .draw()
                    .map_err(e)?;
            }};
        }
        if log_y {
            body!(b
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(e)?);
        } else {
            body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?);
        }
    }
    root.present().map_err(e)
}
