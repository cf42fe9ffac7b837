//! Raw TOML plus command-line overrides, turned into one validated [`Config`]. Every default lives here.
//!
//! Loading goes: file text (or the embedded default) -> schema check with line numbers -> `--set` overrides
//! applied to the TOML tree -> schema check again (errors then name the override) -> semantic validation.
//! Unknown keys are errors everywhere: a typo must never silently fall back to a default.

use crate::error::ConfigError;
use crate::workload::dist::Dist;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The embedded default workload and system (`servesim run` with no `--config`).
pub const DEFAULT_CONFIG: &str = include_str!("../workloads/chat.toml");
pub const DEFAULT_CONFIG_NAME: &str = "workloads/chat.toml (embedded)";

/// A whole run: workload, model, hardware, engine, cost model, SLOs and outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run name: the output directory is `results/<name>` unless --out says otherwise.
    pub name: String,
    /// Master seed for every random stream.
    pub seed: u64,
    pub workload: WorkloadConfig,
    pub model: ModelConfig,
    pub hardware: HardwareConfig,
    pub engine: EngineConfig,
    pub cluster: ClusterConfig,
    pub cost: CostConfig,
    pub slo: SloConfig,
    pub output: OutputConfig,
    /// The per-conversation KV store (`engine.kv_cache = "conversation"`).
    pub kv_store: KvStoreConfig,
    /// Request-level dynamic batching (`engine.kind = "dynamic"`).
    pub batching: BatchingConfig,
    /// SGLang's knobs (`engine.kind = "sglang"`).
    pub sglang: SglangConfig,
    /// Admission control at each replica; unset: every request is queued, however long the queue.
    pub admission: Option<AdmissionConfig>,
    /// KV cache tiers below GPU memory (`[kv.offload]`).
    pub kv: KvConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "run".into(),
            seed: 42,
            workload: WorkloadConfig::default(),
            kv_store: KvStoreConfig::default(),
            batching: BatchingConfig::default(),
            sglang: SglangConfig::default(),
            admission: None,
            kv: KvConfig::default(),
            model: ModelConfig::default(),
            hardware: HardwareConfig::default(),
            engine: EngineConfig::default(),
            cluster: ClusterConfig::default(),
            cost: CostConfig::default(),
            slo: SloConfig::default(),
            output: OutputConfig::default(),
        }
    }
}

/// How session starts are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalProcess {
    /// Exponential gaps (a Poisson process).
    Poisson,
    /// Gamma gaps with shape `burstiness` and mean 1/rate (`vllm bench serve --burstiness`); shape < 1 is
    /// burstier than Poisson, shape > 1 more regular.
    Gamma,
}

/// How a piecewise schedule's factor runs between its points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Each point's factor holds until the next point.
    #[default]
    Step,
    /// The factor runs linearly from point to point (the last holds).
    Linear,
}

/// `workload.rate_schedule`: the arrival rate over time, as a factor on the base rate
/// (`workload.session_rate`, or a trace's `speedup`). See `workload/rate.rs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RateSchedule {
    /// Factors at times: `points = [[0, 1.0], [600, 3.0]]` (seconds, factor), the first at 0 s.
    Piecewise {
        points: Vec<(f64, f64)>,
        #[serde(default)]
        interpolation: Interpolation,
    },
    /// 1 + amplitude x sin(2 pi (t - phase_s) / period_s), amplitude from 0 to 1.
    Diurnal {
        period_s: f64,
        amplitude: f64,
        #[serde(default)]
        phase_s: f64,
    },
    /// On/off bursts: a two-state Markov-modulated Poisson process, factor `high` for an exponential
    /// time of mean `high_mean_s`, then `low` for one of mean `low_mean_s`, and so on.
    Bursts {
        high: f64,
        low: f64,
        high_mean_s: f64,
        low_mean_s: f64,
    },
}

impl RateSchedule {
    /// The largest factor the schedule reaches.
    pub fn max_factor(&self) -> f64 {
        match self {
            RateSchedule::Piecewise { points, .. } => {
                points.iter().map(|p| p.1).fold(0.0, f64::max)
            }
            RateSchedule::Diurnal { amplitude, .. } => 1.0 + amplitude,
            RateSchedule::Bursts { high, low, .. } => high.max(*low),
        }
    }

    /// The schedule's name in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            RateSchedule::Piecewise { .. } => "piecewise",
            RateSchedule::Diurnal { .. } => "diurnal",
            RateSchedule::Bursts { .. } => "bursts",
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("workload.rate_schedule.{k}");
        let finite_nonneg = |k: &str, v: f64| check_nonneg(key(k), v);
        match self {
            RateSchedule::Piecewise { points, .. } => {
                if points.first().is_none_or(|p| p.0 != 0.0) {
                    return Err(ConfigError::invalid(
                        key("points"),
                        "must start with a point at time 0, as [[0, factor], [time_s, factor], ...]",
                    ));
                }
                for (i, w) in points.windows(2).enumerate() {
                    if !(w[1].0.is_finite() && w[1].0 > w[0].0) {
                        return Err(ConfigError::invalid(
                            key(&format!("points[{}]", i + 1)),
                            format!("times must increase: {} s follows {} s", w[1].0, w[0].0),
                        ));
                    }
                }
                for (i, p) in points.iter().enumerate() {
                    finite_nonneg(&format!("points[{i}]"), p.1)?;
                }
                if points.iter().all(|p| p.1 == 0.0) {
                    return Err(ConfigError::invalid(
                        key("points"),
                        "every factor is 0: nothing would arrive",
                    ));
                }
            }
            RateSchedule::Diurnal {
                period_s,
                amplitude,
                phase_s,
            } => {
                if !(period_s.is_finite() && *period_s > 0.0) {
                    return Err(ConfigError::invalid(
                        key("period_s"),
                        format!("must be positive seconds, got {period_s}"),
                    ));
                }
                if !(0.0..=1.0).contains(amplitude) {
                    return Err(ConfigError::invalid(
                        key("amplitude"),
                        format!(
                            "must be from 0 to 1 (the rate never goes negative), got {amplitude}"
                        ),
                    ));
                }
                if !phase_s.is_finite() {
                    return Err(ConfigError::invalid(key("phase_s"), "must be finite"));
                }
            }
            RateSchedule::Bursts {
                high,
                low,
                high_mean_s,
                low_mean_s,
            } => {
                finite_nonneg("high", *high)?;
                finite_nonneg("low", *low)?;
                if *high == 0.0 && *low == 0.0 {
                    return Err(ConfigError::invalid(
                        key("high"),
                        "high and low are both 0: nothing would arrive",
                    ));
                }
                for (k, v) in [("high_mean_s", high_mean_s), ("low_mean_s", low_mean_s)] {
                    // Each dwell is a segment walked between arrivals: a floor keeps that finite.
                    if !(v.is_finite() && *v >= 1e-3) {
                        return Err(ConfigError::invalid(
                            key(k),
                            format!("must be at least 0.001 seconds, got {v}"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A shared system prompt and the share of sessions that use it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPrompt {
    pub tokens: u32,
    #[serde(default = "one")]
    pub share: f64,
}

fn one() -> f64 {
    1.0
}

/// A sampling profile (`[[workload.sampling]]`): the sampling parameters a share of sessions send with
/// every turn. Request-level batchers group requests by them (`batching.group_by`); other engines ignore
/// them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingProfile {
    pub name: String,
    #[serde(default = "one")]
    pub share: f64,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    /// -1: all tokens (vLLM's default).
    #[serde(default = "minus_one")]
    pub top_k: i64,
    /// The model the request names (a server hosting several).
    #[serde(default)]
    pub model: String,
}

fn minus_one() -> i64 {
    -1
}

/// The sampling fields a request-level batcher may group by (`batching.group_by`).
pub const GROUP_BY_FIELDS: &[&str] = &["temperature", "top_p", "top_k", "max_tokens", "model"];

/// `[batching]`: request-level dynamic batching (`engine.kind = "dynamic"`, rules D1-D6 in
/// `scheduler/dynamic.rs`). Ignored by other engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// The most requests in a batch; a group this full dispatches at once.
    pub max_batch_size: u32,
    /// Seconds the oldest request of a group may wait before its group dispatches anyway.
    pub max_queue_delay_s: f64,
    /// Fields that must match for requests to share a batch, of [`GROUP_BY_FIELDS`].
    pub group_by: Vec<String>,
    /// A finished request's row leaves the batch (else it is computed as padding until the batch ends).
    pub early_exit: bool,
    /// Adapt the batch size limit to the observed batch latency.
    pub adaptive: Option<AdaptiveConfig>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: 8,
            max_queue_delay_s: 0.01,
            group_by: Vec::new(),
            early_exit: false,
            adaptive: None,
        }
    }
}

/// Replica slots a run may have (starting replicas plus `add_replica` events): far beyond any real
/// cluster, and small enough that per-slot state is never a memory problem before the KV estimate
/// (`memory.rs`) is made.
pub const MAX_REPLICA_SLOTS: u32 = 1_000_000;

/// `[sglang]`: SGLang's server arguments (`engine.kind = "sglang"`, rules G1 and G6-G10 in
/// `scheduler/sglang.rs`), under SGLang's names. The KV pool's size and the context length come from
/// `[engine]` (`gpu_memory_utilization` standing for `mem_fraction_static`, `max_model_len` for
/// `context_length`) unless set here. Ignored by other engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SglangConfig {
    /// `--schedule-policy`: `fcfs` (SGLang's default), `lpm` or `dfs-weight`.
    pub schedule_policy: crate::scheduler::sglang::SglangPolicy,
    /// `--schedule-conservativeness`: scales `new_token_ratio` (G9); above 1 admits less.
    pub schedule_conservativeness: f64,
    /// `--chunked-prefill-size`: tokens per prefill batch; unset: by GPU memory as SGLang sets it (G8:
    /// 2048 below 35 GiB, 4096 below 60, 8192 below 160, else 16384); -1 turns chunking off.
    pub chunked_prefill_size: Option<i64>,
    /// `--max-prefill-tokens`: with chunking off, a prefill batch's new tokens at most.
    pub max_prefill_tokens: u32,
    /// `--max-running-requests`; unset: min(max_total_tokens / 2, the request pool) as SGLang derives
    /// it (G1).
    pub max_running_requests: Option<u32>,
    /// `--max-total-tokens`: the token pool's size; unset: the KV memory `[engine]` sizes (blocks x
    /// block_size, the same bytes vLLM would get).
    pub max_total_tokens: Option<u64>,
    /// `--enable-hierarchical-cache`: HiCache, a host-memory tier below the radix cache (H1-H4).
    pub enable_hierarchical_cache: bool,
    /// `--hicache-ratio`: the host pool as a multiple of the GPU pool (2.0).
    pub hicache_ratio: f64,
    /// `--hicache-size`: the host pool in GB (10^9 bytes); 0 (the default) uses the ratio.
    pub hicache_size: f64,
    /// `--hicache-write-policy`: `write_through` (default), `write_through_selective`, `write_back`.
    pub hicache_write_policy: crate::kv::radix::WritePolicy,
}

impl Default for SglangConfig {
    fn default() -> Self {
        SglangConfig {
            schedule_policy: crate::scheduler::sglang::SglangPolicy::Fcfs,
            schedule_conservativeness: 1.0,
            chunked_prefill_size: None,
            max_prefill_tokens: 16384,
            max_running_requests: None,
            max_total_tokens: None,
            enable_hierarchical_cache: false,
            hicache_ratio: 2.0,
            hicache_size: 0.0,
            hicache_write_policy: crate::kv::radix::WritePolicy::WriteThrough,
        }
    }
}

/// `[batching.adaptive]`: multiplicative decrease, additive increase of the batch size limit (rule D6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// Seconds between adjustments.
    pub interval_s: f64,
    /// Mean batch latency (dispatch to last token) above which the limit shrinks.
    pub target_latency_s: f64,
    pub min_batch_size: u32,
    /// The limit is multiplied by this (then rounded down) when over the target; in (0, 1).
    pub decrease_factor: f64,
    /// The limit grows by this when at or under the target.
    pub increase_step: u32,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            interval_s: 10.0,
            target_latency_s: 1.0,
            min_batch_size: 1,
            decrease_factor: 0.5,
            increase_step: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Generated multi-turn sessions (the parameters below).
    Conversational,
    /// Replay of a recorded trace (`[workload.trace]`).
    Trace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids.
    Mooncake,
    /// Azure LLM inference trace 2023: TIMESTAMP, ContextTokens, GeneratedTokens.
    Azure,
    /// BurstGPT: Timestamp, Session ID, Elapsed time, ..., Request tokens, Response tokens.
    Burstgpt,
    /// servesim's native CSV (what `servesim workload export` writes).
    Servesim,
}

/// How a trace's requests are released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayMode {
    /// Closed loop for traces with sessions, open loop otherwise.
    Auto,
    /// Every request at its recorded time.
    Open,
    /// A session's next turn the recorded gap after the previous turn completes.
    Closed,
}

/// A trace to replay, with its replay controls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    pub format: TraceFormat,
    /// Path to the trace file, relative to the working directory.
    pub path: String,
    /// Tokens per hash id (Mooncake: 512).
    pub block_tokens: u32,
    /// Divides every time (timestamps and gaps): 2.0 replays twice as fast.
    pub speedup: f64,
    /// Rescale times so the mean request rate is this (requests/s); replaces `speedup`.
    pub target_rate: Option<f64>,
    /// Skip requests recorded before this many seconds from the trace start (the window's start;
    /// `workload.duration_s` is its length, `workload.max_requests` caps it).
    pub start_s: f64,
    pub mode: ReplayMode,
    /// Azure only: give every prompt one shared prefix of this many tokens (0: every prompt unique).
    pub shared_prefix_tokens: u32,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            format: TraceFormat::Mooncake,
            path: String::new(),
            block_tokens: 512,
            speedup: 1.0,
            target_rate: None,
            start_s: 0.0,
            mode: ReplayMode::Auto,
            shared_prefix_tokens: 0,
        }
    }
}

