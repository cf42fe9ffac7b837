//! Memory to blocks (engine-semantics M1-M4) and vLLM's batch defaults (S8).

use crate::config::EngineConfig;
use crate::cost::catalog::{HardwareSpec, ModelShape, GIB};
use crate::error::ConfigError;

/// The engine numbers a run actually uses, derived as vLLM derives them.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSizing {
    pub max_num_batched_tokens: u32,
    pub max_num_seqs: u32,
    pub max_model_len: u32,
    pub num_gpu_blocks: u32,
    pub weights_gib: f64,
    pub activation_reserve_gib: f64,
    pub kv_cache_gib: f64,
    /// Bytes of one block across all layers.
    pub block_bytes: u64,
}

/// Non-torch memory (CUDA context, NCCL buffers) vLLM's profiler sees rise at start-up, GiB.
const NON_TORCH_GIB: f64 = 0.5;

/// M2's activation term, estimated from the profile run's shape: the MLP's gate and up outputs (a MoE
/// layer's routed and shared experts' together) plus four
/// hidden-size buffers for max_num_batched_tokens tokens, fp32 logits for max_num_seqs sampled rows, and
/// the non-torch rise. About 1.7 GiB for Llama-3.1-8B at 8192/1024, in line with the 1.2-2 GiB vLLM logs
/// for that model.
pub fn estimate_activation_gib(m: &ModelShape, tokens: u32, seqs: u32) -> f64 {
    let act = tokens as f64
        * (2 * m.mlp_activation_width() + 4 * m.hidden_size) as f64
        * m.dtype_bytes as f64;
    let logits = seqs as f64 * m.vocab_size as f64 * 4.0;
    (act + logits) / GIB + NON_TORCH_GIB
}

/// Resolves batch limits (S8), the context length and the block count (M1-M4), with errors that say how to
/// make an impossible configuration possible.
pub fn size_engine(
    e: &EngineConfig,
    m: &ModelShape,
    hw: &HardwareSpec,
) -> Result<EngineSizing, ConfigError> {
    size_engine_tp(e, m, hw, 1)
}

/// As [`size_engine`], for one GPU of a `tp`-way tensor-parallel replica: it holds 1/tp of the weights and
/// of the KV heads, so the same memory holds more blocks.
pub fn size_engine_tp(
    e: &EngineConfig,
    full: &ModelShape,
    hw: &HardwareSpec,
    tp: u32,
) -> Result<EngineSizing, ConfigError> {
    size_engine_with_drafter(e, full, None, hw, tp)
}

/// A speculative decoder's share of a GPU: its weights per rank, and the KV bytes per token its layers
/// keep in the same blocks as the target's (vLLM allocates one KV cache over every attention layer,
/// the drafter's included, so a block holds both).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DrafterMemory {
    pub weight_bytes_per_rank: u64,
    pub kv_bytes_per_token_per_rank: u64,
}

