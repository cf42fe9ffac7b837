//! KV offload tiers (engine-semantics O1-O3, L1-L4), each rule on a hand-built scenario whose expected
//! result is derived in a comment; then persistence (save -> warm start -> save) and warm starts on real
//! runs. Block size 16 throughout; one token of KV is 1,000 bytes, so load times are easy to derive.

use servesim::config::SchedulingPolicy;
use servesim::kv::persist;
use servesim::kv::tier::{Backend, OffloadParams, TierKind, TierParams};
use servesim::kv::{KvCacheManager, KvStore, Tiered};
use servesim::request::{Request, RequestId};
use servesim::scheduler::vllm_v1::{Limits, VllmScheduler};
use servesim::scheduler::{Next, RequestTable, Scheduler, StepPlan};
use servesim::time::{SimDuration, SimTime};
use servesim::workload::content::Segment;

type Store = Tiered<KvCacheManager>;

/// 1,000 bytes per token; CPU link 1 MB/s with 1 ms latency (32 tokens load in 0.001 + 32,000 / 1e6 =
/// 0.033 s); disk 0.5 MB/s with 10 ms.
fn params(backend: Backend, unit_blocks: u32, cpu_units: u64, disk_units: u64) -> OffloadParams {
    let mut tiers = vec![(
        TierKind::Cpu,
        TierParams {
            capacity_units: cpu_units,
            bandwidth_bytes_per_s: 1e6,
            latency_s: 0.001,
            survives_restart: false,
        },
    )];
    if disk_units > 0 {
        tiers.push((
            TierKind::Disk,
            TierParams {
                capacity_units: disk_units,
                bandwidth_bytes_per_s: 0.5e6,
                latency_s: 0.010,
                survives_restart: true,
            },
        ));
    }
    OffloadParams {
        backend,
        block_size: 16,
        unit_blocks,
        bytes_per_token: 1000,
        tiers,
    }
}

/// A vLLM scheduler over a tiered store, stepped by hand: `step` plans at `now`, ends the step (one
/// token sampled by every request that reached its length, `after_step` called as the replica does) and
/// frees finished requests.
struct H {
    s: VllmScheduler<Store>,
    reqs: RequestTable,
    now: SimTime,
}

impl H {
    fn new(gpu_blocks: u32, p: OffloadParams) -> H {
        let limits = Limits {
            max_num_batched_tokens: 10_000,
            max_num_seqs: 100,
            max_model_len: 100_000,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            policy: SchedulingPolicy::Fcfs,
        };
        H {
            s: VllmScheduler::new(
                limits,
                Tiered::new(KvCacheManager::new(gpu_blocks, 16, true), p),
            ),
            reqs: RequestTable::default(),
            now: SimTime::ZERO,
        }
    }

    /// Request `id` with prompt `segs` (content, tokens), generating `max_tokens`.
    fn add(&mut self, id: RequestId, segs: &[(u64, u32)], max_tokens: u32) {
        let prompt = segs
            .iter()
            .map(|&(c, len)| Segment { content: c, len })
            .collect();
        let mut r = Request::new(id, id, 1, 0, self.now, prompt, 1000 + id, max_tokens);
        self.s.kv_mut().on_enqueue(&mut r);
        self.s.add_request(&r);
        self.reqs.insert(id, Box::new(r));
    }

    fn step(&mut self) -> (Next, StepPlan) {
        let mut plan = StepPlan::default();
        let next = self.s.schedule(self.now, &mut self.reqs, &mut plan);
        let mut done = Vec::new();
        for &(id, _) in &plan.scheduled {
            let r = self.reqs.get_mut(&id).unwrap();
            if r.num_computed_tokens == r.num_tokens() {
                r.num_output_tokens += 1;
                r.in_prefill = false;
                if r.num_output_tokens >= r.max_tokens {
                    done.push(id);
                } else {
                    self.s.kv_mut().on_token(r);
                }
            }
        }
        self.s.kv_mut().after_step(&mut self.reqs, &plan.scheduled);
        self.s.finish_requests(&done, self.now);
        for id in done {
            let mut r = self.reqs.remove(&id).unwrap();
            self.s.kv_mut().free(&mut r);
        }
        self.s.kv().check_invariants(&self.reqs).unwrap();
        self.now += SimDuration::from_secs_f64(0.01);
        (next, plan)
    }

