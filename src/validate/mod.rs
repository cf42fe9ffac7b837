//! `servesim validate`: runs a simulated schedule on real candle kernels and reports predicted against
//! measured, per step and per request.
//!
//! 1. Simulate the config (one vLLM replica, paged KV) with the calibrated cost model, recording every
//!    step: its requests, each one's tokens, context and whether it samples ([`crate::replica::StepRecord`]).
//! 2. Execute every step in order with candle ([`crate::calibrate::forward::Stack::execute`]) over a real KV
//!    cache per request, allocated when the request is first scheduled and freed when it finishes or is
//!    preempted, timing each step. Some steps are repeated to measure the machine's noise.
//! 3. Rebuild each request's timeline from the measured durations on the same schedule ([`timeline`]), and
//!    compare: per step (`validation.csv`), per request (`validation_requests.csv`), and in summary
//!    (`validation_summary.json`): the error of mean and p90 TTFT, mean TPOT and mean E2E, and each step
//!    kind's median and p90 absolute error.
//!
//! What this does not validate: the scheduling rules themselves (they are checked against the engine's
//! rules by tests), GPU kernels (a CPU runs candle's f32 kernels), or anything beyond one replica.

pub mod timeline;

use crate::calibrate::forward::{ExecRow, KvCaches, Stack};
use crate::calibrate::{calibrate, CalibrateOptions};
use crate::config::{Config, CostKind, EngineKind};
use crate::error::{ConfigError, Error, OutputError};
use crate::metrics::output::RunDir;
use crate::metrics::stats::percentile;
use crate::metrics::{RequestRow, Rows};
use crate::replica::StepRecord;
use crate::report::plot;
use crate::run::{resolved_toml, simulate, SimOptions};
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use timeline::{request_tokens, step_times, StepKind};

/// The embedded default workload of `validate` (`workloads/validate.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../workloads/validate.toml");

/// Overrides `--quick` applies on top of the config: the tiny model and a handful of short requests, so a
/// whole validation (calibration included) takes seconds.
pub const QUICK: &[&str] = &[
    "model.name=\"tiny\"",
    "model.width_divisor=1",
    "workload.max_requests=6",
    "workload.duration_s=120.0",
    "workload.user_tokens={dist=\"constant\", value=48}",
    "workload.response_tokens={dist=\"constant\", value=6}",
];

/// The most KV cache the executed schedule may hold at once; more is refused before anything runs.
pub const MAX_CACHE_BYTES: u64 = 4 << 30;

/// What to validate.
#[derive(Clone, Debug)]
pub struct ValidateOptions {
    pub config: Option<PathBuf>,
    pub set: Vec<String>,
    pub seed: Option<u64>,
    /// A small workload on the tiny model, and a quick calibration.
    pub quick: bool,
    /// A calibration profile taken on this host; without one, `validate` calibrates first.
    pub profile: Option<PathBuf>,
    /// Steps repeated to measure noise, and repeats each.
    pub noise_steps: usize,
    pub noise_repeats: usize,
    pub out: Option<PathBuf>,
    pub progress: bool,
}

/// The relative error of a predicted value against a measured one: predicted / measured - 1.
pub fn rel_error(predicted: f64, measured: f64) -> f64 {
    predicted / measured - 1.0
}

