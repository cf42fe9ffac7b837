//! One serving instance: applies its scheduler's plan through the KV manager, asks the cost model for the
//! step's duration, and advances requests when the step completes.
//!
//! # The leap contract
//!
//! [`Replica::leap`] advances a run of pure-decode steps in one call instead of one `Schedule` and one
//! `StepDone` event per step. `--no-leap` steps one by one, and every output must be byte-identical either
//! way (`tests/leap.rs`). A leap of k steps is exact only while all of these hold; whoever adds a
//! scheduler, a KV store, a cost model or a statistic must keep them (a scheduler or a store may instead
//! decline to leap, its default):
//!
//! 1. **Scheduler.** While nothing is added, finished or allocated, every `schedule` would pick the same
//!    requests, one token each, in the same order, and change no other state ([`Scheduler::steady_decode`]
//!    says so, or returns None, its default, and the replica steps one by one). A policy with per-step state
//!    (a decaying ratio, a random draw) must return None; state that changes only when no request runs
//!    (the dynamic batcher's adaptive limit, adjusted at dispatch) does not matter.
//! 2. **KV calls.** Between KV events, the store's `allocate_slots(r, 1)` is a no-op; its
//!    [`KvStore::decode_rule`] predicts exactly the steps where it is not (the paged store's
//!    `DecodeRule::event` sits beside the fast path it mirrors, in `kv/paged.rs`), or is None, its
//!    default, and the replica steps one by one. At those steps allocation happens in the scheduler's order and fails exactly when
//!    [`KvStore::leap_fits`] says so, where the leap stops and the scheduler takes over. The store's
//!    per-step hooks are not called inside a leap: `on_token` runs once at its end, `after_step` never, and
//!    decode tokens are priced as decode (a store that recomputes the context declines).
//! 3. **Counters and hashes in between.** Request counters are brought up to date only at KV events and
//!    at the end (`sync_leap`), block hashes only at the end (`KvStore::on_token`): the paged store's
//!    `allocate_slots` updates the hashes itself when it registers a block.
//! 4. **Pricing.** Step times are added in the same order as one by one (`cost::total_seconds` is a left
//!    fold, which the leap reproduces as `before + v + rest`); the cost model honours
//!    `CostModel::decode_context_times`' contract (tested by `check_decode_context_contract`); every
//!    duration is rounded by `cost::step_duration`. A leap's steps are decode-only shapes given by their
//!    sums (`StepShape::decode`): no chunk, no padding, no KV transfer; a step that carries any of them
//!    is planned by the scheduler, not leapt.
//! 5. **Statistics.** Only order-free integer sums: operator femtoseconds (`ReplicaStats::op_fs`), the
//!    inter-token histogram, the `used_block_ns` integral. KV usage changes only at allocation steps.
//! 6. **Time.** Every running request sampled its last token at `now`; the leap ends strictly before the
//!    `horizon` it is given and at most 1 ns past the stop time. The world gives the next queued event
//!    anywhere (a time-series sample included), or, for a coasting replica (`world.rs`), the first event
//!    that reaches this replica: [`Replica::leap_extent`] prices the run ahead without taking it, and
//!    the steps are taken when its end comes or something reaches the replica.
//! 7. **Events.** A leap stands in for exactly 2k - 1 events (`EventQueue::count_skipped`), because the
//!    event count is reported; its last `Schedule`, or its finished requests' work, happens at the leap's
//!    end, with the leap's end as the run's last activity (a coast counts its own way, to the same
//!    totals).
//! 8. **Time series.** `batch_tokens` of a sample comes from `ReplicaStats::last_batch_tokens`, which the
//!    leap sets as the last step would.
//! 9. **Randomness.** No random draw happens inside a step (routing draws at arrival, an event).
//!
//! Debug builds check 2 and 3 against a full scan at every leap step (`sync_leap` and the invariant
//! checks); the leap tests check the whole on workloads with prefix hits, preemption, several replicas,
//! priorities, trace replay and every cost model.

use crate::cluster::{ReplicaState, ReplicaView};
use crate::cost::{
    seconds_to_fs, step_duration, total_seconds, BatchShape, CostModel, OpTime, StepShape,
};
use crate::event::ReplicaId;
use crate::event::SessionId;
use crate::kv::{CacheHit, KvStats, KvStore};
use crate::metrics::histogram::Batch;
use crate::request::{Request, RequestId, StopReason};
use crate::scheduler::{Next, RequestTable, Scheduler, StepPlan};
use crate::time::{SimDuration, SimTime};

/// What [`Replica::start_step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStart {
    /// A step started; it ends after this long.
    Started(SimDuration),
    /// Nothing runs until a request arrives.
    Idle,
    /// Nothing runs now; schedule again at this time.
    WakeAt(SimTime),
}

/// One request's part of a recorded step ([`StepRecord`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRow {
    pub request: RequestId,
    /// Tokens computed for it in the step: a prefill chunk's length, or 1 for a decode.
    pub tokens: u32,
    /// Its context after the step (tokens with KV, the step's included).
    pub context: u32,
    pub decode: bool,
    /// The step samples a token for it (a decode, or a chunk that completes the prompt).
    pub samples: bool,
}

/// One engine step as the simulator ran it: when, for how long, and what it computed for whom (recorded
/// with `SimOptions::record_steps`, for `servesim validate` to execute the same schedule on real kernels).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub start: SimTime,
    pub duration: SimDuration,
    pub rows: Vec<StepRow>,
    /// Requests preempted while planning the step (their KV freed before it ran).
    pub preempted: Vec<RequestId>,
}

/// A step in flight.
#[derive(Debug)]
struct InFlight {
    plan: StepPlan,
    started: SimTime,
    /// When the step ends, and the blocks in use while it runs (for `trim_after`).
    ends: SimTime,
    used: u32,
}

