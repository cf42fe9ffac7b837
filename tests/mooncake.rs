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
    let (queries, hits, _, n) = oracles();
    (queries, hits, n)
}

/// [`oracle`], and the hits an unbounded CPU tier behind the GPU allows under vLLM's native offload
/// (O3): the CPU serves every full block seen before (it has all of them: write-through), after the GPU
/// hit, up to floor(input / 16) blocks, not the GPU's floor((input - 1) / 16); a request whose whole
/// prompt (a multiple of 16) was seen then recomputes one token, not a block: 15 tokens more than the
/// GPU alone allows.
fn oracles() -> (u64, u64, u64, usize) {
    let mut seen: HashSet<(Vec<u64>, usize)> = HashSet::new();
    let (mut queries, mut hits, mut cpu_hits, mut n) = (0u64, 0u64, 0u64, 0usize);
    for (len, ids) in records(usize::MAX) {
        let len = len as usize;
        let keys: Vec<(Vec<u64>, usize)> = (0..len / 16)
            .map(|b| (ids[..b * 16 / 512 + 1].to_vec(), b % 32))
            .collect();
        let cap = (len - 1) / 16;
        let run = keys.iter().take_while(|k| seen.contains(*k)).count();
        queries += len as u64;
        hits += 16 * run.min(cap) as u64;
        let whole = len.is_multiple_of(16) && run == len / 16;
        cpu_hits += 16 * run as u64 - whole as u64;
        seen.extend(keys);
        n += 1;
    }
    (queries, hits, cpu_hits, n)
}

/// The trace's first `limit` records as (input_length, hash_ids), read with serde_json, not servesim.
fn records(limit: usize) -> Vec<(u64, Vec<u64>)> {
    let text = std::fs::read_to_string(TRACE).expect("the Mooncake trace");
    text.lines()
        .take(limit)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["hash_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            (v["input_length"].as_u64().unwrap(), ids)
        })
        .collect()
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

/// Offload on the Mooncake trace with one H100's GPU memory (27,973 blocks) and vLLM's native CPU tier:
/// the tokens served from cache rise with the CPU tier's size and reach, with a tier that never evicts,
/// exactly the bound `oracles` derives, the GPU-only reuse (37.36%) plus 15 tokens for each whole-prompt
/// repeat whose length is a multiple of 16.
#[test]
fn offload_hits_rise_with_the_cpu_tier_up_to_what_the_lookup_rule_allows() {
    let (queries, gpu_bound, cpu_bound, _) = oracles();
    assert!(
        cpu_bound >= gpu_bound && cpu_bound - gpu_bound < 16 * 16,
        "{cpu_bound} {gpu_bound}"
    );
    let tmp = tempfile::tempdir().unwrap();
    // The oracle test's budget (every prompt computed in one step, so every block is registered before
    // a later lookup); the linear cost, fast to run.
    let base = [
        "engine.num_gpu_blocks=27973",
        "engine.max_num_batched_tokens=200000",
        "engine.max_num_seqs=100000",
        "cost.kind=\"linear\"",
    ];
    let mut cached = Vec::new();
    for cpu in [None, Some("512"), Some("1000000")] {
        let mut extra = base.to_vec();
        let set = cpu.map(|g| format!("kv.offload.cpu_gib={g}"));
        extra.extend(set.as_deref());
        let (run, _) = run_in(tmp.path(), cpu.unwrap_or("none"), &trace_config(&extra));
        let s = &run.summary;
        assert_eq!(s.get_f64("prefix_cache_queries"), Some(queries as f64));
        cached.push(s.get_f64("prompt_tokens_cached").unwrap() as u64);
    }
    assert!(cached.windows(2).all(|w| w[0] < w[1]), "{cached:?}");
    assert!(cached[0] < gpu_bound);
    assert_eq!(
        cached[2], cpu_bound,
        "an unbounded CPU tier reaches the bound"
    );
    let rate = cached[2] as f64 / queries as f64;
    assert!((rate - 0.3736).abs() < 0.001, "{rate}");
}