    /// Runs steps until nothing is held (waking at a load's end when only loads are pending).
    fn drain(&mut self) {
        for _ in 0..1000 {
            if self.reqs.is_empty() {
                return;
            }
            if let (Next::WakeAt(t), _) = self.step() {
                self.now = t;
            }
        }
        panic!("requests left after 1000 steps");
    }

    fn cpu(&self) -> Vec<u64> {
        self.s.kv().tier_keys(TierKind::Cpu)
    }

    fn disk(&self) -> Vec<u64> {
        self.s.kv().tier_keys(TierKind::Disk)
    }

    /// A request's block hashes with prompt `segs` (its content's names in the cache).
    fn hashes(&mut self, segs: &[(u64, u32)]) -> Vec<u64> {
        let prompt = segs
            .iter()
            .map(|&(c, len)| Segment { content: c, len })
            .collect();
        let mut r = Request::new(999, 999, 1, 0, SimTime::ZERO, prompt, 0, 1);
        r.update_block_hashes(16);
        r.block_hashes.to_vec()
    }
}

#[test]
fn o2_native_writes_through_full_blocks_only_at_the_end_of_the_step_that_computed_them() {
    let mut h = H::new(100, params(Backend::Native, 1, 100, 0));
    // 40 prompt tokens: blocks 0 and 1 are full, block 2 holds 8 tokens.
    h.add(1, &[(7, 40)], 10);
    assert!(h.cpu().is_empty());
    h.step(); // prefill, samples token 41
    let a = h.hashes(&[(7, 40)]);
    assert_eq!(a.len(), 2);
    // The two full blocks (the partial one is not stored), touched after the store: A0 most recent.
    assert_eq!(h.cpu(), vec![a[1], a[0]]);
    // Decode steps 2..9 compute tokens 41..48: token 48 completes block 2 (tokens 33-48) in step 9.
    for _ in 0..7 {
        h.step();
    }
    assert_eq!(
        h.cpu().len(),
        2,
        "block 2 is not full before step 9 computes token 48"
    );
    h.step();
    assert_eq!(
        h.cpu().len(),
        3,
        "the output's block is stored once full (O2: prompt and output)"
    );
    let st = h.s.kv().stats().offload.unwrap();
    assert_eq!(st.tiers[0].stored_bytes, 3 * 16 * 1000);
}

