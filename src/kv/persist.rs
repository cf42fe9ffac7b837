//! Cache files: every replica's KV cache content, saved at the end of a run (`servesim run --save-cache
//! FILE`) and loaded at the start of another (`kv.warm_start`, `--warm-start FILE`).
//!
//! The format, version 1, is one JSON object:
//!
//! ```json
//! {"format": "servesim-kv-cache", "version": 1, "hash_scheme": 1, "model": "llama-3.1-8b",
//!  "block_size": 16, "prefix_cache_scope": "global", "offload_unit_tokens": 16,
//!  "replicas": [{"gpu": [h, ...], "cpu": [h, ...], "disk": [h, ...]}, ...],
//!  "checksum": "crc32:89abcdef"}
//! ```
//!
//! - `hash_scheme` is the block-hash scheme (`workload::content::HASH_SCHEME`): hashes of another scheme
//!   never match, so such a file is refused rather than silently missing;
//! - `model`, `block_size` and `prefix_cache_scope` must be the run's (the hashes depend on the last
//!   two: tokens per block and the cache salt); `offload_unit_tokens` is the tiers' unit (GPU block
//!   size under vLLM's native offload, the chunk size under LMCache; null without tiers) and must match
//!   when both the file and the run have tiers;
//! - `replicas` lists each replica slot of the run that wrote it, in slot order; a run that loads it must
//!   have the same number of slots;
//! - each list holds block hashes (GPU: the prefix cache's free cached blocks) or unit keys (a unit's
//!   last block hash), in eviction order, least recent first; nothing references them (saved once the
//!   run has released every request);
//! - `checksum` is the CRC-32 (IEEE) of the object without its `checksum` key, written as compact JSON
//!   in this key order.
//!
//! A warm start puts each list back in the same order (the most recent entries that fit when a tier or
//! the GPU pool is smaller), so saving right after a warm start writes the same file.

use super::tier::CacheSnapshot;
use crate::config::Config;
use crate::error::{ConfigError, OutputError};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The `format` field.
pub const FORMAT: &str = "servesim-kv-cache";
/// The format version this build writes and reads.
pub const VERSION: u64 = 1;

/// What a cache file must agree on with the run that loads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub model: String,
    pub block_size: u32,
    pub prefix_cache_scope: String,
    /// Tokens per offloaded unit; None without tiers.
    pub offload_unit_tokens: Option<u32>,
}

impl Header {
    /// The header of a run of `cfg` (its tiers' unit from the resolved `unit_tokens`).
    pub fn of(cfg: &Config, offload_unit_tokens: Option<u32>) -> Header {
        Header {
            model: cfg.model.name.clone(),
            block_size: cfg.engine.block_size,
            prefix_cache_scope: crate::config::config_name(cfg.engine.prefix_cache_scope),
            offload_unit_tokens,
        }
    }
}

fn body(header: &Header, replicas: &[CacheSnapshot]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("format".into(), json!(FORMAT));
    m.insert("version".into(), json!(VERSION));
    m.insert(
        "hash_scheme".into(),
        json!(crate::workload::content::HASH_SCHEME),
    );
    m.insert("model".into(), json!(header.model));
    m.insert("block_size".into(), json!(header.block_size));
    m.insert(
        "prefix_cache_scope".into(),
        json!(header.prefix_cache_scope),
    );
    m.insert(
        "offload_unit_tokens".into(),
        json!(header.offload_unit_tokens),
    );
    let reps: Vec<Value> = replicas
        .iter()
        .map(|s| json!({"gpu": s.gpu, "cpu": s.tiers[0], "disk": s.tiers[1]}))
        .collect();
    m.insert("replicas".into(), Value::Array(reps));
    m
}

fn checksum(body: &Map<String, Value>) -> String {
    let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
    format!("crc32:{:08x}", crc32fast::hash(&bytes))
}