/// Counters a replica keeps for the summary.
#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    pub steps: u64,
    pub busy: SimDuration,
    pub preemptions: u64,
    pub last_batch_tokens: u64,
    /// Used KV blocks integrated over step time (block-nanoseconds), exactly: the time-weighted mean usage
    /// is this over (usable blocks x time).
    pub used_block_ns: u128,
    /// The most KV blocks in use at once (the peak usage is `KvStats::usage_at` of it).
    pub peak_used_blocks: u32,
    /// Step time by operator class, summed over steps in integer femtoseconds (`cost::seconds_to_fs`), in
    /// first-seen order. Integer sums do not depend on the order of the additions, so a leap adds each
    /// operator that stays the same over its steps once, multiplied by the number of steps.
    pub op_fs: Vec<(&'static str, u128)>,
    /// Padding tokens computed (request-level batching: prompts padded to the longest, rows of finished
    /// requests in a lockstep batch).
    pub padding_tokens: u64,
    /// Request-level batches run (one more than the highest `batch_id` seen) and the requests they
    /// carried.
    pub batches: u64,
    pub batched_requests: u64,
    /// Requests routed here and queued (attempts, retries and hand-backs included) and their prompt
    /// tokens.
    pub requests: u64,
    pub prompt_tokens: u64,
    /// Requests routed here and refused because its queue was full (`queue_full`).
    pub refused: u64,
    /// The stretches it was up or draining, in ns: (start, end), the last open (None) while it is.
    pub up: Vec<(u64, Option<u64>)>,
    /// Speculative decoding's counters (all zero without it).
    pub spec: crate::speculative::SpecStats,
    /// KV pulls from prefill instances started here (a disaggregated decode instance), their bytes
    /// and their summed durations in ns.
    pub kv_transfers: u64,
    pub kv_transfer_bytes: u64,
    pub kv_transfer_ns: u64,
}

impl ReplicaStats {
    /// Nanoseconds it was up or draining within [0, t].
    pub fn up_within(&self, t: SimTime) -> u64 {
        self.up
            .iter()
            .map(|&(a, b)| b.unwrap_or(u64::MAX).min(t.0).saturating_sub(a))
            .sum()
    }
}

impl ReplicaStats {
    /// Where `op` accumulates, added if new. A cost model lists its operators in the same order every
    /// step, so position `hint` usually holds it; names are static strings, so they are found by address
    /// first (a step shape adds or drops an operator, shifting positions), by their bytes only when no
    /// address matches.
    fn slot(&mut self, op: &'static str, hint: usize) -> usize {
        let same = |e: &(&'static str, u128)| std::ptr::eq(e.0, op);
        match self.op_fs.get(hint) {
            Some(e) if same(e) => hint,
            _ => self
                .op_fs
                .iter()
                .position(same)
                .or_else(|| self.op_fs.iter().position(|e| e.0 == op))
                .unwrap_or_else(|| {
                    self.op_fs.push((op, 0));
                    self.op_fs.len() - 1
                }),
        }
    }

    /// Adds a step's breakdown.
    fn add_ops(&mut self, ops: &[OpTime]) {
        for (i, o) in ops.iter().enumerate() {
            let j = self.slot(o.op, i);
            self.op_fs[j].1 += seconds_to_fs(o.seconds);
        }
    }

    /// Adds `steps` steps of a leap that all had the breakdown `ops` but for operator `var`, whose times
    /// summed to `var_fs`.
    fn add_leap_ops(&mut self, ops: &[OpTime], steps: u64, var: usize, var_fs: u128) {
        for (i, o) in ops.iter().enumerate() {
            let j = self.slot(o.op, i);
            self.op_fs[j].1 += if i == var {
                var_fs
            } else {
                steps as u128 * seconds_to_fs(o.seconds)
            };
        }
    }

    /// A step's time-weighted usage and peak, with `used` KV blocks.
    fn add_usage(&mut self, used: u32, dur: SimDuration) {
        self.used_block_ns += used as u128 * dur.0 as u128;
        self.peak_used_blocks = self.peak_used_blocks.max(used);
    }
}

/// The cumulative KV counters of the stores a replica had before its restarts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retired {
    pub evictions: u64,
    pub prefix: crate::kv::PrefixStats,
    pub store: crate::kv::conversation::StoreCounters,
    pub offload: Option<crate::kv::OffloadStats>,
    pub radix: Option<crate::kv::RadixCounters>,
}

/// A replica running policy `S` (which owns its KV store).
pub struct Replica<S> {
    /// Stable for the whole run (the replica's index in the cluster).
    pub id: ReplicaId,
    /// Whether it takes new requests (routers read it through [`Replica::view`]).
    pub state: ReplicaState,
    /// Prompt tokens of the requests held.
    prompt_tokens: u64,
    /// The batching policy, which owns the KV store.
    scheduler: S,
    requests: RequestTable,
    /// The stop oracle: true output lengths, kept apart from the requests the scheduler sees.
    true_output: crate::idtable::IdTable<u32>,
    max_model_len: u32,
    in_flight: Option<InFlight>,
    /// A `Schedule` event is queued for this replica.
    pub schedule_pending: bool,
    /// Coasting: advancing over steps nothing has seen yet (see [`Coast`]).
    pub coast: Option<Coast>,
    /// The most steps the next coast prices ahead (the world's `COAST_MIN_STEPS` to `COAST_MAX_STEPS`).
    pub coast_cap: u64,
    /// The scheduler holds requests but said it runs nothing until another arrives (invariant 5).
    pub waits_for_arrival: bool,
    /// Requests whose clients gave up while a step was in flight: aborted when it ends, as vLLM
    /// handles aborts between steps.
    pub pending_aborts: Vec<RequestId>,
    /// Leaving (`remove_replica`): its unstarted requests go back to the router between steps.
    pub reroute_pending: bool,
    /// Restarting (`restart`): between steps it drops what it holds and its cache.
    pub restart_pending: bool,
    /// The model it serves (`System::of_model`): 0 but after a `swap_model`.
    pub model: usize,
    /// The model a pending restart brings (a `swap_model`), with how long it is down, seconds.
    pub swap_pending: Option<(usize, f64)>,
    /// While down after a restart or a model swap: when it is back (its `ReplicaReady` event).
    pub ready_at: Option<SimTime>,
    /// The cumulative KV counters of the stores it had before restarts (see [`Replica::kv_stats`]).
    pub retired: Retired,
    pub stats: ReplicaStats,
    /// The plan of the last finished step, emptied by the next `schedule`: its lists are reused, as a plan
    /// grown push by push every step showed in profiles.
    spare_plan: StepPlan,
    /// Buffers `leap` reuses: it runs once per run of steps, and allocating its lists each time showed.
    leap_scratch: LeapScratch,
    /// The shape of the step being priced, reused from step to step (its chunk list).
    shape: StepShape,
    /// The store recomputes the context for every decode token (`KvStore::recomputes_context`, a fixed
    /// property of the store, read once).
    recompute: bool,
    /// Every step started, when recording (`SimOptions::record_steps`; runs stepped one by one).
    pub step_log: Option<Vec<StepRecord>>,
    /// Speculative decoding's acceptance model, when on (the scheduler plans the draft tokens).
    spec: Option<crate::speculative::Acceptance>,
    /// Disaggregated prefill instance: requests done here whose KV a decode instance has yet to pull.
    /// They stay in `requests` (their blocks held, as invariant checks see) but in no queue, and are
    /// no work (see [`Replica::release_parked`]).
    parked: Vec<RequestId>,
    /// KV pulls the scheduler started and the world has not yet been told of (see
    /// [`Replica::take_transfers`]).
    transfers: Vec<(RequestId, ReplicaId, SimTime)>,
}

