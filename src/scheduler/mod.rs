//! Batching policies. One file per policy.
//!
//! A policy owns its queues and its replica's KV store ([`KvStore`]), and decides, each step, which
//! requests get how many tokens and whom to preempt. vLLM's decisions depend on allocation outcomes inside
//! the same step (a failed allocation triggers a preemption and a retry; a block registered for one
//! request can be hit by the next), so a policy makes its allocations through its store as it decides,
//! exactly as vLLM's scheduler calls `allocate_slots`. A policy is generic over its store
//! (`VllmScheduler<K>`), and the replica over its policy (`Replica<S>`): the engine and store kinds are
//! chosen once per run (`System::build`), the loop is compiled for each pair, and no call per token or
//! per step crosses a virtual table. The replica reaches the store through [`Scheduler::kv`]. It never sees a request's true output length (invariant 6): requests carry only
//! `max_tokens`.
//!
//! A policy may also wait: `schedule` answers [`Next::Idle`] (until an arrival) or [`Next::WakeAt`] (a
//! batch timeout), and the world schedules it again then.
//!
//! The policies: `vllm_v1.rs` (continuous batching, vLLM V1), `dynamic.rs` (request-level dynamic
//! batching: by size or timeout, compatible groups, padding, lockstep decode, adaptive size),
//! `none.rs` (one request at a time), `sglang.rs` (SGLang: prefill-first rounds, `PrefillAdder`
//! admission, retraction), with SGLang's waiting-queue orders in `sglang_policy.rs`. SGLang's
//! scheduler holds its concrete store ([`crate::kv::TokenPool`]) and uses its richer API (locks,
//! evictable counts); the replica still sees only the [`KvStore`] view.
//!
//! To add a policy (an engine family): one file here implementing [`Scheduler`], one `EngineKind` arm in
//! `config.rs`, and its construction in `System::build_engine` (`system.rs`); the exhaustive match in
//! `tests/leap.rs` then fails to compile until the leap tests cover it. A new policy is correct before
//! it is fast: [`Scheduler::steady_decode`] defaults to None, and the replica then steps one by one. To
//! let the replica leap over runs of decode steps, implement it under the leap contract written at the
//! top of `replica.rs`.

pub mod dynamic;
pub mod none;
pub mod sglang;
pub mod sglang_policy;
pub mod vllm_v1;
pub mod waiting;

use crate::kv::KvStore;
use crate::request::{Request, RequestId};
use crate::time::SimTime;

/// What a scheduling pass decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The plan holds a step to run now.
    Run,
    /// Nothing to run until a request arrives (the plan is empty). A policy that holds requests it will
    /// not run until more arrive (a batch that must fill) says so with this too.
    Idle,
    /// Nothing to run now, but schedule again at this time (later than now) even if nothing arrives: a
    /// batch timeout, an adaptive interval. The plan is empty.
    WakeAt(SimTime),
}

pub use crate::request::RequestTable;

/// Tokens a step computes for no request: a request-level batch's prompt padded to its longest, or the
/// row of a request that has finished in a lockstep batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaddingChunk {
    pub tokens: u32,
    /// The padded row's context after this chunk (its attention span).
    pub context: u32,
    /// A decode row (one token, sampled) rather than prefill padding.
    pub decode: bool,
}

/// What one step computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// (request, tokens computed this step), in scheduling order. With speculative decoding a decoding
    /// request's draft tokens are among them: its computed count then runs past its tokens until the
    /// replica, at the step's end, rolls back over the rejected drafts.
    pub scheduled: Vec<(RequestId, u32)>,
    /// Requests preempted while planning this step, in preemption order.
    pub preempted: Vec<RequestId>,
    /// Padding the step computes besides its requests (empty for continuous batching).
    pub padding: Vec<PaddingChunk>,
    /// Seconds of synchronous KV loads from lower tiers the step carries (LMCache L3: added to the
    /// step's time); 0 without offload.
    pub kv_load: crate::time::SimDuration,
    /// KV pulls from prefill instances this pass started (disaggregated decode instances): (request,
    /// prefill replica, when the pull lands). Planned even when no step runs.
    pub transfers: Vec<(RequestId, crate::event::ReplicaId, SimTime)>,
}