#[test]
fn o3_native_lookup_runs_after_the_gpu_hit_and_loads_asynchronously() {
    // 4 usable GPU blocks. A (40 tokens, content 1) leaves blocks 0,1 (hashed) and 2 (partial) free,
    // queued [the never-used block, A2, A1, A0] (K3: last block first); the CPU tier has A0, A1.
    let mut h = H::new(5, params(Backend::Native, 1, 100, 0));
    h.add(1, &[(1, 40)], 1);
    h.drain();
    let a = h.hashes(&[(1, 40)]);
    assert_eq!(h.cpu(), vec![a[1], a[0]]);
    // B (content 2, 64 tokens = 4 blocks) takes all 4 GPU blocks: A's leave the GPU, not the CPU tier.
    h.add(2, &[(2, 64)], 1);
    h.drain();
    // A' = A's 40 tokens + 16 more: GPU hit 0, CPU run = blocks 0,1 = 32 tokens, loaded in
    // 0.001 + 32 * 1000 / 1e6 = 0.033 s. The request waits: nothing is scheduled, and the scheduler
    // wakes at the load's end.
    h.add(3, &[(1, 40), (3, 16)], 1);
    let t0 = h.now;
    let (next, plan) = h.step();
    assert!(plan.scheduled.is_empty());
    assert_eq!(next, Next::WakeAt(t0 + SimDuration::from_secs_f64(0.033)));
    let r = &h.reqs[&3];
    assert_eq!(r.num_computed_tokens, 32);
    assert_eq!(r.num_cached_tokens, Some(32));
    assert_eq!(r.cached_tokens_tier, [32, 0]);
    assert_eq!(r.kv_load, SimDuration::from_secs_f64(0.033));
    assert_eq!(h.s.num_waiting(), 1, "a loading request counts as waiting");
    // Before the load is done nothing runs; at its end the request computes the other 56 - 32 tokens.
    let (_, plan) = h.step();
    assert!(plan.scheduled.is_empty());
    h.now = t0 + SimDuration::from_secs_f64(0.033);
    let (_, plan) = h.step();
    assert_eq!(plan.scheduled, vec![(3, 24)]);
    assert_eq!(
        plan.kv_load,
        SimDuration::ZERO,
        "an async load adds nothing to a step"
    );
    let st = h.s.kv().stats().offload.unwrap();
    // Connector lookups count every admitted request's tokens (40 + 64 + 56), hits the loaded ones.
    assert_eq!((st.queries, st.hits), (40 + 64 + 56, 32));
    assert_eq!(st.tiers[0].loaded_bytes, 32_000);

    // GPU first: B' (content 2, 48 tokens = 3 blocks) takes the never-used block, A2 and A1 only, so
    // A0 stays on the GPU. A' then hits block 0 on the GPU (16 tokens) and the CPU serves what follows:
    // block 1, 16 tokens.
    let mut h = H::new(5, params(Backend::Native, 1, 100, 0));
    h.add(1, &[(1, 40)], 1);
    h.drain();
    h.add(2, &[(2, 48)], 1);
    h.drain();
    h.add(3, &[(1, 40), (3, 16)], 1);
    h.step();
    let r = &h.reqs[&3];
    assert_eq!(r.num_cached_tokens, Some(32));
    assert_eq!(
        r.cached_tokens_tier,
        [16, 0],
        "the CPU serves only what follows the GPU hit"
    );
    assert_eq!(h.s.kv().inner().prefix_stats().hits, 16);
}

#[test]
fn o3_a_whole_prompt_loaded_recomputes_its_last_token() {
    let mut h = H::new(4, params(Backend::Native, 1, 100, 0));
    // A: 32 tokens (2 full blocks), stored in CPU. B (content 2, 40 tokens = 3 blocks) evicts them
    // from the 3-block GPU pool.
    h.add(1, &[(1, 32)], 1);
    h.drain();
    h.add(2, &[(2, 40)], 1);
    h.drain();
    // A again: GPU hit 0; CPU run = both blocks = all 32 tokens; computed = 32 - 1 = 31 (O3), the
    // one token recomputed counted off the CPU tier's tokens.
    h.add(3, &[(1, 32)], 1);
    h.step();
    let r = &h.reqs[&3];
    assert_eq!(r.num_computed_tokens, 31);
    assert_eq!(r.cached_tokens_tier, [31, 0]);
    assert_eq!(
        r.kv_load,
        SimDuration::from_secs_f64(0.001 + 32_000.0 / 1e6)
    );
}