/// What a validation measured.
#[derive(Debug)]
pub struct ValidateOutcome {
    pub out_dir: PathBuf,
    pub summary: serde_json::Value,
    /// The report printed to the terminal.
    pub text: String,
    /// Steps executed, and steps simulated (equal: every step runs).
    pub steps_executed: usize,
    pub steps_simulated: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses what the executor cannot run: several replicas, cluster events, engines other than vLLM's,
/// stores other than the paged pool, offload tiers, models other than dense Llama-shaped ones.
fn check(cfg: &Config) -> Result<(), ConfigError> {
    let model = crate::cost::catalog::ModelShape::load(&cfg.model.name)?;
    if !model.is_dense_full_attention() {
        return Err(ConfigError::invalid(
            "model.name",
            format!(
                "validate executes dense, full-attention, unquantized Llama-shaped models, and \"{}\" is not \
                 one; pick one such as llama-3.1-8b, llama-2-7b, qwen2.5-7b or tiny (`servesim catalog models`)",
                cfg.model.name
            ),
        ));
    }
    model.scaled(cfg.model.width_divisor, "model.width_divisor")?;
    if cfg.hardware.tensor_parallel != 1 {
        return Err(ConfigError::invalid(
            "hardware.tensor_parallel",
            "validate executes the whole model on one host; set hardware.tensor_parallel = 1",
        ));
    }
    if cfg.output.max_sim_time_s.is_some()
        || cfg.workload.client_timeout_s.is_some()
        || cfg.workload.max_retries > 0
    {
        return Err(ConfigError::invalid(
            "output.max_sim_time_s / workload.client_timeout_s / workload.max_retries",
            "validate compares requests that run to completion once; unset these",
        ));
    }
    if cfg.cluster.replicas != 1 || !cfg.cluster.events.is_empty() {
        return Err(ConfigError::invalid(
            "cluster",
            "validate runs one replica without events; set cluster.replicas = 1 and remove cluster.events",
        ));
    }
    if cfg.engine.kind != EngineKind::Vllm {
        return Err(ConfigError::invalid(
            "engine.kind",
            "validate executes vLLM's schedule; set engine.kind = \"vllm\"",
        ));
    }
    if cfg.kv.offload.is_some() {
        return Err(ConfigError::invalid(
            "kv.offload",
            "validate does not execute offload tiers; remove [kv.offload]",
        ));
    }
    Ok(())
}

/// Runs the validation `o` and writes its files.
pub fn validate(o: &ValidateOptions) -> Result<ValidateOutcome, Error> {
    let mut set: Vec<String> = Vec::new();
    if o.quick {
        set.extend(QUICK.iter().map(|s| s.to_string()));
    }
    set.extend(o.set.iter().cloned());
    let mut cfg = match &o.config {
        Some(p) => Config::load(Some(p), &set)?,
        None => crate::config::Source {
            origin: "the embedded validate workload (workloads/validate.toml)",
            text: DEFAULT_CONFIG,
        }
        .parse(&set)?,
    };
    if let Some(s) = o.seed {
        crate::config::check_seed(s, "--seed")?;
        cfg.seed = s;
    }
    check(&cfg)?;
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(format!("validate-{}", cfg.name)));
    let dir = RunDir::create(&out)?;
    // The profile: given, the config's, or a fresh calibration of this model's shape on this host. A fresh
    // one is read from the temporary output folder (`profile`) and named where it will be once the output
    // is in place (`profile_name`).
    let (profile, profile_name) = match (&o.profile, cfg.cost.kind, &cfg.cost.profile) {
        (Some(p), _, _) => (p.clone(), p.clone()),
        (None, CostKind::Calibrated, Some(p)) => (PathBuf::from(p), PathBuf::from(p)),
        _ => {
            let path = dir.file("profile.toml");
            calibrate(&CalibrateOptions {
                model: cfg.model.name.clone(),
                scale: cfg.model.width_divisor,
                quick: o.quick,
                threads: None,
                device: "cpu".into(),
                repeats: if o.quick { 3 } else { 5 },
                out: path.clone(),
                progress: o.progress,
            })?;
            (path, out.join("profile.toml"))
        }
    };
    cfg.cost.kind = CostKind::Calibrated;
    cfg.cost.profile = Some(profile.display().to_string());
    let model = crate::system::System::resolve(&cfg)?.model;
    let sim = simulate(
        &cfg,
        &SimOptions {
            rows: Rows::Keep,
            record_steps: true,
            ..SimOptions::default()
        },
    )?;
    let steps: &[StepRecord] = &sim.steps[0];
    let rows: HashMap<u64, &RequestRow> = sim.requests.iter().map(|r| (r.id, r)).collect();
    let capacity = |id: u64| {
        rows.get(&id)
            .map_or(0, |r| (r.prompt_tokens + r.output_tokens) as usize)
    };
    // Each request's last step (its cache is freed after it) and the peak cache the schedule holds.
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (k, s) in steps.iter().enumerate() {
        for r in &s.rows {
            last.insert(r.request, k);
        }
    }
    let stack = Stack::new(&model).map_err(cerr)?;
    let per_token = stack.kv_bytes_per_token();
    {
        let (mut live, mut peak) = (HashMap::new(), 0u64);
        for (k, s) in steps.iter().enumerate() {
            for id in &s.preempted {
                live.remove(id);
            }
            for r in &s.rows {
                live.entry(r.request)
                    .or_insert(capacity(r.request).max(r.context as usize) as u64 * per_token);
            }
            peak = peak.max(live.values().sum());
            live.retain(|id, _| last[id] != k);
        }
        if peak > MAX_CACHE_BYTES {
            return Err(ConfigError::invalid(
                "workload",
                format!(
                    "the schedule holds {:.1} GiB of KV cache at once on this model (f32), more than the {} GiB \
                     validate allows; run fewer or shorter requests, or a smaller model (model.width_divisor)",
                    peak as f64 / (1u64 << 30) as f64,
                    MAX_CACHE_BYTES >> 30
                ),
            )
            .into());
        }
    }
    // Execute every step in order; a few spread over the run are repeated for the noise.
    let noise_at: Vec<usize> = if o.noise_steps == 0 || steps.is_empty() {
        Vec::new()
    } else {
        let n = o.noise_steps.min(steps.len());
        (0..n).map(|i| i * steps.len() / n).collect()
    };
    let bar = if o.progress {
        indicatif::ProgressBar::new(steps.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut caches = KvCaches::default();
    let mut measured = Vec::with_capacity(steps.len());
    let mut noise = Vec::new();
    let mut exec = Vec::new();
    for (k, s) in steps.iter().enumerate() {
        for id in &s.preempted {
            caches.free(*id);
        }
        exec.clear();
        for r in &s.rows {
            let row = ExecRow {
                request: r.request,
                tokens: r.tokens as usize,
                context: r.context as usize,
                samples: r.samples,
            };
            stack
                .ensure_cache(&mut caches, &row, capacity(r.request))
                .map_err(cerr)?;
            exec.push(row);
        }
        if k == 0 {
            // Warm-up: the first call pays for thread pools and page faults.
            stack.execute(&exec, &caches).map_err(cerr)?;
        }
        let t = stack.execute(&exec, &caches).map_err(cerr)?;
        measured.push(t);
        if noise_at.contains(&k) {
            let mut v = vec![t];
            for _ in 1..o.noise_repeats.max(2) {
                v.push(stack.execute(&exec, &caches).map_err(cerr)?);
            }
            noise.push(v);
        }
        for r in &s.rows {
            if last[&r.request] == k {
                caches.free(r.request);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let predicted: Vec<f64> = steps.iter().map(|s| s.duration.as_secs_f64()).collect();
    let arrivals: HashMap<u64, f64> = sim
        .requests
        .iter()
        .filter_map(|r| Some((r.id, r.times[0]? as f64 * 1e-9)))
        .collect();
    let report = Report::new(
        steps,
        &predicted,
        &measured,
        &sim.requests,
        &noise,
        &arrivals,
    );
    report.write_steps(&dir.file("validation.csv"), steps)?;
    report.write_requests(&dir.file("validation_requests.csv"))?;
    let summary = report.summary(&cfg, &model.name, &profile_name, steps.len());
    let path = dir.file("validation_summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).expect("JSON serialises") + "\n",
    )
    .map_err(io(&path))?;
    // The settings as they ran, naming the profile where it will be (not the temporary output folder),
    // so `servesim run --config resolved.toml` re-runs the simulation.
    let mut shown = cfg.clone();
    shown.cost.profile = Some(profile_name.display().to_string());
    let path = dir.file("resolved.toml");
    std::fs::write(&path, resolved_toml(&shown, &sim.system)).map_err(io(&path))?;
    let plots = report.plots(&dir);
    let mut text = report.text(&model.name, steps.len());
    if let Err(why) = plots {
        let _ = writeln!(text, "plots skipped: {why}");
    }
    let out_dir = dir.commit()?;
    Ok(ValidateOutcome {
        out_dir,
        summary,
        text,
        steps_executed: measured.len(),
        steps_simulated: steps.len(),
    })
}

fn cerr(e: candle_core::Error) -> Error {
    ConfigError::invalid("validate", format!("candle failed: {e}")).into()
}

/// One request's predicted and measured timeline.
struct RequestCompare {
    row: RequestRow,
    /// (TTFT, TPOT, E2E) seconds, predicted then measured; TPOT None for one output token.
    predicted: (f64, Option<f64>, f64),
    measured: (f64, Option<f64>, f64),
}

/// The comparison, computed once and written in several forms.
struct Report {
    predicted: Vec<f64>,
    measured: Vec<f64>,
    kinds: Vec<StepKind>,
    requests: Vec<RequestCompare>,
    /// Per repeated step, its timings.
    noise: Vec<Vec<f64>>,
    /// Largest gap, seconds, between a request's rebuilt predicted times and the simulator's own (an
    /// invariant: zero up to rounding).
    rebuild_gap: f64,
}

impl Report {
    fn new(
        steps: &[StepRecord],
        predicted: &[f64],
        measured: &[f64],
        rows: &[RequestRow],
        noise: &[Vec<f64>],
        arrivals: &HashMap<u64, f64>,
    ) -> Report {
        let arrival = |id| arrivals.get(&id).copied().unwrap_or(0.0);
        let p_times = step_times(steps, predicted, arrival);
        let m_times = step_times(steps, measured, arrival);
        let p_tok = request_tokens(steps, &p_times);
        let m_tok = request_tokens(steps, &m_times);
        let mut rebuild_gap = 0.0f64;
        let mut requests = Vec::new();
        for r in rows {
            let (Some(p), Some(m), Some(arrival)) =
                (p_tok.get(&r.id), m_tok.get(&r.id), r.times[0])
            else {
                continue;
            };
            if r.status != crate::request::Status::Finished || r.output_tokens == 0 {
                continue;
            }
            let arrival = arrival as f64 * 1e-9;
            let ns = |t: Option<u64>| t.map_or(f64::NAN, |t| t as f64 * 1e-9);
            // NaN (a time the simulator did not record) must fail the check, not vanish in `max`.
            for gap in [
                (p.first - ns(r.times[2])).abs(),
                (p.last - ns(r.times[3])).abs(),
            ] {
                rebuild_gap = if gap.is_nan() {
                    f64::INFINITY
                } else {
                    rebuild_gap.max(gap)
                };
            }
            let tl = |t: &timeline::Tokens| {
                let tpot = (r.output_tokens > 1)
                    .then(|| (t.last - t.first) / (r.output_tokens - 1) as f64);
                (t.first - arrival, tpot, t.last - arrival)
            };
            requests.push(RequestCompare {
                row: *r,
                predicted: tl(p),
                measured: tl(m),
            });
        }
        Report {
            predicted: predicted.to_vec(),
            measured: measured.to_vec(),
            kinds: steps.iter().map(StepKind::of).collect(),
            requests,
            noise: noise.to_vec(),
            rebuild_gap,
        }
    }

    /// (predicted, measured) of a per-request statistic: `f` picks the value, `stat` reduces.
    fn pair(
        &self,
        f: impl Fn(&(f64, Option<f64>, f64)) -> Option<f64>,
        stat: impl Fn(&mut Vec<f64>) -> f64,
    ) -> (f64, f64) {
        let mut p: Vec<f64> = self
            .requests
            .iter()
            .filter_map(|r| f(&r.predicted))
            .collect();
        let mut m: Vec<f64> = self
            .requests
            .iter()
            .filter_map(|r| f(&r.measured))
            .collect();
        (stat(&mut p), stat(&mut m))
    }

    /// Rows of (name, predicted, measured, error).
    fn request_stats(&self) -> Vec<(&'static str, f64, f64, f64)> {
        let mean = |v: &mut Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let p90 = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            percentile(v, 90.0).unwrap_or(f64::NAN)
        };
        [
            ("ttft_mean_s", self.pair(|t| Some(t.0), mean)),
            ("ttft_p90_s", self.pair(|t| Some(t.0), p90)),
            ("tpot_mean_s", self.pair(|t| t.1, mean)),
            ("e2e_mean_s", self.pair(|t| Some(t.2), mean)),
        ]
        .into_iter()
        .map(|(n, (p, m))| (n, p, m, rel_error(p, m)))
        .collect()
    }

    /// Per step kind: (kind, steps, median and p90 absolute relative error).
    fn step_stats(&self) -> Vec<(&'static str, usize, f64, f64)> {
        [
            Some(StepKind::Decode),
            Some(StepKind::Prefill),
            Some(StepKind::Mixed),
            None,
        ]
        .into_iter()
        .filter_map(|kind| {
            let mut e: Vec<f64> = self
                .kinds
                .iter()
                .zip(self.predicted.iter().zip(&self.measured))
                .filter(|(k, _)| kind.is_none_or(|want| **k == want))
                .map(|(_, (&p, &m))| rel_error(p, m).abs())
                .collect();
            if e.is_empty() {
                return None;
            }
            e.sort_by(f64::total_cmp);
            Some((
                kind.map_or("all", StepKind::name),
                e.len(),
                percentile(&e, 50.0)?,
                percentile(&e, 90.0)?,
            ))
        })
        .collect()
    }

    /// The noise: per repeated step, its timings' spread (max - min) over their median; the median of
    /// that over the repeated steps.
    fn noise_spread(&self) -> Option<f64> {
        let mut spreads: Vec<f64> = self
            .noise
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                (v[v.len() - 1] - v[0]) / percentile(&v, 50.0).unwrap_or(f64::NAN)
            })
            .collect();
        if spreads.is_empty() {
            return None;
        }
        spreads.sort_by(f64::total_cmp);
        percentile(&spreads, 50.0)
    }

    fn write_steps(&self, path: &Path, steps: &[StepRecord]) -> Result<(), OutputError> {
        let err = |source| OutputError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(err)?;
        w.write_record([
            "step",
            "start_s",
            "kind",
            "requests",
            "prefill_tokens",
            "decode_seqs",
            "context_tokens",
            "predicted_s",
            "measured_s",
            "error",
        ])
        .map_err(err)?;
        for (k, s) in steps.iter().enumerate() {
            let prefill: u32 = s.rows.iter().filter(|r| !r.decode).map(|r| r.tokens).sum();
            let decode = s.rows.iter().filter(|r| r.decode).count();
            let context: u64 = s.rows.iter().map(|r| r.context as u64).sum();
            w.write_record([
                k.to_string(),
                format!("{:.6}", s.start.as_secs_f64()),
                self.kinds[k].name().to_string(),
                s.rows.len().to_string(),
                prefill.to_string(),
                decode.to_string(),
                context.to_string(),
                format!("{:.9}", self.predicted[k]),
                format!("{:.9}", self.measured[k]),
                format!("{:.6}", rel_error(self.predicted[k], self.measured[k])),
            ])
            .map_err(err)?;
        }
        w.flush().map_err(io(path))
    }

    fn write_requests(&self, path: &Path) -> Result<(), OutputError> {
        let err = |source| OutputError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(err)?;
        w.write_record([
            "request_id",
            "session_id",
            "turn",
            "prompt_tokens",
            "output_tokens",
            "ttft_predicted_s",
            "ttft_measured_s",
            "tpot_predicted_s",
            "tpot_measured_s",
            "e2e_predicted_s",
            "e2e_measured_s",
        ])
        .map_err(err)?;
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.9}"));
        for r in &self.requests {
            w.write_record([
                r.row.id.to_string(),
                r.row.session.to_string(),
                r.row.turn.to_string(),
                r.row.prompt_tokens.to_string(),
                r.row.output_tokens.to_string(),
                format!("{:.9}", r.predicted.0),
                format!("{:.9}", r.measured.0),
                opt(r.predicted.1),
                opt(r.measured.1),
                format!("{:.9}", r.predicted.2),
                format!("{:.9}", r.measured.2),
            ])
            .map_err(err)?;
        }
        w.flush().map_err(io(path))
    }

    fn summary(
        &self,
        cfg: &Config,
        model: &str,
        profile: &Path,
        steps: usize,
    ) -> serde_json::Value {
        let mut requests = serde_json::Map::new();
        for (n, p, m, e) in self.request_stats() {
            requests.insert(n.into(), json!({"predicted": p, "measured": m, "error": e}));
        }
        let mut by_kind = serde_json::Map::new();
        for (k, n, med, p90) in self.step_stats() {
            by_kind.insert(
                k.into(),
                json!({"steps": n, "median_abs_error": med, "p90_abs_error": p90}),
            );
        }
        json!({
            "config": cfg.name,
            "model": model,
            "profile": profile.display().to_string(),
            "seed": cfg.seed,
            "steps": steps,
            "requests": self.requests.len(),
            "predicted_busy_s": self.predicted.iter().sum::<f64>(),
            "measured_busy_s": self.measured.iter().sum::<f64>(),
            "request_errors": requests,
            "step_errors": by_kind,
            "noise": {
                "repeated_steps": self.noise.len(),
                "repeats": self.noise.first().map_or(0, Vec::len),
                "median_spread": self.noise_spread(),
            },
            "rebuild_gap_s": self.rebuild_gap,
        })
    }

    fn text(&self, model: &str, steps: usize) -> String {
        let mut t = String::new();
        let (p, m): (f64, f64) = (self.predicted.iter().sum(), self.measured.iter().sum());
        let _ = writeln!(
            t,
            "validated {steps} steps of {model}: the steps' predicted time {p:.3} s, measured {m:.3} s ({:+.1}%)",
            100.0 * rel_error(p, m)
        );
        let _ = writeln!(
            t,
            "error = predicted / measured - 1: negative where the simulator predicts faster than measured"
        );
        let _ = writeln!(
            t,
            "{:<14} {:>12} {:>12} {:>8}",
            "per request", "predicted", "measured", "error"
        );
        for (n, p, m, e) in self.request_stats() {
            let _ = writeln!(t, "{n:<14} {p:>12.6} {m:>12.6} {:>+7.1}%", 100.0 * e);
        }
        let _ = writeln!(
            t,
            "{:<14} {:>12} {:>12} {:>8}",
            "per step", "steps", "median |err|", "p90 |err|"
        );
        for (k, n, med, p90) in self.step_stats() {
            let _ = writeln!(
                t,
                "{k:<14} {n:>12} {:>11.1}% {:>7.1}%",
                100.0 * med,
                100.0 * p90
            );
        }
        if let Some(s) = self.noise_spread() {
            let _ = writeln!(
                t,
                "noise: the same step repeated varies by {:.1}% (median of (max - min) / median over {} steps x {})",
                100.0 * s,
                self.noise.len(),
                self.noise.first().map_or(0, Vec::len)
            );
        }
        t
    }

    /// `validation_steps.svg` (predicted against measured step time, log-log, with y = x) and
    /// `validation_ttft_error.svg` (the CDF of per-request TTFT error).
    fn plots(&self, dir: &RunDir) -> Result<(), String> {
        plot::ensure_font()?;
        let by_kind: Vec<plot::Series> = [StepKind::Decode, StepKind::Prefill, StepKind::Mixed]
            .into_iter()
            .map(|k| {
                plot::Series::line(
                    k.name(),
                    self.kinds
                        .iter()
                        .zip(self.predicted.iter().zip(&self.measured))
                        .filter(|(kk, _)| **kk == k)
                        .map(|(_, (&p, &m))| (m, p))
                        .collect(),
                )
            })
            .filter(|s| !s.line.is_empty())
            .collect();
        plot::scatter(
            &dir.file("validation_steps.svg"),
            &plot::Chart {
                title: "Step time: predicted against measured",
                note: "each dot a step; the line is predicted = measured",
                x_desc: "measured step time (s, log scale)",
                y_desc: "predicted step time (s, log scale)",
                series: &by_kind,
                log_x: true,
                integer_y: false,
            },
        )?;
        let errors: Vec<f64> = self
            .requests
            .iter()
            .map(|r| rel_error(r.predicted.0, r.measured.0))
            .collect();
        plot::lines(
            &dir.file("validation_ttft_error.svg"),
            plot::Format::Svg,
            &plot::Chart {
                title: "Per-request TTFT error: CDF",
                note: "error = predicted / measured - 1",
                x_desc: "TTFT error (fraction)",
                y_desc: "fraction of requests",
                series: &[plot::Series::line("TTFT", plot::cdf_points(&errors))],
                log_x: false,
                integer_y: false,
            },
        )
    }
}
