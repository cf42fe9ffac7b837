//! vLLM V1 rules (engine-semantics S1-S8, K5-K10, P1), each on a hand-built scenario whose expected result is
//! derived in a comment. Block size 16 throughout.

use servesim::config::SchedulingPolicy;
use servesim::kv::{KvCacheManager, KvStore};
use servesim::request::{Request, RequestId};
use servesim::scheduler::vllm_v1::{Limits, VllmScheduler};
use servesim::scheduler::{RequestTable, Scheduler, StepPlan};
use servesim::time::SimTime;
use servesim::workload::content::Segment;

/// A scheduler with its KV manager, and requests, stepped by hand. A step's end samples one token for every
/// request whose computed tokens reached its length (S7) and finishes it at `max_tokens`.
struct H {
    s: VllmScheduler<KvCacheManager>,
    reqs: RequestTable,
    finished: Vec<RequestId>,
}

fn limits(budget: u32, seqs: u32) -> Limits {
    Limits {
        max_num_batched_tokens: budget,
        max_num_seqs: seqs,
        max_model_len: 100_000,
        enable_chunked_prefill: true,
        long_prefill_token_threshold: 0,
        policy: SchedulingPolicy::Fcfs,
    }
}

impl H {
    fn new(blocks: u32, l: Limits) -> H {
        H {
            s: VllmScheduler::new(l, KvCacheManager::new(blocks, 16, true)),
            reqs: RequestTable::default(),
            finished: Vec::new(),
        }
    }

    /// Adds request `id` whose prompt is `segs` (content, tokens), generating up to `max_tokens`.
    fn add(&mut self, id: RequestId, segs: &[(u64, u32)], max_tokens: u32) {
        self.add_p(id, segs, max_tokens, 0);
    }

    fn add_p(&mut self, id: RequestId, segs: &[(u64, u32)], max_tokens: u32, prio: i64) {
        let prompt = segs
            .iter()
            .map(|&(c, len)| Segment { content: c, len })
            .collect();
        let mut r = Request::new(id, id, 1, prio, SimTime(id), prompt, 1000 + id, max_tokens);
        r.update_block_hashes(16);
        self.s.add_request(&r);
        self.reqs.insert(id, Box::new(r));
    }

    fn step(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        self.s.schedule(SimTime::ZERO, &mut self.reqs, &mut plan);
        let mut done = Vec::new();
        for &(id, _) in &plan.scheduled {
            let r = self.reqs.get_mut(&id).unwrap();
            if r.num_computed_tokens == r.num_tokens() {
                r.num_output_tokens += 1;
                r.in_prefill = false;
                r.update_block_hashes(16);
                if r.num_output_tokens >= r.max_tokens {
                    done.push(id);
                }
            }
        }
        self.s.finish_requests(&done, servesim::time::SimTime::ZERO);
        for id in done {
            let mut r = self.reqs.remove(&id).unwrap();
            self.s.kv_mut().free(&mut r);
            self.finished.push(id);
        }
        self.s.kv().check_invariants(&self.reqs).unwrap();
        plan
    }

    fn kv(&self) -> &KvCacheManager {
        self.s.store()
    }

    fn r(&self, id: RequestId) -> &Request {
        &self.reqs[&id]
    }
}

#[test]
fn s2_s3_one_budget_running_first_then_waiting_chunked() {
    // Budget 100. A (60 tokens) and B (60) wait. Step 1: A gets 60, B the remaining 40 (a chunk).
    // Step 2: running first: A decodes 1, B finishes its prefill with 20; then C (50) is admitted with 50.
    let mut h = H::new(100, limits(100, 16));
    h.add(1, &[(1, 60)], 10);
    h.add(2, &[(2, 60)], 10);
    assert_eq!(h.step().scheduled, vec![(1, 60), (2, 40)]);
    h.add(3, &[(3, 50)], 10);
    assert_eq!(h.step().scheduled, vec![(1, 1), (2, 20), (3, 50)]);
}