#[test]
fn native_cpu_tier_is_lru_touched_first_block_last_and_skips_a_store_it_cannot_hold() {
    // CPU tier of 3 blocks.
    let mut h = H::new(100, params(Backend::Native, 1, 3, 0));
    h.add(1, &[(1, 32)], 1); // A0, A1
    h.drain();
    h.add(2, &[(2, 16), (9, 8)], 1); // X (one full block)
    h.drain();
    let a = h.hashes(&[(1, 32)]);
    let x = h.hashes(&[(2, 16)])[0];
    // A's store adds A0 then A1, then touches A's blocks in reverse (A1, then A0): A0 ends most recent.
    assert_eq!(h.cpu(), vec![a[1], a[0], x], "least recent first");
    // A lookup of A's content touches its blocks in reverse: A1, then A0 become most recent.
    h.add(3, &[(1, 32), (3, 8)], 1);
    h.drain();
    assert_eq!(h.cpu(), vec![x, a[1], a[0]]);
    // Y, one new block: the LRU end (X) goes.
    h.add(4, &[(4, 16), (9, 8)], 1);
    h.drain();
    let y = h.hashes(&[(4, 16)])[0];
    assert_eq!(h.cpu(), vec![a[1], a[0], y]);
    // Z: 4 new blocks at once, more than the tier holds: the whole store is skipped (O2).
    h.add(5, &[(5, 64), (9, 8)], 1);
    h.drain();
    assert_eq!(h.cpu(), vec![a[1], a[0], y]);
    assert_eq!(h.s.kv().stats().offload.unwrap().tiers[0].skipped_stores, 1);
}

#[test]
fn requests_back_from_loads_that_hold_every_block_give_them_back_instead_of_stalling() {
    // 7 usable GPU blocks. A (64 tokens, 4 blocks) and B (48 tokens, 3 blocks) reach the CPU tier; C
    // (112 tokens, all 7 blocks) evicts both from the GPU.
    let mut h = H::new(8, params(Backend::Native, 1, 100, 0));
    h.add(1, &[(1, 64)], 1);
    h.drain();
    h.add(2, &[(2, 48)], 1);
    h.drain();
    h.add(3, &[(3, 112)], 1);
    h.drain();
    // A' = A + 32 tokens and B' = B + 32 tokens: each loads its CPU blocks (4 and 3: the whole pool)
    // and waits, A' for 0.001 + 64,000 / 1e6 = 0.065 s, B' for 0.049 s.
    h.add(4, &[(1, 64), (4, 32)], 2);
    h.add(5, &[(2, 48), (5, 32)], 2);
    let t0 = h.now;
    let (next, _) = h.step();
    assert_eq!(next, Next::WakeAt(t0 + SimDuration::from_secs_f64(0.049)));
    // Both back at 0.065 s: A' needs 2 more blocks, none is free, nothing runs or loads. Both give their
    // blocks back (2 preemptions); A', looked up again, hits its 4 blocks on the GPU and computes its
    // other 32 tokens; B' waits for A'.
    h.now = t0 + SimDuration::from_secs_f64(0.065);
    let (_, plan) = h.step();
    assert_eq!(plan.preempted, vec![4, 5]);
    assert_eq!(plan.scheduled, vec![(4, 32)]);
    assert_eq!(
        h.reqs[&4].num_cached_tokens,
        Some(64),
        "first admission's count stands"
    );
    h.drain();
}