/// The workload: a generated conversational one (defaults follow real chat traces, see the README) or a
/// trace replay. `duration_s` and `max_requests` bound both kinds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    pub kind: WorkloadKind,
    pub trace: TraceConfig,
    /// Sessions started per second of virtual time.
    pub session_rate: f64,
    pub arrival: ArrivalProcess,
    /// Gamma shape when `arrival = "gamma"`.
    pub burstiness: f64,
    /// The rate over time, a factor on `session_rate` (or a trace's `speedup`); unset: constant.
    pub rate_schedule: Option<RateSchedule>,
    /// No session starts after this many seconds, and a turn is kept only if its nominal release time
    /// (session start + earlier think times, service time ignored) is earlier, so the request set does not
    /// depend on the engine. For traces: the replay window from the trace start.
    pub duration_s: Option<f64>,
    /// At most this many sessions start.
    pub max_sessions: Option<u64>,
    /// At most this many requests: sessions stop starting, and the last one's turns are cut, at this total.
    pub max_requests: Option<u64>,
    /// Turns per session.
    pub turns: Dist,
    /// Tokens of each new user message.
    pub user_tokens: Dist,
    /// Probability that a turn also pastes a long document.
    pub doc_probability: f64,
    /// Probability that a session's first turn pastes a document (default: `doc_probability`).
    pub first_turn_doc_probability: Option<f64>,
    pub doc_tokens: Dist,
    /// Tokens of each response (the true output length; the scheduler never sees it).
    pub response_tokens: Dist,
    /// Seconds between a turn's completion and the next turn's release.
    pub think_time_s: Dist,
    /// The `max_tokens` each request carries (visible to the scheduler); responses longer than this are cut.
    pub max_tokens: u32,
    /// Per-session priority (lower is served first under `engine.policy = "priority"`), rounded to an integer.
    pub priority: Dist,
    /// Drop the oldest turns when a prompt plus `max_tokens` would exceed the model's context; when false such
    /// requests are rejected.
    pub truncate_context: bool,
    /// Shared system prompts; each session draws one by share. Empty means no system prompt.
    pub system_prompts: Vec<SystemPrompt>,
    /// Sampling profiles; each session draws one by share (from a stream of its own, so adding profiles
    /// changes no other draw). Empty: every request has the default sampling parameters.
    pub sampling: Vec<SamplingProfile>,
    /// The client gives up on a request with no first token this many seconds after it sent it: the
    /// request is aborted (status `timed_out`, its KV freed, as vLLM aborts a request whose client went
    /// away). Unset: clients wait for ever.
    pub client_timeout_s: Option<f64>,
    /// Times a client sends a request again after a rejection or a timeout, `retry_after_s` later (the
    /// 429 `Retry-After` a client honours). Each attempt is a row of `requests.csv` with the same
    /// request id and its `attempt` number.
    pub max_retries: u32,
    pub retry_after_s: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        let ln = |median: f64, sigma: f64, max: f64| Dist::Lognormal {
            median,
            sigma,
            min: Some(1.0),
            max: Some(max),
        };
        WorkloadConfig {
            kind: WorkloadKind::Conversational,
            trace: TraceConfig::default(),
            session_rate: 1.0,
            arrival: ArrivalProcess::Poisson,
            burstiness: 1.0,
            rate_schedule: None,
            duration_s: None,
            max_sessions: None,
            max_requests: None,
            turns: Dist::Zipf {
                alpha: 2.0,
                min: 1,
                max: 50,
            },
            user_tokens: ln(60.0, 1.4, 8192.0),
            doc_probability: 0.10,
            first_turn_doc_probability: None,
            doc_tokens: ln(4000.0, 1.0, 100_000.0),
            response_tokens: ln(150.0, 0.9, 2048.0),
            think_time_s: Dist::Lognormal {
                median: 100.0,
                sigma: 1.4,
                min: None,
                max: Some(3600.0),
            },
            max_tokens: 2048,
            priority: Dist::Constant { value: 0.0 },
            truncate_context: true,
            system_prompts: vec![SystemPrompt {
                tokens: 600,
                share: 1.0,
            }],
            sampling: Vec::new(),
            client_timeout_s: None,
            max_retries: 0,
            retry_after_s: 1.0,
        }
    }
}

/// Which model: a catalog name (`servesim catalog models`) or a path to a Hugging Face config.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub name: String,
    /// vLLM's `--dtype`: `auto` (the checkpoint's `torch_dtype`), `bfloat16`, `float16` or `float32`.
    pub dtype: String,
    /// Divides the model's widths and heads (as `calibrate --scale` does): 1 is the model itself; 8 makes
    /// Llama-3.1-8B a model that runs on a CPU host, for `servesim validate`.
    pub width_divisor: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: "llama-3.1-8b".into(),
            dtype: "auto".into(),
            width_divisor: 1,
        }
    }
}

/// Which accelerator, by catalog name (`servesim catalog hardware`), and how many per replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    pub name: String,
    /// An extra hardware catalog (TOML, same format as catalog/hardware.toml); its entries add to or
    /// replace the shipped ones.
    pub catalog: Option<String>,
    /// GPUs per replica, splitting the model tensor-parallel (heads and the MLP split `tensor_parallel`
    /// ways, two all-reduces per layer).
    pub tensor_parallel: u32,
    /// All-reduce bus bandwidth per GPU, GB/s: a ring all-reduce of S bytes takes 2 (tp - 1) / tp x S /
    /// this + `allreduce_latency_s`. The default is NCCL 2.28 measured between two NVLinked H200s
    /// (`data/profiles/h200/nccl-2gpu`: 128 MB in 500 us; NVLink 4's datasheet 450 GB/s per direction is
    /// not reached).
    pub interconnect_gbps: f64,
    /// Fixed cost of one all-reduce, seconds (the same measurement: 17 us for messages up to 64 KB).
    pub allreduce_latency_s: f64,
    /// What one GPU costs per hour (any currency; `capacity` reports costs in it). Overrides the hardware
    /// catalog's `price_per_hour`; the shipped catalog lists none, since prices depend on the provider.
    pub price_per_hour: Option<f64>,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        HardwareConfig {
            name: "h100-sxm".into(),
            catalog: None,
            tensor_parallel: 1,
            interconnect_gbps: 270.0,
            allreduce_latency_s: 0.000_017,
            price_per_hour: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served; preemption takes the most recently admitted request.
    Fcfs,
    /// Lowest (priority, arrival) first; preemption takes the worst (priority, arrival).
    Priority,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// vLLM's behaviour: any request may hit any cached block.
    Global,
    /// A request hits only blocks its own session produced (modelled as a per-session cache salt).
    Session,
}

/// Which engine family a replica runs (its scheduler and the KV store it drives); chosen in
/// `system.rs`, as `cost.kind` chooses the cost model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// vLLM V1: continuous batching with chunked prefill and recompute preemption (the rules in the
    /// README).
    Vllm,
    /// Request-level dynamic batching: by size or timeout, compatible groups, padding, lockstep decode
    /// (`scheduler/dynamic.rs`, `[batching]`).
    Dynamic,
    /// No batching: one request at a time, as soon as the server is free (`scheduler/none.rs`).
    None,
    /// SGLang: prefill-first rounds, `PrefillAdder` admission with `new_token_ratio`, decode retraction,
    /// over its token pool and radix cache (`scheduler/sglang.rs`, `[sglang]`).
    Sglang,
}

impl EngineKind {
    /// Every kind, for tests that must cover each (the leap equality tests).
    pub const ALL: &'static [EngineKind] = &[
        EngineKind::Vllm,
        EngineKind::Dynamic,
        EngineKind::None,
        EngineKind::Sglang,
    ];

    /// The KV stores this engine can drive (the first is its default), for the error that refuses any
    /// other.
    pub fn stores(self) -> &'static [KvKind] {
        match self {
            // vLLM's scheduler admits, preempts and leaps by its paged pool's block allocations.
            EngineKind::Vllm => &[KvKind::Paged],
            // A request-level batch holds its KV until it ends; only stores that always allocate fit.
            EngineKind::Dynamic => &[KvKind::Conversation, KvKind::Off],
            EngineKind::None => &[KvKind::Paged, KvKind::Conversation, KvKind::Off],
            // SGLang's scheduler reads its pool's evictable and available counts and locks tree nodes.
            EngineKind::Sglang => &[KvKind::Radix],
        }
    }
}

