//! `servesim capacity`: the planner's two questions, answered by search over simulated runs.
//!
//! - `max-rate`: the highest offered load (sessions per second for a generated workload,
//!   `workload.trace.target_rate` requests per second for a trace) at which the configured system meets
//!   every `[slo]` criterion in steady state (`slo_met`: the criteria hold and the run is not unstable,
//!   see `metrics::Collector::stability`). Per seed: bracketing from the configured rate (doubling or
//!   halving), then bisection until the bracket is narrower than `precision` of its lower end; the
//!   answer is the seeds' mean of their highest passing rate, with a Student-t 95% interval.
//! - `min-replicas`: the smallest `cluster.replicas` meeting the criteria at a given rate on every seed
//!   (doubling, then bisection), with the criteria's values at that count and at one fewer.
//!
//! Both assume that meeting the SLOs is monotone in the searched quantity (more load never helps, more
//! replicas never hurt), which holds for the shipped routers and engines up to simulation noise. Each
//! seed's search runs on its own thread (`-j`); probes are deterministic, so the answer and every file
//! are the same bytes whatever the thread count. Every probe is kept in `capacity.csv`.

use crate::config::{Config, WorkloadKind};
use crate::error::{ConfigError, Error, OutputError};
use crate::metrics::output::RunDir;
use crate::metrics::Summary;
use crate::report::{ci::mean_ci95, effective_jobs, parallel_map};
use crate::run::{simulate, SimOptions};
use crate::system::System;
use serde_json::json;
use std::path::{Path, PathBuf};

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
}

/// One simulated run of the search.
#[derive(Clone, Debug)]
pub struct Probe {
    pub seed: u64,
    pub replicas: u32,
    pub rate: f64,
    pub stable: Option<bool>,
    pub queue_growth_per_s: Option<f64>,
    pub slo_met: bool,
    /// Each criterion's measured value (None: no finished request after the warm-up).
    pub values: Vec<Option<f64>>,
}

/// A search's result.
#[derive(Clone, Debug)]
pub struct CapacityOutcome {
    /// The answer as a planner would paste it.
    pub answer: String,
    /// `capacity.json`.
    pub json: serde_json::Value,
    /// Every probe, by seed then in search order.
    pub probes: Vec<Probe>,
    /// Per seed: the highest passing rate (`max-rate`) or the fewest passing replicas (`min-replicas`);
    /// None where none passed within the search's bounds.
    pub per_seed: Vec<Option<f64>>,
    pub out_dir: PathBuf,
}

/// Halvings or doublings before a bracket search gives up.
const MAX_BRACKET_STEPS: u32 = 20;
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

/// Runs one probe.
fn probe(cfg: &Config, rate: f64, replicas: u32, seed: u64) -> Result<Probe, Error> {
    let c = with_rate(cfg, rate, replicas, seed);
    let sim = simulate(&c, &SimOptions::default())?;
    Ok(read_probe(&c, &sim.summary, rate, replicas, seed))
}

fn read_probe(cfg: &Config, s: &Summary, rate: f64, replicas: u32, seed: u64) -> Probe {
    Probe {
        seed,
        replicas,
        rate,
        stable: s.0.get("stable").and_then(|v| v.as_bool()),
        queue_growth_per_s: s.get_f64("queue_growth_per_s"),
        slo_met: s.0.get("slo_met").and_then(|v| v.as_bool()) == Some(true),
        values: cfg.slo.criteria.keys().map(|k| s.get_f64(k)).collect(),
    }
}