#[test]
fn s7_partial_prefill_chunks_sample_nothing() {
    // Budget 32, prompt 80: chunks of 32, 32, 16; only the third step samples (TTFT ends there).
    let mut h = H::new(100, limits(32, 16));
    h.add(1, &[(1, 80)], 5);
    h.step();
    assert_eq!(h.r(1).num_output_tokens, 0);
    h.step();
    assert_eq!(h.r(1).num_output_tokens, 0);
    assert_eq!(h.step().scheduled, vec![(1, 16)]);
    assert_eq!(h.r(1).num_output_tokens, 1);
}

#[test]
fn s3_long_prefill_threshold_caps_chunks() {
    // Threshold 24: a 60-token prompt is computed 24 + 24 + 12 even with budget to spare.
    let mut l = limits(1000, 16);
    l.long_prefill_token_threshold = 24;
    let mut h = H::new(100, l);
    h.add(1, &[(1, 60)], 5);
    assert_eq!(h.step().scheduled, vec![(1, 24)]);
    assert_eq!(h.step().scheduled, vec![(1, 24)]);
    assert_eq!(h.step().scheduled, vec![(1, 12)]);
}

#[test]
fn s5_chunking_off_blocks_the_head_and_the_queue() {
    // Chunked prefill off, budget 100: A (60) fits; B (60) does not fit the remaining 40, so Phase B stops;
    // C (10) behind it is not admitted either (head-of-line blocking).
    let mut l = limits(100, 16);
    l.enable_chunked_prefill = false;
    let mut h = H::new(100, l);
    h.add(1, &[(1, 60)], 10);
    h.add(2, &[(2, 60)], 10);
    h.add(3, &[(3, 10)], 10);
    assert_eq!(h.step().scheduled, vec![(1, 60)]);
}

#[test]
fn s5_max_num_seqs_caps_running() {
    // max_num_seqs 2: of three small waiting requests only two are admitted.
    let mut h = H::new(100, limits(1000, 2));
    for id in 1..=3 {
        h.add(id, &[(id, 10)], 10);
    }
    assert_eq!(h.step().scheduled.len(), 2);
    assert_eq!(h.step().scheduled, vec![(1, 1), (2, 1)]);
}

#[test]
fn s5_failed_allocation_stops_admission() {
    // 4 usable blocks (N = 5). A needs 3 blocks (40 tokens), B needs 2 (20 tokens) but only 1 is left:
    // B fails and C (10 tokens, 1 block) behind it is not admitted though it would fit.
    let mut h = H::new(5, limits(1000, 16));
    h.add(1, &[(1, 40)], 50);
    h.add(2, &[(2, 20)], 50);
    h.add(3, &[(3, 10)], 50);
    assert_eq!(h.step().scheduled, vec![(1, 40)]);
    assert_eq!(h.s.waiting_ids(), vec![2, 3]);
}

#[test]
fn s4_fcfs_preempts_last_running_and_skips_admission() {
    // 4 usable blocks. A (32 tokens) and B (32 tokens) are admitted: 2 blocks each, pool full.
    // Step 2: A decodes its token 33, which needs a 3rd block: none free, so the last running request (B)
    // is preempted: its blocks are freed, computed reset, it goes to the head of waiting; A then allocates.
    // C, waiting, is not admitted in this step (a preemption happened), though blocks remain.
    let mut h = H::new(5, limits(1000, 16));
    h.add(1, &[(1, 32)], 50);
    h.add(2, &[(2, 32)], 50);
    assert_eq!(h.step().scheduled, vec![(1, 32), (2, 32)]);
    h.add(3, &[(3, 5)], 50);
    let p = h.step();
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(p.scheduled, vec![(1, 1)]);
    assert_eq!(h.s.running(), &[1]);
    assert_eq!(h.s.waiting_ids(), vec![2, 3]);
    let b = h.r(2);
    assert_eq!(
        (
            b.num_computed_tokens,
            b.preemptions,
            b.kv.num_blocks_held() as usize
        ),
        (0, 1, 0)
    );
    // B keeps its output token: on resume it recomputes prompt + output (33 tokens).
    assert_eq!(b.num_tokens(), 33);
}

