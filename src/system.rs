//! Wiring: turns a config into the parts of a run (model, hardware, engine sizing, workload, cost model,
//! and each replica with its scheduler and KV store), apart from the loop that runs them (`world.rs`).
//!
//! Every choice of a kind is made here, in one `match` per slot: `engine.kind` picks the scheduler (the
//! engine family), `engine.kv_cache` the KV store it owns, `cost.kind` the cost model, `workload.kind` the
//! workload, `cluster.router` the router (`cluster::router::build`). To add an engine: write its scheduler as one
//! file under `scheduler/`, add its `EngineKind` arm in `config.rs`, and build it in
//! `System::build_engine`; to add a store, the same under `kv/` with a `KvKind` arm, built in
//! [`System::build`]. The compiler then points at every `match` over the kinds, the leap tests
//! included.

use crate::config::{
    Config, CostKind, EngineKind, KvKind, OffloadBackend, OffloadConfig, SpecMethod, WorkloadKind,
};
use crate::cost::catalog::{HardwareSpec, ModelShape};
use crate::cost::linear::LinearCost;
use crate::cost::roofline::Roofline;
use crate::cost::table::{read_mlp_table, TableCost};
use crate::cost::CostModel;
use crate::error::ConfigError;
use crate::event::ReplicaId;
use crate::kv::sizing::{size_engine_with_drafter, DrafterMemory, EngineSizing};
use crate::kv::tier::{Backend, OffloadParams, TierKind, TierParams};
use crate::kv::{KvCacheManager, KvStore, Tiered};
use crate::replica::Replica;
use crate::rng::RngStreams;
use crate::scheduler::vllm_v1::{Limits, SpecDecode, VllmScheduler};
use crate::scheduler::Scheduler;
use crate::workload::conversation::ConversationGenerator;
use crate::workload::trace::TraceWorkload;
use crate::workload::Workload;

/// The system a config describes, resolved: model, hardware, engine sizing. Resolving is where impossible
/// configurations are caught, before any output is created.
#[derive(Clone, Debug)]
pub struct System {
    pub model: ModelShape,
    pub hardware: HardwareSpec,
    pub sizing: EngineSizing,
    /// The offload tiers, resolved (`kv.offload`); None without them.
    pub offload: Option<OffloadParams>,
    /// SGLang's token pool size and limits (`engine.kind = "sglang"`); None for other engines.
    pub sglang: Option<crate::kv::sizing::SglangSizing>,
    /// The models `swap_model` events bring, resolved as `model` is (model m >= 1 is `swaps[m - 1]`,
    /// in `ClusterConfig::swap_models` order).
    pub swaps: Vec<System>,
}

