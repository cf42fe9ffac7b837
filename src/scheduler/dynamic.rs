//! `engine.kind = "dynamic"`: request-level dynamic batching, as the dynamic batchers of inference servers
//! and `model.generate`-style serving loops do it. Rules (`[batching]`):
//!
//! - D1 (groups). Requests queue by compatibility: the values of the `group_by` fields of their sampling
//!   profile (`temperature`, `top_p`, `top_k`, `model`, from `[[workload.sampling]]`) and of the request
//!   (`max_tokens`) must match; each group is a FIFO queue of its own.
//! - D2 (formation). When the server is free, a group is ready when it holds the batch size limit (D6;
//!   `max_batch_size` without adaptation) or its oldest request has waited `max_queue_delay_s`. Of the
//!   ready groups, the one whose oldest request arrived first dispatches (ties: the group listed first
//!   in group order); its oldest requests, up to the limit, form the batch. No group ready: the server
//!   waits until the earliest head's delay runs out, or an arrival fills a group.
//! - D3 (prefill). The batch's prompts, less what the KV store already holds for each, run in one step,
//!   padded to the longest: a request with n tokens to compute in a batch whose longest has L carries
//!   L - n padding tokens, priced as a prefill chunk ending at its padded context (reported per request
//!   as `padding_tokens`).
//! - D4 (lockstep decode). Then every request of the batch decodes one token per step until the batch's
//!   longest generation ends; no request joins a running batch. Without `early_exit`, a request that has
//!   finished keeps its row: each later step computes a padding row for it, attending over the batch's
//!   padded length so far. With `early_exit`, its row is dropped (its slot stays empty).
//! - D5 (memory). The KV store decides what a prompt reuses (a conversation entry, or nothing); every
//!   allocation succeeds (the batch size bounds the running KV). No preemption.
//! - D6 (adaptive size). With `[batching.adaptive]`, the limit starts at `max_batch_size`; at the first
//!   dispatch after each `interval_s` boundary, if the mean latency (dispatch to last token) of the
//!   batches that ended since the last adjustment exceeds `target_latency_s`, the limit is multiplied by
//!   `decrease_factor` (rounded down), else raised by `increase_step` (multiplicative decrease, additive
//!   increase), always within `min_batch_size..=max_batch_size`; no batch ended: unchanged. The limit is
//!   in the time series (`batch_size_limit`).
//!
//! It leaps (the replica advances runs of decode steps at once) while the batch decodes with no padding
//! rows: the plan is then the same requests, one token each, every step.

use super::{Next, PaddingChunk, RequestTable, Scheduler, StepPlan};
use crate::kv::KvStore;
use crate::request::{Request, RequestId};
use crate::time::{SimDuration, SimTime};
use std::collections::{BTreeMap, VecDeque};

/// D6's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adaptive {
    pub interval: SimDuration,
    pub target_latency: SimDuration,
    pub min_batch_size: u32,
    pub decrease_factor: f64,
    pub increase_step: u32,
}

/// The batcher's parameters, resolved from `[batching]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicParams {
    pub max_batch_size: u32,
    pub max_queue_delay: SimDuration,
    pub early_exit: bool,
    pub adaptive: Option<Adaptive>,
    /// Each sampling profile's group (profiles equal in the `group_by` fields share one), by index.
    pub profile_group: Vec<u32>,
    /// `max_tokens` is among the `group_by` fields.
    pub group_by_max_tokens: bool,
    /// The engine's context length (steady decode is declared only below it).
    pub max_model_len: u32,
}

/// One request of the running batch.
#[derive(Clone, Copy, Debug)]
struct Member {
    id: RequestId,
    /// Tokens computed at the end of the batch's prefill step.
    prefilled: u32,
    done: bool,
}

