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
use crate::config::{Config, CostKind, EngineKind, LinearConfig, RooflineConfig};
use crate::cost::calibrated::{fit_relative_nonneg, HostHardware, Profile};
use crate::cost::catalog::{HardwareSpec, ModelShape};
use crate::cost::linear::LinearCost;
use crate::cost::roofline::Roofline;
use crate::cost::{CostModel, StepShape};
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
    let host = Profile::load(&profile)?.hardware;
    let priced = price(&cfg, &model, &host, &profile_name, steps, &measured);
    let arrivals: HashMap<u64, f64> = sim
        .requests
        .iter()
        .filter_map(|r| Some((r.id, r.times[0]? as f64 * 1e-9)))
        .collect();
    let report = Report::new(steps, priced, &measured, &sim.requests, &noise, &arrivals);
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

/// The executed schedule priced by each cost model, the schedule's own first: `calibrated` (the recorded
/// durations), `roofline` (this host's entry as the calibration measured it, `[hardware]` in the profile:
/// its best GEMM throughput and best weight streaming, reached at full efficiency; the kernel latencies
/// of the config's `[cost.roofline]`), and `linear` (least squares on the even steps' measured times,
/// scored on the odd ones; left out with fewer than eight steps).
fn price(
    cfg: &Config,
    model: &ModelShape,
    host: &HostHardware,
    profile_name: &Path,
    steps: &[StepRecord],
    measured: &[f64],
) -> Vec<Priced> {
    let shapes: Vec<StepShape> = steps
        .iter()
        .map(|s| {
            let mut shape = StepShape::default();
            for r in &s.rows {
                shape.add(r.tokens, r.context, r.decode, r.samples);
            }
            shape
        })
        .collect();
    let all = vec![true; steps.len()];
    let mut out = vec![Priced {
        name: "calibrated",
        about: format!(
            "the profile {}, which the schedule was simulated with",
            profile_name.display()
        ),
        durations: steps.iter().map(|s| s.duration.as_secs_f64()).collect(),
        scored: all.clone(),
    }];
    let roofline = Roofline::new(
        model.clone(),
        HardwareSpec {
            name: "host".into(),
            device_name: host.device_name.clone(),
            peak_bf16_tflops: host.peak_bf16_tflops,
            memory_bandwidth_gbps: host.memory_bandwidth_gbps,
            memory_gib: host.memory_gib,
            peak_fp8_tflops: None,
            peak_int8_tops: None,
            price_per_hour: None,
            host_link_gbps: None,
        },
        RooflineConfig {
            compute_efficiency: 1.0,
            memory_efficiency: 1.0,
            elementwise_efficiency: 1.0,
            decode_attention_efficiency: 1.0,
            prefill_attention_efficiency: 1.0,
            ..cfg.cost.roofline.clone()
        },
        1,
        cfg.hardware.interconnect_gbps,
        cfg.hardware.allreduce_latency_s,
    )
    .with_async_scheduling(cfg.engine.async_scheduling);
    out.push(Priced {
        name: "roofline",
        about: format!(
            "this host as the calibration measured it ({:.0} GFLOP/s, {:.1} GB/s), at full efficiency",
            host.peak_bf16_tflops * 1e3,
            host.memory_bandwidth_gbps
        ),
        durations: shapes
            .iter()
            .map(|s| roofline.step_time(s).as_secs_f64())
            .collect(),
        scored: all,
    });
    let features = |s: &StepShape| {
        let b = &s.sums;
        vec![
            1.0,
            b.prefill_tokens as f64,
            b.decode_seqs as f64,
            b.decode_context_tokens as f64,
        ]
    };
    let fitted: Vec<(Vec<f64>, f64)> = shapes
        .iter()
        .zip(measured)
        .step_by(2)
        .map(|(s, &m)| (features(s), m))
        .collect();
    if let Some(fit) = (steps.len() >= 8)
        .then(|| fit_relative_nonneg(&fitted))
        .flatten()
    {
        let c = &fit.coef;
        let linear = LinearCost {
            p: LinearConfig {
                step_s: c[0],
                prefill_token_s: c[1],
                decode_seq_s: c[2],
                decode_context_token_s: c[3],
            },
        };
        out.push(Priced {
            name: "linear",
            about: format!(
                "{} + {} x prefill tokens + {} x decode sequences + {} x their context tokens (seconds), \
                 fitted to the even steps' measured times, step errors on the odd ones",
                sig(c[0]),
                sig(c[1]),
                sig(c[2]),
                sig(c[3])
            ),
            durations: shapes
                .iter()
                .map(|s| linear.step_time(s).as_secs_f64())
                .collect(),
            scored: (0..steps.len()).map(|k| k % 2 == 1).collect(),
        });
    }
    out
}