impl System {
    /// Resolves the config's model and each model a `swap_model` event brings. A swapped-in model must
    /// take prompts as long as the first (the workload refuses longer ones for every replica).
    pub fn resolve(cfg: &Config) -> Result<System, ConfigError> {
        let mut sys = System::resolve_one(cfg)?;
        // Disaggregated: the pools are models 1 (prefill) and 2 (decode), each sized and priced for its
        // hardware and tensor parallelism (the config refuses swap_model events with pools).
        for (key, pool_cfg) in pool_configs(cfg) {
            let pool = System::resolve_one(&pool_cfg).map_err(|e| {
                ConfigError::invalid(
                    key,
                    format!(
                        "{e} (for this pool's instances: set {key}.tensor_parallel or {key}.hardware)"
                    ),
                )
            })?;
            if pool.sizing.max_model_len < sys.sizing.max_model_len {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "its instances take prompts up to {} tokens, below the {} of the top-level hardware; \
                         set engine.max_model_len to at most {}",
                        pool.sizing.max_model_len,
                        sys.sizing.max_model_len,
                        pool.sizing.max_model_len
                    ),
                ));
            }
            sys.swaps.push(pool);
        }
        for name in cfg.cluster.swap_models() {
            let key = format!("cluster.events: swap_model to \"{name}\"");
            let other = System::resolve_one(&for_model(cfg, name))
                .map_err(|e| ConfigError::invalid(&key, e.to_string()))?;
            if other.sizing.max_model_len < sys.sizing.max_model_len {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "its max_model_len is {}, below the {} of {}: set engine.max_model_len to at most {}",
                        other.sizing.max_model_len,
                        sys.sizing.max_model_len,
                        cfg.model.name,
                        other.sizing.max_model_len
                    ),
                ));
            }
            sys.swaps.push(other);
        }
        Ok(sys)
    }

    /// Model `m` of the run (0: `model`; see [`System::swaps`]).
    pub fn of_model(&self, m: usize) -> &System {
        if m == 0 {
            self
        } else {
            &self.swaps[m - 1]
        }
    }

    /// One cost model per model of the run, in [`System::of_model`] order.
    pub fn cost_models(&self, cfg: &Config) -> Result<Vec<Box<dyn CostModel>>, ConfigError> {
        let mut v = vec![self.cost_model(cfg)?];
        for (i, (key, pool_cfg)) in pool_configs(cfg).into_iter().enumerate() {
            v.push(
                self.swaps[i]
                    .cost_model(&pool_cfg)
                    .map_err(|e| ConfigError::invalid(key, e.to_string()))?,
            );
        }
        for (name, sys) in cfg.cluster.swap_models().into_iter().zip(&self.swaps) {
            let key = format!("cluster.events: swap_model to \"{name}\"");
            v.push(
                sys.cost_model(&for_model(cfg, name))
                    .map_err(|e| ConfigError::invalid(key, e.to_string()))?,
            );
        }
        Ok(v)
    }

    fn resolve_one(cfg: &Config) -> Result<System, ConfigError> {
        let mut model = ModelShape::load(&cfg.model.name)?;
        if cfg.model.width_divisor != 1 {
            model = model.scaled(cfg.model.width_divisor, "model.width_divisor")?;
        }
        let model = model.with_dtypes(&cfg.model.dtype, &cfg.engine.kv_cache_dtype)?;
        let hardware =
            HardwareSpec::load_with(&cfg.hardware.name, cfg.hardware.catalog.as_deref())?;
        let tp = cfg.hardware.tensor_parallel;
        let drafter = drafter_shape(cfg, &model)?
            .map(|(d, shares_vocab)| -> Result<DrafterMemory, ConfigError> {
                let key = "engine.speculative.model";
                let rank = d
                    .per_rank(tp)
                    .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
                let mut weights = rank.weight_bytes();
                if shares_vocab {
                    // An EAGLE head uses the target's embedding and LM head: its own weights are the
                    // layer's alone.
                    weights -= ModelShape {
                        num_layers: 0,
                        ..rank.clone()
                    }
                    .weight_bytes();
                }
                Ok(DrafterMemory {
                    weight_bytes_per_rank: weights,
                    kv_bytes_per_token_per_rank: rank.kv_bytes_per_token(),
                })
            })
            .transpose()?;
        let sizing = size_engine_with_drafter(&cfg.engine, &model, drafter, &hardware, tp)?;
        crate::memory::check_fits(cfg, sizing.num_gpu_blocks, None)?;
        let offload = cfg
            .kv
            .offload
            .as_ref()
            .map(|o| offload_params(cfg, o, &model, &hardware))
            .transpose()?
            .flatten();
        let sglang = (cfg.engine.kind == EngineKind::Sglang)
            .then(|| -> Result<_, ConfigError> {
                let mut s =
                    crate::kv::sizing::sglang_limits(&cfg.sglang, &cfg.engine, &sizing, &hardware)?;
                if cfg.sglang.enable_hierarchical_cache {
                    s.hicache = Some(crate::kv::sizing::hicache_params(
                        &cfg.sglang,
                        s.max_total_tokens,
                        model.kv_bytes_per_token(),
                        &hardware,
                        cfg.hardware.tensor_parallel,
                    )?);
                }
                Ok(s)
            })
            .transpose()?;
        Ok(System {
            model,
            hardware,
            sizing,
            offload,
            sglang,
            swaps: Vec::new(),
        })
    }

    /// Builds the workload; trace files are read (and checked) here, before any output exists.
    pub fn workload(&self, cfg: &Config) -> Result<Box<dyn Workload>, ConfigError> {
        let w = &cfg.workload;
        Ok(match w.kind {
            WorkloadKind::Conversational => Box::new(ConversationGenerator::new(
                w,
                RngStreams::new(cfg.seed),
                self.sizing.max_model_len,
            )),
            WorkloadKind::Trace => Box::new(TraceWorkload::load(
                &w.trace,
                w.duration_s,
                w.max_requests,
                self.sizing.max_model_len,
                rate_shape(cfg),
            )?),
        })
    }

    /// The roofline of one GPU of a replica (the model split tensor-parallel).
    pub fn roofline(&self, cfg: &Config) -> Result<Roofline, ConfigError> {
        let hw = &cfg.hardware;
        Ok(Roofline::new(
            self.model.per_rank(hw.tensor_parallel)?,
            self.hardware.clone(),
            cfg.cost.roofline.clone(),
            hw.tensor_parallel,
            hw.interconnect_gbps,
            hw.allreduce_latency_s,
        )
        .with_async_scheduling(cfg.engine.async_scheduling))
    }

    /// Builds the configured cost model; profile and table files are read (and checked) here. With
    /// speculative decoding, the drafter's passes are added to it (`cost::speculative`).
    pub fn cost_model(&self, cfg: &Config) -> Result<Box<dyn CostModel>, ConfigError> {
        let target = self.target_cost_model(cfg)?;
        let Some(sp) = &cfg.engine.speculative else {
            return Ok(target);
        };
        let tp = cfg.hardware.tensor_parallel;
        let key = "engine.speculative.model";
        let drafter = drafter_shape(cfg, &self.model)?
            .map(|(m, _)| -> Result<Box<dyn CostModel>, ConfigError> {
                if m.dtype_bytes != 2 {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "the drafter is priced on the roofline, which prices 16-bit weights, and {} \
                             runs {}-bit (a drafter takes model.dtype); set model.dtype = \"bfloat16\", or \
                             method = \"ngram\"",
                            m.name,
                            8 * m.dtype_bytes
                        ),
                    ));
                }
                let per_rank = m
                    .per_rank(tp)
                    .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
                let hw = &cfg.hardware;
                Ok(Box::new(
                    Roofline::new(
                        per_rank,
                        self.hardware.clone(),
                        cfg.cost.roofline.clone(),
                        tp,
                        hw.interconnect_gbps,
                        hw.allreduce_latency_s,
                    )
                    .with_async_scheduling(cfg.engine.async_scheduling),
                ))
            })
            .transpose()?;
        Ok(Box::new(crate::cost::speculative::SpeculativeCost {
            target,
            drafter,
            passes: sp.num_speculative_tokens,
        }))
    }

    /// The target model's cost model, of `cost.kind`.
    fn target_cost_model(&self, cfg: &Config) -> Result<Box<dyn CostModel>, ConfigError> {
        let datasheet = matches!(cfg.cost.kind, CostKind::Roofline | CostKind::Table);
        if datasheet && self.model.dtype_bytes != 2 {
            return Err(ConfigError::invalid(
                "cost.kind",
                format!(
                    "the {} cost model prices 16-bit (bf16/fp16) weights at the GPU's bf16 peak, and model \
                     {} is {}-bit; use a bf16 config, or cost.kind = \"calibrated\" or \"linear\"",
                    if cfg.cost.kind == CostKind::Roofline { "roofline" } else { "table" },
                    self.model.name,
                    8 * self.model.dtype_bytes
                ),
            ));
        }
        let timed = matches!(cfg.cost.kind, CostKind::Table | CostKind::Calibrated);
        if timed && !self.model.is_dense_full_attention() {
            return Err(ConfigError::invalid(
                "cost.kind",
                format!(
                    "the {} cost model times dense, full-attention, unquantized layers, and model {} has {}; \
                     use cost.kind = \"roofline\", which prices them",
                    if cfg.cost.kind == CostKind::Table { "table" } else { "calibrated" },
                    self.model.name,
                    self.model.features()
                ),
            ));
        }
        if timed && self.model.kv_dtype_bytes != self.model.dtype_bytes {
            return Err(ConfigError::invalid(
                "engine.kv_cache_dtype",
                format!(
                    "\"{}\" stores the KV cache in {} byte(s) per element, and the {} cost model's attention \
                     was timed with the model's dtype; use kv_cache_dtype = \"auto\", or cost.kind = \"roofline\"",
                    cfg.engine.kv_cache_dtype,
                    self.model.kv_dtype_bytes,
                    if cfg.cost.kind == CostKind::Table { "table" } else { "calibrated" },
                ),
            ));
        }
        Ok(match cfg.cost.kind {
            CostKind::Roofline => Box::new(self.roofline(cfg)?),
            CostKind::Linear => Box::new(LinearCost {
                p: cfg.cost.linear.clone(),
            }),
            CostKind::Table => {
                let t = &cfg.cost.table;
                let tp = cfg.hardware.tensor_parallel;
                if t.dir.is_empty() {
                    let mlp = read_mlp_table(std::path::Path::new(&t.mlp), &self.model, tp)?;
                    Box::new(TableCost::new(mlp, self.roofline(cfg)?))
                } else {
                    // A folder in the H200 format: mlp.csv, and attention.csv and lm_head.csv where
                    // measured (the roofline prices what has no table).
                    let dir = std::path::Path::new(&t.dir);
                    let mlp = read_mlp_table(&dir.join("mlp.csv"), &self.model, tp)?;
                    let attention = dir
                        .join("attention.csv")
                        .is_file()
                        .then(|| {
                            crate::cost::table::read_attention_table(
                                &dir.join("attention.csv"),
                                &t.decode_attention,
                                &t.prefill_attention,
                            )
                        })
                        .transpose()?;
                    let lm_head = dir
                        .join("lm_head.csv")
                        .is_file()
                        .then(|| crate::cost::table::read_lm_head_table(&dir.join("lm_head.csv")))
                        .transpose()?;
                    Box::new(
                        TableCost::new(mlp, self.roofline(cfg)?).with_tables(attention, lm_head),
                    )
                }
            }
            CostKind::Calibrated => {
                let path = cfg.cost.profile.as_deref().unwrap_or_default();
                Box::new(crate::cost::calibrated::CalibratedCost::load(
                    std::path::Path::new(path),
                    &self.model.per_rank(cfg.hardware.tensor_parallel)?,
                )?)
            }
        })
    }

    /// Calls `w` with the factory of the configured replicas, of the engine kind `engine.kind` over the
    /// store kind `engine.kv_cache`: one `match` per slot. The types are fixed here, once per run, so
    /// that everything `w` builds around them (the world and its loop) is compiled for the pair.
    pub fn build<W: WithReplicas>(&self, cfg: &Config, w: W) -> W::Out {
        let paged = |m: usize| {
            KvCacheManager::new(
                self.of_model(m).sizing.num_gpu_blocks,
                cfg.engine.block_size,
                cfg.engine.prefix_caching,
            )
            .with_scope(cfg.engine.prefix_cache_scope)
        };
        if self.offload.is_some() {
            // Validation admits tiers only over vLLM's paged prefix cache; every model has them.
            return self.build_vllm(cfg, w, |m| {
                let p = self
                    .of_model(m)
                    .offload
                    .clone()
                    .expect("tiers for every model");
                Tiered::new(paged(m), p)
            });
        }
        match cfg.engine.kv_kind() {
            KvKind::Paged => self.build_engine(cfg, w, paged),
            KvKind::Conversation => {
                let k = &cfg.kv_store;
                self.build_engine(cfg, w, |m| {
                    let sys = self.of_model(m);
                    let capacity = sys.sizing.num_gpu_blocks as u64 * cfg.engine.block_size as u64;
                    let limits = crate::kv::conversation::StoreLimits {
                        max_sessions: k.max_sessions,
                        max_tokens: Some(k.max_tokens.unwrap_or(capacity)),
                        max_bytes: k.max_bytes,
                    };
                    crate::kv::conversation::ConversationStore::new(
                        k.enabled,
                        limits,
                        sys.model.kv_bytes_per_token(),
                        k.release_on_session_end,
                    )
                })
            }
            KvKind::Off => self.build_engine(cfg, w, |_| crate::kv::off::KvOff),
            // Validation admits the radix store under SGLang's scheduler only, which owns it by type.
            KvKind::Radix => w.with(&|id, m| {
                let sys = self.of_model(m);
                let g = sys.sglang.clone().expect("resolved for engine sglang");
                let mut pool =
                    crate::kv::TokenPool::new(g.max_total_tokens, cfg.engine.prefix_caching)
                        .with_scope(cfg.engine.prefix_cache_scope);
                if let Some(h) = g.hicache {
                    pool = pool.with_hicache(h);
                }
                let scheduler = crate::scheduler::sglang::SglangScheduler::new(g.limits, pool);
                Replica::new(id, scheduler, sys.sizing.max_model_len).serving(m)
            }),
        }
    }

    /// [`System::build`] with the store chosen: `store(m)` makes one replica's store for model `m`.
    fn build_engine<K: KvStore + 'static, W: WithReplicas>(
        &self,
        cfg: &Config,
        w: W,
        store: impl Fn(usize) -> K,
    ) -> W::Out {
        match cfg.engine.kind {
            EngineKind::Vllm => self.build_vllm(cfg, w, store),
            EngineKind::Dynamic => w.with(&|id, m| {
                let max_model_len = self.of_model(m).sizing.max_model_len;
                let p = dynamic_params(cfg, max_model_len);
                let scheduler = crate::scheduler::dynamic::DynamicBatcher::new(store(m), p);
                Replica::new(id, scheduler, max_model_len).serving(m)
            }),
            EngineKind::None => w.with(&|id, m| {
                let max_model_len = self.of_model(m).sizing.max_model_len;
                let scheduler = crate::scheduler::none::NoBatching::new(store(m), max_model_len);
                Replica::new(id, scheduler, max_model_len).serving(m)
            }),
            EngineKind::Sglang => unreachable!("engine sglang drives the radix store only"),
        }
    }

    /// vLLM's scheduler over the store `store(m)` makes.
    fn build_vllm<K: KvStore + 'static, W: WithReplicas>(
        &self,
        cfg: &Config,
        w: W,
        store: impl Fn(usize) -> K,
    ) -> W::Out {
        w.with(&|id, m| {
            let s = &self.of_model(m).sizing;
            let limits = Limits {
                max_num_batched_tokens: s.max_num_batched_tokens,
                max_num_seqs: s.max_num_seqs,
                max_model_len: s.max_model_len,
                enable_chunked_prefill: cfg.engine.enable_chunked_prefill,
                long_prefill_token_threshold: cfg.engine.long_prefill_token_threshold,
                policy: cfg.engine.policy,
            };
            let mut scheduler = VllmScheduler::new(limits, store(m));
            if let Some(link) = self.remote_kv(cfg, m) {
                scheduler = scheduler.with_remote_kv(link);
            }
            match &cfg.engine.speculative {
                None => Replica::new(id, scheduler, s.max_model_len).serving(m),
                Some(sp) => {
                    let k = sp.num_speculative_tokens;
                    let scheduler = scheduler.with_speculation(SpecDecode {
                        num_speculative_tokens: k,
                        num_lookahead_tokens: if sp.method.lookahead() { k } else { 0 },
                    });
                    Replica::new(id, scheduler, s.max_model_len)
                        .with_speculation(crate::speculative::Acceptance::new(sp, cfg.seed))
                        .serving(m)
                }
            }
        })
    }

    /// The cluster's router, of the configured policy; disaggregated, the prefill pool's.
    pub fn router(&self, cfg: &Config) -> Box<dyn crate::cluster::router::Router> {
        match &cfg.cluster.prefill {
            Some(p) if cfg.cluster.pd_pools().is_some() => self.pool_router(cfg, p, 1),
            _ => crate::cluster::router::build(
                &cfg.cluster,
                crate::cluster::router::RouterContext {
                    slots: cfg.cluster.slots(),
                    seed: cfg.seed,
                    gpu_blocks: self.sizing.num_gpu_blocks as u64,
                    block_size: cfg.engine.block_size,
                },
            ),
        }
    }

    /// The decode pool's router (disaggregated only).
    pub fn decode_router(&self, cfg: &Config) -> Option<Box<dyn crate::cluster::router::Router>> {
        let d = cfg.cluster.decode.as_ref()?;
        cfg.cluster.pd_pools()?;
        Some(self.pool_router(cfg, d, 2))
    }

    /// A pool's router over its `pool.replicas` instances of model `m`: its own policy, or
    /// `cluster.router`; its draws from a stream of its own.
    fn pool_router(
        &self,
        cfg: &Config,
        pool: &crate::config::PoolConfig,
        m: usize,
    ) -> Box<dyn crate::cluster::router::Router> {
        let mut c = cfg.cluster.clone();
        c.router = pool.router.unwrap_or(c.router);
        crate::cluster::router::build(
            &c,
            crate::cluster::router::RouterContext {
                slots: pool.replicas,
                seed: crate::rng::mix(cfg.seed, m as u64),
                gpu_blocks: self.of_model(m).sizing.num_gpu_blocks as u64,
                block_size: cfg.engine.block_size,
            },
        )
    }

    /// The model index (see [`System::of_model`]) replica slot `id` starts with: 0, but for the pools
    /// of a disaggregated cluster (1 for prefill instances, 2 for decode instances).
    pub fn model_of_slot(cfg: &Config, id: ReplicaId) -> usize {
        match cfg.cluster.pd_pools() {
            Some((p, _)) if id < p => 1,
            Some(_) => 2,
            None => 0,
        }
    }

    /// The KV connector of a decode instance of model `m` (disaggregated, `m` = 2): the decode model's
    /// KV bytes per token over `cluster.kv_transfer`'s link, one link per GPU of the smaller instance.
    pub fn remote_kv(&self, cfg: &Config, m: usize) -> Option<crate::scheduler::vllm_v1::RemoteKv> {
        let (Some(p), Some(d)) = (&cfg.cluster.prefill, &cfg.cluster.decode) else {
            return None;
        };
        if m != 2 || cfg.cluster.pd_pools().is_none() {
            return None;
        }
        let t = cfg.cluster.kv_transfer.clone().unwrap_or_default();
        let tp = |pool: &crate::config::PoolConfig| {
            pool.tensor_parallel.unwrap_or(cfg.hardware.tensor_parallel)
        };
        let links = tp(p).min(tp(d)) as f64;
        Some(crate::scheduler::vllm_v1::RemoteKv {
            bytes_per_token: self.of_model(2).model.kv_bytes_per_token(),
            bytes_per_s: t.bytes_per_s() * links,
            latency: crate::time::SimDuration::from_secs_f64(t.latency_s),
        })
    }
}

