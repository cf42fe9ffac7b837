//! `servesim capacity`: the planner's two questions, answered by search over simulated runs.
//!
//! - `max-rate`: the highest offered load (sessions per second for a generated workload,
//!   `workload.trace.target_rate` requests per second for a trace) at which the configured system meets
//!   every `[slo]` criterion in steady state: a probe passes when its summary has `slo_met` and `stable`
//!   both true (see `metrics::Collector::stability`). Per seed: bracketing from the configured rate
//!   (doubling or halving), then bisection until the bracket is narrower than `precision` of its lower
//!   end; the answer is the seeds' mean of their highest passing rate, with a Student-t 95% interval of
//!   that mean and the lowest seed's.
//! - `min-replicas`: the fewest `cluster.replicas` meeting the criteria at a given rate: per seed by
//!   doubling then bisection, then every seed is run at the largest of those minima (raised until all
//!   pass) and at one fewer.
//!
//! `--grid` answers each combination of values; `--shard I/N` runs one part of the (combination, seed)
//! searches and [`merge`] joins the parts into the unsharded answer, the same bytes. Both goals assume
//! that meeting the SLOs is monotone in the searched quantity (more load never helps, more replicas never
//! hurt), which holds for the shipped routers and engines up to simulation noise. Searches run on
//! threads (`-j`); probes are deterministic, so the answer and every file are the same bytes whatever the
//! thread count. Every probe is kept in `capacity.csv`.

use crate::config::{Config, WorkloadKind};
use crate::error::{ConfigError, Error, OutputError};
use crate::metrics::output::RunDir;
use crate::metrics::Summary;
use crate::report::{ci::mean_ci95, effective_jobs, html, parallel_map, plot, variants, Vary};
use crate::run::{simulate, SimOptions};
use crate::system::System;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What to search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// The highest rate meeting the SLOs.
    MaxRate,
    /// The fewest replicas meeting the SLOs at `rate`.
    MinReplicas { rate: f64 },
}

/// Options of a capacity search.
#[derive(Clone, Debug)]
pub struct CapacityOptions {
    pub goal: Goal,
    /// Seeds `cfg.seed`, `cfg.seed + 1`, ...
    pub seeds: u32,
    /// Relative width at which the rate bisection stops (0.02: within 2%).
    pub precision: f64,
    /// The largest replica count `min-replicas` tries.
    pub max_replicas: u32,
    /// Searches at once (0: one per core); the results do not depend on it.
    pub jobs: usize,
    pub out: Option<PathBuf>,
    /// Keys and values to search every combination of (`--grid hardware.name=h100-sxm,h200`): one answer
    /// each. Empty: the config alone.
    pub grid: Vec<Vary>,
    /// `(i, n)`: run only shard i of n (1-based) of the (combination, seed) searches and write them as
    /// `capacity-part.json` for [`merge`]. None: run everything and answer.
    pub shard: Option<(u32, u32)>,
    /// Draw `capacity.svg` (or `.png`) beside the answer; None: no plot.
    pub plot: Option<plot::Format>,
    /// A progress bar on stderr (searches done, probes run), drawn only when stderr is a terminal.
    pub progress: bool,
}

/// One simulated run of the search.
#[derive(Clone, Debug)]
pub struct Probe {
    pub seed: u64,
    pub replicas: u32,
    pub rate: f64,
    pub stable: Option<bool>,
    pub queue_growth_per_s: Option<f64>,
    /// The session population and KV usage hold steady after the warm-up (`warmup_settled`).
    pub settled: Option<bool>,
    /// The probe passes: `slo_met` and `stable` both true (a run whose stability is unknown, with fewer
    /// than 10 time-series samples in its window, does not pass).
    pub pass: bool,
    /// Each criterion's measured value (None: no finished request after the warm-up).
    pub values: Vec<Option<f64>>,
    /// Output tokens per second over the run (`output_throughput_tps`), for the costs.
    pub output_tps: Option<f64>,
}

/// A search's result.
#[derive(Clone, Debug)]
pub struct CapacityOutcome {
    /// The answers as a planner would paste them, one line per grid combination.
    pub answer: String,
    /// `capacity.json`: `{"goal", "answers": [one object per combination]}`.
    pub json: serde_json::Value,
    /// Every probe, by combination, then seed, then in search order (then min-replicas' checks of
    /// every seed at the answer and one fewer).
    pub probes: Vec<Probe>,
    /// Per combination, per seed: the highest passing rate (`max-rate`) or the fewest passing replicas
    /// (`min-replicas`); None where none passed within the search's bounds.
    pub per_seed: Vec<Vec<Option<f64>>>,
    pub out_dir: PathBuf,
    /// The plot written (its final path), or why none could be (no font); None when none was asked for.
    pub plot: Option<Result<PathBuf, String>>,
}

/// One grid combination, resolved.
struct Plan {
    name: String,
    cfg: Config,
    start: f64,
    /// The config at the starting rate, and its resolved system (for `resolved.toml` and the price).
    base: Config,
    sys: System,
    price: Option<f64>,
}

/// Halvings or doublings before a bracket search gives up (4096x the starting rate either way).
const MAX_BRACKET_STEPS: u32 = 12;
/// Bisection steps at most (a precision of 1e-6 needs 20 from any bracket the doubling finds).
const MAX_BISECTIONS: u32 = 40;

/// The offered load's unit and its config key.
fn rate_unit(cfg: &Config) -> (&'static str, &'static str) {
    match cfg.workload.kind {
        WorkloadKind::Conversational => ("sessions/s", "workload.session_rate"),
        WorkloadKind::Trace => ("requests/s", "workload.trace.target_rate"),
    }
}

fn rate_of(cfg: &Config) -> Option<f64> {
    match cfg.workload.kind {
        WorkloadKind::Conversational => Some(cfg.workload.session_rate),
        WorkloadKind::Trace => cfg.workload.trace.target_rate,
    }
}

fn with_rate(cfg: &Config, rate: f64, replicas: u32, seed: u64) -> Config {
    let mut c = cfg.clone();
    match c.workload.kind {
        WorkloadKind::Conversational => c.workload.session_rate = rate,
        WorkloadKind::Trace => c.workload.trace.target_rate = Some(rate),
    }
    c.cluster.replicas = replicas;
    c.seed = seed;
    c
}

