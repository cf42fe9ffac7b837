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
}

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
        let dtype_bytes = match c.torch_dtype.as_deref().unwrap_or("bfloat16") {
            "bfloat16" | "float16" => 2,
            "float32" => 4,
            "float8" | "float8_e4m3fn" | "int8" => 1,
            other => {
                return Err(ConfigError::Parse {
                    origin: origin.to_string(),
                    message: format!(
                        "torch_dtype \"{other}\" is not supported; use bfloat16, float16, float32 or float8"
                    ),
                })
            }
        };
        let heads = c.num_attention_heads;
        let bad = |field: &str| ConfigError::Parse {
            origin: origin.to_string(),
            message: format!("{field} must be positive"),
        };
        if heads == 0 {
            return Err(bad("num_attention_heads"));
        }
        if c.hidden_size == 0 || c.num_hidden_layers == 0 || c.vocab_size == 0 {
            return Err(bad("hidden_size, num_hidden_layers and vocab_size"));
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
            head_dim: c.head_dim.unwrap_or(c.hidden_size / heads),
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
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            return ModelShape::from_hf_json(name, &text, name);
        }
        Err(ConfigError::UnknownCatalogEntry {
            key: "model.name".into(),
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
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?;
            let more: BTreeMap<String, HardwareSpec> =
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: path.to_string(),
                    message: e.to_string(),
                })?;
            for (k, h) in &more {
                if !(h.peak_bf16_tflops > 0.0
                    && h.memory_bandwidth_gbps > 0.0
                    && h.memory_gib > 0.0)
                {
                    return Err(ConfigError::invalid(
                        format!("{path}: [{k}]"),
                        "peak_bf16_tflops, memory_bandwidth_gbps and memory_gib must be positive",
                    ));
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