#[test]
fn lmcache_stores_prompt_chunks_to_every_tier_looks_up_cpu_then_disk_and_adds_the_load_to_the_step()
{
    // Chunks of 32 tokens (2 blocks). CPU holds 1 chunk, disk 16. GPU: 8 usable blocks.
    let mut h = H::new(9, params(Backend::LmCache, 2, 1, 16));
    // A: 64 prompt tokens = chunks 0 and 1; its 40 output tokens fill a third chunk's worth, never
    // stored (save_decode_cache = false).
    h.add(1, &[(1, 64)], 40);
    h.drain();
    let a = h.hashes(&[(1, 64)]);
    let (c0, c1) = (a[1], a[3]); // a chunk's key is its last block's hash
    assert_eq!(
        h.disk(),
        vec![c0, c1],
        "written through to disk, prompt chunks only"
    );
    assert_eq!(
        h.cpu(),
        vec![c1],
        "the one-chunk CPU tier: c1's put evicted c0"
    );
    // B (content 2, 128 tokens = all 8 GPU blocks) evicts A from the GPU; its 4 chunks go to disk
    // too (6 of 16), and its last to the CPU.
    h.add(2, &[(2, 128)], 1);
    h.drain();
    // A' = A's 64 tokens + 10: the CPU tier is walked first and lacks chunk 0, so it serves nothing;
    // disk serves chunks 0 and 1 = 64 tokens. GPU hit 0: 64 tokens load from disk in
    // 0.010 + 64,000 / 0.5e6 = 0.138 s, added to the admitting step, which computes the other 10.
    h.add(3, &[(1, 64), (3, 10)], 2);
    let (_, plan) = h.step();
    assert_eq!(plan.scheduled, vec![(3, 10)]);
    assert_eq!(
        plan.kv_load,
        SimDuration::from_secs_f64(0.010 + 64_000.0 / 0.5e6)
    );
    assert_eq!(h.reqs[&3].cached_tokens_tier, [0, 64]);
    assert_eq!(
        h.cpu(),
        vec![c1],
        "chunks read from disk are put into the CPU tier: c0, then c1"
    );
    h.drain();
    // C (content 6, 128 tokens) evicts A' from the GPU. A'' = exactly A's 64 tokens: disk serves
    // both chunks, the whole prompt hit, so one token less is loaded (L3): 63, and 1 is computed.
    h.add(4, &[(6, 128)], 1);
    h.drain();
    h.add(5, &[(1, 64)], 2);
    let (_, plan) = h.step();
    assert_eq!(plan.scheduled, vec![(5, 1)]);
    assert_eq!(h.reqs[&5].cached_tokens_tier, [0, 63]);
    assert_eq!(
        plan.kv_load,
        SimDuration::from_secs_f64(0.010 + 63_000.0 / 0.5e6)
    );
}

#[test]
fn a_restart_keeps_the_tiers_that_survive_it() {
    let mut h = H::new(100, params(Backend::LmCache, 2, 4, 4));
    h.add(1, &[(1, 64)], 1);
    h.drain();
    let keep = h.s.kv().restart_keep();
    assert!(
        keep.gpu.is_empty() && keep.tiers[0].is_empty(),
        "GPU and in-process CPU are lost"
    );
    assert_eq!(keep.tiers[1], h.disk(), "local disk survives");
    let mut fresh = Tiered::new(
        KvCacheManager::new(100, 16, true),
        params(Backend::LmCache, 2, 4, 4),
    );
    fresh.restore(&keep);
    assert_eq!(fresh.tier_keys(TierKind::Disk), h.disk());
    assert!(fresh.tier_keys(TierKind::Cpu).is_empty());
}

#[test]
fn a_cache_saved_then_restored_then_saved_again_is_the_same_file() {
    let p = params(Backend::Native, 1, 3, 0);
    let mut h = H::new(6, p.clone());
    for (id, c) in [(1, 1), (2, 2), (3, 3)] {
        h.add(id, &[(c, 40)], 1);
        h.drain();
    }
    let header = persist::Header {
        model: "m".into(),
        block_size: 16,
        prefix_cache_scope: "global".into(),
        offload_unit_tokens: Some(16),
    };
    let snap = h.s.kv().snapshot();
    assert!(!snap.gpu.is_empty() && !snap.tiers[0].is_empty());
    let text = persist::to_text(&header, std::slice::from_ref(&snap));
    let read = persist::parse(&text, &header, 1).unwrap();
    let mut fresh = Tiered::new(KvCacheManager::new(6, 16, true), p);
    fresh.restore(&read[0]);
    assert_eq!(
        persist::to_text(&header, &[fresh.snapshot()]),
        text,
        "save -> warm start -> save"
    );
    // And the restored GPU cache hits: content 3's first two blocks (of 40 tokens, capped at 2).
    let mut r = Request::new(
        9,
        9,
        1,
        0,
        SimTime::ZERO,
        vec![Segment {
            content: 3,
            len: 40,
        }],
        0,
        1,
    );
    fresh.on_enqueue(&mut r);
    assert_eq!(fresh.get_computed_blocks(&mut r).tokens, 32);
}

fn servesim() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("servesim").unwrap()
}