impl Config {
    /// Settings that the chosen engine or store ignores, as sentences for a warning (not errors: a
    /// comparison across engines keeps one config for all of them).
    pub fn ignored_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = &self.cluster;
        if c.mode != ClusterMode::Disaggregated {
            for (set, key) in [
                (c.prefill.is_some(), "cluster.prefill"),
                (c.decode.is_some(), "cluster.decode"),
                (c.kv_transfer.is_some(), "cluster.kv_transfer"),
            ] {
                if set {
                    out.push(format!(
                        "[{key}] applies with cluster.mode = \"disaggregated\" only; this cluster is aggregated"
                    ));
                }
            }
        }
        if let Some(n) = self.cluster.replicas_ignored {
            out.push(format!(
                "cluster.replicas = {n}: in disaggregated mode the replicas are the pools' ({})",
                self.cluster.replicas
            ));
        }
        let e = &self.engine;
        if e.kind != EngineKind::Dynamic && self.batching != BatchingConfig::default() {
            out.push(format!(
                "[batching] applies to engine.kind = \"dynamic\" only; this run's engine is \"{}\"",
                config_name(e.kind)
            ));
        }
        if e.kind != EngineKind::Sglang && self.sglang != SglangConfig::default() {
            out.push(format!(
                "[sglang] applies to engine.kind = \"sglang\" only; this run's engine is \"{}\"",
                config_name(e.kind)
            ));
        }
        if e.kind == EngineKind::Sglang {
            let g = &self.sglang;
            let d = SglangConfig::default();
            let hicache_set = g.hicache_ratio != d.hicache_ratio
                || g.hicache_size != d.hicache_size
                || g.hicache_write_policy != d.hicache_write_policy;
            if hicache_set && !g.enable_hierarchical_cache {
                out.push(
                    "sglang.hicache_* apply with sglang.enable_hierarchical_cache = true only"
                        .into(),
                );
            }
            for (set, key) in [
                (
                    e.block_size != EngineConfig::default().block_size,
                    "block_size (SGLang's pool is token-granular; the pool's size comes from the \
                     KV memory, whatever the block size)",
                ),
                (
                    e.max_num_batched_tokens.is_some(),
                    "max_num_batched_tokens (use sglang.chunked_prefill_size)",
                ),
                (
                    e.max_num_seqs.is_some(),
                    "max_num_seqs (use sglang.max_running_requests)",
                ),
                (
                    !e.enable_chunked_prefill,
                    "enable_chunked_prefill (use sglang.chunked_prefill_size = -1)",
                ),
                (
                    e.long_prefill_token_threshold != 0,
                    "long_prefill_token_threshold",
                ),
            ] {
                if set {
                    out.push(format!(
                        "engine.{key} is vLLM's; engine.kind = \"sglang\" ignores it"
                    ));
                }
            }
        }
        if e.kv_kind() != KvKind::Conversation && self.kv_store != KvStoreConfig::default() {
            out.push(format!(
                "[kv_store] applies to engine.kv_cache = \"conversation\" only; this run's store is \"{}\"",
                config_name(e.kv_kind())
            ));
        }
        if let Some(o) = &self.kv.offload {
            if o.backend == OffloadBackend::Native
                && o.chunk_tokens != OffloadConfig::default().chunk_tokens
            {
                out.push(
                    "kv.offload.chunk_tokens applies to backend = \"lmcache\" only; native offload keeps GPU-sized blocks"
                        .to_string(),
                );
            }
        }
        let c = &self.cluster;
        for (policy, set, table) in [
            (
                RouterPolicy::ConsistentHash,
                c.consistent_hash != ConsistentHashConfig::default(),
                "consistent_hash",
            ),
            (
                RouterPolicy::PrefixAware,
                c.prefix_aware != PrefixAwareConfig::default(),
                "prefix_aware",
            ),
            (
                RouterPolicy::CacheAware,
                c.cache_aware != CacheAwareConfig::default(),
                "cache_aware",
            ),
        ] {
            if set && c.router != policy {
                out.push(format!(
                    "[cluster.{table}] applies to cluster.router = \"{table}\" only; this run's router is \"{}\"",
                    config_name(c.router)
                ));
            }
        }
        let reads_load = matches!(
            c.router,
            RouterPolicy::LeastLoaded
                | RouterPolicy::PowerOfTwo
                | RouterPolicy::ConsistentHash
                | RouterPolicy::CacheAware
        );
        if c.load_signal != LoadSignal::Requests && !reads_load {
            out.push(format!(
                "cluster.load_signal applies to the least_loaded, power_of_two, consistent_hash and \
                 cache_aware routers; this run's router is \"{}\"",
                config_name(c.router)
            ));
        }
        if !matches!(e.kv_kind(), KvKind::Paged | KvKind::Radix) && !e.prefix_caching {
            out.push(
                "engine.prefix_caching applies to the paged store only; turn a conversation store off \
                 with kv_store.enabled = false"
                    .into(),
            );
        }
        out
    }

    /// Settings that are valid but probably not what the user meant, as one line each (printed by `run`
    /// as warnings, after [`Config::ignored_settings`]).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = &self.cluster;
        // Events that leave no replica up: every request is then refused.
        let mut up = c.replicas as i64;
        for (i, e) in c.events_in_order() {
            up += match e.action {
                ClusterAction::AddReplica => 1,
                ClusterAction::Restart | ClusterAction::SwapModel => 0,
                _ => -1,
            };
            if up == 0 {
                out.push(format!(
                    "cluster.events[{i}] leaves no replica taking requests from {} s: every request from then \
                     on is refused (unavailable) until one is added",
                    e.at_s
                ));
            }
        }
        if c.router == RouterPolicy::CacheAware
            && c.load_signal != LoadSignal::Requests
            && (
                c.cache_aware.balance_abs_threshold,
                c.cache_aware.balance_rel_threshold,
            ) == (
                CacheAwareConfig::default().balance_abs_threshold,
                CacheAwareConfig::default().balance_rel_threshold,
            )
        {
            out.push(format!(
                "cluster.cache_aware.balance_abs_threshold (64) counts requests, as SGLang's does; with \
                 load_signal = \"{}\" set it in that signal's units",
                config_name(c.load_signal)
            ));
        }
        out
    }

    fn validate_sglang(&self) -> Result<(), ConfigError> {
        let g = &self.sglang;
        let c = g.schedule_conservativeness;
        if !(c.is_finite() && c > 0.0) {
            return Err(ConfigError::invalid(
                "sglang.schedule_conservativeness",
                format!("must be a positive number (SGLang's default is 1.0), got {c}"),
            ));
        }
        if let Some(n) = g.chunked_prefill_size {
            if n == 0 || n < -1 || n > u32::MAX as i64 {
                return Err(ConfigError::invalid(
                    "sglang.chunked_prefill_size",
                    format!("must be a positive token count, or -1 to turn chunking off; got {n}"),
                ));
            }
        }
        for (key, v) in [
            ("max_prefill_tokens", Some(g.max_prefill_tokens as u64)),
            (
                "max_running_requests",
                g.max_running_requests.map(u64::from),
            ),
            ("max_total_tokens", g.max_total_tokens),
        ] {
            if v == Some(0) {
                return Err(ConfigError::invalid(
                    format!("sglang.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if !(g.hicache_ratio.is_finite() && g.hicache_ratio > 0.0) {
            return Err(ConfigError::invalid(
                "sglang.hicache_ratio",
                format!(
                    "must be a positive multiple of the GPU pool, got {}",
                    g.hicache_ratio
                ),
            ));
        }
        if !(g.hicache_size.is_finite() && g.hicache_size >= 0.0) {
            return Err(ConfigError::invalid(
                "sglang.hicache_size",
                format!(
                    "must be 0 (use hicache_ratio) or a size in GB, got {}",
                    g.hicache_size
                ),
            ));
        }
        if g.enable_hierarchical_cache && !self.engine.prefix_caching {
            return Err(ConfigError::invalid(
                "sglang.enable_hierarchical_cache",
                "HiCache extends the radix cache; with engine.prefix_caching = false (SGLang's \
                 --disable-radix-cache) there is nothing to extend: turn one of them off",
            ));
        }
        if self.engine.kind == EngineKind::Sglang
            && self.engine.policy == SchedulingPolicy::Priority
        {
            return Err(ConfigError::invalid(
                "engine.policy",
                "SGLang's priority scheduling is not modelled; use policy = \"fcfs\" with engine.kind = \
                 \"sglang\" (sglang.schedule_policy picks fcfs, lpm or dfs-weight)",
            ));
        }
        Ok(())
    }

    fn validate_batching(&self) -> Result<(), ConfigError> {
        let b = &self.batching;
        if b.max_batch_size == 0 {
            return Err(ConfigError::invalid(
                "batching.max_batch_size",
                "must be at least 1",
            ));
        }
        let d = b.max_queue_delay_s;
        if !(d.is_finite() && d >= 0.0) {
            return Err(ConfigError::invalid(
                "batching.max_queue_delay_s",
                format!("must be 0 or more seconds, got {d}"),
            ));
        }
        for f in &b.group_by {
            if !GROUP_BY_FIELDS.contains(&f.as_str()) {
                return Err(ConfigError::invalid(
                    "batching.group_by",
                    format!("\"{f}\" is not a sampling field; use any of {GROUP_BY_FIELDS:?}"),
                ));
            }
        }
        if let Some(a) = &b.adaptive {
            let pos = |k: &str, v: f64| {
                if v.is_finite() && v > 0.0 {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(
                        format!("batching.adaptive.{k}"),
                        format!("must be positive seconds, got {v}"),
                    ))
                }
            };
            pos("interval_s", a.interval_s)?;
            if a.interval_s < 1e-6 {
                return Err(ConfigError::invalid(
                    "batching.adaptive.interval_s",
                    format!("must be at least 1 microsecond, got {}", a.interval_s),
                ));
            }
            pos("target_latency_s", a.target_latency_s)?;
            if a.min_batch_size == 0 || a.min_batch_size > b.max_batch_size {
                return Err(ConfigError::invalid(
                    "batching.adaptive.min_batch_size",
                    format!(
                        "must be from 1 to batching.max_batch_size ({}), got {}",
                        b.max_batch_size, a.min_batch_size
                    ),
                ));
            }
            if !(a.decrease_factor > 0.0 && a.decrease_factor < 1.0) {
                return Err(ConfigError::invalid(
                    "batching.adaptive.decrease_factor",
                    format!("must be between 0 and 1, got {}", a.decrease_factor),
                ));
            }
            if a.increase_step == 0 {
                return Err(ConfigError::invalid(
                    "batching.adaptive.increase_step",
                    "must be at least 1",
                ));
            }
        }
        let w = &self.workload;
        if w.sampling.len() > u16::MAX as usize {
            return Err(ConfigError::invalid(
                "workload.sampling",
                format!("{} profiles; at most {}", w.sampling.len(), u16::MAX),
            ));
        }
        for (i, p) in w.sampling.iter().enumerate() {
            let bad = |k: &str, m: String| {
                Err(ConfigError::invalid(
                    format!("workload.sampling[{i}].{k}"),
                    m,
                ))
            };
            if !(p.share.is_finite() && p.share > 0.0) {
                return bad("share", format!("must be positive, got {}", p.share));
            }
            if !(p.temperature.is_finite() && p.temperature >= 0.0) {
                return bad(
                    "temperature",
                    format!("must be 0 (greedy) or more, got {}", p.temperature),
                );
            }
            if !(p.top_p > 0.0 && p.top_p <= 1.0) {
                return bad("top_p", format!("must be in (0, 1], got {}", p.top_p));
            }
            if p.top_k == 0 || p.top_k < -1 {
                return bad(
                    "top_k",
                    format!("must be -1 (all tokens) or at least 1, got {}", p.top_k),
                );
            }
        }
        let k = &self.kv_store;
        for (key, v) in [
            ("max_sessions", k.max_sessions),
            ("max_tokens", k.max_tokens),
            ("max_bytes", k.max_bytes),
        ] {
            if v == Some(0) {
                return Err(ConfigError::invalid(
                    format!("kv_store.{key}"),
                    "must be at least 1 (leave it unset for no limit, or set kv_store.enabled = false)",
                ));
            }
        }
        Ok(())
    }
}

/// A config enum's name as written in a config file (`"vllm"`, `"paged"`), for messages.
/// `v` is a finite number, 0 or more; else an error naming `key`.
fn check_nonneg(key: impl Into<String>, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be a finite number, 0 or more, got {v}"),
        ))
    }
}

/// `v` is a finite number above 0; else an error naming `key`.
fn check_positive(key: impl Into<String>, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be a finite number above 0, got {v}"),
        ))
    }
}

pub fn config_name(v: impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `[kv_store]`: the limits and switches of the per-conversation store (`kv/conversation.rs`, rules
/// C1-C5). Ignored by other stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvStoreConfig {
    /// False: every operation is a no-op (C5).
    pub enabled: bool,
    /// The most sessions with an entry.
    pub max_sessions: Option<u64>,
    /// The most tokens held by entries (unset: the tokens the GPU's KV memory holds).
    pub max_tokens: Option<u64>,
    /// The most bytes held by entries (tokens x the model's KV bytes per token).
    pub max_bytes: Option<u64>,
    /// Drop a session's entry when its last turn has left (C4).
    pub release_on_session_end: bool,
}

impl Default for KvStoreConfig {
    fn default() -> Self {
        KvStoreConfig {
            enabled: true,
            max_sessions: None,
            max_tokens: None,
            max_bytes: None,
            release_on_session_end: true,
        }
    }
}

/// `[kv]`: what a replica keeps of the KV cache besides its GPU pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// Offload tiers (CPU memory, local disk); unset: GPU memory only.
    pub offload: Option<OffloadConfig>,
    /// A cache file (`servesim run --save-cache`) to start every replica's caches from; unset or empty:
    /// a cold start. Read relative to the working directory, as trace paths are.
    pub warm_start: Option<String>,
}

/// The connector that offloads KV below GPU memory (`kv.offload.backend`; see `kv/tier.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadBackend {
    /// vLLM's native offloading connector: one CPU tier of GPU-sized blocks, write-through of every full
    /// block, asynchronous loads (engine-semantics O1-O3).
    Native,
    /// LMCache: 256-token chunks of the prompt, CPU then local disk, synchronous loads (L1-L3).
    Lmcache,
}

/// `[kv.offload]`: KV tiers below GPU memory, per replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadConfig {
    pub backend: OffloadBackend,
    /// CPU tier size, GiB per replica (vLLM `--kv-offloading-size`; LMCache `max_local_cpu_size`, 5.0);
    /// 0: no CPU tier (LMCache: disk only; with `disk_gib` 0 too, no offload at all).
    pub cpu_gib: f64,
    /// Local disk tier size, GiB per replica (LMCache `max_local_disk_size`, 0 = none; native has none).
    pub disk_gib: f64,
    /// LMCache chunk size, tokens (`chunk_size`, 256); a multiple of `engine.block_size`.
    pub chunk_tokens: u32,
    /// GPU-CPU link bandwidth, GB/s (10^9 bytes); unset: the hardware catalog's `host_link_gbps`.
    pub cpu_bandwidth_gbps: Option<f64>,
    /// Latency of one load from CPU memory, seconds.
    pub cpu_latency_s: f64,
    /// Disk read bandwidth, GB/s.
    pub disk_bandwidth_gbps: f64,
    /// Latency of one load from disk, seconds.
    pub disk_latency_s: f64,
    /// Whether the CPU tier keeps its content across a `restart` (true for a cache server outside the
    /// engine process; vLLM's and LMCache's in-process CPU tiers lose it). The disk tier always does.
    pub cpu_survives_restart: bool,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            backend: OffloadBackend::Native,
            cpu_gib: 5.0,
            disk_gib: 0.0,
            chunk_tokens: 256,
            cpu_bandwidth_gbps: None,
            // The H200's measured pinned-copy latency, ~6 us (data/profiles/h200-host-link).
            cpu_latency_s: 6e-6,
            // A PCIe 4.0 NVMe drive's sequential read, and its read latency (datasheet class figures).
            disk_bandwidth_gbps: 6.0,
            disk_latency_s: 100e-6,
            cpu_survives_restart: false,
        }
    }
}

impl OffloadConfig {
    fn validate(&self, engine: &EngineConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("kv.offload.{k}");
        if engine.kind != EngineKind::Vllm
            || engine.kv_kind() != KvKind::Paged
            || !engine.prefix_caching
        {
            return Err(ConfigError::invalid(
                "kv.offload",
                "offload tiers extend vLLM's paged prefix cache: they need engine.kind = \"vllm\", \
                 engine.kv_cache = \"paged\" and engine.prefix_caching = true; remove [kv.offload] otherwise",
            ));
        }
        let pos = |k: &str, v: f64| check_positive(key(k), v);
        let nonneg = |k: &str, v: f64| check_nonneg(key(k), v);
        nonneg("cpu_gib", self.cpu_gib)?;
        nonneg("disk_gib", self.disk_gib)?;
        nonneg("cpu_latency_s", self.cpu_latency_s)?;
        nonneg("disk_latency_s", self.disk_latency_s)?;
        pos("disk_bandwidth_gbps", self.disk_bandwidth_gbps)?;
        if let Some(b) = self.cpu_bandwidth_gbps {
            pos("cpu_bandwidth_gbps", b)?;
        }
        if self.backend == OffloadBackend::Native && self.disk_gib > 0.0 {
            return Err(ConfigError::invalid(
                key("disk_gib"),
                "vLLM's native offloading has a CPU tier only; use backend = \"lmcache\" for a disk tier, \
                 or set disk_gib = 0",
            ));
        }
        if self.backend == OffloadBackend::Lmcache
            && (self.chunk_tokens == 0 || !self.chunk_tokens.is_multiple_of(engine.block_size))
        {
            return Err(ConfigError::invalid(
                key("chunk_tokens"),
                format!(
                    "must be a positive multiple of engine.block_size ({}), got {}",
                    engine.block_size, self.chunk_tokens
                ),
            ));
        }
        Ok(())
    }
}

/// Which KV store a replica keeps (`engine.kv_cache`); the scheduler owns it, chosen in `system.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvKind {
    /// vLLM's paged block pool, with its prefix cache when `prefix_caching` is on (K5-K11, P1).
    Paged,
    /// One KV entry per conversation, LRU-bounded by `[kv_store]` (`kv/conversation.rs`).
    Conversation,
    /// No KV cache: every decode token recomputes its whole context (`kv/off.rs`).
    Off,
    /// SGLang's token pool and radix cache (`kv/token_pool.rs`); `prefix_caching = false` is its
    /// `--disable-radix-cache`.
    Radix,
}

impl KvKind {
    /// Every kind, for tests that must cover each (the leap equality tests).
    pub const ALL: &'static [KvKind] = &[
        KvKind::Paged,
        KvKind::Conversation,
        KvKind::Off,
        KvKind::Radix,
    ];
}