/// The progress bar on stderr (drawn only when stderr is a terminal): searches done of all, and the
/// probes run so far.
struct Tally {
    bar: indicatif::ProgressBar,
    probes: AtomicU64,
}

impl Tally {
    fn new(show: bool, searches: usize) -> Tally {
        use std::io::IsTerminal;
        let bar = if show && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(searches as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "capacity {bar:30} {pos}/{len} searches, {msg} [{elapsed}]",
            )
            .expect("static template"),
        );
        Tally {
            bar,
            probes: AtomicU64::new(0),
        }
    }

    fn probe_done(&self) {
        let n = self.probes.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(format!("{n} probes"));
    }
}

/// Runs one probe.
fn probe(cfg: &Config, rate: f64, replicas: u32, seed: u64, t: &Tally) -> Result<Probe, Error> {
    let c = with_rate(cfg, rate, replicas, seed);
    let sim = simulate(&c, &SimOptions::default())?;
    t.probe_done();
    Ok(read_probe(&c, &sim.summary, rate, replicas, seed))
}

/// The summary keys a probe records, in order: each `[slo]` criterion, then `success_rate` when
/// `slo.min_success_rate` is set.
fn criterion_keys(cfg: &Config) -> Vec<String> {
    let mut keys: Vec<String> = cfg.slo.criteria.keys().cloned().collect();
    if cfg.slo.min_success_rate.is_some() {
        keys.push("success_rate".into());
    }
    keys
}

fn read_probe(cfg: &Config, s: &Summary, rate: f64, replicas: u32, seed: u64) -> Probe {
    Probe {
        seed,
        replicas,
        rate,
        stable: s.0.get("stable").and_then(|v| v.as_bool()),
        queue_growth_per_s: s.get_f64("queue_growth_per_s"),
        settled: s.0.get("warmup_settled").and_then(|v| v.as_bool()),
        pass: s.0.get("slo_met").and_then(|v| v.as_bool()) == Some(true)
            && s.0.get("stable").and_then(|v| v.as_bool()) == Some(true),
        values: criterion_keys(cfg).iter().map(|k| s.get_f64(k)).collect(),
        output_tps: s.get_f64("output_throughput_tps"),
    }
}

/// Highest passing rate for one seed: bracket from `start`, then bisect to `precision`.
fn max_rate_for_seed(
    cfg: &Config,
    start: f64,
    seed: u64,
    precision: f64,
    t: &Tally,
) -> Result<(Option<f64>, Vec<Probe>), Error> {
    let replicas = cfg.cluster.replicas;
    let mut probes = Vec::new();
    let run = |rate: f64, probes: &mut Vec<Probe>| -> Result<bool, Error> {
        let p = probe(cfg, rate, replicas, seed, t)?;
        let ok = p.pass;
        probes.push(p);
        Ok(ok)
    };
    let (mut lo, mut hi);
    if run(start, &mut probes)? {
        lo = start;
        hi = start * 2.0;
        let mut steps = 0;
        while run(hi, &mut probes)? {
            lo = hi;
            hi *= 2.0;
            steps += 1;
            if steps == MAX_BRACKET_STEPS {
                return Err(ConfigError::invalid(
                    "slo",
                    format!(
                        "the criteria still hold at {lo} (seed {seed}), {}x the starting rate: no load \
                         breaks them (is the workload bounded by max_sessions or max_requests?); set a \
                         criterion that load breaks, such as ttft_p99_s",
                        1u64 << MAX_BRACKET_STEPS
                    ),
                )
                .into());
            }
        }
    } else {
        hi = start;
        lo = start / 2.0;
        let mut steps = 0;
        while !run(lo, &mut probes)? {
            hi = lo;
            lo /= 2.0;
            steps += 1;
            if steps == MAX_BRACKET_STEPS {
                return Ok((None, probes));
            }
        }
    }
    let mut steps = 0;
    while (hi - lo) > precision * lo && steps < MAX_BISECTIONS {
        let mid = 0.5 * (lo + hi);
        if run(mid, &mut probes)? {
            lo = mid;
        } else {
            hi = mid;
        }
        steps += 1;
    }
    Ok((Some(lo), probes))
}

/// Fewest passing replicas for one seed at `rate`: doubling from one, then bisection.
fn min_replicas_for_seed(
    cfg: &Config,
    rate: f64,
    seed: u64,
    max_replicas: u32,
    t: &Tally,
) -> Result<(Option<u32>, Vec<Probe>), Error> {
    let mut probes = Vec::new();
    let run = |n: u32, probes: &mut Vec<Probe>| -> Result<bool, Error> {
        let p = probe(cfg, rate, n, seed, t)?;
        let ok = p.pass;
        probes.push(p);
        Ok(ok)
    };
    let (mut fail, mut pass) = (0u32, 1u32);
    while !run(pass, &mut probes)? {
        if pass >= max_replicas {
            return Ok((None, probes));
        }
        fail = pass;
        pass = pass.saturating_mul(2).min(max_replicas);
    }
    while pass - fail > 1 {
        let mid = fail + (pass - fail) / 2;
        if run(mid, &mut probes)? {
            pass = mid;
        } else {
            fail = mid;
        }
    }
    Ok((Some(pass), probes))
}

/// `cfg` with `overrides` (`key=value`, as `--set` takes them) applied.
fn with_overrides(cfg: &Config, overrides: &[String]) -> Result<Config, ConfigError> {
    if overrides.is_empty() {
        return Ok(cfg.clone());
    }
    let text = toml::to_string(cfg).expect("a config serialises");
    crate::config::Source {
        origin: "--grid",
        text: &text,
    }
    .parse(overrides)
}