/// `kv.offload` resolved: tier sizes in units (GiB / bytes per unit, the engines' own division, O1),
/// links in bytes per second; None when both sizes are 0 (no tier: the GPU pool alone, so that a
/// comparison over `cpu_gib` can start at 0).
fn offload_params(
    cfg: &Config,
    o: &OffloadConfig,
    model: &ModelShape,
    hardware: &HardwareSpec,
) -> Result<Option<OffloadParams>, ConfigError> {
    if o.cpu_gib == 0.0 && o.disk_gib == 0.0 {
        return Ok(None);
    }
    let bs = cfg.engine.block_size;
    let unit_blocks = match o.backend {
        OffloadBackend::Native => 1,
        OffloadBackend::Lmcache => o.chunk_tokens / bs,
    };
    let bytes_per_token = model.kv_bytes_per_token();
    let unit_bytes = (unit_blocks * bs) as u64 * bytes_per_token;
    let units = |gib: f64| (gib * (1u64 << 30) as f64 / unit_bytes as f64).floor() as u64;
    let cpu_gbps = o.cpu_bandwidth_gbps.or(hardware.host_link_gbps).ok_or_else(|| {
        ConfigError::invalid(
            "kv.offload.cpu_bandwidth_gbps",
            format!(
                "hardware {} lists no host_link_gbps in its catalog; set kv.offload.cpu_bandwidth_gbps \
                 (the GPU-host link's one-way GB/s)",
                hardware.name
            ),
        )
    })?;
    let too_small = |key: &str, gib: f64| {
        ConfigError::invalid(
            format!("kv.offload.{key}"),
            format!(
                "{gib} GiB holds no {}-token unit of {} KiB; raise it, or set 0 for no such tier",
                unit_blocks * bs,
                unit_bytes / 1024
            ),
        )
    };
    // Each tensor-parallel GPU copies its share of the KV over its own host link.
    let cpu_bw = cpu_gbps * 1e9 * cfg.hardware.tensor_parallel as f64;
    let specs = [
        (
            TierKind::Cpu,
            "cpu_gib",
            o.cpu_gib,
            cpu_bw,
            o.cpu_latency_s,
            o.cpu_survives_restart,
        ),
        (
            TierKind::Disk,
            "disk_gib",
            o.disk_gib,
            o.disk_bandwidth_gbps * 1e9,
            o.disk_latency_s,
            true,
        ),
    ];
    let mut tiers = Vec::new();
    for (kind, key, gib, bandwidth_bytes_per_s, latency_s, survives_restart) in specs {
        if gib == 0.0 {
            continue;
        }
        if units(gib) == 0 {
            return Err(too_small(key, gib));
        }
        tiers.push((
            kind,
            TierParams {
                capacity_units: units(gib),
                bandwidth_bytes_per_s,
                latency_s,
                survives_restart,
            },
        ));
    }
    Ok(Some(OffloadParams {
        backend: match o.backend {
            OffloadBackend::Native => Backend::Native,
            OffloadBackend::Lmcache => Backend::LmCache,
        },
        block_size: bs,
        unit_blocks,
        bytes_per_token,
        tiers,
    }))
}

