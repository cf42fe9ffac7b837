//! vLLM V1's scheduler (engine-semantics S1-S8): one token budget per step shared by running and waiting
//! requests, running requests first in admission order, chunked prefill, LIFO (or worst-priority)
//! preemption with recompute, and an all-or-nothing, head-of-line-blocking admission of the waiting queue.

use super::waiting::WaitingQueue;
use super::{Next, RequestTable, Scheduler, StepPlan};
use crate::config::SchedulingPolicy;
use crate::kv::{CacheHit, ExternalHit, KvStore};
use crate::request::{PdStage, Request, RequestId};
use crate::time::SimDuration;
use crate::time::SimTime;
use std::collections::VecDeque;

/// The limits of one engine (resolved as vLLM resolves them, see `kv::sizing`).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_num_batched_tokens: u32,
    pub max_num_seqs: u32,
    pub max_model_len: u32,
    pub enable_chunked_prefill: bool,
    /// 0 = off.
    pub long_prefill_token_threshold: u32,
    pub policy: SchedulingPolicy,
}

/// vLLM V1's scheduler over KV store `K` (vLLM's own is the paged [`crate::kv::KvCacheManager`]).
#[derive(Clone, Debug)]
pub struct VllmScheduler<K> {
    limits: Limits,
    kv: K,
    waiting: WaitingQueue,
    /// Admission order.
    running: Vec<RequestId>,
    /// Requests admitted with an asynchronous load from a lower tier (O3, vLLM's
    /// `WAITING_FOR_REMOTE_KVS`): their blocks are allocated, and they rejoin the waiting queue's front
    /// at the first step planned at or after their copy is done. In admission order.
    loading: Vec<(RequestId, SimTime)>,
    /// Speculative decoding (`[engine.speculative]`); None: off.
    spec: Option<SpecDecode>,
    /// A disaggregated decode instance's KV connector; None elsewhere.
    remote: Option<RemoteKv>,
}

/// A decode instance's KV connector (vLLM's NIXL connector): a request prefilled elsewhere pulls its
/// prompt's KV, past its local prefix hit, into blocks allocated at admission, and waits for the pull
/// (`WAITING_FOR_REMOTE_KVS`) before it is scheduled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RemoteKv {
    /// KV bytes per token, every layer.
    pub bytes_per_token: u64,
    /// The link's bytes per second, every GPU's share together.
    pub bytes_per_s: f64,
    /// Time each pull takes besides its bytes.
    pub latency: SimDuration,
}

impl RemoteKv {
    /// How long pulling `tokens` tokens' KV takes: latency + tokens x bytes per token / bandwidth,
    /// rounded to the nanosecond.
    pub fn transfer_time(&self, tokens: u32) -> SimDuration {
        self.latency
            + SimDuration::from_secs_f64(
                tokens as f64 * self.bytes_per_token as f64 / self.bytes_per_s,
            )
    }
}

/// What speculative decoding changes in the scheduler (vLLM V1's `num_spec_tokens` and
/// `num_lookahead_tokens`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecDecode {
    /// Draft tokens a decoding request carries into each step, k: it schedules 1 + k tokens.
    pub num_speculative_tokens: u32,
    /// Slots allocated beyond the scheduled tokens for the drafter's next proposals: k for drafters
    /// that write KV (EAGLE, a draft model), 0 for n-gram; none for a fresh prefill.
    pub num_lookahead_tokens: u32,
}

impl<K: KvStore> VllmScheduler<K> {
    pub fn new(limits: Limits, kv: K) -> VllmScheduler<K> {
        let waiting = match limits.policy {
            SchedulingPolicy::Fcfs => WaitingQueue::Fcfs(VecDeque::new()),
            SchedulingPolicy::Priority => WaitingQueue::Priority(Default::default()),
        };
        VllmScheduler {
            limits,
            kv,
            waiting,
            running: Vec::new(),
            loading: Vec::new(),
            spec: None,
            remote: None,
        }
    }

    /// Makes it a disaggregated decode instance pulling prompts' KV over `link`.
    pub fn with_remote_kv(mut self, link: RemoteKv) -> Self {
        self.remote = Some(link);
        self
    }

    /// Turns speculative decoding on: decoding requests schedule their draft tokens too.
    pub fn with_speculation(mut self, spec: SpecDecode) -> Self {
        self.spec = Some(spec);
        self
    }

    /// The KV store, as its own type (tests).
    pub fn store(&self) -> &K {
        &self.kv
    }

    pub fn running(&self) -> &[RequestId] {
        &self.running
    }