/// The file's text: the body and its checksum.
pub fn to_text(header: &Header, replicas: &[CacheSnapshot]) -> String {
    let mut m = body(header, replicas);
    let sum = checksum(&m);
    m.insert("checksum".into(), json!(sum));
    let mut s = serde_json::to_string(&Value::Object(m)).expect("a JSON value serialises");
    s.push('\n');
    s
}

/// Writes a cache file.
pub fn write(path: &Path, header: &Header, replicas: &[CacheSnapshot]) -> Result<(), OutputError> {
    std::fs::write(path, to_text(header, replicas)).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a cache file for a run with header `want` and `slots` replica slots: each slot's snapshot.
/// Errors (exit 2) name the file and say what differs: unreadable, not JSON, another format or version,
/// a checksum that does not match (a corrupted or edited file), another hash scheme, model, block size,
/// cache scope, tier unit or replica count.
pub fn read(path: &Path, want: &Header, slots: u32) -> Result<Vec<CacheSnapshot>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what: "cache file",
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, want, slots)
        .map_err(|message| ConfigError::invalid(format!("cache file {}", path.display()), message))
}

/// [`read`] on the file's text; the error is the message.
pub fn parse(text: &str, want: &Header, slots: u32) -> Result<Vec<CacheSnapshot>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        format!("not a servesim cache file (invalid JSON at line {}, column {}: {e}); write one with `servesim run --save-cache FILE`", e.line(), e.column())
    })?;
    let Value::Object(mut m) = v else {
        return Err("not a servesim cache file (not a JSON object)".into());
    };
    if m.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(format!(
            "not a servesim cache file (field format is not \"{FORMAT}\"); write one with `servesim run --save-cache FILE`"
        ));
    }
    let version = m.get("version").and_then(Value::as_u64);
    if version != Some(VERSION) {
        return Err(format!(
            "field version is {}, and this servesim reads version {VERSION}; save the cache again with this servesim",
            m.get("version").map_or("missing".into(), |v| v.to_string())
        ));
    }
    let Some(Value::String(sum)) = m.shift_remove("checksum") else {
        return Err(
            "field checksum is missing; the file is truncated or was not written by servesim"
                .into(),
        );
    };
    let actual = checksum(&m);
    if sum != actual {
        return Err(format!(
            "field checksum is {sum} but the content's is {actual}: the file is corrupted or was edited; save it again"
        ));
    }
    let field_u64 = |k: &str| m.get(k).and_then(Value::as_u64);
    let scheme = field_u64("hash_scheme");
    if scheme != Some(crate::workload::content::HASH_SCHEME as u64) {
        return Err(format!(
            "field hash_scheme is {}, and this servesim hashes blocks with scheme {}: its hashes would never match; save the cache again with this servesim",
            scheme.map_or("missing".into(), |s| s.to_string()),
            crate::workload::content::HASH_SCHEME
        ));
    }
    let model = m.get("model").and_then(Value::as_str).unwrap_or_default();
    if model != want.model {
        return Err(format!(
            "field model is \"{model}\" and the run's model.name is \"{}\"; a cache holds one model's KV: warm-start a run of the same model",
            want.model
        ));
    }
    let bs = field_u64("block_size");
    if bs != Some(want.block_size as u64) {
        return Err(format!(
            "field block_size is {} and the run's engine.block_size is {}; block hashes depend on it: use the same block size",
            bs.map_or("missing".into(), |b| b.to_string()),
            want.block_size
        ));
    }
    let scope = m
        .get("prefix_cache_scope")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if scope != want.prefix_cache_scope {
        return Err(format!(
            "field prefix_cache_scope is \"{scope}\" and the run's engine.prefix_cache_scope is \"{}\"; the cache salt differs: use the same scope",
            want.prefix_cache_scope
        ));
    }
    let unit = field_u64("offload_unit_tokens");
    if let (Some(u), Some(w)) = (unit, want.offload_unit_tokens) {
        if u != w as u64 {
            return Err(format!(
                "field offload_unit_tokens is {u} and the run's offload tiers keep {w}-token units (kv.offload.backend, chunk_tokens): use the same offload backend and chunk size"
            ));
        }
    }
    let reps = m
        .get("replicas")
        .and_then(Value::as_array)
        .ok_or("field replicas is missing or not a list")?;
    if reps.len() != slots as usize {
        return Err(format!(
            "field replicas lists {} replica(s) and the run has {slots} replica slot(s) (cluster.replicas plus add_replica events); warm-start a run with as many",
            reps.len()
        ));
    }
    let list = |r: &Value, i: usize, k: &str| -> Result<Vec<u64>, String> {
        match r.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .ok_or_else(|| format!("replicas[{i}].{k}: {x} is not a block hash (an integer from 0 to 2^64-1)"))
                })
                .collect(),
            Some(x) => Err(format!("replicas[{i}].{k} is {x}, not a list of block hashes")),
        }
    };
    reps.iter()
        .enumerate()
        .map(|(i, r)| {
            if !r.is_object() {
                return Err(format!(
                    "replicas[{i}] is {r}, not an object with gpu, cpu and disk lists"
                ));
            }
            let gpu = list(r, i, "gpu")?;
            let mut seen = crate::fasthash::FastSet::default();
            if let Some(h) = gpu.iter().find(|h| !seen.insert(**h)) {
                return Err(format!("replicas[{i}].gpu lists hash {h} twice"));
            }
            Ok(CacheSnapshot {
                gpu,
                tiers: [list(r, i, "cpu")?, list(r, i, "disk")?],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            model: "llama-3.1-8b".into(),
            block_size: 16,
            prefix_cache_scope: "global".into(),
            offload_unit_tokens: Some(16),
        }
    }

    fn snaps() -> Vec<CacheSnapshot> {
        vec![CacheSnapshot {
            gpu: vec![1, 2, u64::MAX],
            tiers: [vec![5, 6], vec![]],
        }]
    }

    #[test]
    fn a_file_reads_back_as_written_and_refuses_every_mismatch() {
        let text = to_text(&header(), &snaps());
        assert_eq!(parse(&text, &header(), 1).unwrap(), snaps());
        // One digit changed in a hash: the checksum no longer matches.
        let bad = text.replacen("[1,2,", "[1,3,", 1);
        assert_ne!(bad, text);
        assert!(parse(&bad, &header(), 1).unwrap_err().contains("checksum"));
        assert!(parse(&text[..text.len() / 2], &header(), 1)
            .unwrap_err()
            .contains("invalid JSON"));
        let mut h = header();
        h.block_size = 32;
        assert!(parse(&text, &h, 1).unwrap_err().contains("block_size"));
        let mut h = header();
        h.model = "qwen".into();
        assert!(parse(&text, &h, 1).unwrap_err().contains("model"));
        let mut h = header();
        h.prefix_cache_scope = "session".into();
        assert!(parse(&text, &h, 1).unwrap_err().contains("scope"));
        let mut h = header();
        h.offload_unit_tokens = Some(256);
        assert!(parse(&text, &h, 1)
            .unwrap_err()
            .contains("offload_unit_tokens"));
        let mut h = header();
        h.offload_unit_tokens = None;
        assert!(
            parse(&text, &h, 1).is_ok(),
            "a run without tiers ignores them"
        );
        assert!(parse(&text, &header(), 2).unwrap_err().contains("replica"));
        // Another hash scheme, with a checksum that matches: refused for the scheme.
        let mut m = body(&header(), &snaps());
        m.insert("hash_scheme".into(), json!(0));
        let sum = checksum(&m);
        m.insert("checksum".into(), json!(sum));
        let other = serde_json::to_string(&Value::Object(m)).unwrap();
        assert!(parse(&other, &header(), 1)
            .unwrap_err()
            .contains("hash_scheme"));
    }
}