/// The speculative drafter's shape, and whether it shares the target's embedding and LM head: an
/// EAGLE head is one decoder layer of the target's width over its hidden states (priced with the
/// target's LM head, which it calls for each draft token); a draft model is its own model. None
/// without speculation or with n-gram drafts (proposed on the CPU).
fn drafter_shape(
    cfg: &Config,
    target: &ModelShape,
) -> Result<Option<(ModelShape, bool)>, ConfigError> {
    let Some(sp) = &cfg.engine.speculative else {
        return Ok(None);
    };
    Ok(match sp.method {
        SpecMethod::Ngram => None,
        SpecMethod::Eagle | SpecMethod::Eagle3 => Some((
            ModelShape {
                num_layers: 1,
                ..target.clone()
            },
            true,
        )),
        SpecMethod::DraftModel => {
            let key = "engine.speculative.model";
            let name = sp.model.as_deref().unwrap_or_default();
            let m = ModelShape::load(name)
                .and_then(|m| m.with_dtypes(&cfg.model.dtype, &cfg.engine.kv_cache_dtype))
                .map_err(|e| match e {
                    ConfigError::UnknownCatalogEntry {
                        hint, name, known, ..
                    } => ConfigError::UnknownCatalogEntry {
                        key: key.into(),
                        hint,
                        name,
                        known,
                    },
                    e => ConfigError::invalid(key, e.to_string()),
                })?;
            // vLLM verifies the drafts against the target's logits: one vocabulary.
            if m.vocab_size != target.vocab_size {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} has a vocabulary of {} tokens and {} of {}; a draft model must share the \
                         target's tokenizer (for a Llama-3 target, e.g. \"llama-3.2-1b\")",
                        m.name, m.vocab_size, target.name, target.vocab_size
                    ),
                ));
            }
            Some((m, false))
        }
    })
}