#[test]
fn s4_fcfs_self_preemption_schedules_nothing() {
    // 2 usable blocks (N = 3). A's 32-token prompt fills both; after its first token it needs a third. It
    // is the last (only) running request, so it is its own victim: preempted, Phase A ends, and admission
    // is skipped after a preemption: the step schedules nothing.
    let mut h = H::new(3, limits(1000, 16));
    h.add(1, &[(1, 32)], 50);
    h.step();
    let p = h.step();
    assert_eq!(p.preempted, vec![1]);
    assert!(p.scheduled.is_empty());
    assert_eq!(h.s.waiting_ids(), vec![1]);
}

fn priority_limits() -> Limits {
    let mut l = limits(1000, 16);
    l.policy = SchedulingPolicy::Priority;
    l
}

#[test]
fn s4_priority_self_preemption_ends_phase_a_for_later_requests() {
    // Priority scheduling, 4 usable blocks. Step 1 admits A (priority 0, 10 tokens, 1 block) and B (priority
    // 9, 31 tokens, 2 blocks). Step 2: A and B decode within their blocks (B reaches 33 tokens), C (priority
    // 0, 10 tokens) takes the last block. Running = [A, B, C]. Step 3: A decodes; B needs a third block and
    // none is free; the victim is the worst (priority, arrival) = B itself, so Phase A ends and C, after B
    // in the list, gets nothing this step although it needs no new block.
    let mut h = H::new(5, priority_limits());
    h.add_p(1, &[(1, 10)], 50, 0);
    h.add_p(2, &[(2, 31)], 50, 9);
    assert_eq!(h.step().scheduled, vec![(1, 10), (2, 31)]);
    h.add_p(3, &[(3, 10)], 50, 0);
    assert_eq!(h.step().scheduled, vec![(1, 1), (2, 1), (3, 10)]);
    let p = h.step();
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(p.scheduled, vec![(1, 1)]);
}

#[test]
fn s4_priority_victim_scheduled_earlier_returns_its_tokens() {
    // Priority scheduling, 3 usable blocks. A (priority 9, 10 tokens) is admitted in step 1; B (priority 0,
    // 32 tokens, 2 blocks) in step 2, filling the pool; running = [A, B]. Step 3: A is scheduled for 1
    // token; B needs a third block; the victim is A (worst priority), already scheduled this step: its
    // token goes back to the budget and it leaves the plan; its block lets B proceed.
    let mut h = H::new(4, priority_limits());
    h.add_p(1, &[(1, 10)], 50, 9);
    h.step();
    h.add_p(2, &[(2, 32)], 50, 0);
    assert_eq!(h.step().scheduled, vec![(1, 1), (2, 32)]);
    let p = h.step();
    assert_eq!(p.preempted, vec![1]);
    assert_eq!(p.scheduled, vec![(2, 1)]);
    assert_eq!(p.total_tokens(), 1);
}

#[test]
fn k6_lookup_caps_at_num_tokens_minus_one() {
    // A 32-token prompt fully cached by an earlier identical request: floor((32 - 1) / 16) = 1 block hit,
    // so 16 tokens are recomputed (the last token's logits are needed).
    let mut h = H::new(100, limits(1000, 16));
    h.add(1, &[(7, 32)], 1);
    h.step(); // computes and caches both blocks, finishes (max_tokens 1)
    h.add(2, &[(7, 32)], 1);
    let p = h.step();
    assert_eq!(p.scheduled, vec![(2, 16)]);
    assert_eq!(h.kv().prefix_stats().hits, 16);
    assert_eq!(h.kv().prefix_stats().queries, 64);
}

#[test]
fn k6_lookup_stops_at_first_miss() {
    // A: blocks [a0 a1 a2]. B shares block 0, differs in block 1, and by content equals... nothing after:
    // the walk stops at block 1 even though no later block could match anyway; C = A's first 2 blocks
    // then new content: hits 2 blocks (32 tokens).
    let mut h = H::new(100, limits(1000, 16));
    h.add(1, &[(1, 16), (2, 16), (3, 16)], 1);
    h.step();
    h.add(2, &[(1, 16), (9, 16), (3, 16)], 1);
    h.add(3, &[(1, 16), (2, 16), (8, 20)], 1);
    let p = h.step();
    assert_eq!(p.scheduled, vec![(2, 32), (3, 20)]);
}