/// Request-level dynamic batching (rules D1-D6) over store `K`.
#[derive(Clone, Debug)]
pub struct DynamicBatcher<K> {
    kv: K,
    p: DynamicParams,
    /// D1: (group, max_tokens or 0) -> FIFO of (request, arrival).
    groups: BTreeMap<(u32, u32), VecDeque<(RequestId, SimTime)>>,
    num_waiting: usize,
    batch: Vec<Member>,
    /// The running members, in batch order (for `steady_decode`).
    active: Vec<RequestId>,
    /// The batch's padded length after its prefill (D4's padding rows attend over it plus the steps).
    padded_len: u32,
    dispatched: SimTime,
    limit: u32,
    /// D6: the next interval boundary, and the latencies of batches ended since the last adjustment.
    next_adjust: SimTime,
    latency_sum: SimDuration,
    latency_count: u64,
    /// Batches dispatched so far (the next batch's id).
    batches: u64,
}

impl<K: KvStore> DynamicBatcher<K> {
    pub fn new(kv: K, p: DynamicParams) -> DynamicBatcher<K> {
        let limit = p.max_batch_size;
        let next_adjust = p
            .adaptive
            .map_or(SimTime::ZERO, |a| SimTime::ZERO + a.interval);
        DynamicBatcher {
            kv,
            p,
            groups: BTreeMap::new(),
            num_waiting: 0,
            batch: Vec::new(),
            active: Vec::new(),
            padded_len: 0,
            dispatched: SimTime::ZERO,
            limit,
            next_adjust,
            latency_sum: SimDuration::ZERO,
            latency_count: 0,
            batches: 0,
        }
    }

    fn key(&self, r: &Request) -> (u32, u32) {
        let g = self
            .p
            .profile_group
            .get(r.sampling as usize)
            .copied()
            .unwrap_or(0);
        (
            g,
            if self.p.group_by_max_tokens {
                r.max_tokens
            } else {
                0
            },
        )
    }

    /// D6 at a dispatch at `now`.
    fn adjust(&mut self, now: SimTime) {
        let Some(a) = self.p.adaptive else { return };
        if now < self.next_adjust {
            return;
        }
        // The first boundary after now, directly (an idle stretch may span many intervals).
        let iv = a.interval.0.max(1);
        self.next_adjust = SimTime((now.0 / iv).saturating_add(1).saturating_mul(iv));
        if self.latency_count == 0 {
            return;
        }
        let mean = self.latency_sum.0 / self.latency_count;
        self.limit = if mean > a.target_latency.0 {
            ((self.limit as f64 * a.decrease_factor).floor() as u32).max(a.min_batch_size)
        } else {
            self.limit
                .saturating_add(a.increase_step)
                .min(self.p.max_batch_size)
        };
        self.latency_sum = SimDuration::ZERO;
        self.latency_count = 0;
    }

    /// D2 + D3: forms and prefills a batch at `now`, or says how long to wait.
    fn dispatch(&mut self, now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
        self.adjust(now);
        let delay = self.p.max_queue_delay;
        let limit = self.limit as usize;
        let ready = self
            .groups
            .iter()
            .filter(|(_, q)| q.len() >= limit || q.front().is_some_and(|h| now >= h.1 + delay))
            .min_by_key(|(k, q)| (q.front().expect("non-empty").1, **k))
            .map(|(k, _)| *k);
        let Some(key) = ready else {
            return match self
                .groups
                .values()
                .filter_map(|q| q.front())
                .map(|h| h.1 + delay)
                .min()
            {
                Some(t) => Next::WakeAt(t),
                None => Next::Idle,
            };
        };
        let q = self.groups.get_mut(&key).expect("ready group");
        let take = q.len().min(limit);
        let ids: Vec<RequestId> = q.drain(..take).map(|x| x.0).collect();
        if q.is_empty() {
            self.groups.remove(&key);
        }
        self.num_waiting -= ids.len();
        let batch_id = self.batches;
        self.batches += 1;
        let mut longest = 0;
        for &id in &ids {
            let r = reqs.get_mut(&id).expect("waiting request in table");
            let hit = self.kv.get_computed_blocks(r);
            let cached = hit.tokens;
            let n = r.num_tokens() - cached;
            let ok = self.kv.allocate_slots(r, n, hit);
            debug_assert!(ok, "D5: a dynamic batch's allocations succeed");
            self.kv.record_admission(r, cached);
            r.num_cached_tokens.get_or_insert(cached);
            r.in_prefill = true;
            r.num_computed_tokens = cached + n;
            r.batch_id = Some(batch_id);
            longest = longest.max(n);
            plan.scheduled.push((id, n));
        }
        self.padded_len = 0;
        for &(id, n) in &plan.scheduled {
            let r = reqs.get_mut(&id).expect("batched request");
            r.padding_tokens = longest - n;
            self.padded_len = self.padded_len.max(r.num_computed_tokens + longest - n);
            if n < longest {
                plan.padding.push(PaddingChunk {
                    tokens: longest - n,
                    context: r.num_computed_tokens + longest - n,
                    decode: false,
                });
            }
        }
        self.batch = ids
            .iter()
            .map(|&id| Member {
                id,
                prefilled: reqs[&id].num_computed_tokens,
                done: false,
            })
            .collect();
        self.active = ids;
        self.dispatched = now;
        Next::Run
    }
}

