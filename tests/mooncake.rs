//! Replaying the real Mooncake conversation trace: with a KV cache too large to evict, the engine's token hit
//! rate equals an independent count of the trace's reusable 16-token blocks; with a real H100's memory it
//! is lower and the cache evicts.

use crate::common::*;
use std::collections::HashSet;

const TRACE: &str = "data/traces/mooncake/conversation_trace.jsonl";

/// The oracle, from the trace format alone: each hash id covers 512 tokens, i.e. 32 blocks of 16; block b
/// of a request is identified by (the hash ids up to and including its 512-token block, b mod 32). A request
/// hits the longest run of leading blocks some earlier request had (vLLM's lookup stops at the first miss),
/// capped at floor((input - 1) / 16) blocks; queried tokens are its input length.
fn oracle() -> (u64, u64, usize) {
    let text = std::fs::read_to_string(TRACE).expect("the shared Mooncake trace");
    let mut seen: HashSet<(Vec<u64>, usize)> = HashSet::new();
    let (mut queries, mut hits, mut n) = (0u64, 0u64, 0usize);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let len = v["input_length"].as_u64().unwrap() as usize;
        let ids: Vec<u64> = v["hash_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let keys: Vec<(Vec<u64>, usize)> = (0..len / 16)
            .map(|b| (ids[..b * 16 / 512 + 1].to_vec(), b % 32))
            .collect();
        let cap = (len - 1) / 16;
        let h = keys
            .iter()
            .take(cap)
            .take_while(|k| seen.contains(*k))
            .count();
        queries += len as u64;
        hits += 16 * h as u64;
        seen.extend(keys);
        n += 1;
    }
    (queries, hits, n)
}

fn trace_config(extra: &[&str]) -> servesim::config::Config {
    let text = format!(
        "name = \"mooncake\"\n[workload]\nkind = \"trace\"\ntrace = {{ format = \"mooncake\", path = \"{TRACE}\" }}\n"
    );
    config(&text, extra)
}

#[test]
fn infinite_cache_hit_rate_equals_the_trace_oracle_and_realistic_memory_is_lower() {
    let (queries, hits, n) = oracle();
    assert_eq!(n, 12_031);
    let tmp = tempfile::tempdir().unwrap();
    // Big enough that nothing is evicted (the trace allocates about 5.93M blocks in all), and a budget that
    // computes any prompt in one step so every earlier block is registered before a later lookup.
    let (big, _) = run_in(
        tmp.path(),
        "big",
        &trace_config(&[
            "engine.num_gpu_blocks=6000000",
            "engine.max_num_batched_tokens=200000",
            "engine.max_num_seqs=100000",
            "cost.kind=\"linear\"",
        ]),
    );
    let s = &big.summary;
    assert_eq!(s.get_f64("requests_finished"), Some(n as f64));
    assert_eq!(s.get_f64("kv_cache_evictions"), Some(0.0));
    assert_eq!(s.get_f64("num_preemptions"), Some(0.0));
    assert_eq!(s.get_f64("prefix_cache_queries"), Some(queries as f64));
    assert_eq!(s.get_f64("prefix_cache_hits"), Some(hits as f64));
    let oracle_rate = hits as f64 / queries as f64;
    assert!((oracle_rate - 0.3736).abs() < 0.001, "{oracle_rate}");

    // One H100's KV cache (27,973 blocks): the cache evicts and the hit rate drops.
    let (real, _) = run_in(tmp.path(), "h100", &trace_config(&[]));
    let r = &real.summary;
    assert!(r.get_f64("kv_cache_evictions").unwrap() > 0.0);
    assert!(r.get_f64("prefix_cache_hit_rate").unwrap() < oracle_rate);
    assert!(r.get_f64("prompt_tokens_cached").unwrap() < hits as f64);
}