/// One serving instance, with vLLM V1's knobs and defaults. `None` means "derive as vLLM does"; the resolved
/// config written with each run states the value used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The engine family (default `vllm`).
    pub kind: EngineKind,
    /// The KV store; unset, the engine's own (the first of [`EngineKind::stores`]: `paged` for vLLM and
    /// no batching, `conversation` for dynamic batching), so that a change of engine brings its store;
    /// `resolved.toml` names the one used.
    pub kv_cache: Option<KvKind>,
    pub policy: SchedulingPolicy,
    pub max_num_batched_tokens: Option<u32>,
    pub max_num_seqs: Option<u32>,
    pub max_model_len: Option<u32>,
    pub enable_chunked_prefill: bool,
    /// 0 = off. Caps the tokens one request may prefill per step.
    pub long_prefill_token_threshold: u32,
    pub block_size: u32,
    pub gpu_memory_utilization: f64,
    /// Overrides the block count derived from memory (vLLM `num_gpu_blocks_override`).
    pub num_gpu_blocks: Option<u32>,
    /// Memory kept for activations and non-torch allocations, GiB; derived from the batch size when unset.
    pub activation_reserve_gib: Option<f64>,
    pub prefix_caching: bool,
    pub prefix_cache_scope: CacheScope,
    /// vLLM's `async_scheduling` (on by default where the executor supports it): the host schedules step
    /// n+1 while the GPU runs step n, so the cost models' host time (`cost.roofline.step_overhead_s`,
    /// `layer_overhead_s`) adds nothing to a step; off, it adds to every step. servesim assumes the GPU
    /// step is the longer of the two (true for every catalog model and GPU).
    pub async_scheduling: bool,
    /// vLLM's `--kv-cache-dtype`: `auto` (the model's dtype), `fp8` / `fp8_e4m3` / `fp8_e5m2` (one byte
    /// per element: twice the blocks, half the bytes each decode step reads), `bfloat16`, `float16`.
    pub kv_cache_dtype: String,
    /// Seconds a restarted replica is down before it serves again (`restart` in `[[cluster.events]]`):
    /// the model load and warm-up.
    pub startup_s: f64,
    /// `[engine.speculative]`: vLLM's speculative decoding (`--speculative-config`); unset, off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeConfig>,
}

/// The draft method of speculative decoding (vLLM's `speculative_config.method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecMethod {
    /// Prompt lookup: drafts copied from an earlier n-gram match in the context, proposed on the CPU
    /// between steps (no GPU time, no lookahead slots).
    Ngram,
    /// EAGLE / EAGLE-3 heads: one decoder layer over the target's hidden states, run once per draft
    /// token after the target's forward pass; priced as a one-layer model of the target's shape.
    Eagle,
    Eagle3,
    /// A separate small draft model (`model`), run once per draft token after the target's pass.
    DraftModel,
}

impl SpecMethod {
    /// vLLM reserves `num_speculative_tokens` lookahead slots per running request for the methods whose
    /// drafter writes KV (`use_eagle()` or `uses_draft_model()` in `Scheduler.__init__`); n-gram none.
    pub fn lookahead(self) -> bool {
        self != SpecMethod::Ngram
    }
}

/// `[engine.speculative]`: each decode step verifies `num_speculative_tokens` draft tokens per request
/// (a verification chunk of k + 1 tokens), accepts a prefix of them by rejection sampling and appends
/// the accepted tokens plus one (vLLM V1's scheduler and rejection sampler). Acceptance is modelled,
/// not computed: each draft token is accepted with probability `acceptance_rate` (or a rate drawn per
/// request from `acceptance_rate_dist`), independently, until the first rejection, so a step emits
/// (1 - a^(k+1)) / (1 - a) tokens on average.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeConfig {
    pub method: SpecMethod,
    /// Draft tokens proposed per request per step, k (vLLM `num_speculative_tokens`).
    pub num_speculative_tokens: u32,
    /// The probability that a draft token is accepted given the ones before it were (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    /// Instead of one rate: each request's rate drawn from this distribution, which must stay within
    /// [0, 1] (a constant or uniform up to 1, another continuous one with `max` at most 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate_dist: Option<Dist>,
    /// The draft model (`method = "draft_model"` only): a catalog name or a `config.json` path; it must
    /// share the target's vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl SpeculativeConfig {
    fn validate(&self, engine: &EngineConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("engine.speculative.{k}");
        if engine.kind != EngineKind::Vllm {
            return Err(ConfigError::invalid(
                "engine.kind",
                format!(
                    "speculative decoding is modelled on engine.kind = \"vllm\" only, not \"{}\"; remove \
                     [engine.speculative] or set engine.kind = \"vllm\"",
                    config_name(engine.kind)
                ),
            ));
        }
        if !(1..=64).contains(&self.num_speculative_tokens) {
            return Err(ConfigError::invalid(
                key("num_speculative_tokens"),
                format!(
                    "must be 1 to 64 draft tokens per step, got {}",
                    self.num_speculative_tokens
                ),
            ));
        }
        match (self.acceptance_rate, &self.acceptance_rate_dist) {
            (Some(a), None) if (0.0..=1.0).contains(&a) => {}
            (Some(a), None) => {
                return Err(ConfigError::invalid(
                    key("acceptance_rate"),
                    format!("must be a probability from 0 to 1, got {a}"),
                ))
            }
            (None, Some(d)) => {
                d.validate()
                    .map_err(|e| ConfigError::invalid(key("acceptance_rate_dist"), e))?;
                // Rates are probabilities: the distribution must stay within [0, 1].
                let top = match d {
                    Dist::Constant { value } => Some(*value),
                    Dist::Uniform { max, .. } => Some(*max),
                    Dist::Exponential { max, .. }
                    | Dist::Lognormal { max, .. }
                    | Dist::Gamma { max, .. } => *max,
                    Dist::Zipf { .. } => None,
                };
                if !top.is_some_and(|t| t <= 1.0) {
                    return Err(ConfigError::invalid(
                        key("acceptance_rate_dist"),
                        "draws acceptance probabilities, so it must stay within [0, 1]: a constant or \
                         uniform up to 1, or another continuous distribution with max = 1 or less",
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "engine.speculative",
                    "set acceptance_rate (one rate) or acceptance_rate_dist (drawn per request), not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "engine.speculative",
                    "set acceptance_rate, the probability a draft token is accepted (e.g. 0.7), or \
                     acceptance_rate_dist to draw one per request",
                ))
            }
        }
        match (self.method, &self.model) {
            (SpecMethod::DraftModel, None) => Err(ConfigError::invalid(
                key("model"),
                "method \"draft_model\" needs the draft model: a catalog name (e.g. \"llama-3.2-1b\" for a \
                 Llama-3 target) or the path of its Hugging Face config.json",
            )),
            (m, Some(_)) if m != SpecMethod::DraftModel => Err(ConfigError::invalid(
                key("model"),
                format!(
                    "only method \"draft_model\" runs a separate model; method \"{}\" has none: remove `model`",
                    config_name(m)
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl EngineConfig {
    /// The KV store: `kv_cache`, or the engine's own when unset.
    pub fn kv_kind(&self) -> KvKind {
        self.kv_cache.unwrap_or(self.kind.stores()[0])
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Vllm,
            kv_cache: None,
            policy: SchedulingPolicy::Fcfs,
            max_num_batched_tokens: None,
            max_num_seqs: None,
            max_model_len: None,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            num_gpu_blocks: None,
            activation_reserve_gib: None,
            prefix_caching: true,
            prefix_cache_scope: CacheScope::Global,
            async_scheduling: true,
            kv_cache_dtype: "auto".into(),
            startup_s: 60.0,
            speculative: None,
        }
    }
}

/// `[admission]`: each replica's overload protection. A request the router sends to a replica whose
/// queue holds `max_waiting` requests is refused (status `rejected`, reason `queue_full`: the 429
/// analogue); a replica whose KV usage exceeds `max_kv_usage_degraded` reports itself degraded and
/// routers pass it over; with every replica degraded or down a request is refused (reason
/// `unavailable`: the 503 analogue). Both read the replica's state at the arrival, the degraded flag
/// through the router's view (as old as `cluster.signal_delay_s`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests a replica's waiting queue holds at most; unset: no limit.
    pub max_waiting: Option<u32>,
    /// KV usage (0 to 1) above which a replica is degraded; unset: never degraded.
    pub max_kv_usage_degraded: Option<f64>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_waiting: None,
            max_kv_usage_degraded: Some(0.9),
        }
    }
}

impl AdmissionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_waiting == Some(0) {
            return Err(ConfigError::invalid(
                "admission.max_waiting",
                "must be at least 1 (0 would refuse every request); remove the key for no limit",
            ));
        }
        if let Some(u) = self.max_kv_usage_degraded {
            if !(u > 0.0 && u <= 1.0) {
                return Err(ConfigError::invalid(
                    "admission.max_kv_usage_degraded",
                    format!("must be a KV usage above 0 and at most 1, got {u}; remove the key to never degrade"),
                ));
            }
        }
        Ok(())
    }
}

/// The routing policy (`cluster.router`); each is one file under `src/cluster/router/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterPolicy {
    /// Up replicas in turn.
    RoundRobin,
    /// The lowest `cluster.load_signal`.
    LeastLoaded,
    /// Hash of the session id modulo the number of up replicas (vLLM production-stack's simplest
    /// stickiness; most sessions move when the count changes).
    SessionAffinity,
    /// Two distinct random up replicas, the less loaded wins (SGLang gateway `power_of_two`, R6).
    PowerOfTwo,
    /// A ring with virtual nodes and bounded loads (`[cluster.consistent_hash]`, R6).
    ConsistentHash,
    /// The llm-d / Gateway API inference extension scorer (`[cluster.prefix_aware]`, R1, R3, R4).
    PrefixAware,
    /// The SGLang gateway's cache-aware policy (`[cluster.cache_aware]`, R5).
    CacheAware,
}

/// What a router reads as a replica's load (`cluster.load_signal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadSignal {
    /// Requests held, waiting or running (SGLang's in-flight count, vLLM's num_requests_*).
    Requests,
    /// Prompt tokens of the requests held: the work outstanding, in tokens.
    Tokens,
    /// KV-cache usage, 0 to 1 (vLLM's `kv_cache_usage_perc`).
    KvUsage,
}

/// What the consistent-hash ring hashes (`cluster.consistent_hash.key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The session id (a routing-key header: SGLang `consistent_hashing`, production-stack `session`).
    Session,
    /// The prompt's first `prefix_tokens` tokens (SGLang `prefix_hash`).
    Prefix,
}

/// `[cluster.consistent_hash]` (R6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistentHashConfig {
    pub key: HashKey,
    /// Tokens hashed under `key = "prefix"` (SGLang: 256).
    pub prefix_tokens: u32,
    /// Points per replica on the ring (SGLang: 150).
    pub virtual_nodes: u32,
    /// c of consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018): a replica
    /// takes a key only while its load, with the key, stays within c x the mean load (rounded up for
    /// request counts); else the next replica on the ring. `inf` (or unset): no bound, plain consistent
    /// hashing.
    pub load_bound: Option<f64>,
}

impl Default for ConsistentHashConfig {
    fn default() -> Self {
        ConsistentHashConfig {
            key: HashKey::Session,
            prefix_tokens: 256,
            virtual_nodes: 150,
            load_bound: Some(1.25),
        }
    }
}

/// `[cluster.prefix_aware]`: the Gateway API inference extension's approximate prefix scorer (R1) with
/// the queue and KV-utilisation scorers (R3), summed by weight and the best taken (R4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixAwareConfig {
    /// Tokens per hashed block (GIE `blockSizeTokens`, 16; unset: the engine's block size, GIE's
    /// `autoTune`).
    pub block_size: Option<u32>,
    /// Blocks of a prompt matched at most (GIE `maxPrefixBlocksToMatch`).
    pub max_prefix_blocks: u32,
    /// Blocks each replica's index holds, least recently used out first (unset: the replica's GPU block
    /// count, as GIE does when it knows it).
    pub index_blocks: Option<u64>,
    /// Weights of the prefix, queue and KV-utilisation scores (llm-d's precise-prefix config: 2, 1, 1).
    pub prefix_weight: f64,
    pub queue_weight: f64,
    pub kv_usage_weight: f64,
}

impl Default for PrefixAwareConfig {
    fn default() -> Self {
        PrefixAwareConfig {
            block_size: None,
            max_prefix_blocks: 256,
            index_blocks: None,
            prefix_weight: 2.0,
            queue_weight: 1.0,
            kv_usage_weight: 1.0,
        }
    }
}

/// `[cluster.cache_aware]`: the SGLang gateway's cache-aware policy (R5). Defaults are the launcher's
/// (`sglang_router` `RouterArgs`), which a deployment gets; sizes count characters, a token as 4 (R1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheAwareConfig {
    /// Matched share of the prompt above which the request follows its cache.
    pub cache_threshold: f64,
    /// Imbalanced when max - min load exceeds this ...
    pub balance_abs_threshold: f64,
    /// ... and max exceeds this x min.
    pub balance_rel_threshold: f64,
    /// Seconds between evictions of each replica's least recently used leaves.
    pub eviction_interval_s: f64,
    /// Characters each replica may hold in the tree after an eviction.
    pub max_tree_size: u64,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        CacheAwareConfig {
            cache_threshold: 0.3,
            balance_abs_threshold: 64.0,
            balance_rel_threshold: 1.5,
            eviction_interval_s: 120.0,
            max_tree_size: 1 << 26,
        }
    }
}

/// What a cluster event does (`[[cluster.events]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterAction {
    /// A new replica joins, cold (empty KV cache), and takes requests at once; it gets the next id.
    AddReplica,
    /// Replica `replica` leaves: it takes nothing new, the requests it holds that never started are
    /// routed again (their arrival times kept), the started ones finish there; then it is down.
    RemoveReplica,
    /// Replica `replica` is drained: it takes nothing new and finishes everything it holds, waiting
    /// requests included; then it is down.
    Drain,
    /// Replica `replica` restarts cold: at the end of the step in flight every request it holds is
    /// aborted (status `aborted`, reason `replica_restart`; clients retry as after a refusal), its KV
    /// cache is lost, and it is down for `engine.startup_s`, then up.
    Restart,
    /// Replica `replica` changes model: as a restart, but it is down for `swap_s` (default
    /// `engine.startup_s`), every cache it kept is flushed (the offload tiers too: they hold the old
    /// model's KV), and it then serves `model`, sized and priced for it.
    SwapModel,
}