#[test]
fn k7_admission_counts_hit_blocks_leaving_the_free_queue() {
    // 4 usable blocks. A (32 tokens) runs and finishes: its 2 cached blocks go back to the free queue.
    // B = A's 32 tokens + 33 new = 65 tokens: hit 2 blocks, needs ceil(65/16) = 5 blocks in all, i.e. 3 new
    // + 2 hit blocks that leave the free queue = 5 > 4 free: refused, though only 3 "new" blocks are needed.
    // C = A's 32 + 16 new = 48 tokens: 1 new + 2 hits = 3 <= 4: admitted.
    let mut h = H::new(5, limits(1000, 16));
    h.add(1, &[(1, 32)], 1);
    h.step();
    h.add(2, &[(1, 32), (2, 33)], 1);
    assert!(h.step().scheduled.is_empty());
    let mut h = H::new(5, limits(1000, 16));
    h.add(1, &[(1, 32)], 1);
    h.step();
    h.add(3, &[(1, 32), (3, 16)], 1);
    assert_eq!(h.step().scheduled, vec![(3, 16)]);
}

#[test]
fn k8_blocks_registered_at_schedule_time_hit_in_the_same_step() {
    // A and B share a 48-token prefix and arrive together. A is scheduled first and registers its full
    // blocks before the forward pass; B, later in the same step, hits 3 blocks (48 tokens).
    let mut h = H::new(100, limits(1000, 16));
    h.add(1, &[(1, 48), (2, 10)], 5);
    h.add(2, &[(1, 48), (3, 10)], 5);
    let p = h.step();
    assert_eq!(p.scheduled, vec![(1, 58), (2, 10)]);
    assert_eq!(h.r(2).num_cached_tokens, Some(48));
}

#[test]
fn k5_output_tokens_extend_hashes_for_the_next_turn() {
    // A: 20-token prompt, generates 30 tokens (50 in all, 3 full blocks: the first 48 tokens). The next
    // turn's prompt is A's prompt + A's response (content 1000 + 1, 30 tokens) + 5 new tokens = 55 tokens:
    // it hits all 3 blocks (48 tokens), including 28 tokens the model generated.
    let mut h = H::new(100, limits(1000, 16));
    h.add(1, &[(1, 20)], 30);
    while !h.finished.contains(&1) {
        h.step();
    }
    h.add(2, &[(1, 20), (1001, 30), (5, 5)], 1);
    assert_eq!(h.step().scheduled, vec![(2, 55 - 48)]);
}

#[test]
fn k10_preempted_request_recovers_its_surviving_cached_blocks() {
    // 4 usable blocks. Step 1: A (32 tokens, max 2 outputs) and B (32 tokens) take 2 blocks each and
    // register them. Step 2: A's 33rd token needs a 3rd block, so B (last) is preempted: K3 frees B's blocks
    // last first, queue = [B1, B0], and A's new block comes from the head: B1, whose cached content is
    // evicted. A then finishes (2 outputs) and frees its blocks. Step 3: B is readmitted; its lookup finds
    // B0 (16 tokens) but not B1, so it recomputes 33 - 16 = 17 tokens (its prompt and its output token).
    // The lookup counts as a preempted query (P1): 33 queried, 16 hit, outside the exported counters.
    let mut h = H::new(5, limits(1000, 16));
    h.add(1, &[(1, 32)], 2);
    h.add(2, &[(2, 32)], 50);
    h.step();
    let before = h.kv().prefix_stats();
    let p = h.step();
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(p.scheduled, vec![(1, 1)]);
    assert!(h.finished.contains(&1));
    assert_eq!(h.kv().evictions(), 1);
    let p = h.step();
    assert_eq!(p.scheduled, vec![(2, 17)]);
    let st = h.kv().prefix_stats();
    assert_eq!((st.preempted_queries, st.preempted_hits), (33, 16));
    assert_eq!((st.queries, st.hits), (before.queries, before.hits));
}