/// Highest passing rate for one seed: bracket from `start`, then bisect to `precision`.
fn max_rate_for_seed(
    cfg: &Config,
    start: f64,
    seed: u64,
    precision: f64,
) -> Result<(Option<f64>, Vec<Probe>), Error> {
    let replicas = cfg.cluster.replicas;
    let mut probes = Vec::new();
    let run = |rate: f64, probes: &mut Vec<Probe>| -> Result<bool, Error> {
        let p = probe(cfg, rate, replicas, seed)?;
        let ok = p.slo_met;
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
                // Meets the SLOs at 2^20 times the start: no bound found.
                return Ok((Some(lo), probes));
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
) -> Result<(Option<u32>, Vec<Probe>), Error> {
    let mut probes = Vec::new();
    let run = |n: u32, probes: &mut Vec<Probe>| -> Result<bool, Error> {
        let p = probe(cfg, rate, n, seed)?;
        let ok = p.slo_met;
        probes.push(p);
        Ok(ok)
    };
    let (mut fail, mut pass) = (0u32, 1u32);
    while !run(pass, &mut probes)? {
        if pass >= max_replicas {
            return Ok((None, probes));
        }
        fail = pass;
        pass = (pass * 2).min(max_replicas);
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

/// Runs the search `o` on `cfg` and writes `capacity.csv` (every probe), `capacity.json` (the answer) and
/// `resolved.toml` (the searched config) into the output directory.
pub fn capacity(cfg: &Config, o: &CapacityOptions) -> Result<CapacityOutcome, Error> {
    if cfg.slo.criteria.is_empty() {
        return Err(ConfigError::invalid(
            "slo",
            "capacity needs at least one SLO criterion to meet, e.g. --set slo.ttft_p99_s=2.0",
        )
        .into());
    }
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
    let (unit, key) = rate_unit(cfg);
    let start =
        match (o.goal, rate_of(cfg)) {
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
    if let Goal::MinReplicas { .. } = o.goal {
        if o.max_replicas == 0 {
            return Err(ConfigError::invalid("--max-replicas", "must be at least 1").into());
        }
    }
    // Resolve once up front: a config that cannot run fails before anything is written.
    let base = with_rate(cfg, start, cfg.cluster.replicas.max(1), cfg.seed);
    let sys = System::resolve(&base)?;
    let last = cfg.seed.saturating_add(o.seeds as u64 - 1);
    crate::config::check_seed(last, "--seeds")?;
    let seeds: Vec<u64> = (cfg.seed..=last).collect();
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(format!("capacity-{}", cfg.name)));
    let dir = RunDir::create(&out)?;
    let jobs = effective_jobs(o.jobs, seeds.len());
    let results = parallel_map(&seeds, jobs, |&seed| match o.goal {
        Goal::MaxRate => max_rate_for_seed(cfg, start, seed, o.precision),
        Goal::MinReplicas { rate } => min_replicas_for_seed(cfg, rate, seed, o.max_replicas)
            .map(|(n, p)| (n.map(|n| n as f64), p)),
    });
    let mut probes = Vec::new();
    let mut per_seed = Vec::new();
    for r in results {
        let (best, p) = r?;
        per_seed.push(best);
        probes.extend(p);
    }
    let criteria: Vec<String> = cfg
        .slo
        .criteria
        .iter()
        .map(|(k, v)| format!("{k}<={v}"))
        .collect();
    let system = format!(
        "{} on {} x {} (TP{}, {})",
        cfg.model.name,
        match o.goal {
            Goal::MaxRate => cfg.cluster.replicas.to_string(),
            Goal::MinReplicas { .. } => "N".into(),
        },
        cfg.hardware.name,
        cfg.hardware.tensor_parallel,
        serde_json::to_value(cfg.cluster.router)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    );
    let (answer, json) = match o.goal {
        Goal::MaxRate => answer_max_rate(cfg, &system, unit, &criteria, &per_seed, &probes),
        Goal::MinReplicas { rate } => {
            answer_min_replicas(cfg, &system, unit, rate, &criteria, &per_seed, &probes)
        }
    };
    write_probes_csv(&dir.file("capacity.csv"), cfg, &probes)?;
    // The searched config as resolved (at the starting rate and replica count): the directory is
    // re-creatable, and a later search may replace it.
    let resolved = crate::run::resolved_toml(&base, &sys);
    std::fs::write(dir.file("resolved.toml"), resolved).map_err(|source| OutputError::Io {
        path: dir.file("resolved.toml"),
        source,
    })?;
    let text = serde_json::to_string_pretty(&json).expect("JSON serialises") + "\n";
    std::fs::write(dir.file("capacity.json"), text).map_err(|source| OutputError::Io {
        path: dir.file("capacity.json"),
        source,
    })?;
    let out_dir = dir.commit()?;
    Ok(CapacityOutcome {
        answer,
        json,
        probes,
        per_seed,
        out_dir,
    })
}

/// The criteria's values (mean over seeds) at the probes `pick` selects, one per seed where it finds one.
fn mean_values(cfg: &Config, probes: &[&Probe]) -> Vec<(String, Option<f64>)> {
    cfg.slo
        .criteria
        .keys()
        .enumerate()
        .map(|(i, k)| {
            let v: Vec<f64> = probes.iter().filter_map(|p| p.values[i]).collect();
            (
                k.clone(),
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
    cfg: &Config,
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
                .find(|p| p.seed == seed && Some(p.rate) == *best && p.slo_met)
        })
        .collect();
    let above: Vec<&Probe> = seeds_of(probes)
        .into_iter()
        .filter_map(|seed| {
            probes
                .iter()
                .filter(|p| p.seed == seed && !p.slo_met)
                .min_by(|a, b| a.rate.total_cmp(&b.rate))
        })
        .collect();
    let at_v = mean_values(cfg, &at);
    let above_v = mean_values(cfg, &above);
    let ci = match half {
        Some(h) => format!(" [{:.3}, {:.3}] (95% CI, {n} seeds)", mean - h, mean + h),
        None => " (1 seed: no interval)".into(),
    };
    let mut answer = format!(
        "{system} meets {} in steady state up to {mean:.3} {unit}{ci}: at that load {}",
        criteria.join(", "),
        describe_values(&at_v)
    );
    if !above.is_empty() {
        let unstable = above.iter().filter(|p| p.stable == Some(false)).count();
        answer += &format!(
            "; just above (mean {:.3} {unit}) it misses: {}{}",
            above.iter().map(|p| p.rate).sum::<f64>() / above.len() as f64,
            describe_values(&above_v),
            if unstable > 0 {
                format!(", unstable on {unstable} of {} seed(s)", above.len())
            } else {
                String::new()
            }
        );
    }
    let json = json!({
        "goal": "max-rate", "unit": unit, "criteria": criteria,
        "answer": mean, "ci95_low": half.map(|h| mean - h), "ci95_high": half.map(|h| mean + h),
        "seeds": n, "per_seed": per_seed,
        "at_answer": at_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "just_above": above_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "probes": probes.len(),
    });
    (answer, json)
}

fn answer_min_replicas(
    cfg: &Config,
    system: &str,
    unit: &str,
    rate: f64,
    criteria: &[String],
    per_seed: &[Option<f64>],
    probes: &[Probe],
) -> (String, serde_json::Value) {
    let n_seeds = per_seed.len();
    if per_seed.iter().any(|s| s.is_none()) {
        let answer = format!(
            "{system} misses {} at {rate} {unit} with up to the largest replica count tried on {} of \
             {n_seeds} seed(s); raise --max-replicas",
            criteria.join(", "),
            per_seed.iter().filter(|s| s.is_none()).count()
        );
        let json = json!({"goal": "min-replicas", "rate": rate, "unit": unit, "criteria": criteria,
                          "answer": null, "per_seed": per_seed, "note": answer});
        return (answer, json);
    }
    // The count that passes on every seed (meeting the SLOs is taken to be monotone in replicas).
    let need = per_seed.iter().flatten().fold(0.0f64, |a, &b| a.max(b)) as u32;
    let at: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.replicas == need && p.slo_met)
        .collect();
    let below: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.replicas + 1 == need && !p.slo_met)
        .collect();
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
    let json = json!({
        "goal": "min-replicas", "rate": rate, "unit": unit, "criteria": criteria,
        "answer": need, "seeds": n_seeds, "per_seed": per_seed,
        "at_answer": at_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "one_fewer": below_v.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "probes": probes.len(),
    });
    (answer, json)
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

fn write_probes_csv(path: &Path, cfg: &Config, probes: &[Probe]) -> Result<(), OutputError> {
    let err = |source: csv::Error| OutputError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    let mut header = vec![
        "seed".to_string(),
        "replicas".into(),
        "rate".into(),
        "stable".into(),
        "queue_growth_per_s".into(),
        "slo_met".into(),
    ];
    header.extend(cfg.slo.criteria.keys().cloned());
    w.write_record(&header).map_err(err)?;
    let opt = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    for p in probes {
        let mut row = vec![
            p.seed.to_string(),
            p.replicas.to_string(),
            p.rate.to_string(),
            p.stable.map(|b| b.to_string()).unwrap_or_default(),
            opt(p.queue_growth_per_s),
            p.slo_met.to_string(),
        ];
        row.extend(p.values.iter().map(|&v| opt(v)));
        w.write_record(&row).map_err(err)?;
    }
    w.flush().map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}
