//! `engine.kind = "sglang"`: SGLang's scheduler (`python/sglang/srt/managers/{scheduler,schedule_policy,
//! schedule_batch}.py`; engine-semantics G6-G10) over its token pool and radix cache
//! ([`TokenPool`], `kv/token_pool.rs`).
//!
//! Each round (`get_next_batch_to_run`):
//! 1. The last prefill batch joins the running (decode) batch, less the request still being chunked and
//!    those that finished.
//! 2. **Prefill first** (G6, `get_new_batch_prefill`): unless the batch is marked full (or nothing
//!    waits) and no request is mid-chunk, the waiting queue is ordered by the policy (`fcfs`: queue
//!    order; `lpm`: longest cached prefix first, `sglang_policy.rs`; `dfs-weight`: the tree walked
//!    depth first, heaviest subtree first, `RadixCache::dfs_weight_order`; G7) and a `PrefillAdder` admits
//!    requests in that order: the request being chunked first (its next chunk), then each waiting
//!    request is matched against the tree and admitted if its new tokens plus its reserved output
//!    (min(max_new_tokens - output, 4096)) are below the remaining total: available + evictable tokens
//!    less every running request's reserved output x `new_token_ratio` and what this batch already took
//!    (G8). A request over the chunk budget (`chunked_prefill_size` per batch) is cut and continues
//!    first next round. Admission stops at the first refusal; a refusal for memory, or
//!    `max_running_requests` reached, marks the batch full until the running batch shrinks. The
//!    batch's new tokens are allocated at once, evicting the whole amount if fewer are available (G4).
//! 3. Otherwise **one decode step** of the whole running batch (`update_running_batch`): if the pool
//!    cannot give every running request one slot after evicting, requests are **retracted** (G10),
//!    fewest outputs first and among those the longest prompt, until it can (at least one is kept);
//!    each loses its KV without insertion and rejoins the waiting queue's end, and `new_token_ratio`
//!    is reset from the batch left (G9). Without retraction the ratio decays by its step.
//!
//! With HiCache (H1-H4, `kv/token_pool.rs`) a waiting request's match continues into host memory; a
//! host hit worth loading counts as cached for its chunk and, in its memory check, as tokens needing GPU
//! slots; its load's time is added to the batch's step. A round held back only by copies to host in
//! flight asks to be woken when the first ends.
//!
//! Not modelled: mixed prefill-decode batches (`--enable-mixed-chunk`, off by default), the `lof`,
//! `random` and `routing-key` orders, priority scheduling and its preemption, page sizes above 1,
//! HiCache's storage tier (H5), the overlap scheduler's one-step lookahead (its hidden host time is
//! `engine.async_scheduling`). The policy never leaps (`steady_decode` stays None: the ratio changes
//! every decode step).

use super::sglang_policy::lpm_order;
use super::{Next, RequestTable, Scheduler, StepPlan};
use crate::kv::token_pool::RETRACT_DECODE_STEPS;
use crate::kv::{CacheHit, KvStore, TokenPool};
use crate::request::{Request, RequestId};
use crate::time::{SimDuration, SimTime};

/// Output tokens a request reserves at most (SGLang `CLIP_MAX_NEW_TOKENS`, env
/// `SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`, default 4096).
pub const CLIP_MAX_NEW_TOKENS: u32 = 4096;

/// Decode steps over which `new_token_ratio` falls from its initial value to its minimum (SGLang
/// `SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS`, default 600).
pub const NEW_TOKEN_RATIO_DECAY_STEPS: f64 = 600.0;

/// The waiting queue's order (SGLang `--schedule-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SglangPolicy {
    /// Queue order (arrival; a retracted request rejoins at the end).
    Fcfs,
    /// Longest cached prefix first, with in-batch deprioritization; `fcfs` past 128 waiting or with
    /// the radix cache off (G7).
    Lpm,
    /// Depth first over the tree, subtrees with more waiting requests first (G7); `fcfs` with the
    /// radix cache off.
    #[serde(rename = "dfs-weight")]
    DfsWeight,
}

