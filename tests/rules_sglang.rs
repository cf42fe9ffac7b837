//! SGLang's rules G2-G7 (read from `python/sglang/srt/mem_cache/radix_cache.py` and
//! `managers/schedule_policy.py`), one test per rule, on hand-built scenes;
//! and the radix cache against a naive reference.

use proptest::prelude::*;
use servesim::kv::radix::{RadixCache, Run, Token, ROOT};

fn run(content: u64, start: u32, len: u32) -> Run {
    Run {
        content,
        start,
        len,
    }
}

#[test]
fn g2_a_match_ending_inside_a_node_splits_it_and_stamps_the_whole_node() {
    let mut c = RadixCache::new();
    c.insert(&[run(1, 0, 10)], 1);
    c.insert(&[run(2, 0, 5)], 3);
    // Matches 4 of the 10 tokens, then diverges: the node splits after 4.
    let m = c.match_prefix(&[run(1, 0, 4), run(9, 0, 3)], 5);
    assert_eq!(m.tokens, 4);
    assert_ne!(m.node, ROOT);
    // Splitting moves no tokens.
    assert_eq!(c.total_size(), 15);
    c.debug_check();
    // The unmatched remainder (6 tokens) was stamped 5 with the rest of its node, so the leaf inserted at
    // 3 is the least recently used: evicting one token frees it whole (5 tokens), not the remainder.
    assert_eq!(c.evict(1), 5);
    assert_eq!(c.leaf_keys(), vec![vec![run(1, 0, 10)]]);
}

#[test]
fn g3_a_locked_path_is_protected_and_never_evicted() {
    let mut c = RadixCache::new();
    c.insert(&[run(1, 0, 8)], 1);
    // 8 already cached, 4 new below them.
    assert_eq!(c.insert(&[run(1, 0, 8), run(2, 0, 4)], 2), 8);
    let m = c.match_prefix(&[run(1, 0, 8), run(2, 0, 4)], 3);
    assert_eq!(m.tokens, 12);
    c.inc_lock_ref(m.node);
    assert_eq!((c.evictable_size(), c.protected_size()), (0, 12));
    assert_eq!(c.evict(100), 0);
    c.insert(&[run(3, 0, 5)], 4);
    assert_eq!(c.evict(100), 5);
    c.dec_lock_ref(m.node);
    assert_eq!((c.evictable_size(), c.protected_size()), (12, 0));
    c.debug_check();
}

#[test]
fn g4_evicts_the_lru_leaf_first_then_a_parent_left_childless() {
    let mut c = RadixCache::new();
    // A shared 6-token prefix S with two 4-token branches A (t = 1) and B (t = 2); C alone (t = 3).
    c.insert(&[run(1, 0, 6), run(2, 0, 4)], 1);
    c.insert(&[run(1, 0, 6), run(3, 0, 4)], 2);
    c.insert(&[run(4, 0, 3)], 3);
    assert_eq!(c.total_size(), 17);
    // Asked for 5: A (oldest leaf, 4) goes; S still has B, so B (t = 2, 4) goes next: 8 freed, whole
    // nodes, more than asked.
    assert_eq!(c.evict(5), 8);
    assert_eq!(c.leaf_keys(), vec![vec![run(1, 0, 6)], vec![run(4, 0, 3)]]);
    // S, childless now and stamped 2 by B's insertion, is older than C (3).
    assert_eq!(c.evict(1), 6);
    assert_eq!(c.leaf_keys(), vec![vec![run(4, 0, 3)]]);
    c.debug_check();
}

#[test]
fn g5_insertion_deduplicates_and_reports_the_cached_prefix() {
    let mut c = RadixCache::new();
    assert_eq!(c.insert(&[run(1, 0, 10)], 1), 0);
    assert_eq!(c.insert(&[run(1, 0, 10), run(2, 0, 5)], 2), 10);
    assert_eq!(c.total_size(), 15);
    // A key ending inside a node: all of it was cached; the node splits, nothing is added.
    assert_eq!(c.insert(&[run(1, 0, 4)], 3), 4);
    assert_eq!(c.total_size(), 15);
    // Runs are tokens: (1, 0..4) + (1, 4..10) is the same 10 tokens as (1, 0..10).
    assert_eq!(c.insert(&[run(1, 0, 4), run(1, 4, 6)], 4), 10);
    assert_eq!(c.match_prefix(&[run(1, 0, 10), run(2, 0, 7)], 5).tokens, 15);
    c.debug_check();
}