impl StepPlan {
    /// Empties the plan, keeping its buffers' capacity (a replica reuses one plan from step to step).
    pub fn clear(&mut self) {
        self.scheduled.clear();
        self.preempted.clear();
        self.padding.clear();
        self.transfers.clear();
        self.kv_load = crate::time::SimDuration::ZERO;
    }

    pub fn total_tokens(&self) -> u64 {
        self.scheduled.iter().map(|&(_, n)| n as u64).sum()
    }
}

/// A batching policy with its KV store.
///
/// Contract: `schedule` leaves every scheduled request with `num_computed_tokens` advanced by its tokens and
/// the KV blocks to hold them; a preempted request is back in the waiting queue with no blocks and nothing
/// computed; the policy keeps every request it was given in exactly one of its queues until
/// `finish_requests` or `abort` removes it. The policy never frees a finished or aborted request's KV:
/// the replica does, through [`Scheduler::kv_mut`], after the policy has let it go.
pub trait Scheduler {
    /// The KV store this policy owns and allocates through.
    type Kv: KvStore;
    /// A new request joins the waiting queue.
    fn add_request(&mut self, req: &Request);
    /// Plans (and allocates for) one step at `now` into `plan`, whose previous contents are discarded first
    /// (the caller passes the same plan step after step, so that its lists are not allocated anew each
    /// step). Returns [`Next::Run`] exactly when the plan schedules something; otherwise whether to wait
    /// for an arrival or until a given time. A wake is a floor, not a promise of silence: the replica may
    /// also be asked at an arrival, at a step's end, or at an earlier wake, and the policy answers from its
    /// state each time.
    fn schedule(&mut self, now: SimTime, reqs: &mut RequestTable, plan: &mut StepPlan) -> Next;
    /// The replica's KV store, which this policy allocates through.
    fn kv(&self) -> &Self::Kv;
    fn kv_mut(&mut self) -> &mut Self::Kv;
    /// Removes requests that finished at `now` (the end of the step that sampled their last token, or
    /// the end of a truncated run) from the running set; their blocks are freed by the caller.
    fn finish_requests(&mut self, finished: &[RequestId], now: SimTime);
    /// Drops request `req` from whichever queue holds it (a client timeout, a cancelled request); its
    /// blocks are freed by the caller. False when the policy does not hold it. Call only between steps.
    fn abort(&mut self, req: &Request) -> bool;
    fn num_waiting(&self) -> usize;
    fn num_running(&self) -> usize;
    /// Every request held, waiting first then running (end-of-run accounting).
    fn all_requests(&self) -> Vec<RequestId>;
    /// The running requests, in scheduling order, when the next steps are pure decode: nothing waits, every
    /// running request needs exactly one token, and one step's budget covers them all. Contract: while no
    /// request is added, finishes, or needs a KV block allocated or registered, every `schedule` call would
    /// schedule exactly these requests, one token each, in this order, and change nothing else. None when
    /// that does not hold. (Used to advance runs of such steps at once, exactly: see the leap contract in
    /// `replica.rs`.) The default, None, always steps one by one.
    ///
    /// (See also [`Scheduler::may_idle_with_work`].)
    fn steady_decode(&self, _reqs: &RequestTable) -> Option<&[RequestId]> {
        None
    }
    /// True for a policy that may answer [`Next::Idle`] while it holds requests (a batch that waits to
    /// fill, with no timeout). For the others (the default) that would be a deadlock, which debug builds
    /// report (invariant 5).
    fn may_idle_with_work(&self) -> bool {
        false
    }
    /// The current batch size limit of a policy that has one (an adaptive request-level batcher), for
    /// the time series; None for the others.
    fn batch_limit(&self) -> Option<u32> {
        None
    }
}