/// `v` with four significant digits, in exponent notation unless zero.
fn sig(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.3e}")
    }
}

fn cerr(e: candle_core::Error) -> Error {
    ConfigError::invalid("validate", format!("candle failed: {e}")).into()
}

/// A request's (TTFT, TPOT, E2E), seconds; TPOT None for one output token.
type Times = (f64, Option<f64>, f64);

/// One cost model's durations for the executed schedule.
pub struct Priced {
    /// `calibrated` (the model the schedule was simulated with), `roofline` or `linear`.
    pub name: &'static str,
    /// What the model is, for the report.
    pub about: String,
    /// Seconds per step.
    pub durations: Vec<f64>,
    /// The steps its step errors are scored on: all, except for a model fitted to some of the measured
    /// steps, whose fitted steps are left out.
    pub scored: Vec<bool>,
}

/// One cost model's side of the comparison.
struct ModelReport {
    priced: Priced,
    /// Per compared request (aligned with `Report::rows`).
    requests: Vec<Times>,
}

/// The comparison, computed once and written in several forms.
struct Report {
    measured: Vec<f64>,
    kinds: Vec<StepKind>,
    /// The compared requests: finished, with at least one output token.
    rows: Vec<RequestRow>,
    /// Their measured timelines.
    measured_requests: Vec<Times>,
    /// The schedule's own model first.
    models: Vec<ModelReport>,
    /// Per repeated step, its timings.
    noise: Vec<Vec<f64>>,
    /// Largest gap, seconds, between a request's timeline rebuilt from the schedule's own durations and
    /// the simulator's (an invariant: zero up to rounding).
    rebuild_gap: f64,
}

impl Report {
    fn new(
        steps: &[StepRecord],
        priced: Vec<Priced>,
        measured: &[f64],
        rows: &[RequestRow],
        noise: &[Vec<f64>],
        arrivals: &HashMap<u64, f64>,
    ) -> Report {
        let arrival = |id| arrivals.get(&id).copied().unwrap_or(0.0);
        let m_tok = request_tokens(steps, &step_times(steps, measured, arrival));
        let p_tok: Vec<_> = priced
            .iter()
            .map(|p| request_tokens(steps, &step_times(steps, &p.durations, arrival)))
            .collect();
        let mut rebuild_gap = 0.0f64;
        let mut compared = Vec::new();
        let mut measured_requests = Vec::new();
        let mut per_model: Vec<Vec<Times>> = vec![Vec::new(); priced.len()];
        for r in rows {
            let (Some(m), Some(arrival)) = (m_tok.get(&r.id), r.times[0]) else {
                continue;
            };
            if r.status != crate::request::Status::Finished || r.output_tokens == 0 {
                continue;
            }
            let arrival = arrival as f64 * 1e-9;
            let tl = |t: &timeline::Tokens| {
                let tpot = (r.output_tokens > 1)
                    .then(|| (t.last - t.first) / (r.output_tokens - 1) as f64);
                (t.first - arrival, tpot, t.last - arrival)
            };
            // Every model prices the same steps, so a request with measured tokens has them under each.
            let own = &p_tok[0][&r.id];
            let ns = |t: Option<u64>| t.map_or(f64::NAN, |t| t as f64 * 1e-9);
            // NaN (a time the simulator did not record) must fail the check, not vanish in `max`.
            for gap in [
                (own.first - ns(r.times[2])).abs(),
                (own.last - ns(r.times[3])).abs(),
            ] {
                rebuild_gap = if gap.is_nan() {
                    f64::INFINITY
                } else {
                    rebuild_gap.max(gap)
                };
            }
            for (out, tok) in per_model.iter_mut().zip(&p_tok) {
                out.push(tl(&tok[&r.id]));
            }
            compared.push(*r);
            measured_requests.push(tl(m));
        }
        Report {
            measured: measured.to_vec(),
            kinds: steps.iter().map(StepKind::of).collect(),
            rows: compared,
            measured_requests,
            models: priced
                .into_iter()
                .zip(per_model)
                .map(|(priced, requests)| ModelReport { priced, requests })
                .collect(),
            noise: noise.to_vec(),
            rebuild_gap,
        }
    }

