//! Paired comparisons: every variant of a config on the identical workload, over one or more seeds, with
//! per-request pairing, confidence intervals (`ci.rs`), plots (`plot.rs`) and the self-contained
//! `report.html` (`html.rs`, also used by `capacity`); [`parallel_map`] runs many configurations on
//! several threads with results in a fixed order, for any caller that needs it. One more figure is one
//! more entry in [`figures`]; one more metric, one more name in [`METRICS`].

pub mod ci;
pub mod html;
pub mod plot;

use crate::config::Config;
use crate::error::{ConfigError, Error, OutputError};
use crate::metrics::output::RunDir;
use crate::metrics::Summary;
use crate::run::{run, RunOptions};
use crate::system::System;
use ci::mean_ci95;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The summary metrics a comparison reports, in order.
pub const METRICS: &[&str] = &[
    "ttft_mean_s",
    "ttft_median_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_mean_s",
    "tpot_p99_s",
    "itl_mean_s",
    "e2e_mean_s",
    "e2e_p99_s",
    "queue_mean_s",
    "request_throughput_rps",
    "output_throughput_tps",
    "goodput_rps",
    "success_rate",
    "prefix_cache_hit_rate",
    "prefill_tokens_computed",
    "prefill_tokens_saved_frac",
    "num_preemptions",
    "kv_cache_usage_perc_mean",
    "kv_cache_evicted_tokens",
    "duration_s",
];

/// The most runs (variants x seeds) one comparison makes.
pub const MAX_RUNS: u64 = 10_000;

/// One `--vary key=v1,v2,...`.
#[derive(Clone, Debug, PartialEq)]
pub struct Vary {
    pub key: String,
    pub values: Vec<String>,
}

impl Vary {
    /// Parses `key=v1,v2`; commas inside braces, brackets or quotes do not split.
    pub fn parse(arg: &str) -> Result<Vary, ConfigError> {
        Vary::parse_flag(arg, "--vary")
    }

    /// [`Vary::parse`] for the option `flag` (named in errors).
    pub fn parse_flag(arg: &str, flag: &str) -> Result<Vary, ConfigError> {
        let bad = |m: &str| {
            ConfigError::invalid(
                format!("{flag} {arg}"),
                format!("{m}; write {flag} key=value1,value2 (e.g. {flag} engine.prefix_caching=true,false)"),
            )
        };
        let (key, rest) = arg.split_once('=').ok_or_else(|| bad("missing `=`"))?;
        let mut values = Vec::new();
        let (mut depth, mut quote, mut cur) = (0i32, false, String::new());
        for ch in rest.chars() {
            match ch {
                '"' => quote = !quote,
                '{' | '[' if !quote => depth += 1,
                '}' | ']' if !quote => depth -= 1,
                ',' if !quote && depth == 0 => {
                    values.push(std::mem::take(&mut cur).trim().to_string());
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        values.push(cur.trim().to_string());
        if key.trim().is_empty() || values.iter().any(String::is_empty) {
            return Err(bad("empty key or value"));
        }
        if values.len() < 2 {
            return Err(bad("give at least two values to compare"));
        }
        // Values are compared as TOML reads them, so `1` and ` 1` or `"a"` and `a` are the same value.
        let parsed: Vec<toml::Value> = values
            .iter()
            .map(|v| {
                toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(v.clone()))
            })
            .collect();
        for (i, a) in parsed.iter().enumerate() {
            if let Some(j) = parsed[..i].iter().position(|b| b == a) {
                return Err(bad(&format!(
                    "value {} ({}) repeats value {} ({}); give each value once",
                    i + 1,
                    values[i],
                    j + 1,
                    values[j]
                )));
            }
        }
        Ok(Vary {
            key: key.trim().to_string(),
            values,
        })
    }
}

/// One variant: its name (a directory name) and its overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    pub overrides: Vec<String>,
}

/// The grid of every combination of the varied values; the first is the baseline. Each variant's name
/// is its settings, `key=value` joined by `+` (see [`name_piece`]): readable, unique, and reversible
/// ([`parse_variant_name`]).
pub fn variants(varies: &[Vary]) -> Vec<Variant> {
    let mut out = vec![Variant {
        name: String::new(),
        overrides: Vec::new(),
    }];
    for v in varies {
        // The key's last part, unless another varied key ends the same way.
        let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
        let short = last(&v.key);
        let shared = varies.iter().filter(|w| last(&w.key) == short).count() > 1;
        let key = if shared { v.key.clone() } else { short };
        out = out
            .into_iter()
            .flat_map(|base| {
                let key = key.clone();
                v.values.iter().map(move |val| {
                    let piece = name_piece(&key, val);
                    let mut o = base.overrides.clone();
                    o.push(format!("{}={}", v.key, val));
                    Variant {
                        name: if base.name.is_empty() {
                            piece
                        } else {
                            format!("{}+{}", base.name, piece)
                        },
                        overrides: o,
                    }
                })
            })
            .collect();
    }
    out
}

/// One setting of a variant's name: `key=value`. A string shows without its quotes when `--vary`
/// reads that text back as the same string (`router=round_robin`; not an empty string, a number in
/// quotes, or one with quotes or spaces at its ends); any other value shows as TOML writes it. Every byte but
/// ASCII letters, digits and `._-` is then percent-encoded (`/` is `%2F`, a quote `%22`), so a name is a
/// valid folder name and decodes back to the setting.
pub fn name_piece(key: &str, raw: &str) -> String {
    let value = toml_value(raw);
    let text = match &value {
        toml::Value::String(s) if !s.is_empty() && toml_value(s) == value => s.clone(),
        v => v.to_string(),
    };
    format!("{}={}", percent_encode(key), percent_encode(&text))
}

/// A value as `--vary` reads it: TOML, or else the text as a string.
fn toml_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()))
}