/// SGLang's limits, resolved (`kv::sizing::size_sglang`).
#[derive(Clone, Debug, PartialEq)]
pub struct SglangLimits {
    /// `max_running_requests`: requests decoding or admitted, at most.
    pub max_running_requests: u32,
    /// Tokens one prefill batch computes at most, chunks cut to fit; None: chunked prefill off.
    pub chunked_prefill_size: Option<u32>,
    /// `max_prefill_tokens`: with chunking off, a batch's new tokens at most (the first request
    /// excepted).
    pub max_prefill_tokens: u32,
    pub policy: SglangPolicy,
    /// `new_token_ratio` at start and its floor (G9), and its fall per decode step.
    pub init_new_token_ratio: f64,
    pub min_new_token_ratio: f64,
    pub new_token_ratio_decay: f64,
    /// The context length: a request's reserved output is capped at what fits in it (SGLang clips
    /// `max_new_tokens` to the context at validation).
    pub max_model_len: u32,
}

impl SglangLimits {
    /// G9's ratios from `schedule_conservativeness` c (SGLang's `SGLANG_INIT_NEW_TOKEN_RATIO` 0.7 and
    /// `SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR` 0.14): init = min(0.7 c, 1), floor = min(0.14 init, 1),
    /// decay = (init - floor) / 600 per decode step.
    pub fn ratios(conservativeness: f64) -> (f64, f64, f64) {
        let init = (0.7 * conservativeness).min(1.0);
        let min = (0.14 * init).min(1.0);
        (init, min, (init - min) / NEW_TOKEN_RATIO_DECAY_STEPS)
    }
}

/// Why the adder stopped (SGLang `AddReqResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddResult {
    Continue,
    /// Out of memory budget: the batch is marked full.
    NoToken,
    /// Out of the token budgets of this batch.
    Other,
}

/// One prefill batch's budgets (SGLang's `PrefillAdder`), in tokens; the reserved outputs are
/// fractional (x `new_token_ratio`).
struct Adder {
    /// Subtracted from available + evictable for `rem_total_tokens`.
    total_offset: f64,
    /// Subtracted from available + evictable for `cur_rem_tokens`.
    cur_offset: u64,
    rem_input: i64,
    rem_chunk: Option<i64>,
}

impl Adder {
    fn rem_total(&self, kv: &TokenPool) -> f64 {
        (kv.available() + kv.evictable()) as f64 - self.total_offset
    }

    fn cur_rem(&self, kv: &TokenPool) -> i64 {
        (kv.available() + kv.evictable()) as i64 - self.cur_offset as i64
    }

    /// `_update_prefill_budget`.
    fn reserve(&mut self, extend: u32, max_new: u32) {
        self.total_offset += (extend + max_new) as f64;
        self.cur_offset += extend as u64;
        self.rem_input -= extend as i64;
        if let Some(c) = &mut self.rem_chunk {
            *c -= extend as i64;
        }
    }

    /// `budget_state`.
    fn state(&self, kv: &TokenPool) -> AddResult {
        if self.rem_total(kv) <= 0.0 || self.cur_rem(kv) <= 0 {
            AddResult::NoToken
        } else if self.rem_input <= 0 || self.rem_chunk.is_some_and(|c| c <= 0) {
            AddResult::Other
        } else {
            AddResult::Continue
        }
    }
}

/// `add_one_req`'s verdict for a request of `extend` new tokens reserving `max_new` outputs (`started`:
/// the batch has requests already), whose memory check counts `uncached` tokens (its tokens beyond the
/// GPU match: the new ones and any host tokens it will load, as SGLang's `total_tokens` does):
/// Ok((tokens this round, output reserved, cut to a chunk)), or why it is refused.
fn admit(
    adder: &Adder,
    kv: &TokenPool,
    uncached: u32,
    extend: u32,
    max_new: u32,
    started: bool,
) -> Result<(u32, u32, bool), AddResult> {
    let chunking = adder.rem_chunk;
    if (uncached + max_new) as f64 >= adder.rem_total(kv) {
        Err(AddResult::NoToken)
    } else if chunking.is_none() && started && extend as i64 >= adder.rem_input {
        Err(AddResult::Other)
    } else {
        match chunking {
            Some(c) if extend as i64 > c => {
                if c <= 0 {
                    Err(AddResult::Other)
                } else {
                    Ok((c as u32, 0, true))
                }
            }
            _ => Ok((extend, max_new, false)),
        }
    }
}