/// A change to the cluster at a time (`[[cluster.events]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEvent {
    /// Seconds of virtual time.
    pub at_s: f64,
    pub action: ClusterAction,
    /// The replica it acts on (every action but `add_replica`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// `swap_model`: the model served afterwards (as `model.name`: a catalog name or a config.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `swap_model`: seconds the replica is down loading it (unset: `engine.startup_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_s: Option<f64>,
}

impl ClusterEvent {
    /// Seconds a `restart` or `swap_model` keeps its replica down.
    pub fn down_s(&self, startup_s: f64) -> f64 {
        self.swap_s.unwrap_or(startup_s)
    }
}

/// Replicas behind a router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub replicas: u32,
    pub router: RouterPolicy,
    /// The load that `least_loaded`, `power_of_two`, bounded loads and `cache_aware` compare.
    pub load_signal: LoadSignal,
    /// Routers see replica load (queues, tokens, KV usage) as of their last scrape, taken at an arrival
    /// at least this long after the previous one: 0 is a live view (R4: pod metrics are scraped, so they
    /// lag). Replica states (up, draining) are always current.
    pub signal_delay_s: f64,
    pub consistent_hash: ConsistentHashConfig,
    pub prefix_aware: PrefixAwareConfig,
    pub cache_aware: CacheAwareConfig,
    /// Replicas joining and leaving during the run, applied in time order (ties in list order) before
    /// the arrivals of the same instant.
    pub events: Vec<ClusterEvent>,
    /// `aggregated` (every replica prefills and decodes) or `disaggregated` (prefill and decode pools
    /// with KV transfer between them, `[cluster.prefill]`, `[cluster.decode]`, `[cluster.kv_transfer]`).
    pub mode: ClusterMode,
    /// The prefill pool (disaggregated mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill: Option<PoolConfig>,
    /// The decode pool (disaggregated mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode: Option<PoolConfig>,
    /// The link the prompt's KV crosses from a prefill to a decode instance (disaggregated mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_transfer: Option<KvTransferConfig>,
    /// A `replicas` set in disaggregated mode that the pools' sum replaced (reported as ignored).
    #[serde(skip)]
    pub replicas_ignored: Option<u32>,
}

/// How the cluster serves a request (`cluster.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// Every replica runs prefill and decode.
    #[default]
    Aggregated,
    /// Prefill/decode disaggregation as vLLM's disaggregated prefill runs it behind its proxy: the
    /// prefill router sends the request to a prefill instance with `max_tokens = 1`; when it is done,
    /// the decode router sends it to a decode instance, which pulls the prompt's KV over the link
    /// (NIXL's `get_num_new_matched_tokens`: the prompt past the decode side's own prefix hit, loaded
    /// asynchronously into blocks allocated at admission) and then decodes. The prefill instance keeps
    /// the request's blocks until the pull is done (its delayed free).
    Disaggregated,
}

/// One pool of a disaggregated cluster (`[cluster.prefill]`, `[cluster.decode]`): its instances, and
/// where they differ from the top-level `hardware` and `cluster.router`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub replicas: u32,
    /// The GPU of its instances (a catalog name); unset: `hardware.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// GPUs per instance; unset: `hardware.tensor_parallel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_parallel: Option<u32>,
    /// The router in front of the pool; unset: `cluster.router`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterPolicy>,
}

/// The KV transfer link's kind, for its default bandwidth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvLink {
    /// Within a node: NVLink 4 (H100/H200 SXM), 900 GB/s per GPU both ways on the datasheet, 450 one
    /// way.
    Nvlink,
    /// Between nodes: one 400 Gb/s NIC (ConnectX-7) per GPU, 50 GB/s one way.
    #[default]
    Rdma,
}

impl KvLink {
    /// Datasheet one-way bandwidth per GPU, GB/s.
    pub fn default_gbps(self) -> f64 {
        match self {
            KvLink::Nvlink => 450.0,
            KvLink::Rdma => 50.0,
        }
    }
}

/// Which instance's sample reaches the client first (`cluster.kv_transfer.first_token`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstToken {
    /// vLLM's proxy: the prefill instance's one token is discarded; the decode instance loads the
    /// prompt's KV but the last prompt token, recomputes it and samples the first token itself
    /// (`_update_waiting_for_remote_kv`: a load that would complete the request counts one token
    /// less), so the first token costs one decode step after the transfer.
    #[default]
    Decode,
    /// SGLang's and Splitwise's split: the prefill instance's first token is the client's (its time is
    /// the TTFT) and travels with the KV; the decode instance starts from it.
    Prefill,
}

/// `[cluster.kv_transfer]`: the prompt's KV bytes (the model's `kv_bytes_per_token`, every layer) move
/// at `bandwidth_gbps` per GPU, one way, over the GPUs of the smaller instance in parallel (each
/// tensor-parallel rank sends its shard), after `latency_s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvTransferConfig {
    pub link: KvLink,
    /// One-way GB/s (10^9 bytes) per GPU; unset: the link's datasheet figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbps: Option<f64>,
    /// Seconds each transfer takes besides its bytes (connector handshake, notification).
    pub latency_s: f64,
    pub first_token: FirstToken,
}

impl Default for KvTransferConfig {
    fn default() -> Self {
        KvTransferConfig {
            link: KvLink::Rdma,
            bandwidth_gbps: None,
            latency_s: 0.0,
            first_token: FirstToken::Decode,
        }
    }
}

impl KvTransferConfig {
    /// One-way bytes per second per GPU.
    pub fn bytes_per_s(&self) -> f64 {
        self.bandwidth_gbps.unwrap_or(self.link.default_gbps()) * 1e9
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replicas: 1,
            router: RouterPolicy::RoundRobin,
            load_signal: LoadSignal::Requests,
            signal_delay_s: 0.0,
            consistent_hash: ConsistentHashConfig::default(),
            prefix_aware: PrefixAwareConfig::default(),
            cache_aware: CacheAwareConfig::default(),
            events: Vec::new(),
            mode: ClusterMode::Aggregated,
            prefill: None,
            decode: None,
            kv_transfer: None,
            replicas_ignored: None,
        }
    }
}

impl Config {
    /// GPUs the cluster's starting replicas take: replicas x `hardware.tensor_parallel`, or, in a
    /// disaggregated cluster, each pool's instances x its tensor parallelism.
    pub fn gpus(&self) -> u32 {
        let tp = self.hardware.tensor_parallel;
        match (&self.cluster.prefill, &self.cluster.decode) {
            (Some(p), Some(d)) if self.cluster.pd_pools().is_some() => [p, d]
                .iter()
                .map(|pool| {
                    pool.replicas
                        .saturating_mul(pool.tensor_parallel.unwrap_or(tp))
                })
                .fold(0u32, u32::saturating_add),
            _ => self.cluster.replicas.saturating_mul(tp),
        }
    }
}

impl ClusterConfig {
    /// Disaggregated mode's pools: (prefill instances, decode instances); replicas 0..P prefill and
    /// P..P + D decode. None in aggregated mode.
    pub fn pd_pools(&self) -> Option<(u32, u32)> {
        match (self.mode, &self.prefill, &self.decode) {
            (ClusterMode::Disaggregated, Some(p), Some(d)) => Some((p.replicas, d.replicas)),
            _ => None,
        }
    }

    /// Replica slots over the run: the replicas at the start plus one per `add_replica` event. Ids
    /// 0..replicas are up at the start; the others join in event order.
    pub fn slots(&self) -> u32 {
        self.replicas.saturating_add(
            self.events
                .iter()
                .filter(|e| e.action == ClusterAction::AddReplica)
                .count() as u32,
        )
    }

    /// The models replicas serve: `model` (index 0), then each `swap_model` event's model not listed
    /// yet, in list order; [`ClusterConfig::model_index`] finds an event's.
    pub fn swap_models(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for e in &self.events {
            if let (ClusterAction::SwapModel, Some(m)) = (e.action, e.model.as_deref()) {
                if !v.contains(&m) {
                    v.push(m);
                }
            }
        }
        v
    }

    /// The index of a `swap_model` event's model among the run's models (1 + its place in
    /// [`ClusterConfig::swap_models`]; 0 is `model`).
    pub fn model_index(&self, e: &ClusterEvent) -> usize {
        let m = e.model.as_deref().unwrap_or_default();
        1 + self
            .swap_models()
            .iter()
            .position(|x| *x == m)
            .expect("a validated swap_model event names its model")
    }

    /// The events in the order they apply: by time, ties in list order (a stable sort).
    pub fn events_in_order(&self) -> Vec<(usize, &ClusterEvent)> {
        let mut v: Vec<_> = self.events.iter().enumerate().collect();
        v.sort_by(|a, b| a.1.at_s.total_cmp(&b.1.at_s));
        v
    }

    /// Checks the events against the cluster they act on, in order: a replica removed or drained must
    /// be up then.
    fn validate_events(&self, startup_s: f64) -> Result<(), ConfigError> {
        // Checked first: the replay below keeps a flag per slot.
        if self.slots() > MAX_REPLICA_SLOTS {
            return Err(ConfigError::invalid(
                "cluster.replicas",
                format!(
                    "{} replicas (with those add_replica events bring) exceed the {MAX_REPLICA_SLOTS} a run \
                     may have; lower cluster.replicas",
                    self.slots()
                ),
            ));
        }
        let horizon_s = crate::time::HORIZON.as_secs_f64();
        let mut up: Vec<bool> = (0..self.slots()).map(|i| i < self.replicas).collect();
        // A restarting replica is back at this time (seconds).
        let mut back = vec![f64::NEG_INFINITY; self.slots() as usize];
        let mut next = self.replicas;
        for (i, e) in self.events_in_order() {
            let key = |k: &str| format!("cluster.events[{i}].{k}");
            if !(e.at_s.is_finite() && e.at_s >= 0.0 && e.at_s < horizon_s) {
                return Err(ConfigError::invalid(
                    key("at_s"),
                    format!("must be seconds of virtual time, 0 or more, got {}", e.at_s),
                ));
            }
            if e.action != ClusterAction::SwapModel && (e.model.is_some() || e.swap_s.is_some()) {
                return Err(ConfigError::invalid(
                    key(if e.model.is_some() { "model" } else { "swap_s" }),
                    format!("only swap_model takes it, not {}", config_name(e.action)),
                ));
            }
            if e.action == ClusterAction::SwapModel {
                if e.model.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::invalid(
                        key("model"),
                        "swap_model needs the model served afterwards (a catalog name, as model.name)",
                    ));
                }
                if let Some(d) = e.swap_s {
                    if !(d.is_finite() && d >= 0.0 && d < horizon_s / 2.0) {
                        return Err(ConfigError::invalid(
                            key("swap_s"),
                            format!("must be 0 or more seconds, got {d}"),
                        ));
                    }
                }
            }
            match e.action {
                ClusterAction::AddReplica => {
                    if e.replica.is_some() {
                        return Err(ConfigError::invalid(
                            key("replica"),
                            format!(
                                "add_replica takes no replica: the new one gets the next id ({next})"
                            ),
                        ));
                    }
                    up[next as usize] = true;
                    next += 1;
                }
                ClusterAction::RemoveReplica
                | ClusterAction::Drain
                | ClusterAction::Restart
                | ClusterAction::SwapModel => {
                    let Some(r) = e.replica else {
                        return Err(ConfigError::invalid(
                            key("replica"),
                            format!("{} needs the replica id it acts on", config_name(e.action)),
                        ));
                    };
                    if !up.get(r as usize).copied().unwrap_or(false) {
                        let ids: Vec<String> = (0..up.len())
                            .filter(|&i| up[i])
                            .map(|i| i.to_string())
                            .collect();
                        return Err(ConfigError::invalid(
                            key("replica"),
                            format!(
                                "replica {r} is not up at {} s; the replicas up then are [{}] (ids 0 to {} \
                                 start up, each add_replica takes the next id, in time order)",
                                e.at_s,
                                ids.join(", "),
                                self.replicas - 1
                            ),
                        ));
                    }
                    if e.at_s < back[r as usize] {
                        return Err(ConfigError::invalid(
                            key("at_s"),
                            format!(
                                "replica {r} is restarting until {} s (engine.startup_s, or swap_s, after \
                                 its restart or model swap); act on it after that",
                                back[r as usize]
                            ),
                        ));
                    }
                    if matches!(e.action, ClusterAction::Restart | ClusterAction::SwapModel) {
                        back[r as usize] = e.at_s + e.down_s(startup_s);
                    } else {
                        up[r as usize] = false;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks every cluster key; errors name the key.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.replicas == 0 {
            return Err(ConfigError::invalid(
                "cluster.replicas",
                "must be at least 1",
            ));
        }
        let nonneg = |k: &str, v: f64| check_nonneg(format!("cluster.{k}"), v);
        nonneg("signal_delay_s", self.signal_delay_s)?;
        let h = &self.consistent_hash;
        if h.virtual_nodes == 0 || h.virtual_nodes > 10_000 {
            return Err(ConfigError::invalid(
                "cluster.consistent_hash.virtual_nodes",
                format!("must be from 1 to 10000, got {}", h.virtual_nodes),
            ));
        }
        if h.prefix_tokens == 0 {
            return Err(ConfigError::invalid(
                "cluster.consistent_hash.prefix_tokens",
                "must be at least 1",
            ));
        }
        if let Some(c) = h.load_bound {
            if c.is_nan() || c < 1.0 {
                return Err(ConfigError::invalid(
                    "cluster.consistent_hash.load_bound",
                    format!(
                        "must be at least 1 (c x the mean load; below 1 no replica could take a key), got {c}; \
                         inf for no bound"
                    ),
                ));
            }
        }
        let p = &self.prefix_aware;
        if p.block_size == Some(0) {
            return Err(ConfigError::invalid(
                "cluster.prefix_aware.block_size",
                "must be at least 1 token",
            ));
        }
        if p.max_prefix_blocks == 0 {
            return Err(ConfigError::invalid(
                "cluster.prefix_aware.max_prefix_blocks",
                "must be at least 1",
            ));
        }
        if p.index_blocks == Some(0) {
            return Err(ConfigError::invalid(
                "cluster.prefix_aware.index_blocks",
                "must be at least 1",
            ));
        }
        nonneg("prefix_aware.prefix_weight", p.prefix_weight)?;
        nonneg("prefix_aware.queue_weight", p.queue_weight)?;
        nonneg("prefix_aware.kv_usage_weight", p.kv_usage_weight)?;
        let c = &self.cache_aware;
        if !(0.0..=1.0).contains(&c.cache_threshold) {
            return Err(ConfigError::invalid(
                "cluster.cache_aware.cache_threshold",
                format!("must be from 0 to 1, got {}", c.cache_threshold),
            ));
        }
        nonneg("cache_aware.balance_abs_threshold", c.balance_abs_threshold)?;
        nonneg("cache_aware.balance_rel_threshold", c.balance_rel_threshold)?;
        nonneg("cache_aware.eviction_interval_s", c.eviction_interval_s)?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostKind {
    /// Datasheet peaks x efficiencies (`[cost.roofline]`).
    Roofline,
    /// Hand-set coefficients (`[cost.linear]`), for tests and what-ifs.
    Linear,
    /// Measured per-layer operator tables (`[cost.table]`), attention from the roofline.
    Table,
    /// A profile written by `servesim calibrate` (`cost.profile`).
    Calibrated,
}

/// Measured operator tables: Vidur's `mlp.csv`, or a folder in the H200 format
/// (`data/profiles/h200/llama-3.1-8b/README.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableConfig {
    /// Path to a Vidur `mlp.csv` profile for this model and GPU (when `dir` is not set).
    pub mlp: String,
    /// A folder holding `mlp.csv` and, where measured, `attention.csv` and `lm_head.csv` in the H200
    /// format; an operator without a table is priced by the roofline.
    pub dir: String,
    /// Which backend's rows of `attention.csv` price decode attention (`triton_splitkv` or `flash`).
    pub decode_attention: String,
    /// Which backend's rows of `attention.csv` price prefill attention (`flash` or `cudnn`).
    pub prefill_attention: String,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            mlp: String::new(),
            dir: String::new(),
            decode_attention: "triton_splitkv".into(),
            prefill_attention: "flash".into(),
        }
    }
}

/// Roofline efficiencies, kernel latencies and host time. Each operator class has its own achieved
/// fraction of the datasheet peak (FLOP/s) or bandwidth, and each kernel a fixed latency added to its
/// roofline time (launch, ramp-up and tail under CUDA graphs). The defaults are fitted on measured
/// per-operator tables of two GPUs together (Vidur's H100 table for Llama-2-7B and this project's H200
/// tables for Llama-3.1-8B: `tools/fit_roofline.py`, residuals in the README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RooflineConfig {
    /// Fraction of the dense bf16 peak that GEMMs (projections, MLP, LM head) reach when compute-bound.
    pub compute_efficiency: f64,
    /// Fraction of the memory bandwidth GEMMs reach streaming their weights when memory-bound.
    pub memory_efficiency: f64,
    /// Fraction of the memory bandwidth element-wise kernels reach (RMSNorm, rotary, SiLU, adds, KV write,
    /// embedding gather).
    pub elementwise_efficiency: f64,
    /// Fraction of the memory bandwidth decode attention reaches reading the KV cache.
    pub decode_attention_efficiency: f64,
    /// Fraction of the dense bf16 peak prefill attention reaches over its causal (query, key) pairs.
    pub prefill_attention_efficiency: f64,
    /// Seconds each GEMM kernel takes beyond its roofline time.
    pub kernel_latency_s: f64,
    /// Seconds each element-wise kernel takes beyond its bandwidth time.
    pub elementwise_latency_s: f64,
    /// Seconds each attention call (one per layer for decode, one per layer for prefill) takes beyond its
    /// roofline time.
    pub attention_latency_s: f64,
    /// Host time per step (scheduling, input preparation, output processing), seconds. With
    /// `engine.async_scheduling` (vLLM's default) it runs while the GPU computes the previous step and
    /// adds nothing; without, it adds to every step.
    pub step_overhead_s: f64,
    /// Host time per layer per step, seconds (kernel launches outside CUDA graphs); overlapped as
    /// `step_overhead_s` is.
    pub layer_overhead_s: f64,
}