#[derive(Default)]
struct LeapScratch {
    running: Vec<RequestId>,
    /// Each running request's (computed, output) tokens when the leap began.
    base: Vec<(u32, u32)>,
    /// Each running request's next KV event step (see `KvStore::decode_rule`).
    event: Vec<u64>,
    /// Each running request's next step that needs a new block (no earlier than its next event): a step's
    /// block needs are counted from these, without looking the requests up.
    block_at: Vec<u64>,
    /// The steps' inter-token gaps, handed over at the end.
    gaps: Batch,
    /// Each step's (seconds, context operator's seconds) as [`Replica::leap_extent`] priced them, for
    /// the leap from `priced_from` (a coast's, taken later from the same state): the leap reads them
    /// instead of pricing each step again. Only with a context operator (`DecodePricer::var`).
    priced: Vec<(f64, f64)>,
    priced_from: Option<SimTime>,
}

/// Steps a leap prices at once (`CostModel::decode_context_times`).
const PRICE_AHEAD: usize = 32;

/// Prices a leap's steps in order (leap contract, condition 4). Only the contexts change from step to
/// step, so when the cost model prices the one operator that reads them alone (`decode_context_time`),
/// the others are summed once: a step's total is `before` (the operators ahead of it, summed from zero)
/// plus its time plus each later operator, the same additions in the same order as `total_seconds` of a
/// full breakdown. That operator's times are priced up to `PRICE_AHEAD` steps at a time (no further than
/// `max_steps`: most leaps are short), from step `priced_from`. A model without such an operator is
/// asked for each step's full breakdown.
struct DecodePricer<'c> {
    cost: &'c dyn CostModel,
    start: BatchShape,
    /// Decode sequences (= tokens) per step.
    b: u64,
    max_steps: u64,
    /// The operators of the last step priced in full (of step 0 when `var` is set).
    ops: crate::cost::OpTimes,
    /// The position of the context operator in `ops`.
    var: Option<usize>,
    before: f64,
    priced: [f64; PRICE_AHEAD],
    priced_from: u64,
}

impl<'c> DecodePricer<'c> {
    fn new(cost: &'c dyn CostModel, start: BatchShape, b: u64, max_steps: u64) -> Self {
        let ops = cost.breakdown(&StepShape::decode(start));
        let mut priced = [0.0f64; PRICE_AHEAD];
        let n = max_steps.min(PRICE_AHEAD as u64) as usize;
        let var = cost
            .decode_context_times(&start, b, &mut priced[..n])
            .and_then(|op| ops.iter().position(|o| o.op == op));
        let before = var.map_or(0.0, |i| total_seconds(&ops[..i]));
        DecodePricer {
            cost,
            start,
            b,
            max_steps,
            ops,
            var,
            before,
            priced,
            priced_from: 0,
        }
    }

    /// Step `steps`' total seconds and its context operator's seconds (0 without one). Asked for steps
    /// in increasing order, each below `max_steps`; a step past the window priced last re-prices from
    /// it (a leap that read its first steps' prices from its extent asks from where those end).
    #[inline]
    fn price(&mut self, steps: u64) -> (f64, f64) {
        match self.var {
            Some(i) => {
                if steps - self.priced_from >= PRICE_AHEAD as u64 {
                    self.priced_from = steps;
                    let n = (self.max_steps - steps).min(PRICE_AHEAD as u64) as usize;
                    self.cost.decode_context_times(
                        &self.start.advanced(steps, self.b),
                        self.b,
                        &mut self.priced[..n],
                    );
                }
                let v = self.priced[(steps - self.priced_from) as usize];
                let rest = self.ops[i + 1..]
                    .iter()
                    .fold(self.before + v, |s, o| s + o.seconds);
                (rest, v)
            }
            None => {
                if steps > 0 {
                    self.ops = self
                        .cost
                        .breakdown(&StepShape::decode(self.start.advanced(steps, self.b)));
                }
                (total_seconds(&self.ops), 0.0)
            }
        }
    }
}

/// A replica coasting (the world's, see `world.rs`): idle between steps at `since` as far as the rest of
/// the run has seen, it takes the `steps` steps a leap from `since` would take, the last ending at `end`,
/// unless something reaches it before then; they are taken (as one leap) only when `end` comes or when
/// something does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coast {
    pub since: SimTime,
    pub end: SimTime,
    pub steps: u64,
}

/// What a leap did: `steps` steps, the last ending at `end`, whose last step finished `done` (empty when
/// it finished no request), in the order `finish_step` returns them.
#[derive(Debug)]
pub struct Leapt {
    pub steps: u64,
    pub end: SimTime,
    pub done: Vec<Request>,
}

impl<S: Scheduler> Replica<S> {
    /// A replica, up from time 0 (the world sets later joiners down until they join).
    pub fn new(id: ReplicaId, scheduler: S, max_model_len: u32) -> Replica<S> {
        let recompute = scheduler.kv().recomputes_context();
        let mut stats = ReplicaStats::default();
        stats.up.push((0, None));
        Replica {
            recompute,
            id,
            state: ReplicaState::Up,
            prompt_tokens: 0,
            scheduler,
            requests: RequestTable::default(),
            true_output: Default::default(),
            max_model_len,
            in_flight: None,
            schedule_pending: false,
            coast: None,
            coast_cap: 256,
            waits_for_arrival: false,
            pending_aborts: Vec::new(),
            reroute_pending: false,
            restart_pending: false,
            model: 0,
            swap_pending: None,
            ready_at: None,
            retired: Retired::default(),
            stats,
            spare_plan: StepPlan::default(),
            leap_scratch: LeapScratch::default(),
            shape: StepShape::default(),
            step_log: None,
            spec: None,
            parked: Vec::new(),
            transfers: Vec::new(),
        }
    }

    /// The KV pulls from prefill instances its scheduler started since the last call: (request, prefill
    /// replica, when the pull lands).
    pub fn take_transfers(&mut self) -> Vec<(RequestId, ReplicaId, SimTime)> {
        std::mem::take(&mut self.transfers)
    }

    /// A decode instance has pulled parked request `id`'s KV: its blocks are freed (they stay cached).
    /// False when it holds no such request.
    pub fn release_parked(&mut self, id: RequestId) -> bool {
        let Some(i) = self.parked.iter().position(|&p| p == id) else {
            return false;
        };
        self.parked.swap_remove(i);
        let mut r = self.requests.remove(&id).expect("a parked request is held");
        self.scheduler.kv_mut().free(&mut r);
        true
    }