/// SGLang's token-granular oracle, from the trace format alone: a request's prompt is its hash ids'
/// segments in order, each id 512 tokens of its own content (the last holds the remainder), so two
/// prompts share a token exactly where they agree on every id before it and on its own id and offset.
/// A request hits its longest common token prefix with any earlier request's prompt (outputs are
/// unique content, never shared), capped at input - 1 (SGLang matches all but the last token): walk
/// its ids, adding at id j the longest segment j any earlier prompt with the same ids up to j had,
/// going on only while both are whole 512-token segments. Returns (queried, hit) tokens over the first
/// `limit` requests.
fn token_oracle(limit: usize) -> (u64, u64) {
    // (ids up to and including j) -> the longest segment j seen under them.
    let mut longest: std::collections::HashMap<Vec<u64>, u64> = Default::default();
    let (mut queries, mut hits) = (0u64, 0u64);
    for (len, ids) in records(limit) {
        let seg = |j: usize| (len - 512 * j as u64).min(512);
        let mut hit = 0u64;
        for j in 0..ids.len() {
            let Some(&seen) = longest.get(&ids[..=j]) else {
                break;
            };
            hit += seg(j).min(seen);
            if seg(j) < 512 || seen < 512 {
                break;
            }
        }
        queries += len;
        hits += hit.min(len - 1);
        for j in 0..ids.len() {
            let e = longest.entry(ids[..=j].to_vec()).or_insert(0);
            *e = (*e).max(seg(j));
        }
    }
    (queries, hits)
}

/// With a pool that never evicts and one request at a time (so that every earlier prompt is in the
/// tree when a request is matched: SGLang inserts after compute, G5), SGLang's token hits on the
/// Mooncake trace equal the token oracle exactly, and are at least vLLM's block-granular hits (a
/// partial block is reusable token by token).
#[test]
fn sglang_token_hits_with_unbounded_memory_equal_the_token_oracle() {
    let (queries, hits) = token_oracle(usize::MAX);
    let (_, block_hits, _) = oracle();
    let tmp = tempfile::tempdir().unwrap();
    let (run, _) = run_in(
        tmp.path(),
        "sglang",
        &trace_config(&[
            "engine.kind=\"sglang\"",
            "sglang.max_total_tokens=200000000",
            "sglang.max_running_requests=1",
            "sglang.chunked_prefill_size=-1",
            "cost.kind=\"linear\"",
        ]),
    );
    let s = &run.summary;
    assert_eq!(s.get_f64("requests_finished"), Some(12_031.0));
    assert_eq!(s.get_f64("radix_evicted_tokens"), Some(0.0));
    assert_eq!(s.get_f64("num_preemptions"), Some(0.0));
    assert_eq!(s.get_f64("prefix_cache_queries"), Some(queries as f64));
    assert_eq!(s.get_f64("prefix_cache_hits"), Some(hits as f64));
    // No chunk continuations: SGLang's rate is the same hits over the same tokens.
    assert_eq!(s.get_f64("sglang_cache_hit_tokens"), Some(hits as f64));
    assert_eq!(
        s.get_f64("sglang_prefill_input_tokens"),
        Some((queries - hits) as f64)
    );
    assert!(hits >= block_hits, "{hits} < {block_hits}");
}

/// HiCache with a host tier that never fills, one H100's GPU pool, one request at a time: every
/// earlier prompt is in the tree, on the GPU or copied to host at its insertion (write-through), so
/// the hits reach the unbounded oracle but for host hits under SGLang's 10-token load threshold, which
/// are recomputed: at most 9 tokens a request below it. The first 2,000 requests.
#[test]
fn hicache_with_an_unbounded_host_tier_recovers_the_unbounded_hits() {
    let n = 2000;
    let (queries, hits) = token_oracle(n);
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "engine.kind=\"sglang\"",
        "workload.max_requests=2000",
        "sglang.max_running_requests=1",
        "sglang.chunked_prefill_size=-1",
        "cost.kind=\"linear\"",
    ];
    let mut with = base.to_vec();
    with.extend([
        "sglang.enable_hierarchical_cache=true",
        "sglang.hicache_size=1000000",
    ]);
    let (gpu, _) = run_in(tmp.path(), "gpu", &trace_config(&base));
    let (hi, _) = run_in(tmp.path(), "hicache", &trace_config(&with));
    let (g, h) = (&gpu.summary, &hi.summary);
    assert_eq!(h.get_f64("prefix_cache_queries"), Some(queries as f64));
    let gpu_hits = g.get_f64("prefix_cache_hits").unwrap();
    let hi_hits = h.get_f64("prefix_cache_hits").unwrap();
    assert!(
        g.get_f64("radix_evicted_tokens").unwrap() > 0.0,
        "the GPU pool evicts"
    );
    assert!(gpu_hits < hits as f64, "{gpu_hits} {hits}");
    assert!(h.get_f64("hicache_loaded_tokens").unwrap() > 0.0);
    assert_eq!(h.get_f64("hicache_host_evicted_tokens"), Some(0.0));
    assert!(hi_hits <= hits as f64, "{hi_hits} > {hits}");
    assert!(
        hi_hits >= (hits - 9 * n as u64) as f64,
        "{hi_hits} < {hits} - 9 x {n}"
    );
}