impl Default for RooflineConfig {
    fn default() -> Self {
        RooflineConfig {
            // `python tools/fit_roofline.py`, rounded.
            compute_efficiency: 0.676,
            memory_efficiency: 0.83,
            elementwise_efficiency: 0.881,
            decode_attention_efficiency: 0.788,
            prefill_attention_efficiency: 0.267,
            kernel_latency_s: 0.000_005_2,
            elementwise_latency_s: 0.000_001_5,
            attention_latency_s: 0.000_007_3,
            step_overhead_s: 0.0005,
            layer_overhead_s: 0.0,
        }
    }
}

/// A linear step-time model for tests and what-if studies:
/// step = step_s + prefill_token_s x prefill tokens + decode_seq_s x decode sequences
///        + decode_context_token_s x total context of decode sequences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearConfig {
    pub step_s: f64,
    pub prefill_token_s: f64,
    pub decode_seq_s: f64,
    pub decode_context_token_s: f64,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            step_s: 0.005,
            prefill_token_s: 0.000_1,
            decode_seq_s: 0.000_1,
            decode_context_token_s: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    pub kind: CostKind,
    pub roofline: RooflineConfig,
    pub linear: LinearConfig,
    pub table: TableConfig,
    /// Path to a calibration profile (`servesim calibrate --out`), for `kind = "calibrated"`.
    pub profile: Option<String>,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            kind: CostKind::Roofline,
            roofline: RooflineConfig::default(),
            linear: LinearConfig::default(),
            table: TableConfig::default(),
            profile: None,
        }
    }
}

/// Service-level objectives. `ttft_s`, `tpot_s`, `e2e_s` are per-request thresholds for goodput (`vllm
/// bench serve --goodput`): a request is good when every one set holds; with none set, goodput is not
/// reported. Every other key is a criterion on a distribution, named as the summary names the statistic
/// (`<metric>_<stat>_s`, see [`SLO_METRICS`] and [`SLO_STATS`]: `ttft_p99_s = 2.0`): the run meets it
/// when that statistic is at most the value. The summary reports each criterion and `slo_met`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SloConfig {
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub e2e_s: Option<f64>,
    /// A criterion on the share of offered requests served (`success_rate`, which counts refusals
    /// and client timeouts against the run): at least this much.
    pub min_success_rate: Option<f64>,
    /// Criteria on distributions: summary key (`ttft_p99_s`) -> the most it may be, seconds.
    #[serde(flatten)]
    pub criteria: std::collections::BTreeMap<String, f64>,
}

/// Metrics an SLO criterion may name (the summary's latency distributions).
pub const SLO_METRICS: &[&str] = &["ttft", "tpot", "itl", "e2e", "queue"];
/// Statistics an SLO criterion may name.
pub const SLO_STATS: &[&str] = &["mean", "median", "p90", "p99"];

impl SloConfig {
    /// Whether `key` names a criterion: `<metric>_<stat>_s` with a metric of [`SLO_METRICS`] and a
    /// statistic of [`SLO_STATS`].
    pub fn is_criterion(key: &str) -> bool {
        key.strip_suffix("_s")
            .and_then(|k| k.split_once('_'))
            .is_some_and(|(m, s)| SLO_METRICS.contains(&m) && SLO_STATS.contains(&s))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Virtual seconds between time-series samples.
    pub timeseries_interval_s: f64,
    /// Stop the simulation at this virtual time even if requests are in flight (they are reported
    /// `unfinished`). Unset: run until every released request finishes.
    pub max_sim_time_s: Option<f64>,
    /// The warm-up: requests arriving earlier are run and written to `requests.csv` but left out of the
    /// TTFT, TPOT, E2E and queue statistics and goodput, and the stability verdict looks only after it
    /// (ITL pools every token gap, the warm-up's included). Seconds (0: everything counts), or `"auto"`:
    /// found after the run by MSER-5 on the session population and the KV usage (see
    /// `metrics::warmup`).
    pub warmup_s: Warmup,
    /// Finished requests up to which the TTFT, TPOT, E2E and queue percentiles are exact (every value
    /// kept, 8 bytes each per metric); past it they come from a quantile sketch with 0.1% relative error
    /// (`metrics::quantiles`), so memory stops growing with the run. The summary's `percentiles_exact`
    /// says which a run got.
    pub exact_percentiles_up_to: u64,
}

/// `output.warmup_s`: a fixed warm-up in virtual seconds, or `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    Seconds(f64),
    Auto,
}

impl Warmup {
    /// The fixed warm-up in seconds; 0 for `Auto` (known only after the run).
    pub fn fixed_s(self) -> f64 {
        match self {
            Warmup::Seconds(s) => s,
            Warmup::Auto => 0.0,
        }
    }
}