/// Disaggregated: each pool's config (its hardware and tensor parallelism in place of the top
/// level's), keyed by its table; empty in an aggregated cluster.
fn pool_configs(cfg: &Config) -> Vec<(&'static str, Config)> {
    let (Some(p), Some(d)) = (&cfg.cluster.prefill, &cfg.cluster.decode) else {
        return Vec::new();
    };
    if cfg.cluster.pd_pools().is_none() {
        return Vec::new();
    }
    [("cluster.prefill", p), ("cluster.decode", d)]
        .into_iter()
        .map(|(key, pool)| {
            let mut c = cfg.clone();
            if let Some(h) = &pool.hardware {
                c.hardware.name = h.clone();
            }
            if let Some(tp) = pool.tensor_parallel {
                c.hardware.tensor_parallel = tp;
            }
            (key, c)
        })
        .collect()
}

/// `cfg` serving model `name` instead (a `swap_model` event's).
fn for_model(cfg: &Config, name: &str) -> Config {
    let mut c = cfg.clone();
    c.model.name = name.to_string();
    c
}

/// `workload.rate_schedule` ready to reshape arrivals.
pub fn rate_shape(cfg: &Config) -> Option<crate::workload::rate::RateShape> {
    crate::workload::rate::RateShape::of(&cfg.workload, RngStreams::new(cfg.seed))
}