/// [`size_engine_tp`] with a drafter's weights and KV layers on the same GPUs.
pub fn size_engine_with_drafter(
    e: &EngineConfig,
    full: &ModelShape,
    drafter: Option<DrafterMemory>,
    hw: &HardwareSpec,
    tp: u32,
) -> Result<EngineSizing, ConfigError> {
    let drafter = drafter.unwrap_or_default();
    let rank = full.per_rank(tp)?;
    let m = &rank;
    let max_model_len = e
        .max_model_len
        .unwrap_or(full.max_position_embeddings.min(u32::MAX as u64) as u32);
    if max_model_len < 2 {
        return Err(ConfigError::invalid(
            "engine.max_model_len",
            "must be at least 2 tokens",
        ));
    }
    if max_model_len as u64 > m.max_position_embeddings {
        return Err(ConfigError::invalid(
            "engine.max_model_len",
            format!(
                "{max_model_len} exceeds the model's max_position_embeddings ({}); lower it",
                m.max_position_embeddings
            ),
        ));
    }
    // S8: defaults by GPU class, then the two clamps.
    let (def_tokens, def_seqs) = if hw.is_large_gpu() {
        (8192u32, 1024u32)
    } else {
        (2048, 256)
    };
    let mut seqs = e.max_num_seqs.unwrap_or(def_seqs);
    let mut tokens = match e.max_num_batched_tokens {
        Some(t) => t,
        None if !e.enable_chunked_prefill => def_tokens.max(max_model_len),
        None => def_tokens,
    };
    if e.max_num_batched_tokens.is_none() {
        tokens = (tokens as u64).min(seqs as u64 * max_model_len as u64) as u32;
    }
    if e.max_num_seqs.is_none() {
        seqs = seqs.min(tokens);
    }
    if !e.enable_chunked_prefill && tokens < max_model_len {
        return Err(ConfigError::invalid(
            "engine.max_num_batched_tokens",
            format!(
                "{tokens} is below max_model_len ({max_model_len}) with chunked prefill off, so long prompts \
                 could never run; raise it, lower engine.max_model_len, or enable chunked prefill"
            ),
        ));
    }

    let weights = (full.weight_bytes_per_rank(tp)? + drafter.weight_bytes_per_rank) as f64;
    let activation_gib = e
        .activation_reserve_gib
        .unwrap_or_else(|| estimate_activation_gib(m, tokens, seqs));
    let block_bytes =
        e.block_size as u64 * (m.kv_bytes_per_token() + drafter.kv_bytes_per_token_per_rank);
    let num_blocks = match e.num_gpu_blocks {
        Some(n) => n,
        None => {
            // M1: requested = ceil(total x utilization); M2: minus weights and activations.
            let requested = (hw.memory_bytes() * e.gpu_memory_utilization).ceil();
            let available = requested - weights - activation_gib * GIB;
            if available <= 0.0 {
                return Err(ConfigError::invalid(
                    "model.name / hardware.name",
                    format!(
                        "the model does not fit: weights {:.2} GiB + activations {:.2} GiB exceed {:.2} GiB \
                         ({} x gpu_memory_utilization {}); split it over more GPUs with \
                         hardware.tensor_parallel, use a GPU with more memory or a smaller model, or raise \
                         engine.gpu_memory_utilization",
                        weights / GIB,
                        activation_gib,
                        requested / GIB,
                        hw.name,
                        e.gpu_memory_utilization
                    ),
                ));
            }
            // M3/M4: pages of 2 x block x kv_heads x head_dim x dtype per layer.
            (available / block_bytes as f64)
                .floor()
                .min(u32::MAX as f64) as u32
        }
    };
    // vLLM refuses to start when one max_model_len sequence cannot fit in the KV cache; so does servesim,
    // because such a request could never be admitted and would block the queue forever.
    let need = (max_model_len as u64).div_ceil(e.block_size as u64) + 1;
    if (num_blocks as u64) < need {
        let usable = num_blocks.saturating_sub(1) as u64;
        let usable_tokens = usable * e.block_size as u64;
        let more = if e.num_gpu_blocks.is_some() {
            format!("raise engine.num_gpu_blocks to at least {need}")
        } else {
            "give the KV cache more memory (hardware.tensor_parallel, a GPU with more memory, or a higher \
             engine.gpu_memory_utilization)"
                .to_string()
        };
        // Below two tokens no sequence fits at all, and lowering max_model_len cannot help.
        let (key, fix) = if usable_tokens < 2 {
            (
                if e.num_gpu_blocks.is_some() {
                    "engine.num_gpu_blocks"
                } else {
                    "model.name / hardware.name"
                },
                more,
            )
        } else {
            (
                "engine.max_model_len",
                format!("lower engine.max_model_len to at most {usable_tokens}, or {more}"),
            )
        };
        return Err(ConfigError::invalid(
            key,
            format!(
                "the KV cache has {usable} usable blocks ({usable_tokens} tokens), fewer than one \
                 max_model_len ({max_model_len}) sequence needs; {fix}"
            ),
        ));
    }
    Ok(EngineSizing {
        max_num_batched_tokens: tokens,
        max_num_seqs: seqs,
        max_model_len,
        num_gpu_blocks: num_blocks,
        weights_gib: weights / GIB,
        activation_reserve_gib: activation_gib,
        kv_cache_gib: num_blocks as f64 * block_bytes as f64 / GIB,
        block_bytes,
    })
}