    /// Turns on speculative decoding's acceptance (its scheduler must plan the draft tokens).
    pub fn with_speculation(mut self, acceptance: crate::speculative::Acceptance) -> Self {
        self.spec = Some(acceptance);
        self
    }

    /// The KV store (owned by the scheduler).
    pub fn kv(&self) -> &S::Kv {
        self.scheduler.kv()
    }

    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }

    /// The scheduler's batch size limit, if it has one (see `Scheduler::batch_limit`).
    pub fn batch_limit(&self) -> Option<u32> {
        self.scheduler.batch_limit()
    }

    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }

    /// What a router sees of this replica.
    pub fn view(&self) -> ReplicaView {
        ReplicaView {
            id: self.id,
            state: self.state,
            degraded: false,
            num_waiting: self.scheduler.num_waiting(),
            num_running: self.scheduler.num_running(),
            prompt_tokens: self.prompt_tokens,
            kv_usage: self.scheduler.kv().stats().usage(),
        }
    }

    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// When the step in flight ends.
    pub fn step_ends(&self) -> Option<SimTime> {
        self.in_flight.as_ref().map(|f| f.ends)
    }

    /// Holds requests to run (parked ones, done here, are not work).
    pub fn has_work(&self) -> bool {
        self.requests.len() > self.parked.len()
    }

    /// Queues a new request.
    pub fn enqueue(&mut self, mut req: Request, true_output_tokens: u32) {
        req.replica = self.id;
        self.prompt_tokens += req.prompt_tokens as u64;
        self.stats.requests += 1;
        self.stats.prompt_tokens += req.prompt_tokens as u64;
        self.waits_for_arrival = false;
        self.scheduler.kv_mut().on_enqueue(&mut req);
        if let Some(a) = &self.spec {
            req.spec_acceptance_rate = a.rate_for(req.id);
        }
        self.true_output.insert(req.id, true_output_tokens);
        self.scheduler.add_request(&req);
        self.requests.insert(req.id, Box::new(req));
    }

    /// Plans and starts a step at `now`: its duration, or why nothing runs (the scheduler waits for an
    /// arrival, or until a time).
    pub fn start_step(&mut self, now: SimTime, cost: &dyn CostModel) -> StepStart {
        debug_assert!(self.in_flight.is_none());
        let mut plan = std::mem::take(&mut self.spare_plan);
        let next = self.scheduler.schedule(now, &mut self.requests, &mut plan);
        for &(id, _, lands) in &plan.transfers {
            let pd = self.requests[&id].pd.as_ref().expect("a pulled request");
            self.stats.kv_transfers += 1;
            self.stats.kv_transfer_bytes += pd.transfer_bytes;
            self.stats.kv_transfer_ns += lands.since(now).0;
        }
        self.transfers.append(&mut plan.transfers);
        self.stats.preemptions += plan.preempted.len() as u64;
        debug_assert_eq!(
            next == Next::Run,
            !plan.scheduled.is_empty(),
            "a scheduler returns Run exactly when it schedules something"
        );
        if next != Next::Run {
            self.spare_plan = plan;
            self.waits_for_arrival = next == Next::Idle && self.has_work();
            // A prefill instance whose blocks are held by parked requests waits for their pulls.
            debug_assert!(
                !self.waits_for_arrival
                    || self.scheduler.may_idle_with_work()
                    || !self.parked.is_empty(),
                "invariant 5: work held but nothing schedulable"
            );
            return match next {
                Next::WakeAt(t) => {
                    debug_assert!(t > now, "a wake time must be later than now");
                    StepStart::WakeAt(t)
                }
                _ => StepStart::Idle,
            };
        }
        self.waits_for_arrival = false;
        let shape = &mut self.shape;
        shape.clear();
        let recompute = self.recompute;
        let mut rows = Vec::new();
        for &(id, n) in &plan.scheduled {
            let r = self.requests.get_mut(&id).expect("scheduled request");
            if r.first_scheduled.is_none() {
                if let Some(b) = r.batch_id {
                    self.stats.batches = self.stats.batches.max(b + 1);
                    self.stats.batched_requests += 1;
                }
            }
            r.first_scheduled.get_or_insert(now);
            if let Some(pd) = &mut r.pd {
                match pd.stage {
                    crate::request::PdStage::Prefill => pd.prefill_start.get_or_insert(now),
                    crate::request::PdStage::Decode { .. } => pd.decode_start.get_or_insert(now),
                };
            }
            // Already advanced by n (S6); past the tokens lie draft tokens to verify (speculative
            // decoding).
            let computed = r.num_computed_tokens;
            let samples = computed >= r.num_tokens();
            let decode = !r.in_prefill;
            if r.in_prefill {
                r.prefilled_tokens += n as u64;
            }
            if self.step_log.is_some() {
                rows.push(StepRow {
                    request: id,
                    tokens: n,
                    context: computed,
                    decode,
                    samples,
                });
            }
            if decode && recompute {
                // No KV kept: the token recomputes the whole context, a prefill chunk of it.
                shape.add(computed, computed, false, samples);
            } else if decode && n > 1 {
                // A verification: the sampled token and its drafts attend the context causally, as
                // a chunk, and every position's logits are sampled.
                shape.add_verify(n, computed);
            } else {
                shape.add(n, computed, decode, samples);
            }
            if samples && self.spec.is_some() {
                // The drafter proposes for every request that sampled, from its new context.
                shape.draft.add(1, computed, true, true);
            }
        }
        for p in &plan.padding {
            if p.decode && recompute {
                // A padding row recomputes its context too.
                shape.add_padding(p.context, p.context, false);
            } else {
                shape.add_padding(p.tokens, p.context, p.decode);
            }
        }
        self.stats.padding_tokens += shape.padding_tokens;
        let ops = cost.breakdown(shape);
        // LMCache's synchronous load runs inside the forward pass, before it (L3): added, not overlapped.
        let dur = step_duration(total_seconds(&ops)) + plan.kv_load;
        self.stats.add_ops(&ops);
        if plan.kv_load.0 > 0 {
            self.stats.add_ops(&[crate::cost::OpTime {
                op: crate::cost::op::KV_LOAD,
                seconds: plan.kv_load.as_secs_f64(),
            }]);
        }
        if let Some(log) = &mut self.step_log {
            log.push(StepRecord {
                start: now,
                duration: dur,
                rows,
                preempted: plan.preempted.clone(),
            });
        }
        self.stats.steps += 1;
        self.stats.busy += dur;
        self.stats.last_batch_tokens = plan.total_tokens();
        let kv = self.scheduler.kv();
        let used = kv.used_blocks();
        self.stats.add_usage(used, dur);
        self.in_flight = Some(InFlight {
            plan,
            started: now,
            ends: now + dur,
            used,
        });
        #[cfg(debug_assertions)]
        self.maybe_check_invariants();
        StepStart::Started(dur)
    }

    /// Advances a run of pure-decode steps in a tight loop, exactly as stepping one by one would: starting at
    /// `now` with this replica idle, it takes the steps that (a) the scheduler guarantees are pure decode of
    /// the same requests (`Scheduler::steady_decode`), (b) preempt no one (the free queue covers every new
    /// block the step needs), and (c) end strictly before `horizon` (the next event anywhere), so nothing
    /// else could have happened in between; it stops after the first step that finishes a request, and
    /// finishes those requests as `finish_step` would (the caller then does what it does after
    /// `finish_step`, at the leap's end). Each step allocates and registers KV blocks through the KV
    /// manager in the scheduler's order and takes its duration from the cost model, as a normal step does;
    /// only the events, plans and scheduler passes are skipped. Returns what it did (None if no step
    /// qualifies); `on_gaps` is given the steps' inter-token gaps (each step's, once per token it
    /// sampled).
    pub fn leap(
        &mut self,
        now: SimTime,
        horizon: Option<SimTime>,
        cost: &dyn CostModel,
        on_gaps: impl FnOnce(&Batch),
    ) -> Option<Leapt> {
        if self.in_flight.is_some() {
            return None;
        }
        let running = self.scheduler.steady_decode(&self.requests)?;
        let mut scratch = std::mem::take(&mut self.leap_scratch);
        // Prices from an extent of this very leap (a coast's): same state, same steps.
        if scratch.priced_from.take() != Some(now) {
            scratch.priced.clear();
        }
        scratch.running.clear();
        scratch.running.extend_from_slice(running);
        let out = self.leap_with(&mut scratch, now, horizon, cost, on_gaps);
        self.leap_scratch = scratch;
        out
    }

    /// The first step of a leap over `running` from `now` and the most steps it can take (up to and
    /// including the first that completes a request): None when some request did not sample its last
    /// token at `now`, or one has nothing left to compute.
    fn leap_start(&self, running: &[RequestId], now: SimTime) -> Option<(BatchShape, u64)> {
        let mut max_steps = u64::MAX;
        let mut context = 0u64;
        let mut max_context = 0u64;
        for id in running.iter() {
            let r = &self.requests[id];
            // The last token of the previous step: every request must have sampled it at `now`.
            if r.last_token != Some(now) {
                return None;
            }
            let truth = self.true_output[id];
            let end = truth
                .min(r.max_tokens)
                .min(self.max_model_len.saturating_sub(r.prompt_tokens));
            // The leap ends with the first step that completes a request (at least one step away: a
            // request that had reached its end would have finished).
            let to_finish = end.saturating_sub(r.num_output_tokens) as u64;
            max_steps = max_steps.min(to_finish);
            context += r.num_computed_tokens as u64 + 1;
            max_context = max_context.max(r.num_computed_tokens as u64 + 1);
        }
        if max_steps == 0 {
            return None;
        }
        let b = running.len() as u64;
        let start = BatchShape {
            decode_seqs: b,
            decode_context_tokens: context,
            decode_max_context: max_context,
            sampled: b,
            ..BatchShape::default()
        };
        Some((start, max_steps))
    }

    /// How far [`Replica::leap`] from `now` with the same `horizon` would go, without going, in at most
    /// `cap` steps: the steps it would take and its last step's end (None for no step). Changes nothing
    /// the run can see (only scratch space). It follows the leap's conditions step by step, pricing each step the same way; of
    /// the KV calls it needs only the block counts, since allocating a block in a decode step lowers what
    /// [`KvStore::leap_fits`] allows by exactly one (so a step fits when the blocks of every step before
    /// it plus its own fit now), and a request's next block is due one block size after its last.
    pub fn leap_extent(
        &mut self,
        now: SimTime,
        horizon: Option<SimTime>,
        cap: u64,
        cost: &dyn CostModel,
    ) -> Option<(u64, SimTime)> {
        if self.in_flight.is_some() || self.recompute {
            return None;
        }
        let rule = self.scheduler.kv().decode_rule()?;
        let running = self.scheduler.steady_decode(&self.requests)?;
        let (start, natural) = self.leap_start(running, now)?;
        let max_steps = natural.min(cap);
        let b = start.decode_seqs;
        let mut block_at = std::mem::take(&mut self.leap_scratch.block_at);
        let mut priced = std::mem::take(&mut self.leap_scratch.priced);
        priced.clear();
        block_at.clear();
        block_at.extend(
            running
                .iter()
                .map(|id| rule.event(&self.requests[id], 0).new_block_at),
        );
        let every = rule.block_size as u64;
        let mut next_block = block_at.iter().copied().min().unwrap_or(u64::MAX);
        let mut pricer = DecodePricer::new(cost, start, b, max_steps);
        let kv = self.scheduler.kv();
        let (mut allocated, mut t, mut steps) = (0u32, now, 0u64);
        while steps < max_steps {
            let need = if steps == next_block {
                block_at.iter().filter(|&&s| s == steps).count() as u32
            } else {
                0
            };
            if need > 0 && !kv.leap_fits(allocated + need) {
                break;
            }
            let p = pricer.price(steps);
            let end = t + step_duration(p.0);
            if horizon.is_some_and(|h| end >= h) {
                break;
            }
            if pricer.var.is_some() {
                priced.push(p);
            }
            if need > 0 {
                allocated += need;
                for s in block_at.iter_mut().filter(|s| **s == steps) {
                    *s += every;
                }
                next_block = block_at.iter().copied().min().unwrap_or(u64::MAX);
            }
            t = end;
            steps += 1;
        }
        self.leap_scratch.block_at = block_at;
        self.leap_scratch.priced = priced;
        self.leap_scratch.priced_from = Some(now);
        (steps > 0).then_some((steps, t))
    }

    fn leap_with(
        &mut self,
        scratch: &mut LeapScratch,
        now: SimTime,
        horizon: Option<SimTime>,
        cost: &dyn CostModel,
        on_gaps: impl FnOnce(&Batch),
    ) -> Option<Leapt> {
        // A store without a rule, or one that recomputes the context (its decode tokens are not priced
        // as decode), is stepped one by one (leap contract, condition 2).
        let rule = self.scheduler.kv().decode_rule()?;
        if self.recompute {
            return None;
        }
        let LeapScratch {
            running,
            base,
            event,
            block_at,
            gaps,
            priced,
            ..
        } = scratch;
        gaps.clear();
        let (start, max_steps) = self.leap_start(running, now)?;
        let b = start.decode_seqs;
        // Between a request's block boundaries its steps change only its counters, so each request gets
        // the step at which its next KV call does something (`KvStore::decode_rule`): only then is it
        // touched, and its counters, advanced one per step, are brought up to date first (and for all at
        // the end). Every other call a one-by-one step would make is the store's no-op fast path.
        base.clear();
        event.clear();
        block_at.clear();
        for id in running.iter() {
            let r = &self.requests[id];
            base.push((r.num_computed_tokens, r.num_output_tokens));
            let ev = rule.event(r, 0);
            event.push(ev.at);
            block_at.push(ev.new_block_at);
        }
        let mut next_event = event.iter().copied().min().unwrap_or(u64::MAX);
        let mut pricer = DecodePricer::new(cost, start, b, max_steps);
        let mut var_fs = 0u128;
        // KV usage changes only where a step allocates: the usage integral adds used blocks x the steps'
        // time since the last change (`dur_since`), exactly the per-step sum.
        let mut used = self.scheduler.kv().used_blocks();
        let mut dur_since = 0u64;
        let mut t = now;
        let mut steps = 0;
        while steps < max_steps {
            // Blocks this step allocates: one for each request whose computed tokens fill its blocks. If
            // the free queue cannot cover them all, the step would preempt: leave it to the normal path.
            if steps == next_event {
                // A request's next block is due no earlier than its next event, so each `block_at` is
                // at least `steps` here.
                let need = block_at.iter().filter(|&&s| s == steps).count() as u32;
                #[cfg(debug_assertions)]
                {
                    let bs = self.scheduler.kv().stats().block_size as u64;
                    let scanned = running.iter().zip(base.iter()).filter(|(id, b)| {
                        let held = self.requests[*id].kv.num_blocks_held() as u64;
                        (b.0 as u64 + steps) + 1 > held * bs
                    });
                    assert_eq!(
                        need as usize,
                        scanned.count(),
                        "block needs counted from `block_at`"
                    );
                }
                if !self.scheduler.kv().leap_fits(need) {
                    break;
                }
            }
            let (seconds, var_time) = match priced.get(steps as usize) {
                Some(&p) if pricer.var.is_some() => {
                    debug_assert_eq!(p, pricer.price(steps), "a coast's step priced alike");
                    p
                }
                _ => pricer.price(steps),
            };
            let dur = step_duration(seconds);
            let end = t + dur;
            if horizon.is_some_and(|h| end >= h) {
                break;
            }
            // The step as `schedule` + `finish_step` would run it: allocate in order, advance, sample.
            if steps == next_event {
                next_event = u64::MAX;
                let kv = self.scheduler.kv_mut();
                for (((id, b), ev), blk) in running
                    .iter()
                    .zip(base.iter())
                    .zip(event.iter_mut())
                    .zip(block_at.iter_mut())
                {
                    if *ev == steps {
                        let r = self.requests.get_mut(id).expect("running request");
                        r.num_computed_tokens = b.0 + steps as u32;
                        r.num_output_tokens = b.1 + steps as u32;
                        let ok = kv.allocate_slots(r, 1, CacheHit::default());
                        debug_assert!(ok, "the free queue was checked");
                        let next = rule.event(r, steps);
                        (*ev, *blk) = (next.at, next.new_block_at);
                    }
                    next_event = next_event.min(*ev);
                }
                self.stats.used_block_ns += used as u128 * dur_since as u128;
                dur_since = 0;
                used = kv.used_blocks();
            }
            self.stats.peak_used_blocks = self.stats.peak_used_blocks.max(used);
            match pricer.var {
                Some(_) => var_fs += seconds_to_fs(var_time),
                None => self.stats.add_ops(&pricer.ops),
            }
            self.stats.steps += 1;
            self.stats.busy += dur;
            dur_since += dur.0;
            gaps.record_ns_n(dur.0, b);
            t = end;
            steps += 1;
            #[cfg(debug_assertions)]
            {
                self.sync_leap(running, base, steps, None);
                self.maybe_check_invariants();
            }
        }
        self.stats.used_block_ns += used as u128 * dur_since as u128;
        if let (Some(i), true) = (pricer.var, steps > 0) {
            self.stats.add_leap_ops(&pricer.ops, steps, i, var_fs);
        }
        on_gaps(gaps);
        if steps == 0 {
            return None;
        }
        self.stats.last_batch_tokens = b;
        if steps < max_steps {
            self.sync_leap(running, base, steps, Some(t));
            return Some(Leapt {
                steps,
                end: t,
                done: Vec::new(),
            });
        }
        // The last step finished a request: its sampling, as `finish_step` does it.
        self.sync_leap(running, base, steps, None);
        let mut done = Vec::new();
        let kv = self.scheduler.kv_mut();
        for id in running.iter() {
            let r = self.requests.get_mut(id).expect("running request");
            r.last_token = Some(t);
            match stop_reason(r, self.true_output[id], self.max_model_len) {
                Some(reason) => done.push((*id, reason)),
                None => kv.on_token(r),
            }
        }
        let done = self.retire(done, t);
        Some(Leapt {
            steps,
            end: t,
            done,
        })
    }

    /// Brings the leap's requests' counters to `steps` steps past `base`; at the leap's end (`last`, the
    /// last step's end) also their last token time and block hashes.
    fn sync_leap(
        &mut self,
        running: &[RequestId],
        base: &[(u32, u32)],
        steps: u64,
        last: Option<SimTime>,
    ) {
        let kv = self.scheduler.kv_mut();
        for (id, b) in running.iter().zip(base) {
            let r = self.requests.get_mut(id).expect("running request");
            r.num_computed_tokens = b.0 + steps as u32;
            r.num_output_tokens = b.1 + steps as u32;
            if let Some(t) = last {
                r.last_token = Some(t);
                kv.on_token(r);
            }
        }
    }

    /// Completes the step in flight at `now`: requests that reached their full length sample a token (S7);
    /// finished ones free their blocks and are returned. `on_token` is called once per request that
    /// sampled, after the step's tokens are appended (several with speculative decoding: they reach the
    /// client together), with the time of its previous token.
    pub fn finish_step(
        &mut self,
        now: SimTime,
        mut on_token: impl FnMut(&Request, Option<SimTime>),
    ) -> Vec<Request> {
        let step = self.in_flight.take().expect("a step is in flight");
        debug_assert!(
            now > step.started,
            "invariant 3: a step takes at least 1 ns"
        );
        let mut done = Vec::new();
        let kv = self.scheduler.kv_mut();
        for &(id, _) in &step.plan.scheduled {
            let r = self.requests.get_mut(&id).expect("scheduled request");
            if r.num_computed_tokens < r.num_tokens() {
                continue; // a partial prefill chunk samples nothing
            }
            // Speculative decoding: the accepted drafts and one more token are appended, and the
            // computed count rolls back over the rejected ones (vLLM `num_computed_tokens -=
            // num_rejected`); their slots stay allocated for the next step's drafts.
            let drafts = r.num_computed_tokens - r.num_tokens();
            let emitted = match &self.spec {
                Some(a) if drafts > 0 => {
                    let accepted =
                        a.accepted(id, r.num_output_tokens, drafts, r.spec_acceptance_rate);
                    self.stats.spec.record(drafts, accepted);
                    r.num_computed_tokens -= drafts - accepted;
                    accepted + 1
                }
                _ => 1,
            };
            let prev = r.last_token;
            r.in_prefill = false;
            r.first_token.get_or_insert(now);
            r.last_token = Some(now);
            // The engine checks for a stop after each token it appends and drops the rest.
            let truth = self.true_output[&id];
            let mut stop = None;
            for _ in 0..emitted {
                r.num_output_tokens += 1;
                stop = stop_reason(r, truth, self.max_model_len);
                if stop.is_some() {
                    break;
                }
            }
            on_token(r, prev);
            match stop {
                Some(reason) => done.push((id, reason)),
                None => kv.on_token(r),
            }
        }
        kv.after_step(&mut self.requests, &step.plan.scheduled);
        self.spare_plan = step.plan;
        self.retire(done, now)
    }

    /// Removes requests that finished at `now`, freeing their blocks; returns them in `done`'s order.
    fn retire(&mut self, done: Vec<(RequestId, StopReason)>, now: SimTime) -> Vec<Request> {
        let ids: Vec<RequestId> = done.iter().map(|d| d.0).collect();
        self.scheduler.finish_requests(&ids, now);
        let mut out = Vec::with_capacity(done.len());
        for (id, reason) in done {
            let prefilled_here = self.requests[&id]
                .pd
                .as_ref()
                .is_some_and(|p| p.stage == crate::request::PdStage::Prefill);
            let mut r = if prefilled_here {
                // Its KV stays until a decode instance pulls it (vLLM's delayed free); the world gets
                // a copy to hand off.
                self.parked.push(id);
                let held = self.requests.get_mut(&id).expect("finished request");
                if let Some(pd) = &mut held.pd {
                    pd.prefill_end = Some(now);
                }
                (**held).clone()
            } else {
                let mut r = self.requests.remove(&id).expect("finished request");
                self.scheduler.kv_mut().free(&mut r);
                *r
            };
            self.prompt_tokens -= r.prompt_tokens as u64;
            self.true_output.remove(&id);
            r.finish = Some(now);
            r.finish_reason = Some(reason);
            debug_assert!(
                Some(r.arrival) <= r.first_scheduled
                    && r.first_scheduled <= r.first_token
                    && r.first_token <= r.finish,
                "invariant 4: causality of request {}",
                r.id
            );
            out.push(r);
        }
        #[cfg(debug_assertions)]
        self.maybe_check_invariants();
        out
    }

    /// Debug builds check the full invariants, which visit every block, store entry and held request,
    /// after every step while there are up to 256 of them; with more, every (count / 256)-th step, so
    /// the check costs about 256 visits per step (the tests' small scenes are checked every step; long
    /// runs, overloaded ones with deep queues included, stay fast enough to test).
    #[cfg(debug_assertions)]
    fn maybe_check_invariants(&self) {
        let kv = self.scheduler.kv().stats();
        let size = kv.usable_blocks as u64 + kv.store.entries + self.requests.len() as u64;
        let stride = (size / 256).max(1);
        if self.stats.steps.is_multiple_of(stride) {
            self.check_invariants();
        }
    }

    /// A run stopped at `stop` with this replica's step in flight: takes back the part of the step's busy
    /// time and block usage (counted in full when it started) that lies after `stop`, so time-weighted
    /// means cover exactly [0, stop].
    pub fn trim_after(&mut self, stop: SimTime) {
        if let Some(f) = &self.in_flight {
            if f.ends > stop {
                let cut = f.ends.since(stop.max(f.started));
                self.stats.busy = SimDuration(self.stats.busy.0.saturating_sub(cut.0));
                self.stats.used_block_ns = self
                    .stats
                    .used_block_ns
                    .saturating_sub(f.used as u128 * cut.0 as u128);
            }
        }
    }

    /// Session `session` has ended (see `KvStore::on_session_end`).
    pub fn on_session_end(&mut self, session: SessionId) {
        self.scheduler.kv_mut().on_session_end(session);
    }

    /// Its store's statistics, the cumulative counters including those of the stores a restart
    /// replaced (occupancy is the current store's).
    pub fn kv_stats(&self) -> KvStats {
        let mut k = self.scheduler.kv().stats();
        let r = &self.retired;
        k.evictions += r.evictions;
        k.prefix.queries += r.prefix.queries;
        k.prefix.hits += r.prefix.hits;
        k.prefix.preempted_queries += r.prefix.preempted_queries;
        k.prefix.preempted_hits += r.prefix.preempted_hits;
        k.store.lookups += r.store.lookups;
        k.store.hits += r.store.hits;
        k.store.stale += r.store.stale;
        k.store.evictions += r.store.evictions;
        k.store.releases += r.store.releases;
        k.store.peak_tokens = k.store.peak_tokens.max(r.store.peak_tokens);
        if let (Some(o), Some(ro)) = (k.offload.as_mut(), r.offload.as_ref()) {
            o.add_counters(ro);
        }
        if let (Some(x), Some(rx)) = (k.radix.as_mut(), r.radix.as_ref()) {
            // Counters add; the tree's and the host tier's occupancy are the current store's.
            x.add(&crate::kv::RadixCounters {
                tree_tokens: 0,
                evictable_tokens: 0,
                host_tokens: 0,
                ..*rx
            });
        }
        k
    }

    /// The same replica, serving model `m` (a factory's last step).
    pub fn serving(mut self, m: usize) -> Replica<S> {
        self.model = m;
        self
    }

    /// Fills its idle, empty store from a cache snapshot (a warm start; a restart's surviving tiers).
    pub fn restore_cache(&mut self, snap: &crate::kv::CacheSnapshot) {
        debug_assert!(self.requests.is_empty() && self.in_flight.is_none());
        self.scheduler.kv_mut().restore(snap);
    }

    /// Takes over `old`'s history after a restart replaced it with this fresh replica: its statistics,
    /// its retired KV counters plus its store's, its state.
    pub fn succeed(&mut self, old: Replica<S>) {
        let k = old.kv_stats();
        self.retired = Retired {
            evictions: k.evictions,
            prefix: k.prefix,
            store: k.store,
            offload: k.offload,
            radix: k.radix,
        };
        self.stats = old.stats;
        self.state = old.state;
    }

    /// Sets its state at `now`, opening or closing an up stretch (`ReplicaStats::up`).
    pub fn set_state(&mut self, state: ReplicaState, now: SimTime) {
        let was_down = self.state == ReplicaState::Down;
        let is_down = state == ReplicaState::Down;
        if was_down && !is_down {
            self.stats.up.push((now.0, None));
        } else if !was_down && is_down {
            if let Some(last) = self.stats.up.last_mut() {
                last.1 = Some(now.0);
            }
        }
        self.state = state;
    }

    /// The requests it holds that were never scheduled, in (arrival, id) order: what a leaving
    /// replica hands back to the router.
    pub fn unstarted(&self) -> Vec<RequestId> {
        self.held_where(|r| r.first_scheduled.is_none())
    }

    /// Every request it holds, in (arrival, id) order.
    pub fn held(&self) -> Vec<RequestId> {
        self.held_where(|_| true)
    }

    fn held_where(&self, keep: impl Fn(&Request) -> bool) -> Vec<RequestId> {
        let mut v: Vec<(SimTime, RequestId)> = self
            .scheduler
            .all_requests()
            .into_iter()
            .filter_map(|id| {
                let r = self.requests.get(&id)?;
                keep(r).then_some((r.arrival, id))
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Request `id`, if this replica holds it.
    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id).map(|r| &**r)
    }

    /// Removes request `id` between steps (a client timeout, a cancelled request): the scheduler drops it
    /// and its KV blocks are freed. Returns it with its true output length, or None when this replica
    /// does not hold it or a step is in flight (abort then at the step's end).
    pub fn abort(&mut self, id: RequestId) -> Option<(Request, u32)> {
        if self.in_flight.is_some() {
            return None;
        }
        let held = self.requests.get(&id)?;
        if !self.scheduler.abort(held) {
            return None;
        }
        let mut r = *self.requests.remove(&id).expect("held");
        self.prompt_tokens -= r.prompt_tokens as u64;
        self.scheduler.kv_mut().free(&mut r);
        let out = self.true_output.remove(&id).expect("held");
        Some((r, out))
    }

    /// Removes every request still held (end of a truncated run at `now`), releasing their blocks.
    pub fn drain(&mut self, now: SimTime) -> Vec<Request> {
        let ids = self.scheduler.all_requests();
        self.scheduler.finish_requests(&ids, now);
        let mut out: Vec<Request> = ids
            .into_iter()
            .filter_map(|id| self.requests.remove(&id))
            .map(|r| *r)
            .collect();
        for r in &mut out {
            self.prompt_tokens -= r.prompt_tokens as u64;
            self.scheduler.kv_mut().free(r);
        }
        out.sort_by_key(|r| r.id);
        out
    }

    /// Invariants 1 and 2: every request in exactly one queue, and the KV store's own invariants over the
    /// requests it holds for (for the paged store: conservation, every held block accounted to exactly
    /// the requests that hold it, no computed token without a block).
    pub fn check_invariants(&self) {
        if let Err(e) = self.scheduler.kv().check_invariants(&self.requests) {
            panic!("invariant 2 violated on replica {}: {e}", self.id);
        }
        assert_eq!(
            self.scheduler.num_waiting() + self.scheduler.num_running() + self.parked.len(),
            self.requests.len(),
            "invariant 1: a request is in no queue or two"
        );
        assert_eq!(
            self.prompt_tokens,
            self.requests
                .values()
                .filter(|r| !self.parked.contains(&r.id))
                .map(|r| r.prompt_tokens as u64)
                .sum::<u64>(),
            "the prompt tokens a router sees are those held"
        );
    }
}

