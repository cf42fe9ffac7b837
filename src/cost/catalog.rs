//! Model shapes (from Hugging Face `config.json` files) and hardware specs, with the catalogs that ship.

use crate::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The shape of a decoder-only transformer: everything the cost and memory models need.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub name: String,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub head_dim: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub tie_word_embeddings: bool,
    pub dtype_bytes: u64,
}

#[derive(Deserialize)]
struct HfConfig {
    hidden_size: u64,
    intermediate_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    vocab_size: u64,
    max_position_embeddings: u64,
    #[serde(default)]
    tie_word_embeddings: bool,
    torch_dtype: Option<String>,
    /// Newer Hugging Face configs name the dtype `dtype`.
    dtype: Option<String>,
    // Fields that change the answer and that servesim does not model yet: a config holding one is refused
    // rather than priced as a dense, full-attention, unquantized model.
    num_local_experts: Option<serde_json::Value>,
    num_experts: Option<serde_json::Value>,
    n_routed_experts: Option<serde_json::Value>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    quantization_config: Option<serde_json::Value>,
}

/// Largest accepted dimensions of a model shape. The biggest published dense models are far inside them
/// (126 layers, hidden 16,384, MLP 53,248, 128 heads, vocabularies of 262k), and within them every size
/// product servesim forms fits in 64 bits.
const SHAPE_LIMITS: &[(&str, u64)] = &[
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1 << 10),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("vocab_size", 1 << 23),
    ("max_position_embeddings", u32::MAX as u64),
];