    /// Rows of (name, predicted, measured, error) for model `m`.
    fn request_stats(&self, m: usize) -> Vec<(&'static str, f64, f64, f64)> {
        let mean = |v: &mut Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let p90 = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            percentile(v, 90.0).unwrap_or(f64::NAN)
        };
        type Pick = fn(&Times) -> Option<f64>;
        let stats: [(&str, Pick, bool); 4] = [
            ("ttft_mean_s", |t| Some(t.0), false),
            ("ttft_p90_s", |t| Some(t.0), true),
            ("tpot_mean_s", |t| t.1, false),
            ("e2e_mean_s", |t| Some(t.2), false),
        ];
        stats
            .into_iter()
            .map(|(n, pick, is_p90)| {
                let mut p: Vec<f64> = self.models[m].requests.iter().filter_map(pick).collect();
                let mut q: Vec<f64> = self.measured_requests.iter().filter_map(pick).collect();
                let (p, q) = if is_p90 {
                    (p90(&mut p), p90(&mut q))
                } else {
                    (mean(&mut p), mean(&mut q))
                };
                (n, p, q, rel_error(p, q))
            })
            .collect()
    }

    /// Per step kind, over model `m`'s scored steps: (kind, steps, median and p90 absolute relative error).
    fn step_stats(&self, m: usize) -> Vec<(&'static str, usize, f64, f64)> {
        let model = &self.models[m].priced;
        [
            Some(StepKind::Decode),
            Some(StepKind::Prefill),
            Some(StepKind::Mixed),
            None,
        ]
        .into_iter()
        .filter_map(|kind| {
            let mut e: Vec<f64> = (0..self.measured.len())
                .filter(|&k| model.scored[k] && kind.is_none_or(|want| self.kinds[k] == want))
                .map(|k| rel_error(model.durations[k], self.measured[k]).abs())
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

    /// A CSV header: `fixed`, then `per_model(name)` for each model in order.
    fn header(&self, fixed: &[&str], per_model: impl Fn(&str) -> [String; 3]) -> Vec<String> {
        let mut h: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        for m in &self.models {
            h.extend(per_model(m.priced.name));
        }
        h
    }

    fn write_steps(&self, path: &Path, steps: &[StepRecord]) -> Result<(), OutputError> {
        let err = OutputError::csv(path);
        let mut w = csv::Writer::from_path(path).map_err(err)?;
        let header = self.header(
            &[
                "step",
                "start_s",
                "kind",
                "requests",
                "prefill_tokens",
                "decode_seqs",
                "context_tokens",
                "measured_s",
            ],
            |n| {
                [
                    format!("{n}_s"),
                    format!("{n}_error"),
                    format!("{n}_scored"),
                ]
            },
        );
        w.write_record(&header).map_err(err)?;
        for (k, s) in steps.iter().enumerate() {
            let prefill: u32 = s.rows.iter().filter(|r| !r.decode).map(|r| r.tokens).sum();
            let decode = s.rows.iter().filter(|r| r.decode).count();
            let context: u64 = s.rows.iter().map(|r| r.context as u64).sum();
            let mut rec = vec![
                k.to_string(),
                format!("{:.6}", s.start.as_secs_f64()),
                self.kinds[k].name().to_string(),
                s.rows.len().to_string(),
                prefill.to_string(),
                decode.to_string(),
                context.to_string(),
                format!("{:.9}", self.measured[k]),
            ];
            for m in &self.models {
                let d = m.priced.durations[k];
                rec.extend([
                    format!("{d:.9}"),
                    format!("{:.6}", rel_error(d, self.measured[k])),
                    m.priced.scored[k].to_string(),
                ]);
            }
            w.write_record(&rec).map_err(err)?;
        }
        w.flush().map_err(io(path))
    }

    fn write_requests(&self, path: &Path) -> Result<(), OutputError> {
        let err = OutputError::csv(path);
        let mut w = csv::Writer::from_path(path).map_err(err)?;
        let mut header: Vec<String> = [
            "request_id",
            "session_id",
            "turn",
            "prompt_tokens",
            "output_tokens",
            "ttft_measured_s",
            "tpot_measured_s",
            "e2e_measured_s",
        ]
        .map(String::from)
        .to_vec();
        for m in &self.models {
            let n = m.priced.name;
            header.extend([
                format!("ttft_{n}_s"),
                format!("tpot_{n}_s"),
                format!("e2e_{n}_s"),
            ]);
        }
        w.write_record(&header).map_err(err)?;
        let times = |t: &Times| {
            [
                format!("{:.9}", t.0),
                t.1.map_or(String::new(), |v| format!("{v:.9}")),
                format!("{:.9}", t.2),
            ]
        };
        for (i, r) in self.rows.iter().enumerate() {
            let mut rec = vec![
                r.id.to_string(),
                r.session.to_string(),
                r.turn.to_string(),
                r.prompt_tokens.to_string(),
                r.output_tokens.to_string(),
            ];
            rec.extend(times(&self.measured_requests[i]));
            for m in &self.models {
                rec.extend(times(&m.requests[i]));
            }
            w.write_record(&rec).map_err(err)?;
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
        let mut models = serde_json::Map::new();
        for (m, report) in self.models.iter().enumerate() {
            let mut requests = serde_json::Map::new();
            for (n, p, q, e) in self.request_stats(m) {
                requests.insert(n.into(), json!({"predicted": p, "measured": q, "error": e}));
            }
            let mut by_kind = serde_json::Map::new();
            for (k, n, med, p90) in self.step_stats(m) {
                by_kind.insert(
                    k.into(),
                    json!({"steps": n, "median_abs_error": med, "p90_abs_error": p90}),
                );
            }
            models.insert(
                report.priced.name.into(),
                json!({
                    "about": report.priced.about,
                    "predicted_busy_s": report.priced.durations.iter().sum::<f64>(),
                    "request_errors": requests,
                    "step_errors": by_kind,
                }),
            );
        }
        json!({
            "config": cfg.name,
            "model": model,
            "profile": profile.display().to_string(),
            "seed": cfg.seed,
            "steps": steps,
            "requests": self.rows.len(),
            "schedule_cost_model": self.models[0].priced.name,
            "measured_busy_s": self.measured.iter().sum::<f64>(),
            "cost_models": models,
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
        let m: f64 = self.measured.iter().sum();
        let _ = writeln!(
            t,
            "validated {steps} steps of {model} ({} requests); the steps measured {m:.3} s in all",
            self.rows.len()
        );
        let _ = writeln!(
            t,
            "error = predicted / measured - 1: negative where a model predicts faster than measured"
        );
        for r in &self.models {
            let _ = writeln!(t, "  {:<11} {}", r.priced.name, r.priced.about);
        }
        let names: Vec<&str> = self.models.iter().map(|r| r.priced.name).collect();
        let _ = write!(t, "{:<16} {:>11}", "per request", "measured");
        for n in &names {
            let _ = write!(t, " {n:>11}");
        }
        let _ = writeln!(t);
        let stats: Vec<_> = (0..self.models.len())
            .map(|m| self.request_stats(m))
            .collect();
        for (i, (n, _, q, _)) in stats[0].iter().enumerate() {
            let _ = write!(t, "{n:<16} {q:>11.6}");
            for s in &stats {
                let _ = write!(t, " {:>+10.1}%", 100.0 * s[i].3);
            }
            let _ = writeln!(t);
        }
        let _ = write!(t, "{:<16} {:>11}", "per step", "steps");
        for n in &names {
            let _ = write!(t, " {n:>11}");
        }
        let _ = writeln!(t, "   (median |error|, p90 in brackets)");
        let steps: Vec<_> = (0..self.models.len()).map(|m| self.step_stats(m)).collect();
        for (k, n, _, _) in &steps[0] {
            let _ = write!(t, "{k:<16} {n:>11}");
            for s in &steps {
                match s.iter().find(|x| x.0 == *k) {
                    Some((_, _, med, p90)) => {
                        let _ = write!(t, " {:>4.0}% ({:>3.0}%)", 100.0 * med, 100.0 * p90);
                    }
                    None => {
                        let _ = write!(t, " {:>11}", "-");
                    }
                }
            }
            let _ = writeln!(t);
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

    /// `validation_steps.svg` (the schedule's model's predicted against measured step time, log-log, with
    /// y = x) and `validation_ttft_error.svg` (the CDF of per-request TTFT error, one line per model).
    fn plots(&self, dir: &RunDir) -> Result<(), String> {
        plot::ensure_font()?;
        let own = &self.models[0].priced;
        let by_kind: Vec<plot::Series> = [StepKind::Decode, StepKind::Prefill, StepKind::Mixed]
            .into_iter()
            .map(|k| {
                plot::Series::line(
                    k.name(),
                    (0..self.measured.len())
                        .filter(|&i| self.kinds[i] == k)
                        .map(|i| (self.measured[i], own.durations[i]))
                        .collect(),
                )
            })
            .filter(|s| !s.line.is_empty())
            .collect();
        let note = format!(
            "each dot a step, priced by the {} model; the line is predicted = measured",
            own.name
        );
        plot::scatter(
            &dir.file("validation_steps.svg"),
            &plot::Chart {
                title: "Step time: predicted against measured",
                note: &note,
                x_desc: "measured step time (s, log scale)",
                y_desc: "predicted step time (s, log scale)",
                series: &by_kind,
                log_x: true,
                integer_y: false,
            },
        )?;
        let series: Vec<plot::Series> = self
            .models
            .iter()
            .map(|m| {
                let errors: Vec<f64> = m
                    .requests
                    .iter()
                    .zip(&self.measured_requests)
                    .map(|(p, q)| rel_error(p.0, q.0))
                    .collect();
                plot::Series::line(m.priced.name, plot::cdf_points(&errors))
            })
            .collect();
        plot::lines(
            &dir.file("validation_ttft_error.svg"),
            plot::Format::Svg,
            &plot::Chart {
                title: "Per-request TTFT error: CDF",
                note: "error = predicted / measured - 1, one line per cost model",
                x_desc: "TTFT error (fraction)",
                y_desc: "fraction of requests",
                series: &series,
                log_x: false,
                integer_y: false,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::StepRow;
    use crate::time::{SimDuration, SimTime};

    /// Twelve steps, step k: a prefill chunk of 16 (k + 1) tokens, and k mod 4 decodes at context
    /// 50 + 7k each (so prefill tokens, decode sequences and their context are not collinear).
    fn schedule() -> Vec<StepRecord> {
        (0..12u32)
            .map(|k| StepRecord {
                start: SimTime(k as u64 * 10_000_000),
                duration: SimDuration(1_000_000),
                rows: (0..=k % 4)
                    .map(|i| StepRow {
                        request: i as u64,
                        tokens: if i == 0 { 16 * (k + 1) } else { 1 },
                        context: if i == 0 { 16 * (k + 1) } else { 50 + 7 * k },
                        decode: i != 0,
                        samples: true,
                    })
                    .collect(),
                preempted: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn every_model_prices_the_schedule_and_the_linear_fit_is_scored_on_steps_it_did_not_see() {
        let set: Vec<String> = QUICK.iter().map(|s| s.to_string()).collect();
        let cfg = crate::config::Source {
            origin: "test",
            text: DEFAULT_CONFIG,
        }
        .parse(&set)
        .unwrap();
        let model = crate::system::System::resolve(&cfg).unwrap().model;
        let steps = schedule();
        // A host that is exactly linear: 2 ms a step, 10 us a prefill token, 0.3 ms a decode sequence,
        // 1 ns a context token read by a decode.
        let measured: Vec<f64> = steps
            .iter()
            .map(|s| {
                let prefill: u32 = s.rows.iter().filter(|r| !r.decode).map(|r| r.tokens).sum();
                let decodes = s.rows.iter().filter(|r| r.decode).count() as f64;
                let context: u32 = s.rows.iter().filter(|r| r.decode).map(|r| r.context).sum();
                2e-3 + 1e-5 * prefill as f64 + 3e-4 * decodes + 1e-9 * context as f64
            })
            .collect();
        let host = HostHardware {
            device_name: "test host".into(),
            peak_bf16_tflops: 0.1,
            memory_bandwidth_gbps: 10.0,
            memory_gib: 16.0,
        };
        let priced = price(&cfg, &model, &host, Path::new("p.toml"), &steps, &measured);
        let names: Vec<&str> = priced.iter().map(|p| p.name).collect();
        assert_eq!(names, ["calibrated", "roofline", "linear"]);
        // The schedule's own model is the recorded durations.
        assert!(priced[0].durations.iter().all(|&d| d == 1e-3));
        // The roofline reads every weight once a step: no step is faster than the weights' bytes over the
        // host's 10 GB/s.
        let floor = model.weight_bytes() as f64 / 10e9;
        assert!(priced[1].durations.iter().all(|&d| d >= floor), "{floor}");
        // Fitted to the even steps of an exactly linear host, the linear model predicts the odd ones to
        // the nanosecond rounding of a step (1 ns of 2 ms or more: 5e-7).
        let linear = &priced[2];
        for k in (1..12).step_by(2) {
            assert!(linear.scored[k] && !linear.scored[k - 1]);
            assert!(
                rel_error(linear.durations[k], measured[k]).abs() < 1e-5,
                "step {k}: {} against {}",
                linear.durations[k],
                measured[k]
            );
        }
        // Fewer than eight steps: no linear fit is offered.
        assert_eq!(
            price(
                &cfg,
                &model,
                &host,
                Path::new("p"),
                &steps[..7],
                &measured[..7]
            )
            .len(),
            2
        );
    }
}