    pub fn waiting_ids(&self) -> Vec<RequestId> {
        self.waiting.ids()
    }

    /// S4: the victim's index in `running`: the last one under FCFS, the largest (priority, arrival) under
    /// priority scheduling (the latest of equals; ties broken by the later position, as `max` over a list
    /// keeps the first maximum only when keys differ, and keys include arrival).
    fn victim_index(&self, reqs: &RequestTable) -> usize {
        match self.limits.policy {
            SchedulingPolicy::Fcfs => self.running.len() - 1,
            SchedulingPolicy::Priority => {
                let mut best = 0;
                for (i, id) in self.running.iter().enumerate() {
                    let (r, b) = (&reqs[id], &reqs[&self.running[best]]);
                    if (r.priority, r.arrival) > (b.priority, b.arrival) {
                        best = i;
                    }
                }
                best
            }
        }
    }

    fn preempt(&mut self, idx: usize, reqs: &mut RequestTable) -> RequestId {
        let id = self.running.remove(idx);
        let r = reqs.get_mut(&id).expect("running request in table");
        self.kv.free(r);
        r.num_computed_tokens = 0;
        r.preemptions += 1;
        r.was_preempted = true;
        r.in_prefill = false;
        self.waiting.push_front(r);
        id
    }
    /// Phase B's admission loop (S5): requests back from a load first, then the waiting queue in order,
    /// each all or nothing, until the budget, `max_num_seqs` or an allocation stops it.
    fn admit(
        &mut self,
        now: SimTime,
        reqs: &mut RequestTable,
        plan: &mut StepPlan,
        budget: &mut u32,
    ) {
        // O3: requests whose load is done rejoin the queue's front, in the order they were parked.
        if self.loading.iter().any(|&(_, t)| t <= now) {
            let ready: Vec<RequestId> = self
                .loading
                .iter()
                .filter(|&&(_, t)| t <= now)
                .map(|&(id, _)| id)
                .collect();
            self.loading.retain(|&(_, t)| t > now);
            for id in ready.into_iter().rev() {
                self.waiting.push_front(&reqs[&id]);
            }
        }
        while *budget > 0 && (self.running.len() as u32) < self.limits.max_num_seqs {
            let Some(id) = self.waiting.peek() else { break };
            let r = reqs.get_mut(&id).expect("waiting request in table");
            // Back from a load it holds blocks (and may have nothing computed: a one-token prompt
            // pulled whole, its token to recompute); it is not looked up again.
            let looked_up = r.num_computed_tokens == 0 && r.kv.num_blocks_held() == 0;
            let (hit, ext) = if looked_up {
                let hit = self.kv.get_computed_blocks(r);
                let ext = self.kv.get_external_hit(r, hit.tokens);
                (hit, ext)
            } else {
                (CacheHit::default(), ExternalHit::default())
            };
            if looked_up
                && r.pd
                    .as_ref()
                    .is_some_and(|p| p.stage == PdStage::Decode { remote_kv: true })
            {
                let link = self
                    .remote
                    .expect("a request prefilled elsewhere goes to a decode instance");
                if !self.pull_remote(id, now, reqs, hit, link, plan) {
                    break;
                }
                continue;
            }
            let computed = r.num_computed_tokens + hit.tokens + ext.computed;
            let mut n = r.num_tokens() - computed;
            if self.limits.long_prefill_token_threshold > 0 {
                n = n.min(self.limits.long_prefill_token_threshold);
            }
            if !ext.asynchronous && !self.limits.enable_chunked_prefill && n > *budget {
                break;
            }
            n = n.min(*budget);
            // An asynchronous load allocates only the loaded tokens now; a synchronous one also
            // the step's new tokens. Loaded tokens never count against the budget.
            // vLLM reserves lookahead slots for a resumed request, none for a fresh prefill.
            let lookahead = match self.spec {
                Some(sp) if !looked_up && !ext.asynchronous => sp.num_lookahead_tokens,
                _ => 0,
            };
            let alloc = if ext.asynchronous { 0 } else { n + lookahead } + ext.tokens();
            let hit_tokens = hit.tokens;
            if !self.kv.allocate_slots(r, alloc, hit) {
                break;
            }
            self.waiting.pop();
            if looked_up {
                self.kv.record_admission(r, hit_tokens);
                self.kv.record_external(r, &ext);
            }
            r.num_computed_tokens = computed;
            if r.num_cached_tokens.is_none() {
                r.num_cached_tokens = Some(computed);
                r.cached_tokens_tier = ext.computed_by_tier();
                r.kv_load = ext.load;
            }
            if ext.asynchronous {
                self.loading.push((id, now + ext.load));
                continue;
            }
            plan.kv_load += ext.load;
            // A request whose prompt was pulled from a prefill instance computes its one remaining
            // token as a decode row (vLLM's attention backends class a one-token query as decode).
            r.in_prefill = !(n == 1
                && r.pd
                    .as_ref()
                    .is_some_and(|p| matches!(p.stage, PdStage::Decode { .. })));
            self.running.push(id);
            plan.scheduled.push((id, n));
            *budget -= n;
        }
    }