impl ModelShape {
    /// Parses a Hugging Face `config.json`. `origin` names the file in errors.
    pub fn from_hf_json(name: &str, text: &str, origin: &str) -> Result<ModelShape, ConfigError> {
        let c: HfConfig = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: format!(
                "not a usable Hugging Face config.json ({e}); it needs hidden_size, intermediate_size, \
                 num_hidden_layers, num_attention_heads, vocab_size, max_position_embeddings"
            ),
        })?;
        let refuse = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        for (field, v) in [
            ("num_local_experts", &c.num_local_experts),
            ("num_experts", &c.num_experts),
            ("n_routed_experts", &c.n_routed_experts),
        ] {
            if let Some(v) = v
                .as_ref()
                .filter(|v| !(v.is_null() || v.as_u64().is_some_and(|n| n <= 1)))
            {
                return Err(refuse(format!(
                    "{field} = {} makes this a mixture-of-experts model, which servesim does not model yet \
                     (it would be priced and sized as a dense model); use a dense model's config",
                    crate::input::shorten(&v.to_string(), 40)
                )));
            }
        }
        if let Some(w) = c.sliding_window.as_ref().filter(|w| !w.is_null()) {
            let window_short = w.as_u64().is_none_or(|w| w < c.max_position_embeddings);
            if c.use_sliding_window != Some(false) && window_short {
                return Err(refuse(format!(
                    "sliding_window = {} limits attention to a window, which servesim does not model yet \
                     (it would keep and read the whole context); use a full-attention model's config, or \
                     set sliding_window to null if the engine serves it with full attention",
                    crate::input::shorten(&w.to_string(), 40)
                )));
            }
        }
        if let Some(q) = &c.quantization_config {
            return Err(refuse(format!(
                "quantization_config ({}) makes this a quantized model, which servesim does not model yet \
                 (it would be priced with 16-bit weights); use an unquantized config",
                crate::input::shorten(&q.to_string(), 60)
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
        let dtype_bytes = match dtype {
            "bfloat16" | "float16" => 2,
            "float32" => 4,
            other => {
                return Err(refuse(format!(
                    "dtype \"{}\" is not supported; use bfloat16, float16 or float32 (quantized models are \
                     not modelled yet)",
                    crate::input::shorten(other, 40)
                )))
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
        ] {
            let max = SHAPE_LIMITS
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(u64::MAX, |l| l.1);
            if let Some(v) = v {
                if v == 0 || v > max {
                    return Err(refuse(format!(
                        "{field} = {v} is out of range: it must be between 1 and {max}"
                    )));
                }
            }
        }
        let heads = c.num_attention_heads;
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / heads);
        if head_dim == 0 {
            return Err(refuse(format!(
                "hidden_size / num_attention_heads = {} / {heads} rounds to a head_dim of 0; set head_dim",
                c.hidden_size
            )));
        }
        let kv = c.num_key_value_heads.unwrap_or(heads);
        if kv == 0 || heads % kv != 0 {
            return Err(ConfigError::Parse {
                origin: origin.to_string(),
                message: format!(
                    "num_key_value_heads ({kv}) must divide num_attention_heads ({heads})"
                ),
            });
        }
        Ok(ModelShape {
            name: name.to_string(),
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
            dtype_bytes,
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

    /// The shape one GPU holds under `tp`-way tensor parallelism: attention heads, KV heads, the MLP's
    /// intermediate size and the vocabulary (LM head) split `tp` ways; KV heads are replicated when there
    /// are fewer than `tp`. Norms and the residual stream stay whole.
    pub fn per_rank(&self, tp: u32) -> Result<ModelShape, ConfigError> {
        let tp = tp as u64;
        if tp == 1 {
            return Ok(self.clone());
        }
        if self.num_heads % tp != 0 || self.intermediate_size % tp != 0 {
            return Err(ConfigError::invalid(
                "hardware.tensor_parallel",
                format!(
                    "{tp} does not divide the model's {} attention heads and {} MLP width; use a divisor",
                    self.num_heads, self.intermediate_size
                ),
            ));
        }
        Ok(ModelShape {
            num_heads: self.num_heads / tp,
            num_kv_heads: (self.num_kv_heads / tp).max(1),
            intermediate_size: self.intermediate_size / tp,
            vocab_size: self.vocab_size.div_ceil(tp),
            ..self.clone()
        })
    }

    /// Weight bytes one GPU holds under `tp`-way tensor parallelism (embeddings and norms replicated).
    pub fn weight_bytes_per_rank(&self, tp: u32) -> Result<u64, ConfigError> {
        let r = self.per_rank(tp)?;
        let layer = r.layer_params();
        let emb = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings {
            0
        } else {
            r.vocab_size * self.hidden_size
        };
        Ok((emb + self.num_layers * layer + self.hidden_size + head) * self.dtype_bytes)
    }

    /// Query width of the attention (heads x head_dim).
    pub fn q_dim(&self) -> u64 {
        self.num_heads * self.head_dim
    }

    /// Width of K (or V): KV heads x head_dim.
    pub fn kv_dim(&self) -> u64 {
        self.num_kv_heads * self.head_dim
    }

    /// Weight elements of one decoder layer: QKV and O projections, a gated MLP (gate, up, down), two norms.
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size;
        let attn = h * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * h;
        let mlp = 3 * h * self.intermediate_size;
        attn + mlp + 2 * h
    }

    /// All weight elements: embeddings, layers, final norm, and the LM head unless tied.
    pub fn total_params(&self) -> u64 {
        let emb = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + self.num_layers * self.layer_params() + self.hidden_size + head
    }

    pub fn weight_bytes(&self) -> u64 {
        self.total_params() * self.dtype_bytes
    }

    /// KV-cache bytes per token over all layers: 2 (K and V) x KV heads x head_dim x dtype x layers.
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.kv_dim() * self.dtype_bytes * self.num_layers
    }
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
        // 70.6 B parameters in bf16: about 141 GB whole; each of 4 ranks holds a quarter of the layers'
        // weights and the LM head plus the whole embedding: (1.05 + 69.5/4 + 1.05/4) B x 2 B = 37.3 GB.
        let per = m.weight_bytes_per_rank(4).unwrap() as f64 / 1e9;
        assert!((per - 37.3).abs() < 0.5, "{per}");
        assert!(m.per_rank(3).is_err());
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
