//! `report.html`: one self-contained page per `compare` or `capacity` output, for a planner to mail to a
//! colleague. Everything is inline (the plots as SVG, the styles in one `<style>`); the page carries no
//! script and forbids itself any fetch (a Content-Security-Policy of `default-src 'none'`), so it opens
//! the same offline, from a mail attachment, or years later. Text is escaped by `maud`; the SVG comes from
//! plotters, which escapes its own text.

use super::Cell;
use maud::{html, Markup, PreEscaped, DOCTYPE};

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2em auto;
 max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{background:#f4f4f4}
td .change{display:block;color:#666;font-size:.9em}td .sig{color:#1a4e8a;font-weight:700}
.scroll{overflow-x:auto}figure{margin:1em 0}svg{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
details{margin:.4em 0}summary{cursor:pointer}.note{color:#555}code{font-size:.95em}
";

/// A whole page around `body`.
fn page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy"
                    content="default-src 'none'; style-src 'unsafe-inline'; img-src data:";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                (body)
                p.note { "Written by servesim " (env!("CARGO_PKG_VERSION")) "." }
            }
        }
    }
    .into_string()
}

/// A figure: a plot's SVG inline.
pub struct Figure {
    pub title: String,
    pub svg: String,
}

fn figures(figs: &Result<Vec<Figure>, String>) -> Markup {
    html! {
        @match figs {
            Ok(figs) => @for f in figs {
                figure aria-label=(f.title) { (PreEscaped(&f.svg)) }
            },
            Err(why) => p.note { "Plots skipped: " (why) },
        }
    }
}

/// What the compare page shows.
pub struct ComparePage<'a> {
    pub title: String,
    /// Lines under the title: the grid, seeds, pairing.
    pub facts: Vec<String>,
    pub names: &'a [&'a str],
    /// Each variant's overrides (`key=value`).
    pub overrides: Vec<Vec<String>>,
    /// Per metric: its name and a cell per variant.
    pub rows: Vec<(&'a str, Vec<Cell>)>,
    pub legend: &'a str,
    pub figures: Result<Vec<Figure>, String>,
    /// Each variant's resolved.toml (of the first seed).
    pub settings: Vec<String>,
}

/// The compare page: facts, the comparison table (each cell its value and change from the baseline, a
/// significant paired difference marked), the plots, and each variant's settings.
pub fn compare_page(p: &ComparePage) -> String {
    let body = html! {
        @for f in &p.facts { p { (f) } }
        h2 { "Comparison" }
        div.scroll {
            table {
                thead { tr {
                    th { "metric" }
                    @for n in p.names { th { code { (n) } } }
                } }
                tbody {
                    @for (metric, cells) in &p.rows {
                        tr {
                            td { code { (metric) } }
                            @for c in cells {
                                td {
                                    (c.value)
                                    @if let Some(ch) = &c.change {
                                        span class=(if c.significant { "change sig" } else { "change" }) {
                                            (ch)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.note { (p.legend) }
        h2 { "Plots" }
        (figures(&p.figures))
        h2 { "Settings" }
        table {
            thead { tr { th { "variant" } th { "overrides (on top of the config)" } } }
            tbody {
                @for (n, o) in p.names.iter().zip(&p.overrides) {
                    tr { td { code { (n) } } td { code { (o.join(" ")) } } }
                }
            }
        }
        @for (n, s) in p.names.iter().zip(&p.settings) {
            details {
                summary { "resolved.toml of " code { (n) } }
                pre { (s) }
            }
        }
    };
    page(&p.title, body)
}

/// A CSV cell for reading: a decimal number to four significant digits (`0.0007384532155` reads
/// `0.0007385`), anything else as it is. The CSV beside the page keeps every digit.
fn readable(cell: &str) -> String {
    match cell.parse::<f64>() {
        Ok(v) if cell.contains('.') && v.is_finite() && v != 0.0 => {
            let d = (3 - v.abs().log10().floor() as i32).max(0) as usize;
            let s = format!("{v:.d$}");
            if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                s
            }
        }
        _ => cell.to_string(),
    }
}

/// What the capacity page shows.
pub struct CapacityPage {
    pub title: String,
    /// The answer, one line per combination.
    pub answers: Vec<String>,
    pub figure: Result<Figure, String>,
    /// capacity.csv: header and rows.
    pub probes: (Vec<String>, Vec<Vec<String>>),
    pub settings: String,
}

/// The capacity page: the answers, the probe plot, every probe, the resolved settings.
pub fn capacity_page(p: &CapacityPage) -> String {
    let figs = p
        .figure
        .as_ref()
        .map(|f| {
            vec![Figure {
                title: f.title.clone(),
                svg: f.svg.clone(),
            }]
        })
        .map_err(Clone::clone);
    let body = html! {
        h2 { "Answer" }
        @for a in &p.answers { p { (a) } }
        h2 { "Probes" }
        (figures(&figs))
        div.scroll {
            table {
                thead { tr { @for h in &p.probes.0 { th { (h) } } } }
                tbody { @for r in &p.probes.1 { tr { @for c in r { td { (readable(c)) } } } } }
            }
        }
        h2 { "Settings" }
        details open {
            summary { "resolved.toml (the first combination at the starting rate)" }
            pre { (p.settings) }
        }
    };
    page(&p.title, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_to_four_significant_digits() {
        assert_eq!(readable("-0.0007384532155174357"), "-0.0007385");
        assert_eq!(readable("6.5391859189862505"), "6.539");
        assert_eq!(readable("12345.678"), "12346");
        assert_eq!(readable("5.0"), "5");
        assert_eq!(readable("11"), "11");
        assert_eq!(readable("true"), "true");
    }

    #[test]
    fn text_is_escaped_and_the_page_fetches_nothing() {
        let html = capacity_page(&CapacityPage {
            title: "a <b> & c".into(),
            answers: vec!["<script>alert(1)</script>".into()],
            figure: Err("no font".into()),
            probes: (vec!["rate".into()], vec![vec!["1.5".into()]]),
            settings: "name = \"x<y\"".into(),
        });
        assert!(html.contains("a &lt;b&gt; &amp; c"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script"));
        assert!(html.contains("x&lt;y"));
        assert!(html.contains("Plots skipped: no font"));
        assert!(html.contains("default-src 'none'"));
        for bad in ["src=", "href=", "url(", "@import", "<link"] {
            assert!(!html.contains(bad), "{bad}");
        }
    }
}