/// Resolves one combination: its config, starting rate and system, refusing what cannot be searched.
fn plan(cfg: &Config, name: String, overrides: &[String], goal: Goal) -> Result<Plan, Error> {
    let cfg = with_overrides(cfg, overrides)?;
    if cfg.slo.criteria.is_empty() && cfg.slo.min_success_rate.is_none() {
        return Err(ConfigError::invalid(
            "slo",
            "capacity needs at least one SLO criterion to meet, e.g. --set slo.ttft_p99_s=2.0 or \
             --set slo.min_success_rate=0.99",
        )
        .into());
    }
    if let (Goal::MinReplicas { .. }, Some(_)) = (goal, cfg.cluster.pd_pools()) {
        return Err(ConfigError::invalid(
            "--goal",
            "min-replicas searches cluster.replicas, which a disaggregated cluster takes from its pools; \
             search the prefill:decode split with --goal max-rate --grid cluster.prefill.replicas=1,2,3 \
             --grid cluster.decode.replicas=1,2,3",
        )
        .into());
    }
    let (_, key) = rate_unit(&cfg);
    let start =
        match (goal, rate_of(&cfg)) {
            (Goal::MinReplicas { rate }, _) => rate,
            (Goal::MaxRate, Some(r)) => r,
            (Goal::MaxRate, None) => return Err(ConfigError::invalid(
                key,
                "a trace's capacity is searched over its arrival rate: set a starting rate, e.g. \
                 --set workload.trace.target_rate=5",
            )
            .into()),
        };
    if !(start.is_finite() && start > 0.0) {
        return Err(
            ConfigError::invalid(key, format!("must be a positive rate, got {start}")).into(),
        );
    }
    let base = with_rate(&cfg, start, cfg.cluster.replicas.max(1), cfg.seed);
    let sys = System::resolve(&base)?;
    let price = cfg.hardware.price_per_hour.or(sys.hardware.price_per_hour);
    Ok(Plan {
        name,
        cfg,
        start,
        base,
        sys,
        price,
    })
}

/// What a capacity command searches, resolved: the combinations, the seeds, and their searches in a
/// fixed order (combination-major), which sharding partitions.
struct Prep {
    name: String,
    plans: Vec<Plan>,
    seeds: Vec<u64>,
    items: Vec<(usize, u64)>,
}

/// One search's result: its answer (per seed) and its probes.
type Searched = (Option<f64>, Vec<Probe>);

fn check_options(o: &CapacityOptions) -> Result<(), Error> {
    if o.seeds == 0 {
        return Err(ConfigError::invalid("--seeds", "must be at least 1").into());
    }
    if !(o.precision.is_finite() && o.precision >= 1e-6 && o.precision <= 0.5) {
        return Err(ConfigError::invalid(
            "--precision",
            format!("must be between 1e-6 and 0.5, got {}", o.precision),
        )
        .into());
    }
    if let Goal::MinReplicas { .. } = o.goal {
        if o.max_replicas == 0 {
            return Err(ConfigError::invalid("--max-replicas", "must be at least 1").into());
        }
    }
    if let Some((i, n)) = o.shard {
        if n == 0 || i == 0 || i > n {
            return Err(ConfigError::invalid(
                "--shard",
                format!("{i}/{n} is not a shard; use I/N with 1 <= I <= N"),
            )
            .into());
        }
    }
    Ok(())
}

fn prepare(cfg: &Config, o: &CapacityOptions, plans: Vec<Plan>) -> Result<Prep, Error> {
    // A trace replays the same arrivals whatever the seed: one search is all there is.
    let last = if cfg.workload.kind == WorkloadKind::Trace {
        cfg.seed
    } else {
        cfg.seed.saturating_add(o.seeds as u64 - 1)
    };
    crate::config::check_seed(last, "--seeds")?;
    let seeds: Vec<u64> = (cfg.seed..=last).collect();
    let items: Vec<(usize, u64)> = (0..plans.len())
        .flat_map(|p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    Ok(Prep {
        name: cfg.name.clone(),
        plans,
        seeds,
        items,
    })
}

fn search(prep: &Prep, o: &CapacityOptions, item: usize, t: &Tally) -> Result<Searched, Error> {
    let (p, seed) = prep.items[item];
    let pl = &prep.plans[p];
    let r = match o.goal {
        Goal::MaxRate => max_rate_for_seed(&pl.cfg, pl.start, seed, o.precision, t),
        Goal::MinReplicas { rate } => min_replicas_for_seed(&pl.cfg, rate, seed, o.max_replicas, t)
            .map(|(n, p)| (n.map(|n| n as f64), p)),
    };
    t.bar.inc(1);
    r
}

/// Runs the search `o` on `cfg` (each `--grid` combination of it) and writes `capacity.csv` (every
/// probe), `capacity.json` (the answers) and `resolved.toml` (the first combination's config) into the
/// output directory; with `o.shard`, only that shard's searches, as `capacity-part.json`. Every
/// combination is resolved before anything runs or is written.
pub fn capacity(cfg: &Config, o: &CapacityOptions) -> Result<CapacityOutcome, Error> {
    check_options(o)?;
    let combos = variants(&o.grid);
    if combos.len().saturating_mul(o.seeds as usize) > MAX_SEARCHES {
        return Err(ConfigError::invalid(
            "--grid / --seeds",
            format!(
                "{} combinations x {} seeds is more than {MAX_SEARCHES} searches; search fewer",
                combos.len(),
                o.seeds
            ),
        )
        .into());
    }
    let plans = combos
        .into_iter()
        .map(|v| plan(cfg, v.name, &v.overrides, o.goal))
        .collect::<Result<Vec<_>, _>>()?;
    let prep = prepare(cfg, o, plans)?;
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(format!("capacity-{}", cfg.name)));
    let dir = RunDir::create(&out)?;
    let mine: Vec<usize> = match o.shard {
        None => (0..prep.items.len()).collect(),
        Some((i, n)) => (0..prep.items.len())
            .filter(|k| k % n as usize == (i - 1) as usize)
            .collect(),
    };
    let jobs = effective_jobs(o.jobs, mine.len());
    let t = Tally::new(o.progress, mine.len());
    let results = parallel_map(&mine, jobs, |&k| search(&prep, o, k, &t))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let done = match o.shard {
        None => finish(&prep, o, results, dir, &t),
        Some((i, n)) => {
            let part = part_json(&prep, o, i, n, &mine, &results);
            let path = dir.file("capacity-part.json");
            let text = serde_json::to_string(&part).expect("JSON serialises") + "\n";
            std::fs::write(&path, text).map_err(|source| OutputError::Io { path, source })?;
            let out_dir = dir.commit()?;
            let probes: Vec<Probe> = results.into_iter().flat_map(|r| r.1).collect();
            Ok(CapacityOutcome {
                answer: format!(
                    "shard {i}/{n}: {} of {} searches; join the shards with `servesim merge`",
                    mine.len(),
                    prep.items.len()
                ),
                json: part,
                probes,
                per_seed: Vec::new(),
                out_dir,
                plot: None,
            })
        }
    };
    t.bar.finish_and_clear();
    done
}