/// Why a request that has just sampled a token stops, if it does: it reached its true output length
/// (`truth`), its `max_tokens`, or the model's context length.
fn stop_reason(r: &Request, truth: u32, max_model_len: u32) -> Option<StopReason> {
    if r.num_output_tokens >= truth {
        Some(StopReason::Eos)
    } else if r.num_output_tokens >= r.max_tokens || r.num_tokens() >= max_model_len {
        Some(StopReason::Length)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulingPolicy;
    use crate::cost::linear::LinearCost;
    use crate::kv::KvCacheManager;
    use crate::scheduler::vllm_v1::{Limits, VllmScheduler};
    use crate::workload::content::Segment;

    fn request(id: RequestId, tokens: u32) -> Request {
        let prompt = vec![Segment {
            content: id,
            len: tokens,
        }];
        Request::new(id, id, 1, 0, SimTime::ZERO, prompt, 1000 + id, 8)
    }

    #[test]
    fn abort_frees_blocks_and_waits_for_a_step_to_end() {
        let limits = Limits {
            max_num_batched_tokens: 1000,
            max_num_seqs: 16,
            max_model_len: 1000,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            policy: SchedulingPolicy::Fcfs,
        };
        let kv = KvCacheManager::new(11, 16, true);
        let mut r = Replica::new(0, VllmScheduler::new(limits, kv), 1000);
        r.enqueue(request(1, 40), 8);
        r.enqueue(request(2, 40), 8);
        let cost = LinearCost {
            p: crate::config::LinearConfig::default(),
        };
        let StepStart::Started(d) = r.start_step(SimTime::ZERO, &cost) else {
            panic!("a step starts")
        };
        // In flight: no abort now.
        assert!(r.abort(1).is_none());
        r.finish_step(SimTime::ZERO + d, |_, _| {});
        // 40 + 1 tokens each: 3 blocks each of the 10 usable.
        assert_eq!(r.kv().stats().free_blocks, 10 - 6);
        let (a, out) = r.abort(1).expect("held");
        assert_eq!((a.id, out), (1, 8));
        assert_eq!(r.kv().stats().free_blocks, 10 - 3);
        assert_eq!((r.num_running(), r.num_waiting()), (1, 0));
        assert!(r.abort(1).is_none() && r.abort(99).is_none());
        assert!(r.abort(2).is_some());
        assert!(!r.has_work());
        assert_eq!(r.kv().stats().free_blocks, 10);
    }
}