/// SGLang's limits (G1, G8, G9) for an engine whose KV memory `sizing` resolved: the token pool holds
/// the same bytes (`sglang.max_total_tokens` overrides it), `chunked_prefill_size` follows the GPU's
/// memory as SGLang's `server_args.py` sets it, and `max_running_requests` is
/// min(max_total_tokens / 2, request pool) with the request pool clamp(max_total_tokens / context x
/// 512, 2048, 4096). Errors when one context-length request cannot fit the pool (it could never be
/// admitted).
pub fn sglang_limits(
    g: &crate::config::SglangConfig,
    e: &EngineConfig,
    sizing: &EngineSizing,
    hw: &HardwareSpec,
) -> Result<SglangSizing, ConfigError> {
    let max_total = g
        .max_total_tokens
        .unwrap_or(sizing.num_gpu_blocks as u64 * e.block_size as u64);
    let context = sizing.max_model_len as u64;
    if max_total <= context {
        return Err(ConfigError::invalid(
            "sglang.max_total_tokens",
            format!(
                "the token pool holds {max_total} tokens, not more than one max_model_len ({context}) \
                 request, which could then never be admitted; raise sglang.max_total_tokens (or give the \
                 KV cache more memory) or lower engine.max_model_len"
            ),
        ));
    }
    let chunked = match g.chunked_prefill_size {
        Some(-1) => None,
        Some(n) => Some(n as u32),
        None => Some(match hw.memory_gib {
            m if m < 35.0 => 2048,
            m if m < 60.0 => 4096,
            m if m < 160.0 => 8192,
            _ => 16384,
        }),
    };
    let req_pool = (max_total as f64 / context as f64 * 512.0).clamp(2048.0, 4096.0) as u64;
    let max_running = g
        .max_running_requests
        .unwrap_or((max_total / 2).min(req_pool).min(u32::MAX as u64) as u32);
    let (init, min, decay) =
        crate::scheduler::sglang::SglangLimits::ratios(g.schedule_conservativeness);
    let limits = crate::scheduler::sglang::SglangLimits {
        max_running_requests: max_running,
        chunked_prefill_size: chunked,
        max_prefill_tokens: g.max_prefill_tokens,
        policy: g.schedule_policy,
        init_new_token_ratio: init,
        min_new_token_ratio: min,
        new_token_ratio_decay: decay,
        max_model_len: sizing.max_model_len,
    };
    Ok(SglangSizing {
        max_total_tokens: max_total,
        limits,
        hicache: None,
    })
}

/// SGLang's engine resolved: its token pool, its limits, and HiCache's host tier when on.
#[derive(Clone, Debug, PartialEq)]
pub struct SglangSizing {
    pub max_total_tokens: u64,
    pub limits: crate::scheduler::sglang::SglangLimits,
    pub hicache: Option<crate::kv::token_pool::HiCacheParams>,
}