/// Every byte but ASCII letters, digits and `._-` (`NON_ALPHANUMERIC` less those three).
const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'_')
    .remove(b'-');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ENCODED).to_string()
}

/// None for a name with a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    // The crate passes a `%` without two hex digits through; a name `variants` made never has one.
    let b = s.as_bytes();
    let malformed = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A variant's name back to its settings: (key as named, the value's TOML text). The key is the varied
/// key's last part unless two varied keys share it. None for a name `variants` does not make.
pub fn parse_variant_name(name: &str) -> Option<Vec<(String, String)>> {
    name.split('+')
        .map(|piece| {
            let (k, v) = piece.split_once('=')?;
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub config: Option<PathBuf>,
    pub set: Vec<String>,
    pub varies: Vec<Vary>,
    pub seeds: u32,
    /// Overrides the config's seed (the first of the seeds).
    pub seed: Option<u64>,
    pub out: Option<PathBuf>,
    pub plot_format: plot::Format,
    /// Runs at once (each on its own thread); 0 means one per available core. Outputs do not depend on it.
    pub jobs: usize,
}

#[derive(Debug)]
pub struct CompareOutcome {
    pub out_dir: PathBuf,
    pub table: String,
    /// Indexed by seed, then variant.
    pub summaries: Vec<Vec<Summary>>,
    pub variants: Vec<Variant>,
    pub seeds: Vec<u64>,
    pub paired: usize,
    pub unpaired: usize,
    pub plots: Result<Vec<PathBuf>, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs every variant for every seed and writes the comparison.
pub fn compare(o: &CompareOptions) -> Result<CompareOutcome, Error> {
    if o.seeds == 0 {
        return Err(ConfigError::invalid("--seeds", "must be at least 1").into());
    }
    for (i, v) in o.varies.iter().enumerate() {
        if o.varies[..i].iter().any(|w| w.key == v.key) {
            return Err(ConfigError::invalid(
                format!("--vary {}", v.key),
                "the key is varied twice; give all its values in one --vary",
            )
            .into());
        }
    }
    let grid = o
        .varies
        .iter()
        .fold(1u64, |n, v| n.saturating_mul(v.values.len() as u64));
    let runs_total = grid.saturating_mul(o.seeds as u64);
    if runs_total > MAX_RUNS {
        return Err(ConfigError::invalid(
            "--seeds / --vary",
            format!(
                "{grid} variants x {} seeds = {runs_total} runs, more than {MAX_RUNS}; compare fewer values or seeds",
                o.seeds
            ),
        )
        .into());
    }
    let vs = variants(&o.varies);
    for (i, v) in vs.iter().enumerate() {
        if let Some(w) = vs[..i].iter().find(|w| w.name == v.name) {
            return Err(ConfigError::invalid(
                "--vary",
                format!(
                    "variants `{}` and `{}` would share the directory name {}; give values that differ in \
                     letters, digits or ._=-",
                    w.overrides.join(" "),
                    v.overrides.join(" "),
                    v.name
                ),
            )
            .into());
        }
    }
    // Resolve every variant first: a bad value fails before anything is written.
    let mut configs = Vec::new();
    let mut sizes = Vec::new();
    for v in &vs {
        let mut all = o.set.clone();
        all.extend(v.overrides.iter().cloned());
        let mut cfg = Config::load(o.config.as_deref(), &all)?;
        if let Some(s) = o.seed {
            crate::config::check_seed(s, "--seed")?;
            cfg.seed = s;
        }
        let sys = System::resolve(&cfg)?;
        sizes.push(sys.sizing.num_gpu_blocks);
        configs.push(cfg);
    }
    // Runs go in parallel: each must fit beside the others.
    let parallel = effective_jobs(o.jobs, vs.len() * o.seeds as usize);
    for (cfg, &blocks) in configs.iter().zip(&sizes) {
        crate::memory::check_fits_parallel(cfg, blocks, parallel, None)?;
    }
    let base_seed = configs[0].seed;
    let last_seed = base_seed.saturating_add(o.seeds as u64 - 1);
    crate::config::check_seed(last_seed, "--seeds")?;
    let seeds: Vec<u64> = (base_seed..=last_seed).collect();
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(format!("compare-{}", configs[0].name)));
    let dir = RunDir::create(&out)?;
    let root = dir.file("");
    // Every (seed, variant) run is independent and deterministic, so they run in parallel; results are
    // gathered by position, and the first failing run in (seed, variant) order is the error reported.
    let runs: Vec<(u64, &Variant, &Config)> = seeds
        .iter()
        .flat_map(|&seed| vs.iter().zip(&configs).map(move |(v, c)| (seed, v, c)))
        .collect();
    let run_one = |&(seed, v, cfg): &(u64, &Variant, &Config)| {
        let mut cfg = cfg.clone();
        cfg.seed = seed;
        run(
            &cfg,
            &RunOptions {
                out: Some(variant_dir(&root, &seeds, seed, &v.name)),
                progress: false,
                no_leap: false,
                variant: v.name.clone(),
                save_cache: None,
                // A comparison reads its variants' requests.csv (pairs, plots).
                format: crate::metrics::RowFormat::Csv,
            },
        )
        .map(|r| r.summary)
    };
    let results = parallel_map(&runs, o.jobs, run_one);
    let mut summaries = Vec::new();
    let mut results = results.into_iter();
    for _ in &seeds {
        let row = results
            .by_ref()
            .take(vs.len())
            .collect::<Result<Vec<_>, _>>()?;
        summaries.push(row);
    }
    // The comparison table(s).
    let names: Vec<&str> = vs.iter().map(|v| v.name.as_str()).collect();
    write_comparison(&root, &names, &seeds, &summaries)?;
    let (paired, unpaired) = write_paired(&root, &names, &seeds)?;
    let figs = plot::ensure_font().and_then(|_| figures(&root, &names, &seeds));
    // Each figure drawn to SVG once: the report inlines it, and an SVG plot file is the same text.
    let svgs: Result<Vec<html::Figure>, String> =
        figs.as_ref().map_err(Clone::clone).and_then(|figs| {
            figs.iter()
                .map(|f| {
                    Ok(html::Figure {
                        title: f.title.to_string(),
                        svg: plot::lines_svg(&f.chart())?,
                    })
                })
                .collect()
        });
    let plots = figs.and_then(|figs| {
        write_plots(
            &root,
            &figs,
            svgs.as_ref().map_err(Clone::clone)?,
            o.plot_format,
        )
    });
    // The directory must look like a run directory to be replaced by a later comparison.
    std::fs::write(
        root.join("resolved.toml"),
        format!(
            "# servesim compare: {} variants x {} seeds; each variant's own resolved.toml is in its folder\n",
            vs.len(),
            seeds.len()
        ),
    )
    .map_err(io(&root))?;
    let table = render_table(&names, &summaries);
    let page = html::compare_page(&html::ComparePage {
        title: format!("servesim compare: {}", configs[0].name),
        facts: compare_facts(o, &vs, &seeds, paired, unpaired),
        names: &names,
        overrides: vs.iter().map(|v| v.overrides.clone()).collect(),
        rows: METRICS
            .iter()
            .copied()
            .zip(table_cells(&names, &summaries))
            .collect(),
        legend: if seeds.len() > 1 {
            SEEDS_LEGEND
        } else {
            "In parentheses: the change from the first variant."
        },
        figures: svgs,
        settings: names
            .iter()
            .map(|n| {
                let p = variant_dir(&root, &seeds, seeds[0], n).join("resolved.toml");
                std::fs::read_to_string(&p).map_err(io(&p))
            })
            .collect::<Result<_, _>>()?,
    });
    let path = root.join("report.html");
    std::fs::write(&path, page).map_err(io(&path))?;
    let out_dir = dir.commit()?;
    let plots = plots.map(|ps| {
        ps.into_iter()
            .map(|p| out_dir.join(p.file_name().expect("a file")))
            .collect()
    });
    Ok(CompareOutcome {
        out_dir,
        table,
        summaries,
        variants: vs,
        seeds,
        paired,
        unpaired,
        plots,
    })
}

/// The lines under the report's title: what ran and how it paired.
fn compare_facts(
    o: &CompareOptions,
    vs: &[Variant],
    seeds: &[u64],
    paired: usize,
    unpaired: usize,
) -> Vec<String> {
    let config = o
        .config
        .as_ref()
        .map_or("the embedded default workload".to_string(), |p| {
            p.display().to_string()
        });
    let mut sets = o.set.join(" ");
    if !sets.is_empty() {
        sets = format!(", with {sets}");
    }
    vec![
        format!("Config: {config}{sets}."),
        format!(
            "Varied: {}.",
            o.varies
                .iter()
                .map(|v| format!("{} = {}", v.key, v.values.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        format!(
            "{} variants x {} seed(s) ({}); every variant ran the identical workload of each seed; {paired} \
             requests paired across variants, {unpaired} unpaired.",
            vs.len(),
            seeds.len(),
            seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ]
}

/// The threads `jobs` gives `items` runs (0: one per available core), at most one per run.
pub fn effective_jobs(jobs: usize, items: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if jobs == 0 { cores } else { jobs }.clamp(1, items.max(1))
}

/// `f` over `items` on up to `jobs` threads (0: one per available core), results in `items`' order
/// whatever the thread count, so a deterministic `f` gives the same results with any `jobs` (`compare`
/// runs its variants, and a capacity search its probes, through this). A panic in `f` is re-raised.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = effective_jobs(jobs, items.len());
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|&(i, _)| i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// A time series drawn as the step function it is: each value holds until the next row (rows are left out
/// while nothing changes), so a point at the next row's time with the previous value precedes each row.
fn steps(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (t, y) in points {
        if let Some(&(_, prev)) = out.last() {
            out.push((t, prev));
        }
        out.push((t, y));
    }
    out
}

fn variant_dir(root: &Path, seeds: &[u64], seed: u64, name: &str) -> PathBuf {
    if seeds.len() == 1 {
        root.join(name)
    } else {
        root.join(format!("seed-{seed}")).join(name)
    }
}

fn val(s: &Summary, k: &str) -> Option<f64> {
    s.get_f64(k)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

fn write_comparison(
    root: &Path,
    names: &[&str],
    seeds: &[u64],
    sums: &[Vec<Summary>],
) -> Result<(), OutputError> {
    let path = root.join("comparison.csv");
    let err = OutputError::csv(&path);
    let mut w = csv::Writer::from_path(&path).map_err(err)?;
    let mut header = vec!["variant".to_string(), "seeds".to_string()];
    for m in METRICS {
        if seeds.len() == 1 {
            header.extend([m.to_string(), format!("{m}_delta"), format!("{m}_ratio")]);
        } else {
            header.extend([
                format!("{m}_mean"),
                format!("{m}_ci95"),
                format!("{m}_delta_mean"),
                format!("{m}_delta_ci95"),
            ]);
        }
    }
    w.write_record(&header).map_err(err)?;
    for (vi, name) in names.iter().enumerate() {
        let mut row = vec![name.to_string(), seeds.len().to_string()];
        for m in METRICS {
            let per_seed: Vec<Option<f64>> = sums.iter().map(|s| val(&s[vi], m)).collect();
            let base: Vec<Option<f64>> = sums.iter().map(|s| val(&s[0], m)).collect();
            if seeds.len() == 1 {
                let (v, b) = (per_seed[0], base[0]);
                let delta = v.zip(b).map(|(v, b)| v - b);
                let ratio = v.zip(b).and_then(|(v, b)| (b != 0.0).then(|| v / b));
                row.extend([fmt_opt(v), fmt_opt(delta), fmt_opt(ratio)]);
            } else {
                let vals: Vec<f64> = per_seed.iter().flatten().copied().collect();
                let diffs: Vec<f64> = per_seed
                    .iter()
                    .zip(&base)
                    .filter_map(|(v, b)| Some((*v)? - (*b)?))
                    .collect();
                let (m1, h1) = mean_ci95(&vals);
                let (m2, h2) = mean_ci95(&diffs);
                let finite = |x: f64| x.is_finite().then_some(x);
                row.extend([
                    fmt_opt(finite(m1)),
                    fmt_opt(h1),
                    fmt_opt(finite(m2)),
                    fmt_opt(h2),
                ]);
            }
        }
        w.write_record(&row).map_err(err)?;
    }
    w.flush().map_err(io(&path))?;
    if seeds.len() > 1 {
        // Every (seed, variant) summary, for notebooks.
        let path = root.join("comparison_seeds.csv");
        let err = OutputError::csv(&path);
        let mut w = csv::Writer::from_path(&path).map_err(err)?;
        let mut header = vec!["variant", "seed"];
        header.extend(METRICS);
        w.write_record(&header).map_err(err)?;
        for (si, seed) in seeds.iter().enumerate() {
            for (vi, name) in names.iter().enumerate() {
                let mut row = vec![name.to_string(), seed.to_string()];
                row.extend(METRICS.iter().map(|m| fmt_opt(val(&sums[si][vi], m))));
                w.write_record(&row).map_err(err)?;
            }
        }
        w.flush().map_err(io(&path))?;
    }
    Ok(())
}

/// Per-request values read back from a variant's requests.csv, keyed by (session, turn).
type Rows = BTreeMap<(u64, u32), [String; 5]>;

const PAIRED: [&str; 4] = ["ttft_s", "e2e_s", "cached_tokens", "prefilled_tokens"];

fn read_requests(path: &Path) -> Result<Rows, OutputError> {
    let err = OutputError::csv(path);
    let mut r = csv::Reader::from_path(path).map_err(err)?;
    let h = r.headers().map_err(err)?.clone();
    let idx = |n: &str| h.iter().position(|x| x == n).expect("own column");
    let (s, t, p) = (idx("session_id"), idx("turn"), idx("prompt_tokens"));
    let cols: Vec<usize> = PAIRED.iter().map(|c| idx(c)).collect();
    let mut out = Rows::new();
    for rec in r.records() {
        let rec = rec.map_err(err)?;
        let key = (
            rec[s].parse().expect("own integer"),
            rec[t].parse().expect("own integer"),
        );
        // Rows are in the order requests left: a retried turn's last row, its final attempt, stands
        // for it.
        out.insert(
            key,
            [
                rec[p].to_string(),
                rec[cols[0]].to_string(),
                rec[cols[1]].to_string(),
                rec[cols[2]].to_string(),
                rec[cols[3]].to_string(),
            ],
        );
    }
    Ok(out)
}

/// paired_requests.csv: one row per (seed, session, turn) present in every variant with the same prompt,
/// each variant's TTFT, E2E, cached and prefilled tokens side by side, and differences from the baseline.
/// Returns (paired, unpaired) counts.
fn write_paired(root: &Path, names: &[&str], seeds: &[u64]) -> Result<(usize, usize), OutputError> {
    let path = root.join("paired_requests.csv");
    let err = OutputError::csv(&path);
    let mut w = csv::Writer::from_path(&path).map_err(err)?;
    let mut header = vec![
        "seed".to_string(),
        "session_id".into(),
        "turn".into(),
        "prompt_tokens".into(),
    ];
    for c in PAIRED {
        for n in names {
            header.push(format!("{c}__{n}"));
        }
        for n in &names[1..] {
            header.push(format!("{c}__diff__{n}"));
        }
    }
    w.write_record(&header).map_err(err)?;
    let (mut paired, mut unpaired) = (0, 0);
    for &seed in seeds {
        let all: Vec<Rows> = names
            .iter()
            .map(|n| read_requests(&variant_dir(root, seeds, seed, n).join("requests.csv")))
            .collect::<Result<_, _>>()?;
        let keys: std::collections::BTreeSet<_> =
            all.iter().flat_map(|r| r.keys().copied()).collect();
        for key in keys {
            let rows: Vec<&[String; 5]> = all.iter().filter_map(|r| r.get(&key)).collect();
            if rows.len() != names.len() || rows.iter().any(|r| r[0] != rows[0][0]) {
                unpaired += 1;
                continue;
            }
            paired += 1;
            let mut row = vec![
                seed.to_string(),
                key.0.to_string(),
                key.1.to_string(),
                rows[0][0].clone(),
            ];
            for (ci, _) in PAIRED.iter().enumerate() {
                for r in &rows {
                    row.push(r[ci + 1].clone());
                }
                let base = &rows[0][ci + 1];
                for r in &rows[1..] {
                    row.push(diff(&r[ci + 1], base));
                }
            }
            w.write_record(&row).map_err(err)?;
        }
    }
    w.flush().map_err(io(&path))?;
    Ok((paired, unpaired))
}

/// One figure of a comparison: its file stem and chart, series owned.
pub struct Figure {
    pub file: &'static str,
    pub title: &'static str,
    pub note: String,
    pub x_desc: &'static str,
    pub y_desc: &'static str,
    pub series: Vec<plot::Series>,
    pub log_x: bool,
    pub integer_y: bool,
}

impl Figure {
    pub fn chart(&self) -> plot::Chart<'_> {
        plot::Chart {
            title: self.title,
            note: &self.note,
            x_desc: self.x_desc,
            y_desc: self.y_desc,
            series: &self.series,
            log_x: self.log_x,
            integer_y: self.integer_y,
        }
    }
}

/// Columns `cols` (comma-separated) of every row of a CSV file of a run.
fn read_cols(path: &Path, cols: &str) -> Result<Vec<Vec<String>>, String> {
    let e = |e: csv::Error| format!("{}: {e}", path.display());
    let mut r = csv::Reader::from_path(path).map_err(e)?;
    let h = r.headers().map_err(e)?.clone();
    let idx: Vec<usize> = cols
        .split(',')
        .map(|c| h.iter().position(|x| x == c).expect("own column"))
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.map_err(e)?;
            Ok(idx.iter().map(|&i| rec[i].to_string()).collect())
        })
        .collect()
}

/// The comparison's figures from every seed's outputs: TTFT and E2E CDFs, KV usage, waiting requests
/// and prefix hit rate over time. With several seeds each line is the mean across seeds and a band spans
/// their minimum and maximum ([`plot::quantile_band`], [`plot::hold_band`]).
pub fn figures(root: &Path, names: &[&str], seeds: &[u64]) -> Result<Vec<Figure>, String> {
    let f = |s: &str| s.parse::<f64>().ok();
    let (mut ttft, mut e2e, mut usage, mut queue, mut hit) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in names {
        let (mut t1, mut t2, mut t3, mut t4, mut t5) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &seed in seeds {
            let d = variant_dir(root, seeds, seed, n);
            let req = read_cols(&d.join("requests.csv"), "ttft_s,e2e_s")?;
            t1.push(req.iter().filter_map(|r| f(&r[0])).collect::<Vec<_>>());
            t2.push(req.iter().filter_map(|r| f(&r[1])).collect::<Vec<_>>());
            // Time series: summed over replicas per sample time.
            let ts = read_cols(
                &d.join("timeseries.csv"),
                "time_s,num_requests_waiting,kv_cache_usage_perc,prefix_cache_queries,prefix_cache_hits",
            )?;
            let mut by_t: BTreeMap<u64, [f64; 5]> = BTreeMap::new();
            for r in &ts {
                let t = f(&r[0]).unwrap_or(0.0);
                let e = by_t
                    .entry((t * 1e6).round() as u64)
                    .or_insert([t, 0.0, 0.0, 0.0, 0.0]);
                for k in 1..5 {
                    e[k] += f(&r[k]).unwrap_or(0.0);
                }
            }
            let replicas = (ts.len() / by_t.len().max(1)).max(1) as f64;
            t3.push(by_t.values().map(|v| (v[0], v[2] / replicas)).collect());
            t4.push(by_t.values().map(|v| (v[0], v[1])).collect());
            // Hit rate per 10-sample window, from the cumulative counters (as a Prometheus rate() would).
            // A run that never queries the cache (prefix caching off) hits nothing: a line at zero.
            let pts: Vec<[f64; 5]> = by_t.values().copied().collect();
            let never = pts.last().is_none_or(|p| p[3] == 0.0);
            let mut h = Vec::new();
            for w in pts.windows(11).step_by(5) {
                let (a, b) = (w[0], w[10]);
                let dq = b[3] - a[3];
                if dq > 0.0 {
                    h.push((b[0], (b[4] - a[4]) / dq));
                } else if never {
                    h.push((b[0], 0.0));
                }
            }
            t5.push(h);
        }
        ttft.push(plot::quantile_band(n, &t1));
        e2e.push(plot::quantile_band(n, &t2));
        // Time series are step functions: each value holds until the next row.
        let stepped = |mut s: plot::Series| {
            s.line = steps(s.line);
            s.band = s.band.map(|(lo, hi)| (steps(lo), steps(hi)));
            s
        };
        usage.push(stepped(plot::hold_band(n, &t3)));
        queue.push(stepped(plot::hold_band(n, &t4)));
        hit.push(plot::hold_band(n, &t5));
    }
    let note = if seeds.len() > 1 {
        format!(
            "seeds {}-{}: line = mean over the {} seeds, band = their min-max",
            seeds[0],
            seeds[seeds.len() - 1],
            seeds.len()
        )
    } else {
        format!("seed {}", seeds[0])
    };
    let fig = |file, title, x_desc, y_desc, series, log_x, integer_y| Figure {
        file,
        title,
        note: note.clone(),
        x_desc,
        y_desc,
        series,
        log_x,
        integer_y,
    };
    Ok(vec![
        fig(
            "ttft_cdf",
            "Time to first token: CDF",
            "time to first token (s, log scale)",
            "fraction of requests",
            ttft,
            true,
            false,
        ),
        fig(
            "e2e_cdf",
            "End-to-end latency: CDF",
            "end-to-end latency (s, log scale)",
            "fraction of requests",
            e2e,
            true,
            false,
        ),
        fig(
            "kv_usage",
            "KV-cache usage over time",
            "virtual time (s)",
            "KV usage (fraction of GPU blocks in use)",
            usage,
            false,
            false,
        ),
        fig(
            "queue",
            "Waiting requests over time",
            "virtual time (s)",
            "requests waiting (count, all replicas)",
            queue,
            false,
            true,
        ),
        fig(
            "prefix_hit_rate",
            "Prefix-cache hit rate over time",
            "virtual time (s)",
            "hit rate (hit / queried tokens; 0: cache off)",
            hit,
            false,
            false,
        ),
    ])
}

/// Draws `figs` into `root`, one file each.
/// Writes `figs` into `root`, one file each: SVG as already drawn (`svgs`, in the same order), PNG
/// drawn anew.
fn write_plots(
    root: &Path,
    figs: &[Figure],
    svgs: &[html::Figure],
    format: plot::Format,
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (fig, svg) in figs.iter().zip(svgs) {
        let path = root.join(format!("{}.{}", fig.file, format.ext()));
        match format {
            plot::Format::Svg => {
                std::fs::write(&path, &svg.svg).map_err(|e| format!("{}: {e}", path.display()))?
            }
            plot::Format::Png => plot::lines(&path, format, &fig.chart())?,
        }
        written.push(path);
    }
    Ok(written)
}

/// `v - base` in the columns' own units: integers stay integers, seconds keep six decimals.
fn diff(v: &str, base: &str) -> String {
    if let (Ok(a), Ok(b)) = (v.parse::<i64>(), base.parse::<i64>()) {
        return (a - b).to_string();
    }
    match (v.parse::<f64>(), base.parse::<f64>()) {
        (Ok(a), Ok(b)) => format!("{:.6}", a - b),
        _ => String::new(),
    }
}

/// The widest a table line gets before its variant columns wrap into further blocks (each repeating
/// the metric column).
const TABLE_WIDTH: usize = 120;

/// One cell of the comparison table: a variant's value for a metric and its change from the baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The value (with several seeds, the mean across seeds ± its 95% half-width); `-` when absent.
    pub value: String,
    /// One seed: the relative change (`+12.5%`); several: the paired difference and its interval
    /// (`Δ +0.35 ±0.12 *`). None for the baseline.
    pub change: Option<String>,
    /// Several seeds, and the paired difference's interval excludes zero.
    pub significant: bool,
}

impl Cell {
    /// The cell as one line of text: `value (change)`.
    pub fn text(&self) -> String {
        match &self.change {
            Some(c) => format!("{} ({c})", self.value),
            None => self.value.clone(),
        }
    }
}

/// The legend under a table with several seeds.
const SEEDS_LEGEND: &str = "values: mean over the seeds ± 95% half-width (Student t)\n\
     Δ: paired difference from the first variant, mean over seeds ± 95% half-width; * the interval excludes 0";

/// The comparison table's cells: a row per metric of [`METRICS`], a cell per variant. A variant's value
/// is its metric (with several seeds, the mean across seeds ± its 95% half-width) and, beside the
/// baseline, its change: one seed, the relative change; several seeds, the paired difference from the
/// baseline (mean of the per-seed differences ± its 95% half-width, Student t), marked `*` when that
/// interval excludes zero. `sums` is indexed by seed, then variant.
pub fn table_cells(names: &[&str], sums: &[Vec<Summary>]) -> Vec<Vec<Cell>> {
    let multi = sums.len() > 1;
    METRICS
        .iter()
        .map(|m| {
            let base = mean_ci95(
                &sums
                    .iter()
                    .filter_map(|s| val(&s[0], m))
                    .collect::<Vec<_>>(),
            )
            .0;
            (0..names.len())
                .map(|vi| {
                    let (mean, h) = mean_ci95(
                        &sums
                            .iter()
                            .filter_map(|s| val(&s[vi], m))
                            .collect::<Vec<_>>(),
                    );
                    let mut cell = Cell {
                        value: "-".into(),
                        change: None,
                        significant: false,
                    };
                    if !mean.is_finite() {
                        return cell;
                    }
                    cell.value = match (multi, h) {
                        (true, Some(h)) => {
                            format!("{} ±{}", short(mean), short_at(h, mean.abs().max(h)))
                        }
                        _ => short(mean),
                    };
                    if vi == 0 {
                        return cell;
                    }
                    if multi {
                        // Paired: the difference within each seed, then its mean and interval.
                        let diffs: Vec<f64> = sums
                            .iter()
                            .filter_map(|s| Some(val(&s[vi], m)? - val(&s[0], m)?))
                            .collect();
                        if let (d, Some(h)) = mean_ci95(&diffs) {
                            if d.is_finite() {
                                cell.significant = d.abs() > h;
                                cell.change = Some(format!(
                                    "Δ {}{} ±{}{}",
                                    sign(d),
                                    short(d.abs()),
                                    short_at(h, d.abs().max(h)),
                                    if cell.significant { " *" } else { "" }
                                ));
                            }
                        }
                    } else if base != 0.0 && base.is_finite() {
                        cell.change = Some(format!("{:+.1}%", 100.0 * (mean - base) / base.abs()));
                    }
                    cell
                })
                .collect()
        })
        .collect()
}

/// The terminal table of [`table_cells`]: a row per metric, a column per variant. Columns are as wide
/// as their widest cell, so cells never run together; a grid wider than [`TABLE_WIDTH`] wraps into
/// blocks of columns.
fn render_table(names: &[&str], sums: &[Vec<Summary>]) -> String {
    let multi = sums.len() > 1;
    let rows: Vec<Vec<String>> = table_cells(names, sums)
        .iter()
        .map(|r| r.iter().map(Cell::text).collect())
        .collect();
    let widths: Vec<usize> = (0..names.len())
        .map(|vi| {
            rows.iter()
                .map(|r| r[vi].chars().count())
                .chain([names[vi].chars().count(), 12])
                .max()
                .unwrap_or(12)
                + 2
        })
        .collect();
    let label = METRICS.iter().map(|m| m.len()).max().unwrap_or(0) + 2;
    // Blocks of consecutive variant columns that fit the width (at least one column each).
    let mut blocks: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    let mut used = label;
    for (vi, w) in widths.iter().enumerate() {
        if vi > start && used + w > TABLE_WIDTH {
            blocks.push(start..vi);
            start = vi;
            used = label;
        }
        used += w;
    }
    blocks.push(start..names.len());
    let mut out = String::new();
    for (bi, block) in blocks.iter().enumerate() {
        if bi > 0 {
            out.push('\n');
        }
        let _ = write!(out, "{:<label$}", "metric");
        for vi in block.clone() {
            let w = widths[vi];
            let _ = write!(out, "{:>w$}", names[vi]);
        }
        out.push('\n');
        for (m, row) in METRICS.iter().zip(&rows) {
            let _ = write!(out, "{m:<label$}");
            for vi in block.clone() {
                // Right-aligned by characters (`±` and `Δ` are one character of two bytes).
                let cell = &row[vi];
                let pad = widths[vi].saturating_sub(cell.chars().count());
                let _ = write!(out, "{}{cell}", " ".repeat(pad));
            }
            out.push('\n');
        }
    }
    if multi {
        out += SEEDS_LEGEND;
        out.push('\n');
    }
    out
}

fn sign(x: f64) -> &'static str {
    if x < 0.0 {
        "-"
    } else {
        "+"
    }
}

/// `x` in a few characters: scientific from 1e5, no decimals from 100, two from 1, else four.
fn short(x: f64) -> String {
    short_at(x, x)
}

/// `x` at the precision [`short`] gives `reference` (a half-width printed as its mean is: `1.27 ±0.29`).
fn short_at(x: f64, reference: f64) -> String {
    let a = reference.abs();
    if x == 0.0 {
        "0".into()
    } else if a >= 1e5 {
        format!("{x:.3e}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_series_plot_as_steps() {
        let s = steps([(0.0, 1.0), (5.0, 3.0), (6.0, 2.0)]);
        assert_eq!(
            s,
            [(0.0, 1.0), (5.0, 1.0), (5.0, 3.0), (6.0, 3.0), (6.0, 2.0)]
        );
    }

    #[test]
    fn vary_splits_outside_braces() {
        let v =
            Vary::parse("workload.turns={dist=\"constant\", value=1},{dist=\"constant\", value=3}")
                .unwrap();
        assert_eq!(v.values.len(), 2);
        assert!(Vary::parse("engine.prefix_caching=true").is_err());
        assert!(Vary::parse("nokey").is_err());
    }

    #[test]
    fn grid_of_variants_baseline_first() {
        let vs = variants(&[
            Vary::parse("engine.prefix_caching=true,false").unwrap(),
            Vary::parse("engine.policy=\"fcfs\",\"priority\"").unwrap(),
        ]);
        let names: Vec<_> = vs.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prefix_caching=true+policy=fcfs",
                "prefix_caching=true+policy=priority",
                "prefix_caching=false+policy=fcfs",
                "prefix_caching=false+policy=priority"
            ]
        );
        assert_eq!(
            vs[3].overrides,
            ["engine.prefix_caching=false", "engine.policy=\"priority\""]
        );
    }

    #[test]
    fn variant_names_are_readable_unique_and_decode_to_their_settings() {
        let varies = [
            Vary::parse("cluster.router=\"round_robin\",least_loaded").unwrap(),
            Vary::parse("kv.warm_start=\"\",/tmp/a+b.json,\"1\",1").unwrap(),
            Vary::parse("engine.block_size=16,32").unwrap(),
            Vary::parse("cluster.prefix_aware.block_size=16,64").unwrap(),
            Vary::parse("workload.turns={dist=\"constant\", value=3},{dist=\"constant\", value=4}")
                .unwrap(),
        ];
        let vs = variants(&varies);
        assert_eq!(
            vs[0].name,
            "router=round_robin+warm_start=%22%22+engine.block_size=16+\
             cluster.prefix_aware.block_size=16+turns=%7B%20dist%20%3D%20%22constant%22%2C%20value%20%3D%203%20%7D"
        );
        assert!(vs
            .iter()
            .any(|v| v.name.contains("warm_start=%2Ftmp%2Fa%2Bb.json+")));
        // "1" (a string) and 1 (a number) stay apart.
        assert!(vs.iter().any(|v| v.name.contains("warm_start=%221%22+")));
        assert!(vs.iter().any(|v| v.name.contains("warm_start=1+")));
        let mut names: Vec<&str> = vs.iter().map(|v| v.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), vs.len(), "unique");
        // Every name decodes to its settings: the same keys' values, as TOML reads them.
        for v in &vs {
            let settings = parse_variant_name(&v.name).unwrap();
            assert_eq!(settings.len(), v.overrides.len());
            for ((_, text), o) in settings.iter().zip(&v.overrides) {
                let (_, raw) = o.split_once('=').unwrap();
                assert_eq!(toml_value(text), toml_value(raw), "{}", v.name);
            }
        }
        // Names no grid makes: a bad escape, an escape of bytes that are not UTF-8, no `=`.
        for bad in ["a=%2", "a=%zz1", "a=%FF", "a"] {
            assert_eq!(parse_variant_name(bad), None, "{bad}");
        }
        assert_eq!(
            parse_variant_name("path=%2Ftmp%2Fc.json+router=round_robin"),
            Some(vec![
                ("path".into(), "/tmp/c.json".into()),
                ("router".into(), "round_robin".into())
            ])
        );
    }

    fn summary(pairs: &[(&str, f64)]) -> Summary {
        let mut s = Summary::default();
        for &(k, v) in pairs {
            s.set(k, v);
        }
        s
    }

    #[test]
    fn the_table_shows_the_paired_difference_with_its_interval_and_marks_it_when_it_excludes_zero()
    {
        // Three seeds, p99 TTFT: baseline 0.5, 0.9, 0.1; variant 0.85, 1.3, 0.4. Each variant's own
        // interval is wide (baseline: mean 0.5, sd 0.4, t(2) = 4.3027, half-width 4.3027 x 0.4 / sqrt 3 =
        // 0.9937; variant: mean 0.85, sd 0.45, half-width 1.118), but the per-seed differences 0.35,
        // 0.40, 0.30 have mean 0.35, sd 0.05, half-width 4.3027 x 0.05 / sqrt 3 = 0.1242: it excludes
        // zero, so it is marked.
        // The table's p99 TTFT line for (baseline, variant) values per seed.
        let line_of = |pairs: [(f64, f64); 3]| -> String {
            let seeds: Vec<Vec<Summary>> = pairs
                .iter()
                .map(|&(a, b)| vec![summary(&[("ttft_p99_s", a)]), summary(&[("ttft_p99_s", b)])])
                .collect();
            let t = render_table(&["base", "other"], &seeds);
            t.lines()
                .find(|l| l.starts_with("ttft_p99_s"))
                .unwrap()
                .to_string()
        };
        let line = line_of([(0.5, 0.85), (0.9, 1.3), (0.1, 0.4)]);
        assert!(line.contains("0.5000 ±0.9937"), "{line}");
        assert!(
            line.contains("0.8500 ±1.12 (Δ +0.3500 ±0.1242 *)"),
            "{line}"
        );
        // Differences of both signs (0.35, -0.4, 0.3): the interval spans zero, no mark.
        let line = line_of([(0.5, 0.85), (0.9, 0.5), (0.1, 0.4)]);
        assert!(line.contains("(Δ +0.0833 ±"), "{line}");
        assert!(!line.contains('*'), "{line}");
    }

    #[test]
    fn the_seeds_table_as_a_reader_sees_it() {
        // Three variants over three seeds, several metrics with values of every width; the snapshot is
        // the table printed (update as in `a_wide_grid_wraps_into_blocks_and_no_cells_run_together`).
        let seeds: Vec<Vec<Summary>> = (0..3)
            .map(|s| {
                let s = s as f64;
                (0..3)
                    .map(|v| {
                        let v = v as f64;
                        summary(&[
                            ("completed", 2000.0 + 10.0 * s - 5.0 * v),
                            ("ttft_mean_s", 0.05 + 0.01 * s + 0.03 * v),
                            ("ttft_p99_s", 0.5 + 0.4 * s * (1.0 - s / 2.0) + 0.35 * v),
                            ("prefix_cache_hit_rate", 0.7 - 0.3 * v + 0.01 * s * v),
                            ("kv_cache_evicted_tokens", 2.4e6 * (1.0 + v) + 3.2e4 * s),
                        ])
                    })
                    .collect()
            })
            .collect();
        let t = render_table(
            &["prefix_caching=true", "cpu_gib=64", "cpu_gib=256"],
            &seeds,
        );
        insta::assert_snapshot!("seeds_paired", t);
    }

    #[test]
    fn a_wide_grid_wraps_into_blocks_and_no_cells_run_together() {
        // Nine variants with long names and wide values (a 9-variant grid was 300+ characters wide).
        let names: Vec<String> = (0..9)
            .map(|i| format!("router=consistent_hash+replicas={i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let row: Vec<Summary> = (0..9)
            .map(|i| {
                summary(&[
                    ("ttft_mean_s", 0.0374 + i as f64),
                    ("kv_cache_evicted_tokens", 1.968e7),
                ])
            })
            .collect();
        let t = render_table(&names, &[row]);
        // The whole table as a reader sees it; update with `INSTA_UPDATE=always cargo test` (or
        // `cargo insta review`) and read the diff of the .snap file before committing it.
        insta::assert_snapshot!("wide_grid", t);
        assert!(t.lines().all(|l| l.chars().count() <= TABLE_WIDTH), "{t}");
        for n in &names {
            assert_eq!(t.matches(n).count(), 1, "{n} once: {t}");
        }
        let blocks = t.split("\n\n").count();
        assert!(blocks >= 3, "{t}");
        // Every value line: cells separated by at least two spaces (right-aligned in columns wider
        // than any cell), so no two values touch.
        for l in t.lines().filter(|l| l.starts_with("ttft_mean_s")) {
            let cells: Vec<&str> = l.split("  ").filter(|c| !c.trim().is_empty()).collect();
            assert!(cells.len() >= 2, "{l}");
            assert!(
                cells
                    .iter()
                    .skip(1)
                    .all(|c| !c.trim().contains(' ') || c.contains('(')),
                "{l}"
            );
        }
    }
}