/// A request of a prefill batch: its tokens this round, its match at admission (None for the request
/// being chunked), and the host tokens it loaded with their copy's time.
struct Admitted {
    id: RequestId,
    tokens: u32,
    hit: Option<u32>,
    loaded: u32,
    load: SimDuration,
}

/// SGLang's scheduler (module docs).
#[derive(Clone, Debug)]
pub struct SglangScheduler {
    limits: SglangLimits,
    kv: TokenPool,
    /// Queue order.
    waiting: Vec<RequestId>,
    /// The decode batch, in batch order.
    running: Vec<RequestId>,
    /// The last prefill batch's requests, but the one being chunked: they join `running` next round.
    last_prefill: Vec<RequestId>,
    /// The request whose prompt is being prefilled in chunks (`chunked_req`).
    chunked: Option<RequestId>,
    /// `running_batch.batch_is_full`.
    batch_is_full: bool,
    /// The running batch lost requests since the last decode step (SGLang clears `batch_is_full` when
    /// `update_running_batch` finds the batch smaller).
    shrunk: bool,
    new_token_ratio: f64,
}

impl SglangScheduler {
    pub fn new(limits: SglangLimits, kv: TokenPool) -> SglangScheduler {
        SglangScheduler {
            new_token_ratio: limits.init_new_token_ratio,
            limits,
            kv,
            waiting: Vec::new(),
            running: Vec::new(),
            last_prefill: Vec::new(),
            chunked: None,
            batch_is_full: false,
            shrunk: false,
        }
    }

    /// `new_token_ratio` now (G9).
    pub fn new_token_ratio(&self) -> f64 {
        self.new_token_ratio
    }

    /// The waiting queue, in its current order.
    pub fn waiting(&self) -> &[RequestId] {
        &self.waiting
    }

    /// The decode batch, in batch order.
    pub fn running(&self) -> &[RequestId] {
        &self.running
    }

    /// The request being prefilled in chunks.
    pub fn chunked(&self) -> Option<RequestId> {
        self.chunked
    }

    /// Output tokens `r` may still reserve: min(max_new - output, 4096), no more than fits in the
    /// context.
    fn max_new(&self, r: &Request) -> u32 {
        r.max_tokens
            .saturating_sub(r.num_output_tokens)
            .min(CLIP_MAX_NEW_TOKENS)
            .min(self.limits.max_model_len.saturating_sub(r.num_tokens()))
    }

    /// Orders the waiting queue in place by the policy (SGLang's `calc_priority` sorts
    /// `waiting_queue` itself).
    fn order_waiting(&mut self, reqs: &RequestTable) {
        if self.limits.policy == SglangPolicy::Fcfs || !self.kv.enabled() {
            return;
        }
        let waiting: Vec<&Request> = self.waiting.iter().map(|id| &*reqs[id]).collect();
        let order = match self.limits.policy {
            SglangPolicy::Lpm => {
                let (keys, tree, now) = self.kv.lpm_scene(&waiting);
                lpm_order(&keys, tree, now)
            }
            SglangPolicy::DfsWeight => {
                // Every waiting request is matched (stamping its path), then the tree is walked.
                let nodes: Vec<_> = waiting
                    .iter()
                    .map(|r| self.kv.match_request(r).node)
                    .collect();
                self.kv.tree().dfs_weight_order(&nodes)
            }
            SglangPolicy::Fcfs => unreachable!(),
        };
        self.waiting = order.into_iter().map(|i| self.waiting[i]).collect();
    }

