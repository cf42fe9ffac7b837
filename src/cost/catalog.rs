//! Model shapes (from Hugging Face `config.json` files) and hardware specs, with the catalogs that ship.

use crate::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The shape of a decoder-only transformer: everything the cost and memory models need.
///
/// A layer's MLP is dense (gated, `intermediate_size` wide) or a mixture of experts ([`MoeShape`]); its
/// attention is grouped-query (`num_kv_heads` x `head_dim` per token for K and for V) or multi-head latent
/// ([`MlaShape`]), over the whole context or, on some layers, a sliding window ([`SlidingWindow`]). The
/// decoder layers' linear weights may be quantized ([`WeightQuant`]); embeddings, the LM head, norms and
/// router gates stay in the model's dtype, as the quantized checkpoints keep them.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub name: String,
    pub hidden_size: u64,
    /// Width of the dense layers' gated MLP (the experts' width for Mixtral, whose every layer is MoE).
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    /// KV heads (grouped-query attention); for MLA, equal to `num_heads` and unused.
    pub num_kv_heads: u64,
    /// Per-head width of Q and K (for MLA, qk_nope_head_dim + qk_rope_head_dim).
    pub head_dim: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub tie_word_embeddings: bool,
    /// Bytes per element of activations and of unquantized weights (2 for bf16/fp16, 4 for fp32).
    pub dtype_bytes: u64,
    /// Bytes per element of the KV cache: the dtype's, or 1 with `engine.kv_cache_dtype = "fp8"`.
    pub kv_dtype_bytes: u64,
    pub moe: Option<MoeShape>,
    pub mla: Option<MlaShape>,
    pub sliding_window: Option<SlidingWindow>,
    pub quant: Option<WeightQuant>,
}