impl Serialize for Warmup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Warmup::Seconds(x) => s.serialize_f64(*x),
            Warmup::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Warmup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Warmup;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("seconds (a number, 0 or more) or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Warmup, E> {
                Ok(Warmup::Seconds(x))
            }
            fn visit_i64<E: serde::de::Error>(self, x: i64) -> Result<Warmup, E> {
                Ok(Warmup::Seconds(x as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, x: u64) -> Result<Warmup, E> {
                Ok(Warmup::Seconds(x as f64))
            }
            fn visit_str<E: serde::de::Error>(self, x: &str) -> Result<Warmup, E> {
                if x == "auto" {
                    Ok(Warmup::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(x), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            timeseries_interval_s: 1.0,
            max_sim_time_s: None,
            warmup_s: Warmup::Seconds(0.0),
            exact_percentiles_up_to: crate::metrics::DEFAULT_EXACT,
        }
    }
}

/// Where the config text came from, for error messages.
pub struct Source<'a> {
    pub origin: &'a str,
    pub text: &'a str,
}

impl Config {
    /// [`Config::load`], then `seed` (when given) in place of the config's: the CLI's `--config`,
    /// `--set` and `--seed`, and the Python package's `config`, `overrides` and `seed`. `seed_key` names
    /// the seed in an error.
    pub fn load_seeded(
        path: Option<&Path>,
        overrides: &[String],
        seed: Option<u64>,
        seed_key: &str,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::load(path, overrides)?;
        if let Some(seed) = seed {
            check_seed(seed, seed_key)?;
            cfg.seed = seed;
        }
        Ok(cfg)
    }

    /// What a run says before it starts: each ignored setting (`ignored: ...`), then each warning.
    pub fn notices(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .ignored_settings()
            .into_iter()
            .map(|w| format!("ignored: {w}"))
            .collect();
        n.extend(self.warnings());
        n
    }

    /// Loads a config file (or the embedded default when `path` is None) and applies `--set` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let owned;
        let src = match path {
            Some(p) => {
                owned = crate::input::read_text(crate::input::InputKind::Config, p)?;
                Source {
                    origin: &p.display().to_string(),
                    text: &owned,
                }
                .parse(overrides)
            }
            None => Source {
                origin: DEFAULT_CONFIG_NAME,
                text: DEFAULT_CONFIG,
            }
            .parse(overrides),
        }?;
        Ok(src)
    }

    /// `cluster.mode = "disaggregated"`: both pools, a sane link, and only the parts of servesim the
    /// split is modelled with.
    fn validate_disaggregated(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.mode != ClusterMode::Disaggregated {
            // Pools set in aggregated mode are ignored (reported), so that one config compares both.
            return Ok(());
        }
        let (Some(p), Some(d)) = (&c.prefill, &c.decode) else {
            return Err(ConfigError::invalid(
                "cluster.mode",
                "disaggregated mode needs both pools: [cluster.prefill] and [cluster.decode], each with \
                 replicas = N",
            ));
        };
        for (pool, key) in [(p, "cluster.prefill"), (d, "cluster.decode")] {
            if pool.replicas == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.replicas"),
                    "must be at least 1 instance",
                ));
            }
            if pool.tensor_parallel == Some(0) {
                return Err(ConfigError::invalid(
                    format!("{key}.tensor_parallel"),
                    "must be at least 1 GPU per instance",
                ));
            }
        }
        let t = c.kv_transfer.clone().unwrap_or_default();
        if let Some(b) = t.bandwidth_gbps {
            if !(b.is_finite() && b > 0.0) {
                return Err(ConfigError::invalid(
                    "cluster.kv_transfer.bandwidth_gbps",
                    format!("must be a positive number of GB/s, got {b}"),
                ));
            }
        }
        if !(t.latency_s.is_finite() && t.latency_s >= 0.0 && t.latency_s < 3600.0) {
            return Err(ConfigError::invalid(
                "cluster.kv_transfer.latency_s",
                format!(
                    "must be 0 or more seconds (below an hour), got {}",
                    t.latency_s
                ),
            ));
        }
        // What the split is not modelled with, refused rather than run half-modelled.
        let unsupported = [
            (
                self.engine.kind != EngineKind::Vllm,
                "engine.kind",
                "disaggregated serving is modelled on engine.kind = \"vllm\" (its KV connector) only",
            ),
            (
                self.engine.kv_kind() != KvKind::Paged,
                "engine.kv_cache",
                "disaggregated serving moves vLLM's paged blocks; use the paged store",
            ),
            (
                self.kv.offload.is_some(),
                "kv.offload",
                "offload tiers with disaggregated serving are not modelled; remove [kv.offload]",
            ),
            (
                !c.events.is_empty(),
                "cluster.events",
                "cluster events with disaggregated pools are not modelled; remove [[cluster.events]]",
            ),
            (
                self.workload.client_timeout_s.is_some(),
                "workload.client_timeout_s",
                "client timeouts across the prefill-to-decode hand-off are not modelled; remove it",
            ),
        ];
        for (bad, key, why) in unsupported {
            if bad {
                return Err(ConfigError::invalid(key, why));
            }
        }
        Ok(())
    }

    /// Checks what the schema cannot: ranges, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name(&self.name)?;
        check_seed(self.seed, "seed")?;
        self.validate_batching()?;
        self.validate_sglang()?;
        let e = &self.engine;
        if let Some(sp) = &e.speculative {
            sp.validate(e)?;
            if e.kv_kind() != KvKind::Paged {
                return Err(ConfigError::invalid(
                    "engine.kv_cache",
                    format!(
                        "speculative decoding is modelled over vLLM's paged KV cache, not kv_cache = \"{}\"; \
                         remove engine.kv_cache or [engine.speculative]",
                        config_name(e.kv_kind())
                    ),
                ));
            }
        }
        if !e.kind.stores().contains(&e.kv_kind()) {
            return Err(ConfigError::invalid(
                "engine.kv_cache",
                format!(
                    "engine.kind = \"{}\" cannot drive kv_cache = \"{}\"; it supports {}",
                    config_name(e.kind),
                    config_name(e.kv_kind()),
                    e.kind
                        .stores()
                        .iter()
                        .map(|k| format!("\"{}\"", config_name(k)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let w = &self.workload;
        if !(w.session_rate.is_finite() && w.session_rate > 0.0) {
            return Err(ConfigError::invalid(
                "workload.session_rate",
                format!(
                    "must be a positive number of sessions per second, got {}",
                    w.session_rate
                ),
            ));
        }
        if !(w.burstiness.is_finite() && w.burstiness > 0.0) {
            return Err(ConfigError::invalid(
                "workload.burstiness",
                format!("must be a positive gamma shape, got {}", w.burstiness),
            ));
        }
        if let Some(r) = &w.rate_schedule {
            r.validate()?;
        }
        if w.kind == WorkloadKind::Conversational {
            check_arrivals(w)?;
        }
        if w.kind == WorkloadKind::Trace {
            if w.trace.path.is_empty() {
                return Err(ConfigError::invalid(
                    "workload.trace.path",
                    "a trace workload needs the trace file's path",
                ));
            }
            if w.trace.block_tokens == 0 {
                return Err(ConfigError::invalid(
                    "workload.trace.block_tokens",
                    "must be at least 1",
                ));
            }
            if !(w.trace.speedup.is_finite() && w.trace.speedup > 0.0) {
                return Err(ConfigError::invalid(
                    "workload.trace.speedup",
                    format!("must be positive, got {}", w.trace.speedup),
                ));
            }
            if let Some(r) = w.trace.target_rate {
                if !(r.is_finite() && r > 0.0) {
                    return Err(ConfigError::invalid(
                        "workload.trace.target_rate",
                        format!("must be positive requests per second, got {r}"),
                    ));
                }
                if w.trace.speedup != 1.0 {
                    return Err(ConfigError::invalid(
                        "workload.trace.target_rate",
                        "set either target_rate or speedup, not both",
                    ));
                }
            }
            if !(w.trace.start_s.is_finite() && w.trace.start_s >= 0.0) {
                return Err(ConfigError::invalid(
                    "workload.trace.start_s",
                    format!("must be >= 0 seconds, got {}", w.trace.start_s),
                ));
            }
        }
        if w.kind == WorkloadKind::Conversational
            && w.duration_s.is_none()
            && w.max_sessions.is_none()
            && w.max_requests.is_none()
        {
            return Err(ConfigError::invalid(
                "workload",
                "the run is unbounded: set duration_s, max_sessions or max_requests",
            ));
        }
        if let Some(d) = w.duration_s {
            if !(d.is_finite() && d > 0.0) {
                return Err(ConfigError::invalid(
                    "workload.duration_s",
                    format!("must be positive seconds, got {d}"),
                ));
            }
        }
        for (key, d) in [
            ("workload.turns", &w.turns),
            ("workload.user_tokens", &w.user_tokens),
            ("workload.doc_tokens", &w.doc_tokens),
            ("workload.response_tokens", &w.response_tokens),
            ("workload.think_time_s", &w.think_time_s),
            ("workload.priority", &w.priority),
        ] {
            d.validate().map_err(|m| ConfigError::invalid(key, m))?;
        }
        // A session's script holds every turn from its start, so the turn count bounds its memory.
        if w.turns.max_value() > MAX_TURNS as f64 {
            return Err(ConfigError::invalid(
                "workload.turns",
                format!(
                    "can draw up to {} turns per session; at most {MAX_TURNS} are allowed (real chat sessions \
                     have at most a few hundred): lower it, or give the distribution max = {MAX_TURNS} or less",
                    w.turns.max_value()
                ),
            ));
        }
        for (k, p) in [
            ("workload.doc_probability", Some(w.doc_probability)),
            (
                "workload.first_turn_doc_probability",
                w.first_turn_doc_probability,
            ),
        ] {
            if let Some(p) = p {
                if !(0.0..=1.0).contains(&p) {
                    return Err(ConfigError::invalid(
                        k,
                        format!("must be in [0, 1], got {p}"),
                    ));
                }
            }
        }
        if w.max_tokens == 0 {
            return Err(ConfigError::invalid(
                "workload.max_tokens",
                "must be at least 1",
            ));
        }
        for (i, sp) in w.system_prompts.iter().enumerate() {
            if !(sp.share.is_finite() && sp.share > 0.0) {
                return Err(ConfigError::invalid(
                    format!("workload.system_prompts[{i}].share"),
                    format!("must be positive, got {}", sp.share),
                ));
            }
        }
        let e = &self.engine;
        if !(e.gpu_memory_utilization > 0.0 && e.gpu_memory_utilization <= 1.0) {
            return Err(ConfigError::invalid(
                "engine.gpu_memory_utilization",
                format!("must be in (0, 1], got {}", e.gpu_memory_utilization),
            ));
        }
        if e.block_size == 0 {
            return Err(ConfigError::invalid(
                "engine.block_size",
                "must be at least 1 token (vLLM uses 16)",
            ));
        }
        if e.max_num_batched_tokens == Some(0) || e.max_num_seqs == Some(0) {
            return Err(ConfigError::invalid(
                "engine.max_num_batched_tokens / engine.max_num_seqs",
                "must be at least 1",
            ));
        }
        if let Some(r) = e.activation_reserve_gib {
            if !(r.is_finite() && r >= 0.0) {
                return Err(ConfigError::invalid(
                    "engine.activation_reserve_gib",
                    format!("must be >= 0, got {r}"),
                ));
            }
        }
        let hw = &self.hardware;
        if hw.tensor_parallel == 0 {
            return Err(ConfigError::invalid(
                "hardware.tensor_parallel",
                "must be at least 1",
            ));
        }
        if !(hw.interconnect_gbps.is_finite() && hw.interconnect_gbps > 0.0) {
            return Err(ConfigError::invalid(
                "hardware.interconnect_gbps",
                format!("must be positive, got {}", hw.interconnect_gbps),
            ));
        }
        if let Some(p) = hw.price_per_hour {
            if !(p.is_finite() && p > 0.0) {
                return Err(ConfigError::invalid(
                    "hardware.price_per_hour",
                    format!("must be a positive price, got {p}"),
                ));
            }
        }
        if !(hw.allreduce_latency_s.is_finite() && hw.allreduce_latency_s >= 0.0) {
            return Err(ConfigError::invalid(
                "hardware.allreduce_latency_s",
                format!("must be >= 0, got {}", hw.allreduce_latency_s),
            ));
        }
        if self.cost.kind == CostKind::Table
            && self.cost.table.mlp.is_empty() == self.cost.table.dir.is_empty()
        {
            return Err(ConfigError::invalid(
                "cost.table.mlp",
                "cost.kind = \"table\" needs either cost.table.mlp (the path of a measured Vidur mlp.csv) \
                 or cost.table.dir (a folder of tables in the H200 format), not both",
            ));
        }
        if self.cost.kind == CostKind::Calibrated && self.cost.profile.is_none() {
            return Err(ConfigError::invalid(
                "cost.profile",
                "cost.kind = \"calibrated\" needs a profile from `servesim calibrate`",
            ));
        }
        self.cluster.validate()?;
        self.validate_disaggregated()?;
        let su = self.engine.startup_s;
        if !(su.is_finite() && su >= 0.0 && su < crate::time::HORIZON.as_secs_f64() / 2.0) {
            return Err(ConfigError::invalid(
                "engine.startup_s",
                format!("must be 0 or more seconds, within the clock's horizon, got {su}"),
            ));
        }
        self.cluster.validate_events(su)?;
        if let Some(a) = &self.admission {
            a.validate()?;
        }
        if let Some(o) = &self.kv.offload {
            o.validate(&self.engine)?;
        }
        if let Some(m) = self.slo.min_success_rate {
            if !(0.0..=1.0).contains(&m) {
                return Err(ConfigError::invalid(
                    "slo.min_success_rate",
                    format!("must be a share from 0 to 1, got {m}"),
                ));
            }
        }

        let w = &self.workload;
        if let Some(t) = w.client_timeout_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(ConfigError::invalid(
                    "workload.client_timeout_s",
                    format!("must be positive seconds, got {t}; remove the key for clients that wait for ever"),
                ));
            }
        }
        if !(w.retry_after_s.is_finite() && w.retry_after_s >= 0.0) {
            return Err(ConfigError::invalid(
                "workload.retry_after_s",
                format!("must be 0 or more seconds, got {}", w.retry_after_s),
            ));
        }
        if w.max_retries > 100 {
            return Err(ConfigError::invalid(
                "workload.max_retries",
                format!("at most 100, got {}", w.max_retries),
            ));
        }
        if w.max_retries as f64 * w.retry_after_s > crate::time::HORIZON.as_secs_f64() / 2.0 {
            return Err(ConfigError::invalid(
                "workload.retry_after_s",
                format!(
                    "{} retries {} s apart would pass the clock's horizon (146 years of virtual time); \
                     give a shorter retry_after_s or fewer max_retries",
                    w.max_retries, w.retry_after_s
                ),
            ));
        }
        let r = &self.cost.roofline;
        for (k, v) in [
            ("cost.roofline.compute_efficiency", r.compute_efficiency),
            ("cost.roofline.memory_efficiency", r.memory_efficiency),
            (
                "cost.roofline.elementwise_efficiency",
                r.elementwise_efficiency,
            ),
            (
                "cost.roofline.decode_attention_efficiency",
                r.decode_attention_efficiency,
            ),
            (
                "cost.roofline.prefill_attention_efficiency",
                r.prefill_attention_efficiency,
            ),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(ConfigError::invalid(
                    k,
                    format!("must be in (0, 1], got {v}"),
                ));
            }
        }
        let l = &self.cost.linear;
        for (k, v) in [
            ("cost.roofline.step_overhead_s", r.step_overhead_s),
            ("cost.roofline.kernel_latency_s", r.kernel_latency_s),
            (
                "cost.roofline.elementwise_latency_s",
                r.elementwise_latency_s,
            ),
            ("cost.roofline.attention_latency_s", r.attention_latency_s),
            ("cost.roofline.layer_overhead_s", r.layer_overhead_s),
            ("cost.linear.step_s", l.step_s),
            ("cost.linear.prefill_token_s", l.prefill_token_s),
            ("cost.linear.decode_seq_s", l.decode_seq_s),
            (
                "cost.linear.decode_context_token_s",
                l.decode_context_token_s,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::invalid(
                    k,
                    format!("must be >= 0 seconds, got {v}"),
                ));
            }
        }
        for (k, v) in [
            ("slo.ttft_s", self.slo.ttft_s),
            ("slo.tpot_s", self.slo.tpot_s),
            ("slo.e2e_s", self.slo.e2e_s),
            ("output.max_sim_time_s", self.output.max_sim_time_s),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(ConfigError::invalid(
                        k,
                        format!("must be positive seconds, got {v}"),
                    ));
                }
            }
        }
        for (k, v) in &self.slo.criteria {
            if !SloConfig::is_criterion(k) {
                return Err(ConfigError::invalid(
                    format!("slo.{}", crate::input::shorten(k, 40)),
                    format!(
                        "not an SLO; use ttft_s, tpot_s or e2e_s (per-request goodput thresholds) or a \
                         criterion <metric>_<stat>_s with metric {} and stat {} (e.g. ttft_p99_s = 2.0)",
                        SLO_METRICS.join(", "),
                        SLO_STATS.join(", ")
                    ),
                ));
            }
            if !(v.is_finite() && *v > 0.0) {
                return Err(ConfigError::invalid(
                    format!("slo.{k}"),
                    format!("must be positive seconds, got {v}"),
                ));
            }
        }
        let w = self.output.warmup_s.fixed_s();
        if !(w.is_finite() && w >= 0.0) {
            return Err(ConfigError::invalid(
                "output.warmup_s",
                format!("must be 0 or more seconds, got {w}"),
            ));
        }
        if let Some(d) = self.workload.duration_s.filter(|&d| w > 0.0 && w >= d) {
            return Err(ConfigError::invalid(
                "output.warmup_s",
                format!(
                    "{w} s leaves no measurement window before workload.duration_s ({d} s); lower it or \
                     lengthen the workload"
                ),
            ));
        }
        let ts = self.output.timeseries_interval_s;
        if !(ts.is_finite() && ts >= 0.001) {
            return Err(ConfigError::invalid(
                "output.timeseries_interval_s",
                format!("must be at least 0.001 s, got {ts}"),
            ));
        }
        // Times a run reaches must stay inside the clock's horizon.
        let horizon_s = crate::time::HORIZON.as_secs_f64();
        for (k, v) in [
            ("output.timeseries_interval_s", Some(ts)),
            ("output.max_sim_time_s", self.output.max_sim_time_s),
            ("workload.duration_s", self.workload.duration_s),
            (
                "batching.max_queue_delay_s",
                Some(self.batching.max_queue_delay_s),
            ),
            (
                "batching.adaptive.interval_s",
                self.batching.adaptive.as_ref().map(|a| a.interval_s),
            ),
            ("workload.client_timeout_s", self.workload.client_timeout_s),
            ("workload.retry_after_s", Some(self.workload.retry_after_s)),
            ("cluster.signal_delay_s", Some(self.cluster.signal_delay_s)),
            (
                "cluster.cache_aware.eviction_interval_s",
                Some(self.cluster.cache_aware.eviction_interval_s),
            ),
        ] {
            if let Some(v) = v.filter(|&v| v > horizon_s) {
                return Err(ConfigError::invalid(
                    k,
                    format!(
                        "{v:e} s is past the clock's horizon of {horizon_s:.4e} s (146 years of virtual \
                         time); give a shorter time"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The most turns one session may have.
pub const MAX_TURNS: u32 = 10_000;

/// The most sessions a generated workload may plan (`session_rate` x `duration_s` when no other bound is
/// smaller): a billion sessions take hours even at servesim's speed.
pub const MAX_PLANNED_SESSIONS: f64 = 1e9;

/// The largest share of session gaps allowed to round to 0 ns on the integer-nanosecond clock.
pub const MAX_ZERO_GAP_SHARE: f64 = 0.99;

/// Refuses arrival processes the integer-nanosecond clock cannot follow (nearly every gap rounding to
/// 0 ns, so virtual time would never reach `duration_s`), and workloads too large to finish.
fn check_arrivals(w: &WorkloadConfig) -> Result<(), ConfigError> {
    use statrs::distribution::{ContinuousCDF, Gamma};
    // A gap shorter than half a nanosecond rounds to 0 (`SimDuration::from_secs_f64`). Gaps are gamma
    // with shape k and mean 1/rate (exponential: k = 1), so the share is the gamma CDF at 0.5 ns.
    let k = match w.arrival {
        ArrivalProcess::Poisson => 1.0,
        ArrivalProcess::Gamma => w.burstiness,
    };
    // The schedule's peak is where gaps are shortest.
    let peak = w.session_rate * w.rate_schedule.as_ref().map_or(1.0, |r| r.max_factor());
    let zero_share = Gamma::new(k, k * peak)
        .map(|g| g.cdf(0.5e-9))
        .ok()
        .filter(|p| p.is_finite())
        .unwrap_or(1.0);
    if zero_share > MAX_ZERO_GAP_SHARE {
        let key = if w.arrival == ArrivalProcess::Gamma && k < 1e-3 {
            "workload.burstiness"
        } else {
            "workload.session_rate"
        };
        return Err(ConfigError::invalid(
            key,
            format!(
                "with session_rate = {} and {} arrivals{}, {:.4}% of gaps between sessions would be shorter \
                 than the clock's 1 ns resolution (the limit is {}%), so virtual time could not advance; \
                 lower session_rate or raise burstiness",
                w.session_rate,
                if w.arrival == ArrivalProcess::Gamma { "gamma" } else { "Poisson" },
                if w.arrival == ArrivalProcess::Gamma {
                    format!(" of burstiness {k}")
                } else {
                    String::new()
                },
                100.0 * zero_share,
                100.0 * MAX_ZERO_GAP_SHARE
            ),
        ));
    }
    // The bound that binds names the key to change.
    let bounds = [
        (
            "workload.duration_s",
            w.duration_s.map(|d| d * peak),
            "shorten duration_s",
        ),
        (
            "workload.max_sessions",
            w.max_sessions.map(|m| m as f64),
            "lower max_sessions",
        ),
        (
            "workload.max_requests",
            w.max_requests.map(|m| m as f64),
            "lower max_requests",
        ),
    ];
    let binding = bounds
        .iter()
        .filter_map(|(k, v, fix)| v.map(|v| (k, v, fix)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((key, planned, fix)) = binding.filter(|b| b.1 > MAX_PLANNED_SESSIONS) {
        return Err(ConfigError::invalid(
            *key,
            format!(
                "the workload plans up to {planned:.3e} sessions, more than {MAX_PLANNED_SESSIONS:e}; {fix} \
                 (session_rate x duration_s, max_sessions and max_requests each bound it)"
            ),
        ));
    }
    Ok(())
}

/// The largest seed: `resolved.toml` records the seed as a TOML integer, which is a signed 64-bit number.
pub const MAX_SEED: u64 = i64::MAX as u64;

/// Checks that `seed` (set by `key`: `seed`, `--seed`, ...) can be recorded in `resolved.toml`.
pub fn check_seed(seed: u64, key: &str) -> Result<(), ConfigError> {
    if seed > MAX_SEED {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{seed} is too large: seeds go up to {MAX_SEED} (2^63 - 1), the largest TOML integer, so that \
                 resolved.toml can record them"
            ),
        ));
    }
    Ok(())
}

/// Checks that the run name is a plain file name: it names the output directory `results/<name>`, so a
/// separator, `.` or `..` would write outside `results/` or over it.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
        || name.len() > 200;
    if bad {
        let shown: String = name.chars().take(80).collect();
        return Err(ConfigError::invalid(
            "name",
            format!(
                "{shown:?} is not a plain file name; the run name names its output directory results/<name> \
                 (and compare's results/compare-<name>), so it must be 1-200 characters without `/`, `\\` or \
                 control characters, and not `.` or `..`: choose a name such as my-run-v2"
            ),
        ));
    }
    Ok(())
}

impl Source<'_> {
    /// Parses the text, applies the overrides and validates.
    pub fn parse(&self, overrides: &[String]) -> Result<Config, ConfigError> {
        // First pass on the text itself, so schema errors carry the file's line and column.
        let _: Config = from_toml_str(self.text, self.origin)?;
        let mut table: toml::Table = toml::from_str(self.text).map_err(|e| ConfigError::Parse {
            origin: self.origin.to_string(),
            message: e.to_string(),
        })?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let replicas_set = table
            .get("cluster")
            .and_then(|c| c.get("replicas"))
            .is_some();
        let mut cfg: Config = if overrides.is_empty() {
            from_toml_str(self.text, self.origin)?
        } else {
            let origin = format!("{} with --set {}", self.origin, overrides.join(" --set "));
            from_value(toml::Value::Table(table), &origin)?
        };
        // Disaggregated, a pool not described has one instance; the replicas are the pools'
        // instances, and a different count set is reported as ignored (a resolved config re-run with
        // other pools carries the old sum).
        if cfg.cluster.mode == ClusterMode::Disaggregated {
            for pool in [&mut cfg.cluster.prefill, &mut cfg.cluster.decode] {
                pool.get_or_insert(PoolConfig {
                    replicas: 1,
                    hardware: None,
                    tensor_parallel: None,
                    router: None,
                });
            }
        }
        if let Some((p, d)) = cfg.cluster.pd_pools() {
            let n = p.saturating_add(d);
            if replicas_set && cfg.cluster.replicas != n {
                cfg.cluster.replicas_ignored = Some(cfg.cluster.replicas);
            }
            cfg.cluster.replicas = n;
        }
        cfg.validate().map_err(|e| self.locate(e, overrides))?;
        Ok(cfg)
    }

    /// Adds where a range error's key was set: the last `--set` that names it, or its line in the file.
    fn locate(&self, e: ConfigError, overrides: &[String]) -> ConfigError {
        let ConfigError::Invalid { key, message } = e else {
            return e;
        };
        // "a.b / c.d" names two keys, and which one was set is not known: no location. "x[3].y" is the
        // table path x.y.
        if key.contains(" / ") {
            return ConfigError::Invalid { key, message };
        }
        let path: String = key
            .split('.')
            .map(|p| p.split('[').next().unwrap_or(p))
            .collect::<Vec<_>>()
            .join(".");
        let related = |k: &str| {
            k == path || path.starts_with(&format!("{k}.")) || k.starts_with(&format!("{path}."))
        };
        let by_override = overrides
            .iter()
            .rev()
            .find(|o| o.split_once('=').is_some_and(|(k, _)| related(k.trim())));
        let place = match by_override {
            Some(o) => Some(format!("set by --set {o}")),
            None => key_line(self.text, &key)
                .or_else(|| key_line(self.text, &path))
                .map(|n| format!("set at {} line {n}", self.origin)),
        };
        ConfigError::Invalid {
            key: match place {
                Some(p) => format!("{key} ({p})"),
                None => key,
            },
            message,
        }
    }
}

/// The line of `text` where the dotted key `path` is written, if it is. A part `name[i]` is element i
/// of an array of tables (`[[name]]`) or of inline tables.
fn key_line(text: &str, path: &str) -> Option<usize> {
    use toml_edit::TableLike;
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    let mut span = None;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (part, None),
        };
        let (k, item) = table.get_key_value(name)?;
        span = k.span().or_else(|| item.span());
        let item_table: &dyn TableLike = match index {
            None => {
                if parts.peek().is_none() {
                    break;
                }
                item.as_table_like()?
            }
            Some(i) => {
                if let Some(t) = item.as_array_of_tables().and_then(|a| a.get(i)) {
                    span = t.span().or(span);
                    t
                } else {
                    let t = item.as_array()?.get(i)?.as_inline_table()?;
                    span = t.span().or(span);
                    t
                }
            }
        };
        if parts.peek().is_some() {
            table = item_table;
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

fn from_toml_str<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ConfigError::Parse {
            origin: origin.to_string(),
            message: if path.is_empty() || path == "." {
                inner.trim_end().to_string()
            } else {
                format!("key `{path}`: {}", inner.trim_end())
            },
        }
    })
}