#[test]
fn offload_settings_that_cannot_run_are_refused_by_key() {
    crate::common::assert_refused_by_key(&[
        ("kv.offload.disk_gib=10", "kv.offload.disk_gib"),
        ("kv.offload.cpu_gib=-1", "kv.offload.cpu_gib"),
        ("kv.offload.cpu_latency_s=nan", "kv.offload.cpu_latency_s"),
    ]);
    let e = servesim::config::Config::load(
        None,
        &[
            "kv.offload.cpu_gib=1".to_string(),
            "engine.kind=\"dynamic\"".to_string(),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("kv.offload") && e.contains("vllm"), "{e}");
    let e = servesim::config::Config::load(
        None,
        &[
            "kv.offload.backend=\"lmcache\"".to_string(),
            "kv.offload.chunk_tokens=100".to_string(),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("kv.offload.chunk_tokens"), "{e}");
}

/// A short chat run on a small pool, with the native CPU tier.
const SHORT: &[&str] = &[
    "workload.duration_s=30",
    "engine.max_model_len=32768",
    "engine.num_gpu_blocks=4000",
    "kv.offload.cpu_gib=8",
];

fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

#[test]
fn a_warm_start_hits_where_a_cold_start_misses_and_bad_cache_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache.json");
    servesim()
        .args(["run", "-q", "--out"])
        .arg(tmp.path().join("first"))
        .args(set_args(SHORT))
        .args(["--set", "seed=7", "--save-cache"])
        .arg(&cache)
        .assert()
        .success();
    let rows_of = |name: &str, warm: bool| {
        let mut c = servesim();
        c.args(["run", "-q", "--out"])
            .arg(tmp.path().join(name))
            .args(set_args(SHORT));
        if warm {
            c.arg("--warm-start").arg(&cache);
        }
        c.assert().success();
        let rows = crate::common::read_rows(&tmp.path().join(name).join("requests.csv"));
        let first = rows
            .into_iter()
            .find(|r| r["request_id"] == "0")
            .expect("request 0");
        (
            first["cached_tokens"].clone(),
            first["prompt_tokens"].clone(),
        )
    };
    // Request 0 of a cold run finds an empty cache; warm-started from another day's traffic (seed 7),
    // it hits the shared 592-token system prompt (37 blocks of 16), kept in the saved GPU cache.
    assert_eq!(rows_of("cold", false).0, "0");
    assert_eq!(rows_of("warm", true).0, "592");

    // A corrupted file: exit 2, the file and the checksum named, no output left.
    let text = std::fs::read_to_string(&cache).unwrap();
    let bad = tmp.path().join("bad.json");
    let at = text.find("\"gpu\":[").unwrap() + 8;
    let mut corrupted = text.clone();
    corrupted.replace_range(at..at + 1, if &text[at..at + 1] == "9" { "8" } else { "9" });
    std::fs::write(&bad, corrupted).unwrap();
    let out = tmp.path().join("refused");
    servesim()
        .args(["run", "-q", "--out"])
        .arg(&out)
        .args(set_args(SHORT))
        .arg("--warm-start")
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("bad.json"))
        .stderr(predicates::str::contains("checksum"));
    assert!(!out.exists());
    // A mismatched block size: exit 2, naming it.
    servesim()
        .args(["run", "-q", "--out"])
        .arg(&out)
        .args(set_args(SHORT))
        .args(["--set", "engine.block_size=32", "--warm-start"])
        .arg(&cache)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("block_size"));
    assert!(!out.exists());
}

#[test]
fn a_cache_path_that_cannot_be_written_is_refused_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    for (path, says) in [
        (tmp.path().join("missing").join("c.json"), "does not exist"),
        (tmp.path().join("out").join("c.json"), "run directory"),
    ] {
        servesim()
            .args(["run", "-q", "--out"])
            .arg(tmp.path().join("out"))
            .args(set_args(SHORT))
            .arg("--save-cache")
            .arg(&path)
            .assert()
            .code(2)
            .stderr(predicates::str::contains("--save-cache"))
            .stderr(predicates::str::contains(says));
        assert!(!tmp.path().join("out").exists());
    }
}