    /// `get_new_batch_prefill`: plans a prefill batch into `plan`; false when none forms.
    fn prefill(&mut self, reqs: &mut RequestTable, plan: &mut StepPlan) -> bool {
        if (self.batch_is_full || self.waiting.is_empty()) && self.chunked.is_none() {
            return false;
        }
        let allocatable = self
            .limits
            .max_running_requests
            .saturating_sub(self.running.len() as u32) as usize;
        if allocatable == 0 && self.chunked.is_none() {
            self.batch_is_full = true;
            return false;
        }
        self.order_waiting(reqs);
        let running_offset: f64 = self
            .running
            .iter()
            .map(|id| self.max_new(&reqs[id]) as f64 * self.new_token_ratio)
            .sum();
        let mut adder = Adder {
            total_offset: running_offset,
            cur_offset: 0,
            rem_input: self.limits.max_prefill_tokens as i64,
            rem_chunk: self.limits.chunked_prefill_size.map(|c| c as i64),
        };
        let mut batch: Vec<Admitted> = Vec::new();
        let mut new_chunked = None;
        if let Some(id) = self.chunked {
            let r = &reqs[&id];
            let left = r.num_tokens() - r.num_computed_tokens;
            // `add_chunked_req`: the next chunk, within the chunk budget and the memory left after the
            // running requests' reserved outputs.
            let room = adder.rem_total(&self.kv).max(0.0) as u64;
            let cap = adder
                .rem_chunk
                .map_or(u64::MAX, |c| c.max(0) as u64)
                .min(room);
            let n = (left as u64).min(cap) as u32;
            if n > 0 {
                let truncated = n < left;
                adder.reserve(n, if truncated { 0 } else { self.max_new(r) });
                batch.push(Admitted {
                    id,
                    tokens: n,
                    hit: None,
                    loaded: 0,
                    load: SimDuration::ZERO,
                });
                if truncated {
                    new_chunked = Some(id);
                }
            } else {
                new_chunked = Some(id);
            }
        }
        let mut admitted = Vec::new();
        for (pos, &id) in self.waiting.iter().enumerate() {
            if batch.len() >= allocatable {
                self.batch_is_full = true;
                break;
            }
            let r = reqs.get_mut(&id).expect("waiting request in table");
            // `init_next_round_input`: match again (stamping the path).
            let tm = self.kv.match_tiers(r);
            let m = tm.device;
            let max_new = self.max_new(r);
            // `add_one_req`, under a temporary lock of the matched prefix. With HiCache, a host hit
            // worth loading counts as cached for the chunk's shape (its memory check counts the host
            // tokens, which need GPU slots too); if its load cannot be had, the request is judged
            // again as a recompute.
            self.kv.lock(m.node);
            let load = self.kv.loads(tm.host_tokens);
            let host = if load { tm.host_tokens } else { 0 };
            let started = !batch.is_empty();
            let uncached = r.num_tokens() - m.tokens;
            let mut verdict = admit(
                &adder,
                &self.kv,
                uncached,
                uncached - host,
                max_new,
                started,
            );
            let (mut matched, mut loaded) = (m, (0, SimDuration::ZERO));
            if load && verdict.is_ok() {
                match self.kv.load_back(&tm) {
                    Some((all, t)) => (matched, loaded) = (all, (tm.host_tokens, t)),
                    None => verdict = admit(&adder, &self.kv, uncached, uncached, max_new, started),
                }
            }
            match verdict {
                Err(res) => {
                    self.kv.unlock(m.node);
                    if res == AddResult::NoToken {
                        self.batch_is_full = true;
                    }
                    break;
                }
                Ok((_, _, true)) if new_chunked.is_some() => {
                    // One request is chunked at a time. (The chunked request's continuation leaves
                    // no chunk budget or no memory for another cut, so this guards an invariant.)
                    self.kv.unlock(m.node);
                    break;
                }
                Ok((n, reserve, cut)) => {
                    // Admitted: the permanent lock, the budget.
                    if load {
                        self.kv.note_host_hit(tm.host_tokens);
                    }
                    let ok = self.kv.allocate_slots(r, 0, TokenPool::hit(matched));
                    debug_assert!(ok);
                    self.kv.unlock(m.node);
                    adder.reserve(n, reserve);
                    batch.push(Admitted {
                        id,
                        tokens: n,
                        hit: Some(matched.tokens),
                        loaded: loaded.0,
                        load: loaded.1,
                    });
                    admitted.push(pos);
                    if cut {
                        new_chunked = Some(id);
                    }
                    let state = adder.state(&self.kv);
                    if state != AddResult::Continue {
                        if state == AddResult::NoToken {
                            self.batch_is_full = true;
                        }
                        break;
                    }
                }
            }
        }
        if batch.is_empty() {
            return false;
        }
        for &pos in admitted.iter().rev() {
            self.waiting.remove(pos);
        }
        self.chunked = new_chunked;
        // `prepare_for_extend`: the batch's slots at once, evicting the whole amount if short (G4).
        let total: u64 = batch.iter().map(|b| b.tokens as u64).sum();
        self.kv.evict_if_needed(total);
        self.last_prefill.clear();
        for b in &batch {
            let (id, n) = (b.id, b.tokens);
            let r = reqs.get_mut(&id).expect("batch request in table");
            let ok = self.kv.allocate_slots(r, n, CacheHit::default());
            assert!(ok, "a prefill batch's slots were reserved by its admission");
            self.kv.log_prefill(b.hit.unwrap_or(0), n);
            if let Some(h) = b.hit {
                self.kv.record_admission(r, h);
                if r.num_cached_tokens.is_none() {
                    r.num_cached_tokens = Some(h);
                    r.cached_tokens_tier = [b.loaded, 0];
                    r.kv_load = b.load;
                }
                r.num_computed_tokens = h;
                r.in_prefill = true;
            }
            // HiCache's loads run with the batch (SGLang overlaps them layer by layer; added here).
            plan.kv_load += b.load;
            r.num_computed_tokens += n;
            plan.scheduled.push((id, n));
            if Some(id) != self.chunked {
                self.last_prefill.push(id);
            }
        }
        true
    }