#[test]
fn p1_a_lookup_is_counted_once_at_admission() {
    // Current vLLM (PR #48860): a lookup is recorded when its request is admitted, not each step a blocked
    // head is looked up again. 4 usable blocks; A (47 tokens, 2 outputs) takes 3 blocks in step 1 and
    // finishes in step 2. B (32 tokens, 2 blocks) arrives after step 1: in step 2 only 1 block is free, so
    // B is looked up and blocked, counting nothing; in step 3 A's blocks are back and B is admitted,
    // counting its 32 queried tokens once. Under the older rule B would have counted 64 by then.
    let mut h = H::new(5, limits(1000, 16));
    h.add(1, &[(1, 47)], 2);
    h.step();
    let q0 = h.kv().prefix_stats().queries;
    assert_eq!(q0, 47);
    h.add(2, &[(2, 32)], 1);
    let p = h.step();
    assert_eq!(p.scheduled, vec![(1, 1)]);
    assert!(h.finished.contains(&1));
    assert_eq!(
        h.kv().prefix_stats().queries,
        q0,
        "a blocked head counts nothing"
    );
    let p = h.step();
    assert_eq!(p.scheduled, vec![(2, 32)]);
    assert_eq!(h.kv().prefix_stats().queries - q0, 32);
}

#[test]
fn stress_preemption_lifo_no_admission_conservation() {
    // Many long-generating requests on a small pool force repeated preemption. Every step: the victims are
    // the tail of the running list (LIFO, last first), no waiting request is admitted in a step that
    // preempted, and the pool's invariants hold (checked inside `step`).
    let mut h = H::new(40, limits(256, 64));
    for id in 0..30 {
        h.add(
            id,
            &[(id, 40 + (id as u32 * 7) % 50)],
            60 + (id as u32 * 13) % 80,
        );
    }
    let mut preemptions = 0;
    for _ in 0..5000 {
        if h.reqs.is_empty() {
            break;
        }
        let running_before = h.s.running().to_vec();
        let waiting_before = h.s.waiting_ids();
        let p = h.step();
        if !p.preempted.is_empty() {
            preemptions += p.preempted.len();
            let k = p.preempted.len();
            let tail: Vec<_> = running_before[running_before.len() - k..]
                .iter()
                .rev()
                .copied()
                .collect();
            assert_eq!(
                p.preempted, tail,
                "victims are the last admitted, last first"
            );
            for (id, _) in &p.scheduled {
                assert!(
                    !waiting_before.contains(id),
                    "admitted {id} in a preempting step"
                );
            }
        }
        // KV conservation: used + free = usable, and used = blocks held by requests.
        let held: usize = h
            .reqs
            .values()
            .map(|r| r.kv.num_blocks_held() as usize)
            .sum();
        assert_eq!(h.kv().num_used() + h.kv().num_free(), 39);
        assert!(h.kv().num_used() as usize <= held);
    }
    assert!(h.reqs.is_empty(), "all requests finish");
    assert_eq!(h.finished.len(), 30);
    assert!(preemptions > 10, "the scenario must preempt: {preemptions}");
}

#[test]
fn abort_removes_a_running_or_waiting_request_and_frees_its_blocks() {
    // 10 usable blocks of 16. A (40 tokens) runs after step 1 with 3 blocks; B (200 tokens, 13 blocks)
    // cannot be admitted, so it waits. Aborting A frees its 3 blocks and leaves the running set empty;
    // aborting B empties the waiting queue; a third abort of either finds nothing.
    for policy in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
        let mut h = H::new(
            11,
            Limits {
                policy,
                ..limits(1000, 16)
            },
        );
        h.add(1, &[(1, 40)], 50);
        h.add(2, &[(2, 200)], 50);
        assert_eq!(h.step().scheduled, vec![(1, 40)]);
        assert_eq!((h.s.num_running(), h.s.num_waiting()), (1, 1));
        assert_eq!(h.kv().num_free(), 10 - 3);
        let a = h.reqs.remove(&1).unwrap();
        assert!(h.s.abort(&a));
        let mut a = *a;
        h.s.kv_mut().free(&mut a);
        assert_eq!(h.kv().num_free(), 10);
        let b = h.reqs.remove(&2).unwrap();
        assert!(h.s.abort(&b));
        assert_eq!((h.s.num_running(), h.s.num_waiting()), (0, 0));
        assert!(!h.s.abort(&a) && !h.s.abort(&b));
        assert!(h.step().scheduled.is_empty());
    }
}