    /// Admits waiting head `id`, prefilled on another instance, as vLLM's scheduler does with a KV
    /// connector's asynchronous hit: blocks for the whole prompt (its local `hit` and the tokens pulled),
    /// the pull started, the request parked until it lands. A pull that would complete the request
    /// counts one token less as computed (`_update_waiting_for_remote_kv`): the decode instance
    /// recomputes that token to sample. False, changing nothing, when the blocks do not fit.
    fn pull_remote(
        &mut self,
        id: RequestId,
        now: SimTime,
        reqs: &mut RequestTable,
        hit: CacheHit,
        link: RemoteKv,
        plan: &mut StepPlan,
    ) -> bool {
        let r = reqs.get_mut(&id).expect("waiting request in table");
        let pulled = r.prompt_tokens.saturating_sub(hit.tokens);
        let hit_tokens = hit.tokens;
        if !self.kv.allocate_slots(r, pulled, hit) {
            return false;
        }
        self.waiting.pop();
        self.kv.record_admission(r, hit_tokens);
        let upto = hit_tokens + pulled;
        r.num_computed_tokens = if upto >= r.num_tokens() {
            upto - 1
        } else {
            upto
        };
        r.num_cached_tokens.get_or_insert(hit_tokens);
        let lands = now + link.transfer_time(pulled);
        let pd = r.pd.as_mut().expect("a disaggregated request");
        pd.stage = PdStage::Decode { remote_kv: false };
        pd.transfer_start = Some(now);
        pd.transfer_end = Some(lands);
        pd.transfer_bytes = pulled as u64 * link.bytes_per_token;
        plan.transfers.push((id, pd.prefill_replica, lands));
        if lands == now {
            // An instant pull (an unbounded link): admitted in this very pass.
            self.waiting.push_front(r);
        } else {
            self.loading.push((id, lands));
        }
        true
    }

    /// Every waiting request that holds blocks (back from a load) releases them and will be looked up
    /// again (see `schedule`); true if there was one.
    fn release_loaded(&mut self, reqs: &mut RequestTable, plan: &mut StepPlan) -> bool {
        let mut any = false;
        for id in self.waiting.ids() {
            let r = reqs.get_mut(&id).expect("waiting request in table");
            if r.num_computed_tokens > 0 || r.kv.num_blocks_held() > 0 {
                self.kv.free(r);
                r.num_computed_tokens = 0;
                r.preemptions += 1;
                r.was_preempted = true;
                plan.preempted.push(id);
                any = true;
            }
        }
        any
    }
}

/// The tokens a running request schedules this step (S3): what it has not computed, its draft tokens
/// included when it decodes with `drafts` of them, capped by the long-prefill threshold, the budget, and
/// `max_model_len - 1`.
fn tokens_wanted(r: &Request, limits: &Limits, computed: u32, budget: u32, drafts: u32) -> u32 {
    let drafts = if r.in_prefill { 0 } else { drafts };
    let mut n = r.num_tokens() + drafts - computed;
    if limits.long_prefill_token_threshold > 0 {
        n = n.min(limits.long_prefill_token_threshold);
    }
    n = n.min(budget);
    // S3: never compute past max_model_len - 1.
    n.min(
        limits
            .max_model_len
            .saturating_sub(1)
            .saturating_sub(computed),
    )
}

impl<K: KvStore> Scheduler for VllmScheduler<K> {
    type Kv = K;

    fn add_request(&mut self, req: &Request) {
        self.waiting.push_back(req);
    }