    /// `update_running_batch` + `prepare_for_decode`: one decode step of the running batch into `plan`,
    /// retracting first if the pool cannot give each request a slot (G10).
    fn decode(&mut self, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
        if std::mem::take(&mut self.shrunk) {
            self.batch_is_full = false;
        }
        let bs = self.running.len() as u64;
        self.kv.evict_if_needed(bs);
        if self.kv.available() < bs {
            self.retract(reqs, plan);
        } else {
            self.new_token_ratio = (self.new_token_ratio - self.limits.new_token_ratio_decay)
                .max(self.limits.min_new_token_ratio);
        }
        let bs = self.running.len() as u64;
        if self.kv.available() < bs {
            // Retraction keeps one request, and even it has no slot: the rest of the pool is held by
            // the request being chunked or by copies to host in flight. SGLang would fail an
            // assertion; the model retracts the chunked request, or waits for a copy to end.
            if let Some(c) = self.chunked.take() {
                self.retract_one(c, self.running.len(), reqs, plan);
                self.kv.evict_if_needed(bs);
            }
        }
        if self.kv.available() < bs {
            let t = self
                .kv
                .next_write_done()
                .expect("one request alone fits the pool once no copy holds it");
            return Next::WakeAt(t);
        }
        for &id in &self.running {
            let r = reqs.get_mut(&id).expect("running request in table");
            let ok = self.kv.alloc_decode(r);
            assert!(ok, "checked above");
            r.num_computed_tokens += 1;
            plan.scheduled.push((id, 1));
        }
        Next::Run
    }

    /// Sends request `id` back to the waiting queue with nothing computed (G10), `left` requests
    /// staying in the batch (the store's retraction reservation counts them).
    fn retract_one(
        &mut self,
        id: RequestId,
        left: usize,
        reqs: &mut RequestTable,
        plan: &mut StepPlan,
    ) {
        let r = reqs.get_mut(&id).expect("retracted request in table");
        self.kv.retract(r, left);
        r.num_computed_tokens = 0;
        r.preemptions += 1;
        r.was_preempted = true;
        r.in_prefill = false;
        self.waiting.push(id);
        plan.preempted.push(id);
    }