impl<K: KvStore> Scheduler for DynamicBatcher<K> {
    type Kv = K;

    fn add_request(&mut self, req: &Request) {
        let key = self.key(req);
        self.groups
            .entry(key)
            .or_default()
            .push_back((req.id, req.arrival));
        self.num_waiting += 1;
    }

    fn schedule(&mut self, now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
        plan.clear();
        if self.active.is_empty() {
            return self.dispatch(now, reqs, plan);
        }
        // D4: every running request one more token; finished rows padded unless they exit early.
        for &id in &self.active {
            let r = reqs.get_mut(&id).expect("running request in table");
            let n = r.num_tokens() - r.num_computed_tokens;
            let ok = self.kv.allocate_slots(r, n, Default::default());
            debug_assert!(ok, "D5: a dynamic batch's allocations succeed");
            r.num_computed_tokens += n;
            plan.scheduled.push((id, n));
        }
        let steps = self
            .batch
            .iter()
            .find(|m| !m.done)
            .map_or(0, |m| reqs[&m.id].num_computed_tokens - m.prefilled);
        if !self.p.early_exit {
            for _ in self.batch.iter().filter(|m| m.done) {
                plan.padding.push(PaddingChunk {
                    tokens: 1,
                    context: self.padded_len + steps,
                    decode: true,
                });
            }
        }
        Next::Run
    }

    fn kv(&self) -> &K {
        &self.kv
    }

    fn kv_mut(&mut self) -> &mut K {
        &mut self.kv
    }

    fn finish_requests(&mut self, finished: &[RequestId], now: SimTime) {
        // At a truncated run's end the replica drains waiting requests too (a step finishes only
        // running ones, so the scan over the queues happens once, at the end).
        if self.num_waiting > 0 && finished.iter().any(|id| !self.active.contains(id)) {
            let mut gone = 0;
            for q in self.groups.values_mut() {
                let n = q.len();
                q.retain(|x| !finished.contains(&x.0));
                gone += n - q.len();
            }
            self.groups.retain(|_, q| !q.is_empty());
            self.num_waiting -= gone;
        }
        if self.active.is_empty() {
            return;
        }
        for m in &mut self.batch {
            if finished.contains(&m.id) {
                m.done = true;
            }
        }
        self.active.retain(|id| !finished.contains(id));
        if self.active.is_empty() {
            self.batch.clear();
            self.latency_sum += now.since(self.dispatched);
            self.latency_count += 1;
        }
    }

    fn abort(&mut self, req: &Request) -> bool {
        if self.active.contains(&req.id) {
            // Its row stays, as a finished one's does; a batch emptied so has no latency to report.
            for m in &mut self.batch {
                m.done |= m.id == req.id;
            }
            self.active.retain(|&id| id != req.id);
            if self.active.is_empty() {
                self.batch.clear();
            }
            return true;
        }
        let key = self.key(req);
        let Some(q) = self.groups.get_mut(&key) else {
            return false;
        };
        let Some(i) = q.iter().position(|x| x.0 == req.id) else {
            return false;
        };
        q.remove(i);
        if q.is_empty() {
            self.groups.remove(&key);
        }
        self.num_waiting -= 1;
        true
    }