/// The naive reference: the cached token sequences as a list, with linear scans.
#[derive(Default)]
struct Naive {
    seqs: Vec<Vec<Token>>,
}

fn tokens(key: &[Run]) -> Vec<Token> {
    key.iter()
        .flat_map(|r| (r.start..r.start + r.len).map(move |k| (r.content, k)))
        .collect()
}

fn lcp(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Naive {
    fn longest(&self, key: &[Token]) -> usize {
        self.seqs.iter().map(|s| lcp(s, key)).max().unwrap_or(0)
    }
    fn insert(&mut self, key: Vec<Token>) -> usize {
        let present = self.longest(&key);
        if !self
            .seqs
            .iter()
            .any(|s| s.len() >= key.len() && s[..key.len()] == key[..])
        {
            self.seqs
                .retain(|s| !(s.len() <= key.len() && key[..s.len()] == s[..]));
            self.seqs.push(key);
        }
        present
    }
    /// Distinct cached token prefixes: the tokens a token-granular tree holds.
    fn size(&self) -> usize {
        let mut all: Vec<&[Token]> = Vec::new();
        for s in &self.seqs {
            for k in 1..=s.len() {
                all.push(&s[..k]);
            }
        }
        all.sort();
        all.dedup();
        all.len()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<Run>),
    Match(Vec<Run>),
    Lock(Vec<Run>),
    Unlock(usize),
    Evict(u64),
}

fn key() -> impl Strategy<Value = Vec<Run>> {
    // Few contents and short runs from a few offsets: keys share prefixes and diverge mid-run often.
    prop::collection::vec((1u64..4, 0u32..3, 1u32..5), 1..5).prop_map(|v| {
        v.into_iter()
            .map(|(content, s, len)| run(content, s * 2, len))
            .collect()
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => key().prop_map(Op::Insert),
        3 => key().prop_map(Op::Match),
        1 => key().prop_map(Op::Lock),
        1 => (0usize..8).prop_map(Op::Unlock),
        1 => (1u64..12).prop_map(Op::Evict),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_radix_cache_agrees_with_a_naive_list_of_sequences(ops in prop::collection::vec(op(), 1..60)) {
        let mut c = RadixCache::new();
        let mut naive = Naive::default();
        // Locked (node, token sequence) pairs.
        let mut locks: Vec<(u32, Vec<Token>)> = Vec::new();
        for (t, op) in ops.into_iter().enumerate() {
            let now = t as u64 + 1;
            match op {
                Op::Insert(k) => {
                    let want = naive.insert(tokens(&k));
                    prop_assert_eq!(c.insert(&k, now) as usize, want);
                }
                Op::Match(k) => {
                    prop_assert_eq!(c.match_prefix(&k, now).tokens as usize, naive.longest(&tokens(&k)));
                }
                Op::Lock(k) => {
                    let m = c.match_prefix(&k, now);
                    let toks = tokens(&k);
                    prop_assert_eq!(m.tokens as usize, naive.longest(&toks));
                    c.inc_lock_ref(m.node);
                    locks.push((m.node, toks[..m.tokens as usize].to_vec()));
                }
                Op::Unlock(i) => {
                    if !locks.is_empty() {
                        let (node, _) = locks.remove(i % locks.len());
                        c.dec_lock_ref(node);
                    }
                }
                Op::Evict(n) => {
                    let (before, evictable) = (c.total_size(), c.evictable_size());
                    let freed = c.evict(n);
                    // Frees at least what was asked, or everything evictable; only evictable tokens.
                    prop_assert!(freed >= n.min(evictable) && freed <= evictable);
                    if freed < n {
                        prop_assert_eq!(c.evictable_size(), 0);
                    }
                    prop_assert_eq!(c.total_size(), before - freed);
                    // What remains was cached before; every locked sequence is still whole.
                    let remaining: Vec<Vec<Token>> = c.leaf_keys().iter().map(|k| tokens(k)).collect();
                    for s in &remaining {
                        prop_assert_eq!(naive.longest(s), s.len());
                    }
                    naive.seqs = remaining;
                    for (_, s) in &locks {
                        prop_assert_eq!(naive.longest(s), s.len());
                    }
                }
            }
            c.debug_check();
            // Token counts: the tree holds every distinct cached prefix once (SGLang deduplicates), and
            // the locked ones are exactly the prefixes of locked sequences.
            prop_assert_eq!(c.total_size() as usize, naive.size());
            let mut locked: Vec<&[Token]> = Vec::new();
            for (_, s) in &locks {
                for k in 1..=s.len() {
                    locked.push(&s[..k]);
                }
            }
            locked.sort();
            locked.dedup();
            prop_assert_eq!(c.protected_size() as usize, locked.len());
        }
    }
}

// ---- The scheduler and its token pool (G1, G5, G6, G8-G11), driven step by step. ----

use servesim::kv::{KvStore, TokenPool};
use servesim::request::{Request, RequestId};
use servesim::scheduler::sglang::{SglangLimits, SglangPolicy, SglangScheduler};
use servesim::scheduler::{Next, RequestTable, Scheduler, StepPlan};
use servesim::time::SimTime;
use servesim::workload::content::Segment;

/// SGLang's scheduler over a pool of `pool` tokens, stepped as the replica steps it: a request whose
/// computed tokens reach its length samples a token, the store's `after_step` inserts prefill chunks,
/// and a request finishes at `max_tokens` and is freed (`cache_finished_req`).
struct G {
    s: SglangScheduler,
    reqs: RequestTable,
    finished: Vec<RequestId>,
    /// Steps planned so far: step k is planned at k seconds.
    steps: u64,
}

fn limits(max_running: u32, chunk: Option<u32>, conservativeness: f64) -> SglangLimits {
    let (init, min, decay) = SglangLimits::ratios(conservativeness);
    SglangLimits {
        max_running_requests: max_running,
        chunked_prefill_size: chunk,
        max_prefill_tokens: 16384,
        policy: SglangPolicy::Fcfs,
        init_new_token_ratio: init,
        min_new_token_ratio: min,
        new_token_ratio_decay: decay,
        max_model_len: 100_000,
    }
}

impl G {
    fn new(pool: u64, l: SglangLimits) -> G {
        G::with_pool(TokenPool::new(pool, true), l)
    }

    fn with_pool(pool: TokenPool, l: SglangLimits) -> G {
        G {
            s: SglangScheduler::new(l, pool),
            reqs: RequestTable::default(),
            finished: Vec::new(),
            steps: 0,
        }
    }

    fn add(&mut self, id: RequestId, segs: &[(u64, u32)], max_tokens: u32) {
        let prompt = segs
            .iter()
            .map(|&(c, len)| Segment { content: c, len })
            .collect();
        let r = Request::new(id, id, 1, 0, SimTime(id), prompt, 1000 + id, max_tokens);
        self.s.add_request(&r);
        self.reqs.insert(id, Box::new(r));
    }

    /// Plans one step (nothing ends yet).
    fn plan(&mut self) -> StepPlan {
        self.plan_next().1
    }

    /// Plans one step at the next whole second, and says what the scheduler answered.
    fn plan_next(&mut self) -> (Next, StepPlan) {
        let mut plan = StepPlan::default();
        let now = SimTime(self.steps * 1_000_000_000);
        self.steps += 1;
        let next = self.s.schedule(now, &mut self.reqs, &mut plan);
        assert_eq!(next == Next::Run, !plan.scheduled.is_empty());
        self.s.kv().check_invariants(&self.reqs).unwrap();
        (next, plan)
    }

    /// Ends the planned step.
    fn end(&mut self, plan: &StepPlan) {
        let mut done = Vec::new();
        for &(id, _) in &plan.scheduled {
            let r = self.reqs.get_mut(&id).unwrap();
            if r.num_computed_tokens == r.num_tokens() {
                r.num_output_tokens += 1;
                r.in_prefill = false;
                if r.num_output_tokens >= r.max_tokens {
                    done.push(id);
                }
            }
        }
        self.s.kv_mut().after_step(&mut self.reqs, &plan.scheduled);
        self.s.finish_requests(&done, SimTime::ZERO);
        for id in done {
            let mut r = self.reqs.remove(&id).unwrap();
            self.s.kv_mut().free(&mut r);
            self.finished.push(id);
        }
        self.s.kv().check_invariants(&self.reqs).unwrap();
        self.s.kv().tree().debug_check();
    }

    fn step(&mut self) -> StepPlan {
        let p = self.plan();
        self.end(&p);
        p
    }

    /// Steps until a step schedules something (at most 5 rounds), and returns that step.
    fn step_until_scheduled(&mut self) -> StepPlan {
        for _ in 0..5 {
            let p = self.step();
            if !p.scheduled.is_empty() {
                return p;
            }
        }
        panic!("nothing scheduled in 5 rounds");
    }

    fn kv(&self) -> &TokenPool {
        self.s.kv()
    }
}

#[test]
fn g1_pool_limits_follow_memory_and_context() {
    use servesim::config::{EngineConfig, SglangConfig};
    use servesim::cost::catalog::{HardwareSpec, ModelShape};
    use servesim::kv::sizing::{sglang_limits, size_engine};
    let m = ModelShape::load("llama-3.1-8b").unwrap();
    let h100 = HardwareSpec::load("h100-sxm").unwrap();
    let e = EngineConfig::default();
    let sizing = size_engine(&e, &m, &h100).unwrap();
    let g = sglang_limits(&SglangConfig::default(), &e, &sizing, &h100).unwrap();
    let (total, l) = (g.max_total_tokens, g.limits);
    // The pool holds the bytes vLLM's blocks hold: blocks x 16 tokens.
    assert_eq!(total, sizing.num_gpu_blocks as u64 * 16);
    // Request pool = clamp(total / 131072 x 512, 2048, 4096): total is below 524,288 tokens, so the
    // product is below 2048 and clamps to it; total / 2 is larger, so max_running_requests = 2048.
    assert!(total < 524_288 && total / 2 > 2048, "{total}");
    assert_eq!(l.max_running_requests, 2048);
    // An 80 GB GPU (under 160 GiB, at least 60): 8192-token chunks.
    assert_eq!(l.chunked_prefill_size, Some(8192));
    // With an 8k context the request pool is total / 8192 x 512 > 4096: clamped to 4096.
    let e8 = EngineConfig {
        max_model_len: Some(8192),
        ..EngineConfig::default()
    };
    let s8 = size_engine(&e8, &m, &h100).unwrap();
    let g8 = sglang_limits(&SglangConfig::default(), &e8, &s8, &h100).unwrap();
    let (t8, l8) = (g8.max_total_tokens, g8.limits);
    assert!(t8 as f64 / 8192.0 * 512.0 > 4096.0);
    assert_eq!(l8.max_running_requests, 4096);
    // A 24 GB L4: 2048-token chunks; -1 turns chunking off.
    let l4 = HardwareSpec::load("l4").unwrap();
    let sl4 = size_engine(&e8, &m, &l4).unwrap();
    let ll4 = sglang_limits(&SglangConfig::default(), &e8, &sl4, &l4)
        .unwrap()
        .limits;
    assert_eq!(ll4.chunked_prefill_size, Some(2048));
    let off = SglangConfig {
        chunked_prefill_size: Some(-1),
        ..SglangConfig::default()
    };
    assert_eq!(
        sglang_limits(&off, &e8, &sl4, &l4)
            .unwrap()
            .limits
            .chunked_prefill_size,
        None
    );
}

#[test]
fn g5_g6_prefill_goes_first_and_a_prompt_is_matchable_only_after_its_step() {
    let mut g = G::new(1000, limits(10, Some(100), 1.0));
    g.add(1, &[(1, 20)], 5);
    let p = g.plan();
    assert_eq!(p.scheduled, vec![(1, 20)]);
    // Planned but not computed: nothing in the tree yet (SGLang inserts after compute).
    assert_eq!(g.kv().tree().total_size(), 0);
    g.end(&p);
    // After the step the 20 prompt tokens are in the tree, locked by request 1.
    assert_eq!(g.kv().tree().total_size(), 20);
    assert_eq!(g.kv().tree().protected_size(), 20);
    assert_eq!(g.step().scheduled, vec![(1, 1)]);
    // A new request sharing request 1's prompt: the next round is its prefill alone (the 20 cached
    // tokens hit, 30 computed); request 1's decode waits a round.
    g.add(2, &[(1, 20), (2, 30)], 5);
    assert_eq!(g.step().scheduled, vec![(2, 30)]);
    assert_eq!(g.reqs[&2].num_cached_tokens, Some(20));
    // Then one decode step of both.
    assert_eq!(g.step().scheduled, vec![(1, 1), (2, 1)]);
}

#[test]
fn g8_admission_reserves_its_output_and_the_running_outputs_times_new_token_ratio() {
    // Pool 200. Request 1 (20 tokens, max 100) runs: after its prefill step its 20 tokens are in the
    // tree (locked) and it has 1 output, so available = 180, evictable = 0, and it reserves
    // min(100 - 1, 4096) x 0.7 = 69.3. rem_total = 180 - 69.3 = 110.7. A 50-token request is
    // admitted iff 50 + its max_new < 110.7: max_new 60 (110) is, 61 (111) is not. With a ratio of 1
    // the bound would be 180 - 99 = 81, refusing both.
    for (max_new, admitted) in [(60, true), (61, false)] {
        let mut g = G::new(200, limits(10, Some(1000), 1.0));
        g.add(1, &[(1, 20)], 100);
        g.step();
        g.add(2, &[(2, 50)], max_new);
        let p = g.step();
        if admitted {
            assert_eq!(p.scheduled, vec![(2, 50)]);
        } else {
            // Refused for memory: request 1 decodes instead, and the batch is marked full, so the
            // next rounds do not try again while request 1 runs.
            assert_eq!(p.scheduled, vec![(1, 1)]);
            for _ in 0..10 {
                assert_eq!(g.step().scheduled, vec![(1, 1)]);
            }
        }
    }
}

#[test]
fn g9_new_token_ratio_decays_per_decode_step_to_its_floor() {
    // c = 1: init 0.7, floor 0.14 x 0.7 = 0.098, decay (0.7 - 0.098) / 600 = 0.0010033 per step.
    let (init, min, decay) = SglangLimits::ratios(1.0);
    assert!((init - 0.7).abs() < 1e-12 && (min - 0.098).abs() < 1e-12);
    assert!((decay - 0.602 / 600.0).abs() < 1e-15);
    // c = 2: init min(1.4, 1) = 1, floor 0.14.
    let (i2, m2, _) = SglangLimits::ratios(2.0);
    assert_eq!((i2, m2), (1.0, 0.14));
    let mut g = G::new(10_000, limits(10, Some(1000), 1.0));
    g.add(1, &[(1, 20)], 1000);
    g.step(); // a prefill step: no decay
    assert_eq!(g.s.new_token_ratio(), 0.7);
    g.step();
    assert!((g.s.new_token_ratio() - (0.7 - decay)).abs() < 1e-12);
    for _ in 0..99 {
        g.step();
    }
    assert!((g.s.new_token_ratio() - (0.7 - 100.0 * decay)).abs() < 1e-9);
    for _ in 0..600 {
        g.step();
    }
    assert_eq!(g.s.new_token_ratio(), 0.098);
}

#[test]
fn g10_retraction_takes_fewest_outputs_then_longest_prompt_and_resets_the_ratio() {
    // A small pool, a ratio near 0 (c = 0.01) and 10-token chunks, so requests are admitted one chunk
    // at a time while the running ones reserve almost nothing: the pool over-commits, and a decode
    // step finds it short.
    let mut g = G::new(140, limits(8, Some(10), 0.01));
    g.add(1, &[(1, 10)], 60);
    g.add(2, &[(2, 30)], 60);
    g.add(3, &[(3, 20)], 60);
    let mut retracted = None;
    for _ in 0..400 {
        let p = g.plan();
        if !p.preempted.is_empty() {
            // The batch before retraction: the survivors decoding now and the retracted, with their
            // outputs (a retracted request keeps its outputs; the step has not ended).
            let before: Vec<(RequestId, u32, u32)> = p
                .scheduled
                .iter()
                .map(|x| x.0)
                .chain(p.preempted.iter().copied())
                .map(|id| (id, g.reqs[&id].num_output_tokens, g.reqs[&id].prompt_tokens))
                .collect();
            retracted = Some((before, p.clone()));
            g.end(&p);
            break;
        }
        g.end(&p);
    }
    let (before, p) = retracted.expect("the pool over-commits and retracts");
    // The rule's order: sort by (outputs desc, prompt asc), retract from the end.
    let mut order = before.clone();
    order.sort_by_key(|&(_, out, prompt)| std::cmp::Reverse((out, std::cmp::Reverse(prompt))));
    let expected: Vec<RequestId> = order
        .iter()
        .rev()
        .take(p.preempted.len())
        .map(|x| x.0)
        .collect();
    assert_eq!(p.preempted, expected);
    assert!(p.preempted.len() < before.len(), "at least one is kept");
    for id in &p.preempted {
        let r = &g.reqs[id];
        assert_eq!((r.num_computed_tokens, r.preemptions), (0, 1));
        assert!(
            g.kv().held(*id).is_none(),
            "a retracted request holds nothing"
        );
    }
    // They rejoin the waiting queue's end, in retraction order.
    assert!(g.s.waiting().ends_with(&p.preempted));
    // The survivors decode this step, and the ratio is reset from them:
    // min(1, (sum outputs + 20 x survivors) / (sum max_new + 1)), outputs as they were when planned.
    let survivors: Vec<&(RequestId, u32, u32)> = before
        .iter()
        .filter(|x| !p.preempted.contains(&x.0))
        .collect();
    let decoded: u32 = survivors.iter().map(|x| x.1).sum();
    let want = ((decoded + 20 * survivors.len() as u32) as f64
        / (60 * survivors.len() as u32 + 1) as f64)
        .min(1.0);
    assert!(
        (g.s.new_token_ratio() - want).abs() < 1e-12,
        "{} vs {want}",
        g.s.new_token_ratio()
    );
    let scheduled: Vec<RequestId> = p.scheduled.iter().map(|x| x.0).collect();
    assert_eq!(scheduled.len(), survivors.len());
    // Everyone finishes in the end.
    for _ in 0..2000 {
        if g.finished.len() == 3 {
            break;
        }
        g.step();
    }
    assert_eq!(g.finished.len(), 3);
    assert_eq!(g.kv().available() + g.kv().tree().total_size(), 140);
}

#[test]
fn g11_cache_hit_rate_counts_hits_once_and_every_chunk_as_input() {
    // A 40-token system prompt is cached by request 1 (41 tokens computed, no hit); request 2 = it +
    // 100 new tokens, in 64-token chunks: round 1 hits 40 and computes 64, round 2 computes 36 with no
    // hit counted. cache_hit_rate = 40 / (40 + 41 + 64 + 36) = 40 / 181.
    let mut g = G::new(10_000, limits(10, Some(64), 1.0));
    g.add(1, &[(1, 40), (9, 1)], 1);
    g.step();
    assert_eq!(g.finished, vec![1]);
    g.add(2, &[(1, 40), (2, 100)], 1);
    assert_eq!(g.step().scheduled, vec![(2, 64)]);
    assert_eq!(g.s.chunked(), Some(2));
    assert_eq!(g.step().scheduled, vec![(2, 36)]);
    let st = g.kv().stats();
    let rx = st.radix.unwrap();
    // Request 1's 41 tokens counted input, no hit.
    assert_eq!((rx.hit_tokens, rx.input_tokens), (40, 41 + 100));
    // vLLM's counters: one query per admitted request, its tokens; hits 40.
    assert_eq!((st.prefix.queries, st.prefix.hits), (41 + 140, 40));
    assert_eq!(rx.cache_hit_rate(), Some(40.0 / 181.0));
}

#[test]
fn g7_dfs_weight_walks_heaviest_subtrees_first_and_a_nodes_requests_after_its_subtree() {
    let mut c = RadixCache::new();
    let (s, a, b, cc) = (run(1, 0, 10), run(2, 0, 5), run(3, 0, 5), run(4, 0, 6));
    // root -> S -> {A, B}, root -> C. S+A is inserted first, so A precedes B among S's children.
    c.insert(&[s, a], 1);
    c.insert(&[s, b], 2);
    c.insert(&[cc], 3);
    let x = |k: u64| run(10 + k, 0, 3);
    let keys = [
        vec![s, b, x(0)], // 0 -> B
        vec![cc, x(1)],   // 1 -> C
        vec![s, a, x(2)], // 2 -> A
        vec![s, b, x(3)], // 3 -> B
        vec![x(4)],       // 4 -> root
        vec![s, x(5)],    // 5 -> S
    ];
    let nodes: Vec<_> = keys.iter().map(|k| c.match_prefix(k, 4).node).collect();
    // Weights: B 2, A 1, S 1 + 3 = 4, C 1. Root's children: S (4) before C (1); S's: B (2) before A
    // (1); each node's requests after its subtree's: B's 0 and 3, A's 2, S's 5, C's 1, root's 4.
    assert_eq!(c.dfs_weight_order(&nodes), vec![0, 3, 2, 5, 1, 4]);
    // Equal weights keep the children dict's order: A (inserted first) before B.
    assert_eq!(c.dfs_weight_order(&[nodes[0], nodes[2]]), vec![1, 0]);
}

// ---- HiCache (H1-H4): a host tier below the tree. ----

use servesim::kv::radix::WritePolicy;
use servesim::kv::token_pool::HiCacheParams;

#[test]
fn h2_h3_write_through_copies_at_insertion_and_gpu_eviction_keeps_the_host_copy() {
    let mut c = RadixCache::new().with_host(100, WritePolicy::WriteThrough);
    c.insert(&[run(1, 0, 10)], 1);
    // The new node's insertion is its first hit: copied to host, locked until the copy is done.
    let w = c.take_writes();
    assert_eq!(w.len(), 1);
    assert_eq!(c.host_tier().unwrap().used, 10);
    assert_eq!(c.evict(10), 0, "a node being copied is locked");
    c.dec_lock_ref(w[0].0);
    // Evicted from the GPU, it stays in the tree, host-only.
    assert_eq!(c.evict(10), 10);
    assert_eq!((c.total_size(), c.host_tier().unwrap().used), (0, 10));
    c.debug_check();
    // H4: a match finds it after the GPU match (nothing on the GPU here).
    let m = c.match_tiers(&[run(1, 0, 10), run(2, 0, 5)], 2);
    assert_eq!((m.device.tokens, m.host_tokens), (0, 10));
    assert_eq!(c.load_back(m.host_node), 10);
    assert_eq!((c.total_size(), c.evictable_size()), (10, 10));
    c.debug_check();
}

#[test]
fn h2_selective_write_through_waits_for_a_second_hit_and_write_back_for_eviction() {
    let mut c = RadixCache::new().with_host(100, WritePolicy::WriteThroughSelective);
    c.insert(&[run(1, 0, 10)], 1);
    assert!(c.take_writes().is_empty());
    c.insert(&[run(1, 0, 10)], 2);
    assert_eq!(c.take_writes().len(), 1, "copied at the second hit");
    let mut b = RadixCache::new().with_host(100, WritePolicy::WriteBack);
    b.insert(&[run(1, 0, 10)], 1);
    b.insert(&[run(1, 0, 10)], 2);
    assert!(b.take_writes().is_empty());
    assert_eq!(b.host_tier().unwrap().used, 0);
    // Evicted: copied first, then off the GPU.
    assert_eq!(b.evict(1), 10);
    assert_eq!(b.host_tier().unwrap().used, 10);
    assert_eq!(b.match_tiers(&[run(1, 0, 10)], 3).host_tokens, 10);
    b.debug_check();
}

#[test]
fn h3_a_full_host_tier_deletes_its_least_recently_used_host_only_leaf() {
    let mut c = RadixCache::new().with_host(20, WritePolicy::WriteBack);
    c.insert(&[run(1, 0, 10)], 1);
    c.insert(&[run(2, 0, 10)], 2);
    assert_eq!(c.evict(20), 20);
    assert_eq!(c.host_tier().unwrap().used, 20);
    c.insert(&[run(3, 0, 10)], 3);
    // C's copy needs 10 host tokens: A (accessed at 1) is deleted, B (2) stays.
    assert_eq!(c.evict(10), 10);
    assert_eq!(
        c.leaf_keys(),
        vec![vec![run(2, 0, 10)], vec![run(3, 0, 10)]]
    );
    assert_eq!(c.host_tier().unwrap().evicted, 10);
    assert_eq!(c.match_tiers(&[run(1, 0, 10)], 4).host_tokens, 0);
    c.debug_check();
}

/// A pool of `gpu` tokens with a host tier of 200, 1,000 bytes per token over a 1 MB/s link (a token
/// copies in 1 ms).
fn hicache_pool(gpu: u64) -> TokenPool {
    TokenPool::new(gpu, true).with_hicache(HiCacheParams {
        host_tokens: 200,
        write_policy: WritePolicy::WriteThrough,
        bytes_per_token: 1000,
        link_bytes_per_s: 1e6,
    })
}

#[test]
fn h4_a_host_hit_of_at_least_10_tokens_is_loaded_back_and_a_shorter_one_recomputed() {
    for (shared, loads) in [(40u32, true), (9, false)] {
        let mut g = G::with_pool(hicache_pool(100), limits(10, Some(1000), 1.0));
        // Request 1 caches `shared` tokens of content 1 (then 1 more, its last prompt token), copied to
        // host as they are inserted.
        g.add(1, &[(1, shared), (9, 1)], 1);
        g.step();
        // Request 2 (95 tokens) needs more slots than are free, and the tree evicts: request 1's prefix
        // leaves the GPU but keeps its host copy. (While a copy to host runs, its node is locked: a
        // round in that time may admit nothing.)
        g.add(2, &[(2, 95)], 1);
        assert_eq!(g.step_until_scheduled().scheduled, vec![(2, 95)]);
        assert_eq!(
            g.kv().tree().total_size(),
            95,
            "only request 2's tokens on the GPU"
        );
        g.add(3, &[(1, shared), (3, 20)], 1);
        let p = loop {
            let p = g.plan();
            if !p.scheduled.is_empty() {
                break p;
            }
            g.end(&p);
        };
        let r = &g.reqs[&3];
        if loads {
            // 40 host tokens loaded (40 ms over the link), 20 computed.
            assert_eq!(p.scheduled, vec![(3, 20)]);
            assert_eq!(r.num_cached_tokens, Some(40));
            assert_eq!(r.cached_tokens_tier, [40, 0]);
            assert_eq!(p.kv_load, servesim::time::SimDuration(40_000_000));
        } else {
            // 9 host tokens: recomputed with the rest.
            assert_eq!(p.scheduled, vec![(3, 29)]);
            assert_eq!(r.num_cached_tokens, Some(0));
            assert_eq!(p.kv_load, servesim::time::SimDuration::ZERO);
        }
        g.end(&p);
        let rx = g.kv().stats().radix.unwrap();
        assert_eq!(rx.host_hit_tokens, if loads { 40 } else { 0 });
        assert_eq!(rx.loaded_tokens, if loads { 40 } else { 0 });
    }
}

#[test]
fn h2_a_request_held_back_only_by_a_copy_in_flight_wakes_when_it_ends() {
    let mut g = G::with_pool(hicache_pool(100), limits(10, Some(1000), 1.0));
    // Request 1's 60 tokens are inserted at its step's end and copied to host from the next round
    // (1 s), 60 ms over the link, locked meanwhile.
    g.add(1, &[(1, 60)], 1);
    g.step();
    // Request 2 needs 50 + 1 tokens, and 40 are free and none evictable: refused, nothing runs. The
    // scheduler asks to be woken when the copy ends (1.06 s), not at the next arrival.
    g.add(2, &[(2, 50)], 1);
    let (next, p) = g.plan_next();
    assert!(p.scheduled.is_empty());
    assert_eq!(next, Next::WakeAt(SimTime(1_060_000_000)));
    // At the wake the copy is done, the 60 tokens evictable, and request 2 runs.
    let mut plan = StepPlan::default();
    let next = g.s.schedule(SimTime(1_060_000_000), &mut g.reqs, &mut plan);
    assert_eq!((next, plan.scheduled), (Next::Run, vec![(2, 50)]));
}