/// `[batching]` resolved for the dynamic batcher: each sampling profile's group is the first profile
/// with the same values in the `group_by` fields.
fn dynamic_params(cfg: &Config, max_model_len: u32) -> crate::scheduler::dynamic::DynamicParams {
    use crate::scheduler::dynamic::{Adaptive, DynamicParams};
    use crate::time::SimDuration;
    let b = &cfg.batching;
    let by = |f: &str| b.group_by.iter().any(|g| g == f);
    let keys: Vec<String> = cfg
        .workload
        .sampling
        .iter()
        .map(|p| {
            let mut k = String::new();
            if by("temperature") {
                k += &format!("t{:?};", p.temperature.to_bits());
            }
            if by("top_p") {
                k += &format!("p{:?};", p.top_p.to_bits());
            }
            if by("top_k") {
                k += &format!("k{};", p.top_k);
            }
            if by("model") {
                k += &format!("m{};", p.model);
            }
            k
        })
        .collect();
    let profile_group = keys
        .iter()
        .map(|k| keys.iter().position(|x| x == k).expect("its own key") as u32)
        .collect();
    DynamicParams {
        max_batch_size: b.max_batch_size,
        max_queue_delay: SimDuration::from_secs_f64(b.max_queue_delay_s),
        early_exit: b.early_exit,
        adaptive: b.adaptive.as_ref().map(|a| Adaptive {
            interval: SimDuration::from_secs_f64(a.interval_s),
            target_latency: SimDuration::from_secs_f64(a.target_latency_s),
            min_batch_size: a.min_batch_size,
            decrease_factor: a.decrease_factor,
            increase_step: a.increase_step,
        }),
        profile_group,
        group_by_max_tokens: by("max_tokens"),
        max_model_len,
    }
}