/// The format of `capacity-part.json`.
const PART_FORMAT: &str = "servesim-capacity-part-2";

fn goal_json(g: Goal) -> serde_json::Value {
    match g {
        Goal::MaxRate => json!({"goal": "max-rate"}),
        Goal::MinReplicas { rate } => json!({"goal": "min-replicas", "rate_bits": rate.to_bits()}),
    }
}

fn bits(x: Option<f64>) -> serde_json::Value {
    x.map_or(serde_json::Value::Null, |v| json!(v.to_bits()))
}

/// A shard's searches, with everything `merge` needs to finish the answer: the options, each
/// combination's config (TOML) and each search's probes, numbers as their exact f64 bits.
fn part_json(
    prep: &Prep,
    o: &CapacityOptions,
    i: u32,
    n: u32,
    mine: &[usize],
    results: &[Searched],
) -> serde_json::Value {
    json!({
        "format": PART_FORMAT,
        "servesim_version": env!("CARGO_PKG_VERSION"),
        "shard": i, "shards": n,
        "name": prep.name,
        "goal": goal_json(o.goal),
        "seeds": o.seeds, "precision_bits": o.precision.to_bits(), "max_replicas": o.max_replicas,
        "plans": prep.plans.iter().map(|p| json!({
            "name": p.name,
            "config": toml::to_string(&p.cfg).expect("a config serialises"),
        })).collect::<Vec<_>>(),
        "searches": prep.items.len(),
        "results": mine.iter().zip(results).map(|(k, (best, probes))| json!({
            "search": k,
            "best": bits(*best),
            "probes": probes.iter().map(|p| json!([
                p.seed, p.replicas, p.rate.to_bits(), p.stable, bits(p.queue_growth_per_s), p.pass,
                p.values.iter().map(|v| bits(*v)).collect::<Vec<_>>(), bits(p.output_tps),
                p.settled,
            ])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Joins the shards in `dirs` (each a `capacity --shard I/N` output directory, every I of one N
/// exactly once, from one command line) into the answer the unsharded command gives, the same bytes.
pub fn merge(
    dirs: &[PathBuf],
    out: Option<PathBuf>,
    plot: Option<plot::Format>,
) -> Result<CapacityOutcome, Error> {
    if dirs.is_empty() {
        return Err(ConfigError::invalid("merge", "give the shards' directories").into());
    }
    let bad = |path: &Path, m: String| -> Error {
        ConfigError::Parse {
            origin: path.display().to_string(),
            message: m,
        }
        .into()
    };
    let mut parts = Vec::new();
    for d in dirs {
        let path = d.join("capacity-part.json");
        let text = crate::input::read_text(crate::input::InputKind::CapacityPart, &path)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(&path, format!("not a capacity shard ({e})")))?;
        if v["format"] != PART_FORMAT {
            return Err(bad(
                &path,
                format!("not a {PART_FORMAT} file; re-run the shard with this servesim"),
            ));
        }
        parts.push((path, v));
    }
    let (first_path, first) = &parts[0];
    let same = [
        "name",
        "goal",
        "seeds",
        "precision_bits",
        "max_replicas",
        "plans",
        "searches",
        "shards",
    ];
    for (path, p) in &parts[1..] {
        if let Some(k) = same.iter().find(|k| p[**k] != first[**k]) {
            return Err(bad(
                path,
                format!(
                    "its {k} differs from {}'s: shards of one command line only",
                    first_path.display()
                ),
            ));
        }
    }
    let n = first["shards"].as_u64().unwrap_or(0);
    let mut seen: Vec<u64> = parts
        .iter()
        .map(|(_, p)| p["shard"].as_u64().unwrap_or(0))
        .collect();
    seen.sort_unstable();
    if seen != (1..=n).collect::<Vec<_>>() {
        return Err(ConfigError::invalid(
            "merge",
            format!("the shards given are {seen:?}; give each of 1..={n} exactly once"),
        )
        .into());
    }
    let num = |v: &serde_json::Value| {
        v.as_u64()
            .ok_or_else(|| bad(first_path, "a malformed number".into()))
    };
    let f = |v: &serde_json::Value| -> Result<Option<f64>, Error> {
        if v.is_null() {
            Ok(None)
        } else {
            Ok(Some(f64::from_bits(num(v)?)))
        }
    };
    let goal = match first["goal"]["goal"].as_str() {
        Some("max-rate") => Goal::MaxRate,
        Some("min-replicas") => Goal::MinReplicas {
            rate: f64::from_bits(num(&first["goal"]["rate_bits"])?),
        },
        _ => return Err(bad(first_path, "an unknown goal".into())),
    };
    let o = CapacityOptions {
        goal,
        seeds: num(&first["seeds"])? as u32,
        precision: f64::from_bits(num(&first["precision_bits"])?),
        max_replicas: num(&first["max_replicas"])? as u32,
        jobs: 0,
        out: None,
        grid: Vec::new(),
        shard: None,
        plot,
        progress: false,
    };
    let mut plans = Vec::new();
    for p in first["plans"].as_array().into_iter().flatten() {
        let text = p["config"].as_str().unwrap_or_default();
        let cfg = crate::config::Source {
            origin: "capacity shard",
            text,
        }
        .parse(&[])?;
        plans.push(plan(
            &cfg,
            p["name"].as_str().unwrap_or_default().to_string(),
            &[],
            goal,
        )?);
    }
    if plans.is_empty() {
        return Err(bad(first_path, "no combinations".into()));
    }
    let base = plans[0].cfg.clone();
    let prep = prepare(&base, &o, plans)?;
    let total = prep.items.len();
    if num(&first["searches"])? as usize != total {
        return Err(bad(
            first_path,
            "its searches do not match its combinations and seeds".into(),
        ));
    }
    let mut results: Vec<Option<Searched>> = (0..total).map(|_| None).collect();
    for (path, p) in &parts {
        for r in p["results"].as_array().into_iter().flatten() {
            let k = num(&r["search"])? as usize;
            let mut probes = Vec::new();
            for q in r["probes"].as_array().into_iter().flatten() {
                let values = q[6]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(&f)
                    .collect::<Result<Vec<_>, _>>()?;
                probes.push(Probe {
                    seed: num(&q[0])?,
                    replicas: num(&q[1])? as u32,
                    rate: f64::from_bits(num(&q[2])?),
                    stable: q[3].as_bool(),
                    queue_growth_per_s: f(&q[4])?,
                    pass: q[5].as_bool() == Some(true),
                    values,
                    output_tps: f(&q[7])?,
                    settled: q[8].as_bool(),
                });
            }
            match results.get_mut(k) {
                Some(slot @ None) => *slot = Some((f(&r["best"])?, probes)),
                _ => {
                    return Err(bad(
                        path,
                        format!("search {k} is out of range or given twice"),
                    ))
                }
            }
        }
    }
    let results = results
        .into_iter()
        .enumerate()
        .map(|(k, r)| r.ok_or_else(|| bad(first_path, format!("no shard holds search {k}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let out = out.unwrap_or_else(|| Path::new("results").join(format!("capacity-{}", prep.name)));
    let dir = RunDir::create(&out)?;
    finish(&prep, &o, results, dir, &Tally::new(false, 0))
}

/// Answers from every search's result (in `prep.items` order) and writes the answer's files.
fn finish(
    prep: &Prep,
    o: &CapacityOptions,
    results: Vec<Searched>,
    dir: RunDir,
    t: &Tally,
) -> Result<CapacityOutcome, Error> {
    let (plans, seeds, items) = (&prep.plans, &prep.seeds, &prep.items);
    let mut per_plan: Vec<(Vec<Option<f64>>, Vec<Probe>)> =
        plans.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for ((p, _), (best, probes)) in items.iter().zip(results) {
        per_plan[*p].0.push(best);
        per_plan[*p].1.extend(probes);
    }
    // min-replicas answers the count that passes on every seed: each seed is run at the largest of the
    // seeds' own minima (and at one fewer, for the report), and the count raised until all pass.
    let mut needs: Vec<Option<u32>> = vec![None; plans.len()];
    if let Goal::MinReplicas { rate } = o.goal {
        for (i, pl) in plans.iter().enumerate() {
            let (per_seed, probes) = &mut per_plan[i];
            if per_seed.iter().any(|s| s.is_none()) {
                continue;
            }
            let mut need = per_seed.iter().flatten().fold(0.0f64, |a, &b| a.max(b)) as u32;
            loop {
                let mut all = true;
                for n in [need, need - 1] {
                    for &seed in seeds {
                        if n == 0 || probes.iter().any(|p| p.seed == seed && p.replicas == n) {
                            continue;
                        }
                        probes.push(probe(&pl.cfg, rate, n, seed, t)?);
                    }
                }
                for &seed in seeds {
                    all &= probes
                        .iter()
                        .filter(|p| p.seed == seed && p.replicas == need)
                        .all(|p| p.pass);
                }
                if all {
                    needs[i] = Some(need);
                    break;
                }
                if need >= o.max_replicas {
                    break;
                }
                need += 1;
            }
        }
    }
    let grid = plans.len() > 1 || !plans[0].name.is_empty();
    let mut lines = Vec::new();
    let mut answers = Vec::new();
    for ((pl, (per_seed, probes)), need) in plans.iter().zip(&per_plan).zip(&needs) {
        let c = &pl.cfg;
        let (unit, _) = rate_unit(c);
        let criteria: Vec<String> = c
            .slo
            .criteria
            .iter()
            .map(|(k, v)| format!("{k}<={v}"))
            .collect();
        let system = match (&c.cluster.prefill, &c.cluster.decode, c.cluster.pd_pools()) {
            (Some(p), Some(d), Some(_)) => {
                let pool = |x: &crate::config::PoolConfig| {
                    format!(
                        "{} x {} (TP{})",
                        x.replicas,
                        x.hardware.as_deref().unwrap_or(&c.hardware.name),
                        x.tensor_parallel.unwrap_or(c.hardware.tensor_parallel)
                    )
                };
                format!(
                    "{} on {} prefill + {} decode",
                    c.model.name,
                    pool(p),
                    pool(d)
                )
            }
            _ => format!(
                "{} on {} x {} (TP{}, {})",
                c.model.name,
                match o.goal {
                    Goal::MaxRate => c.cluster.replicas.to_string(),
                    Goal::MinReplicas { .. } => "N".into(),
                },
                c.hardware.name,
                c.hardware.tensor_parallel,
                crate::run::enum_name(c.cluster.router)
                    .as_str()
                    .unwrap_or_default()
            ),
        };
        let (mut line, mut json) = match o.goal {
            Goal::MaxRate => answer_max_rate(pl, &system, unit, &criteria, per_seed, probes),
            Goal::MinReplicas { rate } => {
                answer_min_replicas(pl, &system, unit, rate, &criteria, per_seed, *need, probes)
            }
        };
        if grid {
            line = format!("{}: {line}", pl.name);
        }
        json["variant"] = json!(pl.name);
        lines.push(line);
        answers.push(json);
    }
    // With disaggregated combinations in the grid: the combination (split or aggregated) that serves
    // the most load per GPU, and per unit of cost where every combination has a price.
    let pd_grid = plans.iter().any(|pl| pl.cfg.cluster.pd_pools().is_some());
    let answered: Vec<(&Plan, f64)> = plans
        .iter()
        .zip(&answers)
        .filter_map(|(pl, a)| Some((pl, a["answer"].as_f64()?)))
        .collect();
    // The first of equals wins (the grid's order).
    fn first_max(v: Vec<(&Plan, f64, f64)>) -> Option<(&Plan, f64, f64)> {
        v.into_iter().fold(None, |best, x| match best {
            Some(b) if b.2 >= x.2 => Some(b),
            _ => Some(x),
        })
    }
    let best = first_max(
        answered
            .iter()
            .map(|&(pl, rate)| (pl, rate, rate / pl.cfg.gpus().max(1) as f64))
            .collect(),
    )
    .filter(|_| pd_grid);
    let per_cost: Option<Vec<(&Plan, f64, f64)>> = answered
        .iter()
        .map(|&(pl, rate)| Some((pl, rate, rate / hourly(pl, pl.cfg.gpus())?)))
        .collect();
    let best_cost = per_cost.and_then(first_max).filter(|_| pd_grid);
    let mut json = json!({
        "goal": match o.goal { Goal::MaxRate => "max-rate", Goal::MinReplicas { .. } => "min-replicas" },
        "answers": answers,
    });
    if let (Some((pl, rate, per_gpu)), true) = (best, grid) {
        let (unit, _) = rate_unit(&pl.cfg);
        lines.push(format!(
            "most load per GPU: {} ({per_gpu:.3} {unit} per GPU: {rate:.3} on {} GPUs)",
            pl.name,
            pl.cfg.gpus()
        ));
        json["best_per_gpu"] =
            json!({"variant": pl.name, "answer": rate, "per_gpu": per_gpu, "gpus": pl.cfg.gpus()});
    }
    if let (Some((pl, rate, per_cost)), true) = (best_cost, grid) {
        let (unit, _) = rate_unit(&pl.cfg);
        lines.push(format!(
            "most load per unit of cost: {} ({per_cost:.4} {unit} per unit per hour: {rate:.3} at {:.2} per hour)",
            pl.name,
            rate / per_cost
        ));
        json["best_per_cost"] =
            json!({"variant": pl.name, "answer": rate, "per_cost_per_hour": per_cost});
    }
    write_probes_csv(&dir.file("capacity.csv"), plans, &per_plan)?;
    // The first combination's config as resolved at the starting rate and replica count: the directory
    // is re-creatable, and a later search may replace it.
    let resolved = crate::run::resolved_toml(&plans[0].base, &plans[0].sys);
    std::fs::write(dir.file("resolved.toml"), &resolved).map_err(|source| OutputError::Io {
        path: dir.file("resolved.toml"),
        source,
    })?;
    let text = serde_json::to_string_pretty(&json).expect("JSON serialises") + "\n";
    std::fs::write(dir.file("capacity.json"), text).map_err(|source| OutputError::Io {
        path: dir.file("capacity.json"),
        source,
    })?;
    // A missing font skips the plot (reported), never the answer.
    let (plot, figure) = match o.plot {
        Some(format) => {
            let name = format!("capacity.{}", format.ext());
            let svg = draw_probes(
                Some((&dir.file(&name), format)),
                o.goal,
                plans,
                &per_plan,
                &answers,
            );
            (Some(svg.clone().map(|_| name)), svg)
        }
        None => (None, draw_probes(None, o.goal, plans, &per_plan, &answers)),
    };
    let probes_csv = || -> Result<(Vec<String>, Vec<Vec<String>>), csv::Error> {
        let mut r = csv::Reader::from_path(dir.file("capacity.csv"))?;
        let header = r.headers()?.iter().map(str::to_string).collect();
        let rows = r
            .records()
            .map(|rec| Ok(rec?.iter().map(str::to_string).collect()))
            .collect::<Result<_, csv::Error>>()?;
        Ok((header, rows))
    };
    let page = html::capacity_page(&html::CapacityPage {
        title: format!("servesim capacity: {}", prep.name),
        answers: lines.clone(),
        figure: figure.map(|svg| html::Figure {
            title: "probes against the searched quantity".into(),
            svg,
        }),
        probes: probes_csv().map_err(|source| OutputError::Csv {
            path: dir.file("capacity.csv"),
            source,
        })?,
        settings: resolved,
    });
    std::fs::write(dir.file("report.html"), page).map_err(|source| OutputError::Io {
        path: dir.file("report.html"),
        source,
    })?;
    let out_dir = dir.commit()?;
    let plot = plot.map(|r| r.map(|name| out_dir.join(name)));
    let (per_seed, probes): (Vec<_>, Vec<_>) = per_plan.into_iter().unzip();
    Ok(CapacityOutcome {
        answer: lines.join("\n"),
        json,
        probes: probes.into_iter().flatten().collect(),
        per_seed,
        out_dir,
        plot,
    })
}

/// The probe plot as SVG text, also drawn to `file` (path, format) where given: one panel per criterion
/// (of the first combination; other combinations appear where they have the same criterion), each
/// probe's measured value against the searched rate or replica count, the target, and each combination's
/// answer (with its 95% interval for `max-rate`).
fn draw_probes(
    file: Option<(&Path, plot::Format)>,
    goal: Goal,
    plans: &[Plan],
    per_plan: &[(Vec<Option<f64>>, Vec<Probe>)],
    answers: &[serde_json::Value],
) -> Result<String, String> {
    let (unit, _) = rate_unit(&plans[0].cfg);
    let x_desc = match goal {
        Goal::MaxRate => format!("offered load ({unit})"),
        Goal::MinReplicas { rate } => format!("replicas (at {rate} {unit})"),
    };
    let panels: Vec<plot::ProbePanel> = plans[0]
        .cfg
        .slo
        .criteria
        .iter()
        .map(|(key, &target)| plot::ProbePanel {
            title: format!("{key} (target {target} s)"),
            y_desc: format!("{key} (s)"),
            target,
            series: plans
                .iter()
                .zip(per_plan)
                .zip(answers)
                .filter_map(|((pl, (_, probes)), a)| {
                    let k = pl.cfg.slo.criteria.keys().position(|c| c == key)?;
                    let points = probes
                        .iter()
                        .filter_map(|p| {
                            let x = match goal {
                                Goal::MaxRate => p.rate,
                                Goal::MinReplicas { .. } => p.replicas as f64,
                            };
                            Some((x, p.values[k]?, p.pass))
                        })
                        .collect();
                    let band = match (a["ci95_low"].as_f64(), a["ci95_high"].as_f64()) {
                        (Some(lo), Some(hi)) => Some((lo, hi)),
                        _ => None,
                    };
                    Some(plot::ProbeSeries {
                        name: if pl.name.is_empty() {
                            "probes".into()
                        } else {
                            pl.name.clone()
                        },
                        points,
                        answer: a["answer"].as_f64(),
                        band,
                    })
                })
                .collect(),
        })
        .collect();
    let (low, integer) = (goal == Goal::MaxRate, goal != Goal::MaxRate);
    let svg = plot::probe_panels_svg(&x_desc, &panels, low, integer)?;
    match file {
        Some((path, plot::Format::Svg)) => {
            std::fs::write(path, &svg).map_err(|e| format!("{}: {e}", path.display()))?
        }
        Some((path, format)) => plot::probe_panels(path, format, &x_desc, &panels, low, integer)?,
        None => {}
    }
    Ok(svg)
}

/// Searches (combinations x seeds) one command may run.
const MAX_SEARCHES: usize = 10_000;

/// Costs at an answer: `gpus` GPUs at the plan's price serving `rate` (sessions or requests per second)
/// and `tps` output tokens per second. (JSON fields, text for the answer line); none without a price.
fn costs(
    pl: &Plan,
    gpus: u32,
    rate: f64,
    tps: Option<f64>,
    unit: &str,
) -> (serde_json::Value, String) {
    let Some(per_hour) = hourly(pl, gpus) else {
        // A pool on a GPU without a price leaves the split unpriced: said, not silently dropped.
        let note = match (pl.cfg.cluster.pd_pools(), pl.price) {
            (Some(_), Some(_)) => {
                "; no cost: a pool's GPU has no price (give it price_per_hour in a \
                                   hardware.catalog file)"
                    .to_string()
            }
            _ => String::new(),
        };
        return (json!({"gpus": gpus, "price_per_hour": null}), note);
    };
    // The mean price per GPU in a disaggregated cluster (each pool at its own), else the price.
    let price = match (pl.cfg.cluster.pd_pools(), pl.price) {
        (None, Some(p)) => p,
        _ => per_hour / gpus.max(1) as f64,
    };
    let per_mtok = tps
        .filter(|t| *t > 0.0)
        .map(|t| per_hour / (t * 3600.0) * 1e6);
    let each = if unit.starts_with("sessions") {
        "session"
    } else {
        "request"
    };
    let per_each = per_hour / (rate * 3600.0);
    let text = format!(
        "; {gpus} GPU(s) at {} per GPU-hour: {per_hour:.2} per hour, {} per million output tokens, \
         {per_each:.5} per {each}",
        // A split's mean price per GPU, to the cent; a plain price as given.
        match pl.cfg.cluster.pd_pools() {
            Some(_) => format!("{price:.2} (mean)"),
            None => price.to_string(),
        },
        per_mtok.map_or("n/a".to_string(), |c| format!("{c:.3}"))
    );
    (
        json!({"gpus": gpus, "price_per_hour": price, "cost_per_hour": per_hour,
               "cost_per_million_output_tokens": per_mtok, format!("cost_per_{each}"): per_each}),
        text,
    )
}

/// What `gpus` GPUs of plan `pl` cost per hour: at the plan's price per GPU, or, in a disaggregated
/// cluster, each pool's GPUs at its own GPU's price (a pool on the top-level GPU at `pl.price`, which
/// `hardware.price_per_hour` overrides; another at its catalog price). None where a price is unknown.
fn hourly(pl: &Plan, gpus: u32) -> Option<f64> {
    let c = &pl.cfg;
    match (&c.cluster.prefill, &c.cluster.decode, c.cluster.pd_pools()) {
        (Some(p), Some(d), Some(_)) => [(p, 1), (d, 2)]
            .into_iter()
            .map(|(pool, m)| {
                let price = match &pool.hardware {
                    Some(h) if *h != c.hardware.name => pl.sys.of_model(m).hardware.price_per_hour,
                    _ => pl.price,
                }?;
                let tp = pool.tensor_parallel.unwrap_or(c.hardware.tensor_parallel);
                Some(price * (pool.replicas * tp) as f64)
            })
            .sum(),
        _ => pl.price.map(|p| p * gpus as f64),
    }
}

/// Each criterion's mean over `probes` (those with a value), in the config's criterion order, then the
/// success rate when `slo.min_success_rate` is set.
fn mean_values(cfg: &Config, probes: &[&Probe]) -> Vec<(String, Option<f64>)> {
    criterion_keys(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let v: Vec<f64> = probes
                .iter()
                .filter_map(|p| p.values.get(i).copied().flatten())
                .collect();
            (
                k,
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64),
            )
        })
        .collect()
}

fn describe_values(v: &[(String, Option<f64>)]) -> String {
    v.iter()
        .map(|(k, x)| match x {
            Some(x) => format!("{k} {x:.3}"),
            None => format!("{k} n/a"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn answer_max_rate(
    pl: &Plan,
    system: &str,
    unit: &str,
    criteria: &[String],
    per_seed: &[Option<f64>],
    probes: &[Probe],
) -> (String, serde_json::Value) {
    let found: Vec<f64> = per_seed.iter().flatten().copied().collect();
    let n = per_seed.len();
    if found.len() < n {
        let answer = format!(
            "{system} misses {} on {} of {n} seed(s) even at the lowest rate tried",
            criteria.join(", "),
            n - found.len()
        );
        let json = json!({"goal": "max-rate", "unit": unit, "criteria": criteria, "answer": null,
                          "per_seed": per_seed, "note": answer});
        return (answer, json);
    }
    let (mean, half) = mean_ci95(&found);
    // The passing probe each seed ended on, and the failing one just above it.
    let at: Vec<&Probe> = per_seed
        .iter()
        .zip(seeds_of(probes))
        .filter_map(|(best, seed)| {
            probes
                .iter()
                .find(|p| p.seed == seed && Some(p.rate) == *best && p.pass)
        })
        .collect();
    let above: Vec<&Probe> = seeds_of(probes)
        .into_iter()
        .filter_map(|seed| {
            probes
                .iter()
                .filter(|p| p.seed == seed && !p.pass)
                .min_by(|a, b| a.rate.total_cmp(&b.rate))
        })
        .collect();
    let cfg = &pl.cfg;
    let at_v = mean_values(cfg, &at);
    let above_v = mean_values(cfg, &above);
    let lowest = found.iter().copied().fold(f64::INFINITY, f64::min);
    let ci = match half {
        Some(h) => format!(
            " (mean of {n} seeds' highest passing rates; 95% CI of the mean [{:.3}, {:.3}]; lowest \
             seed {lowest:.3})",
            mean - h,
            mean + h
        ),
        None => " (1 seed: no interval)".into(),
    };
    let mut answer = format!(
        "{system} meets {} with a stable queue up to {mean:.3} {unit}{ci}; at each seed's highest passing \
         rate (mean) {}",
        criteria.join(", "),
        describe_values(&at_v)
    );
    if !above.is_empty() {
        let unstable = above.iter().filter(|p| p.stable == Some(false)).count();
        answer += &format!(
            "; at each seed's lowest failing rate (mean {:.3} {unit}) {}{}",
            above.iter().map(|p| p.rate).sum::<f64>() / above.len() as f64,
            describe_values(&above_v),
            if unstable > 0 {
                format!(", unstable on {unstable} of {} seed(s)", above.len())
            } else {
                String::new()
            }
        );
    }
    answer += &trending_note(&at);
    let (cost, cost_text) = costs(pl, cfg.gpus(), mean, mean_tps(&at), unit);
    answer += &cost_text;
    let json = json!({
        "goal": "max-rate", "unit": unit, "criteria": criteria,
        "answer": mean, "ci95_low": half.map(|h| mean - h), "ci95_high": half.map(|h| mean + h),
        "seeds": n, "per_seed": per_seed, "lowest_seed": lowest,
        "at_answer": at_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "just_above": above_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "cost": cost,
        "probes": probes.len(),
    });
    (answer, json)
}

#[allow(clippy::too_many_arguments)]
fn answer_min_replicas(
    pl: &Plan,
    system: &str,
    unit: &str,
    rate: f64,
    criteria: &[String],
    per_seed: &[Option<f64>],
    need: Option<u32>,
    probes: &[Probe],
) -> (String, serde_json::Value) {
    let n_seeds = per_seed.len();
    let Some(need) = need else {
        let answer = format!(
            "{system} misses {} at {rate} {unit} on some of {n_seeds} seed(s) with up to the largest \
             replica count tried; raise --max-replicas",
            criteria.join(", ")
        );
        let json = json!({"goal": "min-replicas", "rate": rate, "unit": unit, "criteria": criteria,
                          "answer": null, "per_seed": per_seed, "note": answer});
        return (answer, json);
    };
    let at: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.replicas == need && p.pass)
        .collect();
    let below: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.replicas + 1 == need && !p.pass)
        .collect();
    let cfg = &pl.cfg;
    let at_v = mean_values(cfg, &at);
    let below_v = mean_values(cfg, &below);
    let mut answer = format!(
        "{} replicas of {} serve {rate} {unit} within {} on all {n_seeds} seed(s): {}",
        need,
        system.replace(" N x ", " "),
        criteria.join(", "),
        describe_values(&at_v)
    );
    if need > 1 && !below.is_empty() {
        answer += &format!(
            "; {} replica(s) miss on {} seed(s): {}",
            need - 1,
            below.len(),
            describe_values(&below_v)
        );
    }
    answer += &trending_note(&at);
    let (cost, cost_text) = costs(
        pl,
        need * cfg.hardware.tensor_parallel,
        rate,
        mean_tps(&at),
        unit,
    );
    answer += &cost_text;
    let json = json!({
        "goal": "min-replicas", "rate": rate, "unit": unit, "criteria": criteria,
        "answer": need, "seeds": n_seeds, "per_seed": per_seed,
        "at_answer": at_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "one_fewer": below_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "cost": cost,
        "probes": probes.len(),
    });
    (answer, json)
}

/// A warning when probes at the answer had not reached a steady state: their session population or KV
/// usage was still trending after the warm-up, so the window is shorter than the workload needs and a
/// longer run may fail where these passed.
fn trending_note(at: &[&Probe]) -> String {
    let trending = at.iter().filter(|p| p.settled == Some(false)).count();
    if trending == 0 {
        return String::new();
    }
    format!(
        "; WARNING: on {trending} of {} seed(s) at the answer the session population or KV usage was \
         still trending after the warm-up (warmup_settled = false): not yet steady state, and a longer \
         workload.duration_s may fail where these passed",
        at.len()
    )
}

/// Mean output tokens per second over `probes` that report it.
fn mean_tps(probes: &[&Probe]) -> Option<f64> {
    let v: Vec<f64> = probes.iter().filter_map(|p| p.output_tps).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The seeds of `probes`, in their first-appearance order.
fn seeds_of(probes: &[Probe]) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for p in probes {
        if !v.contains(&p.seed) {
            v.push(p.seed);
        }
    }
    v
}

fn write_probes_csv(
    path: &Path,
    plans: &[Plan],
    per_plan: &[(Vec<Option<f64>>, Vec<Probe>)],
) -> Result<(), OutputError> {
    let err = |source: csv::Error| OutputError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    // One criterion column per key any combination names (a grid may vary the criteria).
    let mut keys: Vec<String> = plans.iter().flat_map(|p| criterion_keys(&p.cfg)).collect();
    keys.sort();
    keys.dedup();
    let mut header = vec![
        "variant".to_string(),
        "seed".into(),
        "replicas".into(),
        "rate".into(),
        "stable".into(),
        "queue_growth_per_s".into(),
        "warmup_settled".into(),
        "pass".into(),
        "output_throughput_tps".into(),
    ];
    header.extend(keys.iter().map(|k| k.to_string()));
    w.write_record(&header).map_err(err)?;
    let opt = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    for (pl, (_, probes)) in plans.iter().zip(per_plan) {
        let own = criterion_keys(&pl.cfg);
        for p in probes {
            let mut row = vec![
                pl.name.clone(),
                p.seed.to_string(),
                p.replicas.to_string(),
                p.rate.to_string(),
                p.stable.map(|b| b.to_string()).unwrap_or_default(),
                opt(p.queue_growth_per_s),
                p.settled.map(|b| b.to_string()).unwrap_or_default(),
                p.pass.to_string(),
                opt(p.output_tps),
            ];
            row.extend(keys.iter().map(|k| {
                own.iter()
                    .position(|o| o == k)
                    .and_then(|i| p.values.get(i).copied().flatten())
                    .map_or(String::new(), |v| v.to_string())
            }));
            w.write_record(&row).map_err(err)?;
        }
    }
    w.flush().map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}
