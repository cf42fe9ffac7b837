//! `engine.kind = "none"`: no batching. A server that runs one request at a time, as soon as it is free:
//! the oldest waiting request runs alone, its whole prompt (less what its KV store already holds) in one
//! step, then one decode step per token until it finishes; only then does the next start. No token budget,
//! no chunking, no preemption: a lone request always fits (sizing guarantees one `max_model_len` sequence
//! does). The waiting queue is the only delay (an M/G/1 queue; with a constant service time, M/D/1).

use super::{Next, RequestTable, Scheduler, StepPlan};
use crate::kv::{CacheHit, KvStore};
use crate::request::{Request, RequestId};
use crate::time::SimTime;
use std::collections::VecDeque;

/// One request at a time, oldest first, over store `K`.
#[derive(Clone, Debug)]
pub struct NoBatching<K> {
    kv: K,
    max_model_len: u32,
    waiting: VecDeque<RequestId>,
    /// The one running request (a slice, for `steady_decode`).
    running: Vec<RequestId>,
}

impl<K: KvStore> NoBatching<K> {
    /// An empty policy over `kv`, for an engine of context length `max_model_len` (the replica stops a
    /// request there; steady decode is declared only below it).
    pub fn new(kv: K, max_model_len: u32) -> NoBatching<K> {
        NoBatching {
            kv,
            max_model_len,
            waiting: VecDeque::new(),
            running: Vec::with_capacity(1),
        }
    }
}

impl<K: KvStore> Scheduler for NoBatching<K> {
    type Kv = K;

    fn add_request(&mut self, req: &Request) {
        self.waiting.push_back(req.id);
    }

    fn schedule(&mut self, _now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next {
        plan.clear();
        if let Some(&id) = self.running.first() {
            let r = reqs.get_mut(&id).expect("running request in table");
            let n = r.num_tokens() - r.num_computed_tokens;
            // A lone request always fits: sizing guarantees one max_model_len sequence does.
            let ok = self.kv.allocate_slots(r, n, CacheHit::default());
            assert!(ok, "one request alone must fit its KV store");
            r.num_computed_tokens += n;
            plan.scheduled.push((id, n));
            return Next::Run;
        }
        let Some(id) = self.waiting.pop_front() else {
            return Next::Idle;
        };
        let r = reqs.get_mut(&id).expect("waiting request in table");
        let hit = self.kv.get_computed_blocks(r);
        let hit_tokens = hit.tokens;
        let n = r.num_tokens() - hit_tokens;
        let ok = self.kv.allocate_slots(r, n, hit);
        assert!(ok, "one request alone must fit its KV store");
        self.kv.record_admission(r, hit_tokens);
        r.num_cached_tokens.get_or_insert(hit_tokens);
        r.in_prefill = true;
        r.num_computed_tokens = hit_tokens + n;
        self.running.push(id);
        plan.scheduled.push((id, n));
        Next::Run
    }

    fn kv(&self) -> &K {
        &self.kv
    }

    fn kv_mut(&mut self) -> &mut K {
        &mut self.kv
    }

    fn finish_requests(&mut self, finished: &[RequestId], _now: SimTime) {
        self.running.retain(|id| !finished.contains(id));
    }

    fn abort(&mut self, req: &Request) -> bool {
        if self.running.first() == Some(&req.id) {
            self.running.clear();
            return true;
        }
        match self.waiting.iter().position(|&id| id == req.id) {
            Some(i) => self.waiting.remove(i).is_some(),
            None => false,
        }
    }

    fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    fn num_running(&self) -> usize {
        self.running.len()
    }

    fn all_requests(&self) -> Vec<RequestId> {
        self.waiting.iter().chain(&self.running).copied().collect()
    }

    /// The running request decodes alone until it finishes, whatever waits: no one joins it.
    fn steady_decode(&self, reqs: &RequestTable) -> Option<&[RequestId]> {
        let r = &reqs[self.running.first()?];
        (!r.in_prefill
            && r.num_computed_tokens + 1 == r.num_tokens()
            && r.num_computed_tokens + 1 < self.max_model_len)
            .then_some(&self.running[..])
    }
}