/// A mixture-of-experts MLP (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3): each token is routed to `top_k` of
/// `num_experts` gated MLPs by a router (an `hidden_size` x `num_experts` linear), and always through the
/// shared experts if any.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeShape {
    /// Routed experts per MoE layer (`num_local_experts`, `num_experts`, `n_routed_experts`).
    pub num_experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`).
    pub top_k: u64,
    /// Width of one routed expert's gated MLP (`moe_intermediate_size`; Mixtral's `intermediate_size`).
    pub expert_intermediate_size: u64,
    /// Total width of the always-active shared experts, 0 if none (DeepSeek: `n_shared_experts` x
    /// `moe_intermediate_size`; Qwen2-MoE: `shared_expert_intermediate_size`).
    pub shared_intermediate_size: u64,
    /// Qwen2-MoE's shared-expert gate, a `hidden_size` x 1 linear.
    pub shared_expert_gate: bool,
    /// How many decoder layers are MoE; the other `num_layers - moe_layers` have the dense MLP.
    pub moe_layers: u64,
}

/// Multi-head latent attention (DeepSeek-V2/V3): K and V are compressed into one latent of
/// `kv_lora_rank` plus a shared rotary key of `qk_rope_head_dim`, which is all the KV cache holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlaShape {
    /// Rank of the query's compression, or None where Q is projected directly (DeepSeek-V2-Lite).
    pub q_lora_rank: Option<u64>,
    pub kv_lora_rank: u64,
    pub qk_nope_head_dim: u64,
    pub qk_rope_head_dim: u64,
    pub v_head_dim: u64,
}

impl MlaShape {
    /// KV-cache elements per token per layer: the latent and the rotary key (576 for DeepSeek-V3), stored
    /// once for all heads (vLLM's `MLAAttentionSpec`, one KV head).
    pub fn kv_elements(&self) -> u64 {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// Sliding-window attention on some layers (Mistral-7B-v0.1 on all, Gemma-2 on every other, Gemma-3 on five
/// of six): such a layer attends to the last `window` tokens, the current one included.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingWindow {
    pub window: u64,
    /// Layers that attend over the window; the other layers attend over the whole context.
    pub layers: u64,
}

/// How a quantized checkpoint stores its decoder layers' linear weights (Hugging Face
/// `quantization_config`).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightQuant {
    /// `quant_method` as the config names it: awq, gptq, fp8, fbgemm_fp8, compressed-tensors.
    pub method: String,
    /// Bits per weight element.
    pub bits: u64,
    /// Bytes of scales and zero points per weight element: per group of `group_size` weights a 16-bit
    /// scale (and a `bits`-wide zero point where asymmetric), per 128 x 128 block a float32 scale.
    pub scale_bytes_per_weight: f64,
    /// What the GEMMs compute in.
    pub compute: QuantCompute,
}

/// A quantized GEMM's arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantCompute {
    /// Weight-only (W4A16, W8A16): weights are dequantized inside the kernel and multiplied in the
    /// model's 16-bit dtype (vLLM's Marlin kernels).
    WeightOnly,
    /// W8A8 in fp8: activations quantized too, at the GPU's fp8 tensor peak.
    Fp8,
    /// W8A8 in int8, at the GPU's int8 tensor peak.
    Int8,
}

impl WeightQuant {
    /// Bytes one quantized weight element occupies, scales included.
    pub fn bytes_per_weight(&self) -> f64 {
        self.bits as f64 / 8.0 + self.scale_bytes_per_weight
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: u64,
    intermediate_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    vocab_size: u64,
    max_position_embeddings: u64,
    tie_word_embeddings: Option<bool>,
    torch_dtype: Option<String>,
    /// Newer Hugging Face configs name the dtype `dtype`.
    dtype: Option<String>,
    // Mixture of experts.
    num_local_experts: Option<u64>,
    num_experts: Option<u64>,
    n_routed_experts: Option<u64>,
    num_experts_per_tok: Option<u64>,
    moe_intermediate_size: Option<u64>,
    shared_expert_intermediate_size: Option<u64>,
    n_shared_experts: Option<u64>,
    first_k_dense_replace: Option<u64>,
    moe_layer_freq: Option<u64>,
    decoder_sparse_step: Option<u64>,
    mlp_only_layers: Option<Vec<u64>>,
    // Multi-head latent attention.
    q_lora_rank: Option<u64>,
    kv_lora_rank: Option<u64>,
    qk_nope_head_dim: Option<u64>,
    qk_rope_head_dim: Option<u64>,
    v_head_dim: Option<u64>,
    // Sliding windows.
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<u64>,
    sliding_window_pattern: Option<u64>,
    layer_types: Option<Vec<String>>,
    quantization_config: Option<serde_json::Value>,
}

/// Largest accepted dimensions of a model shape. The biggest published models are far inside them
/// (126 layers, hidden 16,384, MLP 53,248, 128 heads, 256 experts, vocabularies of 262k), and within them
/// every size product servesim forms fits in 64 bits.
const SHAPE_LIMITS: &[(&str, u64)] = &[
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1 << 10),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("vocab_size", 1 << 23),
    ("max_position_embeddings", u32::MAX as u64),
    ("experts", 1 << 12),
    ("num_experts_per_tok", 1 << 12),
    ("moe_intermediate_size", 1 << 20),
    ("shared experts' width", 1 << 20),
    ("q_lora_rank", 1 << 16),
    ("kv_lora_rank", 1 << 16),
    ("qk_nope_head_dim", 1 << 12),
    ("qk_rope_head_dim", 1 << 12),
    ("v_head_dim", 1 << 12),
    ("sliding_window", u32::MAX as u64),
];

/// Config keys that change the architecture in ways servesim does not model, and what they make it.
const UNMODELLED_KEYS: &[(&str, &str)] = &[
    (
        "interleave_moe_layer_step",
        "a Llama-4 model (MoE on every n-th layer, a dense MLP of intermediate_size_mlp on the others)",
    ),
    ("intermediate_size_mlp", "a Llama-4 model (two MLP widths)"),
    ("attention_chunk_size", "a model with chunked local attention"),
    ("index_topk", "a sparse-attention model (DeepSeek-V3.2's indexer)"),
    ("linear_num_value_heads", "a hybrid linear-attention model"),
    ("layers_block_type", "a hybrid state-space model"),
    ("mamba_d_state", "a hybrid state-space model"),
    ("ssm_cfg", "a state-space model"),
];

fn limit(field: &str) -> u64 {
    SHAPE_LIMITS
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(u64::MAX, |l| l.1)
}

impl ModelShape {
    /// Parses a Hugging Face `config.json` (a multimodal config's `text_config` where the top level has no
    /// `hidden_size`). `origin` names the file in errors.
    pub fn from_hf_json(name: &str, text: &str, origin: &str) -> Result<ModelShape, ConfigError> {
        let refuse = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        let unusable = |e: serde_json::Error| {
            refuse(format!(
                "not a usable Hugging Face config.json ({e}); it needs hidden_size, intermediate_size, \
                 num_hidden_layers, num_attention_heads, vocab_size, max_position_embeddings"
            ))
        };
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(unusable)?;
        if v.get("hidden_size").is_none() {
            if let Some(mut t) = v.get("text_config").cloned().filter(|t| t.is_object()) {
                for k in [
                    "torch_dtype",
                    "dtype",
                    "quantization_config",
                    "tie_word_embeddings",
                ] {
                    if let (Some(x), None) = (v.get(k), t.get(k)) {
                        t[k] = x.clone();
                    }
                }
                v = t;
            }
        }
        // Keys of architectures servesim does not model: refused rather than priced as something else.
        for (key, what) in UNMODELLED_KEYS {
            if v.get(*key).is_some_and(|x| !x.is_null()) {
                return Err(refuse(format!(
                    "{key} makes this {what}, which servesim does not model; use a config without it"
                )));
            }
        }
        let c: HfConfig = serde_json::from_value(v).map_err(unusable)?;
        let model_type = c.model_type.clone().unwrap_or_default();
        if let Some(t) = c
            .layer_types
            .iter()
            .flatten()
            .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
        {
            return Err(refuse(format!(
                "layer_types lists \"{}\", a kind of layer servesim does not model (it models \
                 full_attention and sliding_attention)",
                crate::input::shorten(t, 40)
            )));
        }
        let dtype = match (c.torch_dtype.as_deref(), c.dtype.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(refuse(format!(
                    "torch_dtype \"{a}\" and dtype \"{b}\" disagree; keep one"
                )))
            }
            (a, b) => a.or(b).unwrap_or("bfloat16"),
        };
        let dtype_bytes = dtype_bytes(dtype).ok_or_else(|| {
            refuse(format!(
                "dtype \"{}\" is not supported; use bfloat16, float16 or float32 (a quantized checkpoint \
                 says so in its quantization_config)",
                crate::input::shorten(dtype, 40)
            ))
        })?;
        let check = |field: &str, v: Option<u64>| -> Result<(), ConfigError> {
            let max = limit(field);
            match v {
                Some(v) if v == 0 || v > max => Err(refuse(format!(
                    "{field} = {v} is out of range: it must be between 1 and {max}"
                ))),
                _ => Ok(()),
            }
        };
        for (field, v) in [
            ("hidden_size", Some(c.hidden_size)),
            ("intermediate_size", Some(c.intermediate_size)),
            ("num_hidden_layers", Some(c.num_hidden_layers)),
            ("num_attention_heads", Some(c.num_attention_heads)),
            ("num_key_value_heads", c.num_key_value_heads),
            ("head_dim", c.head_dim),
            ("vocab_size", Some(c.vocab_size)),
            ("max_position_embeddings", Some(c.max_position_embeddings)),
            ("q_lora_rank", c.q_lora_rank),
            ("kv_lora_rank", c.kv_lora_rank),
            ("qk_nope_head_dim", c.qk_nope_head_dim),
            ("qk_rope_head_dim", c.qk_rope_head_dim),
            ("v_head_dim", c.v_head_dim),
            ("num_experts_per_tok", c.num_experts_per_tok),
            ("moe_intermediate_size", c.moe_intermediate_size),
        ] {
            check(field, v)?;
        }
        let layers = c.num_hidden_layers;
        let heads = c.num_attention_heads;

        let mla = match c.kv_lora_rank {
            None => None,
            Some(kv_lora_rank) => {
                let need = |field: &str, v: Option<u64>| {
                    v.ok_or_else(|| {
                        refuse(format!(
                            "kv_lora_rank makes this multi-head latent attention, which also needs {field}"
                        ))
                    })
                };
                Some(MlaShape {
                    q_lora_rank: c.q_lora_rank,
                    kv_lora_rank,
                    qk_nope_head_dim: need("qk_nope_head_dim", c.qk_nope_head_dim)?,
                    qk_rope_head_dim: need("qk_rope_head_dim", c.qk_rope_head_dim)?,
                    v_head_dim: need("v_head_dim", c.v_head_dim)?,
                })
            }
        };
        let head_dim = match (&mla, c.head_dim) {
            (Some(m), _) => m.qk_nope_head_dim + m.qk_rope_head_dim,
            (None, Some(d)) => d,
            (None, None) => c.hidden_size / heads,
        };
        if head_dim == 0 {
            return Err(refuse(format!(
                "hidden_size / num_attention_heads = {} / {heads} rounds to a head_dim of 0; set head_dim",
                c.hidden_size
            )));
        }
        let kv = if mla.is_some() {
            heads
        } else {
            c.num_key_value_heads.unwrap_or(heads)
        };
        if !heads.is_multiple_of(kv) {
            return Err(refuse(format!(
                "num_key_value_heads ({kv}) must divide num_attention_heads ({heads})"
            )));
        }

        let moe = parse_moe(&c, layers).map_err(refuse)?;
        let sliding_window = parse_sliding_window(&c, &model_type).map_err(refuse)?;
        let quant = match &c.quantization_config {
            None => None,
            Some(q) => Some(parse_quantization(q, dtype_bytes).map_err(refuse)?),
        };
        Ok(ModelShape {
            name: name.to_string(),
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            // Transformers' default where the file is silent: Gemma ties, the others here do not.
            tie_word_embeddings: c
                .tie_word_embeddings
                .unwrap_or(model_type.starts_with("gemma")),
            dtype_bytes,
            kv_dtype_bytes: dtype_bytes,
            moe,
            mla,
            sliding_window,
            quant,
        })
    }

    /// This shape with its widths and heads divided by `divisor` (head_dim, layers and context kept; at
    /// least 64 wide, one head, a 256-token vocabulary): a model shaped like this one that runs on a host
    /// (`calibrate --scale`, `model.width_divisor`). `key` names the setting in errors.
    pub fn scaled(&self, divisor: u32, key: &str) -> Result<ModelShape, ConfigError> {
        let s = divisor as u64;
        if s == 0 {
            return Err(ConfigError::invalid(key, "must be at least 1"));
        }
        if s > 1 && (self.moe.is_some() || self.mla.is_some()) {
            return Err(ConfigError::invalid(
                key,
                "scales dense models only (its expert and MLA widths would stay full size); use 1",
            ));
        }
        let (heads, kv_heads) = ((self.num_heads / s).max(1), (self.num_kv_heads / s).max(1));
        if heads % kv_heads != 0 {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{} / {divisor} leaves {heads} query heads over {kv_heads} KV heads, not whole groups; \
                     pick a divisor of both {} and {}",
                    self.name, self.num_heads, self.num_kv_heads
                ),
            ));
        }
        Ok(ModelShape {
            name: format!("{} / {divisor}", self.name),
            hidden_size: (self.hidden_size / s).max(64),
            intermediate_size: (self.intermediate_size / s).max(64),
            num_heads: (self.num_heads / s).max(1),
            num_kv_heads: (self.num_kv_heads / s).max(1),
            vocab_size: (self.vocab_size / s).max(256),
            ..self.clone()
        })
    }

    /// Loads a catalog entry by name, or a `config.json` when `name` is a path to an existing file.
    pub fn load(name: &str) -> Result<ModelShape, ConfigError> {
        if let Some((_, text)) = MODELS.iter().find(|(n, _)| *n == name) {
            return ModelShape::from_hf_json(name, text, &format!("catalog model {name}"));
        }
        let path = Path::new(name);
        // A name that looks like a path is read as one, so a missing file is reported as missing.
        if path.is_file() || name.contains(['/', '\\']) || name.ends_with(".json") {
            let text = crate::input::read_text(crate::input::InputKind::ModelConfig, path)?;
            return ModelShape::from_hf_json(name, &text, name);
        }
        Err(ConfigError::UnknownCatalogEntry {
            key: "model.name".into(),
            hint: "pick one of those or give the path of a Hugging Face config.json",
            name: name.into(),
            known: model_names().join(", "),
        })
    }

    /// Applies vLLM's `--dtype` (`model.dtype`: `auto` keeps the checkpoint's) and `--kv-cache-dtype`
    /// (`engine.kv_cache_dtype`: `auto` is the model's dtype; `fp8`, `fp8_e4m3` and `fp8_e5m2` store one
    /// byte per element, their per-layer scales outside the pages).
    pub fn with_dtypes(
        mut self,
        dtype: &str,
        kv_cache_dtype: &str,
    ) -> Result<ModelShape, ConfigError> {
        if dtype != "auto" {
            self.dtype_bytes = dtype_bytes(dtype).ok_or_else(|| {
                ConfigError::invalid(
                    "model.dtype",
                    format!(
                        "\"{}\" is not one of auto, bfloat16, float16, float32",
                        crate::input::shorten(dtype, 40)
                    ),
                )
            })?;
        }
        self.kv_dtype_bytes = match kv_cache_dtype {
            "auto" => self.dtype_bytes,
            "fp8" | "fp8_e4m3" | "fp8_e5m2" => 1,
            "bfloat16" | "float16" => 2,
            other => {
                return Err(ConfigError::invalid(
                    "engine.kv_cache_dtype",
                    format!(
                        "\"{}\" is not one of auto, fp8, fp8_e4m3, fp8_e5m2, bfloat16, float16",
                        crate::input::shorten(other, 40)
                    ),
                ))
            }
        };
        Ok(self)
    }

    /// Whether every layer is a dense, full-attention, unquantized grouped-query layer: the only kind the
    /// `table` and `calibrated` cost models time.
    pub fn is_dense_full_attention(&self) -> bool {
        self.moe.is_none()
            && self.mla.is_none()
            && self.sliding_window.is_none()
            && self.quant.is_none()
    }

    /// What makes the model not [`is_dense_full_attention`](Self::is_dense_full_attention), for errors.
    pub fn features(&self) -> String {
        let mut f = Vec::new();
        if self.moe.is_some() {
            f.push("mixture of experts");
        }
        if self.mla.is_some() {
            f.push("latent attention");
        }
        if self.sliding_window.is_some() {
            f.push("sliding-window attention");
        }
        if self.quant.is_some() {
            f.push("quantized weights");
        }
        f.join(", ")
    }

    /// The shape one GPU holds under `tp`-way tensor parallelism, as vLLM splits it: attention heads, the
    /// MLP's width (each expert's too, not the experts: no expert parallelism) and the vocabulary (embedding
    /// and LM head) `tp` ways; KV heads are replicated when there are fewer than `tp`, and MLA's latent KV
    /// and its down-projections are replicated on every rank. Norms, router gates and the residual stream
    /// stay whole.
    pub fn per_rank(&self, tp: u32) -> Result<ModelShape, ConfigError> {
        let tp = tp as u64;
        if tp == 1 {
            return Ok(self.clone());
        }
        let widths = [
            ("attention heads", self.num_heads),
            (
                "MLP width",
                if self.dense_layers() > 0 {
                    self.intermediate_size
                } else {
                    0
                },
            ),
            (
                "expert width",
                self.moe.map_or(0, |m| m.expert_intermediate_size),
            ),
            (
                "shared experts' width",
                self.moe.map_or(0, |m| m.shared_intermediate_size),
            ),
        ];
        if let Some((what, n)) = widths.iter().find(|(_, n)| n % tp != 0) {
            return Err(ConfigError::invalid(
                "hardware.tensor_parallel",
                format!(
                    "{tp} does not divide the model's {n} ({what}); use a divisor of {}",
                    widths
                        .iter()
                        .filter(|w| w.1 > 0)
                        .map(|w| format!("{} ({})", w.1, w.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(ModelShape {
            num_heads: self.num_heads / tp,
            num_kv_heads: if self.mla.is_some() {
                self.num_heads / tp
            } else {
                (self.num_kv_heads / tp).max(1)
            },
            intermediate_size: self.intermediate_size.div_ceil(tp),
            vocab_size: self.vocab_size.div_ceil(tp),
            moe: self.moe.map(|m| MoeShape {
                expert_intermediate_size: m.expert_intermediate_size / tp,
                shared_intermediate_size: m.shared_intermediate_size / tp,
                ..m
            }),
            ..self.clone()
        })
    }

    /// Weight bytes one GPU holds under `tp`-way tensor parallelism (see [`per_rank`](Self::per_rank)).
    pub fn weight_bytes_per_rank(&self, tp: u32) -> Result<u64, ConfigError> {
        Ok(self.per_rank(tp)?.weight_bytes())
    }

    /// Query width of grouped-query attention (heads x head_dim).
    pub fn q_dim(&self) -> u64 {
        self.num_heads * self.head_dim
    }

    /// Width of K (or V) of grouped-query attention: KV heads x head_dim.
    pub fn kv_dim(&self) -> u64 {
        self.num_kv_heads * self.head_dim
    }

    /// Layers with a dense MLP.
    pub fn dense_layers(&self) -> u64 {
        self.num_layers - self.moe.map_or(0, |m| m.moe_layers)
    }

    /// Weight elements of one layer's attention projections (the quantizable ones). Grouped-query: QKV and
    /// O. MLA: the query's down and up projections (or its one projection), the KV down-projection to the
    /// latent and rotary key, the KV up-projection, and O.
    pub fn attention_linear_params(&self) -> u64 {
        let h = self.hidden_size;
        match &self.mla {
            None => h * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * h,
            Some(m) => {
                let qk = self.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim);
                let q = match m.q_lora_rank {
                    Some(r) => h * r + r * qk,
                    None => h * qk,
                };
                q + h * m.kv_elements()
                    + m.kv_lora_rank * self.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
                    + self.num_heads * m.v_head_dim * h
            }
        }
    }

    /// Weight elements of one layer's norms: the two RMSNorms, and MLA's norms of its latents.
    fn layer_norm_params(&self) -> u64 {
        2 * self.hidden_size
            + self
                .mla
                .map_or(0, |m| m.q_lora_rank.unwrap_or(0) + m.kv_lora_rank)
    }

    /// Weight elements of one gated MLP (gate, up, down) of width `i`.
    fn mlp_params(&self, i: u64) -> u64 {
        3 * self.hidden_size * i
    }

    /// (quantizable, other) weight elements of one MoE layer's MLP with `experts` routed experts present:
    /// the experts and shared experts; the router gate and the shared-expert gate.
    fn moe_params(&self, m: &MoeShape, experts: u64) -> (u64, u64) {
        let h = self.hidden_size;
        (
            experts * self.mlp_params(m.expert_intermediate_size)
                + self.mlp_params(m.shared_intermediate_size),
            h * m.num_experts + if m.shared_expert_gate { h } else { 0 },
        )
    }

    /// (quantizable, other) weight elements of the whole model with `experts` routed experts per MoE
    /// layer: the decoder layers' linear weights; embeddings, LM head (unless tied), norms, gates.
    fn params_split(&self, experts: u64) -> (u64, u64) {
        let h = self.hidden_size;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        let mut quantizable = self.num_layers * self.attention_linear_params()
            + self.dense_layers() * self.mlp_params(self.intermediate_size);
        let mut other = emb + head + h + self.num_layers * self.layer_norm_params();
        if let Some(m) = &self.moe {
            let (q, o) = self.moe_params(m, experts);
            quantizable += m.moe_layers * q;
            other += m.moe_layers * o;
        }
        (quantizable, other)
    }

    /// All weight elements: embeddings, layers (every expert), final norm, and the LM head unless tied.
    pub fn total_params(&self) -> u64 {
        let (q, o) = self.params_split(self.moe.map_or(0, |m| m.num_experts));
        q + o
    }

    /// Weight elements one token's forward pass uses: [`total_params`](Self::total_params) with only
    /// `top_k` routed experts per MoE layer, embeddings included (Mistral's and Qwen's convention for
    /// "active parameters"; DeepSeek's figures leave the input embedding out).
    pub fn active_params(&self) -> u64 {
        let (q, o) = self.params_split(self.moe.map_or(0, |m| m.top_k));
        q + o
    }

    /// Bytes of all weights: quantized decoder-layer linears at their quantized size, the rest in dtype.
    /// A quantized MLA checkpoint also holds 16-bit copies of the KV up-projection for the absorbed decode
    /// (vLLM has no quantized batched matmul for it).
    pub fn weight_bytes(&self) -> u64 {
        let (q, o) = self.params_split(self.moe.map_or(0, |m| m.num_experts));
        let qb = match &self.quant {
            None => (q * self.dtype_bytes) as f64,
            Some(w) => q as f64 * w.bytes_per_weight(),
        };
        qb.ceil() as u64 + o * self.dtype_bytes + self.absorbed_copy_params() * self.dtype_bytes
    }

    /// Elements of the 16-bit copies of MLA's KV up-projection a quantized checkpoint keeps for the
    /// absorbed decode, over all layers (0 otherwise).
    fn absorbed_copy_params(&self) -> u64 {
        match (&self.mla, &self.quant) {
            (Some(m), Some(_)) => {
                self.num_layers
                    * m.kv_lora_rank
                    * self.num_heads
                    * (m.qk_nope_head_dim + m.v_head_dim)
            }
            _ => 0,
        }
    }

    /// Bytes one quantizable weight element occupies (the dtype's when unquantized).
    pub fn linear_weight_bytes(&self) -> f64 {
        self.quant
            .as_ref()
            .map_or(self.dtype_bytes as f64, |w| w.bytes_per_weight())
    }

    /// KV-cache elements per token per layer: K and V of every KV head, or MLA's latent and rotary key.
    pub fn kv_elements_per_layer(&self) -> u64 {
        match &self.mla {
            Some(m) => m.kv_elements(),
            None => 2 * self.kv_dim(),
        }
    }

    /// KV-cache bytes per token over all layers (engine-semantics M3, and vLLM's `MLAAttentionSpec` for
    /// MLA): K/V elements per layer x KV dtype bytes x layers. Sliding-window layers count like the others:
    /// vLLM's pages are the same size, and servesim keeps their out-of-window blocks (K12).
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_elements_per_layer() * self.kv_dtype_bytes * self.num_layers
    }

    /// Width of the activations one token's MLP holds (for the profile run's activation estimate): the
    /// dense MLP, or the routed experts' and shared experts' together, whichever is wider.
    pub fn mlp_activation_width(&self) -> u64 {
        let dense = if self.dense_layers() > 0 {
            self.intermediate_size
        } else {
            0
        };
        let moe = self.moe.map_or(0, |m| {
            m.top_k * m.expert_intermediate_size + m.shared_intermediate_size
        });
        dense.max(moe)
    }
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    match dtype {
        "bfloat16" | "float16" => Some(2),
        "float32" => Some(4),
        _ => None,
    }
}

/// The MoE part of a config: Mixtral (`num_local_experts`, every layer), Qwen2/3-MoE (`num_experts`,
/// `decoder_sparse_step`, `mlp_only_layers`), DeepSeek-V2/V3 (`n_routed_experts`, `first_k_dense_replace`,
/// `moe_layer_freq`, `n_shared_experts`), each as the model's Transformers code places its MoE layers.
fn parse_moe(c: &HfConfig, layers: u64) -> Result<Option<MoeShape>, String> {
    let (field, experts) = match (c.num_local_experts, c.num_experts, c.n_routed_experts) {
        (Some(n), None, None) => ("num_local_experts", n),
        (None, Some(n), None) => ("num_experts", n),
        (None, None, Some(n)) => ("n_routed_experts", n),
        (None, None, None) => return Ok(None),
        _ => {
            return Err(
                "more than one of num_local_experts, num_experts, n_routed_experts is set; keep the one \
                 the model's architecture reads"
                    .into(),
            )
        }
    };
    if experts <= 1 {
        return Ok(None);
    }
    if experts > limit("experts") {
        return Err(format!(
            "{field} = {experts} is out of range: it must be at most {}",
            limit("experts")
        ));
    }
    let top_k = c.num_experts_per_tok.ok_or_else(|| {
        format!("{field} = {experts} makes this a mixture of experts, which also needs num_experts_per_tok")
    })?;
    if top_k > experts {
        return Err(format!(
            "num_experts_per_tok = {top_k} exceeds the {experts} experts"
        ));
    }
    let moe_layer = |i: u64| -> bool {
        match field {
            "n_routed_experts" => {
                i >= c.first_k_dense_replace.unwrap_or(0)
                    && i.is_multiple_of(c.moe_layer_freq.unwrap_or(1).max(1))
            }
            "num_experts" => {
                !c.mlp_only_layers.as_deref().unwrap_or(&[]).contains(&i)
                    && (i + 1).is_multiple_of(c.decoder_sparse_step.unwrap_or(1).max(1))
            }
            _ => true,
        }
    };
    let expert_intermediate_size = if field == "num_local_experts" {
        c.intermediate_size
    } else {
        c.moe_intermediate_size.ok_or_else(|| {
            format!(
                "{field} makes this a mixture of experts, which also needs moe_intermediate_size"
            )
        })?
    };
    if expert_intermediate_size > limit("moe_intermediate_size") {
        return Err(format!(
            "the experts' width {expert_intermediate_size} is out of range: it must be at most {}",
            limit("moe_intermediate_size")
        ));
    }
    let shared = match (c.shared_expert_intermediate_size, c.n_shared_experts) {
        (Some(w), _) => w,
        (None, Some(n)) => n.saturating_mul(expert_intermediate_size),
        (None, None) => 0,
    };
    if shared > limit("shared experts' width") {
        return Err(format!(
            "the shared experts' width {shared} is out of range: it must be at most {}",
            limit("shared experts' width")
        ));
    }
    Ok(Some(MoeShape {
        num_experts: experts,
        top_k,
        expert_intermediate_size,
        shared_intermediate_size: shared,
        shared_expert_gate: c.shared_expert_intermediate_size.is_some(),
        moe_layers: (0..layers).filter(|&i| moe_layer(i)).count() as u64,
    }))
}

/// The sliding-window part of a config, with the layers it applies to as Transformers places them:
/// `layer_types` where given; else Gemma-2 every other layer from the first, Gemma-3 all but every
/// `sliding_window_pattern`-th, Qwen2/3 (only with `use_sliding_window`) the layers from
/// `max_window_layers` on, any other model every layer. A window at least `max_position_embeddings`
/// long limits nothing and is dropped.
fn parse_sliding_window(c: &HfConfig, model_type: &str) -> Result<Option<SlidingWindow>, String> {
    let window = match &c.sliding_window {
        None => return Ok(None),
        Some(v) if v.is_null() => return Ok(None),
        Some(v) => match v.as_u64() {
            Some(w) if w >= 1 && w <= limit("sliding_window") => w,
            _ => {
                return Err(format!(
                    "sliding_window = {} is not a window length (a whole number of tokens from 1 to {}) or \
                     null",
                    crate::input::shorten(&v.to_string(), 40),
                    limit("sliding_window")
                ))
            }
        },
    };
    let l = c.num_hidden_layers;
    let layers = if let Some(types) = &c.layer_types {
        if types.len() as u64 != l {
            return Err(format!(
                "layer_types lists {} layers, but num_hidden_layers is {l}",
                types.len()
            ));
        }
        types
            .iter()
            .filter(|t| t.as_str() == "sliding_attention")
            .count() as u64
    } else if model_type.starts_with("qwen") {
        if c.use_sliding_window != Some(true) {
            0
        } else {
            l.saturating_sub(c.max_window_layers.unwrap_or(0))
        }
    } else if c.use_sliding_window == Some(false) {
        0
    } else if model_type == "gemma2" {
        l.div_ceil(2)
    } else if model_type.starts_with("gemma3") {
        let p = c.sliding_window_pattern.unwrap_or(6).max(1);
        l - l / p
    } else {
        l
    };
    if layers == 0 || window >= c.max_position_embeddings {
        return Ok(None);
    }
    Ok(Some(SlidingWindow { window, layers }))
}

/// Weights per scale of a block-quantized checkpoint: the product of the two block sides in `b`
/// (`[128, 128]`), each from 1 to 65,536.
fn block_elements(b: &serde_json::Value, key: &str) -> Result<f64, String> {
    match b
        .as_array()
        .map(|a| a.iter().map(|x| x.as_u64()).collect::<Vec<_>>())
    {
        Some(sides)
            if sides.len() == 2
                && sides
                    .iter()
                    .all(|x| x.is_some_and(|n| (1..=65_536).contains(&n))) =>
        {
            Ok(sides.iter().map(|x| x.unwrap() as f64).product())
        }
        _ => Err(format!(
            "{key} = {} must list two block sides from 1 to 65536, e.g. [128, 128]",
            crate::input::shorten(&b.to_string(), 40)
        )),
    }
}

/// Bits per weight, scale bytes and arithmetic of a `quantization_config`. Supported: `awq` and `gptq`
/// (weight-only, 16-bit scales per group), `fp8` and `fbgemm_fp8` (W8A8 fp8; float32 scales per
/// `weight_block_size` block, or per tensor or channel, which servesim counts as no bytes), and
/// `compressed-tensors` (its first config group: int or float weights of 4 or 8 bits, W8A8 where input
/// activations are quantized to 8 bits).
fn parse_quantization(q: &serde_json::Value, dtype_bytes: u64) -> Result<WeightQuant, String> {
    let method = q
        .get("quant_method")
        .and_then(|m| m.as_str())
        .ok_or(
            "quantization_config has no quant_method; name it (awq, gptq, fp8, compressed-tensors)",
        )?
        .to_ascii_lowercase();
    let num = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_i64());
    let group_scales = |bits: u64, group: Option<i64>, zero_point: bool| -> Result<f64, String> {
        match group.unwrap_or(128) {
            g if g > 0 => Ok((dtype_bytes as f64
                + if zero_point { bits as f64 / 8.0 } else { 0.0 })
                / g as f64),
            -1 => Ok(0.0),
            g => Err(format!(
                "group_size = {g} must be positive, or -1 for one group per channel"
            )),
        }
    };
    let bits_ok = |b: Option<i64>, default: i64| -> Result<u64, String> {
        match b.unwrap_or(default) {
            b @ (2 | 3 | 4 | 8) => Ok(b as u64),
            b => Err(format!(
                "{method} with {b}-bit weights is not modelled; use 2, 3, 4 or 8 bits"
            )),
        }
    };
    Ok(match method.as_str() {
        "awq" => {
            let bits = bits_ok(num(q.get("bits").or(q.get("w_bit"))), 4)?;
            if bits != 4 {
                return Err(format!(
                    "awq with {bits}-bit weights is not served by vLLM; AWQ is 4-bit"
                ));
            }
            let zp = q
                .get("zero_point")
                .and_then(|z| z.as_bool())
                .unwrap_or(true);
            WeightQuant {
                scale_bytes_per_weight: group_scales(
                    bits,
                    num(q.get("group_size").or(q.get("q_group_size"))),
                    zp,
                )?,
                method,
                bits,
                compute: QuantCompute::WeightOnly,
            }
        }
        "gptq" => {
            let bits = bits_ok(num(q.get("bits")), 4)?;
            // vLLM allocates the packed zero points whether or not the checkpoint is symmetric.
            WeightQuant {
                scale_bytes_per_weight: group_scales(bits, num(q.get("group_size")), true)?,
                method,
                bits,
                compute: QuantCompute::WeightOnly,
            }
        }
        "fp8" | "fbgemm_fp8" => {
            let scale = match q.get("weight_block_size").filter(|b| !b.is_null()) {
                Some(b) => 4.0 / block_elements(b, "weight_block_size")?,
                None => 0.0,
            };
            WeightQuant {
                method,
                bits: 8,
                scale_bytes_per_weight: scale,
                compute: QuantCompute::Fp8,
            }
        }
        "compressed-tensors" => {
            let group = q
                .get("config_groups")
                .and_then(|g| g.as_object())
                .and_then(|g| g.values().next())
                .ok_or("compressed-tensors quantization_config has no config_groups")?;
            let w = group
                .get("weights")
                .filter(|w| w.is_object())
                .ok_or("compressed-tensors config group has no weights entry")?;
            let bits = bits_ok(num(w.get("num_bits")), 8)?;
            let float = w.get("type").and_then(|t| t.as_str()) == Some("float");
            let sym = w.get("symmetric").and_then(|z| z.as_bool()).unwrap_or(true);
            let scale = match w
                .get("strategy")
                .and_then(|s| s.as_str())
                .unwrap_or("tensor")
            {
                "group" => group_scales(bits, num(w.get("group_size")), !sym)?,
                "block" => {
                    let b = w
                        .get("block_structure")
                        .ok_or("compressed-tensors block strategy needs block_structure")?;
                    dtype_bytes as f64 / block_elements(b, "block_structure")?
                }
                _ => 0.0,
            };
            let acts_8bit = group
                .get("input_activations")
                .and_then(|a| a.get("num_bits"))
                .and_then(|b| b.as_u64())
                == Some(8);
            WeightQuant {
                method,
                bits,
                scale_bytes_per_weight: scale,
                compute: match (acts_8bit && bits == 8, float) {
                    (true, true) => QuantCompute::Fp8,
                    (true, false) => QuantCompute::Int8,
                    _ => QuantCompute::WeightOnly,
                },
            }
        }
        other => {
            return Err(format!(
            "quant_method \"{}\" is not modelled; servesim models awq, gptq, fp8, fbgemm_fp8 and \
                 compressed-tensors checkpoints",
            crate::input::shorten(other, 40)
        ))
        }
    })
}

/// Catalog models, shipped as `config.json` files.
const MODELS: &[(&str, &str)] = &[
    (
        "llama-3.1-8b",
        include_str!("../../catalog/models/llama-3.1-8b.json"),
    ),
    (
        "llama-3.1-70b",
        include_str!("../../catalog/models/llama-3.1-70b.json"),
    ),
    (
        "llama-2-7b",
        include_str!("../../catalog/models/llama-2-7b.json"),
    ),
    (
        "qwen2.5-7b",
        include_str!("../../catalog/models/qwen2.5-7b.json"),
    ),
    (
        "qwen2.5-32b",
        include_str!("../../catalog/models/qwen2.5-32b.json"),
    ),
    (
        "qwen2.5-72b",
        include_str!("../../catalog/models/qwen2.5-72b.json"),
    ),
    (
        "mistral-7b",
        include_str!("../../catalog/models/mistral-7b.json"),
    ),
    (
        "codellama-34b",
        include_str!("../../catalog/models/codellama-34b.json"),
    ),
    (
        "mixtral-8x7b",
        include_str!("../../catalog/models/mixtral-8x7b.json"),
    ),
    (
        "qwen3-30b-a3b",
        include_str!("../../catalog/models/qwen3-30b-a3b.json"),
    ),
    (
        "deepseek-v3",
        include_str!("../../catalog/models/deepseek-v3.json"),
    ),
    (
        "gemma-2-9b",
        include_str!("../../catalog/models/gemma-2-9b.json"),
    ),
    (
        "llama-3.1-70b-awq",
        include_str!("../../catalog/models/llama-3.1-70b-awq.json"),
    ),
    (
        "llama-3.2-1b",
        include_str!("../../catalog/models/llama-3.2-1b.json"),
    ),
    ("tiny", include_str!("../../catalog/models/tiny.json")),
];

pub fn model_names() -> Vec<&'static str> {
    MODELS.iter().map(|(n, _)| *n).collect()
}

/// One accelerator's datasheet numbers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareSpec {
    #[serde(skip)]
    pub name: String,
    pub device_name: String,
    /// Dense bf16 peak, TFLOP/s.
    pub peak_bf16_tflops: f64,
    /// Memory bandwidth, GB/s (10^9 bytes).
    pub memory_bandwidth_gbps: f64,
    /// Total device memory as CUDA reports it, GiB.
    pub memory_gib: f64,
    /// Dense fp8 tensor peak, TFLOP/s, where the GPU has fp8 tensor cores (Hopper, Ada); W8A8 fp8 GEMMs
    /// run at it. Without it, fp8 weights are dequantized and multiplied in 16 bits, as vLLM's Marlin
    /// fallback does on Ampere.
    #[serde(default)]
    pub peak_fp8_tflops: Option<f64>,
    /// Dense int8 tensor peak, TOP/s; W8A8 int8 GEMMs run at it (weight-only without it).
    #[serde(default)]
    pub peak_int8_tops: Option<f64>,
    /// What one GPU costs per hour, for `capacity`'s costs (`hardware.price_per_hour` overrides it). The
    /// shipped catalog lists none: prices depend on the provider and the contract.
    #[serde(default)]
    pub price_per_hour: Option<f64>,
    /// GPU-host link bandwidth one way, GB/s, as pinned copies reach it: what offloaded KV loads from CPU
    /// memory over (`kv.offload.cpu_bandwidth_gbps` overrides it).
    #[serde(default)]
    pub host_link_gbps: Option<f64>,
}

const HARDWARE: &str = include_str!("../../catalog/hardware.toml");

fn hardware_catalog() -> BTreeMap<String, HardwareSpec> {
    toml::from_str(HARDWARE).expect("the shipped hardware catalog parses (tested)")
}

impl HardwareSpec {
    pub fn load(name: &str) -> Result<HardwareSpec, ConfigError> {
        Self::load_with(name, None)
    }

    /// Looks `name` up in the shipped catalog extended (or overridden) by the TOML file `extra`.
    pub fn load_with(name: &str, extra: Option<&str>) -> Result<HardwareSpec, ConfigError> {
        let mut cat = hardware_catalog();
        if let Some(path) = extra {
            let text =
                crate::input::read_text(crate::input::InputKind::HardwareCatalog, Path::new(path))?;
            let more: BTreeMap<String, HardwareSpec> =
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: path.to_string(),
                    message: e.to_string(),
                })?;
            for (k, h) in &more {
                for (field, v, max) in [
                    ("peak_bf16_tflops", h.peak_bf16_tflops, 1e6),
                    ("peak_fp8_tflops", h.peak_fp8_tflops.unwrap_or(1.0), 1e6),
                    ("peak_int8_tops", h.peak_int8_tops.unwrap_or(1.0), 1e6),
                    ("price_per_hour", h.price_per_hour.unwrap_or(1.0), 1e9),
                    ("memory_bandwidth_gbps", h.memory_bandwidth_gbps, 1e7),
                    ("memory_gib", h.memory_gib, 1e5),
                ] {
                    if !(v > 0.0 && v <= max) {
                        return Err(ConfigError::invalid(
                            format!("{path}: [{k}] {field}"),
                            format!(
                                "must be a positive number up to {max:e} (far beyond any accelerator), got {v}"
                            ),
                        ));
                    }
                }
            }
            cat.extend(more);
        }
        match cat.get(name) {
            Some(h) => Ok(HardwareSpec {
                name: name.to_string(),
                ..h.clone()
            }),
            None => Err(ConfigError::UnknownCatalogEntry {
                key: "hardware.name".into(),
                hint: "pick one of those, or describe your GPU in a TOML file (the format of \
                       catalog/hardware.toml) and name that file in hardware.catalog",
                name: name.into(),
                known: cat.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    pub fn memory_bytes(&self) -> f64 {
        self.memory_gib * GIB
    }

    /// vLLM's S8 rule: GPUs with at least 70 GiB that are not A100s get the large batch defaults.
    pub fn is_large_gpu(&self) -> bool {
        self.memory_gib >= 70.0 && !self.device_name.contains("A100")
    }
}

pub fn hardware_names() -> Vec<String> {
    hardware_catalog().into_keys().collect()
}

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Helpers for other modules' tests.
#[cfg(test)]
pub mod tests_support {
    /// The catalog model `name`'s config.json with `quantization_config` set to `q` (a JSON object).
    pub fn with_quant(name: &str, q: &str) -> String {
        let text = super::MODELS.iter().find(|(n, _)| *n == name).unwrap().1;
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["quantization_config"] = serde_json::from_str(q).unwrap();
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_entry_loads() {
        for n in model_names() {
            ModelShape::load(n).unwrap();
        }
        for n in hardware_names() {
            HardwareSpec::load(&n).unwrap();
        }
    }

    #[test]
    fn llama_3_2_1b_sizes() {
        let m = ModelShape::load("llama-3.2-1b").unwrap();
        // 2 (K,V) x 8 KV heads x 64 x 2 bytes x 16 layers = 32,768 B per token.
        assert_eq!(m.kv_bytes_per_token(), 32_768);
        // Published parameter count: 1.24 B (tied embeddings).
        let p = m.total_params() as f64 / 1e9;
        assert!((p - 1.24).abs() < 0.01, "{p}");
    }

    #[test]
    fn llama_3_1_8b_sizes() {
        let m = ModelShape::load("llama-3.1-8b").unwrap();
        // 2 (K,V) x 8 KV heads x 128 x 2 bytes x 32 layers = 131,072 B per token.
        assert_eq!(m.kv_bytes_per_token(), 131_072);
        // Published parameter count: 8.03 B.
        let p = m.total_params() as f64 / 1e9;
        assert!((p - 8.03).abs() < 0.01, "{p}");
    }

    #[test]
    fn tensor_parallel_splits_heads_and_weights() {
        let m = ModelShape::load("llama-3.1-70b").unwrap();
        let r = m.per_rank(4).unwrap();
        assert_eq!(
            (r.num_heads, r.num_kv_heads, r.intermediate_size),
            (16, 2, 7168)
        );
        // vLLM splits the vocabulary (embedding and LM head) as it splits the layers. Per rank, h = 8192:
        //  layer: 8192 x (16 x 128 + 2 x 2 x 128) + 2048 x 8192 + 3 x 8192 x 7168 + 2 x 8192
        //       = 20,971,520 + 16,777,216 + 176,160,768 + 16,384 = 213,925,888; x 80 = 17,114,071,040;
        //  embedding and LM head: 2 x 32,064 x 8192 = 525,336,576; final norm 8192;
        //  17,639,415,808 parameters x 2 B = 35,278,831,616 B (32.86 GiB; vLLM logs about 32.9 GiB
        //  loaded per GPU for this model at TP 4).
        assert_eq!(m.weight_bytes_per_rank(4).unwrap(), 35_278_831_616);
        assert!(m.per_rank(3).is_err());
    }

    /// Parameter counts and KV sizes of the catalog models against their published figures. Every
    /// expected count is derived here from the config's numbers, independently of the code's grouping.
    #[test]
    fn catalog_models_match_published_parameter_counts_and_kv_sizes() {
        let within = |got: u64, published_b: f64, tol: f64| {
            let g = got as f64 / 1e9;
            assert!(
                (g / published_b - 1.0).abs() <= tol,
                "{g:.3} B against the published {published_b} B"
            );
        };
        // Llama-3.1-70B: layer 8192 x (8192 + 2 x 1024) + 8192 x 8192 + 3 x 8192 x 28672 + 2 x 8192
        //  = 83,886,080 + 67,108,864 + 704,643,072 + 16,384 = 855,654,400; x 80 = 68,452,352,000;
        //  embedding and LM head 2 x 128,256 x 8192 = 2,101,346,304; final norm 8192: 70,553,706,496
        //  (published 70.6 B). KV: 2 x 8 x 128 x 2 B x 80 = 327,680 B per token.
        let m = ModelShape::load("llama-3.1-70b").unwrap();
        assert_eq!(m.total_params(), 70_553_706_496);
        within(m.total_params(), 70.6, 0.01);
        assert_eq!(m.kv_bytes_per_token(), 327_680);

        // Mixtral-8x7B: attention 4096 x (4096 + 2 x 1024) + 4096 x 4096 = 41,943,040; norms 8192;
        //  one expert 3 x 4096 x 14336 = 176,160,768; router 4096 x 8 = 32,768.
        //  Layer with 8 experts: 41,943,040 + 8192 + 1,409,286,144 + 32,768 = 1,451,270,144; x 32
        //  = 46,440,644,608; embedding and head 2 x 32,000 x 4096 = 262,144,000; final norm 4096:
        //  46,702,792,704 (published 46.7 B). Active, 2 experts: 394,305,536 x 32 + 262,148,096
        //  = 12,879,925,248 (published 12.9 B). KV: 2 x 8 x 128 x 2 B x 32 = 131,072 B per token.
        let m = ModelShape::load("mixtral-8x7b").unwrap();
        assert_eq!(m.total_params(), 46_702_792_704);
        assert_eq!(m.active_params(), 12_879_925_248);
        within(m.total_params(), 46.7, 0.01);
        within(m.active_params(), 12.9, 0.01);
        assert_eq!(m.kv_bytes_per_token(), 131_072);

        // Qwen3-30B-A3B: attention 2048 x (4096 + 2 x 512) + 4096 x 2048 = 18,874,368; norms 4096;
        //  one expert 3 x 2048 x 768 = 4,718,592, x 128 = 603,979,776; router 2048 x 128 = 262,144.
        //  Layer: 623,120,384; x 48 = 29,909,778,432; embedding and head 2 x 151,936 x 2048
        //  = 622,329,856; final norm 2048: 30,532,110,336 (published 30.5 B). Active, 8 experts:
        //  (18,874,368 + 4096 + 37,748,736 + 262,144) x 48 + 622,331,904 = 3,353,020,416. Qwen publishes
        //  "3.3B activated" with embeddings counted (their 29.9 B non-embedding total is 30.53 less both
        //  vocabulary matrices); 3.353 is 1.6% above the figure's two digits. KV: 2 x 4 x 128 x 2 B x 48
        //  = 98,304 B per token.
        let m = ModelShape::load("qwen3-30b-a3b").unwrap();
        assert_eq!(m.total_params(), 30_532_110_336);
        assert_eq!(m.active_params(), 3_353_020_416);
        within(m.total_params(), 30.5, 0.01);
        within(m.active_params(), 3.3, 0.02);
        assert_eq!(m.kv_bytes_per_token(), 98_304);

        // DeepSeek-V3 (MLA, 3 dense layers then 58 MoE layers of 256 routed + 1 shared expert):
        //  attention: q_a 7168 x 1536 = 11,010,048; q_b 1536 x 128 x 192 = 37,748,736; kv_a 7168 x 576
        //  = 4,128,768; kv_b 512 x 128 x 256 = 16,777,216; o 128 x 128 x 7168 = 117,440,512: 187,105,280;
        //  norms 2 x 7168 + 1536 + 512 = 16,384; x 61 layers = 11,414,421,504.
        //  dense MLP 3 x 7168 x 18432 = 396,361,728, x 3 = 1,189,085,184.
        //  expert 3 x 7168 x 2048 = 44,040,192; MoE layer: 257 x 44,040,192 + router 7168 x 256
        //  (1,835,008) = 11,320,164,352, x 58 = 656,569,532,416.
        //  embedding and head 2 x 129,280 x 7168 = 1,853,358,080; final norm 7168.
        //  Total 671,026,404,352 (published 671 B). Active: MoE layer 9 x 44,040,192 + 1,835,008
        //  = 398,196,736, x 58 = 23,095,410,688; total active 37,552,282,624: 1.5% above the published
        //  37 B, which DeepSeek counts without the input embedding (37.55 - 0.93 = 36.63, 1.0% below).
        //  KV (MLA latent 512 + rotary key 64, one copy for all heads): 576 x 2 B x 61 = 70,272 B per
        //  token; the same on every tensor-parallel rank.
        let m = ModelShape::load("deepseek-v3").unwrap();
        assert_eq!(m.total_params(), 671_026_404_352);
        assert_eq!(m.active_params(), 37_552_282_624);
        within(m.total_params(), 671.0, 0.01);
        within(m.active_params(), 37.0, 0.02);
        within(m.active_params() - 129_280 * 7168, 37.0, 0.02);
        assert_eq!(m.kv_bytes_per_token(), 70_272);
        assert_eq!(m.per_rank(8).unwrap().kv_bytes_per_token(), 70_272);
        assert_eq!(m.moe.unwrap().moe_layers, 58);
        // fp8 KV cache: one byte per element.
        let fp8 = m.clone().with_dtypes("auto", "fp8").unwrap();
        assert_eq!(fp8.kv_bytes_per_token(), 35_136);

        // Gemma-2-9B (tied embeddings): attention 3584 x (4096 + 2 x 2048) + 4096 x 3584 = 44,040,192;
        //  MLP 3 x 3584 x 14336 = 154,140,672; norms 7168: 198,188,032 x 42 = 8,323,897,344; embedding
        //  256,000 x 3584 = 917,504,000; final norm 3584: 9,241,404,928 (published 9.24 B). KV: 2 x 8 x
        //  256 x 2 B x 42 = 344,064 B per token; 21 of the 42 layers attend over a 4,096-token window.
        let m = ModelShape::load("gemma-2-9b").unwrap();
        assert_eq!(m.total_params(), 9_241_404_928);
        within(m.total_params(), 9.24, 0.01);
        assert_eq!(m.kv_bytes_per_token(), 344_064);
        assert_eq!(
            m.sliding_window,
            Some(SlidingWindow {
                window: 4096,
                layers: 21
            })
        );
        let m = ModelShape::load("mistral-7b").unwrap();
        assert_eq!(
            m.sliding_window.map(|w| (w.window, w.layers)),
            Some((4096, 32))
        );
    }

    #[test]
    fn quantized_weights_take_their_bytes_and_keep_the_rest_in_dtype() {
        // Llama-3.1-70B AWQ (4-bit, groups of 128 with an fp16 scale and a 4-bit zero each):
        //  0.5 + (2 + 0.5) / 128 = 0.51953125 B per layer weight; layers' linear weights
        //  80 x (83,886,080 + 67,108,864 + 704,643,072) = 68,451,041,280 -> 35,562,455,040 B;
        //  embeddings, head and norms 2,101,346,304 + 80 x 16,384 + 8192 = 2,102,665,216 x 2 B
        //  = 4,205,330,432 B. Total 39,767,785,472 B = 37.04 GiB.
        let m = ModelShape::load("llama-3.1-70b-awq").unwrap();
        let q = m.quant.clone().unwrap();
        assert_eq!((q.bits, q.compute), (4, QuantCompute::WeightOnly));
        assert_eq!(q.bytes_per_weight(), 0.51953125);
        assert_eq!(m.weight_bytes(), 39_767_785_472);
        // DeepSeek-V3's fp8 with float32 scales per 128 x 128 block: 1 + 4 / 16384 B per weight.
        let d = ModelShape::load("deepseek-v3").unwrap();
        let q = d.quant.clone().unwrap();
        assert_eq!((q.bits, q.compute), (8, QuantCompute::Fp8));
        assert_eq!(q.bytes_per_weight(), 1.0 + 4.0 / 16384.0);
        let parse = |q: &str| {
            let text = format!(
                r#"{{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 64,
                "quantization_config": {q}}}"#
            );
            ModelShape::from_hf_json("t", &text, "t.json").map(|m| m.quant.unwrap())
        };
        let w8a8 = parse(
            r#"{"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights":
            {"num_bits": 8, "type": "int", "strategy": "channel"}, "input_activations": {"num_bits": 8}}}}"#,
        )
        .unwrap();
        assert_eq!((w8a8.bits, w8a8.compute), (8, QuantCompute::Int8));
        let gptq =
            parse(r#"{"quant_method": "gptq", "bits": 8, "group_size": 64, "sym": true}"#).unwrap();
        // 1 B + a 2-byte scale and an 8-bit zero point per 64 weights (vLLM allocates the zero points of
        // symmetric checkpoints too).
        assert_eq!(gptq.bytes_per_weight(), 1.0 + 3.0 / 64.0);
        let e = parse(r#"{"quant_method": "bitsandbytes"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.json") && e.contains("bitsandbytes") && e.contains("awq"),
            "{e}"
        );
    }

    #[test]
    fn moe_and_sliding_layers_are_placed_as_the_architectures_place_them() {
        let cfg = |extra: &str| {
            let text = format!(
                r#"{{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 12,
                "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 8192 {extra}}}"#
            );
            ModelShape::from_hf_json("t", &text, "t.json")
        };
        // DeepSeek: MoE from layer first_k_dense_replace on, every moe_layer_freq-th: layers 2, 4, .., 10.
        let m = cfg(
            r#", "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "first_k_dense_replace": 2, "moe_layer_freq": 2"#,
        )
        .unwrap();
        assert_eq!(m.moe.unwrap().moe_layers, 5);
        // Qwen-MoE: (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers: 1, 3, 5, 7, 11.
        let m = cfg(
            r#", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "decoder_sparse_step": 2, "mlp_only_layers": [9]"#,
        )
        .unwrap();
        assert_eq!(m.moe.unwrap().moe_layers, 5);
        // Gemma-3: all but every sixth layer slide (10 of 12); Qwen2 only with use_sliding_window.
        let m = cfg(
            r#", "model_type": "gemma3_text", "sliding_window": 1024, "sliding_window_pattern": 6"#,
        )
        .unwrap();
        assert_eq!(m.sliding_window.unwrap().layers, 10);
        let m = cfg(r#", "model_type": "qwen2", "sliding_window": 1024, "max_window_layers": 4"#)
            .unwrap();
        assert_eq!(m.sliding_window, None);
        let m = cfg(
            r#", "model_type": "qwen2", "sliding_window": 1024, "use_sliding_window": true,
            "max_window_layers": 4"#,
        )
        .unwrap();
        assert_eq!(m.sliding_window.unwrap().layers, 8);
        // A window as long as the context limits nothing.
        assert_eq!(
            cfg(r#", "sliding_window": 8192"#).unwrap().sliding_window,
            None
        );
        // Bad input names the field.
        let e = cfg(r#", "num_experts": 8"#).unwrap_err().to_string();
        assert!(e.contains("num_experts_per_tok"), "{e}");
        let e = cfg(r#", "num_experts": 8, "num_experts_per_tok": 9, "moe_intermediate_size": 32"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds"), "{e}");
        let e = cfg(r#", "kv_lora_rank": 64"#).unwrap_err().to_string();
        assert!(e.contains("qk_nope_head_dim"), "{e}");
        let e = cfg(r#", "sliding_window": "big""#).unwrap_err().to_string();
        assert!(e.contains("sliding_window"), "{e}");
        // Architectures it does not model are refused, naming the key.
        for (extra, key) in [
            (
                r#", "interleave_moe_layer_step": 2"#,
                "interleave_moe_layer_step",
            ),
            (
                r#", "layer_types": ["linear_attention"]"#,
                "linear_attention",
            ),
            (r#", "index_topk": 2048"#, "index_topk"),
        ] {
            let e = cfg(extra).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("t.json"), "{e}");
        }
        // Odd sizes are errors, not panics or silent prices.
        let e = cfg(
            r#", "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "n_shared_experts": 9007199254740992"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shared experts"), "{e}");
        for block in ["[]", "[0, 128]", "[4294967296, 4294967296]"] {
            let e = cfg(&format!(
                r#", "quantization_config": {{"quant_method": "fp8", "weight_block_size": {block}}}"#
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("weight_block_size"), "{e}");
        }
    }

    #[test]
    fn mixture_of_experts_splits_each_expert_across_tensor_parallel_ranks() {
        let m = ModelShape::load("mixtral-8x7b").unwrap();
        let r = m.per_rank(2).unwrap();
        let e = r.moe.unwrap();
        assert_eq!((e.num_experts, e.expert_intermediate_size), (8, 7168));
        let d = ModelShape::load("deepseek-v3").unwrap();
        assert!(d.per_rank(8).is_ok());
        let e = d.per_rank(3).unwrap_err().to_string();
        assert!(e.contains("tensor_parallel"), "{e}");
    }

    #[test]
    fn large_gpu_rule() {
        assert!(HardwareSpec::load("h100-sxm").unwrap().is_large_gpu());
        assert!(!HardwareSpec::load("a100-80gb").unwrap().is_large_gpu());
        assert!(!HardwareSpec::load("l40s").unwrap().is_large_gpu());
    }

    #[test]
    fn unknown_names_list_the_catalog() {
        let e = ModelShape::load("gpt-17").unwrap_err().to_string();
        assert!(
            e.contains("llama-3.1-8b") && e.contains("model.name"),
            "{e}"
        );
    }
}