    fn num_waiting(&self) -> usize {
        self.num_waiting
    }

    fn num_running(&self) -> usize {
        self.active.len()
    }

    fn all_requests(&self) -> Vec<RequestId> {
        self.groups
            .values()
            .flat_map(|q| q.iter().map(|x| x.0))
            .chain(self.active.iter().copied())
            .collect()
    }

    /// The batch's running requests while it decodes with no padding rows: one token each, whatever
    /// waits (no one joins a running batch).
    fn steady_decode(&self, reqs: &RequestTable) -> Option<&[RequestId]> {
        if self.active.is_empty() || (!self.p.early_exit && self.active.len() < self.batch.len()) {
            return None;
        }
        self.active
            .iter()
            .all(|id| {
                let r = &reqs[id];
                !r.in_prefill
                    && r.num_computed_tokens + 1 == r.num_tokens()
                    && r.num_computed_tokens + 1 < self.p.max_model_len
            })
            .then_some(&self.active[..])
    }

    fn batch_limit(&self) -> Option<u32> {
        Some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::off::KvOff;

    fn batcher() -> DynamicBatcher<KvOff> {
        DynamicBatcher::new(
            KvOff,
            DynamicParams {
                max_batch_size: 8,
                max_queue_delay: SimDuration::ZERO,
                early_exit: false,
                adaptive: Some(Adaptive {
                    interval: SimDuration::from_secs_f64(1.0),
                    target_latency: SimDuration::from_secs_f64(0.5),
                    min_batch_size: 1,
                    decrease_factor: 0.5,
                    increase_step: 3,
                }),
                profile_group: vec![0],
                group_by_max_tokens: false,
                max_model_len: 1024,
            },
        )
    }

    fn at(s: f64) -> SimTime {
        SimTime::ZERO + SimDuration::from_secs_f64(s)
    }

    /// A batch that took `lat` seconds ended.
    fn ended(b: &mut DynamicBatcher<KvOff>, lat: f64) {
        b.latency_sum += SimDuration::from_secs_f64(lat);
        b.latency_count += 1;
    }

    #[test]
    fn d6_the_limit_halves_over_the_target_and_grows_under_it_at_interval_ends_only() {
        let mut b = batcher();
        assert_eq!(b.batch_limit(), Some(8));
        // Before the first interval end (1 s): no change, however slow the batches.
        ended(&mut b, 2.0);
        b.adjust(at(0.9));
        assert_eq!(b.limit, 8);
        // At 1.2 s the mean latency (2 s) is over 0.5 s: 8 x 0.5 = 4.
        b.adjust(at(1.2));
        assert_eq!(b.limit, 4);
        // Later in the same interval: no change.
        ended(&mut b, 2.0);
        b.adjust(at(1.9));
        assert_eq!(b.limit, 4);
        // 4 -> 2 -> 1, then clamped at min_batch_size 1 (0.5 rounds down to 0).
        for (t, want) in [(2.0, 2), (3.0, 1), (4.0, 1)] {
            ended(&mut b, 1.0);
            b.adjust(at(t));
            assert_eq!(b.limit, want, "at {t}");
        }
        // No batch ended in the interval: unchanged.
        b.adjust(at(5.0));
        assert_eq!(b.limit, 1);
        // Fast batches: 1 + 3 = 4, 7, then clamped at max_batch_size 8. The mean is over the batches
        // since the last change: 0.1 and 0.7 average 0.4, under the target.
        for (t, want) in [(6.0, 4), (7.0, 7), (8.0, 8)] {
            ended(&mut b, 0.1);
            ended(&mut b, 0.7);
            b.adjust(at(t));
            assert_eq!(b.limit, want, "at {t}");
        }
    }
}