/// What to do with a run's replicas, whatever the engine and store types the config picks (see
/// [`System::build`]).
pub trait WithReplicas {
    type Out;
    /// Called once with the replica factory: `make(id, m)` is replica `id` serving model `m`
    /// ([`System::of_model`]), empty and idle (a run calls it for each replica slot at its start with
    /// model 0, and again for a slot a `restart` or `swap_model` event renews).
    fn with<S: Scheduler + 'static>(
        self,
        make: &dyn Fn(ReplicaId, usize) -> Replica<S>,
    ) -> Self::Out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_profiles_share_a_group_when_their_group_by_fields_match() {
        let profile = |name: &str, temperature: f64, top_p: f64| crate::config::SamplingProfile {
            name: name.into(),
            share: 1.0,
            temperature,
            top_p,
            top_k: -1,
            model: String::new(),
        };
        let mut cfg = Config::default();
        cfg.workload.sampling = vec![
            profile("a", 1.0, 1.0),
            profile("b", 0.7, 1.0),
            profile("c", 1.0, 0.9),
        ];
        cfg.batching.group_by = vec!["temperature".into()];
        assert_eq!(dynamic_params(&cfg, 100).profile_group, [0, 1, 0]);
        cfg.batching.group_by = vec!["temperature".into(), "top_p".into()];
        assert_eq!(dynamic_params(&cfg, 100).profile_group, [0, 1, 2]);
        cfg.batching.group_by = Vec::new();
        assert_eq!(dynamic_params(&cfg, 100).profile_group, [0, 0, 0]);
        cfg.batching.group_by = vec!["max_tokens".into()];
        let p = dynamic_params(&cfg, 100);
        assert!(p.group_by_max_tokens && p.profile_group == [0, 0, 0]);
    }
}