/// HiCache's host tier (H1): `hicache_size` GB when set, else `hicache_ratio` x the GPU pool, in tokens
/// of `bytes_per_token` (the whole model's KV per token); the link is the catalog's `host_link_gbps`
/// per GPU, each of a replica's `tp` GPUs copying its share over its own.
pub fn hicache_params(
    g: &crate::config::SglangConfig,
    max_total_tokens: u64,
    bytes_per_token: u64,
    hw: &HardwareSpec,
    tp: u32,
) -> Result<crate::kv::token_pool::HiCacheParams, ConfigError> {
    let host_tokens = if g.hicache_size > 0.0 {
        (g.hicache_size * 1e9 / bytes_per_token as f64).floor() as u64
    } else {
        (g.hicache_ratio * max_total_tokens as f64).floor() as u64
    };
    if host_tokens <= max_total_tokens {
        let key = if g.hicache_size > 0.0 {
            "sglang.hicache_size"
        } else {
            "sglang.hicache_ratio"
        };
        return Err(ConfigError::invalid(
            key,
            format!(
                "the host pool would hold {host_tokens} tokens, no more than the GPU pool's \
                 {max_total_tokens}; SGLang refuses this (\"The host memory should be larger than the \
                 device memory\"): raise it above {max_total_tokens} tokens (a ratio above 1)"
            ),
        ));
    }
    let gbps = hw.host_link_gbps.ok_or_else(|| {
        ConfigError::invalid(
            "sglang.enable_hierarchical_cache",
            format!(
                "hardware {} lists no host_link_gbps in its catalog, so HiCache's copies cannot be timed; \
                 add it to the hardware entry (the GPU-host link's one-way GB/s)",
                hw.name
            ),
        )
    })?;
    Ok(crate::kv::token_pool::HiCacheParams {
        host_tokens,
        write_policy: g.hicache_write_policy,
        bytes_per_token,
        link_bytes_per_s: gbps * 1e9 * tp as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(m: &str, h: &str) -> (ModelShape, HardwareSpec) {
        (ModelShape::load(m).unwrap(), HardwareSpec::load(h).unwrap())
    }

    #[test]
    fn m4_blocks_from_memory_hand_worked() {
        let (m, hw) = load("llama-3.1-8b", "h100-sxm");
        let e = EngineConfig {
            activation_reserve_gib: Some(2.0),
            ..EngineConfig::default()
        };
        let s = size_engine(&e, &m, &hw).unwrap();
        // requested = ceil(79.19 GiB x 0.9) = ceil(71.271 x 2^30) = 76,526,653,539 B;
        // weights = 8,030,261,248 params x 2 B = 16,060,522,496 B; activations 2 GiB = 2,147,483,648 B;
        // available = 58,318,647,395 B; block = 16 x 131,072 B = 2,097,152 B;
        // floor(58,318,647,395 / 2,097,152) = floor(27,808.4) = 27,808 blocks.
        assert_eq!(m.weight_bytes(), 16_060_522_496);
        assert_eq!(s.block_bytes, 2_097_152);
        assert_eq!(s.num_gpu_blocks, 27_808);
    }

    #[test]
    fn s8_defaults_by_gpu_class() {
        let (m, h100) = load("llama-3.1-8b", "h100-sxm");
        let s = size_engine(&EngineConfig::default(), &m, &h100).unwrap();
        assert_eq!((s.max_num_batched_tokens, s.max_num_seqs), (8192, 1024));
        let a100 = HardwareSpec::load("a100-80gb").unwrap();
        let s = size_engine(&EngineConfig::default(), &m, &a100).unwrap();
        assert_eq!((s.max_num_batched_tokens, s.max_num_seqs), (2048, 256));
    }

    #[test]
    fn impossible_memory_is_an_error_naming_the_fix() {
        let (m, hw) = load("llama-3.1-70b", "l4");
        let e = size_engine(&EngineConfig::default(), &m, &hw)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit") && e.contains("GiB"), "{e}");
        let (m, hw) = load("llama-3.1-8b", "h100-sxm");
        let e = EngineConfig {
            num_gpu_blocks: Some(100),
            ..EngineConfig::default()
        };
        let err = size_engine(&e, &m, &hw).unwrap_err().to_string();
        assert!(err.contains("engine.max_model_len"), "{err}");
    }
}