    /// `retract_decode` (G10).
    fn retract(&mut self, reqs: &mut RequestTable, plan: &mut StepPlan) {
        // Sorted by (outputs, -prompt) descending, stably, and retracted from the end.
        let mut sorted = self.running.clone();
        sorted.sort_by_key(|id| {
            let r = &reqs[id];
            std::cmp::Reverse((r.num_output_tokens, std::cmp::Reverse(r.prompt_tokens)))
        });
        let mut first = true;
        loop {
            if !first {
                let k = sorted.len() as u64;
                self.kv.evict_if_needed(k);
                if self.kv.available() >= k {
                    break;
                }
            }
            if sorted.len() == 1 {
                break;
            }
            first = false;
            let id = sorted.pop().expect("two or more");
            self.retract_one(id, sorted.len(), reqs, plan);
        }
        self.running = sorted;
        let decoded: u64 = self
            .running
            .iter()
            .map(|id| reqs[id].num_output_tokens as u64)
            .sum();
        let max_new: u64 = self
            .running
            .iter()
            .map(|id| reqs[id].max_tokens as u64)
            .sum();
        self.new_token_ratio = ((decoded + RETRACT_DECODE_STEPS * self.running.len() as u64)
            as f64
            / (max_new + 1) as f64)
            .min(1.0);
        self.batch_is_full = false;
    }
}

impl Scheduler for SglangScheduler {
    type Kv = TokenPool;

    fn add_request(&mut self, req: &Request) {
        self.waiting.push(req.id);
    }

    fn schedule(&mut self, now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
        plan.clear();
        self.kv.advance(now);
        self.running.append(&mut self.last_prefill);
        if self.prefill(reqs, plan) {
            return Next::Run;
        }
        if self.running.is_empty() {
            // An empty running batch is never full (`update_running_batch`); try again at once.
            if std::mem::take(&mut self.batch_is_full) && self.prefill(reqs, plan) {
                return Next::Run;
            }
            // Held back only by copies to host in flight (their nodes are locked): look again when
            // the first ends, as SGLang's loop does.
            let held = !self.waiting.is_empty() || self.chunked.is_some();
            return match self.kv.next_write_done() {
                Some(t) if held => Next::WakeAt(t),
                _ => Next::Idle,
            };
        }
        self.decode(reqs, plan)
    }

    fn kv(&self) -> &TokenPool {
        &self.kv
    }

    fn kv_mut(&mut self) -> &mut TokenPool {
        &mut self.kv
    }

    fn finish_requests(&mut self, finished: &[RequestId], _now: SimTime) {
        let (running, prefill) = (self.running.len(), self.last_prefill.len());
        self.running.retain(|id| !finished.contains(id));
        self.last_prefill.retain(|id| !finished.contains(id));
        self.shrunk |= self.running.len() < running;
        let mut left =
            finished.len() - (running - self.running.len()) - (prefill - self.last_prefill.len());
        if self.chunked.is_some_and(|c| finished.contains(&c)) {
            self.chunked = None;
            left -= 1;
        }
        // Only a run's end finishes waiting requests: the queue (thousands long under overload) is
        // scanned only then, not at every finish.
        if left > 0 {
            self.waiting.retain(|id| !finished.contains(id));
        }
    }

    fn abort(&mut self, req: &Request) -> bool {
        let id = req.id;
        if self.chunked == Some(id) {
            self.chunked = None;
            return true;
        }
        for (list, shrinks) in [
            (&mut self.waiting, false),
            (&mut self.running, true),
            (&mut self.last_prefill, false),
        ] {
            if let Some(i) = list.iter().position(|&x| x == id) {
                list.remove(i);
                self.shrunk |= shrinks;
                return true;
            }
        }
        false
    }

    fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    fn num_running(&self) -> usize {
        self.running.len() + self.last_prefill.len() + self.chunked.is_some() as usize
    }

    fn all_requests(&self) -> Vec<RequestId> {
        let mut v = self.waiting.clone();
        v.extend(self.chunked);
        v.extend_from_slice(&self.last_prefill);
        v.extend_from_slice(&self.running);
        v
    }
}