    fn schedule(&mut self, now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
        plan.clear();
        let mut budget = self.limits.max_num_batched_tokens;

        // Phase A (S3/S4): running requests in admission order.
        let mut i = 0;
        'phase_a: while i < self.running.len() && budget > 0 {
            // Each running request's counters are a cache miss of their own (a few hundred requests,
            // each in its own allocation): a few are fetched ahead.
            if let Some(r) = self
                .running
                .get(i + crate::kv::PREFETCH_AHEAD)
                .and_then(|a| reqs.get(a))
            {
                crate::kv::prefetch_ptr(&r.num_computed_tokens);
            }
            let id = self.running[i];
            let r = reqs.get_mut(&id).expect("running request in table");
            let (drafts, lookahead) = self.spec.map_or((0, 0), |sp| {
                (sp.num_speculative_tokens, sp.num_lookahead_tokens)
            });
            let n = tokens_wanted(r, &self.limits, r.num_computed_tokens, budget, drafts);
            if n == 0 {
                i += 1;
                continue;
            }
            loop {
                let r = reqs.get_mut(&id).expect("running request in table");
                if self
                    .kv
                    .allocate_slots(r, n + lookahead, CacheHit::default())
                {
                    plan.scheduled.push((id, n));
                    budget -= n;
                    i += 1;
                    break;
                }
                let v = self.victim_index(reqs);
                let victim = self.running[v];
                // A victim already scheduled this step gives its tokens back.
                if let Some(pos) = plan.scheduled.iter().position(|&(s, _)| s == victim) {
                    budget += plan.scheduled.remove(pos).1;
                }
                self.preempt(v, reqs);
                plan.preempted.push(victim);
                if victim == id {
                    break 'phase_a;
                }
                if v < i {
                    i -= 1;
                }
            }
        }

        // Phase B (S5): admit from the waiting queue only if this step preempted no one.
        if plan.preempted.is_empty() {
            self.admit(now, reqs, plan, &mut budget);
            // Requests back from a load hold blocks that nothing preempts (they are not running): with
            // nothing running or loading, a head that cannot be admitted would wait forever, as vLLM
            // would. They give their blocks back instead (preemptions; the blocks stay cached, so their
            // next lookup finds them) and admission runs again: a lone request always fits.
            if plan.scheduled.is_empty()
                && self.running.is_empty()
                && self.loading.is_empty()
                && self.release_loaded(reqs, plan)
            {
                self.admit(now, reqs, plan, &mut budget);
            }
        }

        // S6: computed advances at once, before the forward pass.
        for &(id, n) in &plan.scheduled {
            reqs.get_mut(&id).expect("scheduled").num_computed_tokens += n;
        }
        // vLLM never waits for anything but an arrival; in a run it then holds nothing (sizing guarantees
        // a lone max_model_len sequence fits), which the replica checks.
        // A request waiting for its load wakes the replica when the copy is done.
        match self.loading.iter().map(|&(_, t)| t).min() {
            _ if !plan.scheduled.is_empty() => Next::Run,
            Some(t) => Next::WakeAt(t.max(now + crate::time::SimDuration(1))),
            None => Next::Idle,
        }
    }

    fn kv(&self) -> &K {
        &self.kv
    }

    fn kv_mut(&mut self) -> &mut K {
        &mut self.kv
    }

    fn abort(&mut self, req: &Request) -> bool {
        match self.running.iter().position(|&id| id == req.id) {
            Some(i) => {
                self.running.remove(i);
                true
            }
            None => match self.loading.iter().position(|&(id, _)| id == req.id) {
                Some(i) => {
                    self.loading.remove(i);
                    true
                }
                None => self.waiting.remove(req),
            },
        }
    }

    fn finish_requests(&mut self, finished: &[RequestId], _now: SimTime) {
        if !finished.is_empty() {
            self.running.retain(|id| !finished.contains(id));
        }
    }

    /// Waiting requests, those waiting for a load included (as vLLM counts them).
    fn num_waiting(&self) -> usize {
        self.waiting.len() + self.loading.len()
    }

    fn num_running(&self) -> usize {
        self.running.len()
    }

    fn all_requests(&self) -> Vec<RequestId> {
        let mut v = self.waiting.ids();
        v.extend(self.loading.iter().map(|&(id, _)| id));
        v.extend_from_slice(&self.running);
        v
    }

    fn steady_decode(&self, reqs: &RequestTable) -> Option<&[RequestId]> {
        // Phase B would run (and might admit) whenever something waits, so nothing may wait. A
        // speculative step's outcome is a draw per request (leap contract, condition 9).
        if self.spec.is_some()
            || !self.waiting.is_empty()
            || !self.loading.is_empty()
            || self.running.is_empty()
            || self.running.len() as u64 > self.limits.max_num_batched_tokens as u64
        {
            return None;
        }
        let all_decode = self.running.iter().all(|id| {
            let r = &reqs[id];
            !r.in_prefill
                && r.num_computed_tokens + 1 == r.num_tokens()
                && r.num_computed_tokens + 1 < self.limits.max_model_len
        });
        all_decode.then_some(&self.running[..])
    }
}