fn from_value<T: DeserializeOwned>(v: toml::Value, origin: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Parse {
            origin: origin.to_string(),
            message: format!("key `{path}`: {}", e.into_inner()),
        }
    })
}

/// Applies one `key.path=value` override. The value is read as a TOML value (number, bool, string, inline
/// table or array); anything that does not parse as TOML is taken as a string.
pub fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let bad = |m: &str| ConfigError::BadOverride {
        arg: arg.to_string(),
        message: m.to_string(),
    };
    let (key, raw) = arg.split_once('=').ok_or_else(|| bad("missing `=`"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(bad("empty key or key part"));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{p}` is a value, not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, o: &[&str]) -> Result<Config, ConfigError> {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        Source {
            origin: "test.toml",
            text,
        }
        .parse(&o)
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.model.name, "llama-3.1-8b");
        assert_eq!(c.hardware.name, "h100-sxm");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("name = \"x\"\n[engine]\nprefix_cachng = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix_cachng"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("[engine]\nprefix_caching = \"yes\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine.prefix_caching"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let c = parse(
            "[workload]\nduration_s = 10.0\n",
            &[
                "engine.prefix_caching=false",
                "workload.session_rate=2.5",
                "workload.turns={dist=\"constant\", value=3}",
            ],
        )
        .unwrap();
        assert!(!c.engine.prefix_caching);
        assert_eq!(c.workload.session_rate, 2.5);
        assert_eq!(c.workload.turns, Dist::Constant { value: 3.0 });
        let e = parse("", &["engine.prefix_cachin=false"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix_cachin") && e.contains("--set"), "{e}");
        let e = parse("", &["engine"]).unwrap_err().to_string();
        assert!(e.contains("missing `=`"), "{e}");
    }

    #[test]
    fn unbounded_workload_is_rejected() {
        let e = parse("", &[]).unwrap_err().to_string();
        assert!(e.contains("unbounded"), "{e}");
    }

    #[test]
    fn negative_rate_is_rejected_with_the_key() {
        let e = parse("", &["workload.session_rate=-1"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("workload.session_rate"), "{e}");
    }

    #[test]
    fn range_errors_say_where_the_key_was_set() {
        // Line 3 of the file sets the rate.
        let e = parse("[workload]\nduration_s = 10.0\nsession_rate = -2\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("workload.session_rate (set at test.toml line 3)"),
            "{e}"
        );
        // An inline table's key: line 2.
        let e = parse(
            "[workload]\nturns = { dist = \"constant\", value = 20000 }\nduration_s = 1.0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("workload.turns (set at test.toml line 2)"),
            "{e}"
        );
        // An override wins over the file.
        let e = parse(
            "[workload]\nduration_s = 10.0\n",
            &["workload.session_rate=-1"],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("(set by --set workload.session_rate=-1)"), "{e}");
        // A key under a table header: line 2.
        let e = parse(
            "[engine]\nblock_size = 0\n[workload]\nduration_s = 1.0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("engine.block_size (set at test.toml line 2)"),
            "{e}"
        );
    }

    #[test]
    fn run_names_must_be_plain_file_names() {
        for bad in ["..", ".", "../../x", "a/b", "a\\b", ""] {
            let e = parse(
                &format!("name = {bad:?}\n[workload]\nduration_s = 1.0\n"),
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("name (set at test.toml line 1)"),
                "{bad}: {e}"
            );
        }
        parse("name = \"my-run.v2\"\n[workload]\nduration_s = 1.0\n", &[]).unwrap();
    }

    #[test]
    fn arrival_rates_the_clock_cannot_follow_are_refused() {
        // Poisson at 1e10/s: P(gap < 0.5 ns) = 1 - exp(-1e10 x 0.5e-9) = 1 - e^-5 = 99.3% > 99%.
        let e = parse("[workload]\nduration_s = 1.0\nsession_rate = 1e10\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("workload.session_rate") && e.contains("1 ns"),
            "{e}"
        );
        // At 1e9/s: 1 - e^-0.5 = 39% round to 0 ns; allowed, but 1e9 x 10 s = 1e10 sessions is too many.
        let e = parse("[workload]\nduration_s = 10.0\nsession_rate = 1e9\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("workload.duration_s") && e.contains("more than 1e9"),
            "{e}"
        );
        let e = parse("[workload]\nmax_sessions = 2000000000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("workload.max_sessions"), "{e}");
        parse("[workload]\nmax_sessions = 5\nsession_rate = 1e9\n", &[]).unwrap();
        // Gamma of shape 1e-300: every gap rounds to 0.
        let e = parse(
            "[workload]\nduration_s = 1.0\narrival = \"gamma\"\nburstiness = 1e-300\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("workload.burstiness"), "{e}");
    }

    #[test]
    fn resolved_round_trips() {
        let c = Config::load(None, &[]).unwrap();
        let text = toml::to_string(&c).unwrap();
        let back = parse(&text, &[]).unwrap();
        assert_eq!(c, back);
    }
}
